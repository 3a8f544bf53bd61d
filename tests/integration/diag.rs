//! Diagnostics through the admin role: `diag` (adm op and `beds diag`) reports a hanging
//! handler as stuck within the threshold, and `beds admin pause|resume|drain` reach the
//! node.

use std::process::Output;
use std::time::{Duration, Instant};

use beds_runtime::Client;
use beds_runtime::config::Millis;
use futures_util::StreamExt;
use serde_json::{Map, Value as Json, json};

use crate::support::{TestEnv, repo_config_path};

const WITHIN: Duration = Duration::from_secs(15);

/// `beds ARGS` against this environment's broker and queue tag (the `dev` env, whose
/// development key and `guest` admin role are the test env's). Waited for off the test's
/// runtime, which runs the nodes that answer it.
async fn beds(env: &TestEnv, args: &[&str]) -> Output {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_beds"));
    command
        .args(args)
        .arg("--config")
        .arg(repo_config_path())
        .env("BEDS_AMQP__URL", &env.config.amqp.url)
        .env("BEDS_AMQP__QUEUE_TAG", &env.config.amqp.queue_tag);
    tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap()
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

async fn diag(client: &Client) -> Json {
    client.admin("diag", Map::new()).await.expect("diag")
}

/// Polls the diag report until `done` holds, failing after `within`.
async fn diag_until(client: &Client, within: Duration, done: impl Fn(&Json) -> bool) -> Json {
    let end = Instant::now() + within;
    loop {
        let report = diag(client).await;
        if done(&report) {
            return report;
        }
        assert!(Instant::now() < end, "not within {within:?}: {report:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the diag report lists `node` (its first heartbeat has arrived).
async fn until_listed(client: &Client, node: &str) {
    diag_until(client, WITHIN, |r| {
        r["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["node"] == node)
    })
    .await;
}

fn stuck_ids(report: &Json) -> Vec<String> {
    report["stuck"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["message_id"].as_str().map(str::to_string))
        .collect()
}

#[tokio::test]
async fn a_hanging_handler_is_reported_stuck_within_the_threshold_and_clears() {
    let mut env = TestEnv::new("diag_stuck");
    let heartbeat = Duration::from_millis(200);
    let stuck_after = Duration::from_millis(1_500);
    env.config.telemetry.heartbeat = Millis(heartbeat.as_millis() as u64);
    env.config.admin.stuck_after = Millis(stuck_after.as_millis() as u64);
    env.config.telemetry.queue_poll = Millis(200);
    // The write waits for the held lock instead of failing: a hanging handler.
    env.config.database.busy_timeout = Millis(60_000);
    let app = env.start().await;
    let admin = env.start_admin().await;
    let client = env.client().await;
    let node = env.config.node.clone();
    until_listed(&client, &node).await;

    let (_conn, writer, reply_to, mut answers) = env.amqp_peer("writes").await;
    let mut held = env.lock_database().await;
    let sent = Instant::now();
    let id = env.send_write(&writer, &reply_to, "hung").await;
    // Reported within the threshold and two heartbeats of being sent.
    let report = diag_until(&client, stuck_after + heartbeat * 2, |r| {
        stuck_ids(r).contains(&id)
    })
    .await;
    assert!(
        sent.elapsed() >= stuck_after,
        "reported too early: {report:#}"
    );
    let stuck = report["stuck"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["message_id"] == id.as_str())
        .unwrap();
    assert_eq!(stuck["node"], node.as_str());
    assert_eq!(stuck["lane"], "rec.write");
    assert_eq!(stuck["target"], "spew.user.create");
    assert_eq!(stuck["because"], "threshold");
    assert!(stuck["age_ms"].as_u64().unwrap() >= 1_500, "{stuck}");
    // The lane's queue is read and the node's lanes are listed.
    let lanes = report["lanes"].as_array().unwrap();
    assert!(
        lanes
            .iter()
            .any(|l| l["lane"] == "rec.write" && l["queue"]["consumers"].as_u64() > Some(0)),
        "{report:#}"
    );

    // The command line says the same, in words and as JSON.
    let text = stdout(&beds(&env, &["diag"]).await);
    assert!(text.contains(&id), "{text}");
    assert!(text.contains("spew.user.create"), "{text}");
    assert!(text.contains(&format!("{node} appServer")), "{text}");
    let json: Json = serde_json::from_str(&stdout(&beds(&env, &["diag", "--json"]).await)).unwrap();
    assert!(stuck_ids(&json).contains(&id), "{json:#}");

    sqlx::query("ROLLBACK").execute(&mut held).await.unwrap();
    let answered = tokio::time::timeout(WITHIN, answers.next())
        .await
        .expect("the held write is answered once released")
        .unwrap()
        .unwrap();
    let answered: Json = serde_json::from_slice(&answered.data).unwrap();
    assert_eq!(answered["status"], "ok", "{answered}");
    diag_until(&client, WITHIN, |r| !stuck_ids(r).contains(&id)).await;
    let text = stdout(&beds(&env, &["diag"]).await);
    assert!(!text.contains(&id), "{text}");
    admin.stop().await;
    app.stop().await;
}

#[tokio::test]
async fn beds_admin_pauses_resumes_and_drains_a_nodes_lane() {
    let mut env = TestEnv::new("diag_lanes");
    env.config.telemetry.heartbeat = Millis(200);
    let app = env.start().await;
    let admin = env.start_admin().await;
    let client = env.client().await;
    let node = env.config.node.clone();
    until_listed(&client, &node).await;

    let paused: Json = serde_json::from_str(&stdout(
        &beds(&env, &["admin", "pause", &node, "rec.write"]).await,
    ))
    .unwrap();
    assert_eq!(paused["state"], "paused", "{paused}");
    assert_eq!(paused["node"], node.as_str());
    let queue = env.queue("rec.write");
    let deadline = Instant::now() + WITHIN;
    while env.queue_state(&queue).await.map(|s| s.1) != Some(0) {
        assert!(Instant::now() < deadline, "rec.write kept its consumers");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The admin sees the lane paused in the next heartbeats.
    diag_until(&client, WITHIN, |r| {
        r["nodes"].as_array().unwrap().iter().any(|n| {
            n["node"] == node.as_str()
                && n["lanes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|l| l["lane"] == "rec.write" && l["state"] == "paused")
        })
    })
    .await;

    let resumed: Json = serde_json::from_str(&stdout(
        &beds(&env, &["admin", "resume", &node, "rec.write"]).await,
    ))
    .unwrap();
    assert_eq!(resumed["state"], "consuming", "{resumed}");

    let mut fields = Map::new();
    fields.insert("node".into(), json!(node));
    fields.insert("lane".into(), json!("rec.read"));
    let drained = client.admin("drain", fields).await.expect("drain");
    assert_eq!(drained["state"], "drained", "{drained}");
    assert_eq!(drained["finished"], 0, "{drained}");

    // An unknown node: not_found naming the known ones, exit code 3 like `beds call`.
    let out = beds(&env, &["admin", "pause", "nowhere", "rec.write"]).await;
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not_found") && err.contains(&node), "{err}");
    admin.stop().await;
    app.stop().await;
}
