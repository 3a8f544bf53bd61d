//! The tercero role's consumers: write events from `{tag}evt.tercero` in batches, each
//! batch applied to the counters in one transaction with its event ids (so a redelivered
//! or twice-published event changes nothing), then its invalidations broadcast with
//! publisher confirms, then the batch acked. A failure anywhere before the ack leaves the
//! batch unacked: the broker redelivers it, the dedup table absorbs what was applied and
//! the invalidations are sent again (they are idempotent).

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicNackOptions};
use lapin::types::AMQPValue;
use lapin::{BasicProperties, Channel, Connection, Consumer};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::worker::{Run, WorkerExit, WorkerFailure, consume_on, setup};
use crate::cache::Invalidation;
use crate::config::{AmqpConfig, EXCHANGE, TerceroConfig};
use crate::envelope::Origin;
use crate::error::{BedsError, ErrorCode};
use crate::events::WriteEvent;
use crate::lineage::{Lineage, Record, RecordType};
use crate::meta::DomainMeta;
use crate::store::{CounterMarks, EventEffect, Store, until_written};
use crate::tercero::{EVENT_BINDING, EVENT_QUEUE_KEY, effect, invalidation, parse};
use crate::transport::link::Watch;
use crate::transport::names::{DEAD_LETTER_EXCHANGE, headers};
use crate::transport::publish::{PublishError, Published, publish};
use crate::transport::signing::{Purpose, ServiceKey, foreign_headers};
use crate::transport::topology;
use crate::value::Timestamp;

/// One consumer of the event queue, with its own channel.
pub(crate) struct EventConsumer {
    pub amqp: AmqpConfig,
    pub config: TerceroConfig,
    pub tag: String,
    pub store: Store,
    pub domains: &'static [&'static DomainMeta],
    /// The backfill marks read or made when the node started.
    pub marks: Arc<CounterMarks>,
    pub origin: Origin,
    /// Verifies events and signs invalidations and dead letters.
    pub key: ServiceKey,
    /// Records the effects and invalidations of sampled conversations.
    pub lineage: Lineage,
}

/// A batch's fate when it could not be finished.
enum BatchError {
    Publish(PublishError),
    Ack(lapin::Error),
    /// The stop fired while the database was refusing the batch.
    Stopped,
}

impl Run for EventConsumer {
    async fn run(&self, conn: &Connection, stop: &CancellationToken) -> WorkerExit {
        let queue = self.amqp.queue(EVENT_QUEUE_KEY);
        let (channel, mut consumer) = match self.consume(conn, &queue).await {
            Ok(started) => started,
            Err(e) => return WorkerExit::Failed(e),
        };
        tracing::debug!(queue = %queue, tag = %self.tag, "consuming write events");
        let mut watchdog = tokio::time::interval(Duration::from_secs(1));
        let mut watch = Watch::default();
        let exit = loop {
            let first = tokio::select! {
                biased;
                () = stop.cancelled() => break WorkerExit::Stopped,
                _ = watchdog.tick() => {
                    if watch.dead(conn) {
                        break WorkerExit::Failed(WorkerFailure::ConnectionLost);
                    }
                    continue;
                }
                next = consumer.next() => next,
            };
            let first = match first {
                Some(Ok(delivery)) => delivery,
                Some(Err(e)) => {
                    tracing::warn!(queue = %queue, error = %e, "event consumer interrupted; waiting for recovery");
                    match tokio::time::timeout(Duration::from_secs(5), channel.wait_for_recovery(e))
                        .await
                    {
                        Ok(Err(source)) => {
                            break WorkerExit::Failed(WorkerFailure::Amqp {
                                what: "consuming",
                                source,
                            });
                        }
                        Ok(Ok(())) | Err(_) => continue,
                    }
                }
                None => break WorkerExit::Failed(WorkerFailure::ConsumerCancelled),
            };
            let batch = self.fill(first, &mut consumer).await;
            match self.settle(&channel, batch, stop).await {
                Ok(()) => {}
                Err(BatchError::Stopped) => break WorkerExit::Stopped,
                Err(BatchError::Publish(e)) => {
                    tracing::warn!(error = %e, "broadcasting invalidations failed; the batch will be redelivered");
                    break WorkerExit::Failed(WorkerFailure::ConnectionLost);
                }
                Err(BatchError::Ack(source)) => {
                    break WorkerExit::Failed(WorkerFailure::Amqp {
                        what: "acking a batch",
                        source,
                    });
                }
            }
        };
        let cancel = channel.basic_cancel(self.tag.as_str().into(), BasicCancelOptions::default());
        if let Err(e) = setup("cancelling the consumer", cancel).await {
            tracing::debug!(error = %e, "consumer cancel");
        }
        // Unacked deliveries return to the queue when the channel closes.
        if let Err(e) = setup(
            "closing the channel",
            channel.close(200, "tercero done".into()),
        )
        .await
        {
            tracing::debug!(error = %e, "channel close");
        }
        exit
    }

