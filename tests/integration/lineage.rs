//! Lineage: every message of a write's conversation carries its id, correlation id,
//! causation id, depth and origin (set by the runtime), and the records of a sampled
//! conversation link request, reply, event, tercero effect and invalidations by ids.

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

/// The records published on `{tag}log.lineage`, gathered until `enough` holds.
async fn records(
    env: &TestEnv,
    consumer: &mut lapin::Consumer,
    enough: impl Fn(&[Record]) -> bool,
    within: Duration,
) -> Vec<Record> {
    let _ = env;
    let deadline = Instant::now() + within;
    let mut out: Vec<Record> = Vec::new();
    while !enough(&out) {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, consumer.next()).await {
            Ok(Some(Ok(d))) => {
                out.extend(serde_json::from_slice::<Vec<Record>>(&d.data).expect("a batch"))
            }
            _ => break,
        }
    }
    out
}

/// With every conversation sampled, a SPEW create leaves request, reply, event, tercero
/// effect and invalidation records, linked by ids in its conversation; with sampling 0 it
/// leaves none.
#[tokio::test]
async fn a_write_leaves_its_lineage_records_linked_by_ids() {
    for sample in [1.0, 0.0] {
        let mut env = TestEnv::new("lineage_records");
        env.config.lineage.sample = sample;
        let (_conn, channel, _, _) = env.amqp_peer("records").await;
        beds_runtime::topology::declare(&channel, &env.config.amqp, &[])
            .await
            .expect("topology");
        let queue =
            crate::support::bound_queue(&channel, &env.queue(beds_runtime::lineage::ROUTING_KEY))
                .await;
        let mut consumer = crate::support::consume_unacked(&channel, &queue).await;
        let nodes = env.start_counting().await;
        let client = env.client().await;
        let api = spew::client(&client);
        let author = api
            .user()
            .create(&UserCreate {
                handle: "rec".into(),
                display_name: "Rec".into(),
                bio: None,
            })
            .await
            .unwrap();
        let created = api
            .spew()
            .create(&SpewCreate {
                author: author.id,
                body: "traced".into(),
                reply_to: None,
                respew_of: None,
            })
            .await
            .unwrap();
        env.settle().await;
        let complete = |rs: &[Record]| {
            let spew_request = rs
                .iter()
                .find(|r| r.kind_of == RecordType::Request && r.name == "spew.spew.create");
            let Some(request) = spew_request else {
                return false;
            };
            let of = |t: RecordType| {
                rs.iter()
                    .filter(|r| r.kind_of == t && r.correlation_id == request.correlation_id)
                    .count()
            };
            of(RecordType::Reply) >= 1
                && of(RecordType::Event) >= 1
                && of(RecordType::Effect) >= 1
                && of(RecordType::Invalidation) >= 1
        };
        let within = Duration::from_secs(if sample > 0.0 { 20 } else { 2 });
        let found = records(&env, &mut consumer, complete, within).await;
        client.close().await.unwrap();
        nodes.stop().await;
        if sample == 0.0 {
            // Stopped: anything queued would have been published by now.
            let late = records(&env, &mut consumer, |_| false, Duration::from_millis(500)).await;
            assert!(
                found.is_empty() && late.is_empty(),
                "sampling 0 records nothing: {found:?} {late:?}"
            );
            continue;
        }
        assert!(complete(&found), "a complete tree: {found:#?}");
        let request = found
            .iter()
            .find(|r| r.kind_of == RecordType::Request && r.name == "spew.spew.create")
            .unwrap();
        let conversation: Vec<&Record> = found
            .iter()
            .filter(|r| r.correlation_id == request.correlation_id)
            .collect();
        let by_id: HashMap<Uuid, &Record> = conversation.iter().map(|r| (r.id, *r)).collect();
        let event = conversation
            .iter()
            .find(|r| r.kind_of == RecordType::Event)
            .unwrap();
        assert_eq!(event.causation_id, Some(request.id), "event under request");
        assert_eq!(event.name, "evt.spew.spew.create");
        let reply = conversation
            .iter()
            .find(|r| r.kind_of == RecordType::Reply)
            .unwrap();
        assert_eq!(reply.causation_id, Some(request.id), "reply under request");
        assert_eq!(reply.outcome.as_deref(), Some("ok"));
        assert_eq!(request.outcome.as_deref(), Some("ok"));
        assert!(request.duration_us.is_some());
        let effect = conversation
            .iter()
            .find(|r| r.kind_of == RecordType::Effect && r.name.starts_with("tercero."))
            .expect("the tercero's effect");
        assert_eq!(effect.causation_id, Some(event.id), "effect under event");
        assert!(effect.origin.node.ends_with("-tercero"), "{effect:?}");
        for r in &conversation {
            if let Some(parent) = r.causation_id
                && r.kind_of != RecordType::Request
            {
                assert!(by_id.contains_key(&parent), "{r:?} has its parent recorded");
            }
        }
        let tree = beds_runtime::lineage::render(&found);
        assert!(
            tree.lines()
                .any(|l| l.starts_with("request spew.spew.create"))
                && tree
                    .lines()
                    .any(|l| l.starts_with("  event evt.spew.spew.create"))
                && tree
                    .lines()
                    .any(|l| l.starts_with("    effect tercero.counters")),
            "{tree}"
        );
        let _ = created;
    }
}
