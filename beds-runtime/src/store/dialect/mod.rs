//! What differs between the supported databases. Each database is one implementation of
//! [`Dialect`] that owns, in one file, everything particular to it: its SQL text
//! (quoting, placeholders, casts, result forms, the statements without a common form), its
//! DDL types, how it opens and sets up connections, how it claims an idempotency key and
//! what its errors mean. Everything else in the store is written once against the trait.

pub(super) mod mariadb;
pub(super) mod postgres;
pub(super) mod sqlite;

use std::sync::Arc;

use futures_util::future::BoxFuture;
use sqlx::any::AnyPoolOptions;
use sqlx::error::DatabaseError;
use sqlx::{AnyConnection, AnyPool, AssertSqlSafe, SqlSafeStr, SqlStr};

use super::options::{StoreError, StoreOptions};
use crate::meta::{FieldKind, FieldMeta, IdKind, TemplateMeta};
use crate::value::Timestamp;

/// How a value is stored and bound: the storage type family of a column or parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ty {
    Text,
    Int,
    Float,
    Bool,
    Uuid,
    Timestamp,
    Date,
    Json,
}

impl Ty {
    pub fn of_field(f: &FieldMeta) -> Ty {
        Ty::of_kind(&f.kind)
    }

    pub fn of_kind(kind: &FieldKind) -> Ty {
        match kind {
            FieldKind::String { .. } | FieldKind::Text { .. } | FieldKind::Enum { .. } => Ty::Text,
            FieldKind::Integer { .. } | FieldKind::BigInt { .. } => Ty::Int,
            FieldKind::Float { .. } => Ty::Float,
            FieldKind::Bool => Ty::Bool,
            FieldKind::Timestamp => Ty::Timestamp,
            FieldKind::Date => Ty::Date,
            FieldKind::Uuid => Ty::Uuid,
            FieldKind::Json => Ty::Json,
            FieldKind::Ref { id, .. } => Ty::of_id(*id),
        }
    }

    pub fn of_id(id: IdKind) -> Ty {
        match id {
            IdKind::Uuid7 => Ty::Uuid,
            IdKind::Sequence => Ty::Int,
        }
    }

    /// The type of `name` on `t` (`id` included).
    pub fn of_name(t: &TemplateMeta, name: &str) -> Ty {
        if name == "id" {
            Ty::of_id(t.id)
        } else {
            Ty::of_field(t.field(name).expect("names are checked at build time"))
        }
    }
}

/// Where a dialect's database is: the URL the driver opens and the form logs show.
#[derive(Debug)]
pub struct Location {
    pub url: String,
    /// Passwords redacted.
    pub shown: String,
}

