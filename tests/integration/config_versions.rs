//! Config versions: a version-1 file (tests/config/beds.v1.yaml, as beds shipped it, with a
//! version-1 overlay) is refused by `beds run` with the command to run, migrated by
//! `beds config migrate`, checked by `beds config check`, and then starts a node that serves.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use beds::spew::{self, UserCreate};

use crate::support::TestEnv;

/// `beds --config BASE ARGS` with the test's broker and data directory.
fn beds(env: &TestEnv, base: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_beds"));
    command
        .arg("--config")
        .arg(base)
        .args(args)
        .env("BEDS_ENV", "test")
        .env("BEDS_AMQP__URL", &env.config.amqp.url)
        .env("BEDS_AMQP__QUEUE_TAG", &env.config.amqp.queue_tag)
        .env("BEDS_DATABASE__DATA_DIR", &env.config.database.data_dir);
    command
}

fn output(mut command: Command) -> (Output, String) {
    let out = command.output().expect("run beds");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out, text)
}

#[tokio::test]
async fn a_v1_config_migrates_to_the_current_version_and_starts_a_node() {
    let env = TestEnv::new("cfgver");
    let dir = tempfile::tempdir().unwrap();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/config");
    let base = dir.path().join("beds.yaml");
    let overlay = dir.path().join("beds.test.yaml");
    std::fs::copy(fixtures.join("beds.v1.yaml"), &base).unwrap();
    std::fs::copy(fixtures.join("beds.v1.test.yaml"), &overlay).unwrap();

    let (out, text) = output(beds(&env, &base, &["run", "--role", "appServer"]));
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("config version 1") && text.contains("beds config migrate"),
        "{text}"
    );

    let (out, text) = output(beds(&env, &base, &["config", "migrate"]));
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("admin.heartbeat: 2s → telemetry.heartbeat: 2s")
            && text.contains("database.apply_schema: true → database.schema: create")
            && text.contains("admin.heartbeat: 1s → telemetry.heartbeat: 1s"),
        "{text}"
    );
    let migrated = std::fs::read_to_string(&base).unwrap();
    assert!(migrated.contains("\nversion: 2\n"), "{migrated}");
    // The file's comments survive the migration.
    assert!(migrated.contains("# Layering: this file"), "{migrated}");
    assert_eq!(
        std::fs::read(dir.path().join("beds.yaml.v1")).unwrap(),
        std::fs::read(fixtures.join("beds.v1.yaml")).unwrap(),
        "the original is kept"
    );
    let (out, text) = output(beds(&env, &base, &["config", "migrate"]));
    assert!(
        out.status.success() && text.contains("nothing to migrate"),
        "{text}"
    );

    let (out, text) = output(beds(&env, &base, &["config", "check"]));
    assert!(out.status.success(), "{text}");
    let shown: serde_yaml::Value = serde_yaml::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["version"], serde_yaml::Value::from(2));
    assert_eq!(
        shown["telemetry"]["heartbeat"],
        serde_yaml::Value::from("1000ms")
    );
    assert_eq!(
        shown["database"]["schema"],
        serde_yaml::Value::from("create")
    );

    let mut node = beds(&env, &base, &["run", "--role", "appServer"])
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn beds run");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !matches!(env.queue_state(&env.queue("rec.write")).await, Some((_, c)) if c >= 1) {
        assert!(
            Instant::now() < deadline,
            "the migrated node did not start consuming"
        );
        assert!(
            node.try_wait().unwrap().is_none(),
            "the migrated node exited"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let client = env.client().await;
    let user = spew::client(&client)
        .user()
        .create(&UserCreate {
            handle: "migrated".into(),
            display_name: "M".into(),
            bio: None,
        })
        .await
        .expect("the node started from the migrated config answers");
    assert_eq!(
        spew::client(&client).user().fetch(user.id).await.unwrap(),
        user
    );
    client.close().await.unwrap();
    node.kill().unwrap();
    node.wait().unwrap();
}
