//! `beds dlq`: inspect, replay and purge the dead-letter queues `{tag}rec.*.dlq`.

use std::collections::BTreeMap;

use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicNackOptions, ConfirmSelectOptions, QueuePurgeOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection};

use crate::config::{AmqpConfig, EXCHANGE};
use crate::transport::names::{READ_KEY, WRITE_KEY, dead_letter_queue, headers};
use crate::transport::publish::{PublishError, Published, publish};
use crate::transport::{ConnectError, connect};

/// Why a dead-letter operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("AMQP: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("{what} {queue}: {source}")]
    Queue {
        what: &'static str,
        queue: String,
        source: lapin::Error,
    },
    #[error(
        "the broker did not take the replayed message for {queue} ({source}): is the queue declared?"
    )]
    NotTaken { queue: String, source: PublishError },
}

/// One dead letter, read without removing it.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// The work queue it came from (its original routing key).
    pub queue: String,
    /// Our error code, or RabbitMQ's `x-death` reason (e.g. `rejected`).
    pub code: String,
    pub reason: String,
    pub attempts: i64,
    pub body: Vec<u8>,
}

/// Reads every dead letter of the tag; they stay in their queues.
pub async fn list(amqp: &AmqpConfig) -> Result<Vec<DeadLetter>, DlqError> {
    let (conn, channel) = open(amqp).await?;
    let mut out = Vec::new();
    for key in [READ_KEY, WRITE_KEY] {
        let queue = amqp.queue(key);
        let dlq = dead_letter_queue(&queue);
        while let Some(msg) = next(&channel, &dlq).await? {
            out.push(describe(
                &queue,
                &msg.delivery.properties,
                msg.delivery.data.clone(),
            ));
        }
    }
    let _ = conn.close(200, "dlq list".into()).await;
    Ok(out)
}

/// Moves dead letters back to their work queue (all, or those with `code`), with fresh
/// attempts; returns how many.
pub async fn replay(amqp: &AmqpConfig, code: Option<&str>) -> Result<usize, DlqError> {
    let (conn, channel) = open(amqp).await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let mut moved = 0;
    for key in [READ_KEY, WRITE_KEY] {
        let queue = amqp.queue(key);
        let dlq = dead_letter_queue(&queue);
        let mut skipped = Vec::new();
        while let Some(msg) = next(&channel, &dlq).await? {
            let d = &msg.delivery;
            let letter = describe(&queue, &d.properties, Vec::new());
            if code.is_some_and(|c| c != letter.code) {
                skipped.push(d.acker.clone());
                continue;
            }
            let mut headers = FieldTable::default();
            for (k, v) in d.properties.headers().clone().unwrap_or_default().inner() {
                // A replay starts over: no attempt count, no history of its death.
                if !k.as_str().starts_with(headers::PREFIX) && k.as_str() != headers::DEATH {
                    headers.insert(k.clone(), v.clone());
                }
            }
            let props = d.properties.clone().with_headers(headers);
            match publish(&channel, EXCHANGE, &queue, true, &d.data, props).await {
                Ok(Published::Delivered) => {}
                Ok(Published::Unroutable) => {
                    return Err(DlqError::NotTaken {
                        queue,
                        source: PublishError::Unroutable,
                    });
                }
                Err(source) => return Err(DlqError::NotTaken { queue, source }),
            }
            d.acker.ack(BasicAckOptions::default()).await?;
            moved += 1;
        }
        for acker in skipped {
            let _ = acker
                .nack(BasicNackOptions {
                    requeue: true,
                    ..BasicNackOptions::default()
                })
                .await;
        }
    }
    let _ = conn.close(200, "dlq replay".into()).await;
    Ok(moved)
}

/// Empties the dead-letter queues of the tag; returns how many messages were dropped.
pub async fn purge(amqp: &AmqpConfig) -> Result<u32, DlqError> {
    let (conn, channel) = open(amqp).await?;
    let mut dropped = 0;
    for key in [READ_KEY, WRITE_KEY] {
        let dlq = dead_letter_queue(&amqp.queue(key));
        dropped += channel
            .queue_purge(dlq.as_str().into(), QueuePurgeOptions::default())
            .await
            .map_err(|source| DlqError::Queue {
                what: "purging",
                queue: dlq.clone(),
                source,
            })?;
    }
    let _ = conn.close(200, "dlq purge".into()).await;
    Ok(dropped)
}

/// Counts by (queue, code), for `beds dlq list`.
pub fn summary(letters: &[DeadLetter]) -> BTreeMap<(String, String), usize> {
    let mut groups = BTreeMap::new();
    for l in letters {
        *groups.entry((l.queue.clone(), l.code.clone())).or_insert(0) += 1;
    }
    groups
}

/// The next dead letter of `dlq`, unacked: it comes back to the queue, in order, when the
/// channel closes unless it is acked.
async fn next(
    channel: &Channel,
    dlq: &str,
) -> Result<Option<lapin::message::BasicGetMessage>, DlqError> {
    channel
        .basic_get(dlq.into(), BasicGetOptions { no_ack: false })
        .await
        .map_err(|source| DlqError::Queue {
            what: "reading",
            queue: dlq.to_string(),
            source,
        })
}

async fn open(amqp: &AmqpConfig) -> Result<(Connection, Channel), DlqError> {
    let conn = connect(&amqp.url, &amqp.tls, "beds dlq").await?;
    let channel = conn.create_channel().await?;
    Ok((conn, channel))
}

fn describe(queue: &str, props: &BasicProperties, body: Vec<u8>) -> DeadLetter {
    let headers = props.headers().clone().unwrap_or_default();
    let text = |k: &str| match headers.inner().get(k) {
        Some(AMQPValue::LongString(s)) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        _ => None,
    };
    let death_reason = match headers.inner().get(headers::DEATH) {
        Some(AMQPValue::FieldArray(a)) => a.as_slice().first().and_then(|d| match d {
            AMQPValue::FieldTable(t) => match t.inner().get("reason") {
                Some(AMQPValue::LongString(s)) => {
                    Some(String::from_utf8_lossy(s.as_bytes()).into_owned())
                }
                _ => None,
            },
            _ => None,
        }),
        _ => None,
    };
    let attempts = match headers.inner().get(headers::ATTEMPT) {
        Some(AMQPValue::LongLongInt(n)) => *n,
        _ => 1,
    };
    DeadLetter {
        queue: queue.to_string(),
        code: text(headers::ERROR_CODE)
            .or(death_reason.clone())
            .unwrap_or_else(|| "unknown".into()),
        reason: text(headers::REASON).or(death_reason).unwrap_or_default(),
        attempts,
        body,
    }
}
