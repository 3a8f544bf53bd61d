//! The read cache across broker faults: a node's invalidation queue is exclusive to its
//! connection, so after the connections are closed or the broker restarts the node must
//! declare a new one (and drop what it cached meanwhile) for writes on another node to
//! reach it again.

use std::future::Future;
use std::time::{Duration, Instant};

use beds::spew::{self, UserCreate, UserPatch};
use beds_runtime::{Client, ClientOptions, ReadOptions, Server};

use super::node::Node;
use super::support::TestEnv;
use super::{SERIAL, Vhost, env_in, env_on, rabbitmqctl};

/// How long the nodes may take to be back after the fault (see `RESUME_BOUND`).
const BACK: Duration = Duration::from_secs(45);

/// How soon after it cached a record the reader must have dropped it: well inside `user`'s
/// 30 s TTL, so that only the reconnection can have done it.
const CLEARED: Duration = Duration::from_secs(25);

/// The documented bound on a `cached` read's lag behind a write on another node.
const CONVERGENCE: Duration = Duration::from_secs(2);

/// A node serving only writes or only reads, so the test knows which one it talks to.
async fn node(env: &TestEnv, name: &str, writes: bool) -> Server {
    let mut config = env.config.clone();
    config.node = name.to_string();
    if writes {
        config.brokers.read.workers = 0;
    } else {
        config.brokers.write.workers = 0;
    }
    Server::start(&config, &beds::CATALOG).await.unwrap()
}

/// A user cached on the reader, the fault, then a write on the writer: the reader's cache
/// was cleared when it subscribed again, and the write's invalidation reaches it.
async fn survives(env: &TestEnv, fault: impl Future<Output = ()>) {
    let writer = node(env, "writer", true).await;
    let reader = node(env, "reader", false).await;
    let client = Client::connect(ClientOptions::from_config(&env.config, "fault-cache"))
        .await
        .unwrap();
    let users = spew::client(&client).user();
    let ada = users
        .create(&UserCreate {
            handle: "ada".into(),
            display_name: "Ada".into(),
            bio: None,
        })
        .await
        .unwrap();
    let cached_at = Instant::now();
    users.fetch(ada.id).await.unwrap();
    assert_eq!(reader.cache_entries(), 1);

    fault.await;
    // Cleared by the reconnection, not by SPEW's 30 s TTL.
    while reader.cache_entries() > 0 {
        assert!(
            cached_at.elapsed() < CLEARED,
            "the reader kept its cache across the fault"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let deadline = Instant::now() + BACK;
    while !reader.health().ready() || !writer.health().ready() {
        assert!(
            Instant::now() < deadline,
            "the nodes did not come back: {:?}",
            reader.health()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Cache version 1 again, then write on the other node.
    let cached = loop {
        match users.fetch(ada.id).await {
            Ok(user) => break user,
            Err(e) => {
                assert!(Instant::now() < deadline, "reads did not resume: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(cached.version, 1);
    let patch = UserPatch {
        display_name: Some("Ada L.".into()),
        ..UserPatch::default()
    };
    let updated = users.update(ada.id, &patch).await.unwrap();
    let converge = Instant::now() + CONVERGENCE;
    while users
        .fetch_with(ada.id, ReadOptions::cached())
        .await
        .unwrap()
        .version
        < updated.version
    {
        assert!(
            Instant::now() < converge,
            "the invalidation did not reach the reader"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    client.close().await.unwrap();
    reader.stop().await;
    writer.stop().await;
}

#[tokio::test]
async fn invalidations_reach_a_node_again_after_a_broker_restart() {
    let _serial = SERIAL.lock().await;
    let broker = Node::start().await;
    let env = env_on(&broker, "fault_cache_restart");
    survives(&env, async {
        broker.stop_app().await;
        broker.start_app().await;
    })
    .await;
}

#[tokio::test]
async fn invalidations_reach_a_node_again_after_its_connections_are_closed() {
    let _serial = SERIAL.lock().await;
    let vhost = Vhost::new();
    let env = env_in(&vhost, "fault_cache_close");
    survives(&env, async {
        rabbitmqctl(&["close_all_connections", "-p", &vhost.0, "fault test"]);
    })
    .await;
}
