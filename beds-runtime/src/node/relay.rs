//! The outbox relay: publishes committed-write events from the outbox to `beds.events`
//! with publisher confirms, in `seq` order, and removes a row only after its confirm.
//!
//! One relay per database publishes at a time: every appServer node runs one, and only the
//! holder of the outbox lease (a row in the database, renewed each round) reads the outbox.
//! Per record, writes commit in version order and take increasing `seq` (the record's row
//! is locked from its read until commit), so one publisher in `seq` order publishes each
//! record's events in version order, whichever node wrote them. A holder that dies is
//! replaced once its lease expires; one that stops gives the lease up.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lapin::options::ConfirmSelectOptions;
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel};
use tokio_util::sync::CancellationToken;

use crate::config::{AmqpConfig, EventsConfig};
use crate::events::WriteEvent;
use crate::store::{OutboxRow, Store};
use crate::transport::link::Link;
use crate::transport::names::EXCHANGE;
use crate::transport::publish::{CONFIRM_TIMEOUT, PublishError, publish};

/// Why a relay round stopped before the outbox was empty.
#[derive(Debug, thiserror::Error)]
enum RelayError {
    #[error("the outbox could not be read or updated: {0}")]
    Database(#[from] sqlx::Error),
    #[error("opening a confirming channel failed: {0}")]
    Channel(lapin::Error),
    #[error("opening a confirming channel took longer than {} s", CONFIRM_TIMEOUT.as_secs())]
    ChannelTimedOut,
    #[error("publishing event seq {seq} failed: {source}")]
    Publish { seq: i64, source: PublishError },
    #[error("outbox row seq {seq} is not an event: {source}")]
    Undecodable { seq: i64, source: serde_json::Error },
    #[error("the lease ran short during a round")]
    LeaseLost,
}

pub(crate) struct Relay {
    pub store: Store,
    pub link: Arc<Link>,
    pub amqp: AmqpConfig,
    pub config: EventsConfig,
    /// This relay's name in the lease: node, process and start, so a restarted node is a
    /// new holder and waits for the old lease to expire (its rows may still be in flight).
    pub holder: String,
}

impl Relay {
    /// Publishes until `stop` fires; failures are logged and retried after a backoff, so
    /// the relay outlives broker restarts and database outages.
    pub async fn run(self, stop: CancellationToken) {
        let poll = self.config.poll.duration();
        let mut channel: Option<Channel> = None;
        let mut backoff = poll;
        loop {
            let pause = match self.round(&mut channel, &stop).await {
                Ok(true) => Duration::ZERO,
                Ok(false) => {
                    backoff = poll;
                    poll
                }
                Err(e) => {
                    tracing::warn!(error = %e, "event relay round failed; retrying");
                    channel = None;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    backoff
                }
            };
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(pause) => {}
            }
        }
        if let Err(e) = self.store.outbox_release(&self.holder).await {
            tracing::debug!(error = %e, "releasing the outbox lease failed; it expires");
        }
        if let Some(ch) = channel {
            let _ = tokio::time::timeout(CONFIRM_TIMEOUT, ch.close(200, "stop".into())).await;
        }
    }

    /// One batch: true if it was full (more may be waiting).
    async fn round(
        &self,
        channel: &mut Option<Channel>,
        stop: &CancellationToken,
    ) -> Result<bool, RelayError> {
        let ttl = self.config.lease_ttl.duration();
        let leased_at = Instant::now();
        if !self.store.outbox_lease(&self.holder, ttl).await? {
            return Ok(false);
        }
        let cutoff = crate::value::now()
            - chrono::Duration::from_std(self.config.publish_after.duration())
                .unwrap_or(chrono::Duration::MAX);
        let rows = self.store.outbox_batch(self.config.batch, cutoff).await?;
        if rows.is_empty() {
            return Ok(false);
        }
        let ch = match channel {
            Some(ch) if ch.status().connected() => ch,
            _ => channel.insert(self.confirming_channel(stop).await?),
        };
        let full = rows.len() == self.config.batch as usize;
        for row in rows {
            // A publish takes at most CONFIRM_TIMEOUT; stop before the lease could run out
            // mid-publish, so two relays never publish at once.
            if leased_at.elapsed() + CONFIRM_TIMEOUT >= ttl {
                return Err(RelayError::LeaseLost);
            }
            if stop.is_cancelled() {
                return Ok(false);
            }
            self.publish(ch, row).await?;
        }
        Ok(full)
    }

    async fn confirming_channel(&self, stop: &CancellationToken) -> Result<Channel, RelayError> {
        let open = async {
            let conn = tokio::select! {
                conn = self.link.live() => conn,
                () = stop.cancelled() => return Err(RelayError::ChannelTimedOut),
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

    /// Publishes one row, persistent and confirmed, then removes it. A crash between the
    /// confirm and the removal publishes it again later, with the same event id.
    async fn publish(&self, ch: &Channel, row: OutboxRow) -> Result<(), RelayError> {
        let seq = row.seq;
        let mut event: WriteEvent = serde_json::from_str(&row.body)
            .map_err(|source| RelayError::Undecodable { seq, source })?;
        event.seq = seq;
        let body =
            serde_json::to_vec(&event).map_err(|source| RelayError::Undecodable { seq, source })?;
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type(ShortString::from("application/json"))
            .with_message_id(ShortString::from(event.id.to_string()))
            .with_correlation_id(ShortString::from(event.correlation_id.to_string()));
        publish(
            ch,
            EXCHANGE,
            &event.routing_key(&self.amqp.queue_tag),
            false,
            &body,
            properties,
        )
        .await
        .map_err(|source| RelayError::Publish { seq, source })?;
        self.store.outbox_remove(seq).await?;
        Ok(())
    }
}
