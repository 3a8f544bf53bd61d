//! The read cache across a broker restart: each node's invalidation queue is exclusive to
//! its connection, so it is gone after the restart; the node must declare a new one (and
//! drop what it cached meanwhile) so that writes on another node reach it again.

use std::time::{Duration, Instant};

use beds::spew::{self, UserCreate, UserPatch};
use beds_runtime::{Client, ClientOptions, ReadOptions, Server};

use super::node::Node;
use super::{SERIAL, env_on};

/// How long a node may take to be back after `start_app` (see `RESUME_BOUND`), plus the
/// documented convergence of a cached read.
const BACK: Duration = Duration::from_secs(47);

#[tokio::test]
async fn invalidations_reach_a_node_again_after_a_broker_restart() {
    let _serial = SERIAL.lock().await;
    let broker = Node::start().await;
    let env = env_on(&broker, "fault_cache");
    let start = |name: &str, writes: bool| {
        let mut config = env.config.clone();
        config.node = name.to_string();
        if writes {
            config.brokers.read.workers = 0;
        } else {
            config.brokers.write.workers = 0;
        }
        async move { Server::start(&config, &beds::CATALOG).await.unwrap() }
    };
    let writer = start("writer", true).await;
    let reader = start("reader", false).await;
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
    users.fetch(ada.id).await.unwrap();
    assert_eq!(reader.cache_entries(), 1);

    broker.stop_app().await;
    broker.start_app().await;
    // The reader cleared its cache when it subscribed again.
    let deadline = Instant::now() + BACK;
    while reader.cache_entries() > 0 || !reader.health().ready() || !writer.health().ready() {
        assert!(
            Instant::now() < deadline,
            "the nodes did not come back: {:?}",
            reader.health()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Cache version 1 again, then write on the other node: the invalidation must arrive.
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
    let converge = Instant::now() + Duration::from_secs(2);
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
