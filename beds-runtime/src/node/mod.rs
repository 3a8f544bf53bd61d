//! A running node: storage opened, topology declared, the role's broker pools consuming.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::admin::{self, AdminStore};
use crate::cache::Cache;
use crate::cache::subscriber::Subscriber;
use crate::catalog::{Catalog, CatalogError};
use crate::config::{Config, Role};
use crate::envelope::Origin;
use crate::ingress::Ingress;
use crate::ingress::dispatch::Ctx;
use crate::ingress::lane::Lane;
use crate::ingress::settle::Signer;
use crate::lineage::Lineage;
use crate::segundo;
use crate::store::{Store, StoreError, StoreOptions};
use crate::telemetry::http::{self, ListenError};
use crate::telemetry::metrics::Metrics;
use crate::telemetry::queues::Queues;
use crate::telemetry::status::{DomainVersion, Versions};
use crate::tercero::{EVENT_BINDING, EVENT_QUEUE_KEY};
use crate::transport::link::Link;
use crate::transport::names::{MIG_BULK_KEY, WAREHOUSE_READ_KEY, dead_letter_queue, retry_queue};
use crate::transport::publish::CONFIRM_TIMEOUT;
use crate::transport::signing::{KeyError, ServiceKey};
use crate::transport::{ConnectError, topology};
use crate::value::{PatternError, Patterns};
use control::Control;
use heartbeat::Heartbeat;
use lanes::Lanes;
use readiness::Readiness;
use relay::Relay;
use tercero::EventConsumer;
use worker::{Counters, Worker, supervise};

pub(crate) mod consumer;
mod control;
mod heartbeat;
mod lanes;
mod readiness;
mod relay;
mod tercero;
pub(crate) mod worker;

/// Why a node could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("declaring the AMQP topology failed: {0}")]
    Topology(lapin::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the compiled domains are inconsistent: {0}")]
    Catalog(#[from] CatalogError),
    #[error("the compiled domains are inconsistent: {0}")]
    Pattern(#[from] PatternError),
    #[error(transparent)]
    Security(#[from] crate::security::SecurityError),
    #[error("subscribing to cache invalidations took longer than {} s", SUBSCRIBE_TIMEOUT.as_secs())]
    InvalidationsNotSubscribed,
    #[error(transparent)]
    ServiceKey(#[from] KeyError),
    #[error(transparent)]
    Telemetry(#[from] ListenError),
    #[error(
        "{templates} declare capabilities.audit, which records every committed write from its write event, but events.enabled is false; set events.enabled: true (or remove audit from those templates)"
    )]
    AuditNeedsEvents { templates: String },
}

/// How long a start waits for the node's invalidation queue before it fails.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(15);

/// The lanes a role consumes.
pub fn lanes(role: Role) -> &'static [Lane] {
    match role {
        Role::AppServer => &[Lane::Read, Lane::Write],
        Role::Admin | Role::Segundo | Role::Tercero => &[],
    }
}

/// Forgets idempotency keys past their time to live, a few times per TTL (at least
/// once a minute), until the node stops.
async fn expire_idempotency(store: Store, ttl: Duration, stop: CancellationToken) {
    let every = (ttl / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        match store.expire_idempotency(ttl).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(expired = n, "idempotency keys expired"),
            Err(e) => {
                tracing::warn!(error = %e, "expiring idempotency keys failed; retrying later")
            }
        }
    }
}

/// Forgets applied write-event ids older than `ttl` (no redelivery comes that late),
/// like [`expire_idempotency`].
async fn expire_applied_events(store: Store, ttl: Duration, stop: CancellationToken) {
    let every = (ttl / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        match store.expire_applied_events(ttl).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(expired = n, "applied event ids expired"),
            Err(e) => {
                tracing::warn!(error = %e, "expiring applied event ids failed; retrying later")
            }
        }
    }
}

/// What a node reports about itself: ready when connected and every worker consumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Health {
    /// The AMQP connection is up (not reconnecting).
    pub connected: bool,
    /// Workers currently between a failure and their restart.
    pub workers_down: usize,
    /// Worker restarts since start.
    pub restarts: u64,
}

impl Health {
    pub fn ready(&self) -> bool {
        self.connected && self.workers_down == 0
    }

    fn of(link: &Link, counters: &Counters) -> Health {
        Health {
            connected: link.connected(),
            workers_down: counters.down.load(Ordering::Relaxed),
            restarts: counters.restarts.load(Ordering::Relaxed),
        }
    }
}

