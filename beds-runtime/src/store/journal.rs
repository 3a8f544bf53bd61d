//! The journal of templates declaring `journal`: every version of a record, appended in the
//! transaction of the write that made it (cascaded deletes and `set_null` updates
//! included), and read back as a record's history or as the record at a version or time.
//!
//! One table for every journaled template, each entry the record as the API shows it
//! (JSON): a template's journal then never needs its own DDL or a migration when fields
//! change, and an entry reads back exactly as `fetch` answered then (wiki/journal.md).

use serde_json::Value as Json;
use sqlx::{AnyConnection, Row, SqlStr};

use super::dialect::Dialect;
use super::outbox::Change;
use super::sql::named;
use super::{Store, Write};
use crate::envelope::AsOf;
use crate::error::{BedsError, ErrorCode};
use crate::events::WriteOp;
use crate::meta::{DomainMeta, IdKind, TemplateMeta};
use crate::value::format_timestamp;

const TABLE: &str = "beds_journal";

/// The statements of the journal, prepared once.
#[derive(Debug)]
pub(super) struct JournalSql {
    insert: SqlStr,
    newest: SqlStr,
    older: SqlStr,
    at_version: SqlStr,
    at_time: SqlStr,
}

/// Whether any template of the catalog keeps a journal.
pub(super) fn wanted(domains: &[&'static DomainMeta]) -> bool {
    crate::meta::templates(domains).any(|(_, t)| t.capabilities.journal)
}

/// The journal table and its index: entries in `seq` order per record.
pub(super) fn ddl(d: &dyn Dialect) -> Vec<String> {
    let [key, text, time] = d.idempotency_types();
    let int = d.key_type(IdKind::Sequence);
    let q = |s: &str| d.quote(s);
    vec![
        format!(
            "CREATE TABLE IF NOT EXISTS {} (\n  {} {},\n  {} {key} NOT NULL,\n  {} {key} NOT NULL,\n  {} {key} NOT NULL,\n  {} {key} NOT NULL,\n  {} {int} NOT NULL,\n  {} {key} NOT NULL,\n  {} {time} NOT NULL,\n  {} {text} NOT NULL\n){}",
            q(TABLE),
            q("seq"),
            d.id_column(IdKind::Sequence),
            q("record_key"),
            q("domain"),
            q("template"),
            q("record_id"),
            q("version"),
            q("op"),
            q("written_at"),
            q("record"),
            d.table_options()
        ),
        format!(
            "CREATE INDEX IF NOT EXISTS {} ON {} ({}, {})",
            q("beds_journal_record_idx"),
            q(TABLE),
            q("record_key"),
            q("seq")
        ),
    ]
}

pub(super) fn journal_sql(d: &dyn Dialect) -> JournalSql {
    let sql = |s: &str| {
        d.prepare(named(
            d,
            s,
            &[
                ("t", TABLE),
                ("seq", "seq"),
                ("record_key", "record_key"),
                ("domain", "domain"),
                ("template", "template"),
                ("record_id", "record_id"),
                ("version", "version"),
                ("op", "op"),
                ("written_at", "written_at"),
                ("record", "record"),
            ],
        ))
    };
    let select = "SELECT {seq}, {op}, {written_at}, {record} FROM {t} WHERE {record_key} = ?";
    JournalSql {
        insert: sql(
            "INSERT INTO {t} ({record_key}, {domain}, {template}, {record_id}, {version}, {op}, {written_at}, {record}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        ),
        newest: sql(&format!("{select} ORDER BY {{seq}} DESC LIMIT ?")),
        older: sql(&format!(
            "{select} AND {{seq}} < ? ORDER BY {{seq}} DESC LIMIT ?"
        )),
        at_version: sql(&format!(
            "{select} AND {{version}} <= ? ORDER BY {{seq}} DESC LIMIT 1"
        )),
        at_time: sql(&format!(
            "{select} AND {{written_at}} <= ? ORDER BY {{seq}} DESC LIMIT 1"
        )),
    }
}

/// One journal entry as answered: `version`, `op`, `written_at` and the `record` as it was.
#[derive(Debug)]
pub(crate) struct Entry {
    /// The entry's place in the journal, for the next page's cursor.
    pub seq: i64,
    pub op: String,
    pub item: Json,
}

/// The id of a record as the journal keys it: `domain.template/id`.
fn record_key(t: &TemplateMeta, id: &str) -> String {
    format!("{}.{}/{id}", t.domain, t.name)
}

fn id_text(record: &Json) -> String {
    match record.get("id") {
        Some(Json::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => String::new(),
    }
}

fn version_of(record: &Json) -> i64 {
    record.get("version").and_then(Json::as_i64).unwrap_or(0)
}

impl Store {
    /// Appends one entry per change of a journaled template. A delete is a tombstone one
    /// version after the last: the record's last state, so the history shows what went.
    pub(super) async fn journal(
        &self,
        conn: &mut AnyConnection,
        changes: &[Change],
    ) -> Result<(), BedsError> {
        let Some(s) = &self.journal else {
            return Ok(());
        };
        let written_at = format_timestamp(&crate::value::now());
        for c in changes.iter().filter(|c| c.template.capabilities.journal) {
            let t = c.template;
            let (record, version) = match (c.op, &c.after, &c.before) {
                (WriteOp::Delete, _, Some(before)) => {
                    let version = version_of(before) + 1;
                    let mut gone = before.clone();
                    if let Some(map) = gone.as_object_mut() {
                        map.insert("version".into(), Json::from(version));
                    }
                    (gone, version)
                }
                (_, Some(after), _) => (after.clone(), version_of(after)),
                _ => continue,
            };
            let id = id_text(&record);
            sqlx::query(s.insert.clone())
                .bind(record_key(t, &id))
                .bind(t.domain)
                .bind(t.name)
                .bind(id)
                .bind(version)
                .bind(c.op.name())
                .bind(written_at.clone())
                .bind(record.to_string())
                .execute(&mut *conn)
                .await
                .map_err(|e| self.db_error(t, e, Write::None))?;
        }
        Ok(())
    }

    /// Up to `limit` journal entries of the record with id `id`, newest first, older than
    /// the entry `after`.
    pub(crate) async fn history(
        &self,
        t: &TemplateMeta,
        id: &str,
        limit: u32,
        after: Option<i64>,
    ) -> Result<Vec<Entry>, BedsError> {
        let s = self.journal_of(t)?;
        let q = match after {
            None => sqlx::query(s.newest.clone()).bind(record_key(t, id)),
            Some(seq) => sqlx::query(s.older.clone())
                .bind(record_key(t, id))
                .bind(seq),
        };
        let rows = q
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.db_error(t, e, Write::None))?;
        rows.iter().map(|r| self.entry(t, r)).collect()
    }

    /// The record with id `id` as it was at a version or time: the newest entry at or
    /// before it, `None` if there is none or it is a tombstone.
    pub(crate) async fn as_of(
        &self,
        t: &TemplateMeta,
        id: &str,
        as_of: AsOf,
    ) -> Result<Option<Json>, BedsError> {
        let s = self.journal_of(t)?;
        let q = match as_of {
            AsOf::Version(v) => sqlx::query(s.at_version.clone())
                .bind(record_key(t, id))
                .bind(v),
            AsOf::Time(at) => sqlx::query(s.at_time.clone())
                .bind(record_key(t, id))
                .bind(format_timestamp(&at)),
        };
        let row = q
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.db_error(t, e, Write::None))?;
        let Some(row) = row else {
            return Ok(None);
        };
        let mut entry = self.entry(t, &row)?;
        if entry.op == WriteOp::Delete.name() {
            return Ok(None);
        }
        Ok(entry.item.get_mut("record").map(Json::take))
    }

    fn journal_of(&self, t: &TemplateMeta) -> Result<&JournalSql, BedsError> {
        self.journal.as_deref().ok_or_else(|| {
            BedsError::new(
                ErrorCode::Internal,
                format!("`{}` has no journal in this store", t.name),
            )
        })
    }

    fn entry(&self, t: &TemplateMeta, row: &sqlx::any::AnyRow) -> Result<Entry, BedsError> {
        let unreadable = |e: &dyn std::fmt::Display| {
            tracing::error!(template = t.name, error = %e, "a journal entry could not be read");
            BedsError::new(
                ErrorCode::Internal,
                format!("a journal entry of `{}` could not be read", t.name),
            )
        };
        let seq: i64 = row.try_get(0).map_err(|e| unreadable(&e))?;
        let op: String = row.try_get(1).map_err(|e| unreadable(&e))?;
        let written_at: String = row.try_get(2).map_err(|e| unreadable(&e))?;
        let text: String = row.try_get(3).map_err(|e| unreadable(&e))?;
        let record: Json = serde_json::from_str(&text).map_err(|e| unreadable(&e))?;
        // The record nested, so its own fields never clash with the entry's.
        let item = serde_json::json!({
            "version": record.get("version").cloned().unwrap_or(Json::Null),
            "op": op,
            "written_at": written_at,
            "record": record,
        });
        Ok(Entry { seq, op, item })
    }
}
