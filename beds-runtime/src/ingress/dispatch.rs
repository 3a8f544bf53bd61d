//! Step: run a validated command against the store. Generated routes point every template
//! operation at [`execute`]; a hand-written table can point one at another [`Handler`]. The store is reachable only through a [`Call`], which only the ingress chain
//! builds: nothing writes to the database without a broker.

use std::future::Future;
use std::pin::Pin;

use serde_json::Value as Json;

use super::command::Command;
use crate::envelope::{AsOf, Origin, Request, Tier};
use crate::error::{BedsError, ErrorCode};
use crate::events::{Caller, Lineage};
use crate::meta::{QueryMeta, TemplateMeta};
use crate::security::OwnerCheck;
use crate::store::{IdempotencyKey, Store};
use crate::value::{RecordKey, Value};

/// What handlers run against: the node's database, and this node as the origin of the
/// events its writes record (`None`: events are off).
#[derive(Debug, Clone)]
pub struct Ctx {
    store: Store,
    events: Option<Origin>,
}

impl Ctx {
    pub(crate) fn new(store: Store, events: Option<Origin>) -> Ctx {
        Ctx { store, events }
    }

    /// This node as the origin of its writes' events; `None` when events are off.
    pub(crate) fn events(&self) -> Option<&Origin> {
        self.events.as_ref()
    }

    /// The lineage a request's events carry: its conversation, caused by it, one deeper.
    fn lineage(&self, request: &Request, caller: Option<Caller>) -> Option<Lineage> {
        self.events.as_ref().map(|origin| Lineage {
            correlation_id: request.correlation_id.unwrap_or(request.id),
            causation_id: request.id,
            depth: request.depth.saturating_add(1),
            origin: origin.clone(),
            caller,
        })
    }
}

/// One validated template operation on its way to a handler.
#[derive(Debug)]
pub struct Call<'a> {
    request: &'a Request,
    meta: &'static TemplateMeta,
    command: Command,
    idempotency: Option<IdempotencyKey>,
    /// An `owner` rule the store applies to the record in the write's transaction.
    owner: Option<OwnerCheck>,
    /// Who called, for the events of a write.
    caller: Option<Caller>,
}

impl<'a> Call<'a> {
    pub(crate) fn new(
        request: &'a Request,
        meta: &'static TemplateMeta,
        command: Command,
        idempotency: Option<IdempotencyKey>,
        owner: Option<OwnerCheck>,
        caller: Option<Caller>,
    ) -> Self {
        Call {
            request,
            meta,
            command,
            idempotency,
            owner,
            caller,
        }
    }

    /// The request as it arrived (already validated).
    pub fn request(&self) -> &Request {
        self.request
    }
}

pub type HandlerFuture<'a> = Pin<Box<dyn Future<Output = Result<Json, BedsError>> + Send + 'a>>;

/// A dispatch entry's handler for one template operation.
pub type Handler = for<'a> fn(&'a Ctx, Call<'a>) -> HandlerFuture<'a>;

/// The built-in handler of every template operation: runs the validated command.
pub fn execute<'a>(ctx: &'a Ctx, call: Call<'a>) -> HandlerFuture<'a> {
    Box::pin(template(ctx, call))
}

