//! Bulk import jobs (wiki/migration.md): a job's progress, the batches it has applied and
//! the lines it rejected, written in the transaction of the batch's records, so a batch is
//! applied exactly once however often it is delivered.

use serde_json::{Value as Json, json};
use sqlx::{AnyConnection, Row};
use uuid::Uuid;

use super::Store;
use super::dialect::{Dialect, Failure};
use super::outbox::Change;
use super::sql::named;
use crate::error::{BedsError, ErrorClass, ErrorCode};
use crate::events::{Lineage, WriteOp as EventOp};
use crate::meta::{IdKind, TemplateMeta};
use crate::value::{Imported, format_timestamp};

const JOBS: &str = "beds_mig_jobs";
const BATCHES: &str = "beds_mig_batches";
const REJECTS: &str = "beds_mig_rejects";

/// The bulk tables: one row per job, one per applied batch, one per rejected line.
pub(super) fn ddl(d: &dyn Dialect) -> Vec<String> {
    let [key, text, time] = d.idempotency_types();
    let int = d.key_type(IdKind::Sequence);
    let q = |s: &str| d.quote(s);
    vec![
        format!(
            "CREATE TABLE IF NOT EXISTS {} (\n  {} {key} NOT NULL PRIMARY KEY,\n  {} {key} NOT NULL,\n  {} {int} NOT NULL,\n  {} {int} NOT NULL,\n  {} {int} NOT NULL,\n  {} {int} NOT NULL,\n  {} {time} NOT NULL,\n  {} {time} NOT NULL\n){}",
            q(JOBS),
            q("job"),
            q("template"),
            q("batch"),
            q("committed_through"),
            q("accepted"),
            q("rejected"),
            q("started_at"),
            q("updated_at"),
            d.table_options()
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {} (\n  {} {key} NOT NULL,\n  {} {int} NOT NULL,\n  {} {int} NOT NULL,\n  {} {int} NOT NULL,\n  {} {int} NOT NULL,\n  PRIMARY KEY ({}, {})\n){}",
            q(BATCHES),
            q("job"),
            q("first_line"),
            q("lines"),
            q("accepted"),
            q("rejected"),
            q("job"),
            q("first_line"),
            d.table_options()
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {} (\n  {} {key} NOT NULL,\n  {} {int} NOT NULL,\n  {} {key} NOT NULL,\n  {} {text} NOT NULL,\n  PRIMARY KEY ({}, {})\n){}",
            q(REJECTS),
            q("job"),
            q("line"),
            q("code"),
            q("message"),
            q("job"),
            q("line"),
            d.table_options()
        ),
    ]
}

/// One line of a batch, as the segundo role validated it.
#[derive(Debug)]
pub enum Line {
    /// A valid record, inserted unless the database refuses it (a unique key taken, a
    /// reference missing), which rejects the line.
    Record {
        imported: Imported,
        tokens: Vec<(usize, Vec<String>)>,
    },
    /// Refused before the database: malformed JSON, invalid values.
    Rejected(BedsError),
}

/// A job's progress row.
#[derive(Debug, Clone)]
pub struct Job {
    pub job: String,
    pub template: String,
    pub batch: i64,
    /// Every line below it is applied: the line a resumed import starts from.
    pub committed_through: i64,
    pub accepted: i64,
    pub rejected: i64,
    pub started_at: String,
    pub updated_at: String,
}

impl Job {
    pub fn to_json(&self) -> Json {
        json!({
            "job": self.job,
            "template": self.template,
            "batch": self.batch,
            "committed_through": self.committed_through,
            "accepted": self.accepted,
            "rejected": self.rejected,
            "started_at": self.started_at,
            "updated_at": self.updated_at,
        })
    }
}

/// What a batch did (or, `replayed`, did when it was first applied).
#[derive(Debug)]
pub struct Applied {
    pub accepted: i64,
    pub rejected: i64,
    pub replayed: bool,
    pub job: Job,
}

/// A rejected line as stored.
#[derive(Debug, Clone)]
pub struct Reject {
    pub line: i64,
    pub code: String,
    pub message: String,
}

