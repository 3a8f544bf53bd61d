//! Maintained counts kept by tercero nodes from write events, on the database
//! `BEDS_TEST_DATABASE` names: after a burst of mixed writes whose events arrive
//! duplicated, redelivered and partly through a node killed mid-stream (its successor and
//! a second live node taking over), every counter equals `COUNT(*)` of its rows, and every
//! event's invalidation was broadcast.
//!
//! The events are the real ones: writes through the client, published by the appServer's
//! relay. The test captures them on a queue of its own bound to `{tag}evt.#` and delivers
//! some again to the tercero queue with their ids (duplicates while the stream flows,
//! redeliveries after it).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::process::{Child, Command};
use std::time::Duration;

use beds::spew::{
    self, FollowCreate, FollowId, LikeCreate, LikeId, Spew, SpewCreate, SpewId, SpewPatch, User,
    UserCreate, UserId,
};
use beds_runtime::support as rt;
use beds_runtime::{Client, Config, Role, Server};
use futures_util::StreamExt;
use lapin::options::ConfirmSelectOptions;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use rand::rngs::StdRng;
use rand::{RngExt as _, SeedableRng};
use serde_json::{Value as Json, json};

use crate::support::{Rows, TestEnv, bound_queue, consume_unacked};

/// Events of the burst in CI; `BEDS_TEST_COUNT_EVENTS` raises it (10000 for the full run).
const DEFAULT_EVENTS: usize = 2_000;
/// The child process's configuration, as JSON (see [`tercero_child`]).
const CHILD_CONFIG: &str = "BEDS_TEST_TERCERO_CONFIG";
/// How long convergence may take once every event is published.
const CONVERGE: Duration = Duration::from_secs(120);

/// SPEW's templates with their counts as given here: all `maintained` (as SPEW declares
/// them, pinned so the test does not depend on the declaration), or none (a deployment
/// from before they were, for the backfill).
const fn with_counts(
    t: &'static rt::TemplateMeta,
    counts: &'static [rt::CountMeta],
) -> rt::TemplateMeta {
    rt::TemplateMeta { counts, ..*t }
}

const fn count(
    name: &'static str,
    template: &'static str,
    by: &'static str,
    maintained: bool,
) -> rt::CountMeta {
    rt::CountMeta {
        name,
        template,
        by,
        filter: &[],
        maintained,
    }
}

const fn user_counts(maintained: bool) -> [rt::CountMeta; 3] {
    [
        count("followers", "follow", "followee", maintained),
        count("following", "follow", "follower", maintained),
        count("spews", "spew", "author", maintained),
    ]
}

const fn spew_counts(maintained: bool) -> [rt::CountMeta; 3] {
    [
        count("likes", "like", "spew", maintained),
        count("replies", "spew", "reply_to", maintained),
        count("respews", "spew", "respew_of", maintained),
    ]
}

static USER_COUNTS: [rt::CountMeta; 3] = user_counts(true);
static SPEW_COUNTS: [rt::CountMeta; 3] = spew_counts(true);
static USER: rt::TemplateMeta = with_counts(<User as rt::Record>::META, &USER_COUNTS);
static SPEW: rt::TemplateMeta = with_counts(<Spew as rt::Record>::META, &SPEW_COUNTS);
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

static USER_PLAIN_COUNTS: [rt::CountMeta; 3] = user_counts(false);
static SPEW_PLAIN_COUNTS: [rt::CountMeta; 3] = spew_counts(false);
static USER_PLAIN: rt::TemplateMeta = with_counts(<User as rt::Record>::META, &USER_PLAIN_COUNTS);
static SPEW_PLAIN: rt::TemplateMeta = with_counts(<Spew as rt::Record>::META, &SPEW_PLAIN_COUNTS);
static DOMAIN_PLAIN: rt::DomainMeta = rt::DomainMeta {
    name: "spew",
    version: spew::DOMAIN.version,
    templates: &[
        &USER_PLAIN,
        &SPEW_PLAIN,
        <spew::Follow as rt::Record>::META,
        <spew::Like as rt::Record>::META,
    ],
    queries: &[],
};
/// SPEW as served before its counts were maintained: every count is `COUNT(*)`.
static CATALOG_PLAIN: rt::Catalog = rt::Catalog {
    domains: &[&DOMAIN_PLAIN],
    route: |domain, template| beds::CATALOG.route(domain, template),
};

