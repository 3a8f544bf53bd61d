//! The storage adapter: compiled template metadata to SQL through sqlx.
//!
//! All database knowledge lives in this module's children: one [`Dialect`] implementation
//! per database (SQL text, DDL types, connection set-up, idempotency claim, error reading),
//! [`sql`] for the statements of every template and query, [`schema`] for DDL. This file
//! only runs transactions and statements. One code path serves SQLite (the embedded
//! default), PostgreSQL and MariaDB through sqlx's `Any` driver: every statement is built
//! in the configured dialect at start-up, values are bound in the few types every driver
//! shares, and rows come back in one decodable form (see [`Dialect::select`]).

pub mod bulk;
mod counters;
mod dialect;
mod journal;
mod lock;
pub mod migrate;
mod moved;
mod options;
mod outbox;
mod retention;
mod retry;
mod schema;
mod sql;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value as Json};
use sqlx::any::{AnyArguments, AnyRow};
use sqlx::{AnyConnection, AnyPool, Executor, Row};
use uuid::Uuid;

pub use counters::{CounterMarks, EventEffect, counter_name};
pub use dialect::Dialect;
use dialect::{ClaimArgs, Claimed, Failure, Ty, UniqueIndex};
pub use moved::template_name;
pub use options::{StoreError, StoreOptions};
pub use outbox::OutboxRow;
use outbox::{Change, Referrer};
pub use retention::{ColdFile, RetireError, Stored};
pub(crate) use retry::until_written;
use sql::{Arg, CounterSql, IdempotencySql, OutboxSql, QuerySql, Statements};

use crate::config::Driver;
use crate::error::{BedsError, DetailCode, ErrorCode, ErrorDetail};
use crate::events::{Lineage, WriteOp as EventOp};
use crate::meta::{
    DomainMeta, FieldKind, FieldMeta, IdKind, LiteralValue, QueryMeta, TemplateMeta,
};
use crate::security::OwnerCheck;
use crate::value::{RecordKey, Value, format_timestamp};

/// The dialect of a configured driver. Dialects hold no state, so one static instance of
/// each serves every store.
pub fn dialect(driver: Driver) -> &'static dyn Dialect {
    match driver {
        Driver::Sqlite => &dialect::sqlite::Sqlite,
        Driver::Postgres => &dialect::postgres::Postgres,
        Driver::Mariadb => &dialect::mariadb::MariaDb,
    }
}

