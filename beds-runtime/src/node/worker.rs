//! The broker pools' workers: consumers on `rec.read` (rBroker) and `rec.write` (wBroker),
//! each with its own channel, handing every delivery to the ingress chain in a task of its
//! own; and the supervisor that restarts a worker whose run failed.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::Connection;
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions,
};
use lapin::types::FieldTable;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Counters;
use crate::config::{AmqpConfig, PoolConfig};
use crate::ingress::lane::Lane;
use crate::ingress::{self, Ingress};
use crate::transport::link::{Link, Watch};
use crate::transport::publish::CONFIRM_TIMEOUT;
use crate::transport::topology;

/// One consumer of a pool: its own channel, its own prefetch window.
pub(crate) struct Worker {
    pub lane: Lane,
    pub amqp: AmqpConfig,
    pub tag: String,
    pub pool: PoolConfig,
    pub ingress: Arc<Ingress>,
}

/// A consumer the supervisor keeps running: one run per connection, until stopped.
pub(crate) trait Run: Send + Sync + 'static {
    /// Consumes until `stop` fires or the run fails.
    fn run(
        &self,
        conn: &Connection,
        stop: &CancellationToken,
    ) -> impl Future<Output = WorkerExit> + Send;
    /// The broker (or role) it serves, for logs.
    fn broker(&self) -> &'static str;
    /// Its consumer tag.
    fn tag(&self) -> &str;
}

impl Run for Worker {
    fn run(
        &self,
        conn: &Connection,
        stop: &CancellationToken,
    ) -> impl Future<Output = WorkerExit> + Send {
        Worker::run(self, conn, stop)
    }

    fn broker(&self) -> &'static str {
        self.lane.broker()
    }

    fn tag(&self) -> &str {
        &self.tag
    }
}

/// Why a worker's run ended.
#[derive(Debug)]
pub(crate) enum WorkerExit {
    /// The stop token fired and in-flight deliveries were finished.
    Stopped,
    /// The run failed; the supervisor starts a new one.
    Failed(WorkerFailure),
}

/// Why a worker's run failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WorkerFailure {
    #[error("{what}: {source}")]
    Amqp {
        what: &'static str,
        source: lapin::Error,
    },
    #[error("{what} took longer than {} s", SETUP_TIMEOUT.as_secs())]
    SetupTimedOut { what: &'static str },
    #[error("the connection is closed and will not recover")]
    ConnectionLost,
    #[error("the broker cancelled the consumer")]
    ConsumerCancelled,
}

/// How long opening the channel and starting the consumer may take; on a connection lapin
/// has abandoned, these calls could otherwise wait for ever.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs one step of a worker's set-up with a bound.
pub(crate) async fn setup<T>(
    what: &'static str,
    step: impl Future<Output = lapin::Result<T>>,
) -> Result<T, WorkerFailure> {
    match tokio::time::timeout(SETUP_TIMEOUT, step).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(source)) => Err(WorkerFailure::Amqp { what, source }),
        Err(_) => Err(WorkerFailure::SetupTimedOut { what }),
    }
}

impl Worker {
    /// Declares its queue (so a deleted queue comes back), consumes until `stop` fires,
    /// then cancels the consumer, finishes every delivery already received and closes the
    /// channel; unacked messages go back to the queue. Connection losses are waited out
    /// (lapin recovers the channel and the consumer); anything else ends the run.
    pub async fn run(&self, conn: &Connection, stop: &CancellationToken) -> WorkerExit {
        let queue = self.amqp.queue(self.lane.key());
        let (channel, mut consumer) = match self.consume(conn, &queue).await {
            Ok(started) => started,
            Err(e) => return WorkerExit::Failed(e),
        };
        tracing::debug!(queue = %queue, tag = %self.tag, "consuming");
        let in_flight = TaskTracker::new();
        let mut cancelled = false;
        // A connection lapin has given up on ends the run, so the supervisor reconnects.
        let mut watchdog = tokio::time::interval(Duration::from_secs(1));
        let mut watch = Watch::default();
        let exit = loop {
            let next = if cancelled {
                consumer.next().await
            } else {
                tokio::select! {
                    biased;
                    _ = watchdog.tick() => {
                        if watch.dead(conn) {
                            break WorkerExit::Failed(WorkerFailure::ConnectionLost);
                        }
                        continue;
                    }
                    () = stop.cancelled() => {
                        cancelled = true;
                        // Deliveries already buffered still arrive before the stream ends.
                        let cancel = channel
                            .basic_cancel(self.tag.as_str().into(), BasicCancelOptions::default());
                        if let Err(e) = setup("cancelling the consumer", cancel).await {
                            tracing::warn!(error = %e, "cancelling the consumer failed");
                            break WorkerExit::Stopped;
                        }
                        continue;
                    }
                    next = consumer.next() => next,
                }
            };
            match next {
                Some(Ok(delivery)) => {
                    let ingress = self.ingress.clone();
                    let channel = channel.clone();
                    in_flight.spawn(ingress::handle(ingress, channel, self.lane, delivery));
                }
                Some(Err(e)) => {
                    tracing::warn!(queue = %queue, error = %e, "consumer interrupted; waiting for recovery");
                    // Bounded: if lapin gives up silently, the watchdog ends the run.
                    let wait = Duration::from_secs(5);
                    match tokio::time::timeout(wait, channel.wait_for_recovery(e)).await {
                        Ok(Ok(())) => tracing::info!(queue = %queue, "consumer recovered"),
                        Ok(Err(source)) => {
                            break WorkerExit::Failed(WorkerFailure::Amqp {
                                what: "consuming",
                                source,
                            });
                        }
                        Err(_) => {}
                    }
                }
                None if cancelled => break WorkerExit::Stopped,
                None => break WorkerExit::Failed(WorkerFailure::ConsumerCancelled),
            }
        };
        in_flight.close();
        // Every broker wait of a delivery is bounded (publish, confirm, ack), so this ends;
        // after a failure it is bounded again, so that a worker whose connection is gone
        // always returns to its supervisor (its unacked deliveries are redelivered).
        match exit {
            WorkerExit::Stopped => in_flight.wait().await,
            WorkerExit::Failed(_) => {
                if tokio::time::timeout(ABANDON_AFTER, in_flight.wait())
                    .await
                    .is_err()
                {
                    tracing::warn!(
                        queue = %queue,
                        left = in_flight.len(),
                        "deliveries still running on a failed channel; leaving them"
                    );
                }
            }
        }
        if let Err(e) = setup(
            "closing the channel",
            channel.close(200, "worker done".into()),
        )
        .await
        {
            tracing::debug!(error = %e, "channel close");
        }
        exit
    }

