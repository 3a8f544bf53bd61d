//! Segundo's retention mover (wiki/retention.md) on SPEW's `spew` (`hot: 400d, cool: 5y,
//! then: keep`) and on a test domain of its own (`hold`: a retained `parent` with a
//! `restrict` and a `cascade` referrer): records written through an appServer, then aged
//! by setting their timestamp in the serving database; the mover runs in a segundo node
//! (in-process, or `beds run --role segundo` killed at a failpoint). Runs on
//! `BEDS_TEST_DATABASE`.

use std::collections::BTreeSet;
use std::io::Read as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use beds::spew::{self, LikeCreate, SpewCreate, UserCreate};
use beds_runtime::support as rt;
use beds_runtime::{ErrorCode, Role, Server};
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use crate::support::{Rows, TestEnv, repo_config_path};

const SPEWS: &str = "spw_spews";
const SPEW_ID: &str = "id_spw";
const LIKES: &str = "spw_likes";
const LIKE_ID: &str = "id_lik";

/// Two years: past `hot` (400 days), not past `cool` (five years).
const MIDDLE: &str = "2024-11-01T00:00:00.000000Z";
/// Past `cool`.
const OLD: &str = "2019-03-01T00:00:00.000000Z";

/// The spews of a seeded test, by what retention must do with them.
#[derive(Debug, Default)]
struct Seeded {
    fresh: BTreeSet<String>,
    middle: BTreeSet<String>,
    old: BTreeSet<String>,
}

/// Writes `fresh`, `middle` and `old` spews of one author and ages the last two.
async fn seed(env: &TestEnv, fresh: usize, middle: usize, old: usize) -> Seeded {
    let app = env.start().await;
    let client = env.client().await;
    let api = spew::client(&client);
    let author = api
        .user()
        .create(&UserCreate {
            handle: "keeper".into(),
            display_name: "K".into(),
            bio: None,
        })
        .await
        .unwrap();
    let mut seeded = Seeded::default();
    for (n, set) in [
        (fresh, &mut seeded.fresh),
        (middle, &mut seeded.middle),
        (old, &mut seeded.old),
    ] {
        for i in 0..n {
            let s = api
                .spew()
                .create(&SpewCreate {
                    author: author.id,
                    body: format!("spew {i}"),
                    reply_to: None,
                    respew_of: None,
                })
                .await
                .unwrap();
            set.insert(s.id.to_string());
        }
    }
    client.close().await.unwrap();
    app.stop().await;
    let rows = env.rows().await;
    age(&rows, &seeded.middle, MIDDLE).await;
    age(&rows, &seeded.old, OLD).await;
    seeded
}

/// Sets `created_at` of the spews `ids` to `at` (RFC 3339, UTC).
async fn age(rows: &Rows, ids: &BTreeSet<String>, at: &str) {
    age_in(rows, (SPEWS, "created_at_spw", SPEW_ID), ids, at).await;
}

/// Sets the timestamp column of the rows `ids` of `(table, column, id_column)` to `at`
/// (RFC 3339, UTC).
async fn age_in(
    rows: &Rows,
    (table, column, id): (&str, &str, &str),
    ids: &BTreeSet<String>,
    at: &str,
) {
    // MariaDB reads a DATETIME literal without the `T` and the zone.
    let at = match rows.driver() {
        beds_runtime::config::Driver::Mariadb => at.replace('T', " ").replace('Z', ""),
        _ => at.to_string(),
    };
    for key in ids {
        let sql = format!(
            "UPDATE {} SET {} = '{at}' WHERE {} = '{key}'",
            rows.quote(table),
            rows.quote(column),
            rows.quote(id)
        );
        sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
            .execute(rows.pool())
            .await
            .unwrap_or_else(|e| panic!("`{sql}`: {e}"));
    }
}

/// Every key of `table` (its `column`), as text.
async fn keys(rows: &Rows, table: &str, column: &str) -> BTreeSet<String> {
    let sql = format!(
        "SELECT {} FROM {}",
        rows.as_text(&rows.quote(column)),
        rows.quote(table)
    );
    sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(sql.clone()))
        .fetch_all(rows.pool())
        .await
        .unwrap_or_else(|e| panic!("`{sql}`: {e}"))
        .into_iter()
        .collect()
}

