//! Test environment: real RabbitMQ, real SQLite, a private queue tag and data directory
//! per test, and the queues removed again when the test ends (even by panic).

use std::path::{Path, PathBuf};
use std::time::Duration;

use beds_runtime::topology::{READ_KEY, WRITE_KEY};
use beds_runtime::{Catalog, Client, ClientOptions, Config, Server};
use futures_util::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use serde_json::Value as Json;
use sqlx::SqlitePool;
use sqlx::sqlite::SqliteConnectOptions;

pub fn repo_config_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config/beds.yaml")
}

/// The queue [`TestEnv::settle`] counts published events on.
const SETTLE_KEY: &str = "evt.settle";
/// How long [`TestEnv::settle`] waits for the tercero to count what was written.
const SETTLE: Duration = Duration::from_secs(30);

/// Whether any template of `catalog` keeps a count from events.
pub fn maintains_counts(catalog: &Catalog) -> bool {
    catalog
        .domains
        .iter()
        .flat_map(|d| d.templates)
        .flat_map(|t| t.counts)
        .any(|c| c.maintained)
}

/// The nodes of [`TestEnv::start_counting`].
pub struct Nodes {
    pub app: Server,
    tercero: Option<Server>,
}

impl Nodes {
    pub async fn stop(self) {
        self.app.stop().await;
        if let Some(t) = self.tercero {
            t.stop().await;
        }
    }
}

pub struct TestEnv {
    pub config: Config,
    _data: tempfile::TempDir,
    /// A server database created for this test, dropped with it: (admin URL, name).
    server_db: Option<(String, String)>,
    /// The warehouse database of [`TestEnv::with_warehouse`] on a server, dropped with it.
    warehouse_db: Option<(String, String)>,
}

/// The database a matrix test runs on: `BEDS_TEST_DATABASE` = `sqlite` (default),
/// `postgres` or `mariadb`. Servers are found at `BEDS_TEST_POSTGRES_URL` /
/// `BEDS_TEST_MARIADB_URL` (defaults: the local trust/root accounts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestDatabase {
    Sqlite,
    Postgres,
    MariaDb,
}

impl TestDatabase {
    pub fn from_env() -> TestDatabase {
        match std::env::var("BEDS_TEST_DATABASE").as_deref() {
            Err(_) | Ok("" | "sqlite") => TestDatabase::Sqlite,
            Ok("postgres") => TestDatabase::Postgres,
            Ok("mariadb") => TestDatabase::MariaDb,
            Ok(other) => panic!("BEDS_TEST_DATABASE is sqlite, postgres or mariadb, not `{other}`"),
        }
    }

    fn admin_url(self) -> Option<String> {
        let (var, default) = match self {
            TestDatabase::Sqlite => return None,
            TestDatabase::Postgres => (
                "BEDS_TEST_POSTGRES_URL",
                "postgres://postgres@127.0.0.1:5432/postgres",
            ),
            TestDatabase::MariaDb => ("BEDS_TEST_MARIADB_URL", "mysql://root@127.0.0.1:3306/test"),
        };
        Some(std::env::var(var).unwrap_or_else(|_| default.to_string()))
    }
}

