//! Schema migrations the DBA owns: the live schema read from the database's catalog, the
//! schema the declarations expect, their differences, the SQL that resolves them (written
//! to a file for review by `beds schema diff`), the history of applied files and the
//! comparison a node makes at start-up.
//!
//! The expected schema is not modelled a second time beside the DDL: the declarations'
//! DDL ([`super::schema`]) is run in a scratch space of the same database (an in-memory
//! SQLite, a PostgreSQL schema inside a transaction that is rolled back, a MariaDB
//! database dropped afterwards) and read back with the same introspection as the live
//! database. Both sides then carry the database's own spelling of every type, default and
//! index, so nothing is normalised by hand and any table the DDL declares is covered.

mod diff;
pub(crate) mod error;
mod file;
mod introspect;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use sha2::{Digest, Sha256};

pub use diff::{Change, compare};
pub use error::MigrateError;
pub use file::{Applied, apply, pending, plan, write};

use super::Store;
use crate::config::{Driver, SchemaMode};

/// The table `beds schema apply` records applied files in; left out of every comparison.
pub const HISTORY_TABLE: &str = "beds_schema_history";

/// A database's tables as its catalog describes them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Schema {
    pub tables: BTreeMap<String, Table>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Table {
    /// In column order.
    pub columns: Vec<Column>,
    /// Secondary indexes by name (primary keys are part of the table).
    pub indexes: BTreeMap<String, Index>,
    /// Foreign keys and checks, in the database's own rendering.
    pub constraints: BTreeSet<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    /// The database's spelling (collation and identity included where they exist).
    pub ty: String,
    pub not_null: bool,
    pub default: Option<String>,
}

impl std::fmt::Display for Column {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.ty)?;
        if self.not_null {
            write!(f, " NOT NULL")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Index {
    pub unique: bool,
    /// Key columns or expressions in order, with `DESC` and collations.
    pub columns: Vec<String>,
}

impl std::fmt::Display for Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let unique = if self.unique { "unique " } else { "" };
        write!(f, "{unique}({})", self.columns.join(", "))
    }
}

/// The declaration fingerprint of a schema: 16 hex digits of the SHA-256 of its DDL in
/// one dialect. A migration file names the fingerprint it brings the database to.
pub fn fingerprint(ddl: &[String]) -> String {
    let mut h = Sha256::new();
    for s in ddl {
        h.update(s.as_bytes());
        h.update(b";\n");
    }
    hex(&h.finalize())[..16].to_string()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The suffix of a dialect's migration files: `NNNN_<summary>.<tag>.sql`.
pub fn file_tag(driver: Driver) -> &'static str {
    match driver {
        Driver::Sqlite => "sqlite",
        Driver::Postgres => "postgres",
        Driver::Mariadb => "mariadb",
    }
}

/// The differences between the live schema of `store` and the schema `ddl` creates.
pub async fn differences(store: &Store, ddl: &[String]) -> Result<Vec<Change>, MigrateError> {
    let live = introspect::live(store).await?;
    let expected = introspect::expected(store, ddl).await?;
    Ok(compare(&live, &expected))
}

/// What a node does with its database at start-up: one comparison; in `create` mode the
/// tables missing entirely are created with their indexes; any other difference refuses
/// the start, naming each one and the way to resolve it. Tables and indexes the
/// declarations do not know are left alone: the database may hold the DBA's own.
pub async fn prepare(
    store: &Store,
    ddl: &[String],
    mode: SchemaMode,
    migrations_dir: &Path,
    section: &'static str,
) -> Result<(), MigrateError> {
    // Nodes starting together on a fresh server database would otherwise see each other's
    // half-created tables (a table without its indexes yet) and refuse to start.
    let guard = introspect::exclusive(store).await?;
    let prepared = compare_and_create(store, ddl, mode, migrations_dir, section).await;
    if let Some(conn) = guard {
        // Closing the session releases its lock.
        let _ = sqlx::Connection::close(conn).await;
    }
    prepared
}

async fn compare_and_create(
    store: &Store,
    ddl: &[String],
    mode: SchemaMode,
    migrations_dir: &Path,
    section: &'static str,
) -> Result<(), MigrateError> {
    let changes = differences(store, ddl).await?;
    let (missing, other): (Vec<&Change>, Vec<&Change>) = changes
        .iter()
        .filter(|c| !c.tolerated_at_start())
        .partition(|c| matches!(c, Change::NewTable(_)));
    let refused: Vec<&Change> = match mode {
        SchemaMode::Create => other,
        SchemaMode::Verify => missing.iter().chain(&other).copied().collect(),
    };
    if !refused.is_empty() {
        let file = pending(store, ddl, migrations_dir).await;
        let hint = match file {
            Some(path) => format!(
                "a pending migration for these declarations exists: review {p}, then run `beds schema apply {p}`",
                p = path.display()
            ),
            None => format!(
                "run `beds schema diff` (it writes a migration file to {}), review it, then `beds schema apply <file>`",
                migrations_dir.display()
            ),
        };
        return Err(MigrateError::Refused {
            dialect: store.dialect.name(),
            section,
            changes: refused.iter().map(|c| c.to_string()).collect(),
            hint,
        });
    }
    if !missing.is_empty() {
        tracing::info!(tables = missing.len(), "creating the missing tables");
        // Every statement is `IF NOT EXISTS`, and no existing table lacks an index (that
        // would have been refused above): only the missing tables are created.
        for statement in ddl {
            sqlx::query(store.dialect.prepare(statement.clone()))
                .execute(&store.pool)
                .await
                .map_err(|source| MigrateError::Create {
                    statement: statement.clone(),
                    source,
                })?;
        }
    }
    Ok(())
}
