//! The transactional outbox: the events of a write, collected and inserted in its
//! transaction (cascaded deletes and `set_null` updates included), and the relay's reads,
//! removals and lease.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde_json::{Map, Value as Json};
use sqlx::{AnyConnection, Row};
use uuid::Uuid;

use super::dialect::{Failure, Ty};
use super::{Store, record};
use crate::error::{BedsError, ErrorCode};
use crate::events::{EVENT_VERSION, EventKind, Lineage, WriteEvent, WriteOp};
use crate::meta::{FieldMeta, OnDelete, TemplateMeta};
use crate::value::{RecordKey, Timestamp, format_timestamp};

/// A reference to a template: its referring template and field, what a delete does to
/// the referrer, and the statement reading the referrers of one id.
#[derive(Debug)]
pub(super) struct Referrer {
    pub template: &'static TemplateMeta,
    pub field: &'static FieldMeta,
    pub on_delete: OnDelete,
    pub select: sqlx::SqlStr,
}

/// One changed record, before it becomes an event.
#[derive(Debug)]
pub(super) struct Change {
    pub template: &'static TemplateMeta,
    pub op: WriteOp,
    pub before: Option<Json>,
    pub after: Option<Json>,
}

/// An outbox row: its sequence and the event without it.
#[derive(Debug)]
pub struct OutboxRow {
    pub seq: i64,
    pub body: String,
}

fn id_of(record: &Json) -> Json {
    record.get("id").cloned().unwrap_or(Json::Null)
}

fn version_of(record: &Json) -> i64 {
    record.get("version").and_then(Json::as_i64).unwrap_or(0)
}

impl Store {
    /// The record `key` names, locked until the transaction ends.
    pub(super) async fn locked(
        &self,
        conn: &mut AnyConnection,
        t: &TemplateMeta,
        key: &RecordKey,
    ) -> Result<Option<Json>, BedsError> {
        let row = self
            .bind_key(sqlx::query(self.sql(t).fetch_locked[key.slot].clone()), key)
            .fetch_optional(&mut *conn)
            .await
            .map_err(|e| self.db_error(t, e, super::Write::None))?;
        row.map(|r| record(t, &r, &[])).transpose()
    }

