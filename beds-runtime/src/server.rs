//! A running node: storage opened, topology declared, the role's broker pools consuming.

use std::sync::Arc;

use lapin::{Connection, ConnectionProperties};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::broker::{Lane, Shared, Worker};
use crate::config::{Config, Role};
use crate::dispatch::Ctx;
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
    #[error("{broker} worker ended unexpectedly: {why}")]
    WorkerEnded { broker: &'static str, why: String },
    #[error("{broker} worker failed: {source}")]
    Worker {
        broker: &'static str,
        source: lapin::Error,
    },
}

/// The lanes a role consumes.
pub fn lanes(role: Role) -> &'static [Lane] {
    match role {
        Role::AppServer => &[Lane::Read, Lane::Write],
        Role::Admin | Role::Segundo | Role::Tercero => &[],
    }
}

/// Connects to RabbitMQ, naming the URL and how to start the broker on failure.
pub async fn connect(url: &str, name: &str) -> Result<Connection, ServerError> {
    Connection::connect(
        url,
        ConnectionProperties::default().with_connection_name(name.into()),
    )
    .await
    .map_err(|source| ServerError::Connect {
        url: url.to_string(),
        source,
    })
}

/// Forgets idempotency keys past their time to live, a few times per TTL (at least
/// once a minute), until the node stops.
async fn expire_idempotency(store: Store, ttl: std::time::Duration, stop: CancellationToken) {
    let every = (ttl / 4).clamp(
        std::time::Duration::from_secs(1),
        std::time::Duration::from_secs(60),
    );
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

/// A started node. Call [`Server::stop`] (or trigger its [`Server::stop_token`]) to
/// stop consuming, finish in-flight messages and close.
#[derive(Debug)]
pub struct Server {
    conn: Connection,
    store: Store,
    stop: CancellationToken,
    workers: JoinSet<(Lane, lapin::Result<()>)>,
    drain: std::time::Duration,
}

impl Server {
    pub async fn start(config: &Config, catalog: &'static Catalog) -> Result<Server, ServerError> {
        let lanes = lanes(config.role);
        if lanes.is_empty() {
            return Err(ServerError::RoleNotServed(config.role));
        }
        catalog.check().map_err(ServerError::Catalog)?;
        let store = Store::open(
            &StoreOptions {
                sqlite_file: config.database.sqlite_path(),
                max_connections: config.database.max_connections,
                busy_timeout: config.database.busy_timeout.duration(),
            },
            catalog,
        )
        .await?;
        if config.database.apply_schema {
            store.apply_schema(catalog).await?;
        }
        let conn = connect(
            &config.amqp.url,
            &format!("beds {} {}", config.role.name(), config.node),
        )
        .await?;
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
                patterns: Arc::new(Patterns::compile(catalog).map_err(ServerError::Catalog)?),
            },
            catalog,
        });
        let stop = CancellationToken::new();
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
                    queue: config.amqp.queue(lane.key()),
                    tag: format!(
                        "{}.{}.{}.{i}",
                        config.node,
                        lane.broker(),
                        std::process::id()
                    ),
                    pool,
                    shared: shared.clone(),
                };
                let channel =
                    conn.create_channel()
                        .await
                        .map_err(|source| ServerError::Worker {
                            broker: lane.broker(),
                            source,
                        })?;
                let stop = stop.clone();
                workers.spawn(async move { (lane, worker.run(channel, stop).await) });
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
            conn,
            store,
            stop,
            workers,
            drain: config.shutdown.drain_timeout.duration(),
        })
    }

    /// Fires the stop: useful to stop a server owned by another task.
    pub fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Runs until the stop token fires, then stops. A worker that ends before that (its
    /// channel failed, or the broker cancelled its consumer) stops the node with an error
    /// rather than leaving it half-serving; restarting workers in place is supervision's job.
    pub async fn run(mut self) -> Result<(), ServerError> {
        let ended = tokio::select! {
            () = self.stop.cancelled() => None,
            Some(done) = self.workers.join_next() => Some(done),
        };
        let result = match ended {
            None => Ok(()),
            Some(Ok((lane, Err(source)))) => Err(ServerError::Worker {
                broker: lane.broker(),
                source,
            }),
            Some(Ok((lane, Ok(())))) => Err(ServerError::WorkerEnded {
                broker: lane.broker(),
                why: "the broker cancelled its consumer (was the queue deleted?)".into(),
            }),
            Some(Err(join)) => Err(ServerError::WorkerEnded {
                broker: "a",
                why: format!("its task failed: {join}"),
            }),
        };
        self.stop().await;
        result
    }

    /// Stops consuming, lets in-flight messages finish (up to the drain timeout), then
    /// closes the connection and the database.
    pub async fn stop(mut self) {
        self.stop.cancel();
        let drained = tokio::time::timeout(self.drain, async {
            while let Some(done) = self.workers.join_next().await {
                if let Ok((lane, Err(e))) = done {
                    tracing::warn!(broker = lane.broker(), error = %e, "worker ended with an error during shutdown");
                }
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                timeout_ms = self.drain.as_millis() as u64,
                "drain timed out; unfinished messages return to their queues"
            );
            self.workers.abort_all();
        }
        if let Err(e) = self.conn.close(200, "shutdown".into()).await {
            tracing::debug!(error = %e, "connection close");
        }
        self.store.close().await;
        tracing::info!("stopped");
    }
}