async fn template(ctx: &Ctx, call: Call<'_>) -> Result<Json, BedsError> {
    let t = call.meta;
    match call.command {
        Command::Write(op) => {
            let key = call
                .idempotency
                .ok_or_else(|| mismatch("a write without its idempotency key"))?;
            let lineage = ctx.lineage(call.request, call.caller);
            ctx.store
                .write(t, &key, op, lineage.as_ref(), call.owner.as_ref())
                .await
        }
        Command::Fetch(key) => match ctx.store.fetch(t, &key).await? {
            Some(record) => Ok(record),
            None => Err(missing(ctx, t, &key).await?),
        },
        Command::FetchAsOf { key, as_of } => ctx
            .store
            .as_of(t, &journal_id(&key), as_of)
            .await?
            .ok_or_else(|| {
                BedsError::new(
                    ErrorCode::NotFound,
                    format!(
                        "no `{}` with {} at {}",
                        t.name,
                        key.describe(t),
                        match as_of {
                            AsOf::Version(v) => format!("version {v}"),
                            AsOf::Time(at) => crate::value::format_timestamp(&at),
                        }
                    ),
                )
            }),
        Command::History { key, limit, after } => {
            let id = journal_id(&key);
            // Read like the record: an `owner` rule is checked on its newest version.
            if let Some(owner) = &call.owner {
                let newest = ctx.store.history(t, &id, 1, None).await?;
                let record = newest.first().and_then(|e| e.item.get("record"));
                owner.record(t, "history", record)?;
            }
            let entries = ctx.store.history(t, &id, limit, after).await?;
            if entries.is_empty() && after.is_none() {
                return Err(missing(ctx, t, &key).await?);
            }
            let next = match entries.last() {
                Some(last) if entries.len() == limit as usize => Json::from(vec![last.seq]),
                _ => Json::Null,
            };
            let items: Vec<Json> = entries.into_iter().map(|e| e.item).collect();
            Ok(serde_json::json!({ "items": items, "next": next }))
        }
        Command::List { limit, after } => {
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
        Command::Page { .. } | Command::Count { .. } => {
            Err(mismatch("a query command reached a template handler"))
        }
    }
}

/// A command that does not fit its target: a defect in the chain, answered as `internal`.
fn mismatch(what: &str) -> BedsError {
    BedsError::new(ErrorCode::Internal, what)
}

/// Runs a named query: a page of records with a keyset cursor, or a count.
pub(crate) async fn query(
    ctx: &Ctx,
    q: &'static QueryMeta,
    command: Command,
) -> Result<Json, BedsError> {
    match command {
        Command::Count { params } => {
            let n = ctx.store.count(q, params).await?;
            Ok(serde_json::json!({ "count": n }))
        }
        Command::Page {
            params,
            cursor,
            limit,
        } => {
            let items = ctx.store.query(q, params, cursor, limit).await?;
            let next = match items.last() {
                Some(last) if items.len() == limit as usize => Json::Array(
                    q.keys()
                        .iter()
                        .map(|(k, _)| last.get(*k).cloned().unwrap_or(Json::Null))
                        .collect(),
                ),
                _ => Json::Null,
            };
            Ok(serde_json::json!({ "items": items, "next": next }))
        }
        _ => Err(mismatch("a template command reached a query")),
    }
}

/// A record id as the journal and the tombstones key it (validation admits only id keys
/// for the journal).
pub(crate) fn journal_id(key: &RecordKey) -> String {
    match key.values.first() {
        Some(Value::Uuid(u)) => u.to_string(),
        Some(Value::Int(i)) => i.to_string(),
        Some(Value::Text(s)) => s.clone(),
        _ => String::new(),
    }
}

/// The answer to a key the serving database does not hold: `moved` when retention's
/// tombstone says where the record went, else `not_found`. Only this miss path reads the
/// tombstones, so a hit costs nothing more; only an id key can match one (tombstones are
/// kept by id).
async fn missing(ctx: &Ctx, t: &TemplateMeta, key: &RecordKey) -> Result<BedsError, BedsError> {
    if key.slot != 0 {
        return Ok(not_found(t, key));
    }
    Ok(match ctx.store.moved(t, &journal_id(key)).await? {
        Some(tier) => moved(t, key, tier),
        None => not_found(t, key),
    })
}

/// `moved`: where the record is, and how to read it there.
pub(crate) fn moved(t: &TemplateMeta, key: &RecordKey, tier: Tier) -> BedsError {
    BedsError {
        tier: Some(tier),
        ..BedsError::new(
            ErrorCode::Moved,
            format!(
                "the `{}` with {} moved to the {} tier; resend the request with \"tier\": \"warehouse\"",
                t.name,
                key.describe(t),
                tier.as_str()
            ),
        )
    }
}

pub(crate) fn not_found(t: &TemplateMeta, key: &RecordKey) -> BedsError {
    BedsError::new(
        ErrorCode::NotFound,
        format!("no `{}` with {}", t.name, key.describe(t)),
    )
}