/// The tombstones of `template`, key → tier.
async fn tombstones(rows: &Rows, template: &str) -> Vec<(String, String)> {
    let sql = format!(
        "SELECT {}, {} FROM {} WHERE {} = '{template}' ORDER BY {}",
        rows.quote("record_key"),
        rows.quote("tier"),
        rows.quote("beds_moved"),
        rows.quote("template"),
        rows.quote("record_key")
    );
    sqlx::query_as::<_, (String, String)>(sqlx::AssertSqlSafe(sql.clone()))
        .fetch_all(rows.pool())
        .await
        .unwrap_or_else(|e| panic!("`{sql}`: {e}"))
}

/// Every record line of the cold files the manifest lists (`template`, record).
fn cold_records(cold_dir: &Path) -> Vec<(String, Json)> {
    let Ok(text) = std::fs::read_to_string(cold_dir.join("manifest.json")) else {
        return Vec::new();
    };
    let manifest: Json = serde_json::from_str(&text).expect("the manifest is JSON");
    let mut out = Vec::new();
    for f in manifest["files"].as_array().expect("files") {
        let bytes = std::fs::read(cold_dir.join(f["file"].as_str().unwrap())).unwrap();
        let mut lines = String::new();
        flate2::read::GzDecoder::new(&bytes[..])
            .read_to_string(&mut lines)
            .expect("a gzip file");
        let records: Vec<Json> = lines
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect();
        assert_eq!(
            f["records"].as_i64(),
            Some(records.len() as i64),
            "the manifest counts the file's lines: {f}"
        );
        let template = f["template"].as_str().unwrap().to_string();
        out.extend(records.into_iter().map(|r| (template.clone(), r)));
    }
    out
}

fn ids(records: &[(String, Json)], template: &str) -> Vec<String> {
    records
        .iter()
        .filter(|(t, _)| t == template)
        .map(|(_, r)| r["id"].as_str().unwrap().to_string())
        .collect()
}

