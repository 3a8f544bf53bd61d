//! Warehouse reads (wiki/retention.md, "Reading moved records"): the queue `{tag}mig.read`
//! takes the reads sent with `"tier": "warehouse"` (forwarded by an appServer, or published
//! there by the typed client). Each is validated and authorized like on an appServer (the
//! same chain, [`crate::ingress::prepare`]), then:
//!
//! - `fetch` by id reads the warehouse (COOL), then the COLD files through the warehouse's
//!   `beds_cold_index`; the reply's `tier` says which answered;
//! - a query declaring `tiers: [hot, warehouse]` is answered from the serving database and
//!   the warehouse together, merged in the query's order (see [`merge`]);
//! - anything else is refused, saying what the warehouse serves.

use std::cmp::Ordering;
use std::io::BufRead;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use lapin::Channel;
use lapin::message::Delivery;
use serde_json::Value as Json;

use super::Parts;
use crate::envelope::{Op, Reply, Request, Tier};
use crate::error::{BedsError, ErrorCode};
use crate::ingress::accept;
use crate::ingress::command::Command;
use crate::ingress::dispatch::{journal_id, not_found};
use crate::ingress::lane::Lane;
use crate::ingress::route::Target;
use crate::ingress::settle::{answer, dead_letter_or_reject, provenance};
use crate::ingress::{Prepared, prepare};
use crate::meta::{QueryMeta, TemplateMeta};
use crate::node::consumer::Handler;
use crate::transport::names::WAREHOUSE_READ_KEY;
use crate::transport::topology;
use crate::value::{RecordKey, Value};

/// The consumer of `{tag}mig.read`.
pub(crate) struct Reads {
    pub parts: Parts,
}

impl Handler for Reads {
    async fn declare(&self, channel: &Channel) -> lapin::Result<()> {
        topology::declare(channel, &self.parts.config.amqp, &[WAREHOUSE_READ_KEY]).await
    }

    async fn handle(self: Arc<Self>, channel: Channel, delivery: Delivery) {
        let ingress = &self.parts.ingress;
        let key = &self.parts.key;
        let accepted = provenance(key, &delivery).and_then(|()| accept::delivery(&delivery, key));
        let accepted = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(code = ?error.code, reason = %error.message, "dead-lettering a warehouse read that cannot be answered");
                if !dead_letter_or_reject(&channel, key, &delivery, &error).await {
                    tracing::error!("rejecting a warehouse read failed; it will be redelivered");
                }
                return;
            }
        };
        let reply = self
            .reply(&delivery.data, accepted.user_id.as_deref())
            .await;
        if answer(&channel, &ingress.signer, false, accepted.reply, &reply).await {
            crate::ingress::settle::ack(&delivery).await;
        }
    }
}

impl Reads {
    /// The reply to one body: one level below the request, naming this node.
    async fn reply(&self, body: &[u8], user_id: Option<&str>) -> Reply {
        let ingress = &self.parts.ingress;
        let (correlation, causation, depth, result) =
            match Request::decode_within(body, &ingress.limits) {
                Ok(req) => {
                    let result = self.read(&req, user_id).await;
                    (req.conversation(), req.id, req.depth, result)
                }
                Err(e) => {
                    let (correlation, id) = Request::ids_of(body, &ingress.limits);
                    (correlation, id, 0, Err(e))
                }
            };
        if let Err(e) = &result {
            tracing::debug!(code = ?e.code, message = %e.message, "warehouse read failed");
        }
        let (result, tier) = match result {
            Ok((data, tier)) => (Ok(data), tier),
            Err(e) => (Err(e), None),
        };
        let mut reply = Reply::to(correlation, causation, result);
        reply.depth = depth + 1;
        reply.origin = Some(self.parts.lineage.origin().clone());
        reply.tier = tier;
        reply
    }

