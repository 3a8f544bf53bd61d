//! The storage adapter: compiled template metadata to SQL through sqlx.
//!
//! All dialect knowledge lives here (DDL, placeholders, quoting, type mapping, error
//! codes); nothing above this module writes SQL. SQLite is the embedded default.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Map, Value as Json};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePoolOptions, SqliteRow,
};
use sqlx::{AssertSqlSafe, Row, SqlSafeStr, SqlStr, SqlitePool};
use uuid::Uuid;

use crate::error::{BedsError, DetailCode, ErrorCode, ErrorDetail};
use crate::meta::{
    Catalog, CondOp, DomainMeta, FieldKind, FieldMeta, IdKind, OnDelete, QueryMeta, TemplateMeta,
};
use crate::value::{RecordKey, Value, format_timestamp};

/// Where and how to open the database.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub sqlite_file: PathBuf,
    pub max_connections: u32,
    pub busy_timeout: Duration,
}

/// A failure to open or prepare the database at start-up.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open SQLite database {path}: {source}")]
    Open { path: PathBuf, source: sqlx::Error },
    #[error("applying the schema failed at `{statement}`: {source}")]
    Schema {
        statement: String,
        source: sqlx::Error,
    },
}

/// Statements prepared once per template at start-up.
#[derive(Debug)]
struct Statements {
    insert: SqlStr,
    /// By key slot: 0 is the id, then one per unique index.
    fetch: Vec<SqlStr>,
    delete: Vec<SqlStr>,
    list_first: SqlStr,
    list_after: SqlStr,
    /// `UPDATE t SET "version" = "version" + 1`; the changed columns follow per request.
    update_head: String,
    /// ` WHERE <key> AND <version matches> RETURNING …`, by key slot.
    update_tail: Vec<String>,
    /// The current version of a record, by key slot.
    version: Vec<SqlStr>,
}

/// One change to a record, applied by [`Store::write`].
#[derive(Debug)]
pub enum WriteOp {
    Insert {
        /// `None` for sequence ids, which the database assigns.
        id: Option<Uuid>,
        values: Vec<Value>,
    },
    Update {
        key: RecordKey,
        changes: Vec<(&'static FieldMeta, Value)>,
        expect_version: Option<i64>,
    },
    Delete {
        key: RecordKey,
        expect_version: Option<i64>,
    },
}

impl WriteOp {
    fn name(&self) -> &'static str {
        match self {
            WriteOp::Insert { .. } => "create",
            WriteOp::Update { .. } => "update",
            WriteOp::Delete { .. } => "delete",
        }
    }
}

/// A named query's statement and how to bind it.
#[derive(Debug)]
struct QuerySql {
    sql: SqlStr,
    /// Number of sort keys (cursor values bound after the parameters).
    keys: usize,
}

/// The database behind the brokers.
#[derive(Debug, Clone)]
pub struct Store {
    pool: SqlitePool,
    statements: std::sync::Arc<HashMap<(&'static str, &'static str), Statements>>,
    queries: std::sync::Arc<HashMap<(&'static str, &'static str), QuerySql>>,
}

