//! The AMQP topology BEDS declares: exchanges, work queues and their dead-letter queues.

use lapin::options::{
    BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, ExchangeKind};

use crate::config::{AmqpConfig, QueueType};
use crate::transport::names::{DEAD_LETTER_EXCHANGE, EXCHANGE, dead_letter_queue, retry_queue};
pub use crate::transport::names::{READ_KEY, WRITE_KEY};
use crate::transport::{ConnectError, connect};

/// Declares the exchanges and, for each base key, the durable work queue
/// `{tag}{key}` bound by the same name, dead-lettering to `{tag}{key}.dlq`.
///
/// The queue tag prefixes the routing key as well as the queue: environments sharing a
/// broker then never receive each other's messages.
pub async fn declare(channel: &Channel, amqp: &AmqpConfig, keys: &[&str]) -> lapin::Result<()> {
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    for exchange in [EXCHANGE, DEAD_LETTER_EXCHANGE] {
        channel
            .exchange_declare(
                exchange.into(),
                ExchangeKind::Topic,
                durable,
                FieldTable::default(),
            )
            .await?;
    }
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    for key in keys {
        let queue = amqp.queue(key);
        work_queue(channel, amqp, &queue, &queue).await?;
        if *key == WRITE_KEY {
            // The retry lane: messages wait out their per-message TTL here, then dead-letter
            // back to the work queue.
            let mut args = FieldTable::default();
            args.insert(
                "x-dead-letter-exchange".into(),
                AMQPValue::LongString(EXCHANGE.into()),
            );
            args.insert(
                "x-dead-letter-routing-key".into(),
                AMQPValue::LongString(queue.as_str().into()),
            );
            channel
                .queue_declare(retry_queue(&queue).as_str().into(), durable, args)
                .await?;
        }
    }
    Ok(())
}

/// Declares the exchanges and the durable queue `{tag}{key}` of a consumer of write
/// events, bound by `{tag}{binding}` and dead-lettering like a work queue.
pub async fn declare_events(
    channel: &Channel,
    amqp: &AmqpConfig,
    key: &str,
    binding: &str,
) -> lapin::Result<()> {
    declare(channel, amqp, &[]).await?;
    work_queue(channel, amqp, &amqp.queue(key), &amqp.queue(binding)).await
}

/// Binds the queue `{tag}{key}` to the main exchange by one more `{tag}{binding}`.
pub async fn bind(
    channel: &Channel,
    amqp: &AmqpConfig,
    key: &str,
    binding: &str,
) -> lapin::Result<()> {
    channel
        .queue_bind(
            amqp.queue(key).as_str().into(),
            EXCHANGE.into(),
            amqp.queue(binding).as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
}

/// A durable queue of the configured type bound to the main exchange by `binding`, its
/// rejected messages dead-lettered to `{queue}.dlq`.
async fn work_queue(
    channel: &Channel,
    amqp: &AmqpConfig,
    queue: &str,
    binding: &str,
) -> lapin::Result<()> {
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    let dlq = dead_letter_queue(queue);
    channel
        .queue_declare(dlq.as_str().into(), durable, FieldTable::default())
        .await?;
    channel
        .queue_bind(
            dlq.as_str().into(),
            DEAD_LETTER_EXCHANGE.into(),
            queue.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut args = FieldTable::default();
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(DEAD_LETTER_EXCHANGE.into()),
    );
    if amqp.queue_type == QueueType::Quorum {
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(i64::from(amqp.delivery_limit)),
        );
    }
    channel.queue_declare(queue.into(), durable, args).await?;
    channel
        .queue_bind(
            queue.into(),
            EXCHANGE.into(),
            binding.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
}

/// A private reply queue that disappears with its connection, and a consumer on it that
/// needs no acks (a reply is worth nothing once its caller is gone).
pub async fn reply_queue(
    channel: &Channel,
    name: &str,
) -> lapin::Result<(String, lapin::Consumer)> {
    let queue = declare_private(channel, name).await?;
    let name = queue.name().to_string();
    let consumer = consume_unacked(channel, &name).await?;
    Ok((name, consumer))
}

/// A private queue `name` that disappears with its connection, bound on the events exchange
/// by `binding`, and a consumer on it that needs no acks (what it carries is only worth
/// something while its subscriber is connected).
pub async fn private_subscription(
    channel: &Channel,
    name: &str,
    binding: &str,
) -> lapin::Result<lapin::Consumer> {
    let queue = declare_private(channel, name).await?;
    channel
        .queue_bind(
            queue.name().as_str().into(),
            EXCHANGE.into(),
            binding.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    consume_unacked(channel, queue.name().as_str()).await
}

/// A consumer on `queue` whose deliveries need no acks.
pub async fn consume_unacked(channel: &Channel, queue: &str) -> lapin::Result<lapin::Consumer> {
    channel
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
}

async fn declare_private(channel: &Channel, name: &str) -> lapin::Result<lapin::Queue> {
    channel
        .queue_declare(
            name.into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
}

/// Why the topology could not be removed.
#[derive(Debug, thiserror::Error)]
pub enum RemoveError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("removing queues failed: {0}")]
    Amqp(#[from] lapin::Error),
}

/// Deletes the work, retry and dead-letter queues of `keys` (for tests and throwaway
/// environments; a production tag is never removed by BEDS itself).
pub async fn remove(amqp: &AmqpConfig, keys: &[&str]) -> Result<(), RemoveError> {
    let conn = connect(&amqp.url, &amqp.tls, "beds topology cleanup").await?;
    let channel = conn.create_channel().await?;
    for key in keys {
        let queue = amqp.queue(key);
        for name in [dead_letter_queue(&queue), retry_queue(&queue), queue] {
            channel
                .queue_delete(
                    name.as_str().into(),
                    lapin::options::QueueDeleteOptions::default(),
                )
                .await?;
        }
    }
    Ok(conn.close(200, "cleanup done".into()).await?)
}
