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
    /// Validate the configuration and compiled domains, and say what would be served.
    Check,
    /// Print the DDL generated from the compiled domains.
    Schema {
        /// Print the JSON Schema of every template's inputs and outputs and every query's
        /// parameters and results instead.
        #[arg(long, conflicts_with = "admin")]
        json: bool,
        /// Print the admin role's own tables instead, in the dialect of `admin.database`.
        #[arg(long)]
        admin: bool,
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
enum ConfigAction {
    /// Print the configuration after overlays, environment variables and secret files, as
    /// YAML, with every password redacted.
    Show,
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
        Command::Check => {
            print!("{}", describe(&cli.config, &config, catalog));
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
        Command::Config {
            action: ConfigAction::Show,
        } => {
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
        "database {} (schema applied at start: {})",
        crate::store::StoreOptions::from_config(&config.database).describe(),
        if config.database.apply_schema {
            "yes"
        } else {
            "no"
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
                flags.push(format!("retention {}ms->{}", r.age_ms, r.target));
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
