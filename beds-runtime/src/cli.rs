//! The `beds` command line: `run`, `check`, `schema`, `call`, `audit`, `dlq`, `diag`,
//! `admin`, `lineage` and `config`, shared by every build of the binary whatever domains it
//! was compiled with.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::catalog::{Catalog, CatalogError};
use crate::config::{Config, ConfigError, Role};
use crate::envelope::Op;
use crate::node::{Server, ServerError, lanes};
use crate::ops::audit::{AuditArgs, AuditError};
use crate::ops::call::{CallArgs, CallError};
use crate::ops::dead_letters::DlqError;
use crate::value::PatternError;

#[derive(Debug, Parser)]
#[command(
    name = "beds",
    version,
    about = "BEDS: declared backends served over AMQP"
)]
struct Cli {
    /// Base configuration file; `beds.<env>.yaml` beside it is layered on top.
    #[arg(
        long,
        global = true,
        env = "BEDS_CONFIG",
        default_value = "config/beds.yaml"
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve: run the brokers of the configured role until Ctrl-C or SIGTERM.
    Run {
        /// Overrides `role` from the configuration.
        #[arg(long)]
        role: Option<Role>,
    },
    /// Validate the configuration and compiled domains, say what would be served, and
    /// compare each domain's contract with the one recorded at its last release.
    Check {
        /// Where the recorded contracts (`<domain>.fingerprint.json`) are kept.
        #[arg(long, default_value = "domains")]
        domains: PathBuf,
        /// After a release: record the current contracts, replacing the previous ones.
        #[arg(long)]
        record: bool,
    },
    /// Print the DDL generated from the compiled domains, or (`diff`, `apply`) migrate a
    /// live database to them.
    #[command(args_conflicts_with_subcommands = true)]
    Schema {
        #[command(subcommand)]
        action: Option<SchemaAction>,
        /// Print the JSON Schema of every template's inputs and outputs and every query's
        /// parameters and results instead.
        #[arg(long, conflicts_with = "admin")]
        json: bool,
        /// Print the admin role's own tables instead, in the dialect of `admin.database`.
        #[arg(long)]
        admin: bool,
        /// Print the segundo role's warehouse tables instead (the cold index and files, the
        /// domain tables without references), in the dialect of `segundo.warehouse`.
        #[arg(long, conflicts_with_all = ["admin", "json"])]
        warehouse: bool,
    },
    /// Send one request to a node and print its reply (`beds call --help` for the forms).
    Call(CallArgs),
    /// Print a record's audit trail, newest first, from the admin node (`beds audit --help`).
    Audit(AuditArgs),
    /// Bulk export and import of a template as NDJSON through segundo (`beds mig --help`).
    Mig {
        #[command(subcommand)]
        action: crate::ops::mig::MigAction,
    },
    /// Inspect, replay or purge the dead-letter queues of the configured queue tag.
    Dlq {
        #[command(subcommand)]
        action: DlqAction,
    },
    /// Ask the admin role for its diagnostics: nodes, stuck deliveries, queues, dead letters.
    Diag {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Tell a node what to do with one of its lanes, through the admin role.
    Admin {
        #[command(subcommand)]
        action: AdminAction,
    },
    /// Print a conversation's lineage tree, as the admin node stores it: each message and
    /// effect under the one that caused it, with type, name, node, outcome, offset from the
    /// first record and duration.
    Lineage {
        /// The conversation's correlation id, or the id of any message of it.
        id: uuid::Uuid,
        /// Print the records as JSON instead.
        #[arg(long)]
        json: bool,
    },
    /// The effective configuration.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
}

#[derive(Debug, Subcommand)]
enum SchemaAction {
    /// Compare the declarations with the live database and write a migration file for
    /// review (`NNNN_<summary>.<dialect>.sql`); with no difference, write nothing.
    Diff {
        /// Directory of migration files; default: the database section's `migrations_dir`.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Also write destructive changes (dropped tables, columns, indexes; retyped
        /// columns), each marked `-- WARNING: destroys data`.
        #[arg(long)]
        allow_destructive: bool,
        /// The database to compare.
        #[arg(long, value_enum, default_value_t)]
        database: crate::ops::schema::Target,
    },
    /// Apply a reviewed migration file and record it in `beds_schema_history`.
    Apply {
        file: PathBuf,
        /// Apply a file generated from other declarations than the running ones.
        #[arg(long)]
        force: bool,
        /// The database to migrate.
        #[arg(long, value_enum, default_value_t)]
        database: crate::ops::schema::Target,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigAction {
    /// Validate the configuration (its shape, as `beds config schema` describes it, and
    /// every semantic check a node makes at start), then print it after overlays,
    /// environment variables and secret files, as YAML, with every password redacted.
    #[command(alias = "show")]
    Check,
    /// Rewrite the configuration file and its overlays (`<stem>.<env>.yaml` beside it) from
    /// an older config version to the current one, keeping each original as `<file>.v<N>`.
    Migrate {
        /// Print the changes and the new files without writing anything.
        #[arg(long)]
        dry_run: bool,
    },
    /// Print the JSON Schema of a configuration file of the current version.
    Schema,
}

#[derive(Debug, Subcommand)]
enum AdminAction {
    /// Cancel the lane's consumers on NODE: its messages stay queued for other nodes.
    Pause { node: String, lane: String },
    /// Consume the lane again on NODE.
    Resume { node: String, lane: String },
    /// Pause, then wait until NODE has nothing of the lane in flight.
    Drain { node: String, lane: String },
}

#[derive(Debug, Subcommand)]
enum DlqAction {
    /// Count dead letters by queue and error code.
    List,
    /// Print dead letter N (from 1, in `list` order): code, reason, attempts, body.
    Show { n: usize },
    /// Move dead letters back to their work queue with fresh attempts.
    Replay {
        /// Only those with this error code (e.g. `database_unavailable`, `rejected`).
        #[arg(long)]
        code: Option<String>,
    },
    /// Drop every dead letter.
    Purge,
}

/// `beds config migrate`: what changes in each file, then the files written (or, with
/// `dry_run`, their new text).
fn migrate_config(base: &std::path::Path, dry_run: bool) -> Result<(), CliError> {
    use crate::config::migrate;
    let files = migrate::plan(base)?;
    if files.iter().all(|f| !f.changed()) {
        println!(
            "{} is already config version {}; nothing to migrate",
            base.display(),
            crate::config::CONFIG_VERSION
        );
        return Ok(());
    }
    for file in files.iter().filter(|f| f.changed()) {
        println!(
            "{} (version {} → {}):",
            file.path.display(),
            file.from,
            crate::config::CONFIG_VERSION
        );
        for change in &file.changes {
            println!("  {change}");
        }
        if !file.comments_kept {
            println!("  (written anew from its parsed form: its comments are not carried over)");
        }
        if dry_run {
            println!("---\n{}---", file.text);
        }
    }
    if !dry_run {
        for kept in migrate::write(&files)? {
            println!("kept the original as {}", kept.display());
        }
    }
    Ok(())
}

/// Entry point of the `beds` binary.
pub fn main(catalog: &'static Catalog) -> ExitCode {
    let cli = Cli::parse();
    match run(cli, catalog) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// Why a command failed; printed as `error: …` with exit code 1, or the call's own code.
#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error("{0}")]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Pattern(#[from] PatternError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Migrate(#[from] crate::config::migrate::MigrateError),
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error(transparent)]
    Server(#[from] ServerError),
    #[error(transparent)]
    Dlq(#[from] DlqError),
    #[error("there are {count} dead letters; pick 1..={count}")]
    NoSuchLetter { count: usize },
    #[error(transparent)]
    Call(#[from] CallError),
    #[error(transparent)]
    Diag(#[from] crate::ops::diag::DiagError),
    #[error(transparent)]
    Lineage(#[from] crate::ops::lineage::LineageError),
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error(transparent)]
    Mig(#[from] crate::ops::mig::MigError),
    /// Boxed: migration errors carry statements and paths.
    #[error(transparent)]
    Schema(Box<crate::ops::schema::SchemaError>),
    #[error(transparent)]
    Compat(#[from] crate::compat::CompatError),
    #[error(
        "domain {domain} breaks clients of its recorded version {version} without a new version: raise `version` in its declarations (and record the contract after the release with `beds check --record`), or undo the changes"
    )]
    Breaking { domain: String, version: u32 },
}

impl From<crate::ops::schema::SchemaError> for CliError {
    fn from(e: crate::ops::schema::SchemaError) -> Self {
        CliError::Schema(Box::new(e))
    }
}

impl CliError {
    fn exit_code(&self) -> u8 {
        match self {
            CliError::Call(e) => e.exit_code(),
            CliError::Diag(e) => e.exit_code(),
            CliError::Mig(e) => e.exit_code(),
            _ => 1,
        }
    }
}

fn run(cli: Cli, catalog: &'static Catalog) -> Result<(), CliError> {
    catalog.check()?;
    crate::value::Patterns::compile(catalog.domains)?;
    if let Command::Config { action } = &cli.command {
        match action {
            ConfigAction::Migrate { dry_run } => return migrate_config(&cli.config, *dry_run),
            ConfigAction::Schema => {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&Config::json_schema())
                        .expect("a schema serialises")
                );
                return Ok(());
            }
            ConfigAction::Check => {}
        }
    }
    let mut config = Config::load(&cli.config)?;
    match cli.command {
        Command::Run { role } => {
            if let Some(role) = role {
                config.role = role;
            }
            crate::telemetry::init(&config.log.filter);
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .map_err(CliError::Runtime)?;
            rt.block_on(serve(config, catalog))
        }
        Command::Check { domains, record } => {
            print!("{}", describe(&cli.config, &config, catalog));
            check_contracts(catalog, &domains, record)
        }
        Command::Schema {
            action:
                Some(SchemaAction::Diff {
                    out,
                    allow_destructive,
                    database,
                }),
            ..
        } => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(CliError::Runtime)?;
            let outcome = rt.block_on(crate::ops::schema::diff(
                &config,
                catalog,
                database,
                out.as_deref(),
                allow_destructive,
            ))?;
            print!("{}", schema_diff_summary(&outcome));
            if outcome.destructive > 0 {
                eprintln!(
                    "warning: the migration destroys data in {} statements (marked `-- WARNING: destroys data`); review it before applying",
                    outcome.destructive
                );
            }
            Ok(())
        }
        Command::Schema {
            action:
                Some(SchemaAction::Apply {
                    file,
                    force,
                    database,
                }),
            ..
        } => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(CliError::Runtime)?;
            let applied = rt.block_on(crate::ops::schema::apply(
                &config, catalog, database, &file, force,
            ))?;
            let resumed = if applied.resumed_after > 0 {
                format!(" (resumed after statement {})", applied.resumed_after)
            } else {
                String::new()
            };
            println!(
                "applied {} ({} statements{resumed}); the database is at declaration fingerprint {}",
                applied.path.display(),
                applied.statements,
                applied.fingerprint
            );
            Ok(())
        }
        Command::Schema {
            warehouse: true, ..
        } => {
            for statement in
                crate::catalog::warehouse_schema(config.segundo.warehouse.driver, catalog)
            {
                println!("{statement};\n");
            }
            Ok(())
        }
        Command::Schema { admin: true, .. } => {
            for statement in crate::admin::ddl(config.admin.database.driver) {
                println!("{statement};\n");
            }
            Ok(())
        }
        Command::Schema { json: true, .. } => {
            let schema = crate::ops::json_schema::catalog(catalog);
            println!(
                "{}",
                serde_json::to_string_pretty(&schema).expect("schemas serialize")
            );
            Ok(())
        }
        Command::Call(args) => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(CliError::Runtime)?;
            Ok(rt.block_on(crate::ops::call::run(&config, catalog, args))?)
        }
        Command::Audit(args) => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(CliError::Runtime)?;
            Ok(rt.block_on(crate::ops::audit::run(&config, catalog, args))?)
        }
        Command::Mig { action } => {
            crate::telemetry::init(&config.log.filter);
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(CliError::Runtime)?;
            Ok(rt.block_on(crate::ops::mig::run(&config, action))?)
        }
        Command::Diag { json } => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(CliError::Runtime)?;
            let report = rt.block_on(crate::ops::diag::diag(&config, json))?;
            print!("{report}");
            if json {
                println!();
            }
            Ok(())
        }
        Command::Admin { action } => {
            let (op, node, lane) = match action {
                AdminAction::Pause { node, lane } => ("pause", node, lane),
                AdminAction::Resume { node, lane } => ("resume", node, lane),
                AdminAction::Drain { node, lane } => ("drain", node, lane),
            };
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(CliError::Runtime)?;
            println!(
                "{}",
                rt.block_on(crate::ops::diag::lane(&config, op, &node, &lane))?
            );
            Ok(())
        }
        Command::Dlq { action } => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(CliError::Runtime)?;
            rt.block_on(dlq(&config, action))
        }
        Command::Lineage { id, json } => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(CliError::Runtime)?;
            Ok(rt.block_on(crate::ops::lineage::run(&config, id, json))?)
        }
        Command::Config { .. } => {
            eprintln!(
                "configuration valid (config version {}, from {})",
                config.version,
                cli.config.display()
            );
            print!("{}", config.shown());
            Ok(())
        }
        Command::Schema { .. } => {
            for statement in crate::catalog::schema(config.database.driver, catalog) {
                println!("{statement};\n");
            }
            Ok(())
        }
    }
}

