//! The ceiling: a raw lapin request/reply echo with the read lane's settings (same queue
//! declaration, workers, prefetch, reply properties, reply-then-ack), and no decoding,
//! validation or database. The reply wraps the request body unparsed, so the BEDS client
//! can drive it exactly as it drives a node.

use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};

use beds_runtime::Config;
use beds_runtime::topology::{self, READ_KEY};

const NIL: &str = "00000000-0000-0000-0000-000000000000";

/// Serves `{tag}rec.read` until the process is killed.
pub async fn serve(config: Config) -> Result<(), String> {
    let conn = Connection::connect(&config.amqp.url, ConnectionProperties::default())
        .await
        .map_err(|e| {
            format!(
                "echo: cannot reach RabbitMQ at {}: {e}",
                config.amqp.redacted_url()
            )
        })?;
    let pool = config.brokers.read;
    let mut workers = Vec::new();
    for w in 0..pool.workers {
        let channel = conn.create_channel().await.map_err(|e| e.to_string())?;
        topology::declare(&channel, &config.amqp, &[READ_KEY])
            .await
            .map_err(|e| e.to_string())?;
        channel
            .basic_qos(pool.prefetch, BasicQosOptions::default())
            .await
            .map_err(|e| e.to_string())?;
        let queue = config.amqp.queue(READ_KEY);
        let mut consumer = channel
            .basic_consume(
                queue.as_str().into(),
                format!("echo-{w}").as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| e.to_string())?;
        workers.push(tokio::spawn(async move {
            while let Some(Ok(delivery)) = consumer.next().await {
                let channel = channel.clone();
                // One task per delivery, as the brokers do.
                tokio::spawn(async move {
                    let props = &delivery.properties;
                    let (Some(reply_to), Some(correlation)) =
                        (props.reply_to().clone(), props.correlation_id().clone())
                    else {
                        let _ = delivery.ack(BasicAckOptions::default()).await;
                        return;
                    };
                    let mut body = Vec::with_capacity(delivery.data.len() + 160);
                    body.extend_from_slice(
                        format!(
                            r#"{{"v":1,"id":"{NIL}","correlation_id":"{NIL}","causation_id":"{NIL}","status":"ok","data":"#
                        )
                        .as_bytes(),
                    );
                    body.extend_from_slice(&delivery.data);
                    body.push(b'}');
                    let properties = BasicProperties::default()
                        .with_content_type("application/json".into())
                        .with_correlation_id(correlation)
                        .with_message_id(NIL.into());
                    let published = channel
                        .basic_publish(
                            "".into(),
                            reply_to,
                            BasicPublishOptions::default(),
                            &body,
                            properties,
                        )
                        .await;
                    if published.is_ok() {
                        let _ = delivery.ack(BasicAckOptions::default()).await;
                    }
                });
            }
        }));
    }
    for w in workers {
        let _ = w.await;
    }
    Ok(())
}
