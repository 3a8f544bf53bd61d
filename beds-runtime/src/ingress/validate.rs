//! Step: check a request's input against its declaration and build the typed command the
//! dispatch step runs. Every field problem is reported at once; nothing is executed
//! unless the whole input is valid.

use serde_json::{Map, Value as Json};
use uuid::Uuid;

use super::command::Command;
use super::route::Target;
use crate::config::LockingConfig;
use crate::envelope::{Op, Request};
use crate::error::{BedsError, DetailCode, ErrorCode};
use crate::meta::{IdKind, PageMeta, QueryMeta, TemplateMeta};
use crate::store::WriteOp;
use crate::value::{self, Patterns};

pub(crate) fn command(
    target: &Target,
    req: &Request,
    patterns: &Patterns,
    leases: &LockingConfig,
) -> Result<Command, BedsError> {
    unused_fields(target, req)?;
    match *target {
        Target::Template { meta, op, .. } => template(meta, op, req, patterns, leases),
        Target::Query(q) => query(q, req, patterns),
    }
}

/// The optional fields each operation takes (the table in wiki/envelope.md); the others
/// are always allowed: `correlation_id`, `causation_id`, `depth`, `origin`, `deadline`.
fn takes(target: &Target) -> &'static [&'static str] {
    match *target {
        Target::Template { op, .. } => match op {
            Op::Create => &["template", "data", "idempotency_key"],
            Op::Fetch => &[
                "template",
                "key",
                "consistency",
                "min_version",
                "as_of",
                "tier",
            ],
            Op::Update => &[
                "template",
                "key",
                "data",
                "expect_version",
                "lock_token",
                "idempotency_key",
            ],
            Op::Delete => &[
                "template",
                "key",
                "expect_version",
                "lock_token",
                "idempotency_key",
            ],
            Op::List => &["template", "limit", "after"],
            Op::Lock => &["template", "key", "data", "lock_token", "idempotency_key"],
            Op::Unlock => &["template", "key", "lock_token", "idempotency_key"],
            Op::History => &["template", "key", "limit", "cursor"],
            Op::Query => unreachable!("the route step sends queries to `Target::Query`"),
        },
        Target::Query(q) if q.count => &["query", "params", "consistency"],
        Target::Query(_) => &["query", "params", "limit", "cursor", "consistency", "tier"],
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
        ("lock_token", req.lock_token.is_some()),
        ("consistency", req.consistency.is_some()),
        ("min_version", req.min_version.is_some()),
        ("as_of", req.as_of.is_some()),
        ("idempotency_key", req.idempotency_key.is_some()),
        ("limit", req.limit.is_some()),
        ("after", req.after.is_some()),
        ("query", req.query.is_some()),
        ("params", req.params.is_some()),
        ("cursor", req.cursor.is_some()),
        ("tier", req.tier.is_some()),
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
    leases: &LockingConfig,
) -> Result<Command, BedsError> {
    if !t.capabilities.locking && matches!(op, Op::Lock | Op::Unlock) {
        return Err(BedsError::new(
            ErrorCode::OperationNotAllowed,
            format!(
                "`{}` does not declare `locking`: `{}` needs `capabilities: {{ locking: true }}`",
                req.template,
                op.as_str()
            ),
        ));
    }
    // A token for a template without leases would be ignored; refused so it never passes
    // silently.
    if !t.capabilities.locking && req.lock_token.is_some() {
        return Err(BedsError::new(
            ErrorCode::InvalidEnvelope,
            format!(
                "`{}` does not declare `locking`, so `{}` takes no `lock_token`",
                req.template,
                op.as_str()
            ),
        ));
    }
    if !t.capabilities.journal && op == Op::History {
        return Err(BedsError::new(
            ErrorCode::OperationNotAllowed,
            format!(
                "`{}` does not declare `journal`: `history` needs `capabilities: {{ journal: true }}`",
                req.template
            ),
        ));
    }
    // A past version of a template that keeps none cannot be answered; refused rather than
    // answered with the current record.
    if !t.capabilities.journal && req.as_of.is_some() {
        return Err(BedsError::new(
            ErrorCode::OperationNotAllowed,
            format!(
                "`{}` does not declare `journal`, so `fetch` takes no `as_of`: only journaled \
                 templates keep past versions",
                req.template
            ),
        ));
    }
    // The past is read from the journal, never the cache: read options would do nothing.
    if req.as_of.is_some() && (req.consistency.is_some() || req.min_version.is_some()) {
        return Err(BedsError::new(
            ErrorCode::InvalidEnvelope,
            "`fetch` with `as_of` reads the journal, never the cache: send it without \
             `consistency` and `min_version`",
        ));
    }
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
        Op::Fetch => {
            let key = value::record_key(t, req.key.as_ref(), patterns)?;
            match req.as_of {
                Some(as_of) => Command::FetchAsOf {
                    key: journal_key(key, "fetch` with `as_of")?,
                    as_of,
                },
                None => Command::Fetch(key),
            }
        }
        Op::History => {
            let key = value::record_key(t, req.key.as_ref(), patterns)?;
            let limit = page_limit(req, t.page, t.name)?;
            let after = match req.cursor.as_deref() {
                None => None,
                Some([Json::Number(n)]) if n.is_i64() => n.as_i64(),
                Some(_) => {
                    return Err(BedsError::detail(
                        "cursor",
                        DetailCode::InvalidFormat,
                        "cursor must be the `next` of the previous `history` page, unchanged",
                    ));
                }
            };
            Command::History {
                key: journal_key(key, "history")?,
                limit,
                after,
            }
        }
        Op::Update => {
            let key = value::record_key(t, req.key.as_ref(), patterns)?;
            let changes = value::patch_values(t, data(req)?, patterns)?;
            let tokens = value::derive_tokens(t, changes.iter().map(|(f, v)| (*f, v)), patterns)?;
            Command::Write(WriteOp::Update {
                key,
                changes,
                expect_version: req.expect_version,
                lock_token: req.lock_token.clone(),
                tokens,
            })
        }
        Op::Delete => Command::Write(WriteOp::Delete {
            key: value::record_key(t, req.key.as_ref(), patterns)?,
            expect_version: req.expect_version,
            lock_token: req.lock_token.clone(),
        }),
        Op::Lock => Command::Write(WriteOp::Lock {
            key: value::record_key(t, req.key.as_ref(), patterns)?,
            ttl_ms: lease_ttl(req.data.as_ref(), leases)?,
            token: req.lock_token.clone(),
        }),
        Op::Unlock => Command::Write(WriteOp::Unlock {
            key: value::record_key(t, req.key.as_ref(), patterns)?,
            token: req.lock_token.clone().ok_or_else(|| {
                BedsError::new(
                    ErrorCode::InvalidEnvelope,
                    "`unlock` needs `lock_token`: the token `lock` answered",
                )
            })?,
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

/// The journal keeps versions by id, which outlives the record (a deleted record's
/// unique values may be taken by another): a past version is asked for by id.
fn journal_key(key: value::RecordKey, what: &str) -> Result<value::RecordKey, BedsError> {
    if key.slot == 0 {
        return Ok(key);
    }
    Err(BedsError::detail(
        "key",
        DetailCode::Other,
        format!("`{what}` takes the record's `id` as key: past versions are kept by id"),
    ))
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

/// The lease a `lock` asks for: `data.ttl` (`"30s"`, or milliseconds as a number), else the
/// configured default; above the configured maximum it is refused rather than shortened.
fn lease_ttl(data: Option<&Map<String, Json>>, leases: &LockingConfig) -> Result<u64, BedsError> {
    let Some(data) = data else {
        return Ok(leases.default_ttl.0);
    };
    if let Some(other) = data.keys().find(|k| *k != "ttl") {
        return Err(BedsError::detail(
            format!("data.{}", crate::echo::clip(other)),
            DetailCode::Unknown,
            "`lock` takes only `data.ttl`",
        ));
    }
    let ttl = match data.get("ttl") {
        None | Some(Json::Null) => return Ok(leases.default_ttl.0),
        Some(Json::Number(n)) => n.as_u64(),
        Some(Json::String(s)) => s.parse::<crate::config::Millis>().ok().map(|m| m.0),
        Some(_) => None,
    };
    match ttl {
        None => Err(BedsError::detail(
            "data.ttl",
            DetailCode::InvalidFormat,
            "ttl must be a duration such as `30s`, `500ms` or `2m`, or milliseconds",
        )),
        Some(0) => Err(BedsError::detail(
            "data.ttl",
            DetailCode::BelowMin,
            "ttl must be at least 1ms",
        )),
        Some(ms) if ms > leases.max_ttl.0 => Err(BedsError::detail(
            "data.ttl",
            DetailCode::AboveMax,
            format!("ttl must be at most {}ms", leases.max_ttl.0),
        )),
        Some(ms) => Ok(ms),
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
