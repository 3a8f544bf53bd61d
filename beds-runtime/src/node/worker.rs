//! The broker pools' workers: consumers on `rec.read` (rBroker) and `rec.write` (wBroker),
//! each with its own channel, handing every delivery to the ingress chain in a task of its
//! own; and the supervisor that restarts a worker whose run failed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use lapin::Connection;
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions,
};
use lapin::types::FieldTable;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::lanes::LaneControl;
use crate::config::{AmqpConfig, PoolConfig};
use crate::ingress::lane::Lane;
use crate::ingress::{self, Ingress};
use crate::telemetry::status::LaneState;
use crate::transport::link::{Link, Watch};
use crate::transport::publish::CONFIRM_TIMEOUT;
use crate::transport::topology;

/// Worker health of a node, for `/readyz` and heartbeats.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Workers currently between a failure and their restart.
    pub(super) down: AtomicUsize,
    /// Worker restarts since start.
    pub(super) restarts: AtomicU64,
}

/// One consumer of a pool: its own channel, its own prefetch window.
pub(crate) struct Worker {
    pub lane: Lane,
    /// The lane's state: the worker consumes only while it is `consuming`.
    pub control: Arc<LaneControl>,
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
    /// Declares its queue (so a deleted queue comes back), consumes while its lane is
    /// consuming until `stop` fires, then cancels the consumer, finishes every delivery
    /// already received and closes the channel; unacked messages go back to the queue. A
    /// paused lane's consumer is cancelled the same way (the channel stays open, so its
    /// deliveries are acked) and started again on resume. Connection losses are waited out
    /// (lapin recovers the channel and the consumer); anything else ends the run.
    pub async fn run(&self, conn: &Connection, stop: &CancellationToken) -> WorkerExit {
        let queue = self.amqp.queue(self.lane.key());
        let channel = match self.open(conn).await {
            Ok(channel) => channel,
            Err(e) => return WorkerExit::Failed(e),
        };
        let in_flight = TaskTracker::new();
        let mut state = self.control.watch();
        // A connection lapin has given up on ends the run, so the supervisor reconnects.
        let mut watchdog = tokio::time::interval(Duration::from_secs(1));
        let mut watch = Watch::default();
        let exit = 'run: loop {
            // Until the lane consumes (a paused lane stays paused across restarts).
            loop {
                if stop.is_cancelled() {
                    break 'run WorkerExit::Stopped;
                }
                if *state.borrow_and_update() == LaneState::Consuming {
                    break;
                }
                tokio::select! {
                    _ = watchdog.tick() => {
                        if watch.dead(conn) {
                            break 'run WorkerExit::Failed(WorkerFailure::ConnectionLost);
                        }
                    }
                    () = stop.cancelled() => {}
                    _ = state.changed() => {}
                }
            }
            let mut consumer = match self.consume(&channel, &queue).await {
                Ok(consumer) => consumer,
                Err(e) => break 'run WorkerExit::Failed(e),
            };
            tracing::debug!(queue = %queue, tag = %self.tag, "consuming");
            let consuming = self.control.consuming();
            let mut cancelled = false;
            let ended = loop {
                let next = if cancelled {
                    consumer.next().await
                } else {
                    tokio::select! {
                        biased;
                        _ = watchdog.tick() => {
                            if watch.dead(conn) {
                                break Some(WorkerExit::Failed(WorkerFailure::ConnectionLost));
                            }
                            continue;
                        }
                        () = stop.cancelled() => {
                            cancelled = true;
                            if self.cancel(&channel).await.is_err() {
                                break Some(WorkerExit::Stopped);
                            }
                            continue;
                        }
                        Ok(()) = state.changed() => {
                            if *state.borrow_and_update() == LaneState::Consuming {
                                continue;
                            }
                            cancelled = true;
                            if let Err(e) = self.cancel(&channel).await {
                                break Some(WorkerExit::Failed(e));
                            }
                            continue;
                        }
                        next = consumer.next() => next,
                    }
                };
                match next {
                    Some(Ok(delivery)) => {
                        let tracked = self.ingress.metrics.deliveries().start(self.lane);
                        let ingress = self.ingress.clone();
                        let channel = channel.clone();
                        in_flight.spawn(ingress::handle(
                            ingress, channel, self.lane, delivery, tracked,
                        ));
                    }
                    Some(Err(e)) => {
                        tracing::warn!(queue = %queue, error = %e, "consumer interrupted; waiting for recovery");
                        // Bounded: if lapin gives up silently, the watchdog ends the run.
                        let wait = Duration::from_secs(5);
                        match tokio::time::timeout(wait, channel.wait_for_recovery(e)).await {
                            Ok(Ok(())) => tracing::info!(queue = %queue, "consumer recovered"),
                            Ok(Err(source)) => {
                                break Some(WorkerExit::Failed(WorkerFailure::Amqp {
                                    what: "consuming",
                                    source,
                                }));
                            }
                            Err(_) => {}
                        }
                    }
                    // Stopping, or the lane paused: the top of the run decides.
                    None if cancelled => break None,
                    None => break Some(WorkerExit::Failed(WorkerFailure::ConsumerCancelled)),
                }
            };
            drop(consuming);
            if let Some(exit) = ended {
                break exit;
            }
            if !stop.is_cancelled() {
                tracing::info!(queue = %queue, tag = %self.tag, "consumer cancelled: the lane is paused");
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
    /// sets it up for consuming; every step bounded.
    async fn open(&self, conn: &Connection) -> Result<lapin::Channel, WorkerFailure> {
        let channel = setup("opening a channel", conn.create_channel()).await?;
        setup(
            "declaring the queue",
            topology::declare(&channel, &self.amqp, &[self.lane.key()]),
        )
        .await?;
        // Replies to writes are confirmed by the broker before the request is acked.
        let confirms = self.lane == Lane::Write;
        prepare(&channel, self.pool.prefetch, confirms).await?;
        Ok(channel)
    }

    /// Cancels the consumer; deliveries already buffered still arrive before its stream
    /// ends.
    async fn cancel(&self, channel: &lapin::Channel) -> Result<(), WorkerFailure> {
        let cancel = channel.basic_cancel(self.tag.as_str().into(), BasicCancelOptions::default());
        let cancelled = setup("cancelling the consumer", cancel).await;
        if let Err(e) = &cancelled {
            tracing::warn!(error = %e, "cancelling the consumer failed");
        }
        cancelled
    }

    /// Starts the consumer of `queue` on the worker's channel.
    async fn consume(
        &self,
        channel: &lapin::Channel,
        queue: &str,
    ) -> Result<lapin::Consumer, WorkerFailure> {
        start_consumer(channel, queue, &self.tag).await
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
    prepare(&channel, prefetch, confirms).await?;
    let consumer = start_consumer(&channel, queue, tag).await?;
    Ok((channel, consumer))
}

/// Publisher confirms (when its publishes must be confirmed) and the prefetch of a
/// consuming channel.
async fn prepare(
    channel: &lapin::Channel,
    prefetch: u16,
    confirms: bool,
) -> Result<(), WorkerFailure> {
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
    .await
}

async fn start_consumer(
    channel: &lapin::Channel,
    queue: &str,
    tag: &str,
) -> Result<lapin::Consumer, WorkerFailure> {
    setup(
        "consuming",
        channel.basic_consume(
            queue.into(),
            tag.into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
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
