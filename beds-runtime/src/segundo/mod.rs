//! The segundo role (wiki/retention.md, wiki/migration.md): the data duties beside the
//! serving database. It opens the warehouse (`segundo.warehouse`, the COOL tier) and starts
//! each duty under the node's supervision; a duty is a module of its own here, started
//! from [`start`].

pub(crate) mod mig;
mod reads;
pub(crate) mod retention;

use std::sync::Arc;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::catalog::Catalog;
use crate::config::Config;
use crate::ingress::Ingress;
use crate::lineage::Lineage;
use crate::node::consumer::{Consumer, Handler};
use crate::node::worker::{Counters, supervise};
use crate::store::{Store, StoreError, StoreOptions};
use crate::transport::link::Link;
use crate::transport::names::{MIG_BULK_KEY, WAREHOUSE_READ_KEY};
use crate::transport::signing::ServiceKey;

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
    let store =
        Store::open_warehouse(&StoreOptions::from_config(warehouse), catalog.domains).await?;
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

/// Starts segundo's duties under supervision in `workers`: the retention mover, and the
/// consumers of warehouse reads (`{tag}mig.read`) and bulk import and export
/// (`{tag}mig.bulk`).
pub(crate) fn start(parts: Parts, workers: &mut JoinSet<()>) {
    workers.spawn(retention::run(parts.clone()));
    let queries: Vec<&str> = parts
        .catalog
        .domains
        .iter()
        .flat_map(|d| d.queries.iter().filter(|q| q.warehouse).map(|q| q.name))
        .collect();
    tracing::info!(?queries, "segundo serving warehouse reads");
    let reads = reads::Reads {
        parts: parts.clone(),
    };
    consume(&parts, workers, WAREHOUSE_READ_KEY, reads);
    tracing::info!("segundo answering bulk import and export");
    let bulk = mig::Bulk {
        parts: parts.clone(),
    };
    consume(&parts, workers, MIG_BULK_KEY, bulk);
}

/// Supervises a consumer of the queue of `key` whose deliveries `handler` settles.
fn consume<H: Handler>(parts: &Parts, workers: &mut JoinSet<()>, key: &'static str, handler: H) {
    let config = &parts.config;
    let consumer = Consumer {
        queue: config.amqp.queue(key),
        tag: format!("{}.{key}.{}", config.node, std::process::id()),
        prefetch: config.segundo.prefetch,
        // Dead letters are confirmed before the poison delivery is acked.
        confirms: true,
        broker: key,
        handler: Arc::new(handler),
    };
    tracing::info!(queue = %consumer.queue, "segundo consuming");
    workers.spawn(supervise(
        consumer,
        parts.link.clone(),
        parts.stop.clone(),
        parts.counters.clone(),
    ));
}
