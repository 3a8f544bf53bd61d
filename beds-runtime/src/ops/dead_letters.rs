//! `beds dlq`: inspect, replay and purge the dead-letter queues `{tag}rec.*.dlq`.
//!
//! A dead letter's code and reason are believed only when the node that dead-lettered it
//! signed them (transport::signing): anyone who can publish to `beds.dlx` can write
//! `x-beds-error-code`. Anything else is listed as `untrusted_origin` and never replayed.

use std::collections::BTreeMap;

use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicNackOptions, ConfirmSelectOptions, QueueDeclareOptions,
    QueuePurgeOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection};

use crate::config::{AmqpConfig, EXCHANGE};
use crate::transport::names::{READ_KEY, WRITE_KEY, dead_letter_queue, headers};
use crate::transport::publish::{PublishError, Published, publish};
use crate::transport::signing::{KeyError, Purpose, ServiceKey};
use crate::transport::{ConnectError, connect};

/// The code `beds dlq` shows for a dead letter no node signed.
pub const UNTRUSTED: &str = "untrusted_origin";

/// Why a dead-letter operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error(transparent)]
    ServiceKey(#[from] KeyError),
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
    #[error(
        "the broker did not answer {what} within {} s; check that RabbitMQ is up and run the command again",
        BROKER_TIMEOUT.as_secs()
    )]
    TimedOut { what: &'static str },
}

/// How long one broker operation of `beds dlq` may take: a broker that stops answering
/// ends the command with an error instead of hanging it (a publish is bounded by its
/// confirm timeout).
const BROKER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// `step` within [`BROKER_TIMEOUT`]; its own error is left to the caller to name.
async fn bounded<T>(
    what: &'static str,
    step: impl Future<Output = lapin::Result<T>>,
) -> Result<lapin::Result<T>, DlqError> {
    tokio::time::timeout(BROKER_TIMEOUT, step)
        .await
        .map_err(|_| DlqError::TimedOut { what })
}

/// One dead letter, read without removing it.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// The work queue it came from (its original routing key).
    pub queue: String,
    /// Our error code when a node signed it, else `untrusted_origin`.
    pub code: String,
    pub reason: String,
    /// Whether a node of this deployment signed its headers (only those are replayed).
    pub trusted: bool,
    /// The code an unsigned letter's headers claim, not believed.
    pub claimed: Option<String>,
    pub attempts: i64,
    /// Every header it carries, as text (nested values as their debug form), for showing.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// Reads every dead letter of the tag; they stay in their queues.
pub async fn list(amqp: &AmqpConfig, key: &ServiceKey) -> Result<Vec<DeadLetter>, DlqError> {
    let (conn, channel) = open(amqp).await?;
    let mut out = Vec::new();
    for lane_key in [READ_KEY, WRITE_KEY] {
        let queue = amqp.queue(lane_key);
        let dlq = dead_letter_queue(&queue);
        while let Some(msg) = next(&channel, &dlq).await? {
            out.push(describe(
                key,
                &queue,
                &msg.delivery.properties,
                &msg.delivery.data,
            ));
        }
    }
    let _ = bounded("closing the connection", conn.close(200, "dlq list".into())).await;
    Ok(out)
}

