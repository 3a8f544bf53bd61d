//! The segundo role (wiki/retention.md, wiki/migration.md): the data duties beside the
//! serving database. It opens the warehouse (`segundo.warehouse`, the COOL tier) and starts
//! each duty under the node's supervision; a duty is a module of its own here, started
//! from [`start`].

use std::sync::Arc;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::catalog::Catalog;
use crate::config::Config;
use crate::ingress::Ingress;
use crate::lineage::Lineage;
use crate::node::worker::Counters;
use crate::store::{Store, StoreError, StoreOptions};
use crate::transport::link::Link;
use crate::transport::signing::ServiceKey;

pub(crate) mod retention;

/// What segundo's duties share with the node that runs them. `link`, `key` and
/// `counters` serve the duties that consume queues (the warehouse reads, bulk migration),
/// which arrive from their own branches; the retention mover needs none of them.
#[derive(Clone)]
#[expect(
    dead_code,
    reason = "link, key and counters are read by segundo's queue consumers, not yet merged"
)]
pub(crate) struct Parts {
    pub config: Arc<Config>,
    pub catalog: &'static Catalog,
    /// The serving database (the HOT tier), the node's store.
    pub store: Store,
    /// The warehouse (the COOL tier).
    pub warehouse: Store,
    pub link: Arc<Link>,
    /// Validation, authorization and dispatch, as on an appServer.
    pub ingress: Arc<Ingress>,
    pub key: ServiceKey,
    pub lineage: Lineage,
    pub stop: CancellationToken,
    pub counters: Arc<Counters>,
}

/// Opens the warehouse of `config` with the tables of `catalog`, compared with its
/// declarations as `segundo.warehouse.schema` says (wiki/migrations.md).
pub(crate) async fn open_warehouse(
    config: &Config,
    catalog: &'static Catalog,
) -> Result<Store, StoreError> {
    let warehouse = &config.segundo.warehouse;
    let store = Store::open(&StoreOptions::from_config(warehouse), catalog.domains).await?;
    crate::store::migrate::prepare(
        &store,
        &crate::catalog::warehouse_schema(warehouse.driver, catalog),
        config.schema_mode(warehouse),
        &warehouse.migrations_dir,
        "segundo.warehouse",
    )
    .await?;
    Ok(store)
}

/// Starts segundo's duties under supervision in `workers`.
pub(crate) fn start(parts: Parts, workers: &mut JoinSet<()>) {
    workers.spawn(retention::run(parts.clone()));
}
