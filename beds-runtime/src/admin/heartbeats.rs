//! The admin's consumer of node heartbeats: the queue `{tag}status`, bound to
//! `{tag}log.status` on `beds.events`, with a short message TTL so that heartbeats do not
//! pile up while no admin runs. Each signed heartbeat updates the node table.

use std::sync::Arc;

use lapin::Channel;
use lapin::message::Delivery;
use lapin::options::{QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};

use super::diag::Diagnostics;
use crate::config::AmqpConfig;
use crate::ingress::settle::ack;
use crate::node::consumer::Handler;
use crate::telemetry::status::{NodeStatus, STATUS_KEY};
use crate::transport::names::EXCHANGE;
use crate::transport::signing::{Purpose, ServiceKey};

/// The queue (before the queue tag) heartbeats are consumed from.
pub const STATUS_QUEUE: &str = "status";

/// How long a heartbeat waits in the queue: a few periods at most, since only the newest
/// matters. Fixed, so every admin declares the queue with the same arguments.
const STATUS_TTL_MS: i64 = 10_000;

pub(crate) struct Heartbeats {
    pub amqp: AmqpConfig,
    pub key: ServiceKey,
    pub diagnostics: Arc<Diagnostics>,
}

impl Handler for Heartbeats {
    async fn declare(&self, channel: &Channel) -> lapin::Result<()> {
        let queue = self.amqp.queue(STATUS_QUEUE);
        let mut args = FieldTable::default();
        args.insert(
            "x-message-ttl".into(),
            AMQPValue::LongLongInt(STATUS_TTL_MS),
        );
        channel
            .queue_declare(queue.as_str().into(), QueueDeclareOptions::default(), args)
            .await?;
        channel
            .queue_bind(
                queue.as_str().into(),
                EXCHANGE.into(),
                self.amqp.queue(STATUS_KEY).as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
    }

    async fn handle(self: Arc<Self>, _channel: Channel, delivery: Delivery) {
        match self
            .key
            .verify(Purpose::Status, &delivery.properties, &delivery.data)
        {
            Err(why) => tracing::warn!(
                why = %why,
                "ignoring a heartbeat not signed with the service key (untrusted_origin)"
            ),
            Ok(()) => match serde_json::from_slice::<NodeStatus>(&delivery.data) {
                Ok(status) => self.diagnostics.observe(status),
                Err(e) => tracing::warn!(error = %e, "ignoring a heartbeat that does not decode"),
            },
        }
        ack(&delivery).await;
    }
}
