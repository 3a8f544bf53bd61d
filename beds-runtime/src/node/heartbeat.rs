//! The node's heartbeat: every `telemetry.heartbeat` a signed [`NodeStatus`] on `beds.events`
//! under `{tag}log.status`, for the admin role (wiki/operations.md). Not confirmed and not
//! mandatory: a lost heartbeat is replaced by the next, and with no admin running nothing
//! is queued.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Channel};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::lanes::Lanes;
use super::readiness::Readiness;
use super::{Counters, Health};
use crate::envelope::Origin;
use crate::ingress::lane::Lane;
use crate::telemetry::http::Probe;
use crate::telemetry::metrics::Metrics;
use crate::telemetry::status::{
    IN_FLIGHT_REPORTED, IN_FLIGHT_REPORTED_AFTER_MS, NodeHealth, NodeStatus, STATUS_KEY,
    STATUS_VERSION, Versions,
};
use crate::transport::link::Link;
use crate::transport::names::EXCHANGE;
use crate::transport::signing::{Purpose, ServiceKey};

/// How long handing one heartbeat to the broker may take.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(2);

pub(super) struct Heartbeat {
    pub link: Arc<Link>,
    pub queue_tag: String,
    pub origin: Origin,
    pub role: &'static str,
    pub every: Duration,
    pub key: ServiceKey,
    /// This run's id: the heartbeats' correlation and causation.
    pub run_id: Uuid,
    pub started_at: DateTime<Utc>,
    pub versions: Versions,
    pub lanes: Arc<Lanes>,
    pub lane_keys: &'static [Lane],
    pub metrics: Arc<Metrics>,
    pub readiness: Arc<Readiness>,
    pub counters: Arc<Counters>,
}

impl Heartbeat {
    pub async fn run(self, stop: CancellationToken) {
        let mut channel: Option<Channel> = None;
        let mut tick = tokio::time::interval(self.every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            let status = self.status().await;
            if let Err(e) = self.publish(&mut channel, &status).await {
                tracing::debug!(error = %e, "publishing the heartbeat failed; the next one follows");
                channel = None;
            }
        }
        if let Some(ch) = channel {
            let _ = tokio::time::timeout(PUBLISH_TIMEOUT, ch.close(200, "stop".into())).await;
        }
    }

    /// What the node says about itself now.
    pub async fn status(&self) -> NodeStatus {
        let health = Health::of(&self.link, &self.counters);
        let checks = self.readiness.checks().await;
        NodeStatus {
            v: STATUS_VERSION,
            id: Uuid::now_v7(),
            correlation_id: self.run_id,
            causation_id: self.run_id,
            depth: 0,
            origin: self.origin.clone(),
            node: self.origin.node.clone(),
            role: self.role.to_string(),
            env: self.origin.env.clone(),
            version: self.versions.clone(),
            started_at: self.started_at,
            sent_at: Utc::now(),
            heartbeat_ms: self.every.as_millis() as u64,
            health: NodeHealth {
                connected: health.connected,
                workers_down: health.workers_down,
                restarts: health.restarts,
                ready: checks.iter().all(|c| c.failed.is_none()),
                checks: checks
                    .into_iter()
                    .map(|c| {
                        let state = c.failed.unwrap_or_else(|| "ok".into());
                        (c.name.to_string(), state)
                    })
                    .collect(),
            },
            lanes: self.lanes.status(),
            in_flight: self.metrics.deliveries().older_than(
                Duration::from_millis(IN_FLIGHT_REPORTED_AFTER_MS),
                IN_FLIGHT_REPORTED,
            ),
            counters: self
                .lane_keys
                .iter()
                .map(|&lane| self.metrics.lane_counters(lane))
                .collect(),
        }
    }

    async fn publish(
        &self,
        channel: &mut Option<Channel>,
        status: &NodeStatus,
    ) -> Result<(), HeartbeatError> {
        let ch = match channel {
            Some(ch) if ch.status().connected() => ch,
            slot => {
                let conn = self.link.get().await;
                if !conn.status().connected() {
                    return Err(HeartbeatError::Disconnected);
                }
                let open = tokio::time::timeout(PUBLISH_TIMEOUT, conn.create_channel());
                slot.insert(open.await.map_err(|_| HeartbeatError::TimedOut)??)
            }
        };
        let body = serde_json::to_vec(status).expect("statuses serialize");
        let props = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_message_id(status.id.to_string().into())
            .with_correlation_id(self.run_id.to_string().into())
            .with_timestamp(status.sent_at.timestamp() as u64);
        let props = self.key.sign(Purpose::Status, props, &body);
        let key = format!("{}{STATUS_KEY}", self.queue_tag);
        let send = ch.basic_publish(
            EXCHANGE.into(),
            key.as_str().into(),
            BasicPublishOptions::default(),
            &body,
            props,
        );
        tokio::time::timeout(PUBLISH_TIMEOUT, send)
            .await
            .map_err(|_| HeartbeatError::TimedOut)??;
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
enum HeartbeatError {
    #[error("the broker connection is down")]
    Disconnected,
    #[error("the broker did not take it within {} s", PUBLISH_TIMEOUT.as_secs())]
    TimedOut,
    #[error(transparent)]
    Amqp(#[from] lapin::Error),
}
