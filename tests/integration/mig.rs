//! Bulk import and export over the `mig.bulk` route (wiki/migration.md): a large import
//! killed and resumed ends with exactly the valid records, export then import into a
//! fresh database round-trips a template, and a caller without the role is refused.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use beds::spew::{self, UserCreate};
use beds_runtime::{Client, ClientOptions, ErrorCode, Role, Server};
use serde_json::{Map, Value as Json, json};

use crate::support::{TestEnv, repo_config_path};
use crate::vhost::Vhost;

const LINES: usize = 100_000;

/// `beds ARGS` against the test's broker, queue tag and database; `BEDS_TEST_MIG_LOG` sets
/// the spawned processes' log filter (`error` by default).
fn beds(env: &TestEnv, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_beds"));
    cmd.args(args)
        .arg("--config")
        .arg(repo_config_path())
        .env("BEDS_ENV", "test")
        .env("BEDS_AMQP__URL", &env.config.amqp.url)
        .env("BEDS_AMQP__QUEUE_TAG", &env.config.amqp.queue_tag)
        .env("BEDS_DATABASE__DATA_DIR", &env.config.database.data_dir)
        .env(
            "BEDS_SEGUNDO__WAREHOUSE__DATA_DIR",
            &env.config.database.data_dir,
        )
        .env(
            "BEDS_SEGUNDO__WAREHOUSE__SQLITE_FILE",
            &env.config.segundo.warehouse.sqlite_file,
        )
        .env(
            "BEDS_LOG__FILTER",
            std::env::var("BEDS_TEST_MIG_LOG").unwrap_or("error".into()),
        );
    if let Some(url) = &env.config.database.url {
        let driver = serde_json::to_value(env.config.database.driver).unwrap();
        cmd.env("BEDS_DATABASE__DRIVER", driver.as_str().unwrap())
            .env("BEDS_DATABASE__URL", url);
    }
    cmd
}

/// Runs `cmd` to its end off the test's runtime, which keeps serving the in-process nodes.
async fn output(mut cmd: Command) -> Output {
    tokio::task::spawn_blocking(move || cmd.output().expect("run beds"))
        .await
        .unwrap()
}

/// A child process killed (SIGKILL) when dropped, so a failing test leaves none behind.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A spawned segundo node, serving once its bulk queue has a consumer.
async fn spawn_segundo(env: &TestEnv) -> Killed {
    let mut child = beds(env, &["run", "--role", "segundo"])
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn beds run --role segundo");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !matches!(env.queue_state(&env.queue("mig.bulk")).await, Some((_, c)) if c >= 1) {
        assert!(
            Instant::now() < deadline,
            "segundo did not consume mig.bulk within 30 s"
        );
        assert!(child.try_wait().unwrap().is_none(), "segundo exited early");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Killed(child)
}

/// An in-process segundo of the test's configuration.
async fn start_segundo(env: &TestEnv) -> Server {
    let mut config = env.config.clone();
    config.role = Role::Segundo;
    config.node = format!("{}-segundo", config.node);
    config.segundo.warehouse.data_dir = config.database.data_dir.clone();
    let server = Server::start(&config, &beds::CATALOG)
        .await
        .unwrap_or_else(|e| panic!("the test's segundo node starts: {e}"));
    consuming(env).await;
    server
}