impl Store {
    /// Opens the SQLite file (creating it and its directory if needed) and prepares the
    /// statements of every template in `catalog`.
    pub async fn open(options: &StoreOptions, catalog: &Catalog) -> Result<Store, StoreError> {
        let path = &options.sqlite_file;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::DataDir {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let connect = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .foreign_keys(true)
            .busy_timeout(options.busy_timeout);
        let pool = SqlitePoolOptions::new()
            .max_connections(options.max_connections)
            .connect_with(connect)
            .await
            .map_err(|source| StoreError::Open {
                path: path.clone(),
                source,
            })?;
        let statements = catalog
            .templates()
            .map(|(d, t)| ((d.name, t.name), statements(t)))
            .collect();
        let queries = catalog
            .domains
            .iter()
            .flat_map(|d| {
                d.queries
                    .iter()
                    .map(move |q| ((d.name, q.name), query_sql(d, q)))
            })
            .collect();
        Ok(Store {
            pool,
            statements: std::sync::Arc::new(statements),
            queries: std::sync::Arc::new(queries),
        })
    }

    /// Creates missing tables and indexes. Existing tables are left as they are.
    pub async fn apply_schema(&self, catalog: &Catalog) -> Result<(), StoreError> {
        for statement in schema(catalog) {
            sqlx::query(trusted(statement.clone()))
                .execute(&self.pool)
                .await
                .map_err(|source| StoreError::Schema { statement, source })?;
        }
        Ok(())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    fn sql(&self, t: &TemplateMeta) -> &Statements {
        // Every template of the catalog was prepared in `open`.
        &self.statements[&(t.domain, t.name)]
    }

    /// Applies one write in a transaction together with its idempotency record: a key seen
    /// before returns the reply stored with it and changes nothing.
    pub async fn write(
        &self,
        t: &TemplateMeta,
        idempotency_key: &str,
        op: WriteOp,
    ) -> Result<Json, BedsError> {
        let target = format!("{}.{}.{}", t.domain, t.name, op.name());
        // IMMEDIATE takes the write lock up front, so two deliveries of one key serialise
        // instead of both missing the lookup.
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(|e| db_error(t, e, Write::None))?;
        let seen: Option<(String, String)> =
            sqlx::query_as("SELECT target, reply FROM beds_idempotency WHERE key = ?")
                .bind(idempotency_key)
                .fetch_optional(&mut *tx)
                .await
                .map_err(|e| db_error(t, e, Write::None))?;
        if let Some((seen_target, reply)) = seen {
            if seen_target != target {
                return Err(BedsError::new(
                    ErrorCode::IdempotencyKeyReused,
                    format!(
                        "idempotency key `{idempotency_key}` was used for {seen_target}; use a new key for {target}"
                    ),
                ));
            }
            return serde_json::from_str(&reply).map_err(|e| {
                tracing::error!(error = %e, "stored idempotent reply is not JSON");
                BedsError::new(ErrorCode::Internal, "a stored reply could not be read")
            });
        }
        let reply = match op {
            WriteOp::Insert { id, values } => self.insert(&mut tx, t, id, values).await?,
            WriteOp::Update {
                key,
                changes,
                expect_version,
            } => {
                self.update(&mut tx, t, &key, changes, expect_version)
                    .await?
            }
            WriteOp::Delete {
                key,
                expect_version,
            } => self.delete(&mut tx, t, &key, expect_version).await?,
        };
        sqlx::query(
            "INSERT INTO beds_idempotency (key, target, reply, created_at) VALUES (?, ?, ?, ?)",
        )
        .bind(idempotency_key)
        .bind(&target)
        .bind(reply.to_string())
        .bind(format_timestamp(&crate::value::now()))
        .execute(&mut *tx)
        .await
        .map_err(|e| db_error(t, e, Write::None))?;
        tx.commit().await.map_err(|e| db_error(t, e, Write::None))?;
        Ok(reply)
    }

    /// Forgets idempotency keys older than `ttl`; returns how many.
    pub async fn expire_idempotency(&self, ttl: Duration) -> Result<u64, sqlx::Error> {
        let cutoff =
            crate::value::now() - chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::MAX);
        let done = sqlx::query("DELETE FROM beds_idempotency WHERE created_at < ?")
            .bind(format_timestamp(&cutoff))
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    async fn insert(
        &self,
        conn: &mut SqliteConnection,
        t: &TemplateMeta,
        id: Option<Uuid>,
        values: Vec<Value>,
    ) -> Result<Json, BedsError> {
        let mut q = sqlx::query(self.sql(t).insert.clone());
        // Sequence ids are left to the database.
        if let Some(id) = id {
            q = q.bind(id.to_string());
        }
        q = q.bind(1_i64);
        for v in values {
            q = bind(q, v);
        }
        let row = q
            .fetch_one(&mut *conn)
            .await
            .map_err(|e| db_error(t, e, Write::Insert))?;
        record(t, &row)
    }

    pub async fn fetch(
        &self,
        t: &TemplateMeta,
        key: &RecordKey,
    ) -> Result<Option<Json>, BedsError> {
        let row = bind_key(sqlx::query(self.sql(t).fetch[key.slot].clone()), key)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| db_error(t, e, Write::None))?;
        row.map(|r| record(t, &r)).transpose()
    }

    /// Applies `changes` and bumps the version, if the version is `expect_version`.
    async fn update(
        &self,
        conn: &mut SqliteConnection,
        t: &TemplateMeta,
        key: &RecordKey,
        changes: Vec<(&'static FieldMeta, Value)>,
        expect_version: Option<i64>,
    ) -> Result<Json, BedsError> {
        let s = self.sql(t);
        let mut sql = s.update_head.clone();
        for (f, _) in &changes {
            sql.push_str(&format!(", {} = ?", quote(f.column)));
        }
        sql.push_str(&s.update_tail[key.slot]);
        let mut q = sqlx::query(trusted(sql));
        for (_, v) in changes {
            q = bind(q, v);
        }
        let row = bind_key(q, key)
            .bind(expect_version)
            .bind(expect_version)
            .fetch_optional(&mut *conn)
            .await
            .map_err(|e| db_error(t, e, Write::Update))?;
        match row {
            Some(r) => record(t, &r),
            None => Err(self.missed(conn, t, key).await),
        }
    }

    /// Deletes a record if its version is `expect_version`.
    async fn delete(
        &self,
        conn: &mut SqliteConnection,
        t: &TemplateMeta,
        key: &RecordKey,
        expect_version: Option<i64>,
    ) -> Result<Json, BedsError> {
        let row = bind_key(sqlx::query(self.sql(t).delete[key.slot].clone()), key)
            .bind(expect_version)
            .bind(expect_version)
            .fetch_optional(&mut *conn)
            .await
            .map_err(|e| db_error(t, e, Write::Delete))?;
        let Some(row) = row else {
            return Err(self.missed(conn, t, key).await);
        };
        let id = match t.id {
            IdKind::Uuid7 => row.try_get::<String, _>(0).map(Json::String),
            IdKind::Sequence => row.try_get::<i64, _>(0).map(Json::from),
        }
        .map_err(|e| internal(t, &e))?;
        Ok(serde_json::json!({ "id": id, "deleted": true }))
    }

    /// Why an update or delete matched no row: no record, or another version of it.
    async fn missed(
        &self,
        conn: &mut SqliteConnection,
        t: &TemplateMeta,
        key: &RecordKey,
    ) -> BedsError {
        let current = bind_key(sqlx::query(self.sql(t).version[key.slot].clone()), key)
            .fetch_optional(&mut *conn)
            .await;
        match current {
            Ok(Some(row)) => {
                let version: i64 = row.try_get(0).unwrap_or_default();
                let mut e = BedsError::new(
                    ErrorCode::VersionConflict,
                    format!(
                        "`{}` with {} is at version {version}, not the expected one",
                        t.name,
                        key.describe(t)
                    ),
                );
                e.current_version = Some(version);
                e
            }
            Ok(None) => BedsError::new(
                ErrorCode::NotFound,
                format!("no `{}` with {}", t.name, key.describe(t)),
            ),
            Err(e) => db_error(t, e, Write::None),
        }
    }

    /// Up to `limit` records in key order, starting after `after`.
    pub async fn list(
        &self,
        t: &TemplateMeta,
        limit: u32,
        after: Option<Value>,
    ) -> Result<Vec<Json>, BedsError> {
        let s = self.sql(t);
        let q = match after {
            None => sqlx::query(s.list_first.clone()),
            Some(a) => bind(sqlx::query(s.list_after.clone()), a),
        };
        let rows = q
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(|e| db_error(t, e, Write::None))?;
        rows.iter().map(|r| record(t, r)).collect()
    }
}

impl Store {
    /// A page of a named query's records; `cursor` holds the previous page's last sort keys.
    pub async fn query(
        &self,
        q: &QueryMeta,
        params: Vec<Value>,
        cursor: Option<&[Json]>,
        limit: u32,
    ) -> Result<Vec<Json>, BedsError> {
        let s = &self.queries[&(q.domain, q.name)];
        let mut query = sqlx::query(s.sql.clone());
        for v in params {
            query = bind(query, v);
        }
        for i in 0..s.keys {
            query = bind_json(query, cursor.map(|c| &c[i]));
        }
        let rows = query
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(|e| db_error(q.from, e, Write::None))?;
        rows.iter().map(|r| record(q.from, r)).collect()
    }

    /// The number of records a count query matches.
    pub async fn count(&self, q: &QueryMeta, params: Vec<Value>) -> Result<i64, BedsError> {
        let s = &self.queries[&(q.domain, q.name)];
        let mut query = sqlx::query(s.sql.clone());
        for v in params {
            query = bind(query, v);
        }
        let row = query
            .fetch_one(&self.pool)
            .await
            .map_err(|e| db_error(q.from, e, Write::None))?;
        row.try_get::<i64, _>(0).map_err(|e| internal(q.from, &e))
    }
}

/// Binds a cursor value as it appeared in the reply (the storage form in SQLite).
fn bind_json<'q>(q: Query<'q>, v: Option<&Json>) -> Query<'q> {
    match v {
        Some(Json::String(s)) => q.bind(s.clone()),
        Some(Json::Bool(b)) => q.bind(*b),
        Some(Json::Number(n)) => match n.as_i64() {
            Some(i) => q.bind(i),
            None => q.bind(n.as_f64()),
        },
        _ => q.bind(None::<String>),
    }
}

