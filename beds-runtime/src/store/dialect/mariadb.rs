//! MariaDB (the MySQL protocol): backquoted names, bounded `VARCHAR` keys, binary
//! collation by default, no `UPDATE … RETURNING` and no quiet insert-or-ignore.

use futures_util::future::BoxFuture;
use sqlx::SqlStr;
use sqlx::error::DatabaseError;

use super::{
    ClaimArgs, Claimed, Dialect, Failure, Location, Ty, UniqueIndex, WriterGate, by_kind, lookup,
    server_location,
};
use crate::meta::{FieldKind, FieldMeta, IdKind};
use crate::store::options::{StoreError, StoreOptions};
use crate::value::Timestamp;

#[derive(Debug)]
pub struct MariaDb;

/// The writer gate's table (see [`Dialect::writer_gate`]).
const GATE: &str = "beds_outbox_gate";

impl Dialect for MariaDb {
    /// The gate row, exclusively: waits for every write past the gate (they hold its shared
    /// lock until they commit) and stops new ones before they insert. A locking read of the
    /// outbox itself would not do: InnoDB assigns the `AUTO_INCREMENT` before the insert
    /// waits for the lock, so a waiting write's `seq` would fall under the backfill's mark
    /// though its change is not in the backfill's count.
    fn exclude_writers(&self) -> Option<String> {
        Some(format!(
            "SELECT {id} FROM {} WHERE {id} = 1 FOR UPDATE",
            self.quote(GATE),
            id = self.quote("id")
        ))
    }

    fn writer_gate(&self) -> Option<WriterGate> {
        let (gate, id) = (self.quote(GATE), self.quote("id"));
        Some(WriterGate {
            ddl: [
                format!(
                    "CREATE TABLE IF NOT EXISTS {gate} ({id} INT NOT NULL PRIMARY KEY){}",
                    self.table_options()
                ),
                format!("INSERT IGNORE INTO {gate} ({id}) VALUES (1)"),
            ],
            pass: format!("SELECT {id} FROM {gate} WHERE {id} = 1 LOCK IN SHARE MODE"),
        })
    }

    /// The next `AUTO_INCREMENT` value, less one (live in MariaDB's information schema).
    fn outbox_high_water(&self) -> String {
        "SELECT CAST(COALESCE(MAX(AUTO_INCREMENT), 1) - 1 AS SIGNED) FROM \
         information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'beds_outbox'"
            .into()
    }

    fn driver(&self) -> crate::config::Driver {
        crate::config::Driver::Mariadb
    }