/// A bounded, read-only look at dead-letter queues (the operator page): up to `limit`
/// letters of each of `queues` (work queue names; their `.dlq` is read) and each DLQ's
/// depth. Nothing is acked: every letter returns to its queue, in order, when the channel
/// closes. A DLQ that does not exist is reported with depth 0.
pub async fn peek(
    amqp: &AmqpConfig,
    key: &ServiceKey,
    queues: &[String],
    limit: usize,
) -> Result<Vec<Peeked>, DlqError> {
    let conn = connect(&amqp.url, &amqp.tls, "beds dlq peek").await?;
    let mut out = Vec::new();
    for queue in queues {
        let dlq = dead_letter_queue(queue);
        // A channel per queue: a passive declare of a missing queue closes its channel.
        let channel = bounded("opening a channel", conn.create_channel()).await??;
        let declared = bounded(
            "counting a dead-letter queue",
            channel.queue_declare(
                dlq.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            ),
        )
        .await?;
        let Ok(declared) = declared else {
            out.push(Peeked {
                queue: queue.clone(),
                depth: 0,
                letters: Vec::new(),
            });
            continue;
        };
        let mut letters = Vec::new();
        while letters.len() < limit {
            let Some(msg) = next(&channel, &dlq).await? else {
                break;
            };
            letters.push(describe(
                key,
                queue,
                &msg.delivery.properties,
                &msg.delivery.data,
            ));
        }
        let _ = bounded("closing a channel", channel.close(200, "dlq peek".into())).await;
        out.push(Peeked {
            queue: queue.clone(),
            depth: declared.message_count(),
            letters,
        });
    }
    let _ = bounded("closing the connection", conn.close(200, "dlq peek".into())).await;
    Ok(out)
}

/// One dead-letter queue as [`peek`] saw it.
#[derive(Debug, Clone)]
pub struct Peeked {
    /// The work queue whose dead letters these are.
    pub queue: String,
    /// Messages in its DLQ when looked at.
    pub depth: u32,
    /// The first of them, at most the limit.
    pub letters: Vec<DeadLetter>,
}

/// What a replay did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Replayed {
    /// Moved back to their work queue.
    pub moved: usize,
    /// Selected but left in place: no node signed them (`untrusted_origin`).
    pub refused: usize,
}

/// Moves signed dead letters back to their work queue (all, or those with `code`), with
/// fresh attempts. Unsigned or forged ones stay where they are and are counted.
pub async fn replay(
    amqp: &AmqpConfig,
    key: &ServiceKey,
    code: Option<&str>,
) -> Result<Replayed, DlqError> {
    let (conn, channel) = open(amqp).await?;
    bounded(
        "turning on publisher confirms",
        channel.confirm_select(ConfirmSelectOptions::default()),
    )
    .await??;
    let mut done = Replayed::default();
    for lane_key in [READ_KEY, WRITE_KEY] {
        let queue = amqp.queue(lane_key);
        let dlq = dead_letter_queue(&queue);
        let mut skipped = Vec::new();
        while let Some(msg) = next(&channel, &dlq).await? {
            let d = &msg.delivery;
            let letter = describe(key, &queue, &d.properties, &d.data);
            // An unsigned letter is selected by what it claims too, so a replay by code
            // reports the forgeries that claim it.
            let selected =
                code.is_none_or(|c| c == letter.code || letter.claimed.as_deref() == Some(c));
            if !selected {
                skipped.push(d.acker.clone());
                continue;
            }
            if !letter.trusted {
                done.refused += 1;
                skipped.push(d.acker.clone());
                continue;
            }
            let mut table = FieldTable::default();
            for (k, v) in d.properties.headers().clone().unwrap_or_default().inner() {
                // A replay starts over: no attempt count, no history of its death; the
                // caller the node carried stays, under a retry signature (the node reads
                // `x-beds-user-id` only from a delivery signed so).
                let ours = k.as_str().starts_with(headers::PREFIX) && k.as_str() != headers::CALLER;
                if !ours && k.as_str() != headers::DEATH {
                    table.insert(k.clone(), v.clone());
                }
            }
            let props = d.properties.clone().with_headers(table);
            let props = key.sign(Purpose::Retry, props, &d.data);
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
            bounded(
                "acking a replayed letter",
                d.acker.ack(BasicAckOptions::default()),
            )
            .await??;
            done.moved += 1;
        }
        for acker in skipped {
            let _ = bounded(
                "returning a letter to its queue",
                acker.nack(BasicNackOptions {
                    requeue: true,
                    ..BasicNackOptions::default()
                }),
            )
            .await;
        }
    }
    let _ = bounded(
        "closing the connection",
        conn.close(200, "dlq replay".into()),
    )
    .await;
    Ok(done)
}