fn bind_key<'q>(mut q: Query<'q>, key: &RecordKey) -> Query<'q> {
    for v in &key.values {
        q = bind(q, v.clone());
    }
    q
}

type Query<'q> = sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments>;

fn bind(q: Query<'_>, v: Value) -> Query<'_> {
    match v {
        Value::Null => q.bind(None::<String>),
        Value::Bool(b) => q.bind(b),
        Value::Int(i) => q.bind(i),
        Value::Float(x) => q.bind(x),
        Value::Date(d) => q.bind(d.format("%Y-%m-%d").to_string()),
        Value::Json(j) => q.bind(j.to_string()),
        // Lists bind as one JSON array, read back by `json_each` in the statement.
        Value::List(items) => {
            q.bind(Json::Array(items.into_iter().map(storage_json).collect()).to_string())
        }
        Value::Text(s) => q.bind(s),
        Value::Uuid(u) => q.bind(u.to_string()),
        Value::Timestamp(t) => q.bind(format_timestamp(&t)),
    }
}

/// A row as the API shows it: `id`, `version`, then the declared fields by API name.
fn record(t: &TemplateMeta, row: &SqliteRow) -> Result<Json, BedsError> {
    let decode = |e: sqlx::Error| {
        tracing::error!(template = t.name, error = %e, "stored row does not match the declaration");
        BedsError::new(
            ErrorCode::Internal,
            format!("a stored `{}` row could not be read", t.name),
        )
    };
    let mut out = Map::with_capacity(t.fields.len() + 2);
    let id = match t.id {
        IdKind::Uuid7 => Json::String(row.try_get(0).map_err(decode)?),
        IdKind::Sequence => Json::from(row.try_get::<i64, _>(0).map_err(decode)?),
    };
    out.insert("id".into(), id);
    out.insert(
        "version".into(),
        Json::from(row.try_get::<i64, _>(1).map_err(decode)?),
    );
    for (i, f) in t.fields.iter().enumerate() {
        let col = i + 2;
        let v = match f.kind {
            FieldKind::Integer { .. }
            | FieldKind::BigInt { .. }
            | FieldKind::Ref {
                id: IdKind::Sequence,
                ..
            } => row
                .try_get::<Option<i64>, _>(col)
                .map(|v| v.map(Json::from)),
            FieldKind::Float { .. } => row
                .try_get::<Option<f64>, _>(col)
                .map(|v| v.map(Json::from)),
            FieldKind::Bool => row
                .try_get::<Option<bool>, _>(col)
                .map(|v| v.map(Json::Bool)),
            FieldKind::Json => row.try_get::<Option<String>, _>(col).and_then(|v| {
                v.map(|text| {
                    serde_json::from_str(&text).map_err(|e| sqlx::Error::Decode(Box::new(e)))
                })
                .transpose()
            }),
            FieldKind::String { .. }
            | FieldKind::Text { .. }
            | FieldKind::Timestamp
            | FieldKind::Date
            | FieldKind::Uuid
            | FieldKind::Enum { .. }
            | FieldKind::Ref { .. } => row
                .try_get::<Option<String>, _>(col)
                .map(|v| v.map(Json::String)),
        }
        .map_err(decode)?;
        out.insert(f.name.into(), v.unwrap_or(Json::Null));
    }
    Ok(Json::Object(out))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Write {
    None,
    Insert,
    Update,
    Delete,
}

/// Maps a database failure onto the error contract.
fn db_error(t: &TemplateMeta, e: sqlx::Error, write: Write) -> BedsError {
    use sqlx::error::ErrorKind;
    match &e {
        sqlx::Error::Database(db) => match db.kind() {
            ErrorKind::UniqueViolation => {
                let fields = unique_fields(t, db.message());
                let mut err = BedsError::new(
                    ErrorCode::UniqueViolation,
                    format!(
                        "another `{}` already has this {}",
                        t.name,
                        fields.join(" and ")
                    ),
                );
                err.details = fields
                    .iter()
                    .map(|f| ErrorDetail {
                        field: format!("data.{f}"),
                        code: DetailCode::Other,
                        message: format!("{f} is already taken"),
                    })
                    .collect();
                err
            }
            ErrorKind::ForeignKeyViolation if write == Write::Delete => BedsError::new(
                ErrorCode::StillReferenced,
                format!("this `{}` is still referenced by other records", t.name),
            ),
            ErrorKind::ForeignKeyViolation => BedsError::new(
                ErrorCode::ReferenceNotFound,
                format!("a referenced record of this `{}` does not exist", t.name),
            ),
            // SQLITE_BUSY, SQLITE_LOCKED: another writer held the database too long.
            _ if matches!(db.code().as_deref(), Some("5" | "6" | "517" | "262")) => unavailable(&e),
            _ => internal(t, &e),
        },
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::WorkerCrashed => unavailable(&e),
        _ => internal(t, &e),
    }
}

fn unavailable(e: &sqlx::Error) -> BedsError {
    tracing::warn!(error = %e, "database unavailable");
    BedsError::new(
        ErrorCode::DatabaseUnavailable,
        "the database is unavailable; retry later",
    )
}

fn internal(t: &TemplateMeta, e: &sqlx::Error) -> BedsError {
    tracing::error!(template = t.name, error = %e, "unexpected database error");
    BedsError::new(
        ErrorCode::Internal,
        format!("storing `{}` failed unexpectedly", t.name),
    )
}

/// The API names of the columns a unique-violation message names
/// (SQLite: `UNIQUE constraint failed: table.col, table.col2`).
fn unique_fields(t: &TemplateMeta, message: &str) -> Vec<&'static str> {
    let named: Vec<&'static str> = t
        .fields
        .iter()
        .filter(|f| {
            message
                .split([' ', ',', ':'])
                .any(|part| part.rsplit('.').next() == Some(f.column))
        })
        .map(|f| f.name)
        .collect();
    if named.is_empty() {
        t.unique
            .first()
            .map(|u| u.fields.to_vec())
            .unwrap_or_default()
    } else {
        named
    }
}

/// SQL built only from compiled, validated identifiers; values are always bound.
fn trusted(sql: String) -> SqlStr {
    AssertSqlSafe(std::sync::Arc::<str>::from(sql)).into_sql_str()
}

/// A value as SQLite stores it, in JSON form (for list parameters).
fn storage_json(v: Value) -> Json {
    match v {
        Value::Null => Json::Null,
        Value::Bool(b) => Json::Bool(b),
        Value::Int(i) => Json::from(i),
        Value::Float(x) => Json::from(x),
        Value::Text(s) => Json::String(s),
        Value::Uuid(u) => Json::String(u.to_string()),
        Value::Timestamp(t) => Json::String(format_timestamp(&t)),
        Value::Date(d) => Json::String(d.format("%Y-%m-%d").to_string()),
        Value::Json(j) => Json::String(j.to_string()),
        Value::List(items) => Json::Array(items.into_iter().map(storage_json).collect()),
    }
}

/// The one statement of a named query. Parameters bind first as `?1..?n` (an absent
/// optional one disables its condition), then the cursor's sort keys (all NULL on the
/// first page), then the limit.
fn query_sql(d: &DomainMeta, q: &QueryMeta) -> QuerySql {
    let template = |name: &str| {
        *d.templates
            .iter()
            .find(|t| t.name == name)
            .expect("checked at build time")
    };
    // Joins: one alias per distinct reference path, t0 being `from`.
    let mut joins: Vec<(Vec<&str>, String)> = Vec::new();
    let mut from_sql = format!("{} t0", quote(q.from.table));
    let mut column = |path: &[&'static str]| -> String {
        let mut t = q.from;
        let mut alias = "t0".to_string();
        for (i, seg) in path.iter().enumerate() {
            if i + 1 == path.len() {
                break;
            }
            let f = t.field(seg).expect("checked at build time");
            let FieldKind::Ref { template: next, .. } = f.kind else {
                unreachable!("paths follow references")
            };
            let target = template(next);
            let prefix = path[..=i].to_vec();
            let next_alias = match joins.iter().find(|(p, _)| *p == prefix) {
                Some((_, a)) => a.clone(),
                None => {
                    let a = format!("t{}", joins.len() + 1);
                    from_sql.push_str(&format!(
                        " {}JOIN {} {a} ON {a}.{} = {alias}.{}",
                        if f.optional { "LEFT " } else { "" },
                        quote(target.table),
                        quote(target.id_column),
                        quote(f.column)
                    ));
                    joins.push((prefix, a.clone()));
                    a
                }
            };
            alias = next_alias;
            t = target;
        }
        let last = path[path.len() - 1];
        let col = if last == "id" {
            t.id_column
        } else {
            t.field(last).expect("checked").column
        };
        format!("{alias}.{}", quote(col))
    };
    let slot = |name: &str| {
        1 + q
            .params
            .iter()
            .position(|p| p.name == name)
            .expect("declared")
    };
    let mut conditions = Vec::new();
    for c in q.filter {
        let col = column(c.path);
        let i = slot(c.param);
        let cond = match c.op {
            CondOp::Eq => format!("{col} = ?{i}"),
            CondOp::Lt => format!("{col} < ?{i}"),
            CondOp::Le => format!("{col} <= ?{i}"),
            CondOp::Gt => format!("{col} > ?{i}"),
            CondOp::Ge => format!("{col} >= ?{i}"),
            CondOp::In => format!("{col} IN (SELECT value FROM json_each(?{i}))"),
            CondOp::Prefix => format!("substr({col}, 1, length(?{i})) = ?{i}"),
        };
        let optional = q.params.iter().any(|p| p.name == c.param && p.optional);
        conditions.push(if optional {
            format!("(?{i} IS NULL OR {cond})")
        } else {
            cond
        });
    }
    let cols: Vec<String> = [q.from.id_column, q.from.version_column]
        .into_iter()
        .chain(q.from.fields.iter().map(|f| f.column))
        .map(|c| format!("t0.{}", quote(c)))
        .collect();
    if q.count {
        let mut sql = format!("SELECT COUNT(*) FROM {from_sql}");
        if !conditions.is_empty() {
            sql.push_str(&format!(" WHERE {}", conditions.join(" AND ")));
        }
        return QuerySql {
            sql: trusted(sql),
            keys: 0,
        };
    }
    let keys = q.keys();
    let key_cols: Vec<String> = keys
        .iter()
        .map(|(k, _)| {
            let col = if *k == "id" {
                q.from.id_column
            } else {
                q.from.field(k).expect("checked").column
            };
            format!("t0.{}", quote(col))
        })
        .collect();
    // Keyset: (k1 > c1) OR (k1 = c1 AND k2 > c2) OR ..., `<` for descending keys.
    let first = q.params.len() + 1;
    let mut alternatives = Vec::new();
    for (i, (_, desc)) in keys.iter().enumerate() {
        let mut terms: Vec<String> = (0..i)
            .map(|j| format!("{} = ?{}", key_cols[j], first + j))
            .collect();
        terms.push(format!(
            "{} {} ?{}",
            key_cols[i],
            if *desc { "<" } else { ">" },
            first + i
        ));
        alternatives.push(format!("({})", terms.join(" AND ")));
    }
    conditions.push(format!(
        "(?{first} IS NULL OR {})",
        alternatives.join(" OR ")
    ));
    let order: Vec<String> = keys
        .iter()
        .zip(&key_cols)
        .map(|((_, desc), col)| format!("{col} {}", if *desc { "DESC" } else { "ASC" }))
        .collect();
    let sql = format!(
        "SELECT {} FROM {from_sql} WHERE {} ORDER BY {} LIMIT ?{}",
        cols.join(", "),
        conditions.join(" AND "),
        order.join(", "),
        first + keys.len()
    );
    QuerySql {
        sql: trusted(sql),
        keys: keys.len(),
    }
}

fn quote(ident: &str) -> String {
    format!("\"{ident}\"")
}

fn statements(t: &TemplateMeta) -> Statements {
    let table = quote(t.table);
    let id = quote(t.id_column);
    let columns: Vec<String> = [t.id_column, t.version_column]
        .into_iter()
        .chain(t.fields.iter().map(|f| f.column))
        .map(quote)
        .collect();
    let cols = columns.join(", ");
    // A sequence id is assigned by the database, so it is not inserted.
    let inserted = match t.id {
        IdKind::Uuid7 => &columns[..],
        IdKind::Sequence => &columns[1..],
    };
    let marks = vec!["?"; inserted.len()].join(", ");
    let insert_cols = inserted.join(", ");
    // One WHERE per key slot: the id, then each unique index (with its collation).
    let wheres: Vec<String> = std::iter::once(format!("{id} = ?"))
        .chain(t.unique.iter().map(|u| {
            u.fields
                .iter()
                .map(|f| {
                    let col = quote(t.field(f).expect("declared").column);
                    let collate = if u.case_insensitive {
                        " COLLATE NOCASE"
                    } else {
                        ""
                    };
                    format!("{col} = ?{collate}")
                })
                .collect::<Vec<_>>()
                .join(" AND ")
        }))
        .collect();
    // `expect_version` binds last; NULL means "any version".
    let v = quote(t.version_column);
    let expect = format!("(? IS NULL OR {v} = ?)");
    Statements {
        insert: trusted(format!(
            "INSERT INTO {table} ({insert_cols}) VALUES ({marks}) RETURNING {cols}"
        )),
        fetch: wheres
            .iter()
            .map(|w| trusted(format!("SELECT {cols} FROM {table} WHERE {w}")))
            .collect(),
        delete: wheres
            .iter()
            .map(|w| {
                trusted(format!(
                    "DELETE FROM {table} WHERE {w} AND {expect} RETURNING {id}"
                ))
            })
            .collect(),
        version: wheres
            .iter()
            .map(|w| trusted(format!("SELECT {v} FROM {table} WHERE {w}")))
            .collect(),
        list_first: trusted(format!("SELECT {cols} FROM {table} ORDER BY {id} LIMIT ?")),
        list_after: trusted(format!(
            "SELECT {cols} FROM {table} WHERE {id} > ? ORDER BY {id} LIMIT ?"
        )),
        update_head: format!(
            "UPDATE {table} SET {v} = {v} + 1",
            v = quote(t.version_column)
        ),
        update_tail: wheres
            .iter()
            .map(|w| format!(" WHERE {w} AND {expect} RETURNING {cols}"))
            .collect(),
    }
}

/// The DDL for every template, referenced tables first.
pub fn schema(catalog: &Catalog) -> Vec<String> {
    // The runtime's own table: replies of applied writes, by idempotency key.
    let mut out = vec![
        "CREATE TABLE IF NOT EXISTS \"beds_idempotency\" (\n  \"key\" TEXT NOT NULL PRIMARY KEY,\n  \"target\" TEXT NOT NULL,\n  \"reply\" TEXT NOT NULL,\n  \"created_at\" TEXT NOT NULL\n) STRICT".to_string(),
        "CREATE INDEX IF NOT EXISTS \"beds_idempotency_created_at_idx\" ON \"beds_idempotency\" (\"created_at\")".to_string(),
    ];
    for d in catalog.domains {
        for t in d.in_reference_order() {
            out.extend(table_ddl(d.templates, t));
        }
        out.extend(d.queries.iter().filter_map(|q| query_index(q)));
    }
    out
}

/// An index serving a query: its equality and membership columns on `from`, then its
/// sort keys; none when a declared index already starts with those columns.
fn query_index(q: &QueryMeta) -> Option<String> {
    let t = q.from;
    let column = |name: &'static str| {
        if name == "id" {
            t.id_column
        } else {
            t.field(name).map_or(name, |f| f.column)
        }
    };
    let mut cols: Vec<&str> = Vec::new();
    for c in q
        .filter
        .iter()
        .filter(|c| c.path.len() == 1 && matches!(c.op, CondOp::Eq | CondOp::In))
    {
        let col = column(c.path[0]);
        if !cols.contains(&col) {
            cols.push(col);
        }
    }
    if !q.count {
        // The key tie-breaker needs no column: an index entry already leads to its row.
        for (k, _) in q.order.iter().copied() {
            let col = column(k);
            if !cols.contains(&col) {
                cols.push(col);
            }
        }
    }
    if cols.is_empty() || cols == [t.id_column] {
        return None;
    }
    let declared = t
        .indexes
        .iter()
        .map(|fields| fields.iter().map(|f| column(f)).collect::<Vec<_>>())
        .chain(
            t.unique
                .iter()
                .map(|u| u.fields.iter().map(|f| column(f)).collect()),
        );
    if declared.into_iter().any(|idx| idx.starts_with(&cols)) {
        return None;
    }
    Some(format!(
        "CREATE INDEX IF NOT EXISTS {} ON {} ({})",
        quote(&format!("{}_q_{}", t.table, q.name)),
        quote(t.table),
        cols.iter().map(|c| quote(c)).collect::<Vec<_>>().join(", ")
    ))
}