    /// Runs a request against the tiers; the tier that answered a fetch.
    async fn read(
        &self,
        req: &Request,
        user_id: Option<&str>,
    ) -> Result<(Json, Option<Tier>), BedsError> {
        let Prepared {
            target,
            owner,
            command,
            ..
        } = prepare(&self.parts.ingress, Lane::Read, req, user_id, |_| {})?;
        match (target, command) {
            (
                Target::Template {
                    meta,
                    op: Op::Fetch,
                    ..
                },
                Command::Fetch(key),
            ) => {
                let found = self.fetch(meta, &key).await?;
                if let Some(check) = &owner {
                    check.record(meta, "fetch", found.as_ref().map(|(r, _)| r))?;
                }
                let (record, tier) = found.ok_or_else(|| not_found(meta, &key))?;
                Ok((record, Some(tier)))
            }
            (
                Target::Query(q),
                Command::Page {
                    params,
                    cursor,
                    limit,
                },
            ) if q.warehouse => {
                let page = self.page(q, params, cursor, limit).await?;
                Ok((page, None))
            }
            (Target::Query(q), _) => Err(BedsError::new(
                ErrorCode::OperationNotAllowed,
                format!(
                    "query `{}` does not include the warehouse: send it without `tier`, or declare `tiers: [hot, warehouse]` on it",
                    q.name
                ),
            )),
            (target, _) => Err(BedsError::new(
                ErrorCode::OperationNotAllowed,
                format!(
                    "`\"tier\": \"warehouse\"` serves `fetch` without `as_of` (and the queries that declare `tiers: [hot, warehouse]`), not `{}`; send it without `tier`",
                    match target.op() {
                        Op::Fetch => "fetch` with `as_of",
                        other => other.as_str(),
                    }
                ),
            )),
        }
    }

    /// A record from the warehouse, else from the COLD files; by id only (the COLD index
    /// keeps records by id).
    async fn fetch(
        &self,
        t: &'static TemplateMeta,
        key: &RecordKey,
    ) -> Result<Option<(Json, Tier)>, BedsError> {
        if let Some(record) = self.parts.warehouse.fetch(t, key).await? {
            return Ok(Some((record, Tier::Warehouse)));
        }
        if key.slot != 0 {
            return Ok(None);
        }
        let Some(at) = self
            .parts
            .warehouse
            .cold_location(t, &journal_id(key))
            .await?
        else {
            return Ok(None);
        };
        let path = cold_path(&self.parts.config.segundo.cold_dir, &at.file)?;
        let line = at.line;
        let record = tokio::task::spawn_blocking(move || read_line(&path, line))
            .await
            .map_err(|e| {
                BedsError::new(ErrorCode::Internal, format!("reading a COLD file: {e}"))
            })??;
        Ok(Some((record, Tier::Cold)))
    }

