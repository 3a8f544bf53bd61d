//! Lineage: every message of a write's conversation carries its id, correlation id,
//! causation id, depth and origin (set by the runtime), and the records of a sampled
//! conversation link request, reply, event, tercero effect and invalidations by ids, kept
//! by the admin and printed by `beds lineage`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use beds::spew::{self, SpewCreate, UserCreate};
use beds_runtime::lineage::{Record, RecordType};
use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use serde_json::{Value as Json, json};
use uuid::Uuid;

use beds_runtime::{Op, Request};

use crate::support::TestEnv;

/// What a message says of its lineage, from its body or (a republished request) its
/// signed `x-beds-*` headers.
#[derive(Debug, Clone, PartialEq)]
struct Ids {
    id: Uuid,
    correlation: Uuid,
    causation: Option<Uuid>,
    depth: u64,
    origin: Json,
}

fn header<'a>(p: &'a lapin::BasicProperties, name: &str) -> Option<&'a AMQPValue> {
    p.headers().as_ref().and_then(|h| h.inner().get(name))
}

fn text(v: &AMQPValue) -> String {
    match v {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.to_string(),
        other => panic!("a text header, not {other:?}"),
    }
}

/// The five lineage fields of a message, failing the test if any is missing.
fn ids(what: &str, p: &lapin::BasicProperties, body: &[u8]) -> Ids {
    if let Some(id) = header(p, "x-beds-lineage-id") {
        let get = |name: &str| header(p, name).unwrap_or_else(|| panic!("{what} carries {name}"));
        let depth = match get("x-beds-depth") {
            AMQPValue::LongLongInt(n) => *n as u64,
            AMQPValue::LongInt(n) => *n as u64,
            other => panic!("{what}: depth {other:?}"),
        };
        return Ids {
            id: text(id).parse().unwrap(),
            correlation: text(get("x-beds-correlation-id")).parse().unwrap(),
            causation: Some(text(get("x-beds-causation-id")).parse().unwrap()),
            depth,
            origin: serde_json::from_str(&text(get("x-beds-origin"))).unwrap(),
        };
    }
    let body: Json = serde_json::from_slice(body).unwrap_or_else(|e| panic!("{what}: {e}"));
    let uuid = |k: &str| -> Option<Uuid> { body[k].as_str().map(|s| s.parse().unwrap()) };
    let out = Ids {
        id: uuid("id").unwrap_or_else(|| panic!("{what} has an id: {body}")),
        correlation: uuid("correlation_id")
            .unwrap_or_else(|| panic!("{what} has a correlation id: {body}")),
        causation: uuid("causation_id"),
        depth: body["depth"]
            .as_u64()
            .unwrap_or_else(|| panic!("{what} has a depth: {body}")),
        origin: body["origin"].clone(),
    };
    // Only a conversation's first message has no cause.
    assert!(
        out.causation.is_some() || out.depth == 0,
        "{what} has a causation id: {body}"
    );
    out
}

fn assert_origin(what: &str, ids: &Ids) {
    for k in ["service", "node", "env"] {
        assert!(
            ids.origin[k].is_string(),
            "{what}'s origin names its {k}: {ids:?}"
        );
    }
}

/// A queue bound with `#` to `beds.events` and `beds.dlx`: every message of the test's
/// tag (other tests' messages are skipped by routing key).
struct Tap {
    _conn: lapin::Connection,
    consumer: lapin::Consumer,
    tag: String,
}

