//! Leases of templates declaring `locking`, kept in the runtime's own table `beds_locks`,
//! one row per (domain, template, record id): no column is added to a template's table
//! (the schema step never alters an existing table), and one set of statements serves every
//! template.
//!
//! Taking a lease and guarding an update or delete are both one conditional `UPDATE` of the
//! record's lease row, inside the write's transaction: the row lock it takes orders a
//! `lock` against a concurrent write of the same record on every database (PostgreSQL and
//! MariaDB re-check the condition against the latest committed row; SQLite writes one
//! transaction at a time), so nothing runs between the check and the write. The row is
//! first created if missing, because a row that does not exist cannot be locked. Expiry is
//! a comparison with the node's clock at use; no sweeper is needed, and a record's row goes
//! with the record.

use serde_json::{Value as Json, json};
use sqlx::{AnyConnection, Row, SqlStr};
use uuid::Uuid;

use super::Store;
use super::dialect::Dialect;
use crate::error::{BedsError, ErrorCode};
use crate::meta::{IdKind, TemplateMeta};
use crate::value::{RecordKey, Value, format_timestamp};

const TABLE: &str = "beds_locks";

/// The statements of the lease table, prepared once.
#[derive(Debug)]
pub(super) struct LockSql {
    /// Creates the record's row, unleased, unless it exists.
    ensure: SqlStr,
    /// Sets the lease if it is free, expired or held with the given token.
    take: SqlStr,
    /// Touches the row under the same condition: the guard of an update or delete.
    guard: SqlStr,
    /// Frees the lease under the same condition.
    release: SqlStr,
    /// When the current lease expires, read as the latest committed row.
    holder: SqlStr,
    forget: SqlStr,
}

fn text(d: &dyn Dialect, sql: &str) -> String {
    super::sql::named(
        d,
        sql,
        &[
            ("t", TABLE),
            ("domain", "domain"),
            ("template", "template"),
            ("record", "record"),
            ("token", "token"),
            ("expires_at", "expires_at"),
            ("seq", "seq"),
        ],
    )
}

/// The row of one record, and a lease that does not stand in the way of `token`.
const FREE_FOR: &str = "{domain} = ? AND {template} = ? AND {record} = ? \
     AND ({token} IS NULL OR {token} = ? OR {expires_at} <= ?)";
const ROW: &str = "{domain} = ? AND {template} = ? AND {record} = ?";

pub(super) fn lock_sql(d: &dyn Dialect) -> LockSql {
    let sql = |s: &str| d.prepare(text(d, s));
    let insert = text(
        d,
        "INSERT INTO {t} ({domain}, {template}, {record}, {token}, {expires_at}, {seq}) \
         VALUES (?, ?, ?, NULL, 0, 0)",
    );
    LockSql {
        ensure: d.prepare(d.keep_existing(&insert, &d.quote("seq"))),
        take: sql(&format!(
            "UPDATE {{t}} SET {{token}} = ?, {{expires_at}} = ?, {{seq}} = {{seq}} + 1 WHERE {FREE_FOR}"
        )),
        guard: sql(&format!(
            "UPDATE {{t}} SET {{seq}} = {{seq}} + 1 WHERE {FREE_FOR}"
        )),
        release: sql(&format!(
            "UPDATE {{t}} SET {{token}} = NULL, {{expires_at}} = 0, {{seq}} = {{seq}} + 1 \
             WHERE {FREE_FOR}"
        )),
        holder: sql(&format!(
            "SELECT {{expires_at}} FROM {{t}} WHERE {ROW}{}",
            d.lock_rows()
        )),
        forget: sql(&format!("DELETE FROM {{t}} WHERE {ROW}")),
    }
}

/// The lease table, if any template declares `locking`.
pub(super) fn ddl(d: &dyn Dialect) -> Vec<String> {
    let name = d.token_type(64);
    // A 64-bit integer column in every dialect (SQLite's STRICT tables know no BIGINT).
    let ms = d.key_type(IdKind::Sequence);
    vec![text(
        d,
        &format!(
            "CREATE TABLE IF NOT EXISTS {{t}} (\n  {{domain}} {name} NOT NULL,\n  {{template}} {name} NOT NULL,\n  \
             {{record}} {name} NOT NULL,\n  {{token}} {name},\n  {{expires_at}} {ms} NOT NULL,\n  \
             {{seq}} {ms} NOT NULL,\n  PRIMARY KEY ({{domain}}, {{template}}, {{record}})\n){}",
            d.table_options()
        ),
    )]
}

/// Milliseconds since the epoch on this node's clock.
fn now_ms() -> i64 {
    crate::value::now().timestamp_millis()
}

fn rfc3339(ms: i64) -> String {
    let at = chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default();
    format_timestamp(&at)
}

/// A record id as the lease table keys it, and as replies show it.
fn id_forms(id: &Value) -> Result<(String, Json), BedsError> {
    match id {
        Value::Int(i) => Ok((i.to_string(), Json::from(*i))),
        Value::Uuid(u) => Ok((u.to_string(), Json::String(u.to_string()))),
        _ => Err(BedsError::new(
            ErrorCode::Internal,
            "a stored id is neither a UUID nor an integer",
        )),
    }
}

impl Store {
    fn lock_failed(&self, t: &TemplateMeta, e: sqlx::Error) -> BedsError {
        self.db_error(t, e, super::Write::None)
    }