    /// Opens the worker's channel, declares its queue (so a deleted queue comes back) and
    /// starts consuming; every step bounded.
    async fn consume(
        &self,
        conn: &Connection,
        queue: &str,
    ) -> Result<(lapin::Channel, lapin::Consumer), WorkerFailure> {
        let channel = setup("opening a channel", conn.create_channel()).await?;
        setup(
            "declaring the queue",
            topology::declare(&channel, &self.amqp, &[self.lane.key()]),
        )
        .await?;
        // Replies to writes are confirmed by the broker before the request is acked.
        let confirms = self.lane == Lane::Write;
        consume_on(channel, queue, &self.tag, self.pool.prefetch, confirms).await
    }
}

/// Ends every pool's channel set-up, each step bounded: publisher confirms (when its
/// publishes must be confirmed), the prefetch, and the consumer of `queue`.
pub(crate) async fn consume_on(
    channel: lapin::Channel,
    queue: &str,
    tag: &str,
    prefetch: u16,
    confirms: bool,
) -> Result<(lapin::Channel, lapin::Consumer), WorkerFailure> {
    if confirms {
        setup(
            "enabling publisher confirms",
            channel.confirm_select(ConfirmSelectOptions::default()),
        )
        .await?;
    }
    setup(
        "setting prefetch",
        channel.basic_qos(prefetch, BasicQosOptions::default()),
    )
    .await?;
    let consumer = setup(
        "consuming",
        channel.basic_consume(
            queue.into(),
            tag.into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ),
    )
    .await?;
    Ok((channel, consumer))
}

/// How long a failed worker waits for its deliveries before returning to its supervisor:
/// longer than one delivery's bounded settle (publish and confirm, then ack).
pub(crate) const ABANDON_AFTER: Duration = Duration::from_secs(3 * CONFIRM_TIMEOUT.as_secs());

/// The longest pause between a worker's failure and its next run.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Keeps one worker running: a failed run is logged, counted and restarted after an
/// exponential backoff (200 ms doubling to [`MAX_BACKOFF`]). A run that lasted longer than
/// that was not crash-looping, so its failure starts the backoff over: after a broker
/// restart every worker comes back quickly, however many restarts came before.
pub(crate) async fn supervise(
    worker: impl Run,
    link: Arc<Link>,
    stop: CancellationToken,
    counters: Arc<Counters>,
) {
    let mut failures: u32 = 0;
    let mut conn = tokio::select! {
        conn = link.live() => conn,
        () = stop.cancelled() => return,
    };
    loop {
        let started = tokio::time::Instant::now();
        let WorkerExit::Failed(why) = worker.run(&conn, &stop).await else {
            return;
        };
        if started.elapsed() > MAX_BACKOFF {
            failures = 0;
        }
        failures += 1;
        counters.restarts.fetch_add(1, Ordering::Relaxed);
        counters.down.fetch_add(1, Ordering::Relaxed);
        let backoff = Duration::from_millis(100 * 2u64.pow(failures.min(7))).min(MAX_BACKOFF);
        tracing::error!(
            broker = worker.broker(),
            tag = %worker.tag(),
            failures,
            backoff_ms = backoff.as_millis() as u64,
            why = %why,
            "worker failed; restarting"
        );
        // The backoff, then a live connection: a broker that is away is waited out here
        // rather than by failing runs against a connection that is still reconnecting.
        let next = tokio::select! {
            () = stop.cancelled() => None,
            conn = async {
                tokio::time::sleep(backoff).await;
                link.live().await
            } => Some(conn),
        };
        counters.down.fetch_sub(1, Ordering::Relaxed);
        match next {
            Some(live) => conn = live,
            None => return,
        }
    }
}