fn table_ddl(all: &[&TemplateMeta], t: &TemplateMeta) -> Vec<String> {
    let table = quote(t.table);
    let id = match t.id {
        IdKind::Uuid7 => "TEXT NOT NULL PRIMARY KEY",
        // INTEGER PRIMARY KEY aliases the rowid; AUTOINCREMENT never reuses a deleted id.
        IdKind::Sequence => "INTEGER PRIMARY KEY AUTOINCREMENT",
    };
    let mut cols = vec![
        format!("{} {id}", quote(t.id_column)),
        format!("{} INTEGER NOT NULL", quote(t.version_column)),
    ];
    let mut indexes = Vec::new();
    for f in t.fields {
        let ty = match f.kind {
            FieldKind::Integer { .. }
            | FieldKind::BigInt { .. }
            | FieldKind::Bool
            | FieldKind::Ref {
                id: IdKind::Sequence,
                ..
            } => "INTEGER",
            FieldKind::Float { .. } => "REAL",
            _ => "TEXT",
        };
        let null = if f.optional { "" } else { " NOT NULL" };
        let mut col = format!("{} {ty}{null}", quote(f.column));
        if let FieldKind::Ref {
            template,
            on_delete,
            ..
        } = f.kind
        {
            let target = all
                .iter()
                .find(|x| x.name == template)
                .expect("references are checked at build time");
            let action = match on_delete {
                OnDelete::Restrict => "RESTRICT",
                OnDelete::Cascade => "CASCADE",
                OnDelete::SetNull => "SET NULL",
            };
            col.push_str(&format!(
                " REFERENCES {} ({}) ON DELETE {action}",
                quote(target.table),
                quote(target.id_column)
            ));
            // Deletes of the target and joins look rows up by this column.
            indexes.push(format!(
                "CREATE INDEX IF NOT EXISTS {} ON {table} ({})",
                quote(&format!("{}_{}_idx", t.table, f.column)),
                quote(f.column)
            ));
        }
        cols.push(col);
    }
    for u in t.unique {
        let columns: Vec<&str> = u
            .fields
            .iter()
            .filter_map(|name| t.field(name).map(|f| f.column))
            .collect();
        let collate = if u.case_insensitive {
            " COLLATE NOCASE"
        } else {
            ""
        };
        let list: Vec<String> = columns
            .iter()
            .map(|c| format!("{}{collate}", quote(c)))
            .collect();
        indexes.push(format!(
            "CREATE UNIQUE INDEX IF NOT EXISTS {} ON {table} ({})",
            quote(&format!("{}_{}_key", t.table, columns.join("_"))),
            list.join(", ")
        ));
    }
    for fields in t.indexes {
        let columns: Vec<&str> = fields
            .iter()
            .filter_map(|name| {
                if *name == "id" {
                    Some(t.id_column)
                } else {
                    t.field(name).map(|f| f.column)
                }
            })
            .collect();
        indexes.push(format!(
            "CREATE INDEX IF NOT EXISTS {} ON {table} ({})",
            quote(&format!("{}_{}_idx", t.table, columns.join("_"))),
            columns
                .iter()
                .map(|c| quote(c))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let mut out = vec![format!(
        "CREATE TABLE IF NOT EXISTS {table} (\n  {}\n) STRICT",
        cols.join(",\n  ")
    )];
    out.extend(indexes);
    out
}
