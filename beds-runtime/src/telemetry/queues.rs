//! Queue depth and consumers per lane, read off the request path: a passive declare of
//! each queue every `telemetry.queue_poll`, on a channel of its own.

use std::sync::Arc;
use std::time::Duration;

use lapin::Channel;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use tokio_util::sync::CancellationToken;

use super::metrics::Metrics;
use crate::transport::link::Link;

/// Where polled depths go: the node's metrics, or the admin's diagnostics.
pub(crate) trait QueueSink: Send + Sync + 'static {
    /// Messages ready and consumers of the queue labelled `label`, or `None` when it could
    /// not be read (it does not exist, or the broker is away).
    fn queue(&self, label: &str, depth: Option<(u32, u32)>);
}

impl QueueSink for Metrics {
    fn queue(&self, label: &str, depth: Option<(u32, u32)>) {
        // The last value read stays: a gap in the series is worse than a stale point.
        if let Some((messages, consumers)) = depth {
            Metrics::queue(self, label, messages, consumers);
        }
    }
}

/// What a node polls: each queue's full name and its label (the name without the tag).
pub(crate) struct Queues {
    pub link: Arc<Link>,
    pub names: Vec<(String, String)>,
    pub every: Duration,
    pub sink: Arc<dyn QueueSink>,
}

/// How long one passive declare may take: a broker that does not answer is skipped until
/// the next poll.
const DECLARE_TIMEOUT: Duration = Duration::from_secs(5);

impl Queues {
    pub async fn run(self, stop: CancellationToken) {
        let mut channel: Option<Channel> = None;
        loop {
            for (name, label) in &self.names {
                match self.declare(&mut channel, name).await {
                    Ok(depth) => self.sink.queue(label, Some(depth)),
                    Err(e) => {
                        self.sink.queue(label, None);
                        tracing::debug!(queue = %name, error = %e, "reading the queue depth failed; retrying later");
                        // A failed passive declare (a deleted queue) closes the channel.
                        channel = None;
                    }
                }
            }
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(self.every) => {}
            }
        }
        if let Some(ch) = channel {
            let _ = tokio::time::timeout(DECLARE_TIMEOUT, ch.close(200, "stop".into())).await;
        }
    }

    /// Messages ready and consumers of `queue`, by a passive declare.
    async fn declare(
        &self,
        channel: &mut Option<Channel>,
        queue: &str,
    ) -> Result<(u32, u32), PollError> {
        let ch = match channel {
            Some(ch) if ch.status().connected() => ch,
            slot => {
                let conn = self.link.get().await;
                if !conn.status().connected() {
                    return Err(PollError::Disconnected);
                }
                let open = tokio::time::timeout(DECLARE_TIMEOUT, conn.create_channel());
                slot.insert(open.await.map_err(|_| PollError::TimedOut)??)
            }
        };
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let declare = ch.queue_declare(queue.into(), passive, FieldTable::default());
        let queue = tokio::time::timeout(DECLARE_TIMEOUT, declare)
            .await
            .map_err(|_| PollError::TimedOut)??;
        Ok((queue.message_count(), queue.consumer_count()))
    }
}

#[derive(Debug, thiserror::Error)]
enum PollError {
    #[error("the broker connection is down")]
    Disconnected,
    #[error("the broker did not answer within {} s", DECLARE_TIMEOUT.as_secs())]
    TimedOut,
    #[error(transparent)]
    Amqp(#[from] lapin::Error),
}
