//! The node control plane: heartbeats on `{tag}log.status`, and lane commands (pause,
//! resume, drain) on `{tag}ctl.{node}`, signed or refused.

use std::time::{Duration, Instant};

use beds_runtime::config::Millis;
use beds_runtime::signing::{Purpose, ServiceKey};
use beds_runtime::telemetry::status::{NodeStatus, STATUS_KEY, control_key};
use futures_util::StreamExt;
use lapin::BasicProperties;
use lapin::options::BasicPublishOptions;
use serde_json::{Value as Json, json};

use crate::http::get;
use crate::support::{TestEnv, bound_queue, consume_unacked};

const WITHIN: Duration = Duration::from_secs(15);

/// Sends a lane command to `node` (signed with the test env's development key, or not)
/// and returns the reply.
async fn command(
    env: &TestEnv,
    peer: &mut (lapin::Connection, lapin::Channel, String, lapin::Consumer),
    op: &str,
    lane: &str,
    signed: bool,
) -> Json {
    let id = uuid::Uuid::now_v7().to_string();
    // As the admin forwards an adm request (id `id`, depth 1): the lineage rides along.
    let body = serde_json::to_vec(
        &json!({"v": 1, "op": op, "lane": lane, "causation_id": id, "depth": 2}),
    )
    .unwrap();
    let mut props = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_message_id(id.as_str().into())
        .with_correlation_id(id.as_str().into())
        .with_reply_to(peer.2.as_str().into());
    if signed {
        props = ServiceKey::development().sign(Purpose::Control, props, &body);
    }
    let key = env.queue(&control_key(&env.config.node));
    peer.1
        .basic_publish(
            "beds.events".into(),
            key.as_str().into(),
            BasicPublishOptions::default(),
            &body,
            props,
        )
        .await
        .unwrap();
    // A drain waits up to shutdown.drain_timeout (5 s in the test env).
    let delivery = tokio::time::timeout(WITHIN, peer.3.next())
        .await
        .expect("the node answers a control command")
        .unwrap()
        .unwrap();
    assert_eq!(
        delivery
            .properties
            .correlation_id()
            .as_ref()
            .map(|c| c.as_str()),
        Some(id.as_str())
    );
    ServiceKey::development()
        .verify(Purpose::Reply, &delivery.properties, &delivery.data)
        .expect("control replies are signed");
    let reply: Json = serde_json::from_slice(&delivery.data).unwrap();
    assert_eq!(reply["causation_id"], json!(id), "{reply}");
    assert_eq!(reply["origin"]["node"], json!(env.config.node), "{reply}");
    if signed {
        assert_eq!(reply["depth"], 3, "the command's depth + 1: {reply}");
    }
    reply
}

/// The next heartbeat satisfying `want`, verified, within [`WITHIN`].
async fn heartbeat(
    consumer: &mut lapin::Consumer,
    want: impl Fn(&NodeStatus) -> bool,
) -> NodeStatus {
    let deadline = Instant::now() + WITHIN;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let delivery = tokio::time::timeout(left, consumer.next())
            .await
            .expect("a matching heartbeat in time")
            .unwrap()
            .unwrap();
        ServiceKey::development()
            .verify(Purpose::Status, &delivery.properties, &delivery.data)
            .expect("heartbeats are signed");
        let status: NodeStatus = serde_json::from_slice(&delivery.data).unwrap();
        if want(&status) {
            return status;
        }
    }
}

async fn replies(consumer: &mut lapin::Consumer, n: usize) -> Vec<Json> {
    let mut out = Vec::new();
    while out.len() < n {
        let d = tokio::time::timeout(WITHIN, consumer.next())
            .await
            .unwrap_or_else(|_| panic!("{n} replies in time, got {}", out.len()))
            .unwrap()
            .unwrap();
        out.push(serde_json::from_slice(&d.data).unwrap());
    }
    out
}

#[tokio::test]
async fn heartbeats_are_signed_and_describe_the_node() {
    let mut env = TestEnv::new("control_heartbeat");
    env.config.telemetry.heartbeat = Millis(200);
    let (_conn, channel, _, _) = env.amqp_peer("status").await;
    let status_queue = bound_queue(&channel, &env.queue(STATUS_KEY)).await;
    let mut statuses = consume_unacked(&channel, &status_queue).await;
    let server = env.start().await;

    // The first heartbeats may come while the workers are still starting their consumers.
    let status = heartbeat(&mut statuses, |s| {
        s.health.ready && s.lanes.iter().all(|l| l.workers > 0)
    })
    .await;
    assert_eq!(status.node, env.config.node);
    assert_eq!(status.role, "appServer");
    assert_eq!(status.env, "test");
    assert_eq!(status.heartbeat_ms, 200);
    assert_eq!(status.correlation_id, status.causation_id);
    assert_eq!(status.origin.node, env.config.node);
    assert!(status.version.domains.iter().any(|d| d.name == "spew"));
    let lanes: Vec<(&str, &str, usize)> = status
        .lanes
        .iter()
        .map(|l| (l.lane.as_str(), l.state.as_str(), l.workers))
        .collect();
    assert_eq!(
        lanes,
        [
            (
                "rec.read",
                "consuming",
                env.config.brokers.read.workers as usize
            ),
            (
                "rec.write",
                "consuming",
                env.config.brokers.write.workers as usize
            ),
        ]
    );
    assert_eq!(
        status.health.checks.get("lanes").map(String::as_str),
        Some("ok")
    );

    // Counters grow with the requests the node settles; the run id stays.
    let client = env.client().await;
    beds::spew::client(&client)
        .user()
        .create(&beds::spew::UserCreate {
            handle: "counted".into(),
            display_name: "counted".into(),
            bio: None,
        })
        .await
        .unwrap();
    let later = heartbeat(&mut statuses, |s| {
        s.counters
            .iter()
            .any(|c| c.lane == "rec.write" && c.ok == 1)
    })
    .await;
    assert_eq!(later.correlation_id, status.correlation_id);
    let write = later
        .counters
        .iter()
        .find(|c| c.lane == "rec.write")
        .unwrap();
    assert_eq!(write.latency_buckets.iter().sum::<u64>(), 1);
    assert!(write.latency_sum_us > 0);
    server.stop().await;
}

