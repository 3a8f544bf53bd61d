//! The segundo role (wiki/retention.md, wiki/migration.md): the data duties beside the
//! serving database. It opens the warehouse (`segundo.warehouse`, the COOL tier) and starts
//! each duty under the node's supervision; a duty is a module of its own here, started
//! from [`start`].

pub(crate) mod mig;

use std::sync::Arc;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::catalog::Catalog;
use crate::config::Config;
use crate::ingress::Ingress;
use crate::lineage::Lineage;
use crate::node::consumer::Consumer;
use crate::node::worker::{Counters, supervise};
use crate::store::{Store, StoreError, StoreOptions};
use crate::transport::link::Link;
use crate::transport::names::MIG_BULK_KEY;
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

/// Opens the warehouse of `config` with the tables of `catalog`, creating what is missing
/// when `segundo.warehouse.apply_schema` is on.
pub(crate) async fn open_warehouse(
    config: &Config,
    catalog: &'static Catalog,
) -> Result<Store, StoreError> {
    let warehouse = &config.segundo.warehouse;
    let store = Store::open(&StoreOptions::from_config(warehouse), catalog.domains).await?;
    if warehouse.apply_schema {
        store.apply_schema(catalog.domains).await?;
    }
    Ok(store)
}

/// Starts segundo's duties under supervision in `workers`.
pub(crate) fn start(parts: Parts, workers: &mut JoinSet<()>) {
    {
        let config = &parts.config;
        let bulk = Consumer {
            queue: config.amqp.queue(MIG_BULK_KEY),
            tag: format!("{}.mig.bulk.{}", config.node, std::process::id()),
            prefetch: config.segundo.prefetch,
            // Dead letters are confirmed before the poison delivery is acked.
            confirms: true,
            broker: "mig.bulk",
            handler: Arc::new(mig::Bulk {
                parts: parts.clone(),
            }),
        };
        tracing::info!(queue = %bulk.queue, "segundo answering bulk import and export");
        workers.spawn(supervise(
            bulk,
            parts.link.clone(),
            parts.stop.clone(),
            parts.counters.clone(),
        ));
    }
}
