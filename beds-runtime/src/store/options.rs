//! How the store is opened, and what can go wrong doing so. A leaf of the store's modules:
//! the dialects read these options to set up their connections.

use std::path::PathBuf;
use std::time::Duration;

use crate::config::{DatabaseConfig, Driver, SqliteSync};

/// Where and how to open the database.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub driver: Driver,
    /// SQLite: the database file.
    pub sqlite_file: PathBuf,
    /// PostgreSQL and MariaDB: the connection URL.
    pub url: Option<String>,
    pub max_connections: u32,
    /// SQLite: how long a writer waits for the lock.
    pub busy_timeout: Duration,
    /// SQLite: whether every commit syncs the log (`FULL`) or only checkpoints (`NORMAL`).
    pub sqlite_sync_full: bool,
}

impl StoreOptions {
    pub fn from_config(c: &DatabaseConfig) -> StoreOptions {
        StoreOptions {
            driver: c.driver,
            sqlite_file: c.sqlite_path(),
            url: c.connect_url(),
            max_connections: c.max_connections,
            busy_timeout: c.busy_timeout.duration(),
            sqlite_sync_full: c.sqlite_synchronous == SqliteSync::Full,
        }
    }
}

/// A failure to open or prepare the database at start-up.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open the {dialect} database {target}: {source}")]
    Open {
        dialect: &'static str,
        target: String,
        source: sqlx::Error,
    },
    #[error("database.url is required for {0}; set it in the config or BEDS_DATABASE__URL")]
    NoUrl(&'static str),
    #[error("applying the schema failed at `{statement}`: {source}")]
    Schema {
        statement: String,
        source: sqlx::Error,
    },
    #[error(transparent)]
    Migrate(#[from] super::migrate::error::MigrateError),
    #[error("starting the maintained counts from their rows failed: {0}")]
    Backfill(sqlx::Error),
    #[error("reading a moved record's tombstone (beds_moved) failed: {0}")]
    Moved(sqlx::Error),
}