/// Runs admin statements (create/drop a test database) on a fresh runtime and thread, so
/// it works from sync code and from inside a test's runtime alike.
fn admin(url: &str, statements: Vec<String>) -> Result<(), String> {
    let url = url.to_string();
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(async {
                sqlx::any::install_default_drivers();
                let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&url)
                    .await
                    .map_err(|e| format!("cannot connect to {url}: {e}"))?;
                for s in statements {
                    sqlx::query(sqlx::AssertSqlSafe(s.clone()))
                        .execute(&mut conn)
                        .await
                        .map_err(|e| format!("`{s}` failed: {e}"))?;
                }
                Ok(())
            })
    })
    .join()
    .expect("admin thread")
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
        config.admin.database.data_dir = data.path().to_path_buf();
        config.amqp.queue_tag = format!("test.{name}.{}.", uuid::Uuid::now_v7().simple());
        TestEnv {
            config,
            _data: data,
            server_db: None,
            warehouse_db: None,
        }
    }

    /// Like [`TestEnv::new`], on the database `BEDS_TEST_DATABASE` names; a server
    /// database gets a fresh database of its own, dropped when the test ends.
    pub fn matrix(name: &str) -> TestEnv {
        let mut env = TestEnv::new(name);
        let which = TestDatabase::from_env();
        let Some(admin_url) = which.admin_url() else {
            return env;
        };
        let db = format!(
            "beds_{}_{}",
            name,
            &uuid::Uuid::now_v7().simple().to_string()[20..]
        );
        admin(&admin_url, vec![format!("CREATE DATABASE {db}")]).unwrap_or_else(|e| {
            panic!("BEDS_TEST_DATABASE={which:?} needs a database server: {e}")
        });
        let base = admin_url.rsplit_once('/').expect("a URL with a database").0;
        env.config.database.driver = match which {
            TestDatabase::Postgres => beds_runtime::config::Driver::Postgres,
            _ => beds_runtime::config::Driver::Mariadb,
        };
        env.config.database.url = Some(format!("{base}/{db}"));
        // An admin node of the test keeps its tables in the same server database.
        env.config.admin.database.driver = env.config.database.driver;
        env.config.admin.database.url = env.config.database.url.clone();
        env.server_db = Some((admin_url, db));
        env
    }

    /// Gives segundo a warehouse of this test's own (a second SQLite file in the data
    /// directory, or a second database on the matrix's server) and a cold directory.
    pub fn with_warehouse(mut self) -> TestEnv {
        let data = self._data.path().to_path_buf();
        self.config.segundo.cold_dir = data.join("cold");
        let warehouse = &mut self.config.segundo.warehouse;
        warehouse.data_dir = data;
        if let Some((admin_url, db)) = &self.server_db {
            let name = format!("{db}_wh");
            admin(admin_url, vec![format!("CREATE DATABASE {name}")])
                .unwrap_or_else(|e| panic!("the warehouse database: {e}"));
            let base = admin_url.rsplit_once('/').expect("a URL with a database").0;
            warehouse.driver = self.config.database.driver;
            warehouse.url = Some(format!("{base}/{name}"));
            self.warehouse_db = Some((admin_url.clone(), name));
        }
        self
    }

    /// Read access to the node's database in whatever dialect it runs, for asserting rows.
    pub async fn rows(&self) -> Rows {
        Rows::open(&self.config.database).await
    }

    /// [`TestEnv::rows`] of the warehouse of [`TestEnv::with_warehouse`].
    pub async fn warehouse_rows(&self) -> Rows {
        Rows::open(&self.config.segundo.warehouse).await
    }
}

impl Rows {
    async fn open(database: &beds_runtime::config::DatabaseConfig) -> Rows {
        sqlx::any::install_default_drivers();
        let (driver, url) = match &database.url {
            Some(url) => (database.driver, url.clone()),
            None => (
                beds_runtime::config::Driver::Sqlite,
                format!("sqlite://{}", database.sqlite_path().display()),
            ),
        };
        let pool = sqlx::AnyPool::connect(&url)
            .await
            .unwrap_or_else(|e| panic!("open the node's database {url}: {e}"));
        Rows { pool, driver }
    }
}

impl TestEnv {
    pub async fn start(&self) -> Server {
        Server::start(&self.config, &beds::CATALOG)
            .await
            .unwrap_or_else(|e| panic!("the test needs RabbitMQ and its database: {e}"))
    }

    /// An admin node (role `admin`) of this test's configuration, on its own database.
    pub async fn start_admin(&self) -> Server {
        let mut config = self.config.clone();
        config.role = beds_runtime::Role::Admin;
        config.node = format!("{}-admin", config.node);
        Server::start(&config, &beds::CATALOG)
            .await
            .unwrap_or_else(|e| panic!("the test's admin node starts: {e}"))
    }