/// The DDL for every template in the dialect of `driver`, referenced tables first.
pub fn schema(driver: Driver, domains: &[&'static DomainMeta]) -> Vec<String> {
    schema::ddl(dialect(driver), domains)
}

/// The warehouse's DDL (segundo's COOL tier) in the dialect of `driver`: empty when no
/// template declares retention.
pub fn warehouse_schema(driver: Driver, domains: &[&'static DomainMeta]) -> Vec<String> {
    schema::warehouse_ddl(dialect(driver), domains)
}

impl StoreOptions {
    /// Where the data lives, for logs and `beds check` (passwords redacted).
    pub fn describe(&self) -> String {
        let d = dialect(self.driver);
        match d.location(self) {
            Ok(at) => format!("{} {}", d.name(), at.shown),
            Err(e) => format!("{} ({e})", d.name()),
        }
    }
}

/// One change to a record, applied by [`Store::write`].
#[derive(Debug)]
pub enum WriteOp {
    Insert {
        /// `None` for sequence ids, which the database assigns.
        id: Option<Uuid>,
        values: Vec<Value>,
        /// The tokens of every token set, by set index.
        tokens: Vec<(usize, Vec<String>)>,
    },
    Update {
        key: RecordKey,
        changes: Vec<(&'static FieldMeta, Value)>,
        expect_version: Option<i64>,
        /// The lease the writer holds, if the record may be locked.
        lock_token: Option<String>,
        /// New tokens of the sets whose source field changed.
        tokens: Vec<(usize, Vec<String>)>,
    },
    Delete {
        key: RecordKey,
        expect_version: Option<i64>,
        lock_token: Option<String>,
    },
    /// Takes a lease for `ttl_ms`, or extends the one `token` names.
    Lock {
        key: RecordKey,
        ttl_ms: u64,
        token: Option<String>,
    },
    Unlock {
        key: RecordKey,
        token: String,
    },
}

impl WriteOp {
    /// The index of the operation in [`Statements::targets`].
    fn slot(&self) -> usize {
        match self {
            WriteOp::Insert { .. } => 0,
            WriteOp::Update { .. } => 1,
            WriteOp::Delete { .. } => 2,
            WriteOp::Lock { .. } => 3,
            WriteOp::Unlock { .. } => 4,
        }
    }
}

/// The database behind the brokers.
#[derive(Debug, Clone)]
pub struct Store {
    dialect: &'static dyn Dialect,
    pool: AnyPool,
    statements: Arc<HashMap<(&'static str, &'static str), Statements>>,
    queries: Arc<HashMap<(&'static str, &'static str), QuerySql>>,
    idempotency: Arc<IdempotencySql>,
    locks: Arc<lock::LockSql>,
    counters: Arc<CounterSql>,
    outbox: Arc<OutboxSql>,
    /// The journal's statements, when a template of the catalog declares `journal`.
    journal: Option<Arc<journal::JournalSql>>,
    /// Per referenced template: who references it, for the events of cascades.
    referrers: Arc<HashMap<(&'static str, &'static str), Vec<Referrer>>>,
}

type Query<'q> = sqlx::query::Query<'q, sqlx::Any, AnyArguments>;

/// How a write's idempotency claim went.
enum Claim {
    /// The key was new and is now held by this transaction.
    Held,
    /// Another delivery of the key committed first: its stored reply.
    Replay(Json),
}

impl Store {
    /// Opens the database (for SQLite creating the file and its directory if needed) and
    /// prepares the statements of every template and query in `catalog`.
    pub async fn open(
        options: &StoreOptions,
        domains: &[&'static DomainMeta],
    ) -> Result<Store, StoreError> {
        Store::open_with(options, domains, true).await
    }

    /// [`Store::open`] for segundo's warehouse: its queries count rows for maintained
    /// counts too, since no tercero keeps counters there.
    pub async fn open_warehouse(
        options: &StoreOptions,
        domains: &[&'static DomainMeta],
    ) -> Result<Store, StoreError> {
        Store::open_with(options, domains, false).await
    }

    async fn open_with(
        options: &StoreOptions,
        domains: &[&'static DomainMeta],
        maintained_counts: bool,
    ) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let d = dialect(options.driver);
        d.before_open(options)?;
        let at = d.location(options)?;
        // Built once; every new connection runs them.
        let session = Arc::new(d.session(options));
        let pool = d
            .pool_options(options)
            .after_connect(move |conn, _| {
                let session = session.clone();
                Box::pin(async move {
                    for statement in session.iter() {
                        conn.execute(statement.clone()).await?;
                    }
                    Ok(())
                })
            })
            .connect(&at.url)
            .await
            .map_err(|source| StoreError::Open {
                dialect: d.name(),
                target: at.shown,
                source,
            })?;
        let statements = crate::meta::templates(domains)
            .map(|(_, t)| ((t.domain, t.name), sql::statements(d, t)))
            .collect();
        let queries = domains
            .iter()
            .flat_map(|dm| {
                dm.queries.iter().map(move |q| {
                    (
                        (dm.name, q.name),
                        sql::query_sql(d, dm, q, maintained_counts),
                    )
                })
            })
            .collect();
        Ok(Store {
            dialect: d,
            pool,
            statements: Arc::new(statements),
            queries: Arc::new(queries),
            idempotency: Arc::new(sql::idempotency_sql(d)),
            locks: Arc::new(lock::lock_sql(d)),
            counters: Arc::new(sql::counter_sql(d)),
            outbox: Arc::new(sql::outbox_sql(d)),
            journal: journal::wanted(domains).then(|| Arc::new(journal::journal_sql(d))),
            referrers: Arc::new(referrers(d, domains)),
        })
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// The connection pool, for the admin role's own tables (admin::store).
    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// The dialect the store was opened in.
    pub(crate) fn dialect(&self) -> &'static dyn Dialect {
        self.dialect
    }

    /// One cheap round trip (`SELECT 1`), for the node's readiness.
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT 1").execute(&self.pool).await.map(drop)
    }

    fn sql(&self, t: &TemplateMeta) -> &Statements {
        // Every template of the catalog was prepared in `open`.
        &self.statements[&(t.domain, t.name)]
    }

    /// Applies one write in a transaction together with its idempotency record, the journal
    /// entries of the journaled records it changes and, given a lineage, the events of every
    /// record it changes: a key seen before returns the reply stored with it and changes
    /// nothing (and records no event or entry).
    pub async fn write(
        &self,
        t: &'static TemplateMeta,
        idempotency_key: &IdempotencyKey,
        op: WriteOp,
        lineage: Option<&Lineage>,
        owner: Option<&OwnerCheck>,
    ) -> Result<Json, BedsError> {
        let target = &self.sql(t).targets[op.slot()];
        let mut tx = self
            .pool
            .begin_with(self.dialect.begin())
            .await
            .map_err(|e| self.db_error(t, e, Write::None))?;
        if let Claim::Replay(reply) = self.claim(&mut tx, t, idempotency_key, target).await? {
            return Ok(reply);
        }
        // The changed records are collected for events and for the journal (a write of an
        // unjournaled template can cascade to a journaled one).
        let collect = lineage.is_some() || self.journal.is_some();
        let mut changes = Vec::new();
        let reply = match op {
            WriteOp::Insert { id, values, tokens } => {
                let reply = self.insert(&mut tx, t, id, 1, values).await?;
                self.set_tokens(&mut tx, t, &reply, tokens, false).await?;
                changes.push(Change {
                    template: t,
                    op: EventOp::Create,
                    before: None,
                    after: Some(reply.clone()),
                });
                reply
            }
            WriteOp::Update {
                key,
                changes: fields,
                expect_version,
                lock_token,
                tokens,
            } => {
                // Read and locked first, so no other write lands between it and the update,
                // and the owner checked is the owner written over.
                let before = if lineage.is_some() || owner.is_some() {
                    self.locked(&mut tx, t, &key).await?
                } else {
                    None
                };
                if let Some(owner) = owner {
                    owner.record(t, "update", before.as_ref())?;
                }
                self.guard(&mut tx, t, &key, lock_token.as_deref()).await?;
                let reply = self
                    .update(&mut tx, t, &key, fields, expect_version)
                    .await?;
                self.set_tokens(&mut tx, t, &reply, tokens, true).await?;
                changes.push(Change {
                    template: t,
                    op: EventOp::Update,
                    before,
                    after: Some(reply.clone()),
                });
                reply
            }
            WriteOp::Delete {
                key,
                expect_version,
                lock_token,
            } => {
                // What the database deletes or nulls by itself, read before it does; and
                // the owner, in the same transaction as the delete.
                let root = if collect || owner.is_some() {
                    self.locked(&mut tx, t, &key).await?
                } else {
                    None
                };
                if let Some(owner) = owner {
                    owner.record(t, "delete", root.as_ref())?;
                }
                self.guard(&mut tx, t, &key, lock_token.as_deref()).await?;
                let root = root.filter(|_| collect);
                let cascaded = match root {
                    Some(root) => self.cascade(&mut tx, t, &root).await?,
                    None => Vec::new(),
                };
                let (reply, before) = self.delete(&mut tx, t, &key, expect_version).await?;
                self.forget_lease(&mut tx, t, &reply).await?;
                changes.push(Change {
                    template: t,
                    op: EventOp::Delete,
                    before: Some(before),
                    after: None,
                });
                changes.extend(cascaded);
                reply
            }
            WriteOp::Lock { key, ttl_ms, token } => {
                if let Some(owner) = owner {
                    let record = self.locked(&mut tx, t, &key).await?;
                    owner.record(t, "lock", record.as_ref())?;
                }
                self.lock(&mut tx, t, &key, ttl_ms, token).await?
            }
            WriteOp::Unlock { key, token } => {
                if let Some(owner) = owner {
                    let record = self.locked(&mut tx, t, &key).await?;
                    owner.record(t, "unlock", record.as_ref())?;
                }
                self.unlock(&mut tx, t, &key, &token).await?
            }
        };
        self.journal(&mut tx, &changes).await?;
        if let Some(lineage) = lineage {
            self.record_events(&mut tx, lineage, changes).await?;
        }
        sqlx::query(self.idempotency.store_reply.clone())
            .bind(reply.to_string())
            .bind(&idempotency_key.stored)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.db_error(t, e, Write::None))?;
        tx.commit()
            .await
            .map_err(|e| self.db_error(t, e, Write::None))?;
        Ok(reply)
    }

    /// Claims the key by inserting its row before the write, the dialect's way: a second
    /// delivery of the key then replays the committed reply instead of writing again.
    async fn claim(
        &self,
        conn: &mut AnyConnection,
        t: &TemplateMeta,
        key: &IdempotencyKey,
        target: &str,
    ) -> Result<Claim, BedsError> {
        let now = format_timestamp(&crate::value::now());
        let claimed = self
            .dialect
            .claim(ClaimArgs {
                conn,
                pool: &self.pool,
                claim: &self.idempotency.claim,
                lookup: &self.idempotency.lookup,
                key: &key.stored,
                target,
                now: &now,
            })
            .await
            .map_err(|e| self.db_error(t, e, Write::None))?;
        match claimed {
            Claimed::Held => Ok(Claim::Held),
            Claimed::Taken(seen) => replayed(stored_reply(&key.given, target, seen)?),
        }
    }

    /// Forgets idempotency keys older than `ttl`; returns how many.
    pub async fn expire_idempotency(&self, ttl: Duration) -> Result<u64, sqlx::Error> {
        let cutoff =
            crate::value::now() - chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::MAX);
        let done = sqlx::query(self.idempotency.expire.clone())
            .bind(format_timestamp(&cutoff))
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    fn bind<'q>(&self, q: Query<'q>, v: Value, ty: Ty) -> Query<'q> {
        bind(self.dialect, q, v, ty)
    }

    /// Keys are never NULL, so their values need no type.
    fn bind_key<'q>(&self, mut q: Query<'q>, key: &RecordKey) -> Query<'q> {
        for v in &key.values {
            q = self.bind(q, v.clone(), Ty::Text);
        }
        q
    }

    async fn insert(
        &self,
        conn: &mut AnyConnection,
        t: &TemplateMeta,
        id: Option<Uuid>,
        version: i64,
        values: Vec<Value>,
    ) -> Result<Json, BedsError> {
        let mut q = sqlx::query(self.sql(t).insert.clone());
        // Sequence ids are left to the database.
        if let Some(id) = id {
            q = q.bind(id.to_string());
        }
        q = q.bind(version);
        for (v, f) in values.into_iter().zip(t.fields) {
            q = self.bind(q, v, Ty::of_field(f));
        }
        let row = q
            .fetch_one(&mut *conn)
            .await
            .map_err(|e| self.db_error(t, e, Write::Insert))?;
        record(t, &row, &[])
    }

    /// Replaces the tokens of the written record for each given set.
    async fn set_tokens(
        &self,
        conn: &mut AnyConnection,
        t: &TemplateMeta,
        reply: &Json,
        tokens: Vec<(usize, Vec<String>)>,
        replace: bool,
    ) -> Result<(), BedsError> {
        if tokens.is_empty() {
            return Ok(());
        }
        let owner = crate::value::id_value(t.id, reply.get("id").unwrap_or(&Json::Null))
            .map_err(|m| BedsError::new(ErrorCode::Internal, format!("written id {m}")))?;
        for (set, list) in tokens {
            let s = &self.sql(t).tokens[set];
            // A new record has no tokens to clear.
            if replace {
                self.bind(sqlx::query(s.clear.clone()), owner.clone(), Ty::Text)
                    .execute(&mut *conn)
                    .await
                    .map_err(|e| self.db_error(t, e, Write::None))?;
            }
            if list.is_empty() {
                continue;
            }
            let tokens = Json::from(list).to_string();
            self.bind(sqlx::query(s.insert.clone()), owner.clone(), Ty::Text)
                .bind(tokens)
                .execute(&mut *conn)
                .await
                .map_err(|e| self.db_error(t, e, Write::None))?;
        }
        Ok(())
    }

    pub async fn fetch(
        &self,
        t: &TemplateMeta,
        key: &RecordKey,
    ) -> Result<Option<Json>, BedsError> {
        let row = self
            .bind_key(sqlx::query(self.sql(t).fetch[key.slot].clone()), key)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.db_error(t, e, Write::None))?;
        row.map(|r| record(t, &r, &[])).transpose()
    }

    /// Applies `changes` and bumps the version, if the version is `expect_version`.
    async fn update(
        &self,
        conn: &mut AnyConnection,
        t: &TemplateMeta,
        key: &RecordKey,
        changes: Vec<(&'static FieldMeta, Value)>,
        expect_version: Option<i64>,
    ) -> Result<Json, BedsError> {
        let s = self.sql(t);
        // Without UPDATE … RETURNING the record is found by id first, so a change of the
        // key it was addressed by cannot lose it.
        let (key, found_id) = if self.dialect.update_returning() {
            (key.clone(), None)
        } else {
            match self.current(conn, t, key).await? {
                Some((_, id)) => (
                    RecordKey {
                        slot: 0,
                        values: vec![id.clone()],
                    },
                    Some(id),
                ),
                None => return Err(self.missed(conn, t, key).await),
            }
        };
        // Changes in declaration order: the statement for this set of fields binds so.
        let mut changes: Vec<(usize, &'static FieldMeta, Value)> = changes
            .into_iter()
            .filter_map(|(f, v)| {
                let i = t.fields.iter().position(|x| x.name == f.name)?;
                Some((i, f, v))
            })
            .collect();
        changes.sort_by_key(|(i, _, _)| *i);
        let changed: Vec<usize> = changes.iter().map(|(i, _, _)| *i).collect();
        let mut q = sqlx::query(s.update.get(self.dialect, key.slot, &changed));
        for (_, f, v) in changes {
            q = self.bind(q, v, Ty::of_field(f));
        }
        let q = self
            .bind_key(q, &key)
            .bind(expect_version)
            .bind(expect_version);
        let row = match found_id {
            None => q
                .fetch_optional(&mut *conn)
                .await
                .map_err(|e| self.db_error(t, e, Write::Update))?,
            Some(id) => {
                let done = q
                    .execute(&mut *conn)
                    .await
                    .map_err(|e| self.db_error(t, e, Write::Update))?;
                if done.rows_affected() == 0 {
                    None
                } else {
                    self.bind(sqlx::query(s.fetch[0].clone()), id, Ty::Text)
                        .fetch_optional(&mut *conn)
                        .await
                        .map_err(|e| self.db_error(t, e, Write::None))?
                }
            }
        };
        match row {
            Some(r) => record(t, &r, &[]),
            None => Err(self.missed(conn, t, &key).await),
        }
    }

    /// Deletes a record if its version is `expect_version`: the reply and the deleted record.
    async fn delete(
        &self,
        conn: &mut AnyConnection,
        t: &TemplateMeta,
        key: &RecordKey,
        expect_version: Option<i64>,
    ) -> Result<(Json, Json), BedsError> {
        // All rows, not the first: MariaDB sends a refusing foreign key's error after the
        // RETURNING row, and it must surface here, as this delete's, not at the next
        // statement of the transaction.
        let rows = self
            .bind_key(sqlx::query(self.sql(t).delete[key.slot].clone()), key)
            .bind(expect_version)
            .bind(expect_version)
            .fetch_all(&mut *conn)
            .await
            .map_err(|e| self.db_error(t, e, Write::Delete))?;
        let Some(row) = rows.into_iter().next() else {
            return Err(self.missed(conn, t, key).await);
        };
        let id = id_json(t, &row, 0).map_err(|e| internal(t, &e))?;
        let deleted = record(t, &row, &[])?;
        Ok((serde_json::json!({ "id": id, "deleted": true }), deleted))
    }

    /// The version and id of the record `key` names, if it exists.
    async fn current(
        &self,
        conn: &mut AnyConnection,
        t: &TemplateMeta,
        key: &RecordKey,
    ) -> Result<Option<(i64, Value)>, BedsError> {
        let row = self
            .bind_key(sqlx::query(self.sql(t).version[key.slot].clone()), key)
            .fetch_optional(&mut *conn)
            .await
            .map_err(|e| self.db_error(t, e, Write::None))?;
        let Some(row) = row else {
            return Ok(None);
        };
        let version: i64 = row.try_get(0).map_err(|e| internal(t, &e))?;
        let id = id_json(t, &row, 1).map_err(|e| internal(t, &e))?;
        let id = crate::value::id_value(t.id, &id)
            .map_err(|m| BedsError::new(ErrorCode::Internal, format!("stored id {m}")))?;
        Ok(Some((version, id)))
    }

    /// Why an update or delete matched no row: no record, or another version of it.
    async fn missed(
        &self,
        conn: &mut AnyConnection,
        t: &TemplateMeta,
        key: &RecordKey,
    ) -> BedsError {
        match self.current(conn, t, key).await {
            Ok(Some((version, _))) => {
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
            Err(e) => e,
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
            Some(a) => self.bind(sqlx::query(s.list_after.clone()), a, Ty::Text),
        };
        let rows = q
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.db_error(t, e, Write::None))?;
        rows.iter().map(|r| record(t, r, &[])).collect()
    }

    /// Binds a query's arguments in placeholder order.
    fn bind_query<'q>(
        &self,
        s: &QuerySql,
        params: &[Value],
        cursor: Option<&[Value]>,
        limit: u32,
    ) -> Query<'q> {
        let mut query = sqlx::query(s.sql.clone());
        for arg in &s.args {
            query = match arg {
                Arg::Param(i, ty) => self.bind(query, params[*i].clone(), *ty),
                Arg::Cursor(i, ty) => match cursor {
                    Some(c) => self.bind(query, c[*i].clone(), *ty),
                    None => self.bind(query, Value::Null, *ty),
                },
                Arg::Literal(LiteralValue::Bool(b)) => query.bind(*b),
                Arg::Literal(LiteralValue::Enum(v)) => query.bind(*v),
                Arg::Limit => query.bind(i64::from(limit)),
            };
        }
        query
    }

    /// A page of a named query's records; `cursor` holds the previous page's last sort
    /// keys. Each item carries the query's `with` values.
    pub async fn query(
        &self,
        q: &QueryMeta,
        params: Vec<Value>,
        cursor: Option<Vec<Value>>,
        limit: u32,
    ) -> Result<Vec<Json>, BedsError> {
        let s = &self.queries[&(q.domain, q.name)];
        let rows = self
            .bind_query(s, &params, cursor.as_deref(), limit)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.db_error(q.from, e, Write::None))?;
        if q.grouped() {
            return rows.iter().map(|r| group_row(q, r, &s.group)).collect();
        }
        rows.iter().map(|r| record(q.from, r, &s.with)).collect()
    }

    /// The number of records a count query matches.
    pub async fn count(&self, q: &QueryMeta, params: Vec<Value>) -> Result<i64, BedsError> {
        let s = &self.queries[&(q.domain, q.name)];
        let row = self
            .bind_query(s, &params, None, 0)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| self.db_error(q.from, e, Write::None))?;
        row.try_get::<i64, _>(0).map_err(|e| internal(q.from, &e))
    }

    /// Maps a database failure onto the error contract.
    fn db_error(&self, t: &TemplateMeta, e: sqlx::Error, write: Write) -> BedsError {
        match &e {
            sqlx::Error::Database(db) => match self.dialect.classify(db.as_ref()) {
                Failure::Unique(index) => unique_violation(t, self.sql(t), &index),
                Failure::ForeignKey if write == Write::Delete => BedsError::new(
                    ErrorCode::StillReferenced,
                    format!("this `{}` is still referenced by other records", t.name),
                ),
                Failure::ForeignKey => BedsError::new(
                    ErrorCode::ReferenceNotFound,
                    format!("a referenced record of this `{}` does not exist", t.name),
                ),
                Failure::Check(named) => check_violation(t, named),
                Failure::Transient => unavailable(&e),
                Failure::Other => internal(t, &e),
            },
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::WorkerCrashed => unavailable(&e),
            _ => internal(t, &e),
        }
    }
}

