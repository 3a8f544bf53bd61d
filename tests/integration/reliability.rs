//! Reliability guarantees against the real broker and database: duplicate deliveries
//! change nothing twice, optimistic concurrency lets exactly one writer win.

use beds::spew::{self, UserCreate, UserPatch};
use beds_runtime::{ClientError, ErrorCode, Op, Request, Server};
use serde_json::json;

use crate::support::{TestEnv, envelope};

/// The same request published three times changes the database once and gets three
/// identical replies.
#[tokio::test]
async fn duplicate_deliveries_apply_once_and_answer_alike() {
    let env = TestEnv::new("duplicates");
    let server = env.start().await;
    let raw = env.raw().await;
    let write = env.queue("rec.write");
    let body = envelope(
        "user",
        "create",
        json!({"data": {"handle": "dup", "display_name": "Dup"}}),
    );
    let mut replies = Vec::new();
    for _ in 0..3 {
        replies.push(raw.request(&write, &body).await);
    }
    assert_eq!(replies[0]["status"], "ok", "{}", replies[0]);
    for r in &replies[1..] {
        assert_eq!(
            r["data"], replies[0]["data"],
            "a replay answers with the first reply"
        );
        assert_eq!(r["causation_id"], replies[0]["causation_id"]);
    }
    let db = env.db().await;
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM spw_users")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(rows, 1, "the create was applied once");

    // An explicit idempotency key covers resends with a new message id, and refuses reuse
    // for another operation.
    let client = env.client().await;
    let mut first = Request::new("spew", "user", Op::Create);
    first.idempotency_key = Some("signup-42".into());
    first.data =
        Some(serde_json::from_value(json!({"handle": "once", "display_name": "O"})).unwrap());
    let a = client.request(first.clone()).await.unwrap();
    let mut resend = first.clone();
    resend.id = uuid::Uuid::now_v7();
    assert_eq!(client.request(resend).await.unwrap(), a);
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM spw_users")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(rows, 2);
    let mut other = Request::new("spew", "user", Op::Update);
    other.idempotency_key = Some("signup-42".into());
    other.key = Some(serde_json::from_value(json!({"id": a["id"]})).unwrap());
    other.data = Some(serde_json::from_value(json!({"bio": "x"})).unwrap());
    assert_eq!(
        client.request(other).await.unwrap_err().code(),
        Some(ErrorCode::IdempotencyKeyReused)
    );

    // Keys expire after their time to live: a node with a tiny TTL forgets both.
    client.close().await.unwrap();
    server.stop().await;
    let keys = |db: sqlx::SqlitePool| async move {
        sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM beds_idempotency")
            .fetch_one(&db)
            .await
            .unwrap()
    };
    assert_eq!(keys(db.clone()).await, 2);
    let mut forgetful = env.config.clone();
    forgetful.idempotency.ttl = beds_runtime::config::Millis(1);
    let server = Server::start(&forgetful, &beds::CATALOG).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while keys(db.clone()).await != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "idempotency keys were not expired"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    server.stop().await;
}

/// Two concurrent updates with the same `expect_version`: exactly one wins, the other
/// gets `version_conflict` carrying the current version.
#[tokio::test]
async fn concurrent_updates_with_one_expected_version_let_one_win() {
    let env = TestEnv::new("occ");
    let server = env.start().await;
    let client = env.client().await;
    let users = spew::client(&client).user();
    let u = users
        .create(&UserCreate {
            handle: "occ".into(),
            display_name: "O".into(),
            bio: None,
        })
        .await
        .unwrap();
    let update = |bio: &str| {
        let mut req = Request::new("spew", "user", Op::Update);
        req.key = Some(serde_json::from_value(json!({"id": u.id})).unwrap());
        req.expect_version = Some(1);
        req.data = Some(serde_json::from_value(json!({"bio": bio})).unwrap());
        client.request(req)
    };
    let (a, b) = tokio::join!(update("first"), update("second"));
    let (won, lost) = match (a, b) {
        (Ok(w), Err(l)) | (Err(l), Ok(w)) => (w, l),
        (a, b) => panic!("exactly one update must win: {a:?} / {b:?}"),
    };
    assert_eq!(won["version"], 2);
    let ClientError::Remote(lost) = lost else {
        panic!("{lost:?}")
    };
    assert_eq!(
        (lost.code, lost.current_version),
        (ErrorCode::VersionConflict, Some(2))
    );
    let stored = users.fetch(u.id).await.unwrap();
    assert_eq!(
        json!(stored.bio),
        won["bio"],
        "the winner's change is the stored one"
    );

    // Delete honours expect_version too; a stale one changes nothing.
    let mut stale = Request::new("spew", "user", Op::Delete);
    stale.key = Some(serde_json::from_value(json!({"id": u.id})).unwrap());
    stale.expect_version = Some(1);
    assert_eq!(
        client.request(stale).await.unwrap_err().code(),
        Some(ErrorCode::VersionConflict)
    );
    let patch = UserPatch {
        display_name: Some("P".into()),
        ..UserPatch::default()
    };
    assert_eq!(
        users.update(u.id, &patch).await.unwrap().version,
        3,
        "no expectation: last writer wins"
    );
    client.close().await.unwrap();
    server.stop().await;
}

