//! The benchmark harness: BEDS against the raw AMQP ceiling, in one run, on one broker
//! and one database.
//!
//! ```sh
//! cargo run --release --example bench                      # full run, SQLite
//! cargo run --release --example bench -- --database postgres --servers 2
//! cargo run --release --example bench -- --duration 10m    # soak: the mix, memory, errors
//! cargo run --example bench -- --smoke                      # what CI runs
//! ```
//!
//! Workloads: `echo` (raw lapin echo with the read lane's settings: the ceiling), `read`
//! (fetch by key), `write` (create, confirmed and committed) and `mix` (SPEW: 60% home
//! timeline, 30% user timeline, 10% new spews over a seeded power-law graph). Each runs
//! closed-loop at every `--levels` value and open-loop at `--rate`; appServers (and the
//! echo server) run as separate processes of this binary. Results: a table on stdout,
//! `report.json` and `plot.svg` in `--out`. See wiki/benchmarks.md.

mod echo;
mod load;
mod report;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use beds::spew::{
    self, FollowCreate, HomeTimelineParams, SpewCreate, UserCreate, UserId, UserTimelineParams,
};
use beds_runtime::config::{Driver, Millis};
use beds_runtime::topology::{READ_KEY, WRITE_KEY};
use beds_runtime::{Client, ClientError, ClientOptions, Config, Op, Request};
use clap::Parser;
use futures_util::{StreamExt, stream};
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;

use load::{Progress, Sample};
use report::{Goal, Report, Row, Seed, Soak};

/// Environment variable that turns a copy of this binary into an appServer or echo server.
const CHILD: &str = "BENCH_CHILD_ROLE";

#[derive(Debug, Parser)]
#[command(about = "BEDS against the raw AMQP ceiling: echo, read, write and the SPEW mix")]
struct Args {
    /// sqlite, postgres or mariadb.
    #[arg(long, default_value = "sqlite")]
    database: String,
    /// Server to create the benchmark database on (postgres/mariadb); it is dropped after.
    #[arg(long)]
    database_url: Option<String>,
    /// SQLite: `full` (sync every commit, the default) or `normal` (sync at checkpoints).
    #[arg(long, default_value = "full")]
    sqlite_synchronous: String,
    /// Workloads to run, in order; `echo` is the baseline for ratios.
    #[arg(long, value_delimiter = ',', default_value = "echo,read,write,mix")]
    workloads: Vec<String>,
    /// Closed-loop concurrency levels (requests in flight).
    #[arg(long, value_delimiter = ',', default_value = "1,16,64,256")]
    levels: Vec<u64>,
    /// Measured time per level (after the warm-up).
    #[arg(long, default_value = "5s")]
    level_time: Millis,
    #[arg(long, default_value = "1s")]
    warmup: Millis,
    /// Open-loop offered rate, requests per second (0: no open-loop runs).
    #[arg(long, default_value_t = 500.0)]
    rate: f64,
    /// appServer processes (competing consumers on the same queues).
    #[arg(long, default_value_t = 1)]
    servers: u64,
    #[arg(long, default_value_t = 2)]
    read_workers: u16,
    #[arg(long, default_value_t = 64)]
    read_prefetch: u16,
    #[arg(long, default_value_t = 2)]
    write_workers: u16,
    #[arg(long, default_value_t = 32)]
    write_prefetch: u16,
    /// Seeded users for `mix` (and the keys `read` fetches).
    #[arg(long, default_value_t = 2000)]
    users: u64,
    /// Average follows per user (power-law: a few users are followed by most).
    #[arg(long, default_value_t = 10)]
    follows: u64,
    /// Spews per user at the start.
    #[arg(long, default_value_t = 5)]
    spews: u64,
    /// Where report.json and plot.svg go.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    /// Soak: run the mix for this long, sampling the appServers' memory.
    #[arg(long)]
    duration: Option<Millis>,
    /// Requests in flight during the soak.
    #[arg(long, default_value_t = 64)]
    soak_level: u64,
    /// A quick check of the harness: small graph, short levels, fails on any error.
    #[arg(long)]
    smoke: bool,
}