/// Every reference of every template, by the template it references.
fn referrers(
    d: &dyn Dialect,
    domains: &[&'static DomainMeta],
) -> HashMap<(&'static str, &'static str), Vec<Referrer>> {
    let mut out: HashMap<_, Vec<Referrer>> = HashMap::new();
    for (_, t) in crate::meta::templates(domains) {
        for f in t.fields {
            if let FieldKind::Ref {
                template,
                on_delete,
                ..
            } = f.kind
            {
                out.entry((t.domain, template)).or_default().push(Referrer {
                    template: t,
                    field: f,
                    on_delete,
                    select: sql::referrers_sql(d, t, f),
                });
            }
        }
    }
    out
}

/// Binds one value in the form the dialect stores it; a NULL binds as `ty` (PostgreSQL
/// will not put a text NULL into a number column).
fn bind<'q>(d: &dyn Dialect, q: Query<'q>, v: Value, ty: Ty) -> Query<'q> {
    match v {
        Value::Null => match ty {
            Ty::Int => q.bind(None::<i64>),
            // sqlx-core 0.9.0's Any driver swaps the two float NULLs (`Option<f64>::None`
            // reaches the database as a float4 NULL): a NULL bound first typed a prepared
            // statement's parameter float4, and the next 8-byte value sent for it was
            // refused on PostgreSQL ("incorrect binary data format").
            Ty::Float => q.bind(None::<f32>),
            Ty::Bool => q.bind(None::<bool>),
            _ => q.bind(None::<String>),
        },
        Value::Bool(b) => q.bind(b),
        Value::Int(i) => q.bind(i),
        Value::Float(x) => q.bind(x),
        Value::Text(s) => q.bind(s),
        // Lists bind as one JSON array, read back as rows in the statement.
        Value::List(items) => {
            q.bind(Json::Array(items.into_iter().map(|v| storage_json(d, v)).collect()).to_string())
        }
        other => match storage_json(d, other) {
            Json::String(s) => q.bind(s),
            j => q.bind(j.to_string()),
        },
    }
}

