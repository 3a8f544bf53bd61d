//! The admin role's own database: a pool and its dialect, and the DDL of the admin's
//! tables. The DBA owns this schema as they own the serving one: `beds schema --admin`
//! prints it, and a node compares it with the database at start-up like the serving one
//! (`admin.database.schema`, wiki/migrations.md).

use sqlx::AnyPool;

use crate::store::{Dialect, Store};

/// The DDL of one part of the admin's schema, in a dialect.
pub(crate) type Section = fn(&dyn Dialect) -> Vec<String>;

/// The admin's database: cheap to clone, shared by the admin's consumers and commands.
#[derive(Debug, Clone)]
pub struct AdminStore {
    pool: AnyPool,
    dialect: &'static dyn Dialect,
}

impl AdminStore {
    /// The admin tables of `store`, a store opened on `admin.database`.
    pub(crate) fn of(store: &Store) -> AdminStore {
        AdminStore {
            pool: store.pool().clone(),
            dialect: store.dialect(),
        }
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub fn dialect(&self) -> &'static dyn Dialect {
        self.dialect
    }

    /// A statement written with `?` placeholders, in this store's dialect.
    pub fn sql(&self, text: String) -> sqlx::SqlStr {
        self.dialect.prepare(text)
    }
}