fn main() -> ExitCode {
    match std::env::var(CHILD).as_deref() {
        // An appServer or a tercero: the same runtime and CLI as `beds run`.
        Ok("node" | "tercero") => return beds_runtime::cli::main(&beds::CATALOG),
        Ok("echo") => return child_echo(),
        _ => {}
    }
    let mut args = Args::parse();
    if args.smoke {
        args.levels = vec![1, 16];
        args.level_time = Millis(1_000);
        args.warmup = Millis(200);
        args.rate = 200.0;
        args.users = 40;
        args.follows = 3;
        args.spews = 2;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn child_echo() -> ExitCode {
    let config = match Config::load(&config_path()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("echo: {e}");
            return ExitCode::FAILURE;
        }
    };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    match rt.block_on(echo::serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn config_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config/beds.yaml")
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Child processes, stopped (SIGTERM, then kill) when dropped.
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &self.0 {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for c in &mut self.0 {
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A server database created for the run, dropped after it.
struct ServerDb {
    admin: String,
    name: String,
    dialect: Driver,
}

impl ServerDb {
    async fn create(driver: Driver, admin: String) -> Result<ServerDb, BoxError> {
        sqlx::any::install_default_drivers();
        let name = format!("beds_bench_{}", std::process::id());
        let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&admin)
            .await
            .map_err(|e| format!("cannot reach the database server at {admin}: {e}"))?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await?;
        Ok(ServerDb {
            admin,
            name,
            dialect: driver,
        })
    }

    fn url(&self) -> String {
        let base = self.admin.rsplit_once('/').map_or(&*self.admin, |b| b.0);
        format!("{base}/{}", self.name)
    }

    async fn drop_it(&self) {
        let force = if self.dialect == Driver::Postgres {
            " WITH (FORCE)"
        } else {
            ""
        };
        if let Ok(mut conn) = <sqlx::AnyConnection as sqlx::Connection>::connect(&self.admin).await
        {
            let sql = format!("DROP DATABASE IF EXISTS {}{force}", self.name);
            if let Err(e) = sqlx::query(sqlx::AssertSqlSafe(sql))
                .execute(&mut conn)
                .await
            {
                eprintln!("benchmark database {} was not dropped: {e}", self.name);
            }
        }
    }
}

/// The load generator's view: clients and the seeded graph.
struct Load {
    beds: Client,
    echo: Client,
    users: Vec<UserId>,
}

/// A small deterministic generator.
fn mix64(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

impl Load {
    fn user(&self, w: usize, n: u64) -> UserId {
        self.users[(mix64((w as u64) << 32 | n) % self.users.len() as u64) as usize]
    }

    /// One request of `workload`; whether it succeeded.
    async fn call(&self, workload: &str, w: usize, n: u64) -> Result<(), ClientError> {
        let api = spew::client(&self.beds);
        match workload {
            "echo" => {
                let mut req = Request::new("spew", "user", Op::Fetch);
                req.key = Some(serde_json::from_value(
                    serde_json::json!({ "id": self.user(w, n) }),
                )?);
                self.echo.request(req).await.map(drop)
            }
            "read" => api.user().fetch(self.user(w, n)).await.map(drop),
            "write" => self.post(w, n).await,
            _ => match mix64(n ^ 0x9e37_79b9) % 10 {
                0..=5 => api
                    .home_timeline()
                    .page(
                        &HomeTimelineParams {
                            user: self.user(w, n),
                        },
                        Some(10),
                        None,
                    )
                    .await
                    .map(drop),
                6..=8 => api
                    .user_timeline()
                    .page(
                        &UserTimelineParams {
                            author: self.user(w, n),
                            before: None,
                        },
                        Some(10),
                        None,
                    )
                    .await
                    .map(drop),
                _ => self.post(w, n).await,
            },
        }
    }

    async fn post(&self, w: usize, n: u64) -> Result<(), ClientError> {
        spew::client(&self.beds)
            .spew()
            .create(&SpewCreate {
                author: self.user(w, n),
                body: format!("bench {w}/{n} #bench"),
                reply_to: None,
                respew_of: None,
            })
            .await
            .map(drop)
    }
}

type Call = std::pin::Pin<Box<dyn Future<Output = bool> + Send>>;

/// One request of `workload` against `target`, for the load drivers.
fn op(target: &Arc<Load>, workload: &str) -> impl Fn(usize, u64) -> Call + Send + Sync + 'static {
    let (t, w) = (target.clone(), workload.to_string());
    move |i, n| {
        let (t, w) = (t.clone(), w.clone());
        Box::pin(async move { t.call(&w, i, n).await.is_ok() })
    }
}

/// Runs a measurement with a progress line on stderr.
async fn with_progress<F: Future<Output = Sample>>(
    label: String,
    run: impl FnOnce(Arc<Progress>) -> F,
) -> Sample {
    let progress = Arc::new(Progress::default());
    let line = progress_line(label, progress.clone());
    let sample = run(progress).await;
    line.abort();
    eprintln!();
    sample
}

/// Prints `label` and the request count once a second until dropped.
fn progress_line(label: String, progress: Arc<Progress>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let start = Instant::now();
        let second = Duration::from_secs(1);
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + second, second);
        loop {
            tick.tick().await;
            let n = progress.0.load(Ordering::Relaxed);
            let s = start.elapsed().as_secs_f64();
            eprint!(
                "\r  {label}: {n} requests, {:.0}/s, {s:.0} s   ",
                n as f64 / s.max(1e-3)
            );
        }
    })
}

async fn run(args: Args) -> Result<(), BoxError> {
    let started = chrono::Utc::now();
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let mut config = Config::load(&config_path())?;
    let tag = format!("bench.{}.", std::process::id());
    let echo_tag = format!("bench.{}.echo.", std::process::id());
    config.amqp.queue_tag = tag.clone();
    config.client.timeout = Millis(30_000);
    let data = tempfile::tempdir()?;
    let driver = match args.database.as_str() {
        "sqlite" => Driver::Sqlite,
        "postgres" => Driver::Postgres,
        "mariadb" => Driver::Mariadb,
        other => {
            return Err(format!("--database is sqlite, postgres or mariadb, not `{other}`").into());
        }
    };
    let default_server = match driver {
        Driver::Sqlite => None,
        Driver::Postgres => Some("postgres://postgres@127.0.0.1:5432/postgres"),
        Driver::Mariadb => Some("mysql://root@127.0.0.1:3306/test"),
    };
    let server_db = match default_server {
        None => None,
        Some(default) => {
            let admin = args.database_url.clone().unwrap_or(default.into());
            Some(ServerDb::create(driver, admin).await?)
        }
    };
    let setup = Setup {
        tag: tag.clone(),
        echo_tag: echo_tag.clone(),
        data: data.path().to_path_buf(),
        driver,
        database_url: server_db.as_ref().map(ServerDb::url),
        started,
        command,
    };
    let result = bench(&args, &config, setup).await;
    if let Some(db) = &server_db {
        db.drop_it().await;
    }
    for t in [&tag, &echo_tag] {
        let mut amqp = config.amqp.clone();
        amqp.queue_tag = t.clone();
        let _ = beds_runtime::topology::remove(
            &amqp,
            &[READ_KEY, WRITE_KEY, beds_runtime::EVENT_QUEUE_KEY],
        )
        .await;
    }
    result
}

/// What a run was started with, besides the flags.
struct Setup {
    tag: String,
    echo_tag: String,
    /// SQLite's data directory.
    data: PathBuf,
    driver: Driver,
    /// The benchmark database on a server, if not SQLite.
    database_url: Option<String>,
    started: chrono::DateTime<chrono::Utc>,
    command: String,
}

async fn bench(args: &Args, config: &Config, setup: Setup) -> Result<(), BoxError> {
    let Setup {
        tag,
        echo_tag,
        data,
        driver,
        database_url,
        started,
        command,
    } = setup;
    let (tag, echo_tag) = (tag.as_str(), echo_tag.as_str());
    let exe = std::env::current_exe()?;
    let mut env: Vec<(String, String)> = vec![
        ("BEDS_AMQP__QUEUE_TAG".into(), tag.into()),
        ("BEDS_LOG__FILTER".into(), "warn".into()),
        (
            "BEDS_BROKERS__READ__WORKERS".into(),
            args.read_workers.to_string(),
        ),
        (
            "BEDS_BROKERS__READ__PREFETCH".into(),
            args.read_prefetch.to_string(),
        ),
        (
            "BEDS_BROKERS__WRITE__WORKERS".into(),
            args.write_workers.to_string(),
        ),
        (
            "BEDS_BROKERS__WRITE__PREFETCH".into(),
            args.write_prefetch.to_string(),
        ),
        ("BEDS_DATABASE__DATA_DIR".into(), data.display().to_string()),
        ("BEDS_DATABASE__DRIVER".into(), args.database.clone()),
        (
            "BEDS_DATABASE__SQLITE_SYNCHRONOUS".into(),
            args.sqlite_synchronous.clone(),
        ),
    ];
    if let Some(url) = database_url {
        env.push(("BEDS_DATABASE__URL".into(), url));
    }
    let spawn = |kind: &str, n: u64, tag: &str| -> std::io::Result<Child> {
        let mut cmd = Command::new(&exe);
        cmd.env(CHILD, kind)
            .envs(env.iter().cloned())
            .env("BEDS_AMQP__QUEUE_TAG", tag)
            .env("BEDS_NODE", format!("bench-{kind}-{n}"));
        match kind {
            "node" => {
                cmd.args(["run", "--config"]).arg(config_path());
            }
            "tercero" => {
                cmd.args(["run", "--role", "tercero", "--config"])
                    .arg(config_path());
            }
            _ => {}
        }
        if kind != "echo" {
            // A port known before the start, so the metrics can be scraped during the run.
            let port = std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port();
            cmd.env("BEDS_TELEMETRY__LISTEN", format!("127.0.0.1:{port}"));
            eprintln!("bench-{kind}-{n} serves its metrics at http://127.0.0.1:{port}/metrics");
        }
        cmd.spawn()
    };
    let mut nodes = Children(Vec::new());
    let mut echoes = Children(Vec::new());
    for n in 0..args.servers {
        nodes.0.push(spawn("node", n, tag)?);
        if args.workloads.iter().any(|w| w == "echo") {
            echoes.0.push(spawn("echo", n, echo_tag)?);
        }
    }
    // Maintained counts are read from counters a tercero keeps: the system under test
    // includes one, competing for the same cores.
    let maintained = beds::CATALOG
        .domains
        .iter()
        .flat_map(|d| d.templates)
        .any(|t| t.counts.iter().any(|c| c.maintained));
    if maintained {
        nodes.0.push(spawn("tercero", 0, tag)?);
    }
    let amqp_conn =
        lapin::Connection::connect(&config.amqp.url, lapin::ConnectionProperties::default())
            .await
            .map_err(|e| {
                format!(
                    "the benchmark needs RabbitMQ at {}: {e}",
                    config.amqp.redacted_url()
                )
            })?;
    let consumers = |t: &str, key: &str| format!("{t}{key}");
    let mut waits = vec![
        (
            consumers(tag, READ_KEY),
            u32::from(args.read_workers) * args.servers as u32,
        ),
        (
            consumers(tag, WRITE_KEY),
            u32::from(args.write_workers) * args.servers as u32,
        ),
    ];
    if maintained {
        waits.push((consumers(tag, beds_runtime::EVENT_QUEUE_KEY), 1));
    }
    if !echoes.0.is_empty() {
        waits.push((
            consumers(echo_tag, READ_KEY),
            u32::from(args.read_workers) * args.servers as u32,
        ));
    }
    wait_for_consumers(&amqp_conn, &waits, &mut nodes).await?;
    let _ = amqp_conn.close(200, "ready".into()).await;

    let mut options = ClientOptions::from_config(config, "bench");
    let beds = Client::connect(options.clone()).await?;
    options.queue_tag = echo_tag.to_string();
    let echo = Client::connect(options).await?;

    eprintln!(
        "seeding: {} users, ~{} follows each, {} spews each",
        args.users, args.follows, args.spews
    );
    let seed_started = Instant::now();
    let (users, follows, spews) = seed(&beds, args).await?;
    let seed = Seed {
        users: users.len() as u64,
        follows,
        spews,
        seconds: seed_started.elapsed().as_secs_f64(),
    };
    eprintln!("seeded in {:.1} s", seed.seconds);
    let target = Arc::new(Load { beds, echo, users });

    let warmup = args.warmup.duration();
    let measure = args.level_time.duration();
    let mut rows = Vec::new();
    let mut errors = 0;
    for workload in &args.workloads {
        for &level in &args.levels {
            let label = format!("{workload} at {level} in flight");
            let run = op(&target, workload);
            let sample = with_progress(label, |progress| {
                load::closed(level as usize, warmup, measure, progress, run)
            })
            .await;
            errors += sample.errors;
            rows.push(row(workload, "closed", level, &sample));
        }
        if args.rate > 0.0 {
            let label = format!("{workload} at {} req/s offered", args.rate);
            let run = op(&target, workload);
            let sample = with_progress(label, |progress| {
                load::open(args.rate, warmup, measure, 4096, progress, run)
            })
            .await;
            // Shed requests mean the offered rate is above capacity, not that BEDS failed;
            // the table shows them.
            errors += sample.errors;
            rows.push(row(workload, "open", args.rate as u64, &sample));
        }
    }
    report::ratios(&mut rows);

    let soak = match args.duration {
        Some(d) => Some(soak(&target, &nodes, args, d.duration()).await),
        None => None,
    };
    if let Some(s) = &soak {
        errors += s.errors;
    }
    let report = Report {
        command,
        started: started.to_rfc3339(),
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        database: match driver {
            Driver::Sqlite => format!("Sqlite (synchronous={})", args.sqlite_synchronous),
            other => format!("{other:?}"),
        },
        servers: args.servers,
        read_pool: (args.read_workers, args.read_prefetch),
        write_pool: (args.write_workers, args.write_prefetch),
        seed,
        targets: targets(&rows, driver),
        rows,
        soak,
    };
    print!("{}", report::table(&report.rows));
    for t in &report.targets {
        println!(
            "target {:<44} {:<10} measured {} {}",
            t.name,
            t.wanted,
            t.measured.map_or("-".into(), |m| format!("{m:.2}")),
            match t.met {
                Some(true) => "met",
                Some(false) => "MISSED",
                None => "not measured",
            }
        );
    }
    if let Some(s) = &report.soak {
        println!(
            "soak: {:.0} s at {} in flight, {} requests, {} errors, RSS growth per appServer (KiB): {:?}",
            s.seconds, s.level, s.requests, s.errors, s.rss_growth_kib
        );
    }
    std::fs::create_dir_all(&args.out)?;
    let json = serde_json::to_string_pretty(&report)?;
    std::fs::write(args.out.join("report.json"), &json)?;
    let title = format!(
        "BEDS vs raw AMQP echo — {} appServer(s), {driver:?}, {} cores",
        args.servers, report.cores
    );
    std::fs::write(args.out.join("plot.svg"), report::svg(&report.rows, &title))?;
    println!(
        "wrote {} and {}",
        args.out.join("report.json").display(),
        args.out.join("plot.svg").display()
    );
    if let Ok(t) = Arc::try_unwrap(target) {
        t.beds.close().await?;
        t.echo.close().await?;
    }
    drop(nodes);
    drop(echoes);
    if args.smoke {
        let reread: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(args.out.join("report.json"))?)?;
        let rows = reread["rows"].as_array().ok_or("report.json has no rows")?;
        let expected = args.workloads.len() * (args.levels.len() + usize::from(args.rate > 0.0));
        if rows.len() != expected
            || rows
                .iter()
                .any(|r| r["requests"].as_u64().unwrap_or(0) == 0)
        {
            return Err(format!(
                "smoke: report.json should hold {expected} rows, each with requests"
            )
            .into());
        }
    }
    if errors > 0 {
        return Err(format!("{errors} requests failed").into());
    }
    Ok(())
}