    /// What deleting `root` of `t` does to other records, read (and locked) before the
    /// delete: a delete per record reached through `cascade` references, transitively, and
    /// an update per remaining record whose `set_null` references point into that set. The
    /// database does not bump the version of a nulled record, so its event keeps it.
    pub(super) async fn cascade(
        &self,
        conn: &mut AnyConnection,
        t: &'static TemplateMeta,
        root: &Json,
    ) -> Result<Vec<Change>, BedsError> {
        let name = |t: &TemplateMeta, id: &Json| (t.domain, t.name, id.to_string());
        let mut deleted: HashSet<(&str, &str, String)> = HashSet::from([name(t, &id_of(root))]);
        let mut changes = Vec::new();
        // Nulled referrers by record: the record as read and the fields nulled in it.
        let mut nulled: HashMap<(&str, &str, String), (usize, Vec<&'static FieldMeta>)> =
            HashMap::new();
        let mut nulled_rows: Vec<(&'static TemplateMeta, Json)> = Vec::new();
        let mut stack = vec![(t, id_of(root))];
        while let Some((t, id)) = stack.pop() {
            let Some(referrers) = self.referrers.get(&(t.domain, t.name)) else {
                continue;
            };
            for r in referrers {
                if r.on_delete == OnDelete::Restrict {
                    continue;
                }
                let value = crate::value::id_value(t.id, &id)
                    .map_err(|m| BedsError::new(ErrorCode::Internal, format!("stored id {m}")))?;
                let rows = self
                    .bind(sqlx::query(r.select.clone()), value, Ty::Text)
                    .fetch_all(&mut *conn)
                    .await
                    .map_err(|e| self.db_error(r.template, e, super::Write::None))?;
                for row in rows {
                    let rec = record(r.template, &row, &[])?;
                    let at = name(r.template, &id_of(&rec));
                    match r.on_delete {
                        OnDelete::Cascade => {
                            if deleted.insert(at) {
                                stack.push((r.template, id_of(&rec)));
                                changes.push(Change {
                                    template: r.template,
                                    op: WriteOp::Delete,
                                    before: Some(rec),
                                    after: None,
                                });
                            }
                        }
                        OnDelete::SetNull => {
                            let entry = nulled.entry(at).or_insert_with(|| {
                                nulled_rows.push((r.template, rec));
                                (nulled_rows.len() - 1, Vec::new())
                            });
                            entry.1.push(r.field);
                        }
                        OnDelete::Restrict => {}
                    }
                }
            }
        }
        let mut updates: Vec<(usize, Change)> = nulled
            .into_iter()
            .filter(|(at, _)| !deleted.contains(at))
            .map(|(_, (i, fields))| {
                let (template, before) = &nulled_rows[i];
                let mut after = before.clone();
                if let Some(map) = after.as_object_mut() {
                    for f in fields {
                        map.insert(f.name.into(), Json::Null);
                    }
                }
                let change = Change {
                    template,
                    op: WriteOp::Update,
                    before: Some(before.clone()),
                    after: Some(after),
                };
                (i, change)
            })
            .collect();
        // In the order the records were read, so a replay of the same data writes alike.
        updates.sort_by_key(|(i, _)| *i);
        changes.extend(updates.into_iter().map(|(_, c)| c));
        Ok(changes)
    }

    /// Inserts one outbox row per change, in the write's transaction.
    pub(super) async fn record_events(
        &self,
        conn: &mut AnyConnection,
        lineage: &Lineage,
        changes: Vec<Change>,
    ) -> Result<(), BedsError> {
        if let (Some(gate), Some(c)) = (&self.outbox.gate, changes.first()) {
            sqlx::query(gate.clone())
                .execute(&mut *conn)
                .await
                .map_err(|e| self.db_error(c.template, e, super::Write::None))?;
        }
        let now = crate::value::now();
        let created_at = format_timestamp(&now);
        for c in changes {
            let shown = c.after.as_ref().or(c.before.as_ref());
            let key = Map::from_iter([("id".to_string(), shown.map(id_of).unwrap_or_default())]);
            let version = shown.map(version_of).unwrap_or_default();
            let event = WriteEvent {
                v: EVENT_VERSION,
                kind: EventKind::WriteEvent,
                id: Uuid::now_v7(),
                correlation_id: lineage.correlation_id,
                causation_id: lineage.causation_id,
                depth: lineage.depth,
                origin: lineage.origin.clone(),
                // Assigned by the database; the relay fills it in.
                seq: 0,
                domain: c.template.domain.to_string(),
                template: c.template.name.to_string(),
                op: c.op,
                key,
                version,
                committed_at: now,
                after: c.after,
                before: c.before,
                caller: lineage.caller.clone(),
            };
            let body = serde_json::to_string(&event).map_err(|e| {
                tracing::error!(error = %e, "an event could not be encoded");
                BedsError::new(ErrorCode::Internal, "an event could not be encoded")
            })?;
            sqlx::query(self.outbox.insert.clone())
                .bind(body)
                .bind(created_at.clone())
                .execute(&mut *conn)
                .await
                .map_err(|e| self.db_error(c.template, e, super::Write::None))?;
        }
        Ok(())
    }

    /// Up to `limit` outbox rows created at or before `cutoff`, in `seq` order.
    pub async fn outbox_batch(
        &self,
        limit: u32,
        cutoff: Timestamp,
    ) -> Result<Vec<OutboxRow>, sqlx::Error> {
        let rows = sqlx::query(self.outbox.batch.clone())
            .bind(format_timestamp(&cutoff))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(OutboxRow {
                    seq: r.try_get(0)?,
                    body: r.try_get(1)?,
                })
            })
            .collect()
    }

    /// Removes published (confirmed) outbox rows, in one statement.
    pub async fn outbox_remove(&self, seqs: &[i64]) -> Result<(), sqlx::Error> {
        if seqs.is_empty() {
            return Ok(());
        }
        sqlx::query(self.outbox.remove.clone())
            .bind(Json::from(seqs).to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Holds (takes, renews or takes over an expired) relay lease for `holder` for `ttl`;
    /// false while another holder's lease runs.
    pub async fn outbox_lease(&self, holder: &str, ttl: Duration) -> Result<bool, sqlx::Error> {
        let now = crate::value::now();
        let until = now + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::MAX);
        let (now, until) = (format_timestamp(&now), format_timestamp(&until));
        let renewed = sqlx::query(self.outbox.renew.clone())
            .bind(holder)
            .bind(until.clone())
            .bind(holder)
            .bind(now)
            .execute(&self.pool)
            .await?;
        if renewed.rows_affected() > 0 {
            return Ok(true);
        }
        match sqlx::query(self.outbox.take.clone())
            .bind(holder)
            .bind(until)
            .execute(&self.pool)
            .await
        {
            Ok(done) => Ok(done.rows_affected() > 0),
            // Another relay created the row first (MariaDB's plain insert says so).
            Err(sqlx::Error::Database(db))
                if matches!(self.dialect.classify(db.as_ref()), Failure::Unique(_)) =>
            {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Gives the lease up, so another node's relay takes over without waiting for it.
    pub async fn outbox_release(&self, holder: &str) -> Result<(), sqlx::Error> {
        sqlx::query(self.outbox.release.clone())
            .bind(holder)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Events waiting in the outbox, for the backlog gauge (polled every few seconds).
    pub async fn outbox_backlog(&self) -> Result<i64, sqlx::Error> {
        let count = format!("SELECT COUNT(*) FROM {}", self.dialect.quote("beds_outbox"));
        sqlx::query_scalar(sqlx::AssertSqlSafe(count))
            .fetch_one(&self.pool)
            .await
    }
}
