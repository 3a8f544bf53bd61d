//! Committed-write events: one per changed record (cascades and `set_null` included), with
//! the request's lineage, published from the transactional outbox in version order per
//! record, never twice for an idempotent replay, and not lost when the writing node is
//! killed between commit and publish. Matrix tests: SQLite, PostgreSQL, MariaDB.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use beds_runtime::events::WriteEvent;
use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use serde_json::{Value as Json, json};
use uuid::Uuid;

use crate::support::{Raw, TestEnv, repo_config_path};

/// An exclusive queue bound to `{tag}evt.#`, declared before anything is written.
struct Events {
    _conn: lapin::Connection,
    consumer: lapin::Consumer,
}

impl Events {
    async fn bind(env: &TestEnv) -> Events {
        let (conn, channel, _, _) = env.amqp_peer("events").await;
        let queue = channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("event queue");
        // The node declares the exchange too; declaring it here lets the queue bind first.
        beds_runtime::topology::declare(&channel, &env.config.amqp, &[])
            .await
            .expect("topology");
        channel
            .queue_bind(
                queue.name().clone(),
                "beds.events".into(),
                format!("{}evt.#", env.config.amqp.queue_tag).into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("bind");
        let consumer = channel
            .basic_consume(
                queue.name().clone(),
                "events".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("consume");
        Events {
            _conn: conn,
            consumer,
        }
    }

    /// The next `n` events (raw JSON, AMQP message id and routing key checked), within a
    /// deadline.
    async fn take(&mut self, env: &TestEnv, n: usize) -> Vec<Json> {
        // Long enough for a dead relay's lease (20 s in the kill test) to run out.
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut out = Vec::new();
        while out.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            let delivery = tokio::time::timeout(left, self.consumer.next())
                .await
                .unwrap_or_else(|_| panic!("{} of {n} events within 60 s", out.len()))
                .expect("event stream open")
                .expect("event delivery");
            let body: Json = serde_json::from_slice(&delivery.data).expect("events are JSON");
            let event: WriteEvent =
                serde_json::from_value(body.clone()).expect("an event reads as WriteEvent");
            let p = &delivery.properties;
            assert_eq!(
                p.message_id().as_ref().map(|s| s.to_string()),
                Some(event.id.to_string())
            );
            assert_eq!(
                p.correlation_id().as_ref().map(|s| s.to_string()),
                Some(event.correlation_id.to_string())
            );
            assert_eq!(p.delivery_mode(), &Some(2), "persistent");
            assert_eq!(
                p.content_type().as_ref().map(|s| s.to_string()).as_deref(),
                Some("application/json")
            );
            assert_eq!(
                delivery.routing_key.as_str(),
                event.routing_key(&env.config.amqp.queue_tag)
            );
            delivery.ack(BasicAckOptions::default()).await.expect("ack");
            out.push(body);
        }
        out
    }

    /// No further event arrives within `wait` (used after the events expected were taken).
    async fn none_within(&mut self, wait: Duration) {
        if let Ok(Some(Ok(d))) = tokio::time::timeout(wait, self.consumer.next()).await {
            panic!("an unexpected event: {}", String::from_utf8_lossy(&d.data));
        }
    }
}

/// A write request with a known id, correlation id and depth; returns (reply data, id).
async fn write(raw: &Raw, env: &TestEnv, template: &str, op: &str, extra: Json) -> (Json, Uuid) {
    let id = Uuid::now_v7();
    let mut req = json!({
        "v": 1, "id": id, "correlation_id": CORRELATION, "depth": 2,
        "domain": "spew", "template": template, "op": op,
    });
    req.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    let reply = raw
        .request(&env.queue("rec.write"), &serde_json::to_vec(&req).unwrap())
        .await;
    assert_eq!(reply["status"], "ok", "{reply}");
    (reply["data"].clone(), id)
}

const CORRELATION: &str = "01900000-0000-7000-8000-000000000001";

fn user(handle: &str) -> Json {
    json!({"data": {"handle": handle, "display_name": handle}})
}

/// The lineage and change fields every event has.
fn assert_event(env: &TestEnv, e: &Json, cause: Uuid, op: &str, template: &str) {
    assert_eq!(e["v"], 1);
    assert_eq!(e["kind"], "write_event");
    assert_eq!(e["correlation_id"], CORRELATION);
    assert_eq!(e["causation_id"], cause.to_string());
    assert_eq!(e["depth"], 3, "the request's depth + 1");
    assert_eq!(
        e["origin"],
        json!({"service": "beds", "node": env.config.node, "env": env.config.env})
    );
    assert!(e["seq"].as_i64().unwrap() > 0);
    assert_eq!(e["domain"], "spew");
    assert_eq!(e["template"], template);
    assert_eq!(e["op"], op);
    let record = if op == "delete" {
        &e["before"]
    } else {
        &e["after"]
    };
    assert_eq!(e["key"], json!({"id": record["id"]}));
    assert_eq!(e["version"], record["version"]);
    chrono::DateTime::parse_from_rfc3339(e["committed_at"].as_str().unwrap())
        .expect("committed_at is RFC 3339");
}

#[tokio::test]
async fn each_write_yields_one_event_with_its_lineage_and_change() {
    let env = TestEnv::matrix("events_each");
    let mut events = Events::bind(&env).await;
    let server = env.start().await;
    let raw = env.raw().await;

    let (created, c) = write(&raw, &env, "user", "create", user("ada")).await;
    let e = &events.take(&env, 1).await[0];
    assert_event(&env, e, c, "create", "user");
    assert_eq!(e["after"], created);
    assert_eq!(e["before"], Json::Null);
    assert_eq!(e["version"], 1);

    let id = created["id"].clone();
    let (updated, u) = write(
        &raw,
        &env,
        "user",
        "update",
        json!({"key": {"id": id}, "data": {"bio": "hi"}}),
    )
    .await;
    let e = &events.take(&env, 1).await[0];
    assert_event(&env, e, u, "update", "user");
    assert_eq!(e["before"], created);
    assert_eq!(e["after"], updated);
    assert_eq!(e["version"], 2);

    let (_, d) = write(&raw, &env, "user", "delete", json!({"key": {"id": id}})).await;
    let e = &events.take(&env, 1).await[0];
    assert_event(&env, e, d, "delete", "user");
    assert_eq!(e["before"], updated);
    assert_eq!(e["after"], Json::Null);
    events.none_within(Duration::from_millis(500)).await;
    server.stop().await;
}

#[tokio::test]
async fn an_idempotent_replay_yields_no_second_event() {
    let env = TestEnv::matrix("events_replay");
    let mut events = Events::bind(&env).await;
    let server = env.start().await;
    let raw = env.raw().await;
    let body = serde_json::to_vec(&json!({
        "v": 1, "id": Uuid::now_v7(), "domain": "spew", "template": "user", "op": "create",
        "data": {"handle": "once", "display_name": "Once"},
    }))
    .unwrap();
    let first = raw.request(&env.queue("rec.write"), &body).await;
    let again = raw.request(&env.queue("rec.write"), &body).await;
    assert_eq!(first["data"], again["data"]);
    let e = &events.take(&env, 1).await[0];
    assert_eq!(e["after"], first["data"]);
    events.none_within(Duration::from_secs(1)).await;
    server.stop().await;
}

#[tokio::test]
async fn cascaded_deletes_and_nulled_references_yield_their_events() {
    let env = TestEnv::matrix("events_cascade");
    let mut events = Events::bind(&env).await;
    let server = env.start().await;
    let raw = env.raw().await;
    let (ada, _) = write(&raw, &env, "user", "create", user("ada")).await;
    let (bob, _) = write(&raw, &env, "user", "create", user("bob")).await;
    let spew = |author: &Json, extra: Json| {
        let mut data = json!({"author": author["id"], "body": "hello"});
        data.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        json!({ "data": data })
    };
    // Ada's spew, Bob's reply to it (nulled), Bob's respew of it (cascaded), Bob's like of
    // it (cascaded), Bob following Ada (cascaded), Ada's reply to Bob's spew (cascaded
    // with Ada; Bob's spew stays).
    let (original, _) = write(&raw, &env, "spew", "create", spew(&ada, json!({}))).await;
    let (bobs, _) = write(&raw, &env, "spew", "create", spew(&bob, json!({}))).await;
    let (reply, _) = write(
        &raw,
        &env,
        "spew",
        "create",
        spew(&bob, json!({"reply_to": original["id"]})),
    )
    .await;
    let (respew, _) = write(
        &raw,
        &env,
        "spew",
        "create",
        spew(&bob, json!({"respew_of": original["id"]})),
    )
    .await;
    let (like, _) = write(
        &raw,
        &env,
        "like",
        "create",
        json!({"data": {"user": bob["id"], "spew": original["id"]}}),
    )
    .await;
    let (follow, _) = write(
        &raw,
        &env,
        "follow",
        "create",
        json!({"data": {"follower": bob["id"], "followee": ada["id"]}}),
    )
    .await;
    let (adas_reply, _) = write(
        &raw,
        &env,
        "spew",
        "create",
        spew(&ada, json!({"reply_to": bobs["id"]})),
    )
    .await;
    events.take(&env, 9).await;

    let (_, cause) = write(
        &raw,
        &env,
        "user",
        "delete",
        json!({"key": {"id": ada["id"]}}),
    )
    .await;
    let got = events.take(&env, 7).await;
    events.none_within(Duration::from_millis(500)).await;
    let mut by_id: HashMap<String, &Json> = HashMap::new();
    for e in &got {
        assert_eq!(e["causation_id"], cause.to_string(), "caused by the delete");
        assert!(
            by_id.insert(e["key"]["id"].to_string(), e).is_none(),
            "one event per record"
        );
    }
    let expect_delete = |record: &Json, template: &str| {
        let e = by_id[&record["id"].to_string()];
        assert_event(&env, e, cause, "delete", template);
        assert_eq!(e["before"], *record);
    };
    expect_delete(&ada, "user");
    expect_delete(&original, "spew");
    expect_delete(&respew, "spew");
    expect_delete(&like, "like");
    expect_delete(&follow, "follow");
    expect_delete(&adas_reply, "spew");
    // The database nulls the reference without bumping the version.
    let e = by_id[&reply["id"].to_string()];
    assert_event(&env, e, cause, "update", "spew");
    assert_eq!(e["before"], reply);
    let mut after = reply.clone();
    after["reply_to"] = Json::Null;
    assert_eq!(e["after"], after);
    assert_eq!(e["version"], reply["version"]);
    // seqs increase in publish order.
    let seqs: Vec<i64> = got.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    server.stop().await;
}

#[tokio::test]
async fn one_records_events_arrive_in_version_order() {
    let env = TestEnv::matrix("events_order");
    let mut events = Events::bind(&env).await;
    let a = env.start().await;
    // A second node on the same database: both write, one relay publishes.
    let mut second = env.config.clone();
    second.node = "node2".into();
    let b = beds_runtime::Server::start(&second, &beds::CATALOG)
        .await
        .expect("second node");
    let client = env.client().await;
    let raw = env.raw().await;
    let (created, _) = write(&raw, &env, "user", "create", user("order")).await;
    let id = created["id"].clone();
    let n = 40;
    let users = beds::spew::client(&client).user();
    let key: beds::spew::UserId = serde_json::from_value(id.clone()).unwrap();
    let updates = (0..n).map(|i| {
        let users = &users;
        async move {
            let patch = beds::spew::UserPatch {
                bio: Some(Some(format!("bio {i}"))),
                ..Default::default()
            };
            users.update(key, &patch).await.expect("update")
        }
    });
    futures_util::future::join_all(updates).await;
    let got = events.take(&env, n + 1).await;
    let versions: Vec<i64> = got.iter().map(|e| e["version"].as_i64().unwrap()).collect();
    assert_eq!(versions, (1..=n as i64 + 1).collect::<Vec<_>>());
    for w in got.windows(2).skip(1) {
        assert_eq!(
            w[0]["after"], w[1]["before"],
            "each update starts where the last ended"
        );
    }
    events.none_within(Duration::from_millis(500)).await;
    a.stop().await;
    b.stop().await;
}

fn spawn_node(env: &TestEnv, publish_after: &str) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_beds"));
    cmd.args(["run", "--role", "appServer", "--config"])
        .arg(repo_config_path())
        .env("BEDS_ENV", "test")
        .env("BEDS_AMQP__URL", &env.config.amqp.url)
        .env("BEDS_AMQP__QUEUE_TAG", &env.config.amqp.queue_tag)
        .env("BEDS_DATABASE__DATA_DIR", &env.config.database.data_dir)
        .env("BEDS_EVENTS__PUBLISH_AFTER", publish_after)
        .env("BEDS_EVENTS__LEASE_TTL", "20s")
        .stdout(Stdio::null());
    if let Some(url) = &env.config.database.url {
        let driver = match env.config.database.driver {
            beds_runtime::config::Driver::Postgres => "postgres",
            _ => "mariadb",
        };
        cmd.env("BEDS_DATABASE__DRIVER", driver)
            .env("BEDS_DATABASE__URL", url);
    }
    cmd.spawn().expect("spawn beds")
}

