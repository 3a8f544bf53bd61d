//! The wire as a client in another language sees it: raw JSON bytes over AMQP, with the
//! properties such a client sets. The golden files in `tests/wire/` (see its README) are
//! replayed here against a real node, in file order.

use std::time::Duration;

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use serde_json::Value as Json;

use crate::support::TestEnv;

/// How long a reply or a dead letter may take before the test fails.
const WAIT: Duration = Duration::from_secs(10);

/// A bare AMQP peer: publishes bytes, takes replies from its own queue and dead letters
/// from the node's dead-letter queues.
pub struct Peer {
    _conn: Connection,
    channel: Channel,
    pub reply_queue: String,
    replies: lapin::Consumer,
}

impl Peer {
    pub async fn connect(env: &TestEnv) -> Peer {
        let conn = Connection::connect(&env.config.amqp.url, ConnectionProperties::default())
            .await
            .unwrap_or_else(|e| panic!("the test needs RabbitMQ at {}: {e}", env.config.amqp.url));
        let channel = conn.create_channel().await.expect("channel");
        let name = format!("test.wire.{}", uuid::Uuid::now_v7().simple());
        let (reply_queue, replies) = beds_runtime::topology::reply_queue(&channel, &name)
            .await
            .expect("reply queue");
        Peer {
            _conn: conn,
            channel,
            reply_queue,
            replies,
        }
    }

    /// What a client sets: JSON, its reply queue and a correlation id to match on.
    pub fn props(&self, correlation: &str) -> BasicProperties {
        BasicProperties::default()
            .with_content_type("application/json".into())
            .with_reply_to(self.reply_queue.as_str().into())
            .with_correlation_id(correlation.into())
    }

    /// Publishes `body` to `beds.events` with `routing_key`.
    pub async fn send(&self, routing_key: &str, body: &[u8], props: BasicProperties) {
        self.channel
            .basic_publish(
                "beds.events".into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                body,
                props,
            )
            .await
            .expect("publish");
    }

    /// The next reply, which must carry `correlation` as its AMQP correlation id.
    pub async fn reply(&mut self, correlation: &str) -> Json {
        let delivery = next(&mut self.replies, "a reply").await;
        assert_eq!(
            delivery
                .properties
                .correlation_id()
                .as_ref()
                .map(|c| c.as_str()),
            Some(correlation),
            "the reply carries the request's AMQP correlation id"
        );
        serde_json::from_slice(&delivery.data).expect("replies are JSON")
    }

    /// Sends `body` with the usual properties and returns the reply.
    pub async fn request(&mut self, routing_key: &str, body: &[u8]) -> Json {
        let correlation = uuid::Uuid::now_v7().to_string();
        self.send(routing_key, body, self.props(&correlation)).await;
        self.reply(&correlation).await
    }

    /// Takes the messages of a dead-letter queue as they arrive.
    pub async fn dead_letters(&self, queue: &str) -> lapin::Consumer {
        self.channel
            .basic_consume(
                queue.into(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("consume the dead-letter queue")
    }
}

/// The next delivery of `consumer` within [`WAIT`].
pub async fn next(consumer: &mut lapin::Consumer, what: &str) -> Delivery {
    tokio::time::timeout(WAIT, consumer.next())
        .await
        .unwrap_or_else(|_| panic!("{what} within {WAIT:?}"))
        .expect("consumer open")
        .expect("delivery")
}

/// A text header of a delivery.
pub fn header(delivery: &Delivery, key: &str) -> Option<String> {
    match delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(key).cloned())
    {
        Some(AMQPValue::LongString(s)) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        _ => None,
    }
}
