//! Fault tests: a stream of writes while the broker connections are closed, the serving
//! process is killed, the node is stopped with writes in flight, or the broker is restarted.
//! They act on the real RabbitMQ and run one at a time: tests that only close connections
//! use a private vhost of the shared broker; tests that stop and start the broker boot a
//! RabbitMQ node of their own ([`node::Node`]), never the shared one.

#[path = "../integration/support.rs"]
#[allow(dead_code)]
mod support;

#[path = "../integration/http.rs"]
#[allow(dead_code)]
mod http;

mod cache;
mod node;
mod readiness;
mod stream;
mod tls;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use node::Node;
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

/// An environment whose broker is the private node `broker`.
fn env_on(broker: &Node, name: &str) -> TestEnv {
    let mut env = TestEnv::new(name);
    env.config.amqp.url = broker.url();
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

/// RabbitMQ is stopped and started mid-stream (`stop_app` / `start_app`, on a node of the
/// test's own): the node and the client reconnect, re-declare and resume without a restart,
/// and every write ends applied exactly once.
#[tokio::test]
async fn broker_restarted_mid_stream() {
    let _serial = SERIAL.lock().await;
    let broker = Node::start().await;
    let env = env_on(&broker, "fault_restart");
    let server = env.start().await;
    let author = stream::author(&env).await;
    let stream = Stream::start(&env, author, 5_000).await;
    stream.wait_for(|done| done >= 1_000).await;
    broker.stop_app().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !server.health().ready(),
        "not ready while the broker is down"
    );
    broker.start_app().await;
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

/// How long after `start_app` returns every lane may take to have all its consumers again
/// and writes to complete again: the runtime's own bounds in sequence. A worker sees that
/// lapin gave up on its connection within the link's `STALLED` (10 s) plus its 1 s watchdog
/// tick, its deliveries' settle is bounded by the publisher-confirm time-out (10 s), its
/// supervisor backs off up to 10 s, and a new connection is bounded by `CONNECT_TIMEOUT`
/// (10 s): 41 s, rounded up. (Writes queued meanwhile are served as soon as consumers are
/// back.) Twenty restarts with bounded settles resumed within 27 s at most.
const RESUME_BOUND: Duration = Duration::from_secs(45);

/// Writes answered between two restarts, so that each stop finds writes in flight.
const WRITES_BETWEEN: usize = 200;

/// The consumers the broker lists on each queue, if it answers and every queue exists.
fn consumers(states: &Option<Vec<(u32, u32)>>) -> Option<Vec<u32>> {
    states
        .as_ref()
        .map(|s| s.iter().map(|(_, consumers)| *consumers).collect())
}

/// The broker (a node of the test's own) is stopped for 3 s and started again
/// `BEDS_TEST_FAULT_RESTARTS` times (default 3; 20 or more for the full proof) under a load of
/// 64 writes in flight from an at-least-once client. After each start, within
/// [`RESUME_BOUND`], the broker must list as many consumers on the read and the write queue
/// as the node runs workers, and writes must complete again. A restart that misses the
/// bound is reported and the next one still runs, so one run shows every failed restart. At
/// the end every write is applied exactly once and the node stops within its drain timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_workers_resume_after_repeated_broker_restarts() {
    let _serial = SERIAL.lock().await;
    let restarts: usize = match std::env::var("BEDS_TEST_FAULT_RESTARTS") {
        Ok(n) => n
            .parse()
            .unwrap_or_else(|_| panic!("BEDS_TEST_FAULT_RESTARTS is a count, not `{n}`")),
        Err(_) => 3,
    };
    let broker = Node::start().await;
    let env = env_on(&broker, "fault_restarts");
    let queues = [env.queue("rec.read"), env.queue("rec.write")];
    let expected = vec![
        u32::from(env.config.brokers.read.workers),
        u32::from(env.config.brokers.write.workers),
    ];
    let server = env.start().await;
    let author = stream::author(&env).await;
    let stream = Stream::endless(&env, author, 64).await;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(30);
    let mut last = None;
    while consumers(&last).as_ref() != Some(&expected) {
        assert!(
            Instant::now() < deadline,
            "before any restart the broker lists (ready, consumers) {last:?} on {queues:?}; \
             expected {expected:?} consumers"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        last = broker.probe(&queues).await;
    }
    let mut timings = Vec::new();
    let mut failed = Vec::new();
    for round in 1..=restarts {
        // Writes flow before each stop, so the stop finds some in flight.
        let before = stream.applied();
        if !stream
            .applied_within(before + WRITES_BETWEEN, Duration::from_secs(60))
            .await
        {
            failed.push(format!(
                "before restart {round}/{restarts}: the writes stalled at {} applied for 60 s; \
                 the broker lists (name, messages, consumers) {:?}; node health {:?}",
                stream.applied(),
                broker.list_queues().await,
                server.health()
            ));
            panic!("{}", failed.join("\n"));
        }
        broker.stop_app().await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        // No reply reaches the client while the broker is down: a write answered after
        // this was served after the start.
        let applied_down = stream.applied();
        broker.start_app().await;
        let back = Instant::now();
        let deadline = back + RESUME_BOUND;
        // Every worker of every lane consumes again, as the broker sees it, and writes
        // complete again.
        let mut last = None;
        let mut lanes_back = vec![None; queues.len()];
        let mut consumers_back = None;
        let mut writes_back = None;
        loop {
            last = broker.probe(&queues).await.or(last);
            let now = back.elapsed();
            for ((at, found), want) in lanes_back
                .iter_mut()
                .zip(consumers(&last).unwrap_or_default())
                .zip(&expected)
            {
                if found == *want {
                    at.get_or_insert(now);
                }
            }
            if consumers(&last).as_ref() == Some(&expected) {
                consumers_back.get_or_insert(now);
            }
            if stream.applied() > applied_down {
                writes_back.get_or_insert(now);
            }
            if (consumers_back.is_some() && writes_back.is_some()) || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        match (consumers_back, writes_back) {
            (Some(c), Some(w)) => {
                let secs = |d: &Option<Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64());
                println!(
                    "restart {round}/{restarts}: consumers back on every lane {:.1} s after \
                     start_app (read {:.1} s, write {:.1} s), writes completing {:.1} s after \
                     ({} applied so far)",
                    c.as_secs_f64(),
                    secs(&lanes_back[0]),
                    secs(&lanes_back[1]),
                    w.as_secs_f64(),
                    stream.applied()
                );
                timings.push((c, w));
            }
            _ => {
                let listed = broker.list_queues().await;
                let why = format!(
                    "restart {round}/{restarts}: not resumed {RESUME_BOUND:?} after start_app: \
                     all consumers of each lane (read, write) first listed after \
                     {lanes_back:?}, of every lane at once after {consumers_back:?}, writes \
                     completing after {writes_back:?}; the broker lists (ready, consumers) {last:?} on \
                     {queues:?}, expected {expected:?} consumers; all queues (name, messages, \
                     consumers): {listed:?}; node health {:?}; {} writes applied",
                    server.health(),
                    stream.applied()
                );
                println!("{why}");
                failed.push(why);
            }
        }
    }
    stream.stop();
    let outcomes = tokio::time::timeout(Duration::from_secs(180), stream.finish())
        .await
        .expect("the writes in flight finish (each gives up two minutes after its first send)");
    println!(
        "{restarts} restarts in {:.0} s, {} writes, {} restarts not resumed within {:?}; \
         slowest resume {:.1} s (consumers) / {:.1} s (writes)",
        started.elapsed().as_secs_f64(),
        outcomes.len(),
        failed.len(),
        RESUME_BOUND,
        timings
            .iter()
            .map(|t| t.0.as_secs_f64())
            .fold(0.0, f64::max),
        timings
            .iter()
            .map(|t| t.1.as_secs_f64())
            .fold(0.0, f64::max),
    );
    stream::assert_exactly_once(&env, &outcomes).await;
    let listed = broker.list_queues().await;
    for (queue, workers) in queues.iter().zip(&expected) {
        let found = listed.iter().find(|(name, _, _)| name == queue);
        if found.is_none_or(|(_, _, c)| *c != u64::from(*workers)) {
            failed.push(format!(
                "at the end, rabbitmqctl lists (name, messages, consumers) {found:?}: \
                 expected {workers} consumers"
            ));
        }
    }
    let drain = env.config.shutdown.drain_timeout.duration();
    let stopping = Instant::now();
    tokio::time::timeout(drain + Duration::from_secs(10), server.stop())
        .await
        .expect("the node stops");
    if stopping.elapsed() >= drain {
        failed.push(format!(
            "the node stopped in {:?}, not within its drain timeout {drain:?}: a worker did \
             not finish",
            stopping.elapsed()
        ));
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

/// Committed-write events outlive closed connections: the broker closes every connection of
/// the vhost (the node's relay's among them) twice while 2,000 writes stream in; afterwards
/// the outbox empties and every stored spew has its create event (duplicates, if any, carry
/// the same event id).
#[tokio::test]
async fn events_survive_connections_closed_mid_stream() {
    use lapin::options::{BasicGetOptions, QueueBindOptions, QueueDeclareOptions};
    use std::collections::{HashMap, HashSet};

    let _serial = SERIAL.lock().await;
    let vhost = Vhost::new();
    let env = env_in(&vhost, "fault_events");
    // A durable queue, so events published while this test's own connection is closed wait.
    let queue = format!("{}events", env.config.amqp.queue_tag);
    {
        let conn = lapin::Connection::connect(&env.config.amqp.url, Default::default())
            .await
            .unwrap();
        let ch = conn.create_channel().await.unwrap();
        beds_runtime::topology::declare(&ch, &env.config.amqp, &[])
            .await
            .unwrap();
        ch.queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await
        .unwrap();
        ch.queue_bind(
            queue.as_str().into(),
            "beds.events".into(),
            format!("{}evt.#", env.config.amqp.queue_tag).into(),
            QueueBindOptions::default(),
            Default::default(),
        )
        .await
        .unwrap();
        conn.close(200, "declared".into()).await.unwrap();
    }
    let server = env.start().await;
    let author = stream::author(&env).await;
    let stream = Stream::start(&env, author, 2_000).await;
    for _ in 0..2 {
        stream.wait_for(|done| done >= 500).await;
        rabbitmqctl(&["close_all_connections", "-p", &vhost.0, "fault test"]);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let outcomes = stream.finish().await;
    stream::assert_exactly_once(&env, &outcomes).await;

    let db = env.db().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM beds_outbox")
            .fetch_one(&db)
            .await
            .unwrap();
        if left == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{left} events still in the outbox"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stored: HashSet<String> = sqlx::query_scalar("SELECT body_spw FROM spw_spews")
        .fetch_all(&db)
        .await
        .unwrap()
        .into_iter()
        .collect();

    let conn = lapin::Connection::connect(&env.config.amqp.url, Default::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    // Event id -> the created spew's body.
    let mut events: HashMap<String, String> = HashMap::new();
    while let Some(m) = ch
        .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        let e: serde_json::Value = serde_json::from_slice(&m.delivery.data).unwrap();
        if e["template"] == "spew" && e["op"] == "create" {
            let body = e["after"]["body"].as_str().unwrap().to_string();
            if let Some(seen) = events.insert(e["id"].as_str().unwrap().to_string(), body.clone()) {
                assert_eq!(seen, body, "a republished event is the same event");
            }
        }
    }
    let published: HashSet<&String> = events.values().collect();
    assert_eq!(events.len(), stored.len(), "one event id per stored spew");
    assert_eq!(published, stored.iter().collect::<HashSet<_>>());
    server.stop().await;
}
