//! Publishing with a bounded wait for the broker's answer.
//!
//! lapin resolves a pending publisher confirm only when the broker answers or when a
//! channel recovery starts; on a connection lapin has abandoned neither happens, so an
//! unbounded wait would hold its task (and the worker waiting for it) for ever.

use std::time::Duration;

use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Channel, Confirmation};

/// How long a publish and its confirm may take before the message is given up on (it is
/// then left unacked, so the broker redelivers the request that produced it).
pub const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);

/// What became of a publish.
#[derive(Debug)]
pub enum Published {
    /// Confirmed (or confirms are off on this channel) and routed.
    Delivered,
    /// Confirmed, but no queue took it (mandatory publish returned).
    Unroutable,
}

/// Why a publish did not go through.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("publishing failed: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("the broker refused the message (nack)")]
    Refused,
    #[error("no confirm from the broker within {} s", .0.as_secs())]
    TimedOut(Duration),
    /// A mandatory message no queue took, where one must.
    #[error("the broker could not route the message")]
    Unroutable,
}

/// Publishes and, on a confirming channel, waits up to [`CONFIRM_TIMEOUT`] for the broker.
pub async fn publish(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    mandatory: bool,
    body: &[u8],
    properties: BasicProperties,
) -> Result<Published, PublishError> {
    let attempt = async {
        let pending = channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions {
                    mandatory,
                    ..BasicPublishOptions::default()
                },
                body,
                properties,
            )
            .await?;
        pending.await
    };
    match tokio::time::timeout(CONFIRM_TIMEOUT, attempt).await {
        Err(_) => Err(PublishError::TimedOut(CONFIRM_TIMEOUT)),
        Ok(Err(e)) => Err(PublishError::Amqp(e)),
        Ok(Ok(Confirmation::Nack(_))) => Err(PublishError::Refused),
        Ok(Ok(Confirmation::Ack(Some(_)))) => Ok(Published::Unroutable),
        Ok(Ok(Confirmation::Ack(None) | Confirmation::NotRequested)) => Ok(Published::Delivered),
    }
}

/// One message of a [`publish_batch`].
#[derive(Debug)]
pub struct Message {
    pub routing_key: String,
    pub body: Vec<u8>,
    pub properties: BasicProperties,
}

/// Publishes `messages` in order on a confirming channel without waiting in between, then
/// waits for their confirms in order, all within one [`CONFIRM_TIMEOUT`]: how many, from
/// the first, were confirmed, and what stopped the rest. Not mandatory: a message no queue
/// takes is confirmed and dropped.
pub async fn publish_batch(
    channel: &Channel,
    exchange: &str,
    messages: &[Message],
) -> (usize, Option<PublishError>) {
    let mut confirmed = 0;
    let attempt = async {
        let mut pending = Vec::with_capacity(messages.len());
        for m in messages {
            pending.push(
                channel
                    .basic_publish(
                        exchange.into(),
                        m.routing_key.as_str().into(),
                        BasicPublishOptions::default(),
                        &m.body,
                        m.properties.clone(),
                    )
                    .await?,
            );
        }
        for p in pending {
            if let Confirmation::Nack(_) = p.await? {
                return Err(PublishError::Refused);
            }
            confirmed += 1;
        }
        Ok(())
    };
    let outcome = tokio::time::timeout(CONFIRM_TIMEOUT, attempt).await;
    let failed = match outcome {
        Err(_) => Some(PublishError::TimedOut(CONFIRM_TIMEOUT)),
        Ok(Err(e)) => Some(e),
        Ok(Ok(())) => None,
    };
    (confirmed, failed)
}
