//! Retention's storage steps (wiki/retention.md): the expired records of a template, their
//! verbatim copies in the warehouse, the serving database's tombstones (`beds_moved`) and
//! the warehouse's cold index. Segundo's mover sequences them; each step is idempotent.

use std::collections::{HashMap, HashSet};

use serde_json::Value as Json;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::dialect::Ty;
use super::moved::template_name;
use super::outbox::Change;
use super::sql::{named, record_columns};
use super::{Store, Write, bind, record};
use crate::envelope::Tier;
use crate::error::{BedsError, ErrorCode};
use crate::events::{Lineage, WriteOp as EventOp};
use crate::meta::{FieldMeta, TemplateMeta};
use crate::value::{Timestamp, Value, format_timestamp};

const MOVED: &str = "beds_moved";
const COLD_FILE: &str = "beds_cold_file";
const COLD_INDEX: &str = "beds_cold_index";

/// One record as stored: its template and its columns in API form (`id`, `version`, the
/// declared fields), which is also its wire shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    pub template: &'static TemplateMeta,
    pub record: Json,
}

impl Stored {
    /// The record's key as the wire shows it: a UUID's text or an integer's digits.
    pub fn key(&self) -> String {
        record_key(&self.record)
    }

    /// `domain.template`, as tombstones and the cold index name templates.
    pub fn template_name(&self) -> String {
        template_name(self.template)
    }
}

fn record_key(record: &Json) -> String {
    match record.get("id") {
        Some(Json::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => String::new(),
    }
}

/// A cold file as the manifest lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColdFile {
    /// Relative to `segundo.cold_dir`.
    pub file: String,
    pub template: String,
    pub records: i64,
    pub min_key: String,
    pub max_key: String,
    pub sha256: String,
    pub created_at: String,
}

/// Why records were not retired from the serving database.
#[derive(Debug, thiserror::Error)]
pub enum RetireError {
    /// A record changed, or a record now cascades from it, after it was copied: the
    /// transaction was rolled back and the next pass copies it again.
    #[error("`{template}` {key} changed after it was copied; it moves in a later pass")]
    Changed { template: String, key: String },
    #[error(transparent)]
    Store(#[from] BedsError),
}

impl Store {
    /// Up to `limit` records of `t` whose `field` is before `cutoff`, oldest first (by
    /// `field`, then key).
    pub async fn expired(
        &self,
        t: &'static TemplateMeta,
        field: &FieldMeta,
        cutoff: Timestamp,
        limit: u32,
    ) -> Result<Vec<Json>, BedsError> {
        let d = self.dialect;
        let col = d.quote(field.column);
        let sql = format!(
            "SELECT {} FROM {} WHERE {col} < {} ORDER BY {col}, {} LIMIT ?",
            record_columns(d, t, None).join(", "),
            d.quote(t.table),
            d.arg(Ty::Timestamp),
            d.quote(t.id_column),
        );
        let q = bind(
            d,
            sqlx::query(d.prepare(sql)),
            Value::Timestamp(cutoff),
            Ty::Timestamp,
        );
        let rows = q
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.db_error(t, e, Write::None))?;
        rows.iter().map(|r| record(t, r, &[])).collect()
    }