    fn name(&self) -> &'static str {
        "MariaDB"
    }

    fn location(&self, options: &StoreOptions) -> Result<Location, StoreError> {
        server_location(self, options)
    }

    /// Times are stored in UTC; sessions must not shift them.
    fn session(&self, _options: &StoreOptions) -> Vec<SqlStr> {
        vec![self.prepare("SET time_zone = '+00:00'".to_string())]
    }

    fn quote(&self, ident: &str) -> String {
        format!("`{ident}`")
    }

    fn select(&self, expr: &str, ty: Ty) -> String {
        match ty {
            Ty::Timestamp => format!("DATE_FORMAT({expr}, '%Y-%m-%dT%H:%i:%s.%fZ')"),
            Ty::Date => format!("DATE_FORMAT({expr}, '%Y-%m-%d')"),
            Ty::Bool => format!("CAST({expr} AS SIGNED)"),
            _ => expr.to_string(),
        }
    }

    /// MariaDB has `RETURNING` for INSERT and DELETE only.
    fn update_returning(&self) -> bool {
        false
    }

    /// The column's collation is case-insensitive.
    fn equals_ci(&self, col: &str, ty: Ty) -> String {
        format!("{col} = {}", self.arg(ty))
    }

    fn elements(&self, ty: Ty) -> String {
        let column = match ty {
            Ty::Int | Ty::Bool => "BIGINT",
            Ty::Float => "DOUBLE",
            Ty::Timestamp => "DATETIME(6)",
            Ty::Date => "DATE",
            _ => "VARCHAR(1024)",
        };
        format!("SELECT jt.v FROM JSON_TABLE(?, '$[*]' COLUMNS (v {column} PATH '$')) AS jt")
    }

    fn prefix(&self, col: &str, arg: &str) -> String {
        format!("LEFT({col}, CHAR_LENGTH(?)) = {arg}")
    }

    /// `DATETIME` reads neither `T` nor `Z`.
    fn timestamp(&self, t: &Timestamp) -> String {
        t.format("%Y-%m-%d %H:%M:%S%.6f").to_string()
    }

    fn column_type(&self, f: &FieldMeta, case_insensitive: bool) -> String {
        let collate = if case_insensitive {
            " COLLATE utf8mb4_general_ci"
        } else {
            ""
        };
        match f.kind {
            FieldKind::Integer { .. } => "INT".to_string(),
            FieldKind::BigInt { .. } => "BIGINT".to_string(),
            // Index keys need a bounded VARCHAR; limits are in characters.
            FieldKind::String { max, .. } => format!("VARCHAR({max}){collate}"),
            FieldKind::Enum { values } => format!(
                "VARCHAR({})",
                values.iter().map(|v| v.chars().count()).max().unwrap_or(1)
            ),
            FieldKind::Text { max: Some(max) } if max <= 16_383 => "TEXT".to_string(),
            FieldKind::Text { .. } => "LONGTEXT".to_string(),
            _ => match Ty::of_field(f) {
                Ty::Int => "BIGINT",
                Ty::Float => "DOUBLE",
                Ty::Bool => "BOOLEAN",
                Ty::Uuid => "CHAR(36)",
                Ty::Timestamp => "DATETIME(6)",
                Ty::Date => "DATE",
                Ty::Json => "JSON",
                Ty::Text => "LONGTEXT",
            }
            .to_string(),
        }
    }

    fn id_column(&self, id: IdKind) -> &'static str {
        match id {
            IdKind::Uuid7 => "CHAR(36) NOT NULL PRIMARY KEY",
            IdKind::Sequence => "BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY",
        }
    }

    fn key_type(&self, id: IdKind) -> &'static str {
        match id {
            IdKind::Uuid7 => "CHAR(36)",
            IdKind::Sequence => "BIGINT",
        }
    }

    /// Binary collation: comparisons and uniqueness are exact, as in the others.
    fn table_options(&self) -> &'static str {
        " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"
    }

    /// The column's own collation is case-insensitive.
    fn unique_key_column(&self, col: &str, _case_insensitive: bool) -> String {
        col.to_string()
    }

    fn token_type(&self, max_len: u32) -> String {
        format!("VARCHAR({max_len})")
    }

    fn idempotency_types(&self) -> [&'static str; 3] {
        ["VARCHAR(255)", "LONGTEXT", "VARCHAR(32)"]
    }

    /// `INSERT IGNORE` would also hide other errors.
    fn keep_existing(&self, insert: &str, col: &str) -> String {
        format!("{insert} ON DUPLICATE KEY UPDATE {col} = {col}")
    }

    fn as_text(&self, expr: &str) -> String {
        format!("CAST({expr} AS CHAR)")
    }

    fn add_to_counter(&self, insert: &str) -> String {
        let v = self.quote("value");
        format!("{insert} ON DUPLICATE KEY UPDATE {v} = {v} + VALUES({v})")
    }

    /// A plain insert: `INSERT IGNORE` would also hide other errors.
    fn claim_statement(&self, insert: &str) -> String {
        insert.to_string()
    }

    /// Looks the key up, then inserts it. If a concurrent delivery committed the key in
    /// between, the insert fails with a unique violation; this transaction's snapshot
    /// predates that commit (repeatable read), so the reply is read on another connection.
    fn claim<'a>(&'a self, args: ClaimArgs<'a>) -> BoxFuture<'a, Result<Claimed, sqlx::Error>> {
        Box::pin(async move {
            if let Some(seen) = lookup(args.conn, args.lookup, args.key).await? {
                return Ok(Claimed::Taken(Some(seen)));
            }
            let claimed = sqlx::query(args.claim.clone())
                .bind(args.key)
                .bind(args.target)
                .bind(args.now)
                .execute(&mut *args.conn)
                .await;
            match claimed {
                Ok(_) => Ok(Claimed::Held),
                Err(sqlx::Error::Database(db))
                    if matches!(self.classify(db.as_ref()), Failure::Unique(_)) =>
                {
                    let mut fresh = args.pool.acquire().await?;
                    Ok(Claimed::Taken(
                        lookup(&mut fresh, args.lookup, args.key).await?,
                    ))
                }
                Err(e) => Err(e),
            }
        })
    }

    fn classify<'e>(&self, e: &'e dyn DatabaseError) -> Failure<'e> {
        // Violations name the key in their message: `Duplicate entry '…' for key '…'`,
        // `CONSTRAINT `…` failed for …`.
        let named = |e: &'e dyn DatabaseError| e.constraint().unwrap_or(e.message());
        by_kind(e, |e| UniqueIndex::Named(named(e)), named).unwrap_or_else(|| {
            // Lock wait timeout and deadlock: the SQLSTATE of the first is too broad.
            let busy = e
                .try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
                .is_some_and(|m| matches!(m.number(), 1205 | 1213));
            if busy {
                Failure::Transient
            } else {
                Failure::Other
            }
        })
    }
}