/// A value as the dialect reads it from text or JSON (for list parameters).
fn storage_json(d: &dyn Dialect, v: Value) -> Json {
    match v {
        Value::Null => Json::Null,
        Value::Bool(b) => Json::Bool(b),
        Value::Int(i) => Json::from(i),
        Value::Float(x) => Json::from(x),
        Value::Text(s) => Json::String(s),
        Value::Uuid(u) => Json::String(u.to_string()),
        Value::Timestamp(t) => Json::String(d.timestamp(&t)),
        Value::Date(x) => Json::String(x.format("%Y-%m-%d").to_string()),
        Value::Json(j) => Json::String(j.to_string()),
        Value::List(items) => Json::Array(items.into_iter().map(|v| storage_json(d, v)).collect()),
    }
}

fn id_json(t: &TemplateMeta, row: &AnyRow, col: usize) -> Result<Json, sqlx::Error> {
    match t.id {
        IdKind::Uuid7 => row.try_get::<String, _>(col).map(Json::String),
        IdKind::Sequence => row.try_get::<i64, _>(col).map(Json::from),
    }
}

/// One column in its API form (see [`Dialect::select`] for how each dialect delivers it).
fn column(row: &AnyRow, col: usize, ty: Ty) -> Result<Json, sqlx::Error> {
    let v = match ty {
        Ty::Int => row.try_get::<Option<i64>, _>(col)?.map(Json::from),
        Ty::Float => row.try_get::<Option<f64>, _>(col)?.map(Json::from),
        Ty::Bool => row
            .try_get::<Option<i64>, _>(col)?
            .map(|i| Json::Bool(i != 0)),
        Ty::Json => row
            .try_get::<Option<String>, _>(col)?
            .map(|text| serde_json::from_str(&text))
            .transpose()
            .map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
        Ty::Text | Ty::Uuid | Ty::Timestamp | Ty::Date => {
            row.try_get::<Option<String>, _>(col)?.map(Json::String)
        }
    };
    Ok(v.unwrap_or(Json::Null))
}

