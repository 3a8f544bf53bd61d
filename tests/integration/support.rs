//! Test environment: real RabbitMQ, real SQLite, a private queue tag and data directory
//! per test, and the queues removed again when the test ends (even by panic).

use std::path::{Path, PathBuf};
use std::time::Duration;

use beds_runtime::topology::{READ_KEY, WRITE_KEY};
use beds_runtime::{Client, ClientOptions, Config, Server};
use futures_util::StreamExt;
use lapin::options::{BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use serde_json::Value as Json;
use sqlx::SqlitePool;
use sqlx::sqlite::SqliteConnectOptions;

pub fn repo_config_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config/beds.yaml")
}

pub struct TestEnv {
    pub config: Config,
    _data: tempfile::TempDir,
}

impl TestEnv {
    /// A configuration of the repository's config file with the `test` overlay, a unique
    /// queue tag and a temporary data directory.
    pub fn new(name: &str) -> TestEnv {
        // Server errors show in the test output; RUST_LOG widens it.
        beds_runtime::telemetry::init("error,lapin=off");
        let mut env = vec![("BEDS_ENV".to_string(), "test".to_string())];
        if let Ok(url) = std::env::var("BEDS_AMQP__URL") {
            env.push(("BEDS_AMQP__URL".into(), url));
        }
        let mut config =
            Config::load_with_env(&repo_config_path(), env).expect("repository config loads");
        let data = tempfile::tempdir().expect("temp dir");
        config.database.data_dir = data.path().to_path_buf();
        config.amqp.queue_tag = format!("test.{name}.{}.", uuid::Uuid::now_v7().simple());
        TestEnv {
            config,
            _data: data,
        }
    }

    pub async fn start(&self) -> Server {
        Server::start(&self.config, &beds::CATALOG)
            .await
            .unwrap_or_else(|e| panic!("the test needs RabbitMQ and SQLite: {e}"))
    }

    pub async fn client(&self) -> Client {
        Client::connect(ClientOptions::from_config(&self.config, "tests"))
            .await
            .unwrap_or_else(|e| panic!("the test needs RabbitMQ: {e}"))
    }

    /// The node's SQLite database, for asserting rows.
    pub async fn db(&self) -> SqlitePool {
        SqlitePool::connect_with(
            SqliteConnectOptions::new().filename(self.config.database.sqlite_path()),
        )
        .await
        .expect("open the node's SQLite file")
    }

    pub fn queue(&self, key: &str) -> String {
        self.config.amqp.queue(key)
    }

    pub async fn raw(&self) -> Raw {
        let conn = Connection::connect(&self.config.amqp.url, ConnectionProperties::default())
            .await
            .unwrap_or_else(|e| panic!("the test needs RabbitMQ at {}: {e}", self.config.amqp.url));
        let channel = conn.create_channel().await.expect("channel");
        let name = format!("test.reply.{}", uuid::Uuid::now_v7().simple());
        let (reply_queue, replies) = beds_runtime::topology::reply_queue(&channel, &name)
            .await
            .expect("reply queue");
        Raw {
            _conn: conn,
            channel,
            reply_queue,
            replies: tokio::sync::Mutex::new(replies),
        }
    }

    /// Messages ready (unacked ones are not counted) and consumers of a queue, or
    /// `None` if it does not exist.
    pub async fn queue_state(&self, queue: &str) -> Option<(u32, u32)> {
        let raw = self.raw().await;
        raw.channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .ok()
            .map(|q| (q.message_count(), q.consumer_count()))
    }

    pub async fn depth(&self, queue: &str) -> u32 {
        self.queue_state(queue)
            .await
            .unwrap_or_else(|| panic!("queue {queue} should exist"))
            .0
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        let amqp = self.config.amqp.clone();
        // A fresh runtime on its own thread: Drop may run inside or outside one.
        let _ = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(beds_runtime::topology::remove(
                    &amqp,
                    &[READ_KEY, WRITE_KEY],
                ))
        })
        .join();
    }
}

/// A bare lapin connection for publishing hand-made messages.
pub struct Raw {
    _conn: Connection,
    pub channel: Channel,
    pub reply_queue: String,
    replies: tokio::sync::Mutex<lapin::Consumer>,
}

impl Raw {
    /// Publishes `body` to `beds.events` with `routing_key` and returns the reply body.
    pub async fn request(&self, routing_key: &str, body: &[u8]) -> Json {
        let props = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_correlation_id("raw-1".into())
            .with_reply_to(self.reply_queue.as_str().into());
        self.publish(routing_key, body, props).await;
        let mut consumer = self.replies.lock().await;
        let delivery = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .expect("a reply within 10 s")
            .expect("reply stream open")
            .expect("reply delivery");
        assert_eq!(
            delivery
                .properties
                .correlation_id()
                .as_ref()
                .map(|c| c.as_str()),
            Some("raw-1"),
            "the reply carries the request's correlation id"
        );
        serde_json::from_slice(&delivery.data).expect("replies are JSON")
    }

    pub async fn publish(&self, routing_key: &str, body: &[u8], props: BasicProperties) {
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
}

/// A JSON request envelope for hand-made messages.
pub fn envelope(template: &str, op: &str, extra: Json) -> Vec<u8> {
    let mut req = serde_json::json!({
        "v": 1,
        "id": uuid::Uuid::now_v7(),
        "domain": "spew",
        "template": template,
        "op": op,
    });
    if let (Json::Object(req), Json::Object(extra)) = (&mut req, extra) {
        req.extend(extra);
    }
    serde_json::to_vec(&req).unwrap()
}
