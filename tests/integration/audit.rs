//! The `audit` capability: every committed write of an audited SPEW template leaves one
//! record in the admin's `beds_audit`, with who, what, when and which fields changed;
//! read back with the `audit` adm op and `beds audit`, refused to services without the
//! `admin` role; none for templates that do not declare it; and none lost or doubled
//! across a kill -9 of the admin node.

use std::collections::{BTreeSet, HashMap};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use beds::spew::{self, SpewCreate, UserCreate, UserPatch};
use beds_runtime::{Client, ClientOptions, ErrorCode};
use serde_json::{Map, Value as Json, json};
use sqlx::SqlitePool;
use sqlx::sqlite::SqliteConnectOptions;

use crate::support::{TestEnv, repo_config_path};
use crate::vhost::Vhost;

fn user(handle: &str) -> UserCreate {
    UserCreate {
        handle: handle.into(),
        display_name: handle.to_uppercase(),
        bio: None,
    }
}

/// The `audit` op's page for `template` `key`.
async fn trail(client: &Client, template: &str, key: &str, extra: Json) -> Json {
    let mut fields = Map::new();
    fields.insert("template".into(), json!(template));
    fields.insert("key".into(), json!(key));
    if let Json::Object(more) = extra {
        fields.extend(more);
    }
    client.admin("audit", fields).await.expect("the audit op")
}