fn events_wanted() -> usize {
    std::env::var("BEDS_TEST_COUNT_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_EVENTS)
}

/// The source of the burst: `n` writes through the client (follows and likes made and
/// undone, spews posted as replies and respews, and moved between authors and threads).
/// None cascades, so each commits exactly one write event, which the appServer's relay
/// publishes; returns how many were made.
async fn write_burst(client: &Client, n: usize, seed: u64) -> usize {
    let api = spew::client(client);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut made = 0;
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
        made += 1;
        users.push(u.id);
    }
    let mut spews: Vec<Spew> = Vec::new();
    let mut follows: HashMap<(UserId, UserId), FollowId> = HashMap::new();
    let mut likes: HashMap<(UserId, SpewId), LikeId> = HashMap::new();
    let pick = |rng: &mut StdRng, users: &[UserId]| users[rng.random_range(0..users.len())];
    while made < n {
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
                spews.push(s);
            }
            3 if !spews.is_empty() => {
                let i = rng.random_range(0..spews.len());
                let reply_to = match rng.random_range(0..2) {
                    0 => None,
                    _ => any_spew(&mut rng, &spews).filter(|id| *id != spews[i].id),
                };
                spews[i] = api
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
            }
            4..=5 => {
                let (a, b) = (pick(&mut rng, &users), pick(&mut rng, &users));
                if a == b {
                    continue;
                }
                if let Some(id) = follows.remove(&(a, b)) {
                    api.follow().delete(id).await.unwrap();
                } else {
                    let f = api
                        .follow()
                        .create(&FollowCreate {
                            follower: a,
                            followee: b,
                        })
                        .await
                        .unwrap();
                    follows.insert((a, b), f.id);
                }
            }
            _ => {
                let Some(s) = any_spew(&mut rng, &spews) else {
                    continue;
                };
                let u = pick(&mut rng, &users);
                if let Some(id) = likes.remove(&(u, s)) {
                    api.like().delete(id).await.unwrap();
                } else {
                    let l = api
                        .like()
                        .create(&LikeCreate { user: u, spew: s })
                        .await
                        .unwrap();
                    likes.insert((u, s), l.id);
                }
            }
        }
        made += 1;
    }
    made
}

async fn publisher(env: &TestEnv) -> (Connection, Channel) {
    let conn = Connection::connect(&env.config.amqp.url, ConnectionProperties::default())
        .await
        .expect("RabbitMQ");
    let channel = conn.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    (conn, channel)
}

/// Delivers captured events again, straight to the tercero queue (not through
/// `beds.events`, which would capture them a second time), with their ids: to a consumer
/// they are the broker's redeliveries and the relay's duplicate publishes.
async fn republish(env: &TestEnv, channel: &Channel, events: &[&Json]) {
    let queue = env.queue(beds_runtime::EVENT_QUEUE_KEY);
    // Signed with the test environment's (development) key, as the relay signed them:
    // a redelivery of a genuine event, not a forgery.
    let key = beds_runtime::signing::ServiceKey::development();
    for e in events {
        let body = serde_json::to_vec(e).unwrap();
        let properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_message_id(e["id"].as_str().unwrap().into());
        channel
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                Default::default(),
                &body,
                key.sign(
                    beds_runtime::signing::Purpose::WriteEvent,
                    properties,
                    &body,
                ),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }
}