#[tokio::test]
async fn a_paused_lane_keeps_writes_queued_until_resumed_and_a_drain_counts_what_finished() {
    let mut env = TestEnv::new("control_lanes");
    env.config.telemetry.heartbeat = Millis(200);
    // A write waits for the held lock instead of failing.
    env.config.database.busy_timeout = Millis(30_000);
    let server = env.start().await;
    let addr = server.http_addr().unwrap();
    let mut peer = env.amqp_peer("control").await;
    let (_wconn, writer, write_replies, mut answers) = env.amqp_peer("writes").await;

    // Unsigned: refused, and nothing changes.
    let refused = command(&env, &mut peer, "pause", "rec.write", false).await;
    assert_eq!(refused["status"], "error", "{refused}");
    assert_eq!(refused["error"]["code"], "untrusted_origin", "{refused}");
    let unknown = command(&env, &mut peer, "pause", "rec.nothing", true).await;
    assert_eq!(unknown["error"]["code"], "not_found", "{unknown}");

    let paused = command(&env, &mut peer, "pause", "rec.write", true).await;
    assert_eq!(paused["status"], "ok", "{paused}");
    assert_eq!(paused["data"]["state"], "paused", "{paused}");
    assert_eq!(paused["data"]["node"], env.config.node.as_str());
    let queue = env.queue("rec.write");
    for i in 0..3 {
        env.send_write(&writer, &write_replies, &format!("queued{i}"))
            .await;
    }
    let deadline = Instant::now() + WITHIN;
    loop {
        let state = env.queue_state(&queue).await;
        if state == Some((3, 0)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "rec.write is {state:?}, not 3 queued and no consumer"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, body) = get(addr, "/readyz").await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("rec.write is paused"), "{body}");
    let metrics = get(addr, "/metrics").await.unwrap().1;
    assert!(
        metrics.contains(r#"beds_lane_state{lane="rec.write",state="paused"} 1"#),
        "{metrics}"
    );

    let resumed = command(&env, &mut peer, "resume", "rec.write", true).await;
    assert_eq!(resumed["data"]["state"], "consuming", "{resumed}");
    for reply in replies(&mut answers, 3).await {
        assert_eq!(reply["status"], "ok", "{reply}");
    }
    assert_eq!(get(addr, "/readyz").await.unwrap().0, 200);

    // A write held by the database lock is in flight when the drain starts; the drain
    // waits for it and counts it.
    let mut held = env.lock_database().await;
    let id = env.send_write(&writer, &write_replies, "held").await;
    let deadline = Instant::now() + WITHIN;
    while !get(addr, "/metrics")
        .await
        .unwrap()
        .1
        .contains(r#"beds_in_flight{lane="rec.write"} 1"#)
    {
        assert!(
            Instant::now() < deadline,
            "the held write never went in flight"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        sqlx::query("ROLLBACK").execute(&mut held).await.unwrap();
    });
    let drained = command(&env, &mut peer, "drain", "rec.write", true).await;
    release.await.unwrap();
    assert_eq!(drained["data"]["state"], "drained", "{drained}");
    assert_eq!(drained["data"]["finished"], 1, "{drained}");
    let answered = replies(&mut answers, 1).await.remove(0);
    assert_eq!(answered["status"], "ok", "{answered}");
    assert_eq!(answered["causation_id"], id.as_str());
    let metrics = get(addr, "/metrics").await.unwrap().1;
    assert!(
        metrics.contains(r#"beds_lane_state{lane="rec.write",state="drained"} 1"#),
        "{metrics}"
    );
    assert_eq!(env.queue_state(&queue).await, Some((0, 0)));
    server.stop().await;
}

#[tokio::test]
async fn heartbeats_list_deliveries_in_flight_for_over_a_second() {
    let mut env = TestEnv::new("control_in_flight");
    env.config.telemetry.heartbeat = Millis(200);
    env.config.database.busy_timeout = Millis(30_000);
    let (_conn, channel, _, _) = env.amqp_peer("status").await;
    let status_queue = bound_queue(&channel, &env.queue(STATUS_KEY)).await;
    let mut statuses = consume_unacked(&channel, &status_queue).await;
    let server = env.start().await;
    let (_wconn, writer, write_replies, mut answers) = env.amqp_peer("writes").await;

    let mut held = env.lock_database().await;
    let id = env.send_write(&writer, &write_replies, "stuck").await;
    let status = heartbeat(&mut statuses, |s| !s.in_flight.is_empty()).await;
    let stuck = &status.in_flight[0];
    assert_eq!(stuck.message_id.map(|m| m.to_string()), Some(id.clone()));
    assert_eq!(stuck.lane, "rec.write");
    assert_eq!(stuck.target.as_deref(), Some("spew.user.create"));
    assert!(stuck.age_ms >= 1_000, "{stuck:?}");
    sqlx::query("ROLLBACK").execute(&mut held).await.unwrap();
    assert_eq!(replies(&mut answers, 1).await[0]["status"], "ok");
    heartbeat(&mut statuses, |s| s.in_flight.is_empty()).await;
    server.stop().await;
}