impl Store {
    /// A failure of the bulk statements: transient ones are retried by the importer.
    fn bulk_error(&self, e: sqlx::Error) -> BedsError {
        let transient = match &e {
            sqlx::Error::Database(d) => {
                matches!(self.dialect.classify(d.as_ref()), Failure::Transient)
            }
            sqlx::Error::RowNotFound | sqlx::Error::ColumnDecode { .. } => false,
            _ => true,
        };
        if transient {
            return BedsError::new(
                ErrorCode::DatabaseUnavailable,
                format!("the database is unavailable: {e}"),
            );
        }
        tracing::error!(error = %e, "bulk job tables");
        BedsError::new(
            ErrorCode::Internal,
            format!(
                "the bulk job tables could not be used ({e}); create them with the schema \
                 (`beds schema`, or database.apply_schema)"
            ),
        )
    }

    fn bulk_sql(&self, text: &str) -> sqlx::SqlStr {
        let d = self.dialect;
        d.prepare(named(
            d,
            text,
            &[
                ("jobs", JOBS),
                ("batches", BATCHES),
                ("rejects", REJECTS),
                ("job", "job"),
                ("template", "template"),
                ("batch", "batch"),
                ("through", "committed_through"),
                ("accepted", "accepted"),
                ("rejected", "rejected"),
                ("started", "started_at"),
                ("updated", "updated_at"),
                ("first", "first_line"),
                ("lines", "lines"),
                ("line", "line"),
                ("code", "code"),
                ("message", "message"),
            ],
        ))
    }

    async fn job_row(
        &self,
        conn: &mut AnyConnection,
        job: &str,
        lock: bool,
    ) -> Result<Option<Job>, BedsError> {
        let mut text = "SELECT {job}, {template}, {batch}, {through}, {accepted}, {rejected}, \
                        {started}, {updated} FROM {jobs} WHERE {job} = ?"
            .to_string();
        if lock {
            text.push_str(self.dialect.lock_rows());
        }
        let row = sqlx::query(self.bulk_sql(&text))
            .bind(job)
            .fetch_optional(&mut *conn)
            .await
            .map_err(|e| self.bulk_error(e))?;
        row.map(|r| {
            Ok(Job {
                job: r.try_get(0)?,
                template: r.try_get(1)?,
                batch: r.try_get(2)?,
                committed_through: r.try_get(3)?,
                accepted: r.try_get(4)?,
                rejected: r.try_get(5)?,
                started_at: r.try_get(6)?,
                updated_at: r.try_get(7)?,
            })
        })
        .transpose()
        .map_err(|e| self.bulk_error(e))
    }

    /// The job `job`, if it exists.
    pub async fn bulk_job(&self, job: &str) -> Result<Option<Job>, BedsError> {
        let mut conn = self.pool.acquire().await.map_err(|e| self.bulk_error(e))?;
        self.job_row(&mut conn, job, false).await
    }

    /// Creates the job (or returns it as it is): `template` and `batch` must match an
    /// existing job's, so a resumed import cuts the file into the same batches.
    pub async fn bulk_begin(
        &self,
        job: &str,
        template: &str,
        batch: i64,
    ) -> Result<Job, BedsError> {
        let mut conn = self.pool.acquire().await.map_err(|e| self.bulk_error(e))?;
        if let Some(found) = self.job_row(&mut conn, job, false).await? {
            return same_job(found, template, None);
        }
        let now = format_timestamp(&crate::value::now());
        let inserted = sqlx::query(self.bulk_sql(
            "INSERT INTO {jobs} ({job}, {template}, {batch}, {through}, {accepted}, {rejected}, \
             {started}, {updated}) VALUES (?, ?, ?, 1, 0, 0, ?, ?)",
        ))
        .bind(job)
        .bind(template)
        .bind(batch)
        .bind(&now)
        .bind(&now)
        .execute(&mut *conn)
        .await;
        // A concurrent `begin` of the same job inserted first: its row is the job.
        if let Err(e) = inserted {
            tracing::debug!(error = %e, "bulk job inserted concurrently");
        }
        let found = self
            .job_row(&mut conn, job, false)
            .await?
            .ok_or_else(|| BedsError::new(ErrorCode::Internal, "the bulk job was not created"))?;
        same_job(found, template, None)
    }

