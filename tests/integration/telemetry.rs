//! The telemetry server of a node: the series of `/metrics` after known requests, and
//! `/healthz` and `/readyz` of a running node.

use std::time::Duration;

use beds::spew::{self, UserCreate};
use beds_runtime::ErrorCode;
use lapin::BasicProperties;
use serde_json::{Value as Json, json};

use crate::http::{get, scrape_until, value};
use crate::support::{TestEnv, envelope};

const WITHIN: Duration = Duration::from_secs(15);

fn user(handle: &str) -> UserCreate {
    UserCreate {
        handle: handle.into(),
        display_name: handle.into(),
        bio: None,
    }
}

#[tokio::test]
async fn metrics_count_requests_by_target_outcome_and_code() {
    let mut env = TestEnv::new("telemetry_metrics");
    env.config.telemetry.queue_poll = beds_runtime::config::Millis(200);
    let server = env.start().await;
    let addr = server
        .http_addr()
        .expect("telemetry.listen is set in the test config");
    let client = env.client().await;
    let users = spew::client(&client).user();

    let mut ids = Vec::new();
    for handle in ["ada", "grace", "edsger"] {
        ids.push(users.create(&user(handle)).await.unwrap().id);
    }
    let missing = users
        .fetch(spew::UserId(uuid::Uuid::now_v7()))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Some(ErrorCode::NotFound), "{missing}");
    // A cached template: the first fetch misses and keeps the record, the second hits.
    users.fetch(ids[0]).await.unwrap();
    users.fetch(ids[0]).await.unwrap();
    let raw = env.raw().await;
    let unknown = raw
        .request(
            &env.queue("rec.read"),
            &envelope("tweet", "fetch", json!({"key": {"id": ids[0]}})),
        )
        .await;
    assert_eq!(unknown["error"]["code"], "unknown_template", "{unknown}");
    // No reply_to: dead-lettered, and counted under its reason.
    raw.publish(
        &env.queue("rec.read"),
        &envelope("user", "fetch", json!({"key": {"id": ids[0]}})),
        BasicProperties::default()
            .with_content_type("application/json".into())
            .with_user_id(raw.login.as_str().into()),
    )
    .await;

    let expected = [
        (
            r#"beds_requests_total{domain="spew",template="user",op="create",outcome="ok",code="none"}"#,
            3.0,
        ),
        (
            r#"beds_requests_total{domain="spew",template="user",op="fetch",outcome="error",code="not_found"}"#,
            1.0,
        ),
        (
            r#"beds_requests_total{domain="spew",template="user",op="fetch",outcome="ok",code="none"}"#,
            2.0,
        ),
        (
            r#"beds_requests_total{domain="unknown",template="unknown",op="fetch",outcome="error",code="unknown_template"}"#,
            1.0,
        ),
        (
            r#"beds_requests_total{domain="unknown",template="unknown",op="unknown",outcome="error",code="no_reply_to"}"#,
            1.0,
        ),
        (
            r#"beds_request_duration_seconds_count{domain="spew",template="user",op="create"}"#,
            3.0,
        ),
        (
            r#"beds_request_duration_seconds_bucket{domain="spew",template="user",op="create",le="+Inf"}"#,
            3.0,
        ),
        (
            r#"beds_request_duration_seconds_count{domain="spew",template="user",op="fetch"}"#,
            3.0,
        ),
        (
            r#"beds_dead_letters_total{lane="rec.read",reason="no_reply_to"}"#,
            1.0,
        ),
        (
            r#"beds_cache_lookups_total{domain="spew",template="user",op="fetch",result="miss"}"#,
            2.0,
        ),
        (
            r#"beds_cache_lookups_total{domain="spew",template="user",op="fetch",result="hit"}"#,
            1.0,
        ),
        (r#"beds_in_flight{lane="rec.read"}"#, 0.0),
        (r#"beds_in_flight{lane="rec.write"}"#, 0.0),
        (
            r#"beds_queue_consumers{queue="rec.read"}"#,
            f64::from(env.config.brokers.read.workers),
        ),
        (
            r#"beds_queue_consumers{queue="rec.write"}"#,
            f64::from(env.config.brokers.write.workers),
        ),
        // Nothing consumes the dead-letter queue: the dead letter waits there.
        (r#"beds_queue_messages{queue="rec.read.dlq"}"#, 1.0),
        (r#"beds_queue_messages{queue="rec.write"}"#, 0.0),
        (r#"beds_queue_messages{queue="rec.write.retry"}"#, 0.0),
    ];
    let text = scrape_until(addr, WITHIN, |text| {
        expected.iter().all(|(s, v)| value(text, s) == Some(*v))
    })
    .await;
    for (series, v) in expected {
        assert_eq!(value(&text, series), Some(v), "{series} in\n{text}");
    }
    assert_eq!(server.cache_hits(), 1);
    // The client's template name is no label: label values come from the catalog.
    assert!(!text.contains("tweet"), "{text}");
    // The fetch histogram's fast buckets are cumulative up to the count.
    let buckets: Vec<f64> = text
        .lines()
        .filter(|l| {
            l.starts_with(
                r#"beds_request_duration_seconds_bucket{domain="spew",template="user",op="fetch""#,
            )
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
        .collect();
    assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "{buckets:?}");
    assert_eq!(buckets.last(), Some(&3.0));
    server.stop().await;
}

#[tokio::test]
async fn a_running_node_is_alive_and_ready() {
    let env = TestEnv::new("telemetry_health");
    let server = env.start().await;
    let addr = server
        .http_addr()
        .expect("telemetry.listen is set in the test config");
    assert_eq!(get(addr, "/healthz").await.unwrap(), (200, "ok\n".into()));
    let (status, body) = get(addr, "/readyz").await.unwrap();
    assert_eq!(status, 200, "{body}");
    let body: Json = serde_json::from_str(&body).unwrap();
    assert_eq!(
        body,
        json!({
            "ready": true,
            "failed": [],
            "checks": {"broker": "ok", "consumers": "ok", "lanes": "ok", "database": "ok", "running": "ok"}
        })
    );
    let (status, _) = get(addr, "/nothing").await.unwrap();
    assert_eq!(status, 404);
    server.stop().await;
    assert!(
        get(addr, "/healthz").await.is_err(),
        "a stopped node serves nothing"
    );
}

#[tokio::test]
async fn the_outbox_backlog_counts_events_waiting() {
    let mut env = TestEnv::new("telemetry_outbox");
    env.config.telemetry.queue_poll = beds_runtime::config::Millis(200);
    // Events stay in the outbox for an hour: the backlog is every write's.
    env.config.events.publish_after = beds_runtime::config::Millis(3_600_000);
    let server = env.start().await;
    let addr = server.http_addr().unwrap();
    let client = env.client().await;
    let users = spew::client(&client).user();
    users.create(&user("ada")).await.unwrap();
    users.create(&user("grace")).await.unwrap();
    let text = scrape_until(addr, WITHIN, |t| {
        value(t, "beds_outbox_backlog") == Some(2.0)
    })
    .await;
    assert_eq!(value(&text, "beds_outbox_backlog"), Some(2.0), "{text}");
    server.stop().await;
}

#[tokio::test]
async fn telemetry_off_serves_nothing() {
    let mut env = TestEnv::new("telemetry_off");
    env.config.telemetry.listen = None;
    let server = env.start().await;
    assert_eq!(server.http_addr(), None);
    server.stop().await;
}

#[tokio::test]
async fn a_taken_address_fails_the_start_and_says_what_to_do() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut env = TestEnv::new("telemetry_taken");
    env.config.telemetry.listen = Some(taken.local_addr().unwrap());
    let err = beds_runtime::Server::start(&env.config, &beds::CATALOG)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with(&format!(
            "the telemetry server cannot listen on {}",
            taken.local_addr().unwrap()
        )) && err
            .ends_with("set telemetry.listen to a free address (port 0 picks one) or to `off`"),
        "{err}"
    );
}

/// The database is locked by another writer: a write fails transiently on every attempt,
/// goes round the retry lane and is dead-lettered; each step is counted.
#[tokio::test]
async fn retries_and_dead_letters_are_counted() {
    let mut env = TestEnv::new("telemetry_retries");
    env.config.database.busy_timeout = beds_runtime::config::Millis(50);
    env.config.retry.max_attempts = 3;
    env.config.retry.backoff = beds_runtime::config::Millis(100);
    env.config.client.timeout = beds_runtime::config::Millis(20_000);
    let server = env.start().await;
    let addr = server.http_addr().unwrap();
    let client = env.client().await;
    let users = spew::client(&client).user();
    users.create(&user("before")).await.unwrap();

    let mut held = env.lock_database().await;
    let e = users.create(&user("lost")).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::DatabaseUnavailable), "{e}");
    sqlx::query("ROLLBACK").execute(&mut held).await.unwrap();

    let expected = [
        (r#"beds_retries_total{lane="rec.write"}"#, 2.0),
        (
            r#"beds_dead_letters_total{lane="rec.write",reason="database_unavailable"}"#,
            1.0,
        ),
        (
            r#"beds_requests_total{domain="spew",template="user",op="create",outcome="error",code="database_unavailable"}"#,
            3.0,
        ),
        (
            r#"beds_requests_total{domain="spew",template="user",op="create",outcome="ok",code="none"}"#,
            1.0,
        ),
    ];
    let text = scrape_until(addr, WITHIN, |text| {
        expected.iter().all(|(s, v)| value(text, s) == Some(*v))
    })
    .await;
    for (series, v) in expected {
        assert_eq!(value(&text, series), Some(v), "{series} in\n{text}");
    }
    server.stop().await;
}

/// A tercero serves the same endpoints; its queue is the event queue.
#[tokio::test]
async fn a_tercero_serves_metrics_and_readiness() {
    let mut env = TestEnv::new("telemetry_tercero");
    env.config.role = beds_runtime::Role::Tercero;
    env.config.telemetry.queue_poll = beds_runtime::config::Millis(200);
    let server = env.start().await;
    let addr = server.http_addr().unwrap();
    let (status, body) = get(addr, "/readyz").await.unwrap();
    assert_eq!(status, 200, "{body}");
    let series = r#"beds_queue_consumers{queue="evt.tercero"}"#;
    let workers = f64::from(env.config.tercero.workers);
    let text = scrape_until(addr, WITHIN, |t| value(t, series) == Some(workers)).await;
    assert_eq!(value(&text, series), Some(workers), "{text}");
    assert_eq!(
        value(&text, r#"beds_queue_messages{queue="evt.tercero.dlq"}"#),
        Some(0.0),
        "{text}"
    );
    server.stop().await;
}

/// A request taken and given back unacked (as by a node that died mid-request) arrives
/// flagged redelivered: counted, and still answered.
#[tokio::test]
async fn redeliveries_are_counted() {
    use lapin::options::{BasicGetOptions, BasicNackOptions};

    let mut env = TestEnv::new("telemetry_redelivery");
    env.config.telemetry.queue_poll = beds_runtime::config::Millis(200);
    let raw = env.raw().await;
    beds_runtime::topology::declare(&raw.channel, &env.config.amqp, &["rec.read", "rec.write"])
        .await
        .unwrap();
    let missing = uuid::Uuid::now_v7();
    raw.publish(
        &env.queue("rec.read"),
        &envelope("user", "fetch", json!({"key": {"id": missing}})),
        BasicProperties::default()
            .with_content_type("application/json".into())
            .with_user_id(raw.login.as_str().into())
            .with_reply_to(raw.reply_queue.as_str().into()),
    )
    .await;
    let end = tokio::time::Instant::now() + WITHIN;
    let taken = loop {
        assert!(
            tokio::time::Instant::now() < end,
            "the request never reached its queue"
        );
        let got = raw
            .channel
            .basic_get(
                env.queue("rec.read").as_str().into(),
                BasicGetOptions { no_ack: false },
            )
            .await
            .unwrap();
        if let Some(message) = got {
            break message;
        }
    };
    taken
        .delivery
        .acker
        .nack(BasicNackOptions {
            requeue: true,
            ..Default::default()
        })
        .await
        .unwrap();

    let server = env.start().await;
    let addr = server.http_addr().unwrap();
    let expected = [
        (r#"beds_redeliveries_total{lane="rec.read"}"#, 1.0),
        (
            r#"beds_requests_total{domain="spew",template="user",op="fetch",outcome="error",code="not_found"}"#,
            1.0,
        ),
    ];
    let text = scrape_until(addr, WITHIN, |text| {
        expected.iter().all(|(s, v)| value(text, s) == Some(*v))
    })
    .await;
    for (series, v) in expected {
        assert_eq!(value(&text, series), Some(v), "{series} in\n{text}");
    }
    server.stop().await;
}

/// `beds run` logs what happens to a request inside its `delivery` span: the line of a
/// failed request names the request's message id and correlation id.
#[tokio::test]
async fn each_delivery_is_logged_in_a_span_with_its_ids() {
    use std::io::Read;
    use std::process::{Command, Stdio};
    use std::sync::{Arc, Mutex};

    let env = TestEnv::new("telemetry_span");
    let mut child = Command::new(env!("CARGO_BIN_EXE_beds"))
        .args(["run", "--config"])
        .arg(crate::support::repo_config_path())
        .env("BEDS_ENV", "test")
        .env("BEDS_AMQP__URL", &env.config.amqp.url)
        .env("BEDS_AMQP__QUEUE_TAG", &env.config.amqp.queue_tag)
        .env("BEDS_DATABASE__DATA_DIR", &env.config.database.data_dir)
        .env("RUST_LOG", "warn,beds_runtime::ingress=debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn beds");
    // The fmt subscriber writes to stdout; stderr is drained too so neither pipe fills.
    let log = Arc::new(Mutex::new(String::new()));
    let mut readers = Vec::new();
    for mut pipe in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let log = log.clone();
        readers.push(std::thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            while let Ok(n @ 1..) = pipe.read(&mut chunk) {
                log.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&chunk[..n]));
            }
        }));
    }
    let end = tokio::time::Instant::now() + WITHIN;
    while !matches!(env.queue_state(&env.queue("rec.read")).await, Some((_, c)) if c >= 1) {
        assert!(
            tokio::time::Instant::now() < end,
            "beds run did not consume: {}",
            log.lock().unwrap()
        );
        assert!(child.try_wait().unwrap().is_none(), "beds run exited early");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let (id, correlation) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
    let body = serde_json::to_vec(&json!({
        "v": 1, "id": id, "correlation_id": correlation,
        "domain": "spew", "template": "user", "op": "fetch",
        "key": {"id": uuid::Uuid::now_v7()},
    }))
    .unwrap();
    let reply = env.raw().await.request(&env.queue("rec.read"), &body).await;
    assert_eq!(reply["error"]["code"], "not_found", "{reply}");

    let colour = regex::Regex::new("\x1b\\[[0-9;]*m").unwrap();
    let wanted = |text: &str| {
        colour.replace_all(text, "").lines().any(|l| {
            l.contains("delivery{")
                && l.contains(&format!("message_id={id}"))
                && l.contains(&format!("correlation_id={correlation}"))
                && l.contains("template=\"user\" op=\"fetch\"")
                && l.contains("request failed")
        })
    };
    while !wanted(&log.lock().unwrap()) {
        assert!(
            tokio::time::Instant::now() < end,
            "no span with the request's ids in:\n{}",
            log.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    for r in readers {
        r.join().unwrap();
    }
}
