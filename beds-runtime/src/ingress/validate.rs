//! Step: check a request's input against its declaration and build the typed command the
//! dispatch step runs. Every field problem is reported at once; nothing is executed
//! unless the whole input is valid.

use serde_json::{Map, Value as Json};
use uuid::Uuid;

use super::command::Command;
use super::route::Target;
use crate::envelope::{Op, Request};
use crate::error::{BedsError, DetailCode, ErrorCode};
use crate::meta::{IdKind, PageMeta, QueryMeta, TemplateMeta};
use crate::store::WriteOp;
use crate::value::{self, Patterns};

pub(crate) fn command(
    target: &Target,
    req: &Request,
    patterns: &Patterns,
) -> Result<Command, BedsError> {
    unused_fields(target, req)?;
    match *target {
        Target::Template { meta, op, .. } => template(meta, op, req, patterns),
        Target::Query(q) => query(q, req, patterns),
    }
}

/// The optional fields each operation takes (the table in wiki/envelope.md); the others
/// are always allowed: `correlation_id`, `causation_id`, `depth`, `origin`, `deadline`.
fn takes(target: &Target) -> &'static [&'static str] {
    match *target {
        Target::Template { op, .. } => match op {
            Op::Create => &["template", "data", "idempotency_key"],
            Op::Fetch => &["template", "key", "consistency", "min_version"],
            Op::Update => &[
                "template",
                "key",
                "data",
                "expect_version",
                "idempotency_key",
            ],
            Op::Delete => &["template", "key", "expect_version", "idempotency_key"],
            Op::List => &["template", "limit", "after"],
            Op::Query => unreachable!("the route step sends queries to `Target::Query`"),
        },
        Target::Query(q) if q.count => &["query", "params"],
        Target::Query(_) => &["query", "params", "limit", "cursor"],
    }
}

/// Step: a field the operation does not use is refused, naming it, so a misplaced or
/// misspelled field never passes silently.
fn unused_fields(target: &Target, req: &Request) -> Result<(), BedsError> {
    let sent = [
        ("template", !req.template.is_empty()),
        ("key", req.key.is_some()),
        ("data", req.data.is_some()),
        ("expect_version", req.expect_version.is_some()),
        ("consistency", req.consistency.is_some()),
        ("min_version", req.min_version.is_some()),
        ("idempotency_key", req.idempotency_key.is_some()),
        ("limit", req.limit.is_some()),
        ("after", req.after.is_some()),
        ("query", req.query.is_some()),
        ("params", req.params.is_some()),
        ("cursor", req.cursor.is_some()),
    ];
    let takes = takes(target);
    let Some((field, _)) = sent
        .iter()
        .find(|(field, sent)| *sent && !takes.contains(field))
    else {
        return Ok(());
    };
    let what = match target {
        Target::Query(q) if q.count => format!("the count query `{}`", q.name),
        Target::Query(q) => format!("the query `{}`", q.name),
        Target::Template { op, .. } => format!("`{}`", op.as_str()),
    };
    // No list of what it does take: that list grows as v1 gains optional fields, and the
    // reply would change with it.
    Err(BedsError::new(
        ErrorCode::InvalidEnvelope,
        format!(
            "{what} does not take `{field}`; the envelope contract lists the fields each \
             operation takes"
        ),
    ))
}

fn template(
    t: &'static TemplateMeta,
    op: Op,
    req: &Request,
    patterns: &Patterns,
) -> Result<Command, BedsError> {
    if t.append_only && matches!(op, Op::Update | Op::Delete) {
        return Err(BedsError::new(
            ErrorCode::OperationNotAllowed,
            format!(
                "`{}` is append-only: records are created, never updated or deleted",
                req.template
            ),
        ));
    }
    Ok(match op {
        Op::Create => {
            let values = value::create_values(t, data(req)?, patterns)?;
            value::check_rules(t, &values)?;
            let tokens = value::derive_tokens(t, t.fields.iter().zip(&values), patterns)?;
            let id = match t.id {
                IdKind::Uuid7 => Some(Uuid::now_v7()),
                IdKind::Sequence => None,
            };
            Command::Write(WriteOp::Insert { id, values, tokens })
        }
        Op::Fetch => Command::Fetch(value::record_key(t, req.key.as_ref(), patterns)?),
        Op::Update => {
            let key = value::record_key(t, req.key.as_ref(), patterns)?;
            let changes = value::patch_values(t, data(req)?, patterns)?;
            let tokens = value::derive_tokens(t, changes.iter().map(|(f, v)| (*f, v)), patterns)?;
            Command::Write(WriteOp::Update {
                key,
                changes,
                expect_version: req.expect_version,
                tokens,
            })
        }
        Op::Delete => Command::Write(WriteOp::Delete {
            key: value::record_key(t, req.key.as_ref(), patterns)?,
            expect_version: req.expect_version,
        }),
        Op::List => {
            let limit = page_limit(req, t.page, t.name)?;
            let after = req
                .after
                .as_ref()
                .map(|a| value::id_value(t.id, a))
                .transpose()
                .map_err(|m| {
                    BedsError::detail("after", DetailCode::InvalidFormat, format!("after {m}"))
                })?;
            Command::List { limit, after }
        }
        Op::Query => unreachable!("the route step sends queries to `query`"),
    })
}

fn query(q: &'static QueryMeta, req: &Request, patterns: &Patterns) -> Result<Command, BedsError> {
    let params = value::query_params(q, req.params.as_ref(), patterns)?;
    if q.count {
        return Ok(Command::Count { params });
    }
    let limit = page_limit(req, q.page, q.name)?;
    let cursor = req
        .cursor
        .as_deref()
        .map(|c| value::cursor_values(q, c, patterns))
        .transpose()?;
    Ok(Command::Page {
        params,
        cursor,
        limit,
    })
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
