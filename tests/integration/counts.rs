//! Maintained counts kept by tercero nodes from write events, on the database
//! `BEDS_TEST_DATABASE` names: after a burst of mixed writes whose events arrive
//! duplicated, redelivered and partly through a node killed mid-stream (its successor and
//! a second live node taking over), every counter equals `COUNT(*)` of its rows, and every
//! event's invalidation was broadcast.
//!
//! The events are published by the test, exactly as the write-event contract states
//! ([`write_events`] is the one event source): when the transactional outbox and its
//! relay publish them, that function becomes "write, then let the relay publish".

use std::collections::{BTreeMap, HashMap, HashSet};
use std::process::{Child, Command};
use std::time::Duration;

use beds::spew::{
    self, FollowCreate, LikeCreate, Spew, SpewCreate, SpewId, SpewPatch, User, UserCreate, UserId,
};
use beds_runtime::support as rt;
use beds_runtime::{Client, Config, Role, Server};
use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use rand::rngs::StdRng;
use rand::{RngExt as _, SeedableRng};
use serde_json::{Value as Json, json};

use crate::support::{Rows, TestEnv};

/// Events of the burst in CI; `BEDS_TEST_COUNT_EVENTS` raises it (10000 for the full run).
const DEFAULT_EVENTS: usize = 2_000;
/// The child process's configuration, as JSON (see [`tercero_child`]).
const CHILD_CONFIG: &str = "BEDS_TEST_TERCERO_CONFIG";
/// How long convergence may take once every event is published.
const CONVERGE: Duration = Duration::from_secs(120);

/// SPEW's templates with the counts a timeline reads declared `maintained`, the way the
/// SPEW declaration will once write events flow from its writes.
const fn maintained(
    t: &'static rt::TemplateMeta,
    counts: &'static [rt::CountMeta],
) -> rt::TemplateMeta {
    rt::TemplateMeta { counts, ..*t }
}

const fn count(name: &'static str, template: &'static str, by: &'static str) -> rt::CountMeta {
    rt::CountMeta {
        name,
        template,
        by,
        filter: &[],
        maintained: true,
    }
}

static USER: rt::TemplateMeta = maintained(
    <User as rt::Record>::META,
    &[
        count("followers", "follow", "followee"),
        count("following", "follow", "follower"),
        count("spews", "spew", "author"),
    ],
);
static SPEW: rt::TemplateMeta = maintained(
    <Spew as rt::Record>::META,
    &[
        count("likes", "like", "spew"),
        count("replies", "spew", "reply_to"),
        count("respews", "spew", "respew_of"),
    ],
);
static DOMAIN: rt::DomainMeta = rt::DomainMeta {
    name: "spew",
    version: spew::DOMAIN.version,
    templates: &[
        &USER,
        &SPEW,
        <spew::Follow as rt::Record>::META,
        <spew::Like as rt::Record>::META,
    ],
    queries: &[],
};
/// The tercero's catalog: SPEW's routes, the metadata above.
static CATALOG: rt::Catalog = rt::Catalog {
    domains: &[&DOMAIN],
    route: |domain, template| beds::CATALOG.route(domain, template),
};