    /// A page of a query over the serving database and the warehouse.
    async fn page(
        &self,
        q: &'static QueryMeta,
        params: Vec<Value>,
        cursor: Option<Vec<Value>>,
        limit: u32,
    ) -> Result<Json, BedsError> {
        let (hot, cool) = tokio::try_join!(
            self.parts
                .store
                .query(q, params.clone(), cursor.clone(), limit),
            self.parts.warehouse.query(q, params, cursor, limit),
        )?;
        let items = merge(q, hot, cool, limit as usize);
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
}

/// The first `limit` records of two pages each in the query's order, in that order, a
/// record in both once (during a move a record is briefly in both tiers; the serving
/// database's copy is kept). Each page holds the first `limit` records of its tier after
/// the same cursor, so the merged first `limit` are the first of both tiers together.
pub(crate) fn merge(q: &QueryMeta, hot: Vec<Json>, cool: Vec<Json>, limit: usize) -> Vec<Json> {
    let keys = q.keys();
    let order = |a: &Json, b: &Json| {
        for (name, desc) in &keys {
            let o = compare(a.get(*name), b.get(*name));
            let o = if *desc { o.reverse() } else { o };
            if o != Ordering::Equal {
                return o;
            }
        }
        Ordering::Equal
    };
    let mut out = Vec::with_capacity(limit.min(hot.len() + cool.len()));
    let (mut hot, mut cool) = (hot.into_iter().peekable(), cool.into_iter().peekable());
    while out.len() < limit {
        let next = match (hot.peek(), cool.peek()) {
            (Some(h), Some(c)) => match order(h, c) {
                Ordering::Greater => cool.next(),
                Ordering::Equal => {
                    // The same sort keys, `id` last among them: the same record.
                    cool.next();
                    hot.next()
                }
                Ordering::Less => hot.next(),
            },
            (Some(_), None) => hot.next(),
            (None, Some(_)) => cool.next(),
            (None, None) => break,
        };
        out.extend(next);
    }
    out
}

/// Sort key values as the databases order them: numbers by value, text by bytes (ids,
/// timestamps in their fixed format), false before true, a missing value or null first.
fn compare(a: Option<&Json>, b: Option<&Json>) -> Ordering {
    let rank = |v: Option<&Json>| match v {
        None | Some(Json::Null) => 0,
        Some(Json::Bool(_)) => 1,
        Some(Json::Number(_)) => 2,
        Some(_) => 3,
    };
    match (a, b) {
        (Some(Json::Number(x)), Some(Json::Number(y))) => match (x.as_i64(), y.as_i64()) {
            (Some(x), Some(y)) => x.cmp(&y),
            _ => x
                .as_f64()
                .partial_cmp(&y.as_f64())
                .unwrap_or(Ordering::Equal),
        },
        (Some(Json::String(x)), Some(Json::String(y))) => x.as_bytes().cmp(y.as_bytes()),
        (Some(Json::Bool(x)), Some(Json::Bool(y))) => x.cmp(y),
        _ => rank(a).cmp(&rank(b)),
    }
}

/// A COLD file's path: the index's relative path under `cold_dir`, never outside it.
fn cold_path(cold_dir: &Path, file: &str) -> Result<PathBuf, BedsError> {
    let relative = Path::new(file);
    if relative
        .components()
        .any(|c| !matches!(c, Component::Normal(_)))
    {
        return Err(BedsError::new(
            ErrorCode::Internal,
            format!("the COLD index names `{file}`, which is not a path under segundo.cold_dir"),
        ));
    }
    Ok(cold_dir.join(relative))
}

/// Line `line` (from 1) of a gzip JSON Lines file, as JSON.
fn read_line(path: &Path, line: i64) -> Result<Json, BedsError> {
    let fail = |why: String| {
        tracing::error!(file = %path.display(), line, why, "COLD record unreadable");
        BedsError::new(
            ErrorCode::Internal,
            format!(
                "the COLD record at {}:{line} cannot be read ({why}); check segundo.cold_dir and its manifest",
                path.display()
            ),
        )
    };
    let file = std::fs::File::open(path).map_err(|e| fail(e.to_string()))?;
    let reader = std::io::BufReader::new(flate2::read::GzDecoder::new(file));
    let index = usize::try_from(line - 1).map_err(|_| fail("no such line".into()))?;
    let text = reader
        .lines()
        .nth(index)
        .ok_or_else(|| fail("no such line".into()))?
        .map_err(|e| fail(e.to_string()))?;
    serde_json::from_str(&text).map_err(|e| fail(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn values_compare_as_the_databases_order_them() {
        assert_eq!(compare(Some(&json!(2)), Some(&json!(10))), Ordering::Less);
        assert_eq!(
            compare(Some(&json!("2026-01-02")), Some(&json!("2026-01-10"))),
            Ordering::Less
        );
        assert_eq!(compare(None, Some(&json!("a"))), Ordering::Less);
        assert_eq!(compare(Some(&Json::Null), None), Ordering::Equal);
    }

    #[test]
    fn cold_paths_stay_under_the_cold_dir() {
        let dir = Path::new("/data/cold");
        assert_eq!(
            cold_path(dir, "d/t/1.jsonl.gz").unwrap(),
            dir.join("d/t/1.jsonl.gz")
        );
        for bad in ["../etc/passwd", "/etc/passwd", "a/../../b"] {
            assert_eq!(
                cold_path(dir, bad).unwrap_err().code,
                ErrorCode::Internal,
                "{bad}"
            );
        }
    }
}
