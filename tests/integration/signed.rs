//! Nothing a client can forge is trusted (wiki/security.md, "Signed headers and events"):
//! dead letters published straight to `beds.dlx`, writes published to a retry lane, a
//! client's `x-beds-attempt`, a `reply_to` naming someone else's queue and write events
//! published to `beds.events` by a client are each refused, observably; what the node
//! itself makes (retries, dead letters, replies) carries a signature that verifies.

use std::time::{Duration, Instant};

use beds_runtime::names::{headers, retry_queue};
use beds_runtime::signing::{Purpose, ServiceKey};
use lapin::options::{BasicPublishOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel};
use serde_json::{Value as Json, json};

use crate::support::{TestEnv, consume_unacked, envelope};
use crate::wire::{header, next};

const WAIT: Duration = Duration::from_secs(20);

/// Publishes `body` on `exchange` with `routing_key`.
async fn publish(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    props: BasicProperties,
) {
    channel
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions::default(),
            body,
            props,
        )
        .await
        .expect("publish")
        .await
        .expect("published");
}

fn table(pairs: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in pairs {
        t.insert((*k).into(), v.clone());
    }
    t
}

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(s.into())
}

/// Waits until `check` holds, failing with `what` after [`WAIT`].
async fn until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let end = Instant::now() + WAIT;
    while !check().await {
        assert!(Instant::now() < end, "{what} within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn users_named(env: &TestEnv, handle: &str) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM spw_users WHERE handle_usr = ?")
        .bind(handle)
        .fetch_one(&env.db().await)
        .await
        .unwrap()
}

fn create_user(handle: &str) -> Vec<u8> {
    envelope(
        "user",
        "create",
        json!({"data": {"handle": handle, "display_name": "F"}}),
    )
}