/// Compares each compiled domain's contract with the one recorded in `dir` (or records
/// them): breaking changes are listed, and fail the check when the domain's version did
/// not change; any other change without a new version is a warning.
fn check_contracts(catalog: &Catalog, dir: &std::path::Path, record: bool) -> Result<(), CliError> {
    use crate::compat;
    let mut failed = None;
    for d in catalog.domains {
        let current = compat::contract(d);
        if record {
            let path = compat::record(dir, &current)?;
            println!(
                "contract {} v{}: recorded in {}",
                d.name,
                d.version,
                path.display()
            );
            continue;
        }
        let Some(recorded) = compat::read(dir, d.name)? else {
            println!(
                "contract {} v{}: first version (no {}); record it after the release with `beds check --record`",
                d.name,
                d.version,
                compat::path(dir, d.name).display()
            );
            continue;
        };
        let report = compat::compare(&recorded, &current);
        if !report.changed {
            println!("contract {} v{}: as recorded", d.name, d.version);
            continue;
        }
        println!(
            "contract {} v{} (recorded v{}): changed, {} breaking",
            d.name,
            d.version,
            recorded.version,
            report.breaking.len()
        );
        for b in &report.breaking {
            println!("  breaking: {b}");
        }
        if report.version_unchanged() {
            if report.breaking.is_empty() {
                eprintln!(
                    "warning: the contract of domain {} changed but its version is still {}: raise `version` before the release",
                    d.name, d.version
                );
            } else {
                failed.get_or_insert(CliError::Breaking {
                    domain: d.name.to_string(),
                    version: recorded.version,
                });
            }
        }
    }
    failed.map_or(Ok(()), Err)
}