impl Tap {
    async fn bind(env: &TestEnv) -> Tap {
        let (conn, channel, _, _) = env.amqp_peer("tap").await;
        beds_runtime::topology::declare(&channel, &env.config.amqp, &[])
            .await
            .expect("topology");
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
            .expect("tap queue");
        for exchange in ["beds.events", "beds.dlx"] {
            channel
                .queue_bind(
                    queue.name().clone(),
                    exchange.into(),
                    "#".into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .expect("bind");
        }
        let consumer = channel
            .basic_consume(
                queue.name().clone(),
                "tap".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("consume");
        Tap {
            _conn: conn,
            consumer,
            tag: env.config.amqp.queue_tag.clone(),
        }
    }

    /// Messages of this test's tag (lineage batches aside: telemetry about the messages,
    /// not messages of the conversation) until `enough` holds of them, within 20 s.
    async fn until(
        &mut self,
        enough: impl Fn(&[(String, String, Ids)]) -> bool,
    ) -> Vec<(String, String, Ids)> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut seen = Vec::new();
        while !enough(&seen) {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(Some(Ok(d))) = tokio::time::timeout(left, self.consumer.next()).await else {
                panic!("the conversation's messages within 20 s; seen {seen:#?}");
            };
            let key = d.routing_key.as_str();
            let Some(rest) = key.strip_prefix(&self.tag) else {
                continue;
            };
            if rest == beds_runtime::lineage::ROUTING_KEY {
                continue;
            }
            let exchange = d.exchange.to_string();
            let what = format!("{exchange} {rest}");
            let ids = ids(&what, &d.properties, &d.data);
            seen.push((exchange, rest.to_string(), ids));
        }
        seen
    }
}

/// Every message of a successful write (request, event, invalidations, reply) and of a
/// write that is retried then dead-lettered (request, retries, dead letter, reply) carries
/// the five lineage fields, all in the request's conversation.
#[tokio::test]
async fn every_message_of_a_write_carries_its_lineage() {
    let mut env = TestEnv::new("lineage_msgs");
    env.config.database.busy_timeout = beds_runtime::config::Millis(50);
    env.config.retry.max_attempts = 2;
    env.config.retry.backoff = beds_runtime::config::Millis(50);
    let mut tap = Tap::bind(&env).await;
    let nodes = env.start_counting().await;
    let client = env.client().await;
    let author = spew::client(&client)
        .user()
        .create(&UserCreate {
            handle: "lin".into(),
            display_name: "Lin".into(),
            bio: None,
        })
        .await
        .unwrap();
    env.settle().await;
    // Through the client: a root request's lineage is the runtime's, not the caller's.
    let write = |body: &str| {
        let mut req = Request::new("spew", "spew", Op::Create);
        req.data = json!({"author": author.id, "body": body})
            .as_object()
            .cloned();
        req
    };

    // A successful write.
    let req = write("hello");
    let id = req.id;
    let reply = serde_json::to_value(client.exchange(req).await.unwrap()).unwrap();
    assert_eq!(reply["status"], "ok", "{reply}");
    let reply_ids = ids("reply", &Default::default(), reply.to_string().as_bytes());
    assert_eq!(reply_ids.causation, Some(id));
    assert_eq!(reply_ids.depth, 1);
    assert_origin("reply", &reply_ids);
    let mine = |m: &[(String, String, Ids)], prefix: &str| {
        m.iter()
            .filter(|(_, k, i)| k.starts_with(prefix) && i.correlation == id)
            .count()
    };
    let seen = tap
        .until(|m| {
            mine(m, "rec.write") >= 1
                && mine(m, "evt.spew.spew.create") >= 1
                && mine(m, "inv.") >= 1
        })
        .await;
    let ours: Vec<_> = seen
        .iter()
        .filter(|(_, _, i)| i.correlation == id)
        .collect();
    let request = &ours.iter().find(|(_, k, _)| k == "rec.write").unwrap().2;
    assert_eq!(
        (request.id, request.causation, request.depth),
        (id, None, 0)
    );
    let event = &ours
        .iter()
        .find(|(_, k, _)| k.starts_with("evt."))
        .unwrap()
        .2;
    assert_eq!((event.causation, event.depth), (Some(id), 1));
    for (exchange, key, ids) in &ours {
        assert_origin(&format!("{exchange} {key}"), ids);
        if key.starts_with("inv.") {
            assert!(
                ids.causation == Some(id) || ids.causation == Some(event.id),
                "an invalidation is caused by the request or its event: {ids:?}"
            );
        }
    }

    // A write the database refuses until its attempts run out.
    let held = env.lock_database().await;
    let req = write("lost");
    let lost = req.id;
    let reply = serde_json::to_value(client.exchange(req).await.unwrap()).unwrap();
    assert_eq!(reply["error"]["code"], "database_unavailable", "{reply}");
    let reply_ids = ids(
        "error reply",
        &Default::default(),
        reply.to_string().as_bytes(),
    );
    assert_eq!((reply_ids.causation, reply_ids.depth), (Some(lost), 1));
    drop(held);
    let seen = tap
        .until(|m| {
            m.iter()
                .any(|(x, _, i)| x == "beds.dlx" && i.correlation == lost)
        })
        .await;
    let ours: Vec<_> = seen
        .iter()
        .filter(|(_, _, i)| i.correlation == lost)
        .collect();
    let retried = ours
        .iter()
        .find(|(x, _, i)| x == "beds.events" && i.id != lost)
        .expect("the retried request came back carrying its retry's lineage");
    let dead = ours.iter().find(|(x, _, _)| x == "beds.dlx").unwrap();
    for (_, _, ids) in [retried, dead] {
        assert_eq!((ids.causation, ids.depth), (Some(lost), 1), "{ids:?}");
        assert_origin("a republished request", ids);
    }
    client.close().await.unwrap();
    nodes.stop().await;
}

/// Asks the admin for the conversation of `id` until `enough` holds of its records, within
/// `within`; returns the last answer's records.
async fn stored(
    client: &beds_runtime::Client,
    id: Uuid,
    enough: impl Fn(&[Record]) -> bool,
    within: Duration,
) -> Vec<Record> {
    let deadline = Instant::now() + within;
    loop {
        let mut fields = serde_json::Map::new();
        fields.insert("message_id".into(), json!(id));
        let answer = client
            .admin("lineage", fields)
            .await
            .expect("the lineage op");
        let records: Vec<Record> =
            serde_json::from_value(answer["records"].clone()).expect("records");
        if enough(&records) || Instant::now() >= deadline {
            return records;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether `rs` hold a request and its reply, event, tercero effect and invalidation.
fn complete(rs: &[Record]) -> bool {
    let of = |t: RecordType| rs.iter().filter(|r| r.kind_of == t).count();
    of(RecordType::Request) >= 1
        && of(RecordType::Reply) >= 1
        && of(RecordType::Event) >= 1
        && rs
            .iter()
            .any(|r| r.kind_of == RecordType::Effect && r.name.starts_with("tercero."))
        && of(RecordType::Invalidation) >= 1
}

/// With every conversation sampled, a SPEW create's lineage reaches the admin: request,
/// reply, event, tercero effect and invalidations, linked by ids in its conversation, found
/// by the request's id or any record's; `beds lineage` prints them as a tree.
#[tokio::test]
async fn a_write_leaves_its_lineage_tree_in_the_admin() {
    let mut env = TestEnv::new("lineage_tree");
    env.config.lineage.sample = 1.0;
    // The admin first: its queue keeps the records from its start on.
    let admin = env.start_admin().await;
    let nodes = env.start_counting().await;
    let client = env.client().await;
    let api = spew::client(&client);
    let author = api
        .user()
        .create(&UserCreate {
            handle: "tree".into(),
            display_name: "Tree".into(),
            bio: None,
        })
        .await
        .unwrap();
    let mut req = Request::new("spew", "spew", Op::Create);
    req.data = json!({"author": author.id, "body": "traced"})
        .as_object()
        .cloned();
    let id = req.id;
    let reply = client.exchange(req).await.unwrap();
    assert_eq!(serde_json::to_value(&reply).unwrap()["status"], "ok");

    let found = stored(&client, id, complete, Duration::from_secs(20)).await;
    assert!(complete(&found), "a complete tree: {found:#?}");
    let request = found
        .iter()
        .find(|r| r.kind_of == RecordType::Request)
        .unwrap();
    assert_eq!(
        (request.id, request.correlation_id, request.causation_id),
        (id, id, None)
    );
    assert_eq!(request.name, "spew.spew.create");
    assert_eq!(request.outcome.as_deref(), Some("ok"));
    assert!(request.duration_us.is_some());
    assert!(found.iter().all(|r| r.correlation_id == id), "{found:#?}");
    let by_id: HashMap<Uuid, &Record> = found.iter().map(|r| (r.id, r)).collect();
    assert_eq!(by_id.len(), found.len(), "each record stored once");
    let event = found
        .iter()
        .find(|r| r.kind_of == RecordType::Event)
        .unwrap();
    assert_eq!(event.causation_id, Some(request.id), "event under request");
    assert_eq!(event.name, "evt.spew.spew.create");
    let reply = found
        .iter()
        .find(|r| r.kind_of == RecordType::Reply)
        .unwrap();
    assert_eq!(reply.causation_id, Some(request.id), "reply under request");
    assert_eq!(reply.outcome.as_deref(), Some("ok"));
    let effect = found
        .iter()
        .find(|r| r.kind_of == RecordType::Effect && r.name.starts_with("tercero."))
        .unwrap();
    assert_eq!(effect.causation_id, Some(event.id), "effect under event");
    assert!(effect.origin.node.ends_with("-tercero"), "{effect:?}");
    for r in &found {
        if let Some(parent) = r.causation_id {
            assert!(by_id.contains_key(&parent), "{r:?} has its parent stored");
        }
    }
    // Any message of the conversation finds it whole.
    let via_effect = stored(
        &client,
        effect.id,
        |rs| rs.len() >= found.len(),
        Duration::from_secs(5),
    )
    .await;
    assert!(
        found.iter().all(|r| via_effect.contains(r)),
        "found by the effect's id: {via_effect:#?}"
    );

    // The command line prints the tree: the event under the request, the effect under it.
    // On a blocking thread: the admin answering it runs on this test's runtime.
    let beds = |args: Vec<String>| {
        let amqp = env.config.amqp.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                let out = std::process::Command::new(env!("CARGO_BIN_EXE_beds"))
                    .args(args)
                    .arg("--config")
                    .arg(crate::support::repo_config_path())
                    .env("BEDS_ENV", "test")
                    .env("BEDS_AMQP__URL", &amqp.url)
                    .env("BEDS_AMQP__QUEUE_TAG", &amqp.queue_tag)
                    .output()
                    .expect("run beds");
                (
                    out.status,
                    String::from_utf8_lossy(&out.stdout).into_owned(),
                    String::from_utf8_lossy(&out.stderr).into_owned(),
                )
            })
            .await
            .expect("beds ran")
        }
    };
    let (status, tree, err) = beds(vec!["lineage".into(), id.to_string()]).await;
    assert!(status.success(), "beds lineage: {err}");
    let lines: Vec<&str> = tree.lines().collect();
    let at = |prefix: &str| {
        lines
            .iter()
            .position(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("a line `{prefix}…` in:\n{tree}"))
    };
    let (req_line, event_line, effect_line) = (
        at("request spew.spew.create  node="),
        at("  event evt.spew.spew.create  node="),
        at("    effect tercero."),
    );
    assert!(req_line < event_line && event_line < effect_line, "{tree}");
    assert!(lines[req_line].contains("outcome=ok"), "{tree}");
    assert!(lines[req_line].contains("+0.000ms"), "{tree}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("  reply ") && l.contains("outcome=ok")),
        "{tree}"
    );
    // Records still arriving (invalidations applied on each node) may add lines.
    assert!(lines.len() >= found.len(), "one line per record:\n{tree}");
    // --json: the records as stored.
    let (status, text, err) = beds(vec![
        "lineage".into(),
        event.id.to_string(),
        "--json".into(),
    ])
    .await;
    assert!(status.success(), "beds lineage --json: {err}");
    let printed: Vec<Record> = serde_json::from_str(&text).expect("JSON records");
    assert!(found.iter().all(|r| printed.contains(r)), "{text}");
    // An id of nothing stored says why there may be none.
    let (status, _, err) = beds(vec!["lineage".into(), Uuid::now_v7().to_string()]).await;
    assert!(!status.success());
    assert!(err.contains("lineage.sample"), "{err}");

    client.close().await.unwrap();
    nodes.stop().await;
    admin.stop().await;
}

/// The lineage store keeps each record once (a batch delivered twice adds nothing), deletes
/// records older than `admin.lineage_keep`, and dead-letters a batch it cannot read, on the
/// database `BEDS_TEST_DATABASE` names.
#[tokio::test]
async fn the_lineage_store_keeps_records_once_expires_them_and_dead_letters_garbage() {
    let mut env = TestEnv::matrix("lineage_store");
    if env.config.database.url.is_some() {
        env.config.admin.database.driver = env.config.database.driver;
        env.config.admin.database.url = env.config.database.url.clone();
    }
    // One delivery at a time, in order: a later batch stored means the earlier ones were.
    env.config.admin.prefetch = 1;
    let admin = env.start_admin().await;
    let client = env.client().await;
    let raw = env.raw().await;
    let origin = beds_runtime::envelope::Origin {
        service: "beds".into(),
        node: "hand".into(),
        env: "test".into(),
    };
    // Microseconds, as records are written.
    let now =
        chrono::DateTime::from_timestamp_micros(chrono::Utc::now().timestamp_micros()).unwrap();
    let record = |kind, id: Uuid, correlation: Uuid, parent: Option<Uuid>, at| {
        Record::new(
            kind,
            id,
            correlation,
            parent,
            0,
            origin.clone(),
            "r".into(),
            at,
        )
    };
    let (c, old_c) = (Uuid::now_v7(), Uuid::now_v7());
    let child = Uuid::now_v7();
    let old = Uuid::now_v7();
    let fresh = Uuid::now_v7();
    let batch = vec![
        record(RecordType::Request, c, c, None, now),
        record(RecordType::Event, child, c, Some(c), now),
        // Older than the default keep (7 days).
        record(
            RecordType::Request,
            old,
            old_c,
            None,
            now - chrono::Duration::days(30),
        ),
        record(RecordType::Reply, fresh, old_c, Some(old), now),
    ];
    let body = serde_json::to_vec(&batch).unwrap();
    let key = env.queue(beds_runtime::lineage::ROUTING_KEY);
    raw.publish(&key, &body, Default::default()).await;
    raw.publish(&key, &body, Default::default()).await;
    let marker = Uuid::now_v7();
    let last = vec![record(RecordType::Request, marker, marker, None, now)];
    raw.publish(
        &key,
        &serde_json::to_vec(&last).unwrap(),
        Default::default(),
    )
    .await;
    let seen = stored(&client, marker, |rs| rs.len() == 1, Duration::from_secs(10)).await;
    assert_eq!(seen, last, "the last batch stored");

    let conversation = stored(&client, child, |_| true, Duration::ZERO).await;
    assert_eq!(
        conversation.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![c, child],
        "stored once, found by any of its ids"
    );
    // The first batch's sweep removed the expired record (and only it), and its second
    // delivery did not store it again.
    let kept = stored(
        &client,
        old_c,
        |rs| rs.iter().all(|r| r.id != old),
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(
        kept.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![fresh],
        "only the record within admin.lineage_keep"
    );

    // Not a batch of records: dead-lettered with the reason, not dropped or looped.
    raw.publish(&key, b"[{\"v\":1}]", Default::default()).await;
    let dlq = format!("{}.dlq", env.queue("lineage"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while env.depth(&dlq).await < 1 {
        assert!(Instant::now() < deadline, "no dead letter on {dlq}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let letter = raw
        .channel
        .basic_get(dlq.as_str().into(), Default::default())
        .await
        .expect("basic_get")
        .expect("the dead letter");
    let code = letter
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-beds-error-code").cloned());
    assert_eq!(code.map(|v| text(&v)).as_deref(), Some("undecodable"));
    assert_eq!(letter.data, b"[{\"v\":1}]");

    client.close().await.unwrap();
    admin.stop().await;
}

/// With sampling 0 a write publishes no lineage record at all.
#[tokio::test]
async fn sampling_0_records_nothing() {
    let mut env = TestEnv::new("lineage_off");
    env.config.lineage.sample = 0.0;
    let (_conn, channel, _, _) = env.amqp_peer("records").await;
    beds_runtime::topology::declare(&channel, &env.config.amqp, &[])
        .await
        .expect("topology");
    let queue =
        crate::support::bound_queue(&channel, &env.queue(beds_runtime::lineage::ROUTING_KEY)).await;
    let mut consumer = crate::support::consume_unacked(&channel, &queue).await;
    let nodes = env.start_counting().await;
    let client = env.client().await;
    let api = spew::client(&client);
    let author = api
        .user()
        .create(&UserCreate {
            handle: "off".into(),
            display_name: "Off".into(),
            bio: None,
        })
        .await
        .unwrap();
    api.spew()
        .create(&SpewCreate {
            author: author.id,
            body: "untraced".into(),
            reply_to: None,
            respew_of: None,
        })
        .await
        .unwrap();
    env.settle().await;
    client.close().await.unwrap();
    // Stopped: anything queued would have been published by now.
    nodes.stop().await;
    let deadline = Instant::now() + Duration::from_millis(500);
    let late = tokio::time::timeout_at(deadline.into(), consumer.next()).await;
    assert!(late.is_err(), "sampling 0 records nothing: {late:?}");
}
