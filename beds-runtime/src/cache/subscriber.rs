//! A node's invalidation traffic on one channel of its own: an exclusive, auto-delete queue
//! of its own (`beds.inv.{node}.{unique}`) bound to `{tag}inv.#` on `beds.events`, and the
//! publisher of this node's own invalidations. Invalidations sent while the connection is
//! down are lost, so the cache is cleared whenever it comes back: when lapin recovers it
//! (queue and consumer included), or when the run ends on a dead connection and the next
//! one declares a new queue on the replacement.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Channel, Connection, Consumer, Event};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{Cache, Invalidation};
use crate::catalog::Catalog;
use crate::lineage::{Lineage, Record, RecordType};
use crate::transport::link::{Link, Watch};
use crate::transport::names::{self, EXCHANGE};
use crate::transport::signing::{Purpose, ServiceKey};
use crate::transport::topology::private_subscription;

/// Where the subscriber runs and what it serves.
pub(crate) struct Subscriber {
    pub cache: Arc<Cache>,
    pub catalog: &'static Catalog,
    pub link: Arc<Link>,
    pub queue_tag: String,
    pub node: String,
    /// Set to true once the first queue is bound, so a node starts only when it hears
    /// the other nodes' invalidations.
    pub ready: watch::Sender<bool>,
    /// Signs this node's invalidations and verifies received ones.
    pub key: ServiceKey,
    /// Received invalidations refused for want of a valid signature.
    pub untrusted: Arc<AtomicU64>,
    /// Records each invalidation of a sampled conversation this node applies.
    pub lineage: Lineage,
}

/// How long declaring the queue (or closing its channel) may take.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);

/// How long handing one invalidation to the broker may take before it is dropped.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(1);