/// Waits until the trail of `key` holds `n` records.
async fn wait_for(client: &Client, template: &str, key: &str, n: usize) -> Vec<Json> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let page = trail(client, template, key, json!({})).await;
        let records = page["records"].as_array().cloned().unwrap_or_default();
        if records.len() >= n {
            assert_eq!(records.len(), n, "{page:#}");
            return records;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{template} {key}: {} of {n} audit records within 20 s: {page:#}",
            records.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs `beds audit ARGS` with the test's configuration, off the runtime's thread.
async fn beds_audit(env: &TestEnv, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_beds"));
    cmd.arg("audit")
        .args(args)
        .arg("--config")
        .arg(repo_config_path())
        .env("BEDS_ENV", "test")
        .env("BEDS_AMQP__URL", &env.config.amqp.url)
        .env("BEDS_AMQP__QUEUE_TAG", &env.config.amqp.queue_tag);
    tokio::task::spawn_blocking(move || cmd.output().expect("run the beds binary"))
        .await
        .expect("the command's thread")
}

#[tokio::test]
async fn every_write_of_an_audited_template_is_recorded_and_queryable() {
    let mut broker = Vhost::new("audit");
    let outsider = broker.open_user("outsider");
    let mut env = TestEnv::matrix("audit");
    env.config.amqp.url = broker.url("guest", "guest");
    // guest may speak for an end user here, so a write with a subject can be audited.
    env.config.security.trusted_services = vec!["guest".into()];
    let app = env.start().await;
    let admin = env.start_admin().await;
    let client = env.client().await;
    let users = spew::client(&client).user();

    let ada = users.create(&user("ada")).await.unwrap();
    let id = ada.id.to_string();
    // Ada edits her own profile: the record names the service and the end user.
    let as_ada = Client::connect(
        ClientOptions::from_config(&env.config, "tests").as_subject(Some(&id), &[]),
    )
    .await
    .unwrap();
    let patch = UserPatch {
        display_name: Some("Ada L.".into()),
        ..UserPatch::default()
    };
    spew::client(&as_ada)
        .user()
        .update(ada.id, &patch)
        .await
        .unwrap();
    let bob = users.create(&user("bob")).await.unwrap();
    // Not audited: `follow` declares no audit.
    spew::client(&client)
        .follow()
        .create(&spew::FollowCreate {
            follower: bob.id,
            followee: ada.id,
        })
        .await
        .unwrap();
    let post = spew::client(&client)
        .spew()
        .create(&SpewCreate {
            author: ada.id,
            body: "first".into(),
            reply_to: None,
            respew_of: None,
        })
        .await
        .unwrap();
    // Deleting ada cascades to her spew and the follow: each audited change is recorded.
    users.delete(ada.id).await.unwrap();

    let records = wait_for(&client, "spew.user", &id, 3).await;
    let ops: Vec<&str> = records.iter().map(|r| r["op"].as_str().unwrap()).collect();
    assert_eq!(ops, ["delete", "update", "create"], "newest first");
    let (delete, update, create) = (&records[0], &records[1], &records[2]);
    let guest = env.login();
    assert_eq!(create["version"], 1);
    assert_eq!(create["key"], json!({ "id": id }));
    assert_eq!(
        create["caller"],
        json!({ "service": guest, "subject": null })
    );
    assert_eq!(create["changes"]["after"]["handle"], "ada");
    assert!(create["changes"].get("before").is_none(), "{create}");
    assert_eq!(update["version"], 2);
    assert_eq!(update["caller"], json!({ "service": guest, "subject": id }));
    assert_eq!(
        update["changes"],
        json!({ "before": { "display_name": "ADA" }, "after": { "display_name": "Ada L." } }),
        "only the changed field"
    );
    assert_eq!(
        delete["version"], 2,
        "a delete records the version it deleted"
    );
    assert_eq!(delete["changes"]["before"]["display_name"], "Ada L.");
    for r in &records {
        // A request without a correlation id is its own conversation.
        assert_eq!(r["request_id"], r["correlation_id"], "{r}");
        assert!(uuid::Uuid::parse_str(r["request_id"].as_str().unwrap()).is_ok());
        assert!(r["committed_at"].as_str().unwrap().ends_with('Z'), "{r}");
    }
    let ids: BTreeSet<&str> = records
        .iter()
        .map(|r| r["request_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 3, "three requests");

    // The spew's delete was caused by ada's delete request.
    let spew_trail = wait_for(&client, "spew", &post.id.to_string(), 2).await;
    assert_eq!(spew_trail[0]["op"], "delete");
    assert_eq!(spew_trail[0]["request_id"], delete["request_id"]);

    // Keyset pages: two, then the last one.
    let first = trail(&client, "user", &id, json!({ "limit": 2 })).await;
    assert_eq!(first["records"].as_array().unwrap().len(), 2);
    let next = first["next"].as_str().expect("a cursor").to_string();
    let second = trail(&client, "user", &id, json!({ "limit": 2, "cursor": next })).await;
    assert_eq!(second["records"], json!([create]));
    assert_eq!(second["next"], Json::Null);

    // Nothing for the template that does not declare audit; asking says so.
    let store = admin.admin_store().expect("an admin node");
    let follows: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM beds_audit WHERE template = 'follow'")
            .fetch_one(store.pool())
            .await
            .unwrap();
    assert_eq!(follows, 0);
    let e = client
        .admin(
            "audit",
            Map::from_iter([
                ("template".into(), json!("follow")),
                ("key".into(), json!(id)),
            ]),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::UnknownTemplate), "{e}");
    assert!(e.to_string().contains("does not declare"), "{e}");
    let e = client
        .admin(
            "audit",
            Map::from_iter([("template".into(), json!("usr")), ("key".into(), json!(id))]),
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("did you mean `user`?"), "{e}");

    // The CLI: a table, and JSON on request.
    let out = beds_audit(&env, &["spew.user", &id]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.starts_with("COMMITTED"), "{text}");
    assert!(
        text.contains(r#"display_name: "ADA" -> "Ada L.""#),
        "{text}"
    );
    assert_eq!(
        text.lines().filter(|l| l.contains(&guest)).count(),
        3,
        "{text}"
    );
    let out = beds_audit(&env, &["user", &id, "--json"]).await;
    let page: Json = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(page["records"].as_array().unwrap().len(), 3, "{page}");
    let out = beds_audit(&env, &["follow", &id]).await;
    assert!(!out.status.success());
    // The list names every compiled domain's audited templates (the gate adds fixtures).
    let err = String::from_utf8_lossy(&out.stderr);
    let listed = err.split("audited templates: ").nth(1).unwrap_or_default();
    assert!(
        listed.contains("spew.user") && listed.contains("spew.spew") && !listed.contains("follow"),
        "{err}"
    );

    // A service without the admin role reads nothing.
    let other = Client::connect(
        ClientOptions::from_config(&env.config, "outsider")
            .with_url(&broker.url(&outsider, "secret")),
    )
    .await
    .unwrap();
    let e = other
        .admin(
            "audit",
            Map::from_iter([
                ("template".into(), json!("user")),
                ("key".into(), json!(id)),
            ]),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::Forbidden), "{e}");
    app.stop().await;
    admin.stop().await;
}

/// A `beds run --role admin` process, killed (SIGKILL) when dropped.
struct AdminProcess(Child);

impl AdminProcess {
    fn spawn(env: &TestEnv, data: &std::path::Path) -> AdminProcess {
        let child = Command::new(env!("CARGO_BIN_EXE_beds"))
            .args(["run", "--role", "admin", "--config"])
            .arg(repo_config_path())
            .env("BEDS_ENV", "test")
            .env("BEDS_NODE", "audit-admin")
            .env("BEDS_AMQP__URL", &env.config.amqp.url)
            .env("BEDS_AMQP__QUEUE_TAG", &env.config.amqp.queue_tag)
            .env("BEDS_ADMIN__DATABASE__DATA_DIR", data)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn beds run --role admin");
        AdminProcess(child)
    }

    /// kill -9: no drain, no goodbye; unacked deliveries return to the queue.
    fn kill(mut self) {
        self.0.kill().expect("SIGKILL the admin");
        self.0.wait().expect("reap the admin");
    }
}

impl Drop for AdminProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Rows of the admin's audit table (0 before the admin created it).
async fn audit_rows(db: &SqlitePool) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM beds_audit")
        .fetch_one(db)
        .await
        .unwrap_or(0)
}

#[tokio::test]
async fn no_write_is_lost_or_doubled_across_a_kill_9_of_the_admin() {
    const USERS: usize = 64;
    const WRITES: usize = 2_000;
    let env = TestEnv::new("audit_kill");
    let app = env.start().await;
    let client = env.client().await;
    let data = tempfile::tempdir().unwrap();
    let admin = AdminProcess::spawn(&env, data.path());

    // 64 users, then 64 lanes of updates, one user each, until 2,000 writes: 64 in flight.
    let users = spew::client(&client).user();
    let inputs: Vec<UserCreate> = (0..USERS).map(|i| user(&format!("kill{i}"))).collect();
    let created = futures_util::future::join_all(inputs.iter().map(|u| users.create(u))).await;
    let ids: Vec<_> = created.into_iter().map(|u| u.unwrap().id).collect();
    let per_user = (WRITES - USERS) / USERS;
    let extra = (WRITES - USERS) % USERS;
    let db = SqlitePool::connect_with(
        SqliteConnectOptions::new()
            .filename(data.path().join("admin.sqlite"))
            .create_if_missing(true),
    )
    .await
    .unwrap();
    let writes = futures_util::future::join_all(ids.iter().enumerate().map(|(lane, id)| {
        let users = spew::client(&client).user();
        let updates = per_user + usize::from(lane < extra);
        async move {
            for n in 0..updates {
                let patch = UserPatch {
                    display_name: Some(format!("v{}", n + 2)),
                    ..UserPatch::default()
                };
                users.update(*id, &patch).await.expect("an update");
            }
            1 + updates
        }
    }));
    // Kill the admin while it records: once it has some, before it has them all.
    let killer = async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while audit_rows(&db).await < 200 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the admin recorded fewer than 200 records in 30 s"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let at = audit_rows(&db).await;
        admin.kill();
        at
    };
    let (versions, killed_at) = tokio::join!(writes, killer);
    let total: usize = versions.iter().sum();
    assert_eq!(total, WRITES);
    assert!(
        (killed_at as usize) < WRITES,
        "killed after every record ({killed_at}): the kill proves nothing"
    );

    let _admin = AdminProcess::spawn(&env, data.path());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(45);
    loop {
        let rows = audit_rows(&db).await;
        if rows as usize == WRITES {
            break;
        }
        assert!(
            (rows as usize) < WRITES,
            "{rows} audit records for {WRITES} writes"
        );
        assert!(
            tokio::time::Instant::now() < deadline,
            "{rows} of {WRITES} audit records 45 s after the restart (killed at {killed_at})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let distinct: i64 = sqlx::query_scalar("SELECT COUNT(DISTINCT id) FROM beds_audit")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(distinct as usize, WRITES, "one record per write event");
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT record_key, version FROM beds_audit WHERE template = 'user'")
            .fetch_all(&db)
            .await
            .unwrap();
    let mut seen: HashMap<String, BTreeSet<i64>> = HashMap::new();
    for (key, version) in rows {
        assert!(
            seen.entry(key.clone()).or_default().insert(version),
            "{key} version {version} recorded twice"
        );
    }
    for (id, count) in ids.iter().zip(&versions) {
        let expected: BTreeSet<i64> = (1..=*count as i64).collect();
        assert_eq!(
            seen.get(&id.to_string()),
            Some(&expected),
            "every version of {id}"
        );
    }
    app.stop().await;
}

/// A delivery on the audit queue that is no write event of this deployment goes to the
/// audit queue's DLQ with its reason, never into the table and never dropped.
#[tokio::test]
async fn poison_on_the_audit_queue_is_dead_lettered() {
    use crate::wire::{Peer, header, next};
    use beds_runtime::signing::{Purpose, ServiceKey};
    let env = TestEnv::new("audit_poison");
    let admin = env.start_admin().await;
    let peer = Peer::connect(&env).await;
    let mut dlq = peer
        .dead_letters(&format!("{}.dlq", env.queue("audit")))
        .await;
    let key = env.queue("evt.spew.user.create");
    // Unsigned: anyone could have published it.
    peer.send(&key, b"{}", lapin::BasicProperties::default())
        .await;
    let msg = next(&mut dlq, "the unsigned event's dead letter").await;
    assert_eq!(
        header(&msg, "x-beds-error-code").as_deref(),
        Some("untrusted_origin")
    );
    // Signed by the deployment but no write event.
    let signer = ServiceKey::load(&env.config).unwrap();
    let body = br#"{"v":1,"kind":"write_event"}"#;
    let props = signer.sign(Purpose::WriteEvent, lapin::BasicProperties::default(), body);
    peer.send(&key, body, props).await;
    let msg = next(&mut dlq, "the undecodable event's dead letter").await;
    assert_eq!(msg.data, body);
    assert_eq!(
        header(&msg, "x-beds-error-code").as_deref(),
        Some("undecodable")
    );
    assert!(
        header(&msg, "x-beds-reason")
            .unwrap_or_default()
            .contains("not a write event"),
        "{:?}",
        header(&msg, "x-beds-reason")
    );
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM beds_audit")
        .fetch_one(admin.admin_store().unwrap().pool())
        .await
        .unwrap();
    assert_eq!(rows, 0);
    admin.stop().await;
}

/// Audit records come from write events: a node with audited templates and events off
/// does not start.
#[tokio::test]
async fn audit_without_events_is_refused_at_start() {
    let mut env = TestEnv::new("audit_no_events");
    env.config.events.enabled = false;
    let e = beds_runtime::Server::start(&env.config, &beds::CATALOG)
        .await
        .map(drop)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("spew.user, spew.spew declare capabilities.audit")
            && e.contains("events.enabled is false"),
        "{e}"
    );
}