    /// Applies one batch of job `job` starting at line `first`: in one transaction, the
    /// valid records (each under a savepoint, so one refused by the database rejects its
    /// line only), their journal entries and write events, the rejected lines, the batch's
    /// row and the job's progress. A batch applied before changes nothing and answers
    /// what it did then.
    pub async fn bulk_apply(
        &self,
        t: &'static TemplateMeta,
        job: &str,
        first: i64,
        lines: Vec<Line>,
        lineage: Option<&Lineage>,
    ) -> Result<Applied, BedsError> {
        let template = format!("{}.{}", t.domain, t.name);
        let count = lines.len() as i64;
        let mut tx = self
            .pool
            .begin_with(self.dialect.begin())
            .await
            .map_err(|e| self.bulk_error(e))?;
        // Locked: batches of one job are applied one at a time.
        let found = self.job_row(&mut tx, job, true).await?.ok_or_else(|| {
            BedsError::new(
                ErrorCode::NotFound,
                format!("no bulk job `{job}`; send `begin` for it first"),
            )
        })?;
        let found = same_job(found, &template, Some((first, count)))?;
        if let Some((accepted, rejected)) = self.batch_row(&mut tx, job, first).await? {
            drop(tx);
            return Ok(Applied {
                accepted,
                rejected,
                replayed: true,
                job: found,
            });
        }
        let mut changes = Vec::new();
        let mut rejects = Vec::new();
        for (i, line) in lines.into_iter().enumerate() {
            let at = first + i as i64;
            match line {
                Line::Rejected(e) => rejects.push((at, e)),
                Line::Record { imported, tokens } => {
                    match self.import_one(&mut tx, t, imported, tokens).await {
                        Ok(after) => changes.push(Change {
                            template: t,
                            op: EventOp::Create,
                            before: None,
                            after: Some(after),
                        }),
                        // Not the line's fault: the batch fails whole, and is sent again.
                        Err(e) if e.class == ErrorClass::Transient => return Err(e),
                        Err(e) => rejects.push((at, e)),
                    }
                }
            }
        }
        let accepted = changes.len() as i64;
        let rejected = rejects.len() as i64;
        self.journal(&mut tx, &changes).await?;
        if let Some(lineage) = lineage
            && !changes.is_empty()
        {
            self.record_events(&mut tx, lineage, changes).await?;
        }
        let insert_reject = self.bulk_sql(
            "INSERT INTO {rejects} ({job}, {line}, {code}, {message}) VALUES (?, ?, ?, ?)",
        );
        for (line, e) in &rejects {
            sqlx::query(insert_reject.clone())
                .bind(job)
                .bind(*line)
                .bind(code_name(e.code))
                .bind(&e.message)
                .execute(&mut *tx)
                .await
                .map_err(|e| self.bulk_error(e))?;
        }
        sqlx::query(self.bulk_sql(
            "INSERT INTO {batches} ({job}, {first}, {lines}, {accepted}, {rejected}) \
             VALUES (?, ?, ?, ?, ?)",
        ))
        .bind(job)
        .bind(first)
        .bind(count)
        .bind(accepted)
        .bind(rejected)
        .execute(&mut *tx)
        .await
        .map_err(|e| self.bulk_error(e))?;
        // The mark advances over every batch applied contiguously from it (batches may
        // commit out of order).
        let mut through = found.committed_through;
        let next = self.bulk_sql("SELECT {lines} FROM {batches} WHERE {job} = ? AND {first} = ?");
        loop {
            let row = sqlx::query(next.clone())
                .bind(job)
                .bind(through)
                .fetch_optional(&mut *tx)
                .await
                .map_err(|e| self.bulk_error(e))?;
            match row {
                Some(r) => through += r.try_get::<i64, _>(0).map_err(|e| self.bulk_error(e))?,
                None => break,
            }
        }
        let now = format_timestamp(&crate::value::now());
        sqlx::query(self.bulk_sql(
            "UPDATE {jobs} SET {through} = ?, {accepted} = {accepted} + ?, \
             {rejected} = {rejected} + ?, {updated} = ? WHERE {job} = ?",
        ))
        .bind(through)
        .bind(accepted)
        .bind(rejected)
        .bind(&now)
        .bind(job)
        .execute(&mut *tx)
        .await
        .map_err(|e| self.bulk_error(e))?;
        tx.commit().await.map_err(|e| self.bulk_error(e))?;
        Ok(Applied {
            accepted,
            rejected,
            replayed: false,
            job: Job {
                committed_through: through,
                accepted: found.accepted + accepted,
                rejected: found.rejected + rejected,
                updated_at: now,
                ..found
            },
        })
    }