    /// Whether a record refers to `rec` through a `restrict` reference (which would keep
    /// the serving database from deleting it).
    pub async fn restricted(
        &self,
        t: &'static TemplateMeta,
        rec: &Json,
    ) -> Result<bool, BedsError> {
        let Some(referrers) = self.referrers.get(&(t.domain, t.name)) else {
            return Ok(false);
        };
        let id = id_of(t, rec)?;
        for r in referrers
            .iter()
            .filter(|r| r.on_delete == crate::meta::OnDelete::Restrict)
        {
            let found = bind(
                self.dialect,
                sqlx::query(r.select.clone()),
                id.clone(),
                Ty::Text,
            )
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.db_error(r.template, e, Write::None))?;
            if found.is_some() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The records that deleting `rec` would delete through `cascade` references,
    /// transitively, in the order found (a child after its parent).
    pub async fn cascaded(
        &self,
        t: &'static TemplateMeta,
        rec: &Json,
    ) -> Result<Vec<Stored>, BedsError> {
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(|e| self.db_error(t, e, Write::None))?;
        let changes = self.cascade(&mut conn, t, rec).await?;
        Ok(changes
            .into_iter()
            .filter(|c| c.op == EventOp::Delete)
            .filter_map(|c| {
                c.before.map(|record| Stored {
                    template: c.template,
                    record,
                })
            })
            .collect())
    }

    /// Writes `records` with every column as given (id and version included), replacing
    /// any copy of the same key: repeating it changes nothing.
    pub async fn put_verbatim(&self, records: &[Stored]) -> Result<(), BedsError> {
        let Some(first) = records.first() else {
            return Ok(());
        };
        let d = self.dialect;
        let mut tx = self
            .pool
            .begin_with(d.begin())
            .await
            .map_err(|e| self.db_error(first.template, e, Write::None))?;
        for s in records {
            let t = s.template;
            self.delete_by_id(&mut tx, t, &s.record, None).await?;
            let mut cols = vec![(t.id_column, Ty::of_id(t.id)), (t.version_column, Ty::Int)];
            cols.extend(t.fields.iter().map(|f| (f.column, Ty::of_field(f))));
            let sql = format!(
                "INSERT INTO {} ({}) VALUES ({})",
                d.quote(t.table),
                cols.iter()
                    .map(|(c, _)| d.quote(c))
                    .collect::<Vec<_>>()
                    .join(", "),
                cols.iter()
                    .map(|(_, ty)| d.arg(*ty))
                    .collect::<Vec<_>>()
                    .join(", "),
            );
            let mut q = sqlx::query(d.prepare(sql));
            q = bind(d, q, id_of(t, &s.record)?, Ty::of_id(t.id));
            q = q.bind(version_of(&s.record));
            for f in t.fields {
                let ty = Ty::of_field(f);
                let v = storage_value(ty, s.record.get(f.name).unwrap_or(&Json::Null))
                    .map_err(|m| corrupt(t, &m))?;
                q = bind(d, q, v, ty);
            }
            q.execute(&mut *tx)
                .await
                .map_err(|e| self.db_error(t, e, Write::None))?;
        }
        tx.commit()
            .await
            .map_err(|e| self.db_error(first.template, e, Write::None))
    }

    /// The record `id` of `t` as stored here, if any.
    pub async fn stored(
        &self,
        t: &'static TemplateMeta,
        id: &Json,
    ) -> Result<Option<Json>, BedsError> {
        let d = self.dialect;
        let sql = format!(
            "SELECT {} FROM {} WHERE {} = {}",
            record_columns(d, t, None).join(", "),
            d.quote(t.table),
            d.quote(t.id_column),
            d.arg(Ty::of_id(t.id))
        );
        let id = crate::value::id_value(t.id, id).map_err(|m| corrupt(t, &m))?;
        let row: Option<AnyRow> = bind(d, sqlx::query(d.prepare(sql)), id, Ty::of_id(t.id))
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.db_error(t, e, Write::None))?;
        row.map(|r| record(t, &r, &[])).transpose()
    }