fn row(workload: &str, mode: &'static str, level: u64, s: &Sample) -> Row {
    Row {
        workload: workload.to_string(),
        mode,
        level,
        requests: s.requests,
        errors: s.errors,
        shed: s.shed,
        seconds: s.seconds,
        throughput: s.throughput(),
        p50_us: s.quantile_us(0.5),
        p90_us: s.quantile_us(0.9),
        p99_us: s.quantile_us(0.99),
        max_us: s.hist.max(),
        ratio_to_echo: None,
    }
}

/// The targets of issue 6, read off this run's rows.
fn targets(rows: &[Row], driver: Driver) -> Vec<Goal> {
    let find = |w: &str, level: u64| {
        rows.iter()
            .find(|r| r.workload == w && r.mode == "closed" && r.level == level)
    };
    let ratio = |w: &str, level: u64| find(w, level).and_then(|r| r.ratio_to_echo);
    let p50_gap = match (find("read", 1), find("echo", 1)) {
        (Some(r), Some(e)) => Some(r.p50_us as f64 - e.p50_us as f64),
        _ => None,
    };
    let mut out = vec![
        Goal {
            name: "read throughput at 64 in flight / echo's".into(),
            wanted: ">= 0.80".into(),
            measured: ratio("read", 64),
            met: ratio("read", 64).map(|r| r >= 0.8),
        },
        Goal {
            name: "read p50 at 1 in flight - echo's (µs)".into(),
            wanted: "<= 250".into(),
            measured: p50_gap,
            met: p50_gap.map(|g| g <= 250.0),
        },
    ];
    if driver == Driver::Sqlite {
        out.push(Goal {
            name: "write (SQLite) throughput at 64 / echo's".into(),
            wanted: ">= 0.50".into(),
            measured: ratio("write", 64),
            met: ratio("write", 64).map(|r| r >= 0.5),
        });
    }
    out
}