    /// An appServer of `beds::CATALOG` and, when any of its counts is `maintained`, a
    /// tercero node beside it (same configuration, tag and database) keeping them. Reads of
    /// those counts lag writes until [`TestEnv::settle`].
    pub async fn start_counting(&self) -> Nodes {
        self.start_counting_with(&beds::CATALOG).await
    }

    /// [`TestEnv::start_counting`] for the templates of `catalog`.
    pub async fn start_counting_with(&self, catalog: &'static Catalog) -> Nodes {
        let tercero = if maintains_counts(catalog) {
            self.declare_settle_queue().await;
            let mut config = self.config.clone();
            config.role = beds_runtime::Role::Tercero;
            config.node = format!("{}-tercero", config.node);
            Some(
                Server::start(&config, catalog)
                    .await
                    .unwrap_or_else(|e| panic!("the test's tercero node starts: {e}")),
            )
        } else {
            None
        };
        let app = Server::start(&self.config, catalog)
            .await
            .unwrap_or_else(|e| panic!("the test needs RabbitMQ and its database: {e}"));
        Nodes { app, tercero }
    }

    /// Binds the queue [`TestEnv::settle`] counts published events on; events reach only
    /// the queues bound when they are published, so this precedes the first write.
    async fn declare_settle_queue(&self) {
        let raw = self.raw().await;
        let queue = self.queue(SETTLE_KEY);
        raw.channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("the settle queue");
        raw.channel
            .queue_bind(
                queue.as_str().into(),
                "beds.events".into(),
                format!("{}evt.#", self.config.amqp.queue_tag)
                    .as_str()
                    .into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("the settle queue's binding");
    }

    /// Waits until every write committed so far is counted by the tercero of
    /// [`TestEnv::start_counting`]: the outbox is empty (every event published), the tercero
    /// queue holds no ready event, and the applied events are as many as were published
    /// (counted on the settle queue, which nothing consumes; the tercero records an event
    /// as applied in the transaction that changes the counters, so no batch is in flight
    /// once they match). Without a tercero (no maintained count) there is nothing to wait
    /// for. Relay duplicates (a crash between publish and confirm) would keep it waiting:
    /// the tests that make them count on their own.
    pub async fn settle(&self) {
        if self.queue_state(&self.queue(SETTLE_KEY)).await.is_none() {
            return;
        }
        let rows = self.rows().await;
        let end = tokio::time::Instant::now() + SETTLE;
        loop {
            let outbox = rows.total("beds_outbox").await;
            // Read after the outbox: every event of a write before this call is counted.
            let published = self.depth(&self.queue(SETTLE_KEY)).await;
            let waiting = self.depth(&self.queue(beds_runtime::EVENT_QUEUE_KEY)).await;
            let applied = rows.total("beds_event_applied").await;
            if outbox == 0 && waiting == 0 && applied >= i64::from(published) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < end,
                "not settled within {SETTLE:?}: {outbox} events in the outbox, {waiting} waiting \
                 for the tercero, {applied} of {published} applied"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
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

    /// The broker user the harness connects as: the `user_id` its hand-made requests carry.
    pub fn login(&self) -> String {
        self.config
            .amqp
            .url
            .parse::<lapin::uri::AMQPUri>()
            .expect("an AMQP URL")
            .authority
            .userinfo
            .username
    }

    pub fn queue(&self, key: &str) -> String {
        self.config.amqp.queue(key)
    }

    /// Takes the SQLite database's write lock (an exclusive transaction) from outside the
    /// node, so its writes fail as `database_unavailable` until `ROLLBACK` or a drop.
    pub async fn lock_database(&self) -> sqlx::SqliteConnection {
        use sqlx::Connection as _;
        let options = SqliteConnectOptions::new().filename(self.config.database.sqlite_path());
        let mut conn = sqlx::SqliteConnection::connect_with(&options)
            .await
            .expect("open the test's SQLite file");
        sqlx::query("BEGIN EXCLUSIVE")
            .execute(&mut conn)
            .await
            .expect("take the database's write lock");
        conn
    }

    /// `beds dlq ARGS` on this environment's broker and queue tag (the `dev` env, whose
    /// development key is the test env's): its stdout, failing the test if it fails.
    pub fn dlq(&self, args: &[&str]) -> String {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_beds"))
            .arg("dlq")
            .args(args)
            .arg("--config")
            .arg(repo_config_path())
            .env("BEDS_AMQP__URL", &self.config.amqp.url)
            .env("BEDS_AMQP__QUEUE_TAG", &self.config.amqp.queue_tag)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "beds dlq {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Publishes a user create with `handle` (also its correlation id) to the write lane,
    /// answered on `reply_to`; returns the request's id.
    pub async fn send_write(&self, channel: &Channel, reply_to: &str, handle: &str) -> String {
        let body = envelope(
            "user",
            "create",
            serde_json::json!({"data": {"handle": handle, "display_name": handle}}),
        );
        let id: Json = serde_json::from_slice::<Json>(&body).unwrap()["id"].clone();
        channel
            .basic_publish(
                "beds.events".into(),
                self.queue("rec.write").as_str().into(),
                BasicPublishOptions::default(),
                &body,
                BasicProperties::default()
                    .with_content_type("application/json".into())
                    .with_correlation_id(handle.into())
                    .with_reply_to(reply_to.into())
                    .with_user_id(self.login().as_str().into()),
            )
            .await
            .unwrap();
        id.as_str().unwrap().to_string()
    }

    /// A plain AMQP connection with a reply queue of its own (named
    /// `beds.reply.test.<label>.<id>`, a form the node answers),
    /// for tests that speak the wire without the client.
    pub async fn amqp_peer(&self, label: &str) -> (Connection, Channel, String, lapin::Consumer) {
        let conn = Connection::connect(&self.config.amqp.url, ConnectionProperties::default())
            .await
            .unwrap_or_else(|e| panic!("the test needs RabbitMQ at {}: {e}", self.config.amqp.url));
        let channel = conn.create_channel().await.expect("channel");
        let name = beds_runtime::names::reply_queue(&format!(
            "test.{label}.{}",
            uuid::Uuid::now_v7().simple()
        ));
        let (reply_queue, replies) = beds_runtime::topology::reply_queue(&channel, &name)
            .await
            .expect("reply queue");
        (conn, channel, reply_queue, replies)
    }

    pub async fn raw(&self) -> Raw {
        let (conn, channel, reply_queue, replies) = self.amqp_peer("reply").await;
        Raw {
            _conn: conn,
            login: self.login(),
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

/// The node's database, read with SQL that works in every dialect.
pub struct Rows {
    pool: sqlx::AnyPool,
    driver: beds_runtime::config::Driver,
}

impl Rows {
    /// The driver of this database.
    pub fn driver(&self) -> beds_runtime::config::Driver {
        self.driver
    }

    /// An identifier quoted for the node's database.
    pub fn quote(&self, ident: &str) -> String {
        match self.driver {
            beds_runtime::config::Driver::Mariadb => format!("`{ident}`"),
            _ => format!("\"{ident}\""),
        }
    }

    /// `SELECT <select> FROM table WHERE column = value`, as one integer (a count or a
    /// number column). `value` is a key as the API shows it: a UUID string or a number.
    pub async fn int(&self, select: &str, table: &str, column: &str, value: &Json) -> i64 {
        let column = match (self.driver, value) {
            // UUID columns compare with text only after a cast.
            (beds_runtime::config::Driver::Postgres, Json::String(_)) => {
                format!("CAST({} AS text)", self.quote(column))
            }
            _ => self.quote(column),
        };
        let mark = match self.driver {
            beds_runtime::config::Driver::Postgres => "$1",
            _ => "?",
        };
        let sql = format!(
            "SELECT {select} FROM {} WHERE {column} = {mark}",
            self.quote(table)
        );
        let q = sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql.clone()));
        match value {
            Json::String(s) => q.bind(s.clone()),
            other => q.bind(other.as_i64().expect("a key")),
        }
        .fetch_one(&self.pool)
        .await
        .unwrap_or_else(|e| panic!("`{sql}`: {e}"))
    }

    /// The number of rows of `table` whose `column` equals `value`.
    pub async fn count(&self, table: &str, column: &str, value: &Json) -> i64 {
        self.int("COUNT(*)", table, column, value).await
    }

    /// The pool, for statements of a test's own.
    pub fn pool(&self) -> &sqlx::AnyPool {
        &self.pool
    }

    /// `expr` as text in this database's SQL.
    pub fn as_text(&self, expr: &str) -> String {
        match self.driver {
            beds_runtime::config::Driver::Mariadb => format!("CAST({expr} AS CHAR)"),
            _ => format!("CAST({expr} AS TEXT)"),
        }
    }

    /// The number of rows of `table`.
    pub async fn total(&self, table: &str) -> i64 {
        let sql = format!("SELECT COUNT(*) FROM {}", self.quote(table));
        sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql.clone()))
            .fetch_one(&self.pool)
            .await
            .unwrap_or_else(|e| panic!("`{sql}`: {e}"))
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        for (url, db) in self
            .warehouse_db
            .take()
            .into_iter()
            .chain(self.server_db.take())
        {
            let drop = match TestDatabase::from_env() {
                TestDatabase::Postgres => format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"),
                _ => format!("DROP DATABASE IF EXISTS {db}"),
            };
            if let Err(e) = admin(&url, vec![drop]) {
                eprintln!("test database {db} was not dropped: {e}");
            }
        }
        let amqp = self.config.amqp.clone();
        // A fresh runtime on its own thread: Drop may run inside or outside one.
        let _ = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(beds_runtime::topology::remove(
                    &amqp,
                    &[
                        READ_KEY,
                        WRITE_KEY,
                        beds_runtime::EVENT_QUEUE_KEY,
                        beds_runtime::admin::ADMIN_KEY,
                        beds_runtime::admin::STATUS_QUEUE,
                        beds_runtime::admin::lineage::LINEAGE_KEY,
                        beds_runtime::admin::audit::AUDIT_KEY,
                        beds_runtime::names::WAREHOUSE_READ_KEY,
                        SETTLE_KEY,
                    ],
                ))
        })
        .join();
    }
}

/// A bare lapin connection for publishing hand-made messages.
pub struct Raw {
    _conn: Connection,
    /// The `user_id` requests carry, as a client sets it.
    pub login: String,
    pub channel: Channel,
    pub reply_queue: String,
    replies: tokio::sync::Mutex<lapin::Consumer>,
}

impl Raw {
    /// Publishes `body` to `beds.events` with `routing_key` and returns the reply body.
    pub async fn request(&self, routing_key: &str, body: &[u8]) -> Json {
        let props = BasicProperties::default().with_user_id(self.login.as_str().into());
        self.request_with(routing_key, body, props).await
    }

    /// Like [`Raw::request`], with `props` (to which JSON, the correlation id and the reply
    /// queue are added) instead of a client's.
    pub async fn request_with(
        &self,
        routing_key: &str,
        body: &[u8],
        props: BasicProperties,
    ) -> Json {
        let props = props
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

/// An exclusive queue of the test's own bound to `beds.events` by `key`; returns its name.
pub async fn bound_queue(channel: &Channel, key: &str) -> String {
    let q = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .queue_bind(
            q.name().as_str().into(),
            "beds.events".into(),
            key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    q.name().to_string()
}

/// Consumes `queue` without acks: the test reads what arrives, the broker forgets it.
pub async fn consume_unacked(channel: &Channel, queue: &str) -> lapin::Consumer {
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
        .unwrap_or_else(|e| panic!("consume {queue}: {e}"))
}