/// The queues a role's node watches the depth of: each consumed queue with its dead-letter
/// queue and retry lane, as (full name, name without the tag).
fn watched_queues(config: &Config, catalog: &Catalog) -> Vec<(String, String)> {
    let mut names = Vec::new();
    for lane in lanes(config.role) {
        let key = lane.key();
        names.extend([key.to_string(), dead_letter_queue(key)]);
        // Only writes are retried (wiki/reliability.md), so only they have a retry lane.
        if *lane == Lane::Write {
            names.push(retry_queue(key));
        }
    }
    if config.role == Role::Tercero {
        names.extend([
            EVENT_QUEUE_KEY.to_string(),
            dead_letter_queue(EVENT_QUEUE_KEY),
        ]);
    }
    if config.role == Role::Segundo {
        for key in [WAREHOUSE_READ_KEY, MIG_BULK_KEY] {
            names.extend([key.to_string(), dead_letter_queue(key)]);
        }
    }
    if config.role == Role::Admin {
        for key in admin::queues(catalog) {
            names.extend([key.to_string(), dead_letter_queue(key)]);
        }
    }
    names
        .into_iter()
        .map(|label| (config.amqp.queue(&label), label))
        .collect()
}

/// A started node. Call [`Server::stop`] (or trigger its [`Server::stop_token`]) to
/// stop consuming, finish in-flight messages and close.
#[derive(Debug)]
pub struct Server {
    link: Arc<Link>,
    store: Store,
    stop: CancellationToken,
    workers: JoinSet<()>,
    counters: Arc<Counters>,
    /// The outbox relay and its stop, if events are on.
    relay: Option<(CancellationToken, tokio::task::JoinHandle<()>)>,
    /// The lineage publisher and its stop, if lineage is sampled.
    lineage: Option<(CancellationToken, tokio::task::JoinHandle<()>)>,
    drain: Duration,
    cache: Arc<Cache>,
    /// Invalidations dropped for want of a valid signature.
    untrusted: Arc<AtomicU64>,
    /// Where the telemetry server listens, if it does.
    http: Option<SocketAddr>,
    /// Stops the telemetry server and the queue poller: last, so that `/readyz` says
    /// "stopping" during the drain; also on drop.
    telemetry: CancellationToken,
    /// The admin's database, on an admin node (the same pool as `store`).
    admin: Option<AdminStore>,
}