    /// In one transaction: deletes `roots` and what cascades from them (`moved`, copied to
    /// `tier` already) at the versions copied, records a tombstone per record and, given a
    /// lineage, the write events a delete of them would have (deletes, and updates of
    /// `set_null` referrers). Rolled back if any record changed since it was copied.
    pub async fn retire(
        &self,
        roots: &[Stored],
        moved: &[Stored],
        tier: Tier,
        lineage: Option<&Lineage>,
    ) -> Result<(), RetireError> {
        let Some(first) = moved.first() else {
            return Ok(());
        };
        let mut tx = self
            .pool
            .begin_with(self.dialect.begin())
            .await
            .map_err(|e| self.db_error(first.template, e, Write::None))?;
        let copied: HashMap<(String, String), i64> = moved
            .iter()
            .map(|s| ((s.template_name(), s.key()), version_of(&s.record)))
            .collect();
        let changed = |template: String, key: String| RetireError::Changed { template, key };
        let mut gone: HashSet<(String, String)> = HashSet::new();
        let mut changes = Vec::new();
        for root in roots {
            let at = (root.template_name(), root.key());
            // Deleted already, as the cascade of an earlier root.
            if gone.contains(&at) {
                continue;
            }
            let cascade = self.cascade(&mut tx, root.template, &root.record).await?;
            for c in cascade.iter().filter(|c| c.op == EventOp::Delete) {
                let before = c.before.as_ref().map(record_key).unwrap_or_default();
                let key = (template_name(c.template), before);
                let version = c.before.as_ref().map(version_of);
                if copied.get(&key).copied() != version {
                    return Err(changed(key.0, key.1));
                }
            }
            let done = self
                .delete_by_id(
                    &mut tx,
                    root.template,
                    &root.record,
                    Some(version_of(&root.record)),
                )
                .await?;
            if done == 0 {
                return Err(changed(at.0, at.1));
            }
            gone.insert(at);
            changes.push(Change {
                template: root.template,
                op: EventOp::Delete,
                before: Some(root.record.clone()),
                after: None,
            });
            for c in cascade {
                if c.op == EventOp::Delete {
                    let key = c.before.as_ref().map(record_key).unwrap_or_default();
                    gone.insert((template_name(c.template), key));
                }
                changes.push(c);
            }
        }
        // A referrer nulled by one root may itself be moved with another.
        changes.retain(|c| {
            c.op == EventOp::Delete
                || !gone.contains(&(
                    template_name(c.template),
                    c.before.as_ref().map(record_key).unwrap_or_default(),
                ))
        });
        let now = format_timestamp(&crate::value::now());
        for s in moved {
            // Copied as a cascade that no longer holds (its reference changed).
            if !gone.contains(&(s.template_name(), s.key())) {
                return Err(changed(s.template_name(), s.key()));
            }
            self.tombstone(&mut tx, s, tier, &now)
                .await
                .map_err(|e| self.db_error(s.template, e, Write::None))?;
            // A lease on a record that left the serving database guards nothing.
            self.forget_lease(&mut tx, s.template, &s.record).await?;
        }
        if let Some(lineage) = lineage {
            self.record_events(&mut tx, lineage, changes).await?;
        }
        tx.commit()
            .await
            .map_err(|e| self.db_error(first.template, e, Write::None))?;
        Ok(())
    }

    /// A statement on the tombstones and the cold index, its `{name}`s quoted.
    fn retention_sql(&self, text: &str) -> sqlx::SqlStr {
        let d = self.dialect;
        d.prepare(named(
            d,
            text,
            &[
                ("moved", MOVED),
                ("cold_file", COLD_FILE),
                ("cold_index", COLD_INDEX),
                ("template", "template"),
                ("record_key", "record_key"),
                ("tier", "tier"),
                ("moved_at", "moved_at"),
                ("file", "file"),
                ("line", "line"),
                ("records", "records"),
                ("min_key", "min_key"),
                ("max_key", "max_key"),
                ("sha256", "sha256"),
                ("created_at", "created_at"),
            ],
        ))
    }

