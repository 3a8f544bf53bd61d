//! The outbox relay: publishes committed-write events from the outbox to `beds.events`
//! with publisher confirms, in `seq` order, and removes a row only after its confirm.
//!
//! One relay per database publishes at a time: every appServer node runs one, and only the
//! holder of the outbox lease (a row in the database, renewed every quarter TTL) reads the
//! outbox.
//! Per record, writes commit in version order and take increasing `seq` (the record's row
//! is locked from its read until commit), so one publisher in `seq` order publishes each
//! record's events in version order, whichever node wrote them. A holder that dies is
//! replaced once its lease expires; one that stops gives the lease up.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lapin::options::ConfirmSelectOptions;
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel};
use prometheus_client::metrics::gauge::Gauge;
use serde::Deserialize;
use serde_json::{Map, Value as Json};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::{AmqpConfig, EventsConfig};
use crate::envelope::Origin;
use crate::events::{WriteOp, routing_key};
use crate::lineage::{Lineage, Record, RecordType};
use crate::store::{OutboxRow, Store};
use crate::transport::link::Link;
use crate::transport::names::EXCHANGE;
use crate::transport::publish::{CONFIRM_TIMEOUT, Message, PublishError, publish_batch};
use crate::transport::signing::{Purpose, ServiceKey};
use crate::value::Timestamp;

/// Why a relay round stopped before the outbox was empty.
#[derive(Debug, thiserror::Error)]
enum RelayError {
    #[error("the outbox could not be read or updated: {0}")]
    Database(#[from] sqlx::Error),
    #[error("opening a confirming channel failed: {0}")]
    Channel(lapin::Error),
    #[error("opening a confirming channel took longer than {} s", CONFIRM_TIMEOUT.as_secs())]
    ChannelTimedOut,
    #[error("the node is stopping")]
    Stopping,
    #[error("publishing event seq {seq} failed: {source}")]
    Publish { seq: i64, source: PublishError },
    #[error("outbox row seq {seq} is not an event: {source}")]
    Undecodable { seq: i64, source: serde_json::Error },
    #[error("the outbox lease is not held long enough for a batch")]
    LeaseLost,
}

pub(crate) struct Relay {
    pub store: Store,
    pub link: Arc<Link>,
    pub amqp: AmqpConfig,
    pub config: EventsConfig,
    /// Signs each event, so consumers can tell it from one published by anyone else.
    pub key: ServiceKey,
    /// This relay's name in the lease: node, process and start, so a restarted node is a
    /// new holder and waits for the old lease to expire (its rows may still be in flight).
    pub holder: String,
    /// The outbox backlog gauge and how often it is counted.
    pub backlog: (Gauge, Duration),
    /// Records each published event of a sampled conversation.
    pub lineage: Lineage,
}

/// What the relay reads of an event: what its message's properties and routing key need.
#[derive(Deserialize)]
struct Head {
    id: Uuid,
    correlation_id: Uuid,
    causation_id: Uuid,
    depth: u32,
    origin: Origin,
    committed_at: Timestamp,
    domain: String,
    template: String,
    op: WriteOp,
}

/// What a relay remembers between rounds.
#[derive(Default)]
struct State {
    channel: Option<Channel>,
    /// When the lease was last taken or renewed (before the statement ran).
    renewed: Option<Instant>,
    /// When taking the lease last failed (another relay holds it).
    refused: Option<Instant>,
    /// When the backlog was last counted.
    counted: Option<Instant>,
}

impl Relay {
    /// Publishes until `stop` fires; failures are logged and retried after a backoff, so
    /// the relay outlives broker restarts and database outages.
    pub async fn run(self, stop: CancellationToken) {
        let poll = self.config.poll.duration();
        let mut state = State::default();
        let mut backoff = poll;
        loop {
            self.count_backlog(&mut state).await;
            let pause = match self.round(&mut state, &stop).await {
                Ok(true) => Duration::ZERO,
                Ok(false) => {
                    backoff = poll;
                    poll
                }
                Err(e) => {
                    tracing::warn!(error = %e, "event relay round failed; retrying");
                    state.channel = None;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    backoff
                }
            };
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(pause) => {}
            }
        }
        // The node stops the relay after its workers drained: one last batch publishes what
        // they committed meanwhile; anything left stays for the next relay.
        if state.renewed.is_some() {
            if let Err(e) = self.round(&mut state, &CancellationToken::new()).await {
                tracing::info!(error = %e, "events left in the outbox for the next relay");
            }
            if let Err(e) = self.store.outbox_release(&self.holder).await {
                tracing::debug!(error = %e, "releasing the outbox lease failed; it expires");
            }
        }
        if let Some(ch) = state.channel {
            let closing = tokio::time::timeout(CONFIRM_TIMEOUT, ch.close(200, "stop".into()));
            if let Ok(Err(e)) = closing.await {
                tracing::debug!(error = %e, "closing the relay channel");
            }
        }
    }

    /// Sets the backlog gauge every few seconds: the rows counted by the lease holder only,
    /// so that summed over nodes each row counts once; 0 on the others.
    async fn count_backlog(&self, state: &mut State) {
        let (gauge, every) = &self.backlog;
        if state.counted.is_some_and(|at| at.elapsed() < *every) {
            return;
        }
        state.counted = Some(Instant::now());
        if state.renewed.is_none() {
            gauge.set(0);
            return;
        }
        match self.store.outbox_backlog().await {
            Ok(rows) => {
                gauge.set(rows);
            }
            Err(e) => tracing::debug!(error = %e, "counting the outbox backlog failed"),
        }
    }