impl Server {
    pub async fn start(config: &Config, catalog: &'static Catalog) -> Result<Server, ServerError> {
        let lanes = lanes(config.role);
        catalog.check()?;
        let audited = admin::audit::audited(catalog);
        if !audited.is_empty() && !config.events.enabled {
            return Err(ServerError::AuditNeedsEvents {
                templates: audited
                    .iter()
                    .map(|t| format!("{}.{}", t.domain, t.name))
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        let key = ServiceKey::load(config)?;
        let patterns = Patterns::compile(catalog.domains)?;
        // The admin serves from its own database, with its own tables only.
        let admin = config.role == Role::Admin;
        let store = if admin {
            Store::open(&StoreOptions::from_config(&config.admin.database), &[]).await?
        } else {
            Store::open(
                &StoreOptions::from_config(&config.database),
                catalog.domains,
            )
            .await?
        };
        let admin_store = admin.then(|| AdminStore::of(&store));
        // One comparison of the live schema with the declarations: `create` makes the
        // missing tables, any other difference refuses the start (wiki/migrations.md).
        let (section, database, ddl) = if admin {
            (
                "admin.database",
                &config.admin.database,
                admin::ddl(config.admin.database.driver),
            )
        } else {
            (
                "database",
                &config.database,
                crate::catalog::schema(config.database.driver, catalog),
            )
        };
        crate::store::migrate::prepare(
            &store,
            &ddl,
            config.schema_mode(database),
            &database.migrations_dir,
            section,
        )
        .await
        .map_err(StoreError::from)?;
        let link = Arc::new(
            Link::open(
                &config.amqp.url,
                &config.amqp.tls,
                &format!("beds {} {}", config.role.name(), config.node),
            )
            .await?,
        );
        let conn = link.get().await;
        // Declared once up front so that a bad broker setup fails the start, not a worker.
        let channel = conn.create_channel().await.map_err(ServerError::Topology)?;
        let mut keys: Vec<&str> = lanes.iter().map(|l| l.key()).collect();
        if admin {
            keys.extend(admin::QUEUES);
        }
        // Warehouse reads wait in their queue for a segundo node; an appServer forwards
        // them there, so both declare it.
        if matches!(config.role, Role::AppServer | Role::Segundo) {
            keys.push(WAREHOUSE_READ_KEY);
        }
        topology::declare(&channel, &config.amqp, &keys)
            .await
            .map_err(ServerError::Topology)?;
        if admin {
            // Records are kept from the admin's start, not only once its consumer runs.
            admin::lineage::declare(&channel, &config.amqp)
                .await
                .map_err(ServerError::Topology)?;
        }
        if config.role == Role::Tercero {
            topology::declare_events(&channel, &config.amqp, EVENT_QUEUE_KEY, EVENT_BINDING)
                .await
                .map_err(ServerError::Topology)?;
        }
        // The audit queue exists before this node publishes its first event.
        admin::audit::declare(&channel, &config.amqp, &admin::audit::bindings(catalog))
            .await
            .map_err(ServerError::Topology)?;
        channel
            .close(200, "topology declared".into())
            .await
            .map_err(ServerError::Topology)?;

        let events = config.events.enabled.then(|| Origin {
            service: "beds".into(),
            node: config.node.clone(),
            env: config.env.clone(),
        });
        let (cache, outbox) = Cache::new(&config.cache);
        let cache = Arc::new(cache);
        let metrics = Arc::new(Metrics::new(lanes));
        let lane_controls = Arc::new(Lanes::new(&config.node, lanes, metrics.clone()));
        let started_at = chrono::Utc::now();
        // Its own token: the publisher sends what the drained workers and relay recorded.
        let lineage_stop = CancellationToken::new();
        let (lineage, publisher) = Lineage::start(
            Origin {
                service: "beds".into(),
                node: config.node.clone(),
                env: config.env.clone(),
            },
            config.lineage.sample,
            link.clone(),
            config.amqp.queue(crate::lineage::ROUTING_KEY),
            metrics.lineage(),
            lineage_stop.clone(),
        );
        let ingress = Arc::new(Ingress {
            catalog,
            patterns: Arc::new(patterns),
            ctx: Ctx::new(store.clone(), events.clone()),
            retry: config.retry,
            leases: config.locking,
            limits: config.limits,
            cache: cache.clone(),
            lineage: lineage.clone(),
            signer: Signer::new(key.clone(), &config.amqp.url),
            security: Arc::new(crate::security::Security::from_config(config)?),
            metrics: metrics.clone(),
            warehouse_key: config.amqp.queue(WAREHOUSE_READ_KEY),
        });
        let stop = CancellationToken::new();
        // Workers start once the node hears other nodes' invalidations, so nothing it
        // caches can miss one.
        let (ready, mut subscribed) = tokio::sync::watch::channel(false);
        let untrusted = Arc::new(AtomicU64::new(0));
        let subscriber = Subscriber {
            cache: cache.clone(),
            catalog,
            link: link.clone(),
            queue_tag: config.amqp.queue_tag.clone(),
            node: config.node.clone(),
            ready,
            key: key.clone(),
            untrusted: untrusted.clone(),
            lineage: lineage.clone(),
        };
        // The admin caches nothing and writes nothing, so it neither hears nor sends any.
        if !admin {
            tokio::spawn(subscriber.run(outbox, stop.clone()));
        }
        if !admin
            && tokio::time::timeout(SUBSCRIBE_TIMEOUT, subscribed.wait_for(|up| *up))
                .await
                .is_err()
        {
            stop.cancel();
            return Err(ServerError::InvalidationsNotSubscribed);
        }
        let counters = Arc::new(Counters::default());
        let mut workers = JoinSet::new();
        // The admin's database has neither idempotency keys nor an outbox.
        if !admin {
            tokio::spawn(expire_idempotency(
                store.clone(),
                config.idempotency.ttl.duration(),
                stop.clone(),
            ));
        }
        let mut relay = None;
        // Its own token: the relay stops after the workers drained, not with them.
        let relay_stop = CancellationToken::new();
        if events.is_some() && !admin {
            let run = Relay {
                store: store.clone(),
                link: link.clone(),
                amqp: config.amqp.clone(),
                config: config.events,
                key: key.clone(),
                holder: format!(
                    "{} {} {}",
                    config.node,
                    std::process::id(),
                    uuid::Uuid::now_v7()
                ),
                backlog: (
                    metrics.outbox_backlog().clone(),
                    config.telemetry.queue_poll.duration(),
                ),
                lineage: lineage.clone(),
            };
            relay = Some((
                relay_stop.clone(),
                tokio::spawn(run.run(relay_stop.clone())),
            ));
        }
        for &lane in lanes {
            let pool = match lane {
                Lane::Read => config.brokers.read,
                Lane::Write => config.brokers.write,
            };
            for i in 0..pool.workers {
                let worker = Worker {
                    lane,
                    control: lane_controls
                        .get(lane)
                        .expect("every lane of the role has a control")
                        .clone(),
                    amqp: config.amqp.clone(),
                    tag: format!(
                        "{}.{}.{}.{i}",
                        config.node,
                        lane.broker(),
                        std::process::id()
                    ),
                    pool,
                    ingress: ingress.clone(),
                };
                workers.spawn(supervise(
                    worker,
                    link.clone(),
                    stop.clone(),
                    counters.clone(),
                ));
            }
            tracing::info!(
                broker = lane.broker(),
                queue = %config.amqp.queue(lane.key()),
                workers = pool.workers,
                prefetch = pool.prefetch,
                "broker pool started"
            );
        }
        if config.role == Role::Tercero {
            tokio::spawn(expire_applied_events(
                store.clone(),
                config.tercero.dedup_ttl.duration(),
                stop.clone(),
            ));
            let origin = Origin {
                service: "beds".into(),
                node: config.node.clone(),
                env: config.env.clone(),
            };
            // Before the first event: a count newly maintained starts from its rows.
            let marks = Arc::new(
                store
                    .initialise_counters(catalog.domains)
                    .await
                    .map_err(StoreError::Backfill)?,
            );
            for i in 0..config.tercero.workers {
                let consumer = EventConsumer {
                    amqp: config.amqp.clone(),
                    config: config.tercero,
                    tag: format!("{}.tercero.{}.{i}", config.node, std::process::id()),
                    store: store.clone(),
                    domains: catalog.domains,
                    marks: marks.clone(),
                    origin: origin.clone(),
                    key: key.clone(),
                    lineage: lineage.clone(),
                };
                workers.spawn(supervise(
                    consumer,
                    link.clone(),
                    stop.clone(),
                    counters.clone(),
                ));
            }
            tracing::info!(
                queue = %config.amqp.queue(EVENT_QUEUE_KEY),
                workers = config.tercero.workers,
                batch = config.tercero.batch,
                wait_ms = config.tercero.wait.0,
                "tercero consuming write events"
            );
        }
        if config.role == Role::Segundo {
            let warehouse = segundo::open_warehouse(config, catalog).await?;
            segundo::start(
                segundo::Parts {
                    config: Arc::new(config.clone()),
                    catalog,
                    store: store.clone(),
                    warehouse,
                    link: link.clone(),
                    ingress: ingress.clone(),
                    key: key.clone(),
                    lineage: lineage.clone(),
                    stop: stop.clone(),
                    counters: counters.clone(),
                },
                &mut workers,
            );
        }
        let admin_ctx = admin_store.as_ref().map(|tables| {
            admin::start(
                admin::Parts {
                    config,
                    catalog,
                    store: tables.clone(),
                    link: link.clone(),
                    signer: ingress.signer.clone(),
                    security: ingress.security.clone(),
                    stop: stop.clone(),
                    counters: counters.clone(),
                },
                &mut workers,
            )
        });
        let telemetry = CancellationToken::new();
        tokio::spawn(
            Queues {
                link: link.clone(),
                names: watched_queues(config, catalog),
                every: config.telemetry.queue_poll.duration(),
                sink: metrics.clone(),
            }
            .run(telemetry.clone()),
        );
        let probe = Arc::new(Readiness {
            link: link.clone(),
            counters: counters.clone(),
            store: store.clone(),
            stop: stop.clone(),
            lanes: lane_controls.clone(),
            database: Default::default(),
        });
        tokio::spawn(
            Control {
                link: link.clone(),
                queue_tag: config.amqp.queue_tag.clone(),
                lanes: lane_controls.clone(),
                signer: Arc::new(Signer::new(key.clone(), &config.amqp.url)),
                drain_timeout: config.shutdown.drain_timeout.duration(),
                origin: lineage.origin().clone(),
            }
            .run(telemetry.clone()),
        );
        tokio::spawn(
            Heartbeat {
                link: link.clone(),
                queue_tag: config.amqp.queue_tag.clone(),
                origin: Origin {
                    service: "beds".into(),
                    node: config.node.clone(),
                    env: config.env.clone(),
                },
                role: config.role.name(),
                every: config.telemetry.heartbeat.duration(),
                key: key.clone(),
                run_id: uuid::Uuid::now_v7(),
                started_at,
                versions: Versions {
                    beds: env!("CARGO_PKG_VERSION").to_string(),
                    domains: catalog
                        .domains
                        .iter()
                        .map(|d| DomainVersion {
                            name: d.name.to_string(),
                            version: d.version,
                        })
                        .collect(),
                },
                lanes: lane_controls.clone(),
                lane_keys: lanes,
                metrics: metrics.clone(),
                readiness: probe.clone(),
                counters: counters.clone(),
            }
            .run(telemetry.clone()),
        );
        // Last: the node reports ready only once everything above runs.
        let http = match config.telemetry.listen {
            None => None,
            Some(addr) => {
                // An admin node serves the operator page beside its telemetry.
                let page = admin_ctx.map(|ctx| {
                    admin::page::routes(Arc::new(admin::page::Page::new(config, key.clone(), ctx)))
                });
                match http::serve(addr, metrics, probe, page, telemetry.clone()).await {
                    Ok(bound) => Some(bound),
                    Err(e) => {
                        stop.cancel();
                        relay_stop.cancel();
                        lineage_stop.cancel();
                        telemetry.cancel();
                        return Err(e.into());
                    }
                }
            }
        };
        Ok(Server {
            link,
            store,
            stop,
            workers,
            counters,
            relay,
            lineage: publisher.map(|p| (lineage_stop, p)),
            drain: config.shutdown.drain_timeout.duration(),
            cache,
            untrusted,
            http,
            telemetry,
            admin: admin_store,
        })
    }

    /// The admin's database, on a node of role `admin`.
    pub fn admin_store(&self) -> Option<&AdminStore> {
        self.admin.as_ref()
    }

    /// Where `/metrics`, `/healthz` and `/readyz` are served (the port chosen when
    /// `telemetry.listen` has port 0); none when `telemetry.listen` is `off`.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http
    }

    /// Fires the stop: useful to stop a server owned by another task.
    pub fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Readiness and restart counts, for health checks and tests.
    pub fn health(&self) -> Health {
        Health::of(&self.link, &self.counters)
    }

    /// Counts invalidations from other nodes this node has applied (it changes on each),
    /// for tests and measurements of the invalidation delay.
    pub fn cache_invalidations(&self) -> tokio::sync::watch::Receiver<u64> {
        self.cache.applied()
    }

    /// Fetches this node answered from its read cache.
    pub fn cache_hits(&self) -> u64 {
        self.cache.hits()
    }

    /// Named queries answered from this node's cache so far.
    pub fn query_cache_hits(&self) -> u64 {
        self.cache.query_hits()
    }

    /// Invalidations this node refused because they were not signed by a node of its
    /// deployment (they evict nothing).
    pub fn untrusted_invalidations(&self) -> u64 {
        self.untrusted.load(Ordering::Relaxed)
    }

    /// Records in this node's read cache.
    pub fn cache_entries(&self) -> u64 {
        self.cache.len()
    }

    /// Runs until the stop token fires, then stops. Failed workers are restarted by their
    /// supervisors meanwhile; the node does not stop on its own.
    pub async fn run(self) {
        self.stop.cancelled().await;
        self.stop().await;
    }

    /// Stops consuming, lets in-flight messages finish (up to the drain timeout), then
    /// closes the connection and the database.
    pub async fn stop(mut self) {
        self.stop.cancel();
        let drained = tokio::time::timeout(self.drain, async {
            while self.workers.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                timeout_ms = self.drain.as_millis() as u64,
                "drain timed out; unfinished messages return to their queues"
            );
            self.workers.abort_all();
        }
        // The relay publishes what the drained workers committed (each batch bounded by the
        // confirm timeout) and gives its lease up; rows it did not publish stay for the next
        // relay.
        if let Some((relay_stop, relay)) = self.relay.take()
            && tokio::time::timeout(CONFIRM_TIMEOUT * 3, async {
                relay_stop.cancel();
                relay.await
            })
            .await
            .is_err()
        {
            tracing::warn!("the event relay did not stop in time; its rows stay in the outbox");
        }
        if let Some((lineage_stop, publisher)) = self.lineage.take() {
            lineage_stop.cancel();
            if tokio::time::timeout(CONFIRM_TIMEOUT, publisher)
                .await
                .is_err()
            {
                tracing::debug!("the lineage publisher did not finish in time; records dropped");
            }
        }
        self.link.close().await;
        self.store.close().await;
        self.telemetry.cancel();
        tracing::info!("stopped");
    }
}

/// A server dropped without [`Server::stop`] still stops its relay (its workers stop with
/// their `JoinSet`), so no task keeps polling a database nobody serves.
impl Drop for Server {
    fn drop(&mut self) {
        if let Some((relay_stop, _)) = &self.relay {
            relay_stop.cancel();
        }
        if let Some((lineage_stop, _)) = &self.lineage {
            lineage_stop.cancel();
        }
        self.telemetry.cancel();
    }
}