/// Waits until `done` holds, or fails after 60 s naming `what`.
async fn until<F, Fut>(what: &str, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let end = Instant::now() + Duration::from_secs(60);
    while !done().await {
        assert!(Instant::now() < end, "{what} within 60 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn start_segundo(env: &TestEnv) -> Server {
    start_segundo_of(env, &beds::CATALOG).await
}

async fn start_segundo_of(env: &TestEnv, catalog: &'static rt::Catalog) -> Server {
    let mut config = env.config.clone();
    config.role = Role::Segundo;
    config.node = format!("{}-segundo", config.node);
    config.telemetry.listen = None;
    Server::start(&config, catalog)
        .await
        .unwrap_or_else(|e| panic!("the test's segundo node starts: {e}"))
}

#[tokio::test]
async fn moves_exactly_the_expired_records() {
    let mut env = TestEnv::matrix("retention").with_warehouse();
    env.config.segundo.batch = 3;
    let seeded = seed(&env, 3, 4, 5).await;

    // A fresh respew of a two-year-old spew moves with it (cascade); a fresh reply to an
    // old spew stays, its reference nulled (set_null); a like of a two-year-old spew moves
    // with it (cascade).
    let app = env.start().await;
    let client = env.client().await;
    let api = spew::client(&client);
    let middle = spew::SpewId(seeded.middle.iter().next().unwrap().parse().unwrap());
    let old = spew::SpewId(seeded.old.iter().next().unwrap().parse().unwrap());
    let first = api.spew().fetch(middle).await.unwrap();
    let respew = api
        .spew()
        .create(&SpewCreate {
            author: first.author,
            body: "again".into(),
            reply_to: None,
            respew_of: Some(middle),
        })
        .await
        .unwrap();
    let reply = api
        .spew()
        .create(&SpewCreate {
            author: first.author,
            body: "late reply".into(),
            reply_to: Some(old),
            respew_of: None,
        })
        .await
        .unwrap();
    let like = api
        .like()
        .create(&LikeCreate {
            user: first.author,
            spew: middle,
        })
        .await
        .unwrap();
    let before_old = api.spew().fetch(old).await.unwrap();
    client.close().await.unwrap();
    app.stop().await;

    let segundo = start_segundo(&env).await;
    let (rows, warehouse) = (env.rows().await, env.warehouse_rows().await);
    let cold_dir = env.config.segundo.cold_dir.clone();
    let mut hot: BTreeSet<String> = seeded.fresh.clone();
    hot.insert(reply.id.to_string());
    let mut cool = seeded.middle.clone();
    cool.insert(respew.id.to_string());
    until("HOT holds exactly the fresh spews", || async {
        keys(&rows, SPEWS, SPEW_ID).await == hot
    })
    .await;
    until("COLD holds every old spew", || async {
        ids(&cold_records(&cold_dir), "spew.spew").len() == seeded.old.len()
    })
    .await;
    segundo.stop().await;

    assert_eq!(keys(&rows, SPEWS, SPEW_ID).await, hot);
    assert_eq!(
        keys(&warehouse, SPEWS, SPEW_ID).await,
        cool,
        "COOL: the middle spews and the respew"
    );
    let cold = cold_records(&cold_dir);
    let cold_ids = ids(&cold, "spew.spew");
    assert_eq!(
        cold_ids.len(),
        seeded.old.len(),
        "no old spew written twice"
    );
    assert_eq!(cold_ids.into_iter().collect::<BTreeSet<_>>(), seeded.old);
    let kept = cold
        .iter()
        .find(|(_, r)| r["id"] == serde_json::json!(old.to_string()))
        .expect("the old spew is in a cold file");
    let mut fetched = serde_json::to_value(&before_old).unwrap();
    let instant = |j: &Json| chrono::DateTime::parse_from_rfc3339(j.as_str().unwrap()).unwrap();
    assert_eq!(
        instant(&kept.1["created_at"]),
        instant(&fetched["created_at"])
    );
    fetched["created_at"] = kept.1["created_at"].clone();
    assert_eq!(
        kept.1, fetched,
        "a cold line is the record as fetch answered it"
    );
    assert_eq!(
        keys(&warehouse, LIKES, LIKE_ID).await,
        BTreeSet::from([like.id.to_string()]),
        "the like moved with its spew"
    );
    assert!(keys(&rows, LIKES, LIKE_ID).await.is_empty());
    let nulled = rows
        .int(
            &format!("COUNT({})", rows.quote("reply_to_spw")),
            SPEWS,
            SPEW_ID,
            &Json::String(reply.id.to_string()),
        )
        .await;
    assert_eq!(nulled, 0, "the reply's reply_to was nulled");

    let mut expected: Vec<(String, String)> = cool
        .iter()
        .map(|k| (k.clone(), "warehouse".to_string()))
        .chain(seeded.old.iter().map(|k| (k.clone(), "cold".to_string())))
        .collect();
    expected.sort();
    assert_eq!(tombstones(&rows, "spew.spew").await, expected);
    assert_eq!(
        tombstones(&rows, "spew.like").await,
        vec![(like.id.to_string(), "warehouse".to_string())]
    );
    assert_eq!(
        warehouse.total("beds_cold_index").await,
        seeded.old.len() as i64
    );
}

/// `beds run --role segundo` of `env`, with `failpoint` if given; output to `log`.
fn spawn_segundo(env: &TestEnv, failpoint: Option<&str>, log: &Path, listen: &str) -> Child {
    let c = &env.config;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_beds"));
    cmd.args(["run", "--role", "segundo", "--config"])
        .arg(repo_config_path())
        .env("BEDS_ENV", "test")
        .env("BEDS_AMQP__URL", &c.amqp.url)
        .env("BEDS_AMQP__QUEUE_TAG", &c.amqp.queue_tag)
        .env("BEDS_DATABASE__DATA_DIR", &c.database.data_dir)
        .env("BEDS_DATABASE__DRIVER", driver(c.database.driver))
        .env(
            "BEDS_SEGUNDO__WAREHOUSE__DATA_DIR",
            &c.segundo.warehouse.data_dir,
        )
        .env(
            "BEDS_SEGUNDO__WAREHOUSE__SQLITE_FILE",
            &c.segundo.warehouse.sqlite_file,
        )
        .env(
            "BEDS_SEGUNDO__WAREHOUSE__DRIVER",
            driver(c.segundo.warehouse.driver),
        )
        .env("BEDS_SEGUNDO__COLD_DIR", &c.segundo.cold_dir)
        .env("BEDS_SEGUNDO__BATCH", c.segundo.batch.to_string())
        .env("BEDS_SEGUNDO__INTERVAL", "200ms")
        .env("BEDS_TELEMETRY__LISTEN", listen)
        .env("BEDS_LOG__FILTER", "warn")
        .env_remove("BEDS_TEST_FAILPOINT")
        .stdout(Stdio::from(
            std::fs::File::create(log.with_extension("out")).unwrap(),
        ))
        .stderr(Stdio::from(std::fs::File::create(log).unwrap()));
    if let Some(url) = &c.database.url {
        cmd.env("BEDS_DATABASE__URL", url);
    }
    if let Some(url) = &c.segundo.warehouse.url {
        cmd.env("BEDS_SEGUNDO__WAREHOUSE__URL", url);
    }
    if let Some(point) = failpoint {
        cmd.env("BEDS_TEST_FAILPOINT", point);
    }
    cmd.spawn().expect("spawn beds run --role segundo")
}

fn driver(d: beds_runtime::config::Driver) -> String {
    serde_json::to_value(d)
        .unwrap()
        .as_str()
        .unwrap()
        .to_string()
}

fn read_log(log: &Path) -> String {
    [log.to_path_buf(), log.with_extension("out")]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .collect::<Vec<_>>()
        .join("\n")
}

fn logged(log: &Path, text: &str) -> bool {
    [log.to_path_buf(), log.with_extension("out")]
        .iter()
        .any(|p| std::fs::read_to_string(p).is_ok_and(|s| s.contains(text)))
}

#[tokio::test]
async fn survives_kill_9_at_three_points() {
    for point in [
        "retention.after_copy",
        "retention.after_verify",
        "retention.after_cold_file",
    ] {
        let mut env = TestEnv::matrix("retention_kill").with_warehouse();
        env.config.segundo.batch = 4;
        let seeded = seed(&env, 5, 9, 9).await;
        let log = env.config.database.data_dir.join("segundo.log");
        eprintln!("retention: kill -9 at {point}");

        let mut child = spawn_segundo(&env, Some(point), &log, "off");
        let end = Instant::now() + Duration::from_secs(60);
        while !logged(&log, &format!("failpoint reached: {point}")) {
            assert!(
                child.try_wait().unwrap().is_none(),
                "segundo exited early: {}",
                read_log(&log)
            );
            assert!(
                Instant::now() < end,
                "the mover reaches {point} within 60 s: {}",
                read_log(&log)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        child.kill().expect("kill -9");
        child.wait().unwrap();

        let mut child = spawn_segundo(&env, None, &log, "off");
        let (rows, warehouse) = (env.rows().await, env.warehouse_rows().await);
        let cold_dir = env.config.segundo.cold_dir.clone();
        until(
            &format!("after a kill at {point}, every tier settles"),
            || async {
                keys(&rows, SPEWS, SPEW_ID).await == seeded.fresh
                    && keys(&warehouse, SPEWS, SPEW_ID).await == seeded.middle
                    && ids(&cold_records(&cold_dir), "spew.spew").len() >= seeded.old.len()
            },
        )
        .await;
        child.kill().unwrap();
        child.wait().unwrap();

        let hot = keys(&rows, SPEWS, SPEW_ID).await;
        let cool = keys(&warehouse, SPEWS, SPEW_ID).await;
        let cold = ids(&cold_records(&cold_dir), "spew.spew");
        let cold_set: BTreeSet<String> = cold.iter().cloned().collect();
        assert_eq!(
            cold.len(),
            cold_set.len(),
            "{point}: no record twice in COLD"
        );
        assert!(
            hot.is_disjoint(&cool) && hot.is_disjoint(&cold_set) && cool.is_disjoint(&cold_set),
            "{point}: tiers disjoint"
        );
        let all: BTreeSet<String> = hot.iter().chain(&cool).chain(&cold_set).cloned().collect();
        let original: BTreeSet<String> = seeded
            .fresh
            .iter()
            .chain(&seeded.middle)
            .chain(&seeded.old)
            .cloned()
            .collect();
        assert_eq!(all, original, "{point}: none lost");
        assert_eq!(cold_set, seeded.old, "{point}: COLD holds the old ones");
        assert_eq!(
            warehouse.total("beds_cold_index").await,
            seeded.old.len() as i64,
            "{point}: each cold record indexed once"
        );
        assert_eq!(
            tombstones(&rows, "spew.spew").await.len(),
            seeded.middle.len() + seeded.old.len(),
            "{point}: one tombstone per moved record"
        );
    }
}

#[tokio::test]
async fn beds_run_role_segundo_serves() {
    let env = TestEnv::matrix("segundo_run").with_warehouse();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let log = env.config.database.data_dir.join("segundo.log");
    let mut child = spawn_segundo(&env, None, &log, &listen);
    let end = Instant::now() + Duration::from_secs(60);
    while !readyz(&listen).await {
        assert!(
            child.try_wait().unwrap().is_none(),
            "segundo exited early: {}",
            read_log(&log)
        );
        assert!(
            Instant::now() < end,
            "segundo reports ready on /readyz within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    nix_term(&child);
    let end = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < end, "segundo stops within 30 s of SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "segundo exits 0 on SIGTERM: {status}");
}

/// Whether `GET /readyz` answers 200.
async fn readyz(addr: &str) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
        return false;
    };
    let req = format!("GET /readyz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return false;
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out).await;
    out.starts_with("HTTP/1.1 200")
}

fn nix_term(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(status.success());
}

/// End to end: what the mover moved is answered `moved` by an appServer, with its tier, and
/// served from the warehouse (COOL) and from a cold file (COLD) when asked with
/// `"tier": "warehouse"`, equal to what the serving database answered before the move.
#[tokio::test]
async fn a_moved_record_is_answered_moved_and_fetched_from_the_warehouse() {
    use beds_runtime::{ClientError, ReadOptions, Tier};

    let env = TestEnv::matrix("retention_read").with_warehouse();
    let seeded = seed(&env, 1, 1, 1).await;
    let middle = spew::SpewId(seeded.middle.iter().next().unwrap().parse().unwrap());
    let old = spew::SpewId(seeded.old.iter().next().unwrap().parse().unwrap());
    let app = env.start().await;
    let client = env.client().await;
    let api = spew::client(&client);
    let before = (
        api.spew().fetch(middle).await.unwrap(),
        api.spew().fetch(old).await.unwrap(),
    );

    let segundo = start_segundo(&env).await;
    let (rows, cold_dir) = (env.rows().await, env.config.segundo.cold_dir.clone());
    until("only the fresh spew left HOT", || async {
        keys(&rows, SPEWS, SPEW_ID).await == seeded.fresh
    })
    .await;
    until("the old spew in a cold file", || async {
        ids(&cold_records(&cold_dir), "spew.spew")
            .into_iter()
            .collect::<BTreeSet<_>>()
            == seeded.old
    })
    .await;

    for (id, tier, was) in [
        (middle, Tier::Warehouse, &before.0),
        (old, Tier::Cold, &before.1),
    ] {
        match api.spew().fetch(id).await {
            Err(ClientError::Remote(e)) => {
                assert_eq!(e.code, ErrorCode::Moved, "{e:?}");
                assert_eq!(e.tier, Some(tier), "{e:?}");
            }
            other => panic!("a moved spew is answered `moved`, got {other:?}"),
        }
        let read = api
            .spew()
            .fetch_with(id, ReadOptions::warehouse())
            .await
            .unwrap_or_else(|e| panic!("the {tier:?} spew is read from the warehouse: {e}"));
        assert_eq!(
            &read, was,
            "the {tier:?} copy equals the record before the move"
        );
    }
    client.close().await.unwrap();
    segundo.stop().await;
    app.stop().await;
}

/// The test domain `hold`: a retained `parent` (by `created_at`, set on create) that a
/// `pin` references with `on_delete: restrict` and a `child` with `on_delete: cascade`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct HoldId(pub uuid::Uuid);

impl rt::Key for HoldId {}

#[derive(Debug, Clone, Serialize, Deserialize, rt::Record)]
#[beds(domain = "hold", template = "parent", create = ParentInput, patch = ParentInput)]
pub struct Parent {
    pub id: HoldId,
    pub version: i64,
    #[beds(string, max = 40)]
    pub label: String,
    #[beds(timestamp, set = "on_create")]
    pub created_at: rt::Timestamp,
}

#[derive(Debug, Clone, Serialize, Deserialize, rt::Record)]
#[beds(domain = "hold", template = "pin", create = RefInput, patch = RefInput)]
pub struct Pin {
    pub id: HoldId,
    pub version: i64,
    #[beds(reference = "parent", on_delete = "restrict")]
    pub parent: HoldId,
}

/// The `child` template (`Child` names the spawned process here).
#[derive(Debug, Clone, Serialize, Deserialize, rt::Record)]
#[beds(domain = "hold", template = "child", create = RefInput, patch = RefInput)]
pub struct Dependent {
    pub id: HoldId,
    pub version: i64,
    #[beds(reference = "parent", on_delete = "cascade")]
    pub parent: HoldId,
}

#[derive(Debug, Serialize)]
pub struct ParentInput {
    pub label: String,
}

#[derive(Debug, Serialize)]
pub struct RefInput {
    pub parent: HoldId,
}

/// Thirty days hot, a century cool: a parent aged to 2020 moves to the warehouse and no
/// further, so the test watches HOT → COOL alone.
const HOLD_HOT_MS: u64 = 30 * 86_400_000;
const HOLD_COOL_MS: u64 = 100 * 365 * 86_400_000;

/// The derive refuses `retention` (a domain declaration carries it), so the retained
/// `parent` is the derived metadata with the capability added.
static PARENT: rt::TemplateMeta = rt::TemplateMeta {
    capabilities: rt::Capabilities {
        retention: Some(rt::RetentionMeta {
            field: "created_at",
            hot_ms: HOLD_HOT_MS,
            cool_ms: HOLD_COOL_MS,
            then: rt::RetentionEnd::Keep,
        }),
        ..<Parent as rt::Record>::META.capabilities
    },
    ..*<Parent as rt::Record>::META
};
static PARENT_ROUTES: rt::Routes = rt::Routes {
    meta: &PARENT,
    ..rt::Routes::of::<Parent>()
};
static PIN_ROUTES: rt::Routes = rt::Routes::of::<Pin>();
static CHILD_ROUTES: rt::Routes = rt::Routes::of::<Dependent>();
static HOLD: rt::DomainMeta = rt::DomainMeta {
    name: "hold",
    version: 1,
    templates: &[
        &PARENT,
        <Pin as rt::Record>::META,
        <Dependent as rt::Record>::META,
    ],
    queries: &[],
};
static HOLD_CATALOG: rt::Catalog = rt::Catalog {
    domains: &[&HOLD],
    route: |domain, template| match (domain, template) {
        ("hold", "parent") => Ok(&PARENT_ROUTES),
        ("hold", "pin") => Ok(&PIN_ROUTES),
        ("hold", "child") => Ok(&CHILD_ROUTES),
        ("hold", _) => Err(rt::RouteError::UnknownTemplate),
        _ => Err(rt::RouteError::UnknownDomain),
    },
};

async fn start_hold(env: &TestEnv) -> Server {
    Server::start(&env.config, &HOLD_CATALOG)
        .await
        .unwrap_or_else(|e| panic!("the test needs RabbitMQ and its database: {e}"))
}

/// Every key of the `hold` template `t` in `rows`.
async fn hold_keys(rows: &Rows, t: &rt::TemplateMeta) -> BTreeSet<String> {
    keys(rows, t.table, t.id_column).await
}

fn set_of<const N: usize>(ids: [HoldId; N]) -> BTreeSet<String> {
    ids.iter().map(|i| i.0.to_string()).collect()
}

fn in_warehouse(ids: &BTreeSet<String>) -> Vec<(String, String)> {
    ids.iter()
        .map(|k| (k.clone(), "warehouse".to_string()))
        .collect()
}

#[tokio::test]
async fn a_restricted_record_stays_hot_while_its_referrer_does() {
    let mut env = TestEnv::matrix("retention_restrict").with_warehouse();
    // One root per batch: the restricted oldest parent heads every page, so the mover
    // must read past it to fill a batch.
    env.config.segundo.batch = 1;
    let (pin_t, child_t) = (<Pin as rt::Record>::META, <Dependent as rt::Record>::META);

    let app = start_hold(&env).await;
    let client = env.client().await;
    let parents = client.template::<Parent>();
    let mut made = Vec::new();
    for label in ["pinned", "with child", "alone"] {
        let p = parents
            .create(&ParentInput {
                label: label.into(),
            })
            .await
            .unwrap();
        made.push(p.id);
    }
    let [p1, p2, p3] = made[..] else {
        unreachable!()
    };
    let pin = client
        .template::<Pin>()
        .create(&RefInput { parent: p1 })
        .await
        .unwrap();
    let child = client
        .template::<Dependent>()
        .create(&RefInput { parent: p2 })
        .await
        .unwrap();
    client.close().await.unwrap();
    app.stop().await;

    let rows = env.rows().await;
    let created_at = PARENT.field("created_at").unwrap().column;
    // P1 is the oldest: it heads every page of expired parents.
    for (id, at) in [
        (p1, "2020-01-01T00:00:00.000000Z"),
        (p2, "2020-02-01T00:00:00.000000Z"),
        (p3, "2020-03-01T00:00:00.000000Z"),
    ] {
        age_in(
            &rows,
            (PARENT.table, created_at, PARENT.id_column),
            &set_of([id]),
            at,
        )
        .await;
    }

    // First pass: P2 moves with its child and P3 moves; the pinned P1 stays.
    let segundo = start_segundo_of(&env, &HOLD_CATALOG).await;
    // Segundo creates the warehouse.
    let warehouse = env.warehouse_rows().await;
    until("HOT holds only the pinned parent", || async {
        hold_keys(&rows, &PARENT).await == set_of([p1])
    })
    .await;
    segundo.stop().await;

    assert_eq!(hold_keys(&rows, &PARENT).await, set_of([p1]));
    assert_eq!(
        hold_keys(&warehouse, &PARENT).await,
        set_of([p2, p3]),
        "COOL: the unpinned parents"
    );
    assert_eq!(
        hold_keys(&rows, child_t).await,
        BTreeSet::new(),
        "the child left HOT with its parent"
    );
    assert_eq!(
        hold_keys(&warehouse, child_t).await,
        set_of([child.id]),
        "the child moved with its parent (cascade)"
    );
    assert_eq!(
        hold_keys(&rows, pin_t).await,
        set_of([pin.id]),
        "the pin stays HOT"
    );
    assert!(hold_keys(&warehouse, pin_t).await.is_empty());
    assert_eq!(
        tombstones(&rows, "hold.parent").await,
        in_warehouse(&set_of([p2, p3])),
        "no tombstone for the pinned parent"
    );
    assert_eq!(
        tombstones(&rows, "hold.child").await,
        in_warehouse(&set_of([child.id]))
    );
    assert!(tombstones(&rows, "hold.pin").await.is_empty());

    // The pinned parent is served as before; a moved one answers `moved`.
    let app = start_hold(&env).await;
    let client = env.client().await;
    let parents = client.template::<Parent>();
    let served = parents.fetch(p1).await.unwrap();
    assert_eq!((served.id, served.label.as_str()), (p1, "pinned"));
    let gone = parents.fetch(p2).await.unwrap_err();
    assert_eq!(gone.code(), Some(ErrorCode::Moved), "{gone}");

    // Unpinned, P1 moves in the next pass.
    client.template::<Pin>().delete(pin.id).await.unwrap();
    client.close().await.unwrap();
    app.stop().await;
    let segundo = start_segundo_of(&env, &HOLD_CATALOG).await;
    until("the unpinned parent leaves HOT", || async {
        hold_keys(&rows, &PARENT).await.is_empty()
    })
    .await;
    segundo.stop().await;

    assert_eq!(hold_keys(&warehouse, &PARENT).await, set_of([p1, p2, p3]));
    assert_eq!(
        tombstones(&rows, "hold.parent").await,
        in_warehouse(&set_of([p1, p2, p3]))
    );
    assert!(hold_keys(&rows, pin_t).await.is_empty());
    assert!(
        hold_keys(&warehouse, pin_t).await.is_empty(),
        "the deleted pin was never moved"
    );
}