    /// Binds the row's key: domain, template, record id.
    fn lease_row<'q>(&self, s: &SqlStr, t: &TemplateMeta, record: &str) -> super::Query<'q> {
        sqlx::query(s.clone())
            .bind(t.domain)
            .bind(t.name)
            .bind(record.to_string())
    }

    /// The record's id, or `not_found`.
    async fn lease_target(
        &self,
        conn: &mut AnyConnection,
        t: &TemplateMeta,
        key: &RecordKey,
    ) -> Result<(String, Json), BedsError> {
        match self.current(conn, t, key).await? {
            Some((_, id)) => id_forms(&id),
            None => Err(BedsError::new(
                ErrorCode::NotFound,
                format!("no `{}` with {}", t.name, key.describe(t)),
            )),
        }
    }

    /// Runs `s` (take, guard or release) on the record's row, created first if missing;
    /// `locked` if another holder's lease stands in the way.
    async fn lease_update(
        &self,
        conn: &mut AnyConnection,
        t: &TemplateMeta,
        record: &str,
        s: &SqlStr,
        set: Option<(&str, i64)>,
        token: Option<&str>,
    ) -> Result<(), BedsError> {
        let l = &self.locks;
        self.lease_row(&l.ensure, t, record)
            .execute(&mut *conn)
            .await
            .map_err(|e| self.lock_failed(t, e))?;
        let now = now_ms();
        let mut q = sqlx::query(s.clone());
        if let Some((new_token, expires_at)) = set {
            q = q.bind(new_token.to_string()).bind(expires_at);
        }
        let done = q
            .bind(t.domain)
            .bind(t.name)
            .bind(record.to_string())
            .bind(token.map(str::to_string))
            .bind(now)
            .execute(&mut *conn)
            .await
            .map_err(|e| self.lock_failed(t, e))?;
        if done.rows_affected() > 0 {
            return Ok(());
        }
        let until: i64 = self
            .lease_row(&l.holder, t, record)
            .fetch_one(&mut *conn)
            .await
            .and_then(|row| row.try_get(0))
            .map_err(|e| self.lock_failed(t, e))?;
        let until = rfc3339(until);
        let mut e = BedsError::new(
            ErrorCode::Locked,
            format!(
                "this `{}` is locked by another holder until {until}; send its `lock_token` or \
                 retry after then",
                t.name
            ),
        );
        e.locked_until = Some(until);
        Err(e)
    }

    /// Takes the lease (or extends the one `token` names) for `ttl_ms`.
    pub(super) async fn lock(
        &self,
        conn: &mut AnyConnection,
        t: &TemplateMeta,
        key: &RecordKey,
        ttl_ms: u64,
        token: Option<String>,
    ) -> Result<Json, BedsError> {
        let (record, id) = self.lease_target(conn, t, key).await?;
        // Opaque to clients; a v7 UUID carries 74 random bits.
        let new_token = token
            .clone()
            .unwrap_or_else(|| Uuid::now_v7().simple().to_string());
        let expires_at = now_ms().saturating_add(i64::try_from(ttl_ms).unwrap_or(i64::MAX));
        let take = &self.locks.take;
        self.lease_update(
            conn,
            t,
            &record,
            take,
            Some((&new_token, expires_at)),
            token.as_deref(),
        )
        .await?;
        Ok(json!({ "id": id, "token": new_token, "expires_at": rfc3339(expires_at) }))
    }

    /// Gives the lease `token` names back; a record nobody holds is unlocked already.
    pub(super) async fn unlock(
        &self,
        conn: &mut AnyConnection,
        t: &TemplateMeta,
        key: &RecordKey,
        token: &str,
    ) -> Result<Json, BedsError> {
        let (record, id) = self.lease_target(conn, t, key).await?;
        let release = &self.locks.release;
        self.lease_update(conn, t, &record, release, None, Some(token))
            .await?;
        Ok(json!({ "id": id, "unlocked": true }))
    }

    /// Refuses an update or delete of a record leased to another holder; the row lock it
    /// takes holds off a `lock` of the record until this write commits. A missing record
    /// passes: the write itself answers `not_found`.
    pub(super) async fn guard(
        &self,
        conn: &mut AnyConnection,
        t: &TemplateMeta,
        key: &RecordKey,
        token: Option<&str>,
    ) -> Result<(), BedsError> {
        if !t.capabilities.locking {
            return Ok(());
        }
        let Some((_, id)) = self.current(conn, t, key).await? else {
            return Ok(());
        };
        let (record, _) = id_forms(&id)?;
        let guard = &self.locks.guard;
        self.lease_update(conn, t, &record, guard, None, token)
            .await
    }

    /// Drops the lease row of a deleted record.
    pub(super) async fn forget_lease(
        &self,
        conn: &mut AnyConnection,
        t: &TemplateMeta,
        reply: &Json,
    ) -> Result<(), BedsError> {
        if !t.capabilities.locking {
            return Ok(());
        }
        let record = match reply.get("id") {
            Some(Json::String(s)) => s.clone(),
            Some(other) => other.to_string(),
            None => return Ok(()),
        };
        self.lease_row(&self.locks.forget, t, &record)
            .execute(&mut *conn)
            .await
            .map_err(|e| self.lock_failed(t, e))?;
        Ok(())
    }
}
