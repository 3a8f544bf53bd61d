//! Lineage records: one per message or effect of a sampled conversation, queued in memory
//! and published in batches to `{queue_tag}log.lineage` on `beds.events`, where the admin
//! role stores them (wiki/envelope.md, "Lineage").
//!
//! Lineage must never slow or fail the data path: a record is handed over with `try_send`
//! to a bounded queue, and dropped (and counted) when it is full; a conversation is sampled
//! by a hash of its correlation id, so every node keeps or skips the same conversations
//! and a tree is recorded whole or not at all. Nothing is allocated for a conversation that
//! is not sampled: callers ask [`Lineage::sampled`] before building a record.

mod tree;

pub use tree::{Line, render, tree};

use std::sync::Arc;
use std::time::Duration;

use lapin::options::BasicPublishOptions;
use lapin::types::AMQPValue;
use lapin::{BasicProperties, Channel};
use prometheus_client::metrics::counter::Counter;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::envelope::Origin;
use crate::error::ErrorCode;
use crate::transport::link::Link;
use crate::transport::names::{EXCHANGE, headers};
use crate::value::Timestamp;

/// The routing key (after the queue tag) lineage batches are published with.
pub const ROUTING_KEY: &str = "log.lineage";

/// The `kind` of every record.
pub const KIND: &str = "lineage";

/// Records waiting to be published, at most; beyond, new ones are dropped.
const QUEUE: usize = 16_384;
/// Records in one published batch, at most.
const BATCH: usize = 256;
/// How long a record may wait for its batch to fill.
const LINGER: Duration = Duration::from_millis(100);
/// How long handing one batch to the broker may take before it is dropped.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(2);

/// What a record stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordType {
    Request,
    Reply,
    Event,
    Effect,
    Invalidation,
    Retry,
    DeadLetter,
    Audit,
}

impl RecordType {
    pub fn name(self) -> &'static str {
        match self {
            RecordType::Request => "request",
            RecordType::Reply => "reply",
            RecordType::Event => "event",
            RecordType::Effect => "effect",
            RecordType::Invalidation => "invalidation",
            RecordType::Retry => "retry",
            RecordType::DeadLetter => "dead_letter",
            RecordType::Audit => "audit",
        }
    }
}

/// One lineage record (the contract is in wiki/envelope.md). Its parent is the record
/// whose `id` is its `causation_id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub v: u32,
    /// Always [`KIND`].
    pub kind: String,
    /// The message's or effect's id.
    pub id: Uuid,
    pub correlation_id: Uuid,
    pub causation_id: Option<Uuid>,
    pub depth: u32,
    pub origin: Origin,
    #[serde(rename = "type")]
    pub kind_of: RecordType,
    /// `domain.template.op`, the routing key without the queue tag, or the effect's name.
    pub name: String,
    /// When it started, RFC 3339 with microseconds.
    #[serde(with = "micros")]
    pub at: Timestamp,
    pub duration_us: Option<u64>,
    /// `ok`, an error code, or null when it has none.
    pub outcome: Option<String>,
}

impl Record {
    /// A record without duration or outcome; set them on the value.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        kind_of: RecordType,
        id: Uuid,
        correlation_id: Uuid,
        causation_id: Option<Uuid>,
        depth: u32,
        origin: Origin,
        name: String,
        at: Timestamp,
    ) -> Record {
        Record {
            v: 1,
            kind: KIND.into(),
            id,
            correlation_id,
            causation_id,
            depth,
            origin,
            kind_of,
            name,
            at,
            duration_us: None,
            outcome: None,
        }
    }

    pub fn took(mut self, d: Duration) -> Record {
        self.duration_us = Some(u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        self
    }

    pub fn ended(mut self, code: Option<ErrorCode>) -> Record {
        self.outcome = Some(outcome(code));
        self
    }
}

/// `ok`, or the error code's wire name.
pub fn outcome(code: Option<ErrorCode>) -> String {
    match code.map(serde_json::to_value) {
        None => "ok".into(),
        Some(Ok(serde_json::Value::String(s))) => s,
        Some(_) => "unknown".into(),
    }
}

mod micros {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::value::{Timestamp, format_timestamp};

