//! Fault tests: a stream of writes while the broker connections are closed, the serving
//! process is killed, or the node is stopped with writes in flight. They act on the real
//! RabbitMQ (in a private vhost where they can) and run one at a time.

#[path = "../integration/support.rs"]
#[allow(dead_code)]
mod support;

mod stream;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use stream::Stream;
use support::TestEnv;

/// Fault tests disturb the broker; never two at once.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A throwaway vhost, so closing "all connections" touches only this test's.
struct Vhost(String);

impl Vhost {
    fn new() -> Vhost {
        let name = format!("beds-faults-{}", uuid::Uuid::now_v7().simple());
        rabbitmqctl(&["add_vhost", &name]);
        rabbitmqctl(&["set_permissions", "-p", &name, "guest", ".*", ".*", ".*"]);
        Vhost(name)
    }
}

impl Drop for Vhost {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args(["-q", "delete_vhost", &self.0])
            .status();
    }
}

fn rabbitmqctl(args: &[&str]) {
    let out = Command::new("rabbitmqctl")
        .arg("-q")
        .args(args)
        .output()
        .expect("fault tests need rabbitmqctl on PATH");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn env_in(vhost: &Vhost, name: &str) -> TestEnv {
    let mut env = TestEnv::new(name);
    env.config.amqp.url = format!("amqp://guest:guest@127.0.0.1:5672/{}", vhost.0);
    env
}

fn spawn_node(env: &TestEnv) -> Child {
    Command::new(env!("CARGO_BIN_EXE_beds"))
        .args(["run", "--config"])
        .arg(support::repo_config_path())
        .env("BEDS_ENV", "test")
        .env("BEDS_AMQP__URL", &env.config.amqp.url)
        .env("BEDS_AMQP__QUEUE_TAG", &env.config.amqp.queue_tag)
        .env("BEDS_DATABASE__DATA_DIR", &env.config.database.data_dir)
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn beds")
}

async fn wait_consuming(env: &TestEnv, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(30);
    for key in ["rec.read", "rec.write"] {
        while !matches!(env.queue_state(&env.queue(key)).await, Some((_, c)) if c >= 1) {
            assert!(
                Instant::now() < deadline,
                "the node did not start consuming {key}"
            );
            assert!(child.try_wait().unwrap().is_none(), "the node exited early");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The broker closes every connection of the vhost twice while 5,000 writes stream in:
/// every write ends applied exactly once.
#[tokio::test]
async fn connections_closed_twice_mid_stream() {
    let _serial = SERIAL.lock().await;
    let vhost = Vhost::new();
    let env = env_in(&vhost, "fault_close");
    let server = env.start().await;
    let author = stream::author(&env).await;
    let stream = Stream::start(&env, author, 5_000).await;
    for _ in 0..2 {
        stream.wait_for(|done| done >= 1_000).await;
        rabbitmqctl(&["close_all_connections", "-p", &vhost.0, "fault test"]);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let outcomes = stream.finish().await;
    stream::assert_exactly_once(&env, &outcomes).await;
    assert!(
        server.health().ready(),
        "the node recovered: {:?}",
        server.health()
    );
    server.stop().await;
}

/// The serving process is killed with SIGKILL mid-stream and started again: nothing
/// acknowledged is lost, nothing is applied twice.
#[tokio::test]
async fn kill_9_mid_stream_then_restart() {
    let _serial = SERIAL.lock().await;
    let vhost = Vhost::new();
    let env = env_in(&vhost, "fault_kill");
    let mut node = spawn_node(&env);
    wait_consuming(&env, &mut node).await;
    let author = stream::author(&env).await;
    let stream = Stream::start(&env, author, 5_000).await;
    stream.wait_for(|done| done >= 1_500).await;
    node.kill().expect("SIGKILL");
    node.wait().unwrap();
    let mut node = spawn_node(&env);
    wait_consuming(&env, &mut node).await;
    let outcomes = stream.finish().await;
    stream::assert_exactly_once(&env, &outcomes).await;
    Command::new("kill")
        .args(["-TERM", &node.id().to_string()])
        .status()
        .unwrap();
    assert_eq!(node.wait().unwrap().code(), Some(0));
}

/// SIGTERM with 500 writes in flight: every write the node took is finished and answered
/// before it exits 0, and the next start consumes what was still queued.
#[tokio::test]
async fn sigterm_with_500_writes_in_flight() {
    let _serial = SERIAL.lock().await;
    let vhost = Vhost::new();
    let env = env_in(&vhost, "fault_term");
    let mut node = spawn_node(&env);
    wait_consuming(&env, &mut node).await;
    let author = stream::author(&env).await;
    let stream = Stream::start_burst(&env, author, 500).await;
    stream.wait_for(|done| done >= 50).await;
    Command::new("kill")
        .args(["-TERM", &node.id().to_string()])
        .status()
        .unwrap();
    assert_eq!(
        node.wait().unwrap().code(),
        Some(0),
        "a drained stop exits 0"
    );
    let left = env.depth(&env.queue("rec.write")).await;
    let mut node = spawn_node(&env);
    wait_consuming(&env, &mut node).await;
    let outcomes = stream.finish().await;
    stream::assert_exactly_once(&env, &outcomes).await;
    println!("{left} writes were still queued at the stop and served by the next start");
    Command::new("kill")
        .args(["-TERM", &node.id().to_string()])
        .status()
        .unwrap();
    assert_eq!(node.wait().unwrap().code(), Some(0));
}

/// Starts the broker application again even if the test fails half-way.
struct BrokerBack;

impl Drop for BrokerBack {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args(["-q", "start_app"])
            .status();
        let _ = Command::new("rabbitmqctl")
            .args(["-q", "await_startup"])
            .status();
    }
}

/// RabbitMQ is stopped and started mid-stream (`stop_app` / `start_app`): the node and the
/// client reconnect, re-declare and resume without a restart, and every write ends applied
/// exactly once.
#[tokio::test]
async fn broker_restarted_mid_stream() {
    let _serial = SERIAL.lock().await;
    let vhost = Vhost::new();
    let env = env_in(&vhost, "fault_restart");
    let server = env.start().await;
    let author = stream::author(&env).await;
    let stream = Stream::start(&env, author, 5_000).await;
    stream.wait_for(|done| done >= 1_000).await;
    {
        let _back = BrokerBack;
        rabbitmqctl(&["stop_app"]);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(
            !server.health().ready(),
            "not ready while the broker is down"
        );
    }
    let outcomes = stream.finish().await;
    stream::assert_exactly_once(&env, &outcomes).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !server.health().ready() {
        assert!(
            Instant::now() < deadline,
            "the node did not become ready again: {:?}",
            server.health()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.stop().await;
}