    /// Deletes the row `rec` names (at `version`, if given); the rows deleted.
    async fn delete_by_id(
        &self,
        conn: &mut sqlx::AnyConnection,
        t: &'static TemplateMeta,
        rec: &Json,
        version: Option<i64>,
    ) -> Result<u64, BedsError> {
        let d = self.dialect;
        let mut sql = format!(
            "DELETE FROM {} WHERE {} = {}",
            d.quote(t.table),
            d.quote(t.id_column),
            d.arg(Ty::of_id(t.id))
        );
        if version.is_some() {
            sql.push_str(&format!(" AND {} = ?", d.quote(t.version_column)));
        }
        let mut q = bind(
            d,
            sqlx::query(d.prepare(sql)),
            id_of(t, rec)?,
            Ty::of_id(t.id),
        );
        if let Some(v) = version {
            q = q.bind(v);
        }
        let done = q
            .execute(&mut *conn)
            .await
            .map_err(|e| self.db_error(t, e, Write::Delete))?;
        Ok(done.rows_affected())
    }

    async fn tombstone(
        &self,
        conn: &mut sqlx::AnyConnection,
        s: &Stored,
        tier: Tier,
        now: &str,
    ) -> Result<(), sqlx::Error> {
        let (template, key) = (s.template_name(), s.key());
        self.forget_record(conn, MOVED, &template, &key).await?;
        sqlx::query(self.retention_sql(
            "INSERT INTO {moved} ({template}, {record_key}, {tier}, {moved_at}) \
             VALUES (?, ?, ?, ?)",
        ))
        .bind(template)
        .bind(key)
        .bind(tier.as_str())
        .bind(now.to_string())
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    /// Deletes the row of `table` (the tombstones or the cold index) that names one
    /// record by its template and key.
    async fn forget_record(
        &self,
        conn: &mut sqlx::AnyConnection,
        table: &str,
        template: &str,
        key: &str,
    ) -> Result<(), sqlx::Error> {
        let sql = format!(
            "DELETE FROM {} WHERE {{template}} = ? AND {{record_key}} = ?",
            self.dialect.quote(table)
        );
        sqlx::query(self.retention_sql(&sql))
            .bind(template.to_string())
            .bind(key.to_string())
            .execute(&mut *conn)
            .await?;
        Ok(())
    }

    /// Sets the tombstones of `records` to `tier`, or removes them (`None`), in one
    /// transaction; repeating it changes nothing.
    pub async fn set_moved(
        &self,
        records: &[Stored],
        tier: Option<Tier>,
    ) -> Result<(), sqlx::Error> {
        let mut tx = self.pool.begin_with(self.dialect.begin()).await?;
        for s in records {
            match tier {
                Some(tier) => {
                    sqlx::query(self.retention_sql(
                        "UPDATE {moved} SET {tier} = ? WHERE {template} = ? AND {record_key} = ?",
                    ))
                    .bind(tier.as_str())
                    .bind(s.template_name())
                    .bind(s.key())
                    .execute(&mut *tx)
                    .await?;
                }
                None => {
                    self.forget_record(&mut tx, MOVED, &s.template_name(), &s.key())
                        .await?
                }
            }
        }
        tx.commit().await
    }

    /// In one warehouse transaction: records `file` and the line of each of `records` in
    /// it (replacing what an earlier attempt recorded), then deletes the records' rows.
    /// Without a file, only deletes them.
    pub async fn settle_cold(
        &self,
        file: Option<&ColdFile>,
        records: &[Stored],
    ) -> Result<(), BedsError> {
        let Some(first) = records.first() else {
            return Ok(());
        };
        let t = first.template;
        let failed = |e| self.db_error(t, e, Write::None);
        let mut tx = self
            .pool
            .begin_with(self.dialect.begin())
            .await
            .map_err(failed)?;
        if let Some(file) = file {
            sqlx::query(self.retention_sql("DELETE FROM {cold_file} WHERE {file} = ?"))
                .bind(file.file.clone())
                .execute(&mut *tx)
                .await
                .map_err(failed)?;
            sqlx::query(self.retention_sql(
                "INSERT INTO {cold_file} ({file}, {template}, {records}, {min_key}, {max_key}, \
                 {sha256}, {created_at}) VALUES (?, ?, ?, ?, ?, ?, ?)",
            ))
            .bind(file.file.clone())
            .bind(file.template.clone())
            .bind(file.records)
            .bind(file.min_key.clone())
            .bind(file.max_key.clone())
            .bind(file.sha256.clone())
            .bind(file.created_at.clone())
            .execute(&mut *tx)
            .await
            .map_err(failed)?;
            for (line, s) in records.iter().enumerate() {
                let (template, key) = (s.template_name(), s.key());
                self.forget_record(&mut tx, COLD_INDEX, &template, &key)
                    .await
                    .map_err(failed)?;
                sqlx::query(self.retention_sql(
                    "INSERT INTO {cold_index} ({template}, {record_key}, {file}, {line}) \
                     VALUES (?, ?, ?, ?)",
                ))
                .bind(template)
                .bind(key)
                .bind(file.file.clone())
                .bind(i64::try_from(line + 1).unwrap_or(i64::MAX))
                .execute(&mut *tx)
                .await
                .map_err(failed)?;
            }
        }
        for s in records {
            self.delete_by_id(&mut tx, s.template, &s.record, None)
                .await?;
        }
        tx.commit().await.map_err(failed)
    }

    /// Every cold file recorded, in name order (what the manifest lists).
    pub async fn cold_files(&self) -> Result<Vec<ColdFile>, sqlx::Error> {
        let rows = sqlx::query(self.retention_sql(
            "SELECT {file}, {template}, {records}, {min_key}, {max_key}, {sha256}, {created_at} \
             FROM {cold_file} ORDER BY {file}",
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ColdFile {
                    file: r.try_get(0)?,
                    template: r.try_get(1)?,
                    records: r.try_get(2)?,
                    min_key: r.try_get(3)?,
                    max_key: r.try_get(4)?,
                    sha256: r.try_get(5)?,
                    created_at: r.try_get(6)?,
                })
            })
            .collect()
    }
}

