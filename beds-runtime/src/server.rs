//! A running node: storage opened, topology declared, the role's broker pools consuming.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use lapin::{Connection, ConnectionProperties};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::broker::{Lane, Shared, Worker, WorkerExit};
use crate::config::{Config, Role};
use crate::dispatch::Ctx;
use crate::link::Link;
use crate::meta::Catalog;
use crate::store::{Store, StoreError, StoreOptions};
use crate::topology;
use crate::value::Patterns;

/// Why a node could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(
        "cannot connect to RabbitMQ at {url} ({source}); start it with \
         `rabbitmq-server -detached` or point BEDS_AMQP__URL at a running broker"
    )]
    Connect { url: String, source: lapin::Error },
    #[error(
        "RabbitMQ at {url} accepted the connection but did not complete the handshake within \
         {} s; it may still be starting",
        .after.as_secs()
    )]
    ConnectTimeout { url: String, after: Duration },
    #[error("declaring the AMQP topology failed: {0}")]
    Topology(lapin::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the compiled domains are inconsistent: {0}")]
    Catalog(String),
    #[error(
        "role `{}` serves no brokers in this release; only `appServer` (rBroker + wBroker) does",
        .0.name()
    )]
    RoleNotServed(Role),
}

/// The lanes a role consumes.
pub fn lanes(role: Role) -> &'static [Lane] {
    match role {
        Role::AppServer => &[Lane::Read, Lane::Write],
        Role::Admin | Role::Segundo | Role::Tercero => &[],
    }
}

/// How long one connection attempt may take. A broker that is booting can accept the TCP
/// connection and leave the AMQP handshake hanging; without a bound, a reconnect made while
/// holding the node's connection (see `Link::get`) would stall every worker for good.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects to RabbitMQ, naming the URL and how to start the broker on failure.
pub async fn connect(url: &str, name: &str) -> Result<Connection, ServerError> {
    // Auto-recovery reconnects and replays channels, consumers and declarations after the
    // broker closes the connection or restarts.
    let attempt = Connection::connect(
        url,
        ConnectionProperties::default()
            .with_connection_name(name.into())
            .enable_auto_recover(),
    );
    match tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
        Ok(result) => result.map_err(|source| ServerError::Connect {
            url: crate::config::redact(url),
            source,
        }),
        Err(_) => Err(ServerError::ConnectTimeout {
            url: crate::config::redact(url),
            after: CONNECT_TIMEOUT,
        }),
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
}

#[derive(Debug, Default)]
struct Counters {
    down: AtomicUsize,
    restarts: AtomicU64,
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
    drain: Duration,
}

impl Server {
    pub async fn start(config: &Config, catalog: &'static Catalog) -> Result<Server, ServerError> {
        let lanes = lanes(config.role);
        if lanes.is_empty() {
            return Err(ServerError::RoleNotServed(config.role));
        }
        catalog.check().map_err(ServerError::Catalog)?;
        let patterns = Patterns::compile(catalog).map_err(ServerError::Catalog)?;
        let store = Store::open(&StoreOptions::from_config(&config.database), catalog).await?;
        if config.database.apply_schema {
            store.apply_schema(catalog).await?;
        }
        let link = Arc::new(
            Link::open(
                &config.amqp.url,
                &format!("beds {} {}", config.role.name(), config.node),
            )
            .await?,
        );
        let conn = link.get().await;
        // Declared once up front so that a bad broker setup fails the start, not a worker.
        let channel = conn.create_channel().await.map_err(ServerError::Topology)?;
        let keys: Vec<&str> = lanes.iter().map(|l| l.key()).collect();
        topology::declare(&channel, &config.amqp, &keys)
            .await
            .map_err(ServerError::Topology)?;
        channel
            .close(200, "topology declared".into())
            .await
            .map_err(ServerError::Topology)?;

        let shared = Arc::new(Shared {
            ctx: Ctx {
                store: store.clone(),
                patterns: Arc::new(patterns),
            },
            catalog,
            retry: config.retry,
        });
        let stop = CancellationToken::new();
        let counters = Arc::new(Counters::default());
        let mut workers = JoinSet::new();
        tokio::spawn(expire_idempotency(
            store.clone(),
            config.idempotency.ttl.duration(),
            stop.clone(),
        ));
        for &lane in lanes {
            let pool = match lane {
                Lane::Read => config.brokers.read,
                Lane::Write => config.brokers.write,
            };
            for i in 0..pool.workers {
                let worker = Worker {
                    lane,
                    amqp: config.amqp.clone(),
                    tag: format!(
                        "{}.{}.{}.{i}",
                        config.node,
                        lane.broker(),
                        std::process::id()
                    ),
                    pool,
                    shared: shared.clone(),
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
        Ok(Server {
            link,
            store,
            stop,
            workers,
            counters,
            drain: config.shutdown.drain_timeout.duration(),
        })
    }

    /// Fires the stop: useful to stop a server owned by another task.
    pub fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Readiness and restart counts, for health checks and tests.
    pub fn health(&self) -> Health {
        Health {
            connected: self.link.connected(),
            workers_down: self.counters.down.load(Ordering::Relaxed),
            restarts: self.counters.restarts.load(Ordering::Relaxed),
        }
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
        self.link.close().await;
        self.store.close().await;
        tracing::info!("stopped");
    }
}

/// Keeps one worker running: a failed run is logged, counted and restarted after an
/// exponential backoff (100 ms doubling to 10 s; reset after a run that lasted a minute).
async fn supervise(
    worker: Worker,
    link: Arc<Link>,
    stop: CancellationToken,
    counters: Arc<Counters>,
) {
    let mut failures: u32 = 0;
    loop {
        let started = tokio::time::Instant::now();
        let conn = link.get().await;
        match worker.run(&conn, &stop).await {
            WorkerExit::Stopped => return,
            WorkerExit::Failed(why) => {
                if started.elapsed() > Duration::from_secs(60) {
                    failures = 0;
                }
                failures += 1;
                counters.restarts.fetch_add(1, Ordering::Relaxed);
                counters.down.fetch_add(1, Ordering::Relaxed);
                let backoff = Duration::from_millis(100 * 2u64.pow(failures.min(7)))
                    .min(Duration::from_secs(10));
                tracing::error!(
                    broker = worker.lane.broker(),
                    tag = %worker.tag,
                    failures,
                    backoff_ms = backoff.as_millis() as u64,
                    why = %why,
                    "worker failed; restarting"
                );
                let stopped = tokio::select! {
                    () = stop.cancelled() => true,
                    () = tokio::time::sleep(backoff) => false,
                };
                counters.down.fetch_sub(1, Ordering::Relaxed);
                if stopped {
                    return;
                }
            }
        }
    }
}
