//! The segundo role (wiki/retention.md, wiki/migration.md): the data duties beside the
//! serving database. It opens the warehouse (`segundo.warehouse`, the COOL tier) and starts
//! each duty under the node's supervision; a duty is a module of its own here, started
//! from [`start`].

mod reads;

use std::sync::Arc;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::catalog::Catalog;
use crate::config::Config;
use crate::ingress::Ingress;
use crate::lineage::Lineage;
use crate::node::consumer::Consumer;
use crate::node::worker::Counters;
use crate::node::worker::supervise;
use crate::store::{Store, StoreError, StoreOptions};
use crate::transport::link::Link;
use crate::transport::names::WAREHOUSE_READ_KEY;
use crate::transport::signing::ServiceKey;

pub(crate) mod retention;

/// What segundo's duties share with the node that runs them.
#[derive(Clone)]
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
    {
        let config = &parts.config;
        let reads = Consumer {
            queue: config.amqp.queue(WAREHOUSE_READ_KEY),
            tag: format!("{}.mig.read.{}", config.node, std::process::id()),
            prefetch: config.segundo.prefetch,
            // Dead letters are confirmed before the poison delivery is acked.
            confirms: true,
            broker: "mig.read",
            handler: Arc::new(reads::Reads {
                parts: parts.clone(),
            }),
        };
        let queries: Vec<&str> = parts
            .catalog
            .domains
            .iter()
            .flat_map(|d| d.queries.iter().filter(|q| q.warehouse).map(|q| q.name))
            .collect();
        tracing::info!(queue = %reads.queue, ?queries, "segundo serving warehouse reads");
        workers.spawn(supervise(
            reads,
            parts.link.clone(),
            parts.stop.clone(),
            parts.counters.clone(),
        ));
    }
}