/// What a database error means for the error contract, as the dialect that raised it reads it.
#[derive(Debug)]
pub enum Failure<'e> {
    Unique(UniqueIndex<'e>),
    ForeignKey,
    /// A CHECK constraint failed; the text that names it.
    Check(&'e str),
    /// Busy, locked, deadlocked or shutting down: the same request may succeed later.
    Transient,
    Other,
}

/// How a unique violation names its index.
#[derive(Debug)]
pub enum UniqueIndex<'e> {
    /// Text containing the index name.
    Named(&'e str),
    /// The violated columns (SQLite names columns, not indexes).
    Columns(Vec<&'e str>),
}

/// What one idempotency claim needs: the transaction's connection, the pool (for a look
/// from outside the transaction), the prepared statements and the values.
#[derive(Debug)]
pub struct ClaimArgs<'a> {
    pub conn: &'a mut AnyConnection,
    pub pool: &'a AnyPool,
    /// The dialect's claim statement (see [`Dialect::claim_statement`]): key, target, time.
    pub claim: &'a SqlStr,
    /// `SELECT target, reply … WHERE key = ?`.
    pub lookup: &'a SqlStr,
    pub key: &'a str,
    pub target: &'a str,
    pub now: &'a str,
}

/// How an idempotency claim went.
#[derive(Debug)]
pub enum Claimed {
    /// The key was new and is now held by this transaction.
    Held,
    /// The key is taken: the target and reply stored with it, or `None` if the delivery
    /// that took it rolled back after all.
    Taken(Option<(String, String)>),
}

/// The MariaDB writer gate (see [`Dialect::writer_gate`]).
#[derive(Debug)]
pub struct WriterGate {
    /// Creates the gate's table and its one row, idempotently.
    pub ddl: [String; 2],
    /// A write's shared lock on the gate row, held until its transaction ends.
    pub pass: String,
}

/// A supported database. Implementations are unit structs, chosen by
/// [`crate::store::dialect`].
///
/// Methods that return SQL text are called while statements are prepared at start-up.
/// Per request the store asks only for [`Dialect::begin`] and
/// [`Dialect::update_returning`] (constants), [`Dialect::claim`], [`Dialect::classify`]
/// and [`Dialect::timestamp`].
pub trait Dialect: std::fmt::Debug + Send + Sync + 'static {
    /// The database's name, for messages.
    fn name(&self) -> &'static str;

    /// The configured driver this dialect serves (schema introspection reads each
    /// database's own catalog).
    fn driver(&self) -> crate::config::Driver;

    // --- Connections ---

    /// The URL to open and the form logs show.
    fn location(&self, options: &StoreOptions) -> Result<Location, StoreError>;

    /// Prepares what opening the database needs (for SQLite, the file's directory).
    fn before_open(&self, _options: &StoreOptions) -> Result<(), StoreError> {
        Ok(())
    }

    /// The statements every new connection runs first.
    fn session(&self, options: &StoreOptions) -> Vec<SqlStr>;

    /// The pool's settings.
    fn pool_options(&self, options: &StoreOptions) -> AnyPoolOptions {
        AnyPoolOptions::new()
            .max_connections(options.max_connections)
            // A pooled connection is known good; pinging it on every acquire costs a round
            // trip (for SQLite, to its worker thread) per statement.
            .test_before_acquire(false)
    }

    // --- SQL text ---

    fn quote(&self, ident: &str) -> String;

    /// A placeholder for a value of type `ty`. Statements are written with `?` and
    /// finished per dialect by [`Dialect::prepare`].
    fn arg(&self, _ty: Ty) -> &'static str {
        "?"
    }

    /// `expr` as a column of a result, in the one form rows are decoded from: text for
    /// uuids, times, dates and JSON (in their API form), integers for booleans.
    fn select(&self, expr: &str, _ty: Ty) -> String {
        expr.to_string()
    }

    /// The statement's final text (PostgreSQL numbers its placeholders).
    fn finish(&self, sql: String) -> String {
        sql
    }

    /// A statement built from compiled, validated identifiers (values are always bound),
    /// ready to execute.
    fn prepare(&self, sql: String) -> SqlStr {
        AssertSqlSafe(Arc::<str>::from(self.finish(sql))).into_sql_str()
    }

    /// Opens a write transaction.
    fn begin(&self) -> &'static str {
        "BEGIN"
    }

    /// What locks the rows a `SELECT` reads until the transaction ends (and so makes it
    /// read the latest committed row); SQLite needs none, its write transaction already
    /// excludes every other writer.
    fn lock_rows(&self) -> &'static str {
        " FOR UPDATE"
    }

    /// Whether `UPDATE … RETURNING` exists.
    fn update_returning(&self) -> bool {
        true
    }

    /// `col = ?` for a case-insensitive unique key.
    fn equals_ci(&self, col: &str, ty: Ty) -> String;

    /// A sub-select of the elements of a JSON array bound as one parameter, as one column
    /// `v` of type `ty`: how a variable-length list is bound in a statement prepared once.
    fn elements(&self, ty: Ty) -> String;

    /// `col` is one of the values of a JSON array bound as one parameter.
    fn in_list(&self, col: &str, ty: Ty) -> String {
        format!("{col} IN ({})", self.elements(ty))
    }

    /// `col` starts with the text bound (twice) after it; `arg` is the second placeholder
    /// as compared (`?`, or folded by [`Dialect::fold_case`]).
    fn prefix(&self, col: &str, arg: &str) -> String {
        format!("substr({col}, 1, length(?)) = {arg}")
    }

    /// `expr` as a case-insensitive field compares, applied to both sides of a query
    /// condition on it, the same folding as [`Dialect::equals_ci`]. By default nothing: the
    /// column's own collation does it (MariaDB).
    fn fold_case(&self, expr: &str) -> String {
        expr.to_string()
    }

    /// A timestamp as the database reads it from text.
    fn timestamp(&self, t: &Timestamp) -> String {
        crate::value::format_timestamp(t)
    }

    // --- DDL ---

    /// The column type of a declared field, without nullability.
    fn column_type(&self, f: &FieldMeta, case_insensitive: bool) -> String;

    /// The id column's definition.
    fn id_column(&self, id: IdKind) -> &'static str;

    /// The type of a key (and of a column holding one).
    fn key_type(&self, id: IdKind) -> &'static str;

    /// What follows a `CREATE TABLE (…)`.
    fn table_options(&self) -> &'static str {
        ""
    }

    /// A column of a unique index (quoted `col`), with its case folding if any.
    fn unique_key_column(&self, col: &str, case_insensitive: bool) -> String;

    /// The type of a token column.
    fn token_type(&self, _max_len: u32) -> String {
        "TEXT".to_string()
    }

    /// The types of the idempotency table's key, reply and time columns.
    fn idempotency_types(&self) -> [&'static str; 3] {
        ["TEXT", "TEXT", "TEXT"]
    }

    /// `expr` as text, to compare a key column with a counter's text owner.
    fn as_text(&self, expr: &str) -> String {
        format!("CAST({expr} AS TEXT)")
    }

    /// A statement that, at the start of a transaction, waits for every write that inserted
    /// into the outbox to commit and keeps new ones from inserting until the transaction
    /// ends, so a backfill's `COUNT(*)` and its outbox mark describe the same writes. None
    /// on SQLite: its write transaction (`begin`) already excludes every writer.
    fn exclude_writers(&self) -> Option<String> {
        None
    }

    /// Where the database assigns an outbox `seq` before an insert would wait for
    /// [`Dialect::exclude_writers`], writers pass a gate first: the gate's table (created
    /// with its one row) and the statement each write runs before its first outbox row,
    /// holding a shared lock the exclusion waits for. None where the exclusion already
    /// stops writers before they take a `seq`.
    fn writer_gate(&self) -> Option<WriterGate> {
        None
    }

    /// One `BIGINT`: the highest outbox `seq` ever assigned, 0 before the first. Not
    /// `MAX(seq)`: the relay deletes published rows.
    fn outbox_high_water(&self) -> String;

    /// `insert` (one counter row) adding its value to an existing row of the same key:
    /// by default `ON CONFLICT … DO UPDATE` (SQLite, PostgreSQL).
    fn add_to_counter(&self, insert: &str) -> String {
        let q = |s: &str| self.quote(s);
        format!(
            "{insert} ON CONFLICT ({}, {}) DO UPDATE SET {v} = {}.{v} + excluded.{v}",
            q("counter"),
            q("owner"),
            q("beds_counter"),
            v = q("value"),
        )
    }

    // --- Idempotency ---

    /// The claim statement, from `insert` (a plain `INSERT` of key, target and time); by
    /// default an insert that does nothing on a taken key.
    fn claim_statement(&self, insert: &str) -> String {
        format!("{insert} ON CONFLICT DO NOTHING")
    }

    /// Claims an idempotency key inside the write transaction, or finds who took it; by
    /// default with [`Dialect::claim_statement`]'s insert-or-ignore (SQLite, PostgreSQL).
    fn claim<'a>(&'a self, args: ClaimArgs<'a>) -> BoxFuture<'a, Result<Claimed, sqlx::Error>> {
        claim_or_ignore(args)
    }

    // --- Leases ---

    /// `insert` of a row that may exist already, keeping the existing row (and waiting
    /// for a concurrent insert of it to commit); `col` is a column it may set to itself.
    fn keep_existing(&self, insert: &str, _col: &str) -> String {
        format!("{insert} ON CONFLICT DO NOTHING")
    }

    // --- Errors ---

    /// What a database error means.
    fn classify<'e>(&self, e: &'e dyn DatabaseError) -> Failure<'e>;
}

