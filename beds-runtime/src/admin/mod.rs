//! The admin role (wiki/operations.md): its own database ([`store`]), the `adm` command
//! route ([`commands`]) and the audit trail ([`audit`]). The node (`node`) opens the
//! admin's database in place of the serving one and calls [`start`].

pub mod audit;
pub mod commands;
pub(crate) mod consumer;
pub mod control;
pub mod diag;
pub(crate) mod heartbeats;
pub mod nodes;
pub(crate) mod page;
pub mod store;

use std::sync::Arc;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::catalog::Catalog;
use crate::config::Config;
use crate::ingress::settle::Signer;
use crate::node::Counters;
use crate::node::worker::supervise;
use crate::security::Security;
use crate::transport::link::Link;
pub use commands::{ADMIN_KEY, ADMIN_ROLE, AdminCtx, AdminRequest, OPS};
use consumer::Consumer;
pub use heartbeats::STATUS_QUEUE;
pub use store::AdminStore;

/// What the admin's consumers share with the node that runs them.
pub(crate) struct Parts<'a> {
    pub config: &'a Config,
    pub catalog: &'static Catalog,
    pub store: AdminStore,
    pub link: Arc<Link>,
    pub signer: Signer,
    pub security: Arc<Security>,
    pub stop: CancellationToken,
    pub counters: Arc<Counters>,
}

/// The queues (before the queue tag) the admin consumes, for the node's queue telemetry.
pub(crate) const QUEUES: &[&str] = &[ADMIN_KEY];

/// Starts the admin's consumers under supervision in `workers`; returns what its ops (and
/// the operator page) read.
pub(crate) fn start(parts: Parts<'_>, workers: &mut JoinSet<()>) -> Arc<AdminCtx> {
    let config = parts.config;
    let nodes = diag::start(&parts, workers);
    let ctx = Arc::new(AdminCtx {
        store: parts.store,
        catalog: parts.catalog,
        config: Arc::new(config.clone()),
        link: parts.link.clone(),
        nodes,
    });
    let commands = Consumer {
        queue: config.amqp.queue(ADMIN_KEY),
        tag: format!("{}.adm.{}", config.node, std::process::id()),
        prefetch: config.admin.prefetch,
        confirms: false,
        broker: "adm",
        handler: Arc::new(commands::Commands {
            ctx: ctx.clone(),
            signer: parts.signer,
            security: parts.security,
        }),
    };
    tracing::info!(queue = %commands.queue, "admin answering adm commands");
    workers.spawn(supervise(commands, parts.link, parts.stop, parts.counters));
    ctx
}