    /// Whether this relay holds the lease: renewed every quarter TTL while held, asked for
    /// again every quarter TTL while another relay holds it (a database write per quarter
    /// TTL per node, not per poll).
    async fn hold(&self, state: &mut State) -> Result<bool, RelayError> {
        let every = self.config.lease_ttl.duration() / 4;
        let fresh = |at: Option<Instant>| at.is_some_and(|at| at.elapsed() < every);
        if fresh(state.renewed) {
            return Ok(true);
        }
        if state.renewed.is_none() && fresh(state.refused) {
            return Ok(false);
        }
        let asked = Instant::now();
        let held = self
            .store
            .outbox_lease(&self.holder, self.config.lease_ttl.duration())
            .await;
        match held {
            Ok(true) => {
                if state.renewed.is_none() {
                    tracing::info!(holder = %self.holder, "this node's relay publishes the events");
                }
                state.renewed = Some(asked);
                state.refused = None;
                Ok(true)
            }
            Ok(false) => {
                state.renewed = None;
                state.refused = Some(asked);
                Ok(false)
            }
            Err(e) => {
                // Unknown: publish nothing until the lease is renewed again.
                state.renewed = None;
                Err(e.into())
            }
        }
    }

    /// One batch: true if it was full (more may be waiting).
    async fn round(&self, state: &mut State, stop: &CancellationToken) -> Result<bool, RelayError> {
        if !self.hold(state).await? {
            return Ok(false);
        }
        let cutoff = crate::value::now()
            - chrono::Duration::from_std(self.config.publish_after.duration())
                .unwrap_or(chrono::Duration::MAX);
        let rows = self.store.outbox_batch(self.config.batch, cutoff).await?;
        if rows.is_empty() {
            return Ok(false);
        }
        let full = rows.len() == self.config.batch as usize;
        let mut seqs = Vec::with_capacity(rows.len());
        let mut messages = Vec::with_capacity(rows.len());
        let mut records = Vec::new();
        for row in rows {
            seqs.push(row.seq);
            let (message, record) = self.message(row)?;
            if let Some(record) = record {
                records.push((messages.len(), record));
            }
            messages.push(message);
        }
        // The batch's publishes and confirms take at most CONFIRM_TIMEOUT: start it only
        // if the lease outlives that, so two relays never publish at once.
        let renewed = state.renewed.ok_or(RelayError::LeaseLost)?;
        if renewed.elapsed() + CONFIRM_TIMEOUT >= self.config.lease_ttl.duration() {
            state.renewed = None;
            return Err(RelayError::LeaseLost);
        }
        let ch = match &mut state.channel {
            Some(ch) if ch.status().connected() => ch,
            slot => slot.insert(self.confirming_channel(stop).await?),
        };
        let (confirmed, failed) = publish_batch(ch, EXCHANGE, &messages).await;
        // Only confirmed rows go; the rest (and any row published but not confirmed) stay
        // and are published again with the same event id.
        self.store.outbox_remove(&seqs[..confirmed]).await?;
        // An event's record says how long it waited in the outbox after its commit.
        let published = crate::value::now();
        for (_, record) in records.into_iter().filter(|(i, _)| *i < confirmed) {
            let waited = (published - record.at).to_std().unwrap_or_default();
            self.lineage.record(record.took(waited).ended(None));
        }
        match failed {
            Some(source) => Err(RelayError::Publish {
                seq: seqs[confirmed],
                source,
            }),
            None => Ok(full),
        }
    }

    async fn confirming_channel(&self, stop: &CancellationToken) -> Result<Channel, RelayError> {
        let open = async {
            let conn = tokio::select! {
                conn = self.link.live() => conn,
                () = stop.cancelled() => return Err(RelayError::Stopping),
            };
            let ch = conn.create_channel().await.map_err(RelayError::Channel)?;
            ch.confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(RelayError::Channel)?;
            Ok(ch)
        };
        tokio::time::timeout(CONFIRM_TIMEOUT, open)
            .await
            .unwrap_or(Err(RelayError::ChannelTimedOut))
    }

    /// An outbox row as the message published: its `seq` filled in, persistent, JSON,
    /// `message_id` the event id, `correlation_id` the request's, signed. The body is kept as a JSON
    /// object, not read into [`crate::events::WriteEvent`]: a field added by a newer node survives an older
    /// relay. With it, the event's lineage record when its conversation is sampled.
    fn message(&self, row: OutboxRow) -> Result<(Message, Option<Record>), RelayError> {
        let seq = row.seq;
        let undecodable = |source| RelayError::Undecodable { seq, source };
        let mut body: Map<String, Json> = serde_json::from_str(&row.body).map_err(undecodable)?;
        let event: Head =
            serde_json::from_value(Json::Object(body.clone())).map_err(undecodable)?;
        body.insert("seq".into(), Json::from(seq));
        let body = serde_json::to_vec(&body).map_err(undecodable)?;
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type(ShortString::from("application/json"))
            .with_message_id(ShortString::from(event.id.to_string()))
            .with_correlation_id(ShortString::from(event.correlation_id.to_string()));
        let properties = self.key.sign(Purpose::WriteEvent, properties, &body);
        let routing_key = routing_key(
            &self.amqp.queue_tag,
            &event.domain,
            &event.template,
            event.op,
        );
        let record = self.lineage.sampled(event.correlation_id).then(|| {
            Record::new(
                RecordType::Event,
                event.id,
                event.correlation_id,
                Some(event.causation_id),
                event.depth,
                event.origin,
                routing_key[self.amqp.queue_tag.len()..].to_string(),
                event.committed_at,
            )
        });
        let message = Message {
            routing_key,
            body,
            properties,
        };
        Ok((message, record))
    }
}