fn id_of(t: &TemplateMeta, rec: &Json) -> Result<Value, BedsError> {
    let id = rec.get("id").cloned().unwrap_or(Json::Null);
    crate::value::id_value(t.id, &id).map_err(|m| corrupt(t, &m))
}

fn version_of(rec: &Json) -> i64 {
    rec.get("version")
        .and_then(Json::as_i64)
        .unwrap_or_default()
}

fn corrupt(t: &TemplateMeta, m: &str) -> BedsError {
    BedsError::new(
        ErrorCode::Internal,
        format!("a stored `{}` record cannot be copied: {m}", t.name),
    )
}

/// A column's API value (as [`record`] reads it) as the value that stores it again.
fn storage_value(ty: Ty, j: &Json) -> Result<Value, String> {
    let text = || {
        j.as_str()
            .map(str::to_string)
            .ok_or_else(|| format!("expected text, found {j}"))
    };
    Ok(match (ty, j) {
        (_, Json::Null) => Value::Null,
        (Ty::Int, _) => Value::Int(
            j.as_i64()
                .ok_or_else(|| format!("expected an integer, found {j}"))?,
        ),
        (Ty::Float, _) => Value::Float(
            j.as_f64()
                .ok_or_else(|| format!("expected a number, found {j}"))?,
        ),
        (Ty::Bool, _) => Value::Bool(
            j.as_bool()
                .ok_or_else(|| format!("expected a bool, found {j}"))?,
        ),
        (Ty::Json, _) => Value::Json(j.clone()),
        (Ty::Text, _) => Value::Text(text()?),
        (Ty::Uuid, _) => Value::Uuid(text()?.parse().map_err(|e| format!("{e}"))?),
        (Ty::Timestamp, _) => Value::Timestamp(
            chrono::DateTime::parse_from_rfc3339(&text()?)
                .map_err(|e| format!("{e}"))?
                .with_timezone(&chrono::Utc),
        ),
        (Ty::Date, _) => Value::Date(
            chrono::NaiveDate::parse_from_str(&text()?, "%Y-%m-%d").map_err(|e| format!("{e}"))?,
        ),
    })
}
