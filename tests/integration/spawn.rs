//! The binary: `beds run --role appServer` starts, declares the topology, answers, and
//! stops cleanly on SIGTERM.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use beds::spew::{self, UserCreate};

use crate::support::{TestEnv, repo_config_path};

#[tokio::test]
async fn beds_run_serves_and_stops_on_sigterm() {
    let env = TestEnv::new("spawn");
    let mut child = Command::new(env!("CARGO_BIN_EXE_beds"))
        .args(["run", "--role", "appServer", "--config"])
        .arg(repo_config_path())
        .env("BEDS_ENV", "test")
        .env("BEDS_ROLE", "admin") // --role must win over configuration
        .env("BEDS_AMQP__URL", &env.config.amqp.url)
        .env("BEDS_AMQP__QUEUE_TAG", &env.config.amqp.queue_tag)
        .env("BEDS_DATABASE__DATA_DIR", &env.config.database.data_dir)
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn beds");

    // Ready once both work queues have their consumers.
    let deadline = Instant::now() + Duration::from_secs(30);
    for key in ["rec.read", "rec.write"] {
        while !matches!(env.queue_state(&env.queue(key)).await, Some((_, consumers)) if consumers >= 1)
        {
            assert!(
                Instant::now() < deadline,
                "beds run did not start consuming {key} within 30 s"
            );
            assert!(child.try_wait().unwrap().is_none(), "beds run exited early");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    for dlq in ["rec.read.dlq", "rec.write.dlq"] {
        assert!(
            env.queue_state(&env.queue(dlq)).await.is_some(),
            "{dlq} declared"
        );
    }

    let client = env.client().await;
    let user = spew::client(&client)
        .user()
        .create(&UserCreate {
            handle: "spawned".into(),
            display_name: "S".into(),
            bio: None,
        })
        .await
        .expect("the spawned server answers");
    assert_eq!(user.handle, "spawned");
    let fetched = spew::client(&client).user().fetch(user.id).await.unwrap();
    assert_eq!(fetched, user);
    client.close().await.unwrap();

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(15);
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        assert!(
            Instant::now() < deadline,
            "beds run did not exit within 15 s of SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(exit.code(), Some(0), "clean stop exits 0");
}

/// A worker whose consumer is cancelled under it (its queue deleted) is restarted by its
/// supervisor, re-declares the queue and serves again; the restart is counted.
#[tokio::test]
async fn a_lost_consumer_is_restarted_and_serves_again() {
    let env = TestEnv::new("lost_consumer");
    let server = env.start().await;
    let raw = env.raw().await;
    raw.channel
        .queue_delete(
            env.queue("rec.read").as_str().into(),
            lapin::options::QueueDeleteOptions::default(),
        )
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while server.health().restarts == 0 || !server.health().ready() {
        assert!(
            Instant::now() < deadline,
            "no restart within 15 s: {:?}",
            server.health()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let client = env.client().await;
    let page = spew::client(&client)
        .user()
        .list(None, None)
        .await
        .expect("reads are served again");
    assert!(page.items.is_empty());
    client.close().await.unwrap();
    server.stop().await;
}