    pub fn serialize<S: Serializer>(t: &Timestamp, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_timestamp(t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Timestamp, D::Error> {
        let text = String::deserialize(d)?;
        chrono::DateTime::parse_from_rfc3339(&text)
            .map(|t| t.with_timezone(&chrono::Utc))
            .map_err(serde::de::Error::custom)
    }
}

/// Which conversations are recorded: those whose correlation id hashes below a threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample(u64);

impl Sample {
    /// `rate` of conversations, 0.0 (none) to 1.0 (all).
    pub fn new(rate: f64) -> Sample {
        if rate >= 1.0 {
            return Sample(u64::MAX);
        }
        // Saturating cast: a rate in 0.0..1.0 maps onto 0..u64::MAX.
        Sample((rate.max(0.0) * u64::MAX as f64) as u64)
    }

    pub fn none(self) -> bool {
        self.0 == 0
    }

    /// The same answer on every node for the same conversation: a fixed mix of the id's
    /// bytes (not the process-seeded std hasher). UUIDv7 starts with the time, so all 16
    /// bytes are mixed.
    pub fn keeps(self, correlation: Uuid) -> bool {
        if self.0 == u64::MAX {
            return true;
        }
        let (hi, lo) = correlation.as_u64_pair();
        mix(hi ^ mix(lo)) < self.0
    }
}

/// splitmix64's finaliser.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The message a runtime message descends from: what it carries as its lineage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Parent {
    pub id: Uuid,
    pub correlation: Uuid,
    pub depth: u32,
}

/// A node's lineage handle: its origin, its sampling and its sink. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Lineage {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    origin: Origin,
    sample: Sample,
    tx: Option<mpsc::Sender<Record>>,
    dropped: Counter,
}

impl Lineage {
    /// Records nothing (sampling 0); the origin still names the node on its messages.
    pub fn off(origin: Origin) -> Lineage {
        Lineage {
            inner: Arc::new(Inner {
                origin,
                sample: Sample(0),
                tx: None,
                dropped: Counter::default(),
            }),
        }
    }