/// A row as the API shows it: `id`, `version`, the declared fields by API name, then the
/// query's `with` values (if any) under `with`.
fn record(t: &TemplateMeta, row: &AnyRow, with: &[(&'static str, Ty)]) -> Result<Json, BedsError> {
    let decode = |e: sqlx::Error| {
        tracing::error!(template = t.name, error = %e, "stored row does not match the declaration");
        BedsError::new(
            ErrorCode::Internal,
            format!("a stored `{}` row could not be read", t.name),
        )
    };
    let mut out = Map::with_capacity(t.fields.len() + 3);
    out.insert("id".into(), id_json(t, row, 0).map_err(decode)?);
    out.insert(
        "version".into(),
        Json::from(row.try_get::<i64, _>(1).map_err(decode)?),
    );
    for (i, f) in t.fields.iter().enumerate() {
        out.insert(
            f.name.into(),
            column(row, i + 2, Ty::of_field(f)).map_err(decode)?,
        );
    }
    if !with.is_empty() {
        let first = t.fields.len() + 2;
        let mut extra = Map::with_capacity(with.len());
        for (i, (name, ty)) in with.iter().enumerate() {
            extra.insert((*name).into(), column(row, first + i, *ty).map_err(decode)?);
        }
        out.insert("with".into(), Json::Object(extra));
    }
    Ok(Json::Object(out))
}

/// A grouped query's row: its group keys by name, then `count`.
fn group_row(q: &QueryMeta, row: &AnyRow, keys: &[(&'static str, Ty)]) -> Result<Json, BedsError> {
    let decode = |e: sqlx::Error| {
        tracing::error!(query = q.name, error = %e, "a group row does not match the declaration");
        BedsError::new(
            ErrorCode::Internal,
            format!("a row of query `{}` could not be read", q.name),
        )
    };
    let mut out = Map::with_capacity(keys.len() + 1);
    for (i, (name, ty)) in keys.iter().enumerate() {
        out.insert((*name).into(), column(row, i, *ty).map_err(decode)?);
    }
    let count = row.try_get::<i64, _>(keys.len()).map_err(decode)?;
    out.insert("count".into(), Json::from(count));
    Ok(Json::Object(out))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Write {
    None,
    Insert,
    Update,
    Delete,
}

fn unique_violation(t: &TemplateMeta, s: &Statements, index: &UniqueIndex<'_>) -> BedsError {
    let fields = unique_fields(t, s, index);
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

/// The API names of the fields of the unique index a violation names (the first one if
/// it names none of them, e.g. the primary key).
fn unique_fields(t: &TemplateMeta, s: &Statements, index: &UniqueIndex<'_>) -> Vec<&'static str> {
    let hit = s.unique.iter().position(|u| match index {
        UniqueIndex::Named(named) => named.contains(u.index.as_str()),
        UniqueIndex::Columns(columns) => u.columns.iter().all(|c| columns.contains(c)),
    });
    hit.map(|i| &t.unique[i])
        .or(t.unique.first())
        .map(|u| u.fields.to_vec())
        .unwrap_or_default()
}

/// A broken cross-field check, told in the declaration's words.
fn check_violation(t: &TemplateMeta, named: &str) -> BedsError {
    match t.checks.iter().find(|c| named.contains(c.name)) {
        Some(c) => BedsError::detail(
            format!("data.{}", c.differ[1]),
            DetailCode::Other,
            c.message.to_string(),
        ),
        None => BedsError::new(
            ErrorCode::InvalidInput,
            format!("this `{}` breaks a declared rule", t.name),
        ),
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

/// A write's idempotency key: as the caller gave it (or the message id), for messages, and
/// as stored, scoped to the caller (see `ingress/idempotency.rs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IdempotencyKey {
    pub given: String,
    pub stored: String,
}

/// A key another delivery claimed: its reply, or (if that delivery rolled back after all,
/// leaving the key free) a transient error so the write is retried.
fn replayed(reply: Option<Json>) -> Result<Claim, BedsError> {
    reply.map(Claim::Replay).ok_or_else(|| {
        BedsError::new(
            ErrorCode::DatabaseUnavailable,
            "a concurrent delivery of this request was rolled back; retry",
        )
    })
}

/// The reply stored with an idempotency key, if the key was used (for `target`).
fn stored_reply(
    key: &str,
    target: &str,
    seen: Option<(String, String)>,
) -> Result<Option<Json>, BedsError> {
    let Some((seen_target, reply)) = seen else {
        return Ok(None);
    };
    if seen_target != target {
        return Err(BedsError::new(
            ErrorCode::IdempotencyKeyReused,
            format!(
                "idempotency key `{key}` was used for {seen_target}; use a new key for {target}"
            ),
        ));
    }
    serde_json::from_str(&reply).map(Some).map_err(|e| {
        tracing::error!(error = %e, "stored idempotent reply is not JSON");
        BedsError::new(ErrorCode::Internal, "a stored reply could not be read")
    })
}