/// What `beds schema diff` prints: the differences and the file, or that there are none.
fn schema_diff_summary(outcome: &crate::ops::schema::DiffOutcome) -> String {
    use std::fmt::Write;
    let Some(file) = &outcome.file else {
        return "the database matches the declarations: nothing to migrate, no file written\n"
            .to_string();
    };
    let mut out = format!("{} differences:\n", outcome.changes.len());
    for change in &outcome.changes {
        let _ = writeln!(out, "  - {change}");
    }
    let _ = writeln!(
        out,
        "wrote {}\nreview it, then run `beds schema apply {}`",
        file.display(),
        file.display()
    );
    out
}

async fn serve(config: Config, catalog: &'static Catalog) -> Result<(), CliError> {
    let server = Server::start(&config, catalog).await?;
    let stop = server.stop_token();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("stop signal received; draining");
        stop.cancel();
    });
    tracing::info!(role = config.role.name(), node = %config.node, "serving");
    server.run().await;
    Ok(())
}

async fn dlq(config: &Config, action: DlqAction) -> Result<(), CliError> {
    use crate::ops::dead_letters;
    let amqp = &config.amqp;
    let key = crate::transport::signing::ServiceKey::load(config).map_err(DlqError::from)?;
    let key = &key;
    match action {
        DlqAction::List => {
            let letters = dead_letters::list(amqp, key).await?;
            if letters.is_empty() {
                println!("no dead letters for queue tag `{}`", amqp.queue_tag);
            }
            for ((queue, code), n) in dead_letters::summary(&letters) {
                println!("{queue}.dlq  {code:<24} {n}");
            }
        }
        DlqAction::Show { n } => {
            let letters = dead_letters::list(amqp, key).await?;
            let l =
                n.checked_sub(1)
                    .and_then(|i| letters.get(i))
                    .ok_or(CliError::NoSuchLetter {
                        count: letters.len(),
                    })?;
            println!("queue:    {}.dlq", l.queue);
            println!("code:     {}", l.code);
            println!("reason:   {}", l.reason);
            println!("attempts: {}", l.attempts);
            println!("body:     {}", String::from_utf8_lossy(&l.body));
        }
        DlqAction::Replay { code } => {
            let done = dead_letters::replay(amqp, key, code.as_deref()).await?;
            println!("replayed {} dead letters to their work queues", done.moved);
            if done.refused > 0 {
                println!(
                    "refused {} dead letters not signed by a node of this deployment ({}); see them with `beds dlq list`, remove them with `beds dlq purge`",
                    done.refused,
                    dead_letters::UNTRUSTED
                );
            }
        }
        DlqAction::Purge => {
            let n = dead_letters::purge(amqp).await?;
            println!("purged {n} dead letters");
        }
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// A template's effective rules, one per operation (lock and unlock are under `update`'s,
/// `history` under `fetch`'s; a `list` without its own under `fetch`'s).
fn template_rules(t: &crate::meta::TemplateMeta, default: &[String]) -> String {
    use crate::security::{RuleSource, template_rule};
    let rules: Vec<String> = t
        .ops()
        .map(|op| {
            let (who, source) = template_rule(default, t, op);
            let who = if who.is_empty() {
                "nobody".to_string()
            } else {
                who.join(", ")
            };
            let marker = match source {
                RuleSource::Declared => "",
                RuleSource::Fetch => " (fetch's)",
                RuleSource::Default => " (default)",
            };
            format!("{}: {who}{marker}", op.as_str())
        })
        .collect();
    let owner = t
        .owner
        .map_or(String::new(), |f| format!("  (owner field `{f}`)"));
    format!("{}{owner}", rules.join(" | "))
}

/// What `beds check` prints.
/// How `beds check` shows the TLS set-up of an AMQP connection.
fn tls_summary(amqp: &crate::config::AmqpConfig) -> String {
    let tls = &amqp.tls;
    let required = tls.mode == crate::config::AmqpTlsMode::Required;
    if !amqp.url.starts_with("amqps://") {
        return " (plaintext)".into();
    }
    let mut parts = vec![if required { "TLS required" } else { "TLS" }.to_string()];
    if let Some(ca) = &tls.ca_file {
        parts.push(format!("CA {}", ca.display()));
    }
    if let Some(cert) = &tls.cert_file {
        parts.push(format!("client certificate {}", cert.display()));
    }
    format!(" ({})", parts.join(", "))
}

fn describe(path: &std::path::Path, config: &Config, catalog: &Catalog) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "config {}: ok (version {}, env {})",
        path.display(),
        config.version,
        config.env
    );
    let lanes = lanes(config.role);
    if config.role == Role::Tercero {
        let maintained: Vec<String> = catalog
            .templates()
            .flat_map(|(d, t)| {
                t.counts
                    .iter()
                    .filter(|c| c.maintained)
                    .map(move |c| format!("{}.{}.{}", d.name, t.name, c.name))
            })
            .collect();
        let _ = writeln!(
            out,
            "role tercero:\n  consumes {} (bound to {}; {} workers, batches of {} within {} ms)\n  broadcasts invalidations on {}inv.<domain>.<template>\n  maintains counts: {}",
            config.amqp.queue(crate::tercero::EVENT_QUEUE_KEY),
            config.amqp.queue(crate::tercero::EVENT_BINDING),
            config.tercero.workers,
            config.tercero.batch,
            config.tercero.wait.0,
            config.amqp.queue_tag,
            if maintained.is_empty() {
                "none declared".to_string()
            } else {
                maintained.join(", ")
            }
        );
    } else if config.role == Role::Admin {
        let _ = writeln!(
            out,
            "role admin:\n  answers {} ({} ops: {})\n  admin database {}",
            config.amqp.queue(crate::admin::ADMIN_KEY),
            crate::admin::OPS.len(),
            crate::admin::OPS.join(", "),
            crate::store::StoreOptions::from_config(&config.admin.database).describe(),
        );
    } else if config.role == Role::Segundo {
        let retained: Vec<String> = crate::meta::templates(catalog.domains)
            .filter(|(_, t)| t.capabilities.retention.is_some())
            .map(|(_, t)| format!("{}.{}", t.domain, t.name))
            .collect();
        let s = &config.segundo;
        let _ = writeln!(
            out,
            "role segundo:\n  warehouse {}\n  cold files in {}\n  retention every {} ms in batches of {}: {}",
            crate::store::StoreOptions::from_config(&s.warehouse).describe(),
            s.cold_dir.display(),
            s.interval.0,
            s.batch,
            if retained.is_empty() {
                "none declared".to_string()
            } else {
                retained.join(", ")
            }
        );
    } else if lanes.is_empty() {
        let _ = writeln!(
            out,
            "role {}: serves nothing in this release",
            config.role.name()
        );
    } else {
        let _ = writeln!(out, "role {}:", config.role.name());
        for lane in lanes {
            let pool = match lane {
                crate::ingress::lane::Lane::Read => config.brokers.read,
                crate::ingress::lane::Lane::Write => config.brokers.write,
            };
            let _ = writeln!(
                out,
                "  {} consumes {} ({} workers, prefetch {})",
                lane.broker(),
                config.amqp.queue(lane.key()),
                pool.workers,
                pool.prefetch
            );
        }
    }
    let _ = writeln!(
        out,
        "amqp {}{}",
        config.amqp.redacted_url(),
        tls_summary(&config.amqp)
    );
    let _ = writeln!(
        out,
        "database {} (schema at start: {})",
        crate::store::StoreOptions::from_config(&config.database).describe(),
        match config.schema_mode(&config.database) {
            crate::config::SchemaMode::Create => "create missing tables, verify the rest",
            crate::config::SchemaMode::Verify => "verify",
        }
    );
    let s = &config.security;
    let kids: Vec<&str> = s.tokens.keys.iter().map(|k| k.kid.as_str()).collect();
    let _ = writeln!(
        out,
        "security: user_id required: {}; trusted services: {}; default access: {}; token keys: {}",
        if config.require_user_id() {
            "yes"
        } else {
            "no"
        },
        if s.trusted_services.is_empty() {
            "none".to_string()
        } else {
            s.trusted_services.join(", ")
        },
        s.default_access.join(", "),
        if kids.is_empty() {
            "none".to_string()
        } else {
            kids.join(", ")
        }
    );
    let default = s.default_access.join(", ");
    for d in catalog.domains {
        let _ = writeln!(out, "domain {} v{}", d.name, d.version);
        for t in d.templates {
            let ops: Vec<&str> = t.ops().map(Op::as_str).collect();
            let mut flags = Vec::new();
            let c = &t.capabilities;
            for (on, name) in [
                (t.internal, "internal"),
                (t.append_only, "append_only"),
                (c.audit, "audit"),
                (c.journal, "journal"),
                (c.locking, "locking"),
            ] {
                if on {
                    flags.push(name.to_string());
                }
            }
            if let Some(ms) = c.cache_ttl_ms {
                flags.push(format!("cache {ms}ms"));
            }
            if let Some(r) = c.retention {
                flags.push(format!(
                    "retention {} hot {}ms cool {}ms then {}",
                    r.field,
                    r.hot_ms,
                    r.cool_ms,
                    r.then.name()
                ));
            }
            let _ = writeln!(
                out,
                "  {:<16} v{} {}  table {:<16} {} fields  ops: {}{}",
                t.name,
                t.version,
                t.fingerprint,
                t.table,
                t.fields.len(),
                if t.internal {
                    "(internal)".to_string()
                } else {
                    ops.join(" ")
                },
                if flags.is_empty() {
                    String::new()
                } else {
                    format!("  [{}]", flags.join(", "))
                }
            );
            if !t.internal {
                let _ = writeln!(out, "    access {}", template_rules(t, &s.default_access));
            }
        }
        for q in d.queries {
            let params: Vec<String> = q
                .params
                .iter()
                .map(|p| {
                    format!(
                        "{}{}{}",
                        p.name,
                        if p.list { "[]" } else { "" },
                        if p.optional { "?" } else { "" }
                    )
                })
                .collect();
            let shape = if q.count {
                "count".to_string()
            } else if q.grouped() {
                format!(
                    "count by {}, page {}..{}",
                    q.group.join(", "),
                    q.page.default,
                    q.page.max
                )
            } else {
                let keys: Vec<String> = q
                    .keys()
                    .iter()
                    .map(|(k, desc)| format!("{k}{}", if *desc { " desc" } else { "" }))
                    .collect();
                format!(
                    "order {}, page {}..{}",
                    keys.join(", "),
                    q.page.default,
                    q.page.max
                )
            };
            let mut access = if q.access.is_empty() {
                format!("{default} (default)")
            } else {
                q.access.join(", ")
            };
            let reads = crate::security::query_read_rules(q, |name| d.template(name));
            for (template, who) in reads {
                let who = if who.is_empty() {
                    "nobody".to_string()
                } else {
                    who.join(", ")
                };
                access.push_str(&format!(" and {template}'s fetch ({who})"));
            }
            let _ = writeln!(
                out,
                "  query {:<22} from {:<10} params ({})  {shape}  access {access}",
                q.name,
                q.from.name,
                params.join(", ")
            );
        }
    }
    out
}
