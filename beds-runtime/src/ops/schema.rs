//! `beds schema diff` and `beds schema apply`: the DBA's migration workflow on one of the
//! configured databases (wiki/migrations.md). Unlike the other operator tools these open
//! the database directly: schema changes are the DBA's, not an application operation.

use std::path::{Path, PathBuf};

use crate::catalog::Catalog;
use crate::config::{Config, DatabaseConfig};
use crate::store::migrate::{self, MigrateError};
use crate::store::{Store, StoreError, StoreOptions};

/// Which configured database a command works on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Target {
    /// `database`: the serving database of appServer, tercero and segundo.
    #[default]
    Serving,
    /// `admin.database`: the admin role's own tables.
    Admin,
    /// `segundo.warehouse`: the COOL tier.
    Warehouse,
}

/// Why a schema command failed.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Migrate(#[from] MigrateError),
}

/// What `beds schema diff` found and wrote.
#[derive(Debug)]
pub struct DiffOutcome {
    /// Every difference, as shown to the DBA.
    pub changes: Vec<String>,
    /// The file written; `None` when the database already matches.
    pub file: Option<PathBuf>,
    /// How many statements of the file destroy data.
    pub destructive: usize,
}

/// A database of `config`, its DDL and the domains behind it.
struct Opened {
    store: Store,
    ddl: Vec<String>,
    catalog: &'static Catalog,
    admin: bool,
}

impl Opened {
    fn domains(&self) -> &'static [&'static crate::meta::DomainMeta] {
        if self.admin {
            &[]
        } else {
            self.catalog.domains
        }
    }
}

fn section(config: &Config, target: Target) -> &DatabaseConfig {
    match target {
        Target::Serving => &config.database,
        Target::Admin => &config.admin.database,
        Target::Warehouse => &config.segundo.warehouse,
    }
}

async fn open(
    config: &Config,
    catalog: &'static Catalog,
    target: Target,
) -> Result<Opened, SchemaError> {
    let database = section(config, target);
    let admin = target == Target::Admin;
    let ddl = match target {
        Target::Admin => crate::admin::ddl(database.driver),
        Target::Warehouse => crate::catalog::warehouse_schema(database.driver, catalog),
        Target::Serving => crate::catalog::schema(database.driver, catalog),
    };
    let domains = if admin { &[][..] } else { catalog.domains };
    let store = Store::open(&StoreOptions::from_config(database), domains).await?;
    Ok(Opened {
        store,
        ddl,
        catalog,
        admin,
    })
}

/// Compares the declarations with the live database of `target` and writes the migration
/// that resolves the differences to `out` (default: the section's `migrations_dir`).
pub async fn diff(
    config: &Config,
    catalog: &'static Catalog,
    target: Target,
    out: Option<&Path>,
    allow_destructive: bool,
) -> Result<DiffOutcome, SchemaError> {
    let db = open(config, catalog, target).await?;
    let result = async {
        let changes = migrate::differences(&db.store, &db.ddl).await?;
        let shown = changes.iter().map(|c| c.to_string()).collect();
        if changes.is_empty() {
            return Ok(DiffOutcome {
                changes: shown,
                file: None,
                destructive: 0,
            });
        }
        let plan = migrate::plan(&db.store, db.domains(), &db.ddl, changes, allow_destructive)?;
        let dir = out.unwrap_or(&section(config, target).migrations_dir);
        let written = migrate::write(&plan, dir)?;
        Ok(DiffOutcome {
            changes: shown,
            file: Some(written.path),
            destructive: written.destructive,
        })
    }
    .await;
    db.store.close().await;
    result
}

/// Applies a reviewed migration file to the database of `target`.
pub async fn apply(
    config: &Config,
    catalog: &'static Catalog,
    target: Target,
    file: &Path,
    force: bool,
) -> Result<migrate::Applied, SchemaError> {
    let db = open(config, catalog, target).await?;
    let current = migrate::fingerprint(&db.ddl);
    let result = migrate::apply(&db.store, file, &current, force).await;
    db.store.close().await;
    Ok(result?)
}
