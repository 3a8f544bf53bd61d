//! Consumers of the admin's and segundo's queues: one queue, each delivery handed to a
//! [`Handler`] in a task of its own; the supervisor (node::worker) restarts a run that failed.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::BasicCancelOptions;
use lapin::{Channel, Connection};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::node::worker::{ABANDON_AFTER, Run, WorkerExit, WorkerFailure, consume_on, setup};
use crate::transport::link::Watch;

/// What such a consumer does: declares its queue, and settles each delivery (reply,
/// ack, dead-letter) itself.
pub(crate) trait Handler: Send + Sync + 'static {
    /// Declares the queue consumed (so a deleted queue comes back on the next run).
    fn declare(&self, channel: &Channel) -> impl Future<Output = lapin::Result<()>> + Send;
    /// Handles one delivery to the end.
    fn handle(
        self: Arc<Self>,
        channel: Channel,
        delivery: Delivery,
    ) -> impl Future<Output = ()> + Send;
}

/// One consumer of a queue, with its own channel.
pub(crate) struct Consumer<H> {
    pub queue: String,
    pub tag: String,
    pub prefetch: u16,
    /// Whether the channel's publishes (replies, dead letters) are confirmed.
    pub confirms: bool,
    /// For logs: what it consumes.
    pub broker: &'static str,
    pub handler: Arc<H>,
}

impl<H: Handler> Run for Consumer<H> {
    async fn run(&self, conn: &Connection, stop: &CancellationToken) -> WorkerExit {
        let started = async {
            let channel = setup("opening a channel", conn.create_channel()).await?;
            setup("declaring the queue", self.handler.declare(&channel)).await?;
            consume_on(
                channel,
                &self.queue,
                &self.tag,
                self.prefetch,
                self.confirms,
            )
            .await
        };
        let (channel, mut consumer) = match started.await {
            Ok(started) => started,
            Err(e) => return WorkerExit::Failed(e),
        };
        tracing::debug!(queue = %self.queue, tag = %self.tag, "admin consumer started");
        let in_flight = TaskTracker::new();
        let mut cancelled = false;
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
                    in_flight.spawn(self.handler.clone().handle(channel.clone(), delivery));
                }
                Some(Err(e)) => {
                    tracing::warn!(queue = %self.queue, error = %e, "admin consumer interrupted; waiting for recovery");
                    let recovery = channel.wait_for_recovery(e);
                    if let Ok(Err(source)) =
                        tokio::time::timeout(Duration::from_secs(5), recovery).await
                    {
                        break WorkerExit::Failed(WorkerFailure::Amqp {
                            what: "consuming",
                            source,
                        });
                    }
                }
                None if cancelled => break WorkerExit::Stopped,
                None => break WorkerExit::Failed(WorkerFailure::ConsumerCancelled),
            }
        };
        in_flight.close();
        // Every broker wait of a handler is bounded, so this ends; after a failure it is
        // bounded again so the run returns to its supervisor (unacked messages return).
        if tokio::time::timeout(ABANDON_AFTER, in_flight.wait())
            .await
            .is_err()
        {
            tracing::warn!(queue = %self.queue, left = in_flight.len(), "admin deliveries still running; leaving them");
        }
        if let Err(e) = setup(
            "closing the channel",
            channel.close(200, "admin consumer done".into()),
        )
        .await
        {
            tracing::debug!(error = %e, "channel close");
        }
        exit
    }

    fn broker(&self) -> &'static str {
        self.broker
    }

    fn tag(&self) -> &str {
        &self.tag
    }
}