    fn broker(&self) -> &'static str {
        "tercero"
    }

    fn tag(&self) -> &str {
        &self.tag
    }
}

impl EventConsumer {
    /// Opens the channel, declares the event queue, and consumes with a prefetch of one
    /// batch; invalidations are confirmed by the broker before their batch is acked.
    async fn consume(
        &self,
        conn: &Connection,
        queue: &str,
    ) -> Result<(Channel, Consumer), WorkerFailure> {
        let channel = setup("opening a channel", conn.create_channel()).await?;
        setup(
            "declaring the event queue",
            topology::declare_events(&channel, &self.amqp, EVENT_QUEUE_KEY, EVENT_BINDING),
        )
        .await?;
        // Invalidations are confirmed before the batch is acked.
        consume_on(channel, queue, &self.tag, self.config.batch, true).await
    }

    /// The batch `first` opens: deliveries already waiting and those arriving within
    /// `wait`, up to `batch`. A consumer error only ends the batch early: lapin recovers
    /// the consumer, or the watchdog ends the run on a dead connection.
    async fn fill(&self, first: Delivery, consumer: &mut Consumer) -> Vec<Delivery> {
        let mut batch = vec![first];
        let until = tokio::time::Instant::now() + self.config.wait.duration();
        while batch.len() < usize::from(self.config.batch) {
            match tokio::time::timeout_at(until, consumer.next()).await {
                Ok(Some(Ok(delivery))) => batch.push(delivery),
                Ok(_) | Err(_) => break,
            }
        }
        batch
    }

    /// Applies, broadcasts and acks one batch. Deliveries that are not write events are
    /// dead-lettered at once; the database is retried until it answers or the node stops.
    async fn settle(
        &self,
        channel: &Channel,
        batch: Vec<Delivery>,
        stop: &CancellationToken,
    ) -> Result<(), BatchError> {
        let mut events = Vec::with_capacity(batch.len());
        let mut last = None;
        for delivery in batch {
            if let Err(why) =
                self.key
                    .verify(Purpose::WriteEvent, &delivery.properties, &delivery.data)
            {
                let error = BedsError::new(
                    ErrorCode::UntrustedOrigin,
                    format!("a write event not signed by a node of this deployment: {why}"),
                );
                self.park(channel, &delivery, error)
                    .await
                    .map_err(BatchError::Ack)?;
                continue;
            }
            match parse(&delivery.data) {
                Ok(event) => {
                    last = Some(delivery.delivery_tag);
                    events.push(event);
                }
                Err(e) => {
                    let error =
                        BedsError::new(ErrorCode::Undecodable, format!("not a write event: {e}"));
                    self.park(channel, &delivery, error)
                        .await
                        .map_err(BatchError::Ack)?;
                }
            }
        }
        let Some(last) = last else {
            return Ok(());
        };
        let effects: Vec<_> = events
            .iter()
            .map(|e| effect(self.domains, &self.marks, e))
            .collect();
        let at = crate::value::now();
        let started = std::time::Instant::now();
        let apply = || self.store.apply_events(&effects);
        let new = until_written(stop, "applying a batch of events", apply)
            .await
            .ok_or(BatchError::Stopped)?;
        tracing::debug!(events = events.len(), new, "batch applied");
        // Every delivered event is invalidated, duplicates once per batch: an event whose
        // effect an earlier, unacked delivery committed still gets its broadcast.
        let applied = started.elapsed();
        let mut seen = std::collections::HashSet::new();
        let mut records = Vec::new();
        let bodies: Vec<(String, Vec<u8>, String)> = events
            .iter()
            .zip(&effects)
            .filter(|(e, _)| seen.insert(e.id))
            .map(|(event, effect)| {
                let inv = invalidation(event, &self.origin);
                if self.lineage.sampled(event.correlation_id) {
                    records.extend(self.records(event, effect, &inv, at, applied));
                }
                let body = serde_json::to_vec(&inv).expect("an invalidation serialises");
                (
                    inv.routing_key(&self.amqp.queue_tag),
                    body,
                    inv.id.to_string(),
                )
            })
            .collect();
        futures_util::future::try_join_all(bodies.iter().map(|(key, body, id)| {
            let properties = BasicProperties::default()
                .with_content_type("application/json".into())
                .with_message_id(id.as_str().into());
            let properties = self.key.sign(Purpose::Invalidation, properties, body);
            publish(channel, EXCHANGE, key, false, body, properties)
        }))
        .await
        .map_err(BatchError::Publish)?;
        channel
            .basic_ack(last, BasicAckOptions { multiple: true })
            .await
            .map_err(BatchError::Ack)?;
        for record in records {
            self.lineage.record(record);
        }
        Ok(())
    }