/// Empties the dead-letter queues of the tag; returns how many messages were dropped.
pub async fn purge(amqp: &AmqpConfig) -> Result<u32, DlqError> {
    let (conn, channel) = open(amqp).await?;
    let mut dropped = 0;
    for key in [READ_KEY, WRITE_KEY] {
        let dlq = dead_letter_queue(&amqp.queue(key));
        dropped += bounded(
            "purging a dead-letter queue",
            channel.queue_purge(dlq.as_str().into(), QueuePurgeOptions::default()),
        )
        .await?
        .map_err(|source| DlqError::Queue {
            what: "purging",
            queue: dlq.clone(),
            source,
        })?;
    }
    let _ = bounded(
        "closing the connection",
        conn.close(200, "dlq purge".into()),
    )
    .await;
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
    bounded(
        "reading a dead letter",
        channel.basic_get(dlq.into(), BasicGetOptions { no_ack: false }),
    )
    .await?
    .map_err(|source| DlqError::Queue {
        what: "reading",
        queue: dlq.to_string(),
        source,
    })
}

async fn open(amqp: &AmqpConfig) -> Result<(Connection, Channel), DlqError> {
    let conn = connect(&amqp.url, &amqp.tls, "beds dlq").await?;
    let channel = bounded("opening a channel", conn.create_channel()).await??;
    Ok((conn, channel))
}

/// A dead letter as `beds dlq` shows it: its claims only if a node signed them. One the
/// broker dead-lettered by itself (a quorum queue's delivery limit, a rejected message)
/// carries no signature either: its `x-death` reason is shown, as information only.
fn describe(key: &ServiceKey, queue: &str, props: &BasicProperties, body: &[u8]) -> DeadLetter {
    let headers = props.headers().clone().unwrap_or_default();
    let shown = headers
        .inner()
        .iter()
        .map(|(k, v)| (k.to_string(), header_text(v)))
        .collect();
    let text = |k: &str| match headers.inner().get(k) {
        Some(AMQPValue::LongString(s)) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        _ => None,
    };
    if let Err(why) = key.verify(Purpose::DeadLetter, props, body) {
        let claimed = text(headers::ERROR_CODE);
        let claims = match (&claimed, death_reason(&headers)) {
            (Some(code), _) => format!("; it claims `{code}`"),
            (None, Some(reason)) => format!("; the broker's x-death reason is `{reason}`"),
            (None, None) => String::new(),
        };
        return DeadLetter {
            queue: queue.to_string(),
            code: UNTRUSTED.into(),
            reason: format!(
                "not dead-lettered by a node of this deployment: {why}{claims}; `beds dlq replay` leaves it, `beds dlq purge` removes it"
            ),
            trusted: false,
            claimed,
            attempts: 0,
            headers: shown,
            body: body.to_vec(),
        };
    }
    let attempts = match headers.inner().get(headers::ATTEMPT) {
        Some(AMQPValue::LongLongInt(n)) => *n,
        _ => 1,
    };
    DeadLetter {
        queue: queue.to_string(),
        code: text(headers::ERROR_CODE).unwrap_or_else(|| "unknown".into()),
        reason: text(headers::REASON).unwrap_or_default(),
        trusted: true,
        claimed: None,
        attempts,
        headers: shown,
        body: body.to_vec(),
    }
}

/// A header value as text: strings as they are, anything else in its debug form.
fn header_text(value: &AMQPValue) -> String {
    match value {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.to_string(),
        AMQPValue::LongLongInt(n) => n.to_string(),
        AMQPValue::LongInt(n) => n.to_string(),
        AMQPValue::Boolean(b) => b.to_string(),
        other => format!("{other:?}"),
    }
}

/// The reason of the first `x-death` entry RabbitMQ added (e.g. `rejected`).
fn death_reason(headers: &FieldTable) -> Option<String> {
    let Some(AMQPValue::FieldArray(deaths)) = headers.inner().get(headers::DEATH) else {
        return None;
    };
    match deaths.as_slice().first()? {
        AMQPValue::FieldTable(t) => match t.inner().get("reason")? {
            AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
            _ => None,
        },
        _ => None,
    }
}