    /// Starts the publisher of this node's records (none when `rate` is 0); it publishes
    /// what is queued and ends on `stop`.
    pub fn start(
        origin: Origin,
        rate: f64,
        link: Arc<Link>,
        routing_key: String,
        (sent, dropped): (Counter, Counter),
        stop: CancellationToken,
    ) -> (Lineage, Option<JoinHandle<()>>) {
        let sample = Sample::new(rate);
        if sample.none() {
            return (Lineage::off(origin), None);
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        let publisher = tokio::spawn(
            Publisher {
                link,
                routing_key,
                sent,
                dropped: dropped.clone(),
            }
            .run(rx, stop),
        );
        let lineage = Lineage {
            inner: Arc::new(Inner {
                origin,
                sample,
                tx: Some(tx),
                dropped,
            }),
        };
        (lineage, Some(publisher))
    }

    pub fn origin(&self) -> &Origin {
        &self.inner.origin
    }

    /// Whether the conversation `correlation` is recorded.
    pub fn sampled(&self, correlation: Uuid) -> bool {
        self.inner.tx.is_some() && self.inner.sample.keeps(correlation)
    }

    /// Queues a record; never waits: a full queue drops it (counted).
    pub fn record(&self, record: Record) {
        if let Some(tx) = &self.inner.tx
            && tx.try_send(record).is_err()
        {
            self.inner.dropped.inc();
        }
    }

    /// Signed `x-beds-*` headers naming a message published on behalf of `parent` (a
    /// retry, a dead letter): its own id, the conversation, the parent, depth and origin.
    pub fn headers(&self, id: Uuid, parent: Parent) -> [(&'static str, AMQPValue); 5] {
        let origin = serde_json::to_string(&self.inner.origin).expect("origins serialise");
        let text = |u: Uuid| AMQPValue::LongString(u.to_string().into());
        [
            (headers::LINEAGE_ID, text(id)),
            (headers::CORRELATION_ID, text(parent.correlation)),
            (headers::CAUSATION_ID, text(parent.id)),
            (
                headers::DEPTH,
                AMQPValue::LongLongInt(i64::from(parent.depth) + 1),
            ),
            (headers::ORIGIN, AMQPValue::LongString(origin.into())),
        ]
    }
}

/// Publishes queued records in batches, without publisher confirms: lineage is sampled
/// telemetry, and a lost batch costs a gap in a tree, never a write; waiting for confirms
/// would only hold records in memory longer.
struct Publisher {
    link: Arc<Link>,
    routing_key: String,
    sent: Counter,
    dropped: Counter,
}

impl Publisher {
    async fn run(self, mut rx: mpsc::Receiver<Record>, stop: CancellationToken) {
        let mut channel: Option<Channel> = None;
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            let first = tokio::select! {
                first = rx.recv() => first,
                () = stop.cancelled() => None,
            };
            let Some(first) = first else { break };
            batch.push(first);
            let until = tokio::time::Instant::now() + LINGER;
            while batch.len() < BATCH {
                match tokio::time::timeout_at(until, rx.recv()).await {
                    Ok(Some(r)) => batch.push(r),
                    Ok(None) | Err(_) => break,
                }
            }
            self.publish(&mut channel, &mut batch).await;
        }
        // What was queued before the stop still goes out.
        while let Ok(r) = rx.try_recv() {
            batch.push(r);
            if batch.len() == BATCH {
                self.publish(&mut channel, &mut batch).await;
            }
        }
        if !batch.is_empty() {
            self.publish(&mut channel, &mut batch).await;
        }
    }

    async fn publish(&self, channel: &mut Option<Channel>, batch: &mut Vec<Record>) {
        let n = batch.len() as u64;
        let body = serde_json::to_vec(&*batch).expect("lineage records serialise");
        batch.clear();
        let slot = &mut *channel;
        let sent = tokio::time::timeout(PUBLISH_TIMEOUT, async move {
            let ch = match slot {
                Some(ch) if ch.status().connected() => ch,
                slot => slot.insert(self.link.get().await.create_channel().await?),
            };
            let props = BasicProperties::default()
                .with_content_type("application/json".into())
                .with_type(KIND.into());
            ch.basic_publish(
                EXCHANGE.into(),
                self.routing_key.as_str().into(),
                BasicPublishOptions::default(),
                &body,
                props,
            )
            .await
            .map(|_| ())
        })
        .await;
        match sent {
            Ok(Ok(())) => {
                self.sent.inc_by(n);
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, records = n, "publishing lineage failed; dropped");
                *channel = None;
                self.dropped.inc_by(n);
            }
            Err(_) => {
                tracing::debug!(records = n, "publishing lineage timed out; dropped");
                *channel = None;
                self.dropped.inc_by(n);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_is_decided_by_the_correlation_id_alone() {
        let half = Sample::new(0.5);
        let ids: Vec<Uuid> = (0..2000).map(|_| Uuid::now_v7()).collect();
        let kept: Vec<bool> = ids.iter().map(|id| half.keeps(*id)).collect();
        // The same answer every time, on any node (no per-process seed).
        assert_eq!(
            kept,
            ids.iter()
                .map(|id| Sample::new(0.5).keeps(*id))
                .collect::<Vec<_>>()
        );
        let n = kept.iter().filter(|k| **k).count();
        assert!((800..1200).contains(&n), "{n} of 2000 kept at 0.5");
        assert!(ids.iter().all(|id| Sample::new(1.0).keeps(*id)));
        assert!(!ids.iter().any(|id| Sample::new(0.0).keeps(*id)));
        let fixed = Uuid::parse_str("01a22107-123e-753f-abe5-97ed5cc2603b").unwrap();
        assert_eq!(Sample::new(0.3).keeps(fixed), Sample::new(0.3).keeps(fixed));
    }

    #[test]
    fn a_lower_rate_keeps_a_subset() {
        let ids: Vec<Uuid> = (0..1000).map(|_| Uuid::now_v7()).collect();
        for id in ids {
            if Sample::new(0.1).keeps(id) {
                assert!(Sample::new(0.5).keeps(id));
            }
        }
    }

    #[test]
    fn a_record_reads_and_writes_as_documented() {
        let text = r#"{"v":1,"kind":"lineage","id":"01a22107-12b7-7605-909a-dde25d9a61b3","correlation_id":"01a22107-123e-753f-abe5-97ed5cc2603b","causation_id":null,"depth":0,"origin":{"service":"beds","node":"n1","env":"dev"},"type":"request","name":"spew.spew.create","at":"2026-11-28T07:20:41.399303Z","duration_us":1520,"outcome":"ok"}"#;
        let r: Record = serde_json::from_str(text).unwrap();
        assert_eq!(r.kind_of, RecordType::Request);
        let again = serde_json::to_value(&r).unwrap();
        assert_eq!(
            again,
            serde_json::from_str::<serde_json::Value>(text).unwrap()
        );
    }

    #[test]
    fn outcomes_are_ok_or_the_wire_code() {
        assert_eq!(outcome(None), "ok");
        assert_eq!(outcome(Some(ErrorCode::NotFound)), "not_found");
    }
}