fn events_wanted() -> usize {
    std::env::var("BEDS_TEST_COUNT_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_EVENTS)
}

/// The write event of one committed change, as the contract states it.
struct Recorder {
    seq: i64,
    events: Vec<Json>,
}

impl Recorder {
    fn record(&mut self, template: &str, op: &str, before: Option<Json>, after: Option<Json>) {
        self.seq += 1;
        let rec = after.as_ref().or(before.as_ref()).expect("a record");
        let request = uuid::Uuid::now_v7().to_string();
        self.events.push(json!({
            "v": 1, "kind": "write_event", "id": uuid::Uuid::now_v7().to_string(),
            "correlation_id": request, "causation_id": request, "depth": 1,
            "origin": {"service": "beds", "node": "test-writer", "env": "test"},
            "seq": self.seq, "domain": "spew", "template": template, "op": op,
            "key": {"id": rec["id"]}, "version": rec["version"],
            "committed_at": beds_runtime::format_timestamp(&chrono::Utc::now()),
            "after": after, "before": before,
        }));
    }
}

fn wire<T: serde::Serialize>(record: &T) -> Json {
    serde_json::to_value(record).expect("a record serialises")
}

/// The event source: `n` writes through the client (follows and likes made and undone,
/// spews posted as replies and respews, and moved between authors and threads), each
/// with the write event its commit produces.
async fn write_events(client: &Client, n: usize, seed: u64) -> Vec<Json> {
    let api = spew::client(client);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut rec = Recorder {
        seq: 0,
        events: Vec::new(),
    };
    let mut users: Vec<UserId> = Vec::new();
    for i in 0..12 {
        let u = api
            .user()
            .create(&UserCreate {
                handle: format!("user{i}"),
                display_name: format!("U{i}"),
                bio: None,
            })
            .await
            .unwrap();
        rec.record("user", "create", None, Some(wire(&u)));
        users.push(u.id);
    }
    let mut spews: Vec<Spew> = Vec::new();
    let mut follows: HashMap<(UserId, UserId), Json> = HashMap::new();
    let mut likes: HashMap<(UserId, SpewId), Json> = HashMap::new();
    let pick = |rng: &mut StdRng, users: &[UserId]| users[rng.random_range(0..users.len())];
    while rec.events.len() < n {
        let any_spew = |rng: &mut StdRng, spews: &[Spew]| {
            (!spews.is_empty()).then(|| spews[rng.random_range(0..spews.len())].id)
        };
        match rng.random_range(0..10) {
            0..=2 => {
                let (reply_to, respew_of) = match rng.random_range(0..3) {
                    0 => (any_spew(&mut rng, &spews), None),
                    1 => (None, any_spew(&mut rng, &spews)),
                    _ => (None, None),
                };
                let s = api
                    .spew()
                    .create(&SpewCreate {
                        author: pick(&mut rng, &users),
                        body: "burst".into(),
                        reply_to,
                        respew_of,
                    })
                    .await
                    .unwrap();
                rec.record("spew", "create", None, Some(wire(&s)));
                spews.push(s);
            }
            3 if !spews.is_empty() => {
                let i = rng.random_range(0..spews.len());
                let reply_to = match rng.random_range(0..2) {
                    0 => None,
                    _ => any_spew(&mut rng, &spews).filter(|id| *id != spews[i].id),
                };
                let before = wire(&spews[i]);
                let s = api
                    .spew()
                    .update(
                        spews[i].id,
                        &SpewPatch {
                            author: Some(pick(&mut rng, &users)),
                            body: None,
                            reply_to: Some(reply_to),
                            respew_of: None,
                        },
                    )
                    .await
                    .unwrap();
                rec.record("spew", "update", Some(before), Some(wire(&s)));
                spews[i] = s;
            }
            4..=5 => {
                let (a, b) = (pick(&mut rng, &users), pick(&mut rng, &users));
                if a == b {
                    continue;
                }
                if let Some(before) = follows.remove(&(a, b)) {
                    let id = serde_json::from_value(before["id"].clone()).unwrap();
                    api.follow().delete(id).await.unwrap();
                    rec.record("follow", "delete", Some(before), None);
                } else {
                    let f = api
                        .follow()
                        .create(&FollowCreate {
                            follower: a,
                            followee: b,
                        })
                        .await
                        .unwrap();
                    let after = wire(&f);
                    rec.record("follow", "create", None, Some(after.clone()));
                    follows.insert((a, b), after);
                }
            }
            _ => {
                let Some(s) = any_spew(&mut rng, &spews) else {
                    continue;
                };
                let u = pick(&mut rng, &users);
                if let Some(before) = likes.remove(&(u, s)) {
                    let id = serde_json::from_value(before["id"].clone()).unwrap();
                    api.like().delete(id).await.unwrap();
                    rec.record("like", "delete", Some(before), None);
                } else {
                    let l = api
                        .like()
                        .create(&LikeCreate { user: u, spew: s })
                        .await
                        .unwrap();
                    let after = wire(&l);
                    rec.record("like", "create", None, Some(after.clone()));
                    likes.insert((u, s), after);
                }
            }
        }
    }
    rec.events
}

async fn publisher(env: &TestEnv) -> (Connection, Channel) {
    let conn = Connection::connect(&env.config.amqp.url, ConnectionProperties::default())
        .await
        .expect("RabbitMQ");
    let channel = conn.create_channel().await.unwrap();
    (conn, channel)
}

/// Publishes events as the relay does: routing key and message id per the contract.
async fn publish(env: &TestEnv, channel: &Channel, events: &[&Json]) {
    for e in events {
        let key = format!(
            "{}evt.{}.{}.{}",
            env.config.amqp.queue_tag,
            e["domain"].as_str().unwrap(),
            e["template"].as_str().unwrap(),
            e["op"].as_str().unwrap()
        );
        channel
            .basic_publish(
                "beds.events".into(),
                key.as_str().into(),
                Default::default(),
                &serde_json::to_vec(e).unwrap(),
                BasicProperties::default()
                    .with_content_type("application/json".into())
                    .with_message_id(e["id"].as_str().unwrap().into()),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }
}

/// Every maintained count's counters, and the same values from `COUNT(*)` over the
/// rows; counters at zero are left out of both.
async fn counters_and_truth(
    rows: &Rows,
) -> (
    BTreeMap<(String, String), i64>,
    BTreeMap<(String, String), i64>,
) {
    let sql = format!(
        "SELECT {}, {}, {} FROM {}",
        rows.quote("counter"),
        rows.quote("owner"),
        rows.quote("value"),
        rows.quote("beds_counter")
    );
    let kept: Vec<(String, String, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .fetch_all(rows.pool())
        .await
        .unwrap();
    let kept = kept
        .into_iter()
        .filter(|(_, _, v)| *v != 0)
        .map(|(c, o, v)| ((c, o), v))
        .collect();
    let mut truth = BTreeMap::new();
    for t in DOMAIN.templates {
        for c in t.counts {
            let from = DOMAIN.template(c.template).unwrap();
            let by = rows.quote(from.field(c.by).unwrap().column);
            let sql = format!(
                "SELECT {}, COUNT(*) FROM {} WHERE {by} IS NOT NULL GROUP BY {by}",
                rows.as_text(&by),
                rows.quote(from.table),
            );
            let counted: Vec<(String, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .fetch_all(rows.pool())
                .await
                .unwrap();
            let name = format!("spew.{}.{}.{}", c.template, c.by, c.name);
            for (owner, n) in counted {
                truth.insert((name.clone(), owner), n);
            }
        }
    }
    (kept, truth)
}

fn tercero_config(env: &TestEnv, node: &str) -> Config {
    let mut config = env.config.clone();
    config.role = Role::Tercero;
    config.node = node.into();
    config.tercero.batch = 64;
    config
}

/// A tercero node in a process of its own, killed with SIGKILL (at the latest when the
/// test ends, however it ends).
struct ChildNode(Child);

impl ChildNode {
    fn spawn(config: &Config) -> ChildNode {
        let child = Command::new(std::env::current_exe().unwrap())
            .args([
                "counts::tercero_child",
                "--exact",
                "--ignored",
                "--nocapture",
            ])
            .env(CHILD_CONFIG, serde_json::to_string(config).unwrap())
            .spawn()
            .expect("the test binary starts again");
        ChildNode(child)
    }

    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for ChildNode {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The child side of [`spawn_tercero`]: a tercero node serving until killed. Without
/// its variable (a plain `--ignored` run) it does nothing.
#[tokio::test]
#[ignore = "started as a child process by the counts test"]
async fn tercero_child() {
    let Ok(config) = std::env::var(CHILD_CONFIG) else {
        return;
    };
    let config: Config = serde_json::from_str(&config).unwrap();
    let server = Server::start(&config, &CATALOG)
        .await
        .expect("tercero starts");
    server.run().await;
}

/// Waits until `done` holds, failing after `deadline`.
async fn until<F: Future<Output = bool>>(
    what: &str,
    deadline: Duration,
    mut done: impl FnMut() -> F,
) {
    let end = tokio::time::Instant::now() + deadline;
    while !done().await {
        assert!(
            tokio::time::Instant::now() < end,
            "{what}: not within {deadline:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_converge_through_duplicates_redeliveries_and_a_killed_node() {
    let env = TestEnv::matrix("counts");
    let app = env.start().await;
    let client = env.client().await;
    let seed: u64 = rand::random();
    println!("counts: seed {seed}");
    let events = write_events(&client, events_wanted(), seed).await;
    let distinct: HashSet<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();

    let (_conn, channel) = publisher(&env).await;
    // Every invalidation, on a queue bound before the first event.
    let inv = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .queue_bind(
            inv.name().as_str().into(),
            "beds.events".into(),
            format!("{}inv.#", env.config.amqp.queue_tag)
                .as_str()
                .into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();

    // The queue exists before the first event, as it does once any tercero ever ran.
    beds_runtime::topology::declare_events(
        &channel,
        &env.config.amqp,
        beds_runtime::EVENT_QUEUE_KEY,
        beds_runtime::EVENT_BINDING,
    )
    .await
    .unwrap();
    let mut killed = ChildNode::spawn(&tercero_config(&env, "tercero-a"));
    let rows = env.rows().await;
    // The first half, every seventh event twice.
    let half = events.len() / 2;
    let first: Vec<&Json> = events[..half]
        .iter()
        .enumerate()
        .flat_map(|(i, e)| if i % 7 == 0 { vec![e, e] } else { vec![e] })
        .collect();
    publish(&env, &channel, &first).await;
    until("the first node applies a part", CONVERGE, || async {
        rows.total("beds_event_applied").await >= (half / 3) as i64
    })
    .await;
    killed.kill();

    // Two nodes take over; the rest arrives, then a redelivery of every fifth event.
    let b = Server::start(&tercero_config(&env, "tercero-b"), &CATALOG)
        .await
        .expect("tercero b");
    let c = Server::start(&tercero_config(&env, "tercero-c"), &CATALOG)
        .await
        .expect("tercero c");
    let rest: Vec<&Json> = events[half..].iter().collect();
    publish(&env, &channel, &rest).await;
    let again: Vec<&Json> = events.iter().step_by(5).collect();
    publish(&env, &channel, &again).await;

    until("every event is applied", CONVERGE, || async {
        rows.total("beds_event_applied").await == distinct.len() as i64
    })
    .await;
    until("the tercero queue drains", CONVERGE, || async {
        env.depth(&env.queue(beds_runtime::EVENT_QUEUE_KEY)).await == 0
    })
    .await;
    let (kept, truth) = counters_and_truth(&rows).await;
    assert!(!truth.is_empty());
    assert_eq!(kept, truth, "seed {seed}: counters differ from COUNT(*)");

    // Every event's invalidation, at least once (a batch redelivered after its commit is
    // broadcast again), each naming its event.
    let mut consumer = channel
        .basic_consume(
            inv.name().as_str().into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let by_id: HashMap<&str, &Json> = events
        .iter()
        .map(|e| (e["id"].as_str().unwrap(), e))
        .collect();
    let mut invalidated = HashSet::new();
    while invalidated.len() < distinct.len() {
        let d = tokio::time::timeout(Duration::from_secs(30), consumer.next())
            .await
            .expect("an invalidation per event")
            .unwrap()
            .unwrap();
        let inv: Json = serde_json::from_slice(&d.data).unwrap();
        let cause = inv["causation_id"].as_str().unwrap().to_string();
        let e = by_id[cause.as_str()];
        assert_eq!(inv["kind"], "invalidation");
        assert_eq!(
            d.routing_key.as_str(),
            format!(
                "{}inv.spew.{}",
                env.config.amqp.queue_tag,
                e["template"].as_str().unwrap()
            )
        );
        assert_eq!(
            (&inv["key"], &inv["depth"], &inv["correlation_id"]),
            (&e["key"], &json!(2), &e["correlation_id"])
        );
        let version = if e["op"] == "delete" {
            Json::Null
        } else {
            e["version"].clone()
        };
        assert_eq!(inv["version"], version);
        invalidated.insert(cause);
    }

    b.stop().await;
    c.stop().await;
    app.stop().await;
}

/// A tercero whose role was refused before serves now, and says what it consumes.
#[tokio::test]
async fn a_tercero_node_starts_and_stops() {
    let env = TestEnv::new("tercero_start");
    let server = Server::start(&tercero_config(&env, "t1"), &CATALOG)
        .await
        .expect("a tercero node starts");
    until("the node is ready", Duration::from_secs(10), || async {
        server.health().ready()
    })
    .await;
    assert!(env.depth(&env.queue(beds_runtime::EVENT_QUEUE_KEY)).await == 0);
    server.stop().await;
}