/// Waits until the write lane has a consumer.
async fn serving(env: &TestEnv, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !matches!(env.queue_state(&env.queue("rec.write")).await, Some((_, c)) if c >= 1) {
        assert!(Instant::now() < deadline, "beds run serves within 30 s");
        assert!(child.try_wait().unwrap().is_none(), "beds run exited early");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn events_committed_before_a_kill_9_are_published_once_by_the_next_node() {
    let env = TestEnv::matrix("events_kill");
    let mut events = Events::bind(&env).await;
    // Committed events stay in the outbox for an hour: the kill lands between commit and
    // publish.
    let mut held = spawn_node(&env, "1h");
    serving(&env, &mut held).await;
    let raw = env.raw().await;
    let mut written = Vec::new();
    for i in 0..5 {
        written.push(
            write(&raw, &env, "user", "create", user(&format!("kill{i}")))
                .await
                .0,
        );
    }
    events.none_within(Duration::from_millis(500)).await;
    held.kill().expect("kill -9");
    held.wait().expect("reaped");

    let mut next = spawn_node(&env, "0ms");
    serving(&env, &mut next).await;
    let got = events.take(&env, written.len()).await;
    // The dead node's lease runs out first, then every event comes once, in write order.
    let after: Vec<&Json> = got.iter().map(|e| &e["after"]).collect();
    assert_eq!(after, written.iter().collect::<Vec<_>>());
    let ids: std::collections::HashSet<&Json> = got.iter().map(|e| &e["id"]).collect();
    assert_eq!(ids.len(), written.len(), "distinct event ids");
    events.none_within(Duration::from_secs(1)).await;
    let rows = env.rows().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while rows.total("beds_outbox").await != 0 {
        assert!(Instant::now() < deadline, "published rows leave the outbox");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    next.kill().expect("stop");
    next.wait().expect("reaped");
}