/// Waits until every queue has its consumers; fails if a node exits first.
async fn wait_for_consumers(
    conn: &lapin::Connection,
    waits: &[(String, u32)],
    nodes: &mut Children,
) -> Result<(), BoxError> {
    let mut channel = conn.create_channel().await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    for (queue, want) in waits {
        loop {
            for c in &mut nodes.0 {
                if let Some(status) = c.try_wait()? {
                    return Err(format!("an appServer exited during start-up ({status})").into());
                }
            }
            let passive = QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            };
            let have = match channel
                .queue_declare(queue.as_str().into(), passive, FieldTable::default())
                .await
            {
                Ok(q) => q.consumer_count(),
                // A missing queue closes the channel (404): open another.
                Err(_) => {
                    channel = conn.create_channel().await?;
                    0
                }
            };
            if have >= *want {
                break;
            }
            if Instant::now() > deadline {
                return Err(
                    format!("{queue} has {have} consumers after 60 s, expected {want}").into(),
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// Users, a power-law follow graph and some spews, 64 requests in flight.
async fn seed(client: &Client, args: &Args) -> Result<(Vec<UserId>, u64, u64), BoxError> {
    let api = spew::client(client);
    let (users_api, follows_api, spews_api) = (api.user(), api.follow(), api.spew());
    let inputs: Vec<UserCreate> = (0..args.users)
        .map(|i| UserCreate {
            handle: format!("user{i}"),
            display_name: format!("User {i}"),
            bio: None,
        })
        .collect();
    let users: Vec<UserId> = stream::iter(inputs.iter().map(|u| users_api.create(u)))
        .buffered(64)
        .map(|r| r.map(|u| u.id))
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    let n = users.len() as u64;
    let mut pairs = std::collections::HashSet::new();
    for i in 0..n {
        // Out-degree varies around the average; targets follow a power law (low indices
        // are the celebrities).
        let k = 1 + mix64(i) % (2 * args.follows.max(1));
        for j in 0..k {
            let u = (mix64(i << 20 | j) % 1_000_000) as f64 / 1_000_000.0;
            let target = ((n as f64) * u.powf(3.0)) as u64 % n;
            if target != i {
                pairs.insert((i, target));
            }
        }
    }
    let follow_inputs: Vec<FollowCreate> = pairs
        .iter()
        .map(|&(a, b)| FollowCreate {
            follower: users[a as usize],
            followee: users[b as usize],
        })
        .collect();
    stream::iter(follow_inputs.iter().map(|f| follows_api.create(f)))
        .buffered(64)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
    let spew_inputs: Vec<SpewCreate> = (0..n * args.spews)
        .map(|k| SpewCreate {
            author: users[(k % n) as usize],
            body: format!("seed spew {k} #seed"),
            reply_to: None,
            respew_of: None,
        })
        .collect();
    stream::iter(spew_inputs.iter().map(|s| spews_api.create(s)))
        .buffered(64)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
    Ok((users, pairs.len() as u64, spew_inputs.len() as u64))
}

/// The resident set of a process, in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The mix at `--soak-level` for `duration`, sampling every appServer's memory.
async fn soak(target: &Arc<Load>, nodes: &Children, args: &Args, duration: Duration) -> Soak {
    let pids: Vec<u32> = nodes.0.iter().map(Child::id).collect();
    let warmup = Duration::from_secs(30).min(duration / 4);
    let samples = Arc::new(std::sync::Mutex::new(vec![Vec::new(); pids.len()]));
    let sampler = {
        let samples = samples.clone();
        tokio::spawn(async move {
            tokio::time::sleep(warmup).await;
            let mut tick = tokio::time::interval(Duration::from_secs(10));
            loop {
                tick.tick().await;
                let mut s = samples.lock().expect("samples lock");
                for (i, pid) in pids.iter().enumerate() {
                    if let Some(kib) = rss_kib(*pid) {
                        s[i].push(kib);
                    }
                }
            }
        })
    };
    let label = format!("soak: mix at {} in flight", args.soak_level);
    let run = op(target, "mix");
    let sample = with_progress(label, |progress| {
        load::closed(
            args.soak_level as usize,
            warmup,
            duration - warmup,
            progress,
            run,
        )
    })
    .await;
    sampler.abort();
    let rss = samples.lock().expect("samples lock").clone();
    let growth = rss
        .iter()
        .map(|s| match (s.first(), s.last()) {
            (Some(a), Some(b)) => *b as i64 - *a as i64,
            _ => 0,
        })
        .collect();
    Soak {
        seconds: sample.seconds,
        level: args.soak_level,
        requests: sample.requests,
        errors: sample.errors,
        rss_kib: rss,
        rss_growth_kib: growth,
    }
}