/// Captures the relay's events from `queue` as they arrive, sending every seventh to the
/// tercero queue a second time at once (a duplicate in the middle of the stream).
fn capture(
    env: &TestEnv,
    channel: Channel,
    queue: String,
) -> (
    std::sync::Arc<std::sync::Mutex<Vec<Json>>>,
    tokio::task::JoinHandle<()>,
) {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let env_queue = env.queue(beds_runtime::EVENT_QUEUE_KEY);
    let sink = seen.clone();
    let task = tokio::spawn(async move {
        let mut consumer = consume_unacked(&channel, &queue).await;
        while let Some(Ok(d)) = consumer.next().await {
            let event: Json = serde_json::from_slice(&d.data).expect("an event is JSON");
            let n = {
                let mut seen = sink.lock().unwrap();
                seen.push(event.clone());
                seen.len()
            };
            if n % 7 == 0 {
                channel
                    .basic_publish(
                        "".into(),
                        env_queue.as_str().into(),
                        Default::default(),
                        &d.data,
                        // The relay's properties, its signature included.
                        d.properties.clone(),
                    )
                    .await
                    .unwrap()
                    .await
                    .unwrap();
            }
        }
    });
    (seen, task)
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
    let tag = env.config.amqp.queue_tag.clone();
    let (conn, channel) = publisher(&env).await;
    // Events reach only the queues bound when they are published: the tercero queue, the
    // test's capture of every event and its queue of invalidations exist before any write.
    beds_runtime::topology::declare_events(
        &channel,
        &env.config.amqp,
        beds_runtime::EVENT_QUEUE_KEY,
        beds_runtime::EVENT_BINDING,
    )
    .await
    .unwrap();
    let captured = bound_queue(&channel, &format!("{tag}evt.#")).await;
    let inv = bound_queue(&channel, &format!("{tag}inv.#")).await;
    let capture_channel = conn.create_channel().await.unwrap();
    capture_channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let (seen, capturing) = capture(&env, capture_channel, captured);

    let app = env.start().await;
    let client = env.client().await;
    let seed: u64 = rand::random();
    println!("counts: seed {seed}");
    let wanted = events_wanted();
    let mut killed = ChildNode::spawn(&tercero_config(&env, "tercero-a"));
    let writer = tokio::spawn(async move { write_burst(&client, wanted, seed).await });
    let rows = env.rows().await;

    // Mid-stream: the first node is killed once it applied a sixth, and two nodes take
    // over while the writes go on.
    until("the first node applies a part", CONVERGE, || async {
        rows.total("beds_event_applied").await >= (wanted / 6) as i64
    })
    .await;
    killed.kill();
    let published_at_kill = seen.lock().unwrap().len();
    let b = Server::start(&tercero_config(&env, "tercero-b"), &CATALOG)
        .await
        .expect("tercero b");
    let c = Server::start(&tercero_config(&env, "tercero-c"), &CATALOG)
        .await
        .expect("tercero c");
    let made = writer.await.unwrap();
    println!(
        "counts: {made} writes; tercero-a killed after {published_at_kill} events were published"
    );

    until(
        "every event is published and captured",
        CONVERGE,
        || async { rows.total("beds_outbox").await == 0 && seen.lock().unwrap().len() >= made },
    )
    .await;
    capturing.abort();
    let events: Vec<Json> = seen.lock().unwrap().clone();
    assert_eq!(events.len(), made, "one event per write");
    let distinct: HashSet<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(distinct.len(), made, "each event published once");
    // A redelivery of every fifth event, after the originals.
    let again: Vec<&Json> = events.iter().step_by(5).collect();
    republish(&env, &channel, &again).await;

    // Applied, drained, and the counters equal to COUNT(*): a batch still in flight would
    // leave one of them unmet.
    let end = tokio::time::Instant::now() + CONVERGE;
    loop {
        let applied = rows.total("beds_event_applied").await;
        let ready = env.depth(&env.queue(beds_runtime::EVENT_QUEUE_KEY)).await;
        let (kept, truth) = counters_and_truth(&rows).await;
        assert!(!truth.is_empty());
        if applied == distinct.len() as i64 && ready == 0 && kept == truth {
            break;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "seed {seed}: not converged within {CONVERGE:?}: {applied} of {} events applied, \
             {ready} waiting; counters {kept:?}, COUNT(*) {truth:?}",
            distinct.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Every event's invalidation, at least once (a batch redelivered after its commit is
    // broadcast again), each naming its event.
    let mut consumer = consume_unacked(&channel, &inv).await;
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

/// A count switched to `maintained` on a database with rows starts exact: rows written by
/// a node whose counts were not maintained (no tercero, no counters), then a tercero of
/// the catalog that maintains them started while writes still flow; its backfill counts
/// the rows and skips the events at or below its outbox mark, and every counter ends
/// equal to `COUNT(*)`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_switched_to_maintained_start_from_the_rows() {
    let env = TestEnv::matrix("counts_backfill");
    let app = Server::start(&env.config, &CATALOG_PLAIN)
        .await
        .expect("an appServer whose counts are not maintained");
    let client = env.client().await;
    let seed: u64 = rand::random();
    println!("counts_switched_to_maintained: seed {seed}");
    let writer = tokio::spawn(async move { write_burst(&client, 800, seed).await });
    let rows = env.rows().await;
    until(
        "rows exist before the counts are maintained",
        CONVERGE,
        || async { rows.total("spw_likes").await >= 40 },
    )
    .await;
    let tercero = Server::start(&tercero_config(&env, "tercero-late"), &CATALOG)
        .await
        .expect("a tercero maintaining the counts");
    writer.await.unwrap();

    let marks: Vec<(String, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {}, {} FROM {}",
        rows.quote("counter"),
        rows.quote("seq"),
        rows.quote("beds_counter_init")
    )))
    .fetch_all(rows.pool())
    .await
    .unwrap();
    assert_eq!(
        marks.len(),
        6,
        "one backfill per maintained count: {marks:?}"
    );
    assert!(marks.iter().all(|(_, seq)| *seq > 0), "{marks:?}");
    let end = tokio::time::Instant::now() + CONVERGE;
    loop {
        let outbox = rows.total("beds_outbox").await;
        let ready = env.depth(&env.queue(beds_runtime::EVENT_QUEUE_KEY)).await;
        let (kept, truth) = counters_and_truth(&rows).await;
        if outbox == 0 && ready == 0 && kept == truth {
            break;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "seed {seed}: not converged within {CONVERGE:?}: outbox {outbox}, {ready} waiting; \
             counters {kept:?}, COUNT(*) {truth:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tercero.stop().await;
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