/// Waits until the bulk queue has a consumer: segundo serves.
async fn consuming(env: &TestEnv) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !matches!(env.queue_state(&env.queue("mig.bulk")).await, Some((_, c)) if c >= 1) {
        assert!(
            Instant::now() < deadline,
            "segundo did not consume mig.bulk within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the import job's committed mark passed `line`, or the process ended.
async fn wait_mark(env: &TestEnv, importer: &mut Child, line: i64) {
    let rows = env.rows().await;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let mark: Option<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(
            "SELECT MAX(committed_through) FROM beds_mig_jobs".to_string(),
        ))
        .fetch_one(rows.pool())
        .await
        .ok()
        .flatten();
        if mark.is_some_and(|m| m > line) {
            return;
        }
        assert!(
            importer.try_wait().unwrap().is_none(),
            "the importer ended before line {line} was committed"
        );
        assert!(
            Instant::now() < deadline,
            "line {line} not committed within 300 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The expected outcome of one generated line: its handle if valid, else its code.
enum Expect {
    Valid(String),
    Rejected(&'static str),
}

/// 100,000 `user` lines; every 100th (1%) invalid in turn: a wrong type, a handle too long,
/// malformed JSON, and a handle taken 4,999 lines earlier (further back than the 4 batches
/// of 500 lines that may commit out of order, so the earlier line is the one kept).
fn generate(path: &Path) -> Vec<Expect> {
    let mut text = String::with_capacity(LINES * 80);
    let mut expect = Vec::with_capacity(LINES);
    for i in 1..=LINES {
        let handle = format!("usr{i}");
        let (line, e) = if i % 100 == 37 {
            match (i / 100) % 4 {
                0 => (
                    json!({"handle": handle, "display_name": 5}).to_string(),
                    Expect::Rejected("invalid_input"),
                ),
                1 => (
                    json!({"handle": "h".repeat(20), "display_name": "Long"}).to_string(),
                    Expect::Rejected("invalid_input"),
                ),
                2 => (
                    format!("{{\"handle\": \"{handle}\", \"display_name\""),
                    Expect::Rejected("malformed_json"),
                ),
                _ if i > 5_000 => (
                    json!({"handle": format!("usr{}", i - 4_999), "display_name": "Dup"})
                        .to_string(),
                    Expect::Rejected("unique_violation"),
                ),
                _ => (
                    json!({"handle": handle, "display_name": 5}).to_string(),
                    Expect::Rejected("invalid_input"),
                ),
            }
        } else {
            (
                json!({"handle": handle, "display_name": format!("User {i}"), "bio": null})
                    .to_string(),
                Expect::Valid(handle),
            )
        };
        text.push_str(&line);
        text.push('\n');
        expect.push(e);
    }
    std::fs::write(path, text).unwrap();
    expect
}

fn user_table() -> (&'static str, &'static str) {
    let t = beds::CATALOG
        .templates()
        .map(|(_, t)| t)
        .find(|t| t.name == "user")
        .unwrap();
    (t.table, t.field("handle").unwrap().column)
}

#[tokio::test]
async fn import_of_100000_records_killed_and_resumed_ends_with_exactly_the_valid_ones() {
    let env = TestEnv::matrix("mig");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("users.ndjson");
    let expect = generate(&file);
    let file = file.to_str().unwrap().to_string();
    let import = [
        "mig",
        "import",
        "spew.user",
        &file,
        "--batch",
        "500",
        "--timeout",
        "5",
    ];
    let started = Instant::now();
    let segundo = spawn_segundo(&env).await;

    // The importer is killed once a third is committed...
    let mut importer = beds(&env, &import)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_mark(&env, &mut importer, 30_000).await;
    importer.kill().unwrap();
    importer.wait().unwrap();

    // ...re-run, and the segundo node killed under it once two thirds are.
    let mut importer = beds(&env, &import)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_mark(&env, &mut importer, 60_000).await;
    drop(segundo);
    let segundo = spawn_segundo(&env).await;
    let out = importer.wait_with_output().unwrap();
    let summary = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(
        out.status.code(),
        Some(2),
        "rejected lines end the import with 2: {summary}"
    );
    eprintln!("100k import (killed twice) took {:?}", started.elapsed());

    // Exactly the valid records, by count and by their handles.
    let rows = env.rows().await;
    let (table, column) = user_table();
    let handles: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT {} FROM {}",
        rows.quote(column),
        rows.quote(table)
    )))
    .fetch_all(rows.pool())
    .await
    .unwrap();
    let valid: BTreeSet<String> = expect
        .iter()
        .filter_map(|e| match e {
            Expect::Valid(h) => Some(h.clone()),
            Expect::Rejected(_) => None,
        })
        .collect();
    assert_eq!(
        handles.len(),
        valid.len(),
        "no record twice, none lost: {summary}"
    );
    assert_eq!(handles.into_iter().collect::<BTreeSet<_>>(), valid);

    // The same command once more resumes a finished job: it reports and writes the rejects.
    let rejects = dir.path().join("rejects.ndjson");
    let mut args = import.to_vec();
    let rejects_arg = rejects.to_str().unwrap().to_string();
    args.extend(["--rejects", &rejects_arg]);
    let out = output(beds(&env, &args)).await;
    let summary = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{summary}");
    let invalid: Vec<(usize, &str)> = expect
        .iter()
        .enumerate()
        .filter_map(|(i, e)| match e {
            Expect::Rejected(code) => Some((i + 1, *code)),
            Expect::Valid(_) => None,
        })
        .collect();
    let count = |code| invalid.iter().filter(|(_, c)| *c == code).count();
    assert!(
        summary.contains(&format!("accepted {}\n", valid.len())),
        "{summary}"
    );
    assert!(
        summary.contains(&format!("rejected {}\n", invalid.len())),
        "{summary}"
    );
    for code in ["invalid_input", "malformed_json", "unique_violation"] {
        let first: Vec<String> = invalid
            .iter()
            .filter(|(_, c)| *c == code)
            .take(5)
            .map(|(l, _)| l.to_string())
            .collect();
        let shown = format!("  {code}: {} (lines {}, …)", count(code), first.join(", "));
        assert!(summary.contains(&shown), "{shown} in\n{summary}");
    }
    let written: Vec<(usize, String)> = std::fs::read_to_string(&rejects)
        .unwrap()
        .lines()
        .map(|l| {
            let r: Json = serde_json::from_str(l).unwrap();
            (
                r["line"].as_u64().unwrap() as usize,
                r["code"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let wanted: Vec<(usize, String)> = invalid.iter().map(|(l, c)| (*l, c.to_string())).collect();
    assert_eq!(written, wanted, "every rejected line, with its code");
    drop(segundo);
}

#[tokio::test]
async fn export_then_import_into_a_fresh_database_round_trips_a_template() {
    let source = TestEnv::matrix("migsrc");
    let app = source.start().await;
    let client = source.client().await;
    for i in 0..25 {
        spew::client(&client)
            .user()
            .create(&UserCreate {
                handle: format!("rt{i}"),
                display_name: format!("Round {i}"),
                bio: (i % 2 == 0).then(|| format!("bio {i}")),
            })
            .await
            .unwrap();
    }
    let segundo = start_segundo(&source).await;
    let dir = tempfile::tempdir().unwrap();
    let exported = dir.path().join("users.ndjson");
    let out = output(beds(
        &source,
        &[
            "mig",
            "export",
            "spew.user",
            "-o",
            exported.to_str().unwrap(),
            "--page",
            "7",
        ],
    ))
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&exported).unwrap();
    assert_eq!(text.lines().count(), 25);

    let target = TestEnv::matrix("migdst");
    let segundo_b = start_segundo(&target).await;
    let out = output(beds(
        &target,
        &[
            "mig",
            "import",
            "spew.user",
            exported.to_str().unwrap(),
            "--batch",
            "10",
        ],
    ))
    .await;
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{summary}");
    assert!(summary.contains("accepted 25\nrejected 0\n"), "{summary}");
    let again = dir.path().join("again.ndjson");
    let out = output(beds(
        &target,
        &["mig", "export", "spew.user", "-o", again.to_str().unwrap()],
    ))
    .await;
    assert!(out.status.success());
    assert_eq!(
        std::fs::read_to_string(&again).unwrap(),
        text,
        "ids, versions, fields and timestamps as exported"
    );
    client.close().await.unwrap();
    segundo_b.stop().await;
    segundo.stop().await;
    app.stop().await;
}

#[tokio::test]
async fn a_caller_without_the_mig_role_is_refused() {
    let mut broker = Vhost::new("mig");
    let outsider = broker.open_user("outsider");
    let mut env = TestEnv::new("migauth");
    env.config.amqp.url = broker.url("guest", "guest");
    let segundo = start_segundo(&env).await;
    let other = Client::connect(
        ClientOptions::from_config(&env.config, "outsider")
            .with_url(&broker.url(&outsider, "secret")),
    )
    .await
    .expect("the outsider connects");
    let mut begin = Map::new();
    begin.insert("job".into(), json!("j1"));
    begin.insert("template".into(), json!("spew.user"));
    begin.insert("batch".into(), json!(10));
    for (op, fields) in [
        ("begin", begin.clone()),
        ("export", {
            let mut m = Map::new();
            m.insert("template".into(), json!("spew.user"));
            m
        }),
    ] {
        let e = other
            .mig_exchange(op, fields)
            .await
            .expect("a reply")
            .into_result()
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::Forbidden, "{e:?}");
        assert!(
            e.message.contains(&outsider) && e.message.contains("security.service_roles"),
            "{}",
            e.message
        );
    }
    // The refused `begin` created no job; guest (role admin) may begin one.
    let rows = env.rows().await;
    assert_eq!(rows.total("beds_mig_jobs").await, 0);
    let guest = env.client().await;
    let job = guest
        .mig_exchange("begin", begin)
        .await
        .unwrap()
        .into_result()
        .unwrap();
    assert_eq!(job["committed_through"], 1);
    guest.close().await.unwrap();
    other.close().await.unwrap();
    segundo.stop().await;
}