/// A request whose deadline has passed is answered with `deadline_exceeded` and not run.
#[tokio::test]
async fn expired_requests_are_answered_not_executed() {
    let env = TestEnv::new("deadline");
    let server = env.start().await;
    let raw = env.raw().await;
    let past = chrono::Utc::now() - chrono::Duration::seconds(1);
    let body = envelope(
        "user",
        "create",
        json!({"deadline": past, "data": {"handle": "late", "display_name": "L"}}),
    );
    let reply = raw.request(&env.queue("rec.write"), &body).await;
    assert_eq!(
        (
            reply["error"]["code"].as_str(),
            reply["error"]["class"].as_str()
        ),
        (Some("deadline_exceeded"), Some("transient"))
    );
    let db = env.db().await;
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM spw_users")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(rows, 0, "an expired request is not executed");
    server.stop().await;
}

/// A write that no queue takes fails at once with a clear error instead of timing out.
#[tokio::test]
async fn unroutable_writes_fail_fast() {
    let env = TestEnv::new("unroutable");
    let client = env.client().await;
    let started = std::time::Instant::now();
    let e = spew::client(&client)
        .user()
        .create(&UserCreate {
            handle: "nobody".into(),
            display_name: "N".into(),
            bio: None,
        })
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::Unroutable { .. }), "{e}");
    assert!(e.to_string().contains("start an appServer"), "{e}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "no wait for the timeout"
    );
    client.close().await.unwrap();
}

/// The database is locked by another writer: writes fail transiently, go round the retry
/// lane and succeed once the lock is gone; a write that runs out of attempts is answered
/// with the error and dead-lettered with the reason, class, code and attempt count.
#[tokio::test]
async fn database_outage_retries_then_succeeds_or_dead_letters() {
    use lapin::options::BasicGetOptions;
    use lapin::types::AMQPValue;

    let mut env = TestEnv::new("db_outage");
    env.config.database.busy_timeout = beds_runtime::config::Millis(50);
    env.config.retry.max_attempts = 4;
    env.config.retry.backoff = beds_runtime::config::Millis(100);
    env.config.client.timeout = beds_runtime::config::Millis(20_000);
    let server = env.start().await;
    let client = env.client().await;
    let users = spew::client(&client).user();
    let make = |h: &str| UserCreate {
        handle: h.into(),
        display_name: "X".into(),
        bio: None,
    };
    users.create(&make("before")).await.unwrap();

    // A short outage: the write is retried and succeeds.
    let mut held = env.lock_database().await;
    let pending = tokio::spawn({
        let input = make("during");
        let client = env.client().await;
        async move {
            let r = spew::client(&client).user().create(&input).await;
            client.close().await.unwrap();
            r
        }
    });
    tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    sqlx::query("ROLLBACK").execute(&mut held).await.unwrap();
    drop(held);
    let created = pending.await.unwrap().expect("retried after the outage");
    assert_eq!(created.handle, "during");

    // A long outage: attempts run out.
    let mut held = env.lock_database().await;
    let e = users.create(&make("lost")).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::DatabaseUnavailable), "{e}");
    sqlx::query("ROLLBACK").execute(&mut held).await.unwrap();
    drop(held);

    let db = env.db().await;
    let handles: Vec<String> =
        sqlx::query_scalar("SELECT handle_usr FROM spw_users ORDER BY handle_usr")
            .fetch_all(&db)
            .await
            .unwrap();
    assert_eq!(
        handles,
        ["before", "during"],
        "applied once each; the dead-lettered write is not applied"
    );

    let raw = env.raw().await;
    let dead = raw
        .channel
        .basic_get(
            format!("{}.dlq", env.queue("rec.write")).as_str().into(),
            BasicGetOptions { no_ack: false },
        )
        .await
        .unwrap()
        .expect("the exhausted write is in the dead-letter queue");
    let headers = dead.properties.headers().clone().unwrap_or_default();
    let text = |k: &str| match headers.inner().get(k) {
        Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        other => panic!("header {k}: {other:?}"),
    };
    assert_eq!(text("x-beds-error-code"), "database_unavailable");
    assert_eq!(text("x-beds-error-class"), "transient");
    assert!(text("x-beds-reason").contains("unavailable"));
    assert_eq!(
        headers.inner().get("x-beds-attempt"),
        Some(&AMQPValue::LongLongInt(4))
    );
    let body: serde_json::Value = serde_json::from_slice(&dead.delivery.data).unwrap();
    assert_eq!(body["data"]["handle"], "lost");
    // Back into the dead-letter queue, for `beds dlq`.
    dead.delivery
        .acker
        .nack(lapin::options::BasicNackOptions {
            requeue: true,
            ..Default::default()
        })
        .await
        .unwrap();

    // `beds dlq`: list by code, show one, replay it once the database is back.
    let dlq = |args: &[&str]| env.dlq(args);
    let listed = dlq(&["list"]);
    assert!(
        listed.contains("rec.write.dlq")
            && listed.contains("database_unavailable")
            && listed.trim_end().ends_with('1'),
        "{listed}"
    );
    let shown = dlq(&["show", "1"]);
    assert!(
        shown.contains("attempts: 4") && shown.contains("\"lost\""),
        "{shown}"
    );
    assert_eq!(
        dlq(&["replay", "--code", "rejected"]).trim(),
        "replayed 0 dead letters to their work queues"
    );
    assert_eq!(
        dlq(&["replay", "--code", "database_unavailable"]).trim(),
        "replayed 1 dead letters to their work queues"
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM spw_users WHERE handle_usr = 'lost'")
            .fetch_one(&db)
            .await
            .unwrap();
        if n == 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the replayed write was not applied"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(dlq(&["list"]).contains("no dead letters"));
    client.close().await.unwrap();
    server.stop().await;
}
