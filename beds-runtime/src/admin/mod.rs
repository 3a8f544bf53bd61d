//! The admin role (wiki/operations.md): its own database ([`store`]), the `adm` command
//! route ([`commands`]), the audit trail ([`audit`]) and the lineage store ([`lineage`]).
//! The node (`node`) opens the admin's database in place of the serving one and calls
//! [`start`].

pub mod audit;
pub mod commands;
pub mod control;
pub mod diag;
pub(crate) mod heartbeats;
pub mod lineage;
pub mod nodes;
pub(crate) mod page;
pub mod request;
pub mod store;

use std::sync::Arc;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::catalog::Catalog;
use crate::config::{Config, Driver};
use crate::ingress::settle::Signer;
use crate::node::consumer::Consumer;
use crate::node::worker::Counters;
use crate::node::worker::supervise;
use crate::security::Security;
use crate::store::dialect;
use crate::telemetry::queues::Queues;
use crate::transport::link::Link;
use crate::transport::names::{dead_letter_queue, retry_queue};
pub use commands::{ADMIN_KEY, ADMIN_ROLE, AdminCtx, AdminRequest, OPS};
use control::NodeControl;
use heartbeats::Heartbeats;
pub use heartbeats::STATUS_QUEUE;
pub use store::AdminStore;
use store::Section;

/// Every part of the admin's schema, in creation order. An admin capability with tables
/// adds its DDL function here.
pub(crate) const SECTIONS: &[Section] = &[audit::ddl, lineage::ddl];

/// The admin's DDL in the dialect of `driver`.
pub fn ddl(driver: Driver) -> Vec<String> {
    let d = dialect(driver);
    SECTIONS.iter().flat_map(|section| section(d)).collect()
}

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

/// The queues (before the queue tag) the admin always consumes, declared at start.
pub(crate) const QUEUES: &[&str] = &[ADMIN_KEY];

/// Every queue (before the queue tag) an admin node of `catalog` consumes: the command
/// queue, and the audit queue when a template declares `audit`.
pub(crate) fn queues(catalog: &Catalog) -> Vec<&'static str> {
    let mut queues = QUEUES.to_vec();
    if !audit::audited(catalog).is_empty() {
        queues.push(audit::AUDIT_KEY);
    }
    queues
}

/// Starts the admin's consumers under supervision in `workers`; returns what its ops (and
/// the operator page) read.
pub(crate) fn start(parts: Parts<'_>, workers: &mut JoinSet<()>) -> Arc<AdminCtx> {
    let config = parts.config;
    let nodes = start_diagnostics(&parts, workers);
    let audited = audit::bindings(parts.catalog);
    if !audited.is_empty() {
        let auditor = Consumer {
            queue: config.amqp.queue(audit::AUDIT_KEY),
            tag: format!("{}.audit.{}", config.node, std::process::id()),
            prefetch: config.admin.prefetch,
            // Dead letters are confirmed before the poison delivery is acked.
            confirms: true,
            broker: "audit",
            handler: Arc::new(audit::Auditor {
                amqp: config.amqp.clone(),
                store: parts.store.clone(),
                key: parts.signer.key.clone(),
                audited: audit::audited(parts.catalog)
                    .iter()
                    .map(|t| (t.domain, t.name))
                    .collect(),
                bindings: audited.clone(),
                stop: parts.stop.clone(),
            }),
        };
        tracing::info!(queue = %auditor.queue, bindings = ?audited, "admin recording audit records");
        workers.spawn(supervise(
            auditor,
            parts.link.clone(),
            parts.stop.clone(),
            parts.counters.clone(),
        ));
    }
    let ctx = Arc::new(AdminCtx {
        store: parts.store,
        catalog: parts.catalog,
        config: Arc::new(config.clone()),
        link: parts.link.clone(),
        nodes,
    });
    let (keeper_store, keeper_key) = (ctx.store.clone(), parts.signer.key.clone());
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
    workers.spawn(supervise(
        commands,
        parts.link.clone(),
        parts.stop.clone(),
        parts.counters.clone(),
    ));
    let keeper = Consumer {
        queue: config.amqp.queue(lineage::LINEAGE_KEY),
        tag: format!("{}.lineage.{}", config.node, std::process::id()),
        prefetch: config.admin.prefetch,
        // Dead letters are confirmed before the poison delivery is acked.
        confirms: true,
        broker: "lineage",
        handler: Arc::new(lineage::Keeper {
            amqp: config.amqp.clone(),
            store: keeper_store,
            key: keeper_key,
            keep: config.admin.lineage_keep.duration(),
            stop: parts.stop.clone(),
            swept: Default::default(),
        }),
    };
    tracing::info!(queue = %keeper.queue, "admin storing lineage records");
    workers.spawn(supervise(keeper, parts.link, parts.stop, parts.counters));
    ctx
}

/// Starts what keeps the diagnostics current — the heartbeat consumer (supervised in
/// `workers`) and the poller of every lane's queues — and returns the node ops' state.
fn start_diagnostics(parts: &Parts<'_>, workers: &mut JoinSet<()>) -> Arc<NodeControl> {
    let config = parts.config;
    let diagnostics = Arc::new(diag::Diagnostics::new(config.admin.stuck_after.duration()));
    let heartbeats = Consumer {
        queue: config.amqp.queue(STATUS_QUEUE),
        tag: format!("{}.status.{}", config.node, std::process::id()),
        prefetch: config.admin.prefetch,
        confirms: false,
        broker: "status",
        handler: Arc::new(Heartbeats {
            amqp: config.amqp.clone(),
            key: parts.signer.key.clone(),
            diagnostics: diagnostics.clone(),
        }),
    };
    tracing::info!(queue = %heartbeats.queue, "admin collecting node heartbeats");
    workers.spawn(supervise(
        heartbeats,
        parts.link.clone(),
        parts.stop.clone(),
        parts.counters.clone(),
    ));
    let names = diag::LANES
        .iter()
        .flat_map(|key| {
            let key = key.to_string();
            [retry_queue(&key), dead_letter_queue(&key), key]
        })
        .map(|label| (config.amqp.queue(&label), label))
        .collect();
    tokio::spawn(
        Queues {
            link: parts.link.clone(),
            names,
            every: config.telemetry.queue_poll.duration(),
            sink: diagnostics.clone(),
        }
        .run(parts.stop.clone()),
    );
    Arc::new(NodeControl {
        diagnostics,
        key: parts.signer.key.clone(),
        link: parts.link.clone(),
        queue_tag: config.amqp.queue_tag.clone(),
        drain_timeout: config.shutdown.drain_timeout.duration(),
        origin: crate::envelope::Origin {
            service: "beds".into(),
            node: config.node.clone(),
            env: config.env.clone(),
        },
    })
}
