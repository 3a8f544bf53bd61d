//! The dispatch layer: one handler per (template, operation), generic over the record
//! type so the generated tables can point at them, with the work done once, by metadata.

use std::future::Future;
use std::pin::Pin;

use serde_json::{Map, Value as Json};
use uuid::Uuid;

use crate::envelope::Request;
use crate::error::{BedsError, DetailCode, ErrorCode};
use crate::meta::{IdKind, PageMeta, QueryMeta, TemplateMeta};
use crate::record::Record;
use crate::store::{Store, WriteOp};
use crate::value::{self, RecordKey};

/// What handlers need from the running node.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub store: Store,
    pub patterns: std::sync::Arc<value::Patterns>,
}

pub type HandlerFuture<'a> = Pin<Box<dyn Future<Output = Result<Json, BedsError>> + Send + 'a>>;

/// A generated dispatch entry's handler.
pub type Handler = for<'a> fn(&'a Ctx, &'a Request) -> HandlerFuture<'a>;

/// The handlers the generated `Routes` point at.
pub mod handlers {
    use super::*;

    pub fn create<'a, T: Record>(ctx: &'a Ctx, req: &'a Request) -> HandlerFuture<'a> {
        Box::pin(super::create(ctx, T::META, req))
    }

    pub fn fetch<'a, T: Record>(ctx: &'a Ctx, req: &'a Request) -> HandlerFuture<'a> {
        Box::pin(super::fetch(ctx, T::META, req))
    }

    pub fn update<'a, T: Record>(ctx: &'a Ctx, req: &'a Request) -> HandlerFuture<'a> {
        Box::pin(super::update(ctx, T::META, req))
    }

    pub fn delete<'a, T: Record>(ctx: &'a Ctx, req: &'a Request) -> HandlerFuture<'a> {
        Box::pin(super::delete(ctx, T::META, req))
    }

    pub fn list<'a, T: Record>(ctx: &'a Ctx, req: &'a Request) -> HandlerFuture<'a> {
        Box::pin(super::list(ctx, T::META, req))
    }

    /// `update` and `delete` of an append-only template.
    pub fn append_only<'a>(_: &'a Ctx, req: &'a Request) -> HandlerFuture<'a> {
        let message = format!(
            "`{}` is append-only: records are created, never updated or deleted",
            req.template
        );
        Box::pin(async move { Err(BedsError::new(ErrorCode::OperationNotAllowed, message)) })
    }
}

fn data(req: &Request) -> Result<&Map<String, Json>, BedsError> {
    req.data.as_ref().ok_or_else(|| {
        BedsError::detail(
            "data",
            DetailCode::Missing,
            format!("`{}` needs `data`", req.op),
        )
    })
}

fn not_found(t: &TemplateMeta, key: &RecordKey) -> BedsError {
    BedsError::new(
        ErrorCode::NotFound,
        format!("no `{}` with {}", t.name, key.describe(t)),
    )
}

/// The key under which a write's reply is remembered.
fn idempotency_key(req: &Request) -> String {
    req.idempotency_key
        .clone()
        .unwrap_or_else(|| req.id.to_string())
}

async fn create(ctx: &Ctx, t: &'static TemplateMeta, req: &Request) -> Result<Json, BedsError> {
    let values = value::create_values(t, data(req)?, &ctx.patterns)?;
    value::check_rules(t, &values)?;
    let tokens = value::derive_tokens(t, t.fields.iter().zip(&values), &ctx.patterns)?;
    let id = match t.id {
        IdKind::Uuid7 => Some(Uuid::now_v7()),
        IdKind::Sequence => None,
    };
    let op = WriteOp::Insert { id, values, tokens };
    ctx.store.write(t, &idempotency_key(req), op).await
}

async fn fetch(ctx: &Ctx, t: &'static TemplateMeta, req: &Request) -> Result<Json, BedsError> {
    let key = value::record_key(t, req.key.as_ref(), &ctx.patterns)?;
    ctx.store
        .fetch(t, &key)
        .await?
        .ok_or_else(|| not_found(t, &key))
}

async fn update(ctx: &Ctx, t: &'static TemplateMeta, req: &Request) -> Result<Json, BedsError> {
    let key = value::record_key(t, req.key.as_ref(), &ctx.patterns)?;
    let changes = value::patch_values(t, data(req)?, &ctx.patterns)?;
    let tokens = value::derive_tokens(t, changes.iter().map(|(f, v)| (*f, v)), &ctx.patterns)?;
    let op = WriteOp::Update {
        key,
        changes,
        expect_version: req.expect_version,
        tokens,
    };
    ctx.store.write(t, &idempotency_key(req), op).await
}

async fn delete(ctx: &Ctx, t: &'static TemplateMeta, req: &Request) -> Result<Json, BedsError> {
    let key = value::record_key(t, req.key.as_ref(), &ctx.patterns)?;
    let op = WriteOp::Delete {
        key,
        expect_version: req.expect_version,
    };
    ctx.store.write(t, &idempotency_key(req), op).await
}

/// The page size a request asks for, within the declared cap.
fn page_limit(req: &Request, page: PageMeta, what: &str) -> Result<u32, BedsError> {
    match req.limit {
        None => Ok(page.default),
        Some(0) => Err(BedsError::detail(
            "limit",
            DetailCode::BelowMin,
            "limit must be at least 1",
        )),
        Some(n) if n > page.max => Err(BedsError::detail(
            "limit",
            DetailCode::AboveMax,
            format!("limit must be at most {} for `{what}`", page.max),
        )),
        Some(n) => Ok(n),
    }
}

async fn list(ctx: &Ctx, t: &'static TemplateMeta, req: &Request) -> Result<Json, BedsError> {
    let limit = page_limit(req, t.page, t.name)?;
    let after = req
        .after
        .as_ref()
        .map(|a| value::id_value(t.id, a))
        .transpose()
        .map_err(|m| BedsError::detail("after", DetailCode::InvalidFormat, format!("after {m}")))?;
    let items = ctx.store.list(t, limit, after).await?;
    // A full page may have more after it; its last id is the cursor.
    let next = match items.last() {
        Some(last) if items.len() == limit as usize => {
            last.get("id").cloned().unwrap_or(Json::Null)
        }
        _ => Json::Null,
    };
    Ok(serde_json::json!({ "items": items, "next": next }))
}

/// Runs a named query: a page of records with a keyset cursor, or a count.
pub(crate) async fn query(
    ctx: &Ctx,
    q: &'static QueryMeta,
    req: &Request,
) -> Result<Json, BedsError> {
    let params = value::query_params(q, req.params.as_ref(), &ctx.patterns)?;
    if q.count {
        let n = ctx.store.count(q, params).await?;
        return Ok(serde_json::json!({ "count": n }));
    }
    let limit = page_limit(req, q.page, q.name)?;
    let keys = q.keys();
    let cursor = req
        .cursor
        .as_deref()
        .map(|c| value::cursor_values(q, c, &ctx.patterns))
        .transpose()?;
    let items = ctx.store.query(q, params, cursor, limit).await?;
    let next = match items.last() {
        Some(last) if items.len() == limit as usize => Json::Array(
            keys.iter()
                .map(|(k, _)| last.get(*k).cloned().unwrap_or(Json::Null))
                .collect(),
        ),
        _ => Json::Null,
    };
    Ok(serde_json::json!({ "items": items, "next": next }))
}