    /// The lineage of one applied event: its effect on the counters (applied with its
    /// batch, in `took`) and the invalidation broadcast for it, both caused by the event.
    fn records(
        &self,
        event: &WriteEvent,
        effect: &EventEffect,
        inv: &Invalidation,
        at: Timestamp,
        took: Duration,
    ) -> [Record; 2] {
        let effect = Record::new(
            RecordType::Effect,
            Uuid::now_v7(),
            event.correlation_id,
            Some(event.id),
            event.depth + 1,
            self.origin.clone(),
            format!("tercero.counters ({} changes)", effect.deltas.len()),
            at,
        )
        .took(took)
        .ended(None);
        let sent = Record::new(
            RecordType::Invalidation,
            inv.id,
            inv.correlation_id,
            Some(inv.causation_id),
            inv.depth,
            inv.origin.clone(),
            inv.routing_key(&self.amqp.queue_tag)[self.amqp.queue_tag.len()..].to_string(),
            crate::value::now(),
        )
        .ended(None);
        [effect, sent]
    }

    /// Publishes a delivery that is not a trusted write event (unsigned by this deployment,
    /// or undecodable) to the queue's dead-letter queue with `error` in its headers (signed,
    /// so `beds dlq` trusts the verdict), and acks it; it changes no counter and is not
    /// broadcast. Published explicitly: the broker's own dead-lettering would keep the
    /// event's `evt.*` routing key, which binds nothing on `beds.dlx`. If the publish fails
    /// the delivery is requeued, so a later attempt parks it; nothing is dropped.
    async fn park(
        &self,
        channel: &Channel,
        delivery: &Delivery,
        error: BedsError,
    ) -> Result<(), lapin::Error> {
        let queue = self.amqp.queue(EVENT_QUEUE_KEY);
        let code = serde_json::to_value(error.code).unwrap_or_default();
        let class = serde_json::to_value(error.class).unwrap_or_default();
        let (code, class) = (
            code.as_str().unwrap_or_default(),
            class.as_str().unwrap_or_default(),
        );
        tracing::warn!(
            routing_key = %delivery.routing_key,
            reason = %error.message,
            code,
            "dead-lettering a delivery of the event queue"
        );
        let mut table = foreign_headers(&delivery.properties);
        for (name, text) in [
            (headers::REASON, error.message.as_str()),
            (headers::ERROR_CLASS, class),
            (headers::ERROR_CODE, code),
        ] {
            table.insert(name.into(), AMQPValue::LongString(text.into()));
        }
        table.insert(headers::ATTEMPT.into(), AMQPValue::LongLongInt(1));
        let properties = delivery
            .properties
            .clone()
            .with_headers(table)
            .with_delivery_mode(2);
        let properties = self
            .key
            .sign(Purpose::DeadLetter, properties, &delivery.data);
        let parked = publish(
            channel,
            DEAD_LETTER_EXCHANGE,
            &queue,
            true,
            &delivery.data,
            properties,
        )
        .await;
        match parked {
            Ok(Published::Delivered) => delivery.ack(BasicAckOptions::default()).await?,
            Ok(Published::Unroutable) | Err(_) => {
                tracing::warn!(
                    "the dead-letter queue did not take it; requeued for a later attempt"
                );
                delivery
                    .nack(BasicNackOptions {
                        requeue: true,
                        ..BasicNackOptions::default()
                    })
                    .await?
            }
        };
        Ok(())
    }
}