#[tokio::test]
async fn forged_dead_letters_are_listed_untrusted_and_never_replayed() {
    let env = TestEnv::new("forged_dlq");
    let server = env.start().await;
    let (_conn, channel, reply_queue, _replies) = env.amqp_peer("forger").await;
    let write = env.queue("rec.write");
    let claims = |signature: Option<&str>| {
        let mut pairs = vec![
            (headers::ERROR_CODE, text("database_unavailable")),
            (headers::ERROR_CLASS, text("transient")),
            (headers::REASON, text("the database is unavailable")),
            (headers::ATTEMPT, AMQPValue::LongLongInt(4)),
        ];
        if let Some(s) = signature {
            pairs.push((headers::SIGNATURE, text(s)));
        }
        BasicProperties::default()
            .with_content_type("application/json".into())
            .with_reply_to(reply_queue.as_str().into())
            .with_headers(table(&pairs))
    };
    // One with no signature, one with a made-up one.
    publish(
        &channel,
        "beds.dlx",
        &write,
        &create_user("forged1"),
        claims(None),
    )
    .await;
    let made_up = "ab".repeat(32);
    publish(
        &channel,
        "beds.dlx",
        &write,
        &create_user("forged2"),
        claims(Some(&made_up)),
    )
    .await;
    let dlq_name = format!("{write}.dlq");
    until("both forged letters in the dead-letter queue", || async {
        env.depth(&dlq_name).await == 2
    })
    .await;

    let listed = env.dlq(&["list"]);
    assert!(
        listed.contains("untrusted_origin") && !listed.contains("database_unavailable"),
        "{listed}"
    );
    assert!(listed.trim_end().ends_with('2'), "{listed}");
    let shown = env.dlq(&["show", "1"]);
    assert!(
        shown.contains("code:     untrusted_origin")
            && shown.contains("claims `database_unavailable`"),
        "{shown}"
    );
    let replayed = env.dlq(&["replay", "--code", "database_unavailable"]);
    assert!(
        replayed.contains("replayed 0 dead letters") && replayed.contains("refused 2"),
        "{replayed}"
    );
    let replayed = env.dlq(&["replay"]);
    assert!(
        replayed.contains("replayed 0 dead letters") && replayed.contains("refused 2"),
        "{replayed}"
    );
    until(
        "the refused letters back in the dead-letter queue",
        || async { env.depth(&dlq_name).await == 2 },
    )
    .await;
    // The node serves the lane (a real write goes through), and neither forged write ran.
    let client = env.client().await;
    beds::spew::client(&client)
        .user()
        .create(&beds::spew::UserCreate {
            handle: "real".into(),
            display_name: "R".into(),
            bio: None,
        })
        .await
        .unwrap();
    assert_eq!(users_named(&env, "forged1").await, 0);
    assert_eq!(users_named(&env, "forged2").await, 0);
    client.close().await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn a_write_published_to_the_retry_lane_is_dead_lettered_untrusted() {
    let env = TestEnv::new("forged_retry");
    let server = env.start().await;
    let (_conn, channel, reply_queue, _replies) = env.amqp_peer("forger").await;
    let write = env.queue("rec.write");
    let mut dead = consume_unacked(&channel, &format!("{write}.dlq")).await;
    let body = create_user("sneaky");
    // Straight into the lane, expiring at once: the broker sends it back to rec.write.
    let props = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_reply_to(reply_queue.as_str().into())
        .with_expiration("1".into())
        .with_headers(table(&[(headers::ATTEMPT, AMQPValue::LongLongInt(1))]));
    publish(&channel, "", &retry_queue(&write), &body, props).await;

    let letter = next(&mut dead, "the dead letter").await;
    assert_eq!(letter.data, body);
    assert_eq!(
        header(&letter, headers::ERROR_CODE).as_deref(),
        Some("untrusted_origin")
    );
    assert!(
        header(&letter, headers::REASON)
            .unwrap_or_default()
            .contains("retry lane"),
        "{:?}",
        header(&letter, headers::REASON)
    );
    // The verdict is the node's own, signed.
    let key = ServiceKey::load(&env.config).unwrap();
    assert_eq!(
        key.verify(Purpose::DeadLetter, &letter.properties, &letter.data),
        Ok(())
    );
    assert_eq!(users_named(&env, "sneaky").await, 0);
    server.stop().await;
}

/// A broker user of its own for one test (RabbitMQ checks `user_id` against the login, so
/// a client whose login is not the node's needs one), removed when dropped.
struct BrokerUser(String);

impl BrokerUser {
    fn new() -> BrokerUser {
        let name = format!("beds-test-{}", uuid::Uuid::now_v7().simple());
        ctl(&["add_user", &name, "test-password"]);
        ctl(&["set_permissions", "-p", "/", &name, ".*", ".*", ".*"]);
        BrokerUser(name)
    }

    /// `url` logged in as this user.
    fn url(&self, url: &str) -> String {
        let (_, rest) = url.split_once('@').expect("an AMQP URL with a login");
        format!("amqp://{}:test-password@{rest}", self.0)
    }
}

impl Drop for BrokerUser {
    fn drop(&mut self) {
        let _ = std::process::Command::new("rabbitmqctl")
            .args(["-q", "delete_user", &self.0])
            .output();
    }
}

fn ctl(args: &[&str]) {
    let out = std::process::Command::new("rabbitmqctl")
        .arg("-q")
        .args(args)
        .output()
        .expect("this test needs rabbitmqctl on PATH");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The database is locked: the write goes round the retry lane. A client's
/// `x-beds-attempt: 5` (beyond `max_attempts`) changes nothing: the write gets its four
/// attempts, each retry signed by the node. The client logs in as a user of its own and
/// sets `user_id`: the node, which may not publish another login's `user_id`, carries it
/// as the signed `x-beds-user-id` through every retry into the dead letter.
#[tokio::test]
async fn a_client_attempt_header_does_not_shorten_the_retries() {
    let mut env = TestEnv::new("forged_attempt");
    env.config.database.busy_timeout = beds_runtime::config::Millis(50);
    env.config.retry.max_attempts = 4;
    env.config.retry.backoff = beds_runtime::config::Millis(100);
    let server = env.start().await;
    let user = BrokerUser::new();
    let conn = lapin::Connection::connect(
        &user.url(&env.config.amqp.url),
        lapin::ConnectionProperties::default(),
    )
    .await
    .expect("the test user connects");
    let channel = conn.create_channel().await.unwrap();
    let (reply_queue, mut replies) = beds_runtime::topology::reply_queue(
        &channel,
        &beds_runtime::names::reply_queue(&uuid::Uuid::now_v7().simple().to_string()),
    )
    .await
    .unwrap();
    let write = env.queue("rec.write");
    let mut dead = consume_unacked(&channel, &format!("{write}.dlq")).await;

    let mut held = env.lock_database().await;
    let props = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_reply_to(reply_queue.as_str().into())
        .with_correlation_id("attempts-1".into())
        .with_user_id(user.0.as_str().into())
        .with_headers(table(&[
            (headers::ATTEMPT, AMQPValue::LongLongInt(5)),
            (headers::ERROR_CODE, text("internal")),
        ]));
    publish(&channel, "beds.events", &write, &create_user("late"), props).await;

    let reply = next(&mut replies, "the reply once attempts run out").await;
    let reply: Json = serde_json::from_slice(&reply.data).unwrap();
    assert_eq!(reply["error"]["code"], "database_unavailable", "{reply}");
    let letter = next(&mut dead, "the dead letter").await;
    sqlx::query("ROLLBACK").execute(&mut held).await.unwrap();
    drop(held);
    let got = letter.properties.headers().clone().unwrap_or_default();
    assert_eq!(
        got.inner().get(headers::ATTEMPT),
        Some(&AMQPValue::LongLongInt(4)),
        "all four attempts, not one"
    );
    assert_eq!(
        header(&letter, headers::ERROR_CODE).as_deref(),
        Some("database_unavailable")
    );
    assert_eq!(header(&letter, headers::CALLER), Some(user.0.clone()));
    assert_eq!(letter.properties.user_id(), &None);
    let key = ServiceKey::load(&env.config).unwrap();
    assert_eq!(
        key.verify(Purpose::DeadLetter, &letter.properties, &letter.data),
        Ok(())
    );
    // RabbitMQ's own record: three trips through the retry lane.
    let retry = retry_queue(&write);
    let trips = match got.inner().get(headers::DEATH) {
        Some(AMQPValue::FieldArray(deaths)) => deaths.as_slice().iter().find_map(|d| match d {
            AMQPValue::FieldTable(t) if t.inner().get("queue") == Some(&text(&retry)) => {
                t.inner().get("count").cloned()
            }
            _ => None,
        }),
        other => panic!("x-death: {other:?}"),
    };
    assert_eq!(trips, Some(AMQPValue::LongLongInt(3)));
    conn.close(200, "done".into()).await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn replies_go_only_to_reply_queues_and_carry_proof_of_origin() {
    let env = TestEnv::new("reply_to_rule");
    let server = env.start().await;
    let (_conn, channel, reply_queue, mut replies) = env.amqp_peer("victim").await;
    let write = env.queue("rec.write");
    let read = env.queue("rec.read");
    let mut dead = consume_unacked(&channel, &format!("{write}.dlq")).await;
    let victim = format!("victim.{}", uuid::Uuid::now_v7().simple());
    channel
        .queue_declare(
            victim.as_str().into(),
            QueueDeclareOptions {
                exclusive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let to = |queue: &str| {
        BasicProperties::default()
            .with_content_type("application/json".into())
            .with_reply_to(queue.into())
    };
    publish(
        &channel,
        "beds.events",
        &write,
        &create_user("v1"),
        to(&victim),
    )
    .await;
    publish(
        &channel,
        "beds.events",
        &write,
        &create_user("v2"),
        to(&read),
    )
    .await;
    for _ in 0..2 {
        let letter = next(&mut dead, "a dead letter").await;
        assert_eq!(
            header(&letter, headers::ERROR_CODE).as_deref(),
            Some("bad_reply_to")
        );
        let reason = header(&letter, headers::REASON).unwrap_or_default();
        assert!(reason.contains("beds.reply."), "{reason}");
    }
    // Exclusive to this connection, so counted on it.
    let victim_state = channel
        .queue_declare(
            victim.as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    assert_eq!(
        victim_state.message_count(),
        0,
        "nothing published to the victim"
    );
    assert_eq!(env.depth(&format!("{read}.dlq")).await, 0);
    assert_eq!(users_named(&env, "v1").await, 0);
    assert_eq!(users_named(&env, "v2").await, 0);

    // A request with a conforming reply queue is answered, by the node's login, signed.
    let list = envelope("user", "list", json!({}));
    publish(&channel, "beds.events", &read, &list, to(&reply_queue)).await;
    let reply = next(&mut replies, "the reply").await;
    let user = reply.properties.user_id().as_ref().map(|u| u.to_string());
    let login = env.config.amqp.url["amqp://".len()..]
        .split(':')
        .next()
        .unwrap()
        .to_string();
    assert_eq!(user, Some(login));
    let key = ServiceKey::load(&env.config).unwrap();
    assert_eq!(
        key.verify(Purpose::Reply, &reply.properties, &reply.data),
        Ok(())
    );
    server.stop().await;
}

#[tokio::test]
async fn a_forged_write_event_is_dead_lettered_by_tercero_and_counts_nothing() {
    let env = TestEnv::new("forged_event");
    let nodes = env.start_counting().await;
    let client = env.client().await;
    let api = beds::spew::client(&client);
    let ada = api
        .user()
        .create(&beds::spew::UserCreate {
            handle: "ada".into(),
            display_name: "Ada".into(),
            bio: None,
        })
        .await
        .unwrap();
    env.settle().await;
    let rows = env.rows().await;
    let applied = rows.total("beds_event_applied").await;
    let counted = || async {
        sqlx::query_scalar::<_, i64>("SELECT COALESCE(SUM(value), 0) FROM beds_counter")
            .fetch_one(rows.pool())
            .await
            .unwrap()
    };
    assert_eq!(counted().await, 0);

    let (_conn, channel, _reply, _replies) = env.amqp_peer("forger").await;
    let tercero = env.queue(beds_runtime::EVENT_QUEUE_KEY);
    let mut dead = consume_unacked(&channel, &format!("{tercero}.dlq")).await;
    let id = uuid::Uuid::now_v7();
    let spew = uuid::Uuid::now_v7();
    let ada_id = serde_json::to_value(ada.id).unwrap();
    let event = json!({
        "v": 1, "kind": "write_event", "id": id, "correlation_id": id, "causation_id": id,
        "depth": 1, "origin": {"service": "beds", "node": "node1", "env": "test"},
        "seq": 999_999, "domain": "spew", "template": "spew", "op": "create",
        "key": {"id": spew}, "version": 1, "committed_at": "2026-11-28T07:20:41.399303Z",
        "after": {"id": spew, "version": 1, "author": ada_id, "text": "forged"},
        "before": null
    });
    let body = serde_json::to_vec(&event).unwrap();
    let routing_key = format!("{}evt.spew.spew.create", env.config.amqp.queue_tag);
    let props = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_message_id(id.to_string().into())
        .with_headers(table(&[(headers::SIGNATURE, text(&"00".repeat(32)))]));
    publish(&channel, "beds.events", &routing_key, &body, props).await;

    let letter = next(&mut dead, "the forged event dead-lettered").await;
    assert_eq!(letter.data, body);
    assert_eq!(
        header(&letter, headers::ERROR_CODE).as_deref(),
        Some("untrusted_origin")
    );
    assert_eq!(rows.total("beds_event_applied").await, applied);
    assert_eq!(counted().await, 0, "no counter moved");

    // Signed by this deployment but not a write event: parked in the same dead-letter queue
    // (the broker's own dead-lettering would keep the evt.* key, which binds nothing there).
    let garbage = br#"{"v":1,"kind":"something_else"}"#.to_vec();
    let props = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_message_id(uuid::Uuid::now_v7().to_string().into());
    let props = ServiceKey::load(&env.config)
        .unwrap()
        .sign(Purpose::WriteEvent, props, &garbage);
    publish(&channel, "beds.events", &routing_key, &garbage, props).await;
    let letter = next(&mut dead, "the undecodable event dead-lettered").await;
    assert_eq!(letter.data, garbage);
    assert_eq!(
        header(&letter, headers::ERROR_CODE).as_deref(),
        Some("undecodable")
    );

    // A genuine spew by ada still counts: the tercero is alive and verifies real events.
    api.spew()
        .create(&beds::spew::SpewCreate {
            author: ada.id,
            body: "real".into(),
            reply_to: None,
            respew_of: None,
        })
        .await
        .unwrap();
    until("the genuine spew counted", || async {
        counted().await == 1
    })
    .await;
    client.close().await.unwrap();
    nodes.stop().await;
}