    async fn batch_row(
        &self,
        conn: &mut AnyConnection,
        job: &str,
        first: i64,
    ) -> Result<Option<(i64, i64)>, BedsError> {
        let row = sqlx::query(self.bulk_sql(
            "SELECT {accepted}, {rejected} FROM {batches} WHERE {job} = ? AND {first} = ?",
        ))
        .bind(job)
        .bind(first)
        .fetch_optional(&mut *conn)
        .await
        .map_err(|e| self.bulk_error(e))?;
        row.map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .transpose()
            .map_err(|e| self.bulk_error(e))
    }

    /// Inserts one record under a savepoint: refused by the database, only it is undone.
    async fn import_one(
        &self,
        conn: &mut AnyConnection,
        t: &'static TemplateMeta,
        imported: Imported,
        tokens: Vec<(usize, Vec<String>)>,
    ) -> Result<Json, BedsError> {
        let savepoint = |s: &'static str| sqlx::query(s);
        savepoint("SAVEPOINT beds_mig_line")
            .execute(&mut *conn)
            .await
            .map_err(|e| self.bulk_error(e))?;
        let id = match t.id {
            IdKind::Uuid7 => Some(imported.id.unwrap_or_else(Uuid::now_v7)),
            IdKind::Sequence => None,
        };
        let done = async {
            let record = self
                .insert(&mut *conn, t, id, imported.version, imported.values)
                .await?;
            self.set_tokens(&mut *conn, t, &record, tokens, false)
                .await?;
            Ok::<_, BedsError>(record)
        }
        .await;
        match done {
            Ok(record) => {
                savepoint("RELEASE SAVEPOINT beds_mig_line")
                    .execute(&mut *conn)
                    .await
                    .map_err(|e| self.bulk_error(e))?;
                Ok(record)
            }
            Err(e) => {
                savepoint("ROLLBACK TO SAVEPOINT beds_mig_line")
                    .execute(&mut *conn)
                    .await
                    .map_err(|e| self.bulk_error(e))?;
                Err(e)
            }
        }
    }

    /// Up to `limit` rejected lines of `job` after line `after`, in line order.
    pub async fn bulk_rejects(
        &self,
        job: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<Reject>, BedsError> {
        let rows = sqlx::query(self.bulk_sql(
            "SELECT {line}, {code}, {message} FROM {rejects} WHERE {job} = ? AND {line} > ? \
             ORDER BY {line} LIMIT ?",
        ))
        .bind(job)
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.bulk_error(e))?;
        rows.iter()
            .map(|r| {
                Ok(Reject {
                    line: r.try_get(0)?,
                    code: r.try_get(1)?,
                    message: r.try_get(2)?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(|e| self.bulk_error(e))
    }
}

/// A job found for `template` (and, for a batch, one of its batches): refused when the
/// job was begun for another template or batch size.
fn same_job(found: Job, template: &str, batch: Option<(i64, i64)>) -> Result<Job, BedsError> {
    if found.template != template {
        return Err(BedsError::new(
            ErrorCode::InvalidInput,
            format!(
                "bulk job `{}` imports `{}`, not `{template}`",
                found.job, found.template
            ),
        ));
    }
    if let Some((first, lines)) = batch
        && (first < 1 || (first - 1) % found.batch != 0 || lines > found.batch || lines < 1)
    {
        return Err(BedsError::new(
            ErrorCode::InvalidInput,
            format!(
                "bulk job `{}` takes batches of {} lines starting at lines 1, {}, …; this one \
                 has {lines} lines from line {first}",
                found.job,
                found.batch,
                found.batch + 1
            ),
        ));
    }
    Ok(found)
}

/// The stable name of a code, as replies spell it.
fn code_name(code: ErrorCode) -> String {
    match serde_json::to_value(code) {
        Ok(Json::String(s)) => s,
        _ => "unknown".into(),
    }
}