/// The claim of SQLite and PostgreSQL: one `INSERT … ON CONFLICT DO NOTHING` in the
/// common case. If it inserts nothing the key was used before (and, on PostgreSQL,
/// committed by a concurrent delivery this statement waited for): a new statement on the
/// same connection sees its reply.
fn claim_or_ignore(args: ClaimArgs<'_>) -> BoxFuture<'_, Result<Claimed, sqlx::Error>> {
    Box::pin(async move {
        let landed = sqlx::query(args.claim.clone())
            .bind(args.key)
            .bind(args.target)
            .bind(args.now)
            .execute(&mut *args.conn)
            .await?;
        if landed.rows_affected() == 1 {
            return Ok(Claimed::Held);
        }
        Ok(Claimed::Taken(
            lookup(args.conn, args.lookup, args.key).await?,
        ))
    })
}

/// The target and reply stored with an idempotency key.
async fn lookup(
    conn: &mut AnyConnection,
    lookup: &SqlStr,
    key: &str,
) -> Result<Option<(String, String)>, sqlx::Error> {
    sqlx::query_as(lookup.clone())
        .bind(key)
        .fetch_optional(conn)
        .await
}

/// The classification every driver shares through sqlx's error kinds; `unique` and
/// `check` read the dialect's messages.
fn by_kind<'e>(
    e: &'e dyn DatabaseError,
    unique: impl FnOnce(&'e dyn DatabaseError) -> UniqueIndex<'e>,
    check: impl FnOnce(&'e dyn DatabaseError) -> &'e str,
) -> Option<Failure<'e>> {
    use sqlx::error::ErrorKind;
    match e.kind() {
        ErrorKind::UniqueViolation => Some(Failure::Unique(unique(e))),
        ErrorKind::ForeignKeyViolation => Some(Failure::ForeignKey),
        ErrorKind::CheckViolation => Some(Failure::Check(check(e))),
        _ => None,
    }
}

/// PostgreSQL and MariaDB: a server at `database.url`.
fn server_location(d: &dyn Dialect, options: &StoreOptions) -> Result<Location, StoreError> {
    let url = options.url.clone().ok_or(StoreError::NoUrl(d.name()))?;
    let shown = crate::config::redact(&url);
    Ok(Location { url, shown })
}