impl Subscriber {
    /// Runs until `stop`: one subscription per live connection, re-declared after a loss.
    pub async fn run(self, mut outbox: mpsc::Receiver<Invalidation>, stop: CancellationToken) {
        let mut first = true;
        loop {
            let conn = tokio::select! {
                conn = self.link.live() => conn,
                () = stop.cancelled() => return,
            };
            match tokio::time::timeout(SETUP_TIMEOUT, self.subscribe(&conn)).await {
                Ok(Ok((channel, consumer))) => {
                    if !first {
                        self.cache.clear();
                    }
                    first = false;
                    self.ready.send_replace(true);
                    self.serve(&conn, &channel, consumer, &mut outbox, &stop)
                        .await;
                    if stop.is_cancelled() {
                        return;
                    }
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "subscribing to invalidations failed"),
                Err(_) => tracing::warn!("subscribing to invalidations timed out"),
            }
            // Pause before the next attempt; the link reconnects meanwhile.
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(500)) => {}
                () = stop.cancelled() => return,
            }
        }
    }

    async fn subscribe(&self, conn: &Connection) -> lapin::Result<(Channel, Consumer)> {
        let channel = conn.create_channel().await?;
        let name = names::invalidation_queue(&self.node, &Uuid::now_v7().simple().to_string());
        let consumer =
            private_subscription(&channel, &name, &Invalidation::binding(&self.queue_tag)).await?;
        Ok((channel, consumer))
    }

    /// Applies received invalidations and publishes queued ones until the connection dies,
    /// the consumer ends or `stop` fires.
    async fn serve(
        &self,
        conn: &Connection,
        channel: &Channel,
        mut consumer: Consumer,
        outbox: &mut mpsc::Receiver<Invalidation>,
        stop: &CancellationToken,
    ) {
        let mut watchdog = tokio::time::interval(Duration::from_secs(1));
        let mut watch = Watch::default();
        // lapin may recover the connection by itself, queue, binding and consumer included,
        // without the consumer noticing; invalidations sent meanwhile are lost all the same.
        let mut events = std::pin::pin!(conn.events_listener());
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                Some(event) = events.next() => {
                    if matches!(event, Event::Connected) {
                        tracing::info!("connection recovered; the read cache is cleared");
                        self.cache.clear();
                        // The connection is back before this channel's queue, binding and
                        // consumer are: what the node cached meanwhile may have missed an
                        // invalidation, so clear again once the channel is recovered.
                        let waited = tokio::time::Instant::now();
                        while channel.status().initializing() && waited.elapsed() < SETUP_TIMEOUT {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        self.cache.clear();
                    }
                }
                _ = watchdog.tick() => {
                    if watch.dead(conn) {
                        break;
                    }
                }
                Some(inv) = outbox.recv() => self.publish(channel, &inv).await,
                next = consumer.next() => match next {
                    Some(Ok(delivery)) => self.receive(&delivery),
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "invalidation consumer interrupted");
                        break;
                    }
                    None => break,
                },
            }
        }
        // Bounded: on a connection lapin has abandoned, closing could wait for ever.
        let close = channel.close(200, "invalidations done".into());
        if let Ok(Err(e)) = tokio::time::timeout(SETUP_TIMEOUT, close).await {
            tracing::debug!(error = %e, "invalidation channel close");
        }
    }

    /// Publishes without a confirm: losing one costs staleness up to the TTL, and tercero
    /// re-broadcasts every committed write from the durable events.
    async fn publish(&self, channel: &Channel, inv: &Invalidation) {
        let body = match serde_json::to_vec(inv) {
            Ok(body) => body,
            Err(e) => {
                tracing::warn!(error = %e, "encoding an invalidation failed");
                return;
            }
        };
        let props = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_message_id(inv.id.to_string().into());
        let props = self.key.sign(Purpose::Invalidation, props, &body);
        // After lapin recovers the connection the node is ready again while this channel
        // may still be reconnecting; a publish then fails at once and the invalidation
        // is lost, so wait (within the same bound) for the channel instead.
        let waited = tokio::time::Instant::now();
        while channel.status().initializing() {
            if waited.elapsed() >= PUBLISH_TIMEOUT {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let send = channel.basic_publish(
            EXCHANGE.into(),
            inv.routing_key(&self.queue_tag).as_str().into(),
            BasicPublishOptions::default(),
            &body,
            props,
        );
        // Bounded, so a blocked connection cannot stop this node applying invalidations.
        match tokio::time::timeout(PUBLISH_TIMEOUT, send).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "publishing an invalidation failed"),
            Err(_) => tracing::warn!("publishing an invalidation timed out; dropped"),
        }
    }

    /// Applies a signed invalidation. The queue is exclusive and consumed without acks, so
    /// it has no dead-letter route: a forged or unsigned one is dropped, counted and logged.
    fn receive(&self, delivery: &Delivery) {
        let body = &delivery.data;
        if let Err(why) = self
            .key
            .verify(Purpose::Invalidation, &delivery.properties, body)
        {
            let n = self.untrusted.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::warn!(
                untrusted = n,
                routing_key = %delivery.routing_key,
                why = %why,
                "dropping an invalidation not signed by a node of this deployment (untrusted_origin)"
            );
            return;
        }
        let inv = match serde_json::from_slice::<Invalidation>(body) {
            Ok(inv) if inv.kind == super::KIND => inv,
            Ok(_) | Err(_) => {
                tracing::debug!("ignoring a message on the invalidation queue that is not one");
                return;
            }
        };
        // This node dropped its own entry when the write committed.
        if inv.origin.node == self.node && inv.origin.service == super::SERVICE {
            return;
        }
        if let Ok(routes) = self.catalog.route(&inv.domain, &inv.template) {
            let at = crate::value::now();
            self.cache.apply(&inv, routes.meta.domain, routes.meta.name);
            if self.lineage.sampled(inv.correlation_id) {
                self.lineage.record(
                    Record::new(
                        RecordType::Effect,
                        Uuid::now_v7(),
                        inv.correlation_id,
                        Some(inv.id),
                        inv.depth + 1,
                        self.lineage.origin().clone(),
                        format!("cache.invalidate {}.{}", inv.domain, inv.template),
                        at,
                    )
                    .ended(None),
                );
            }
        }
    }
}
