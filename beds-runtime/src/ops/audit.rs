//! `beds audit TEMPLATE KEY`: a record's audit trail, newest first, from the admin role
//! over the `adm` route (wiki/audit.md).

use std::fmt::Write as _;

use serde_json::{Map, Value as Json};

use crate::admin::audit::{AuditNameError, MAX_LIMIT, resolve};
use crate::catalog::Catalog;
use crate::client::{Client, ClientError, ClientOptions};
use crate::config::Config;
use crate::error::BedsError;
use crate::meta::IdKind;

#[derive(Debug, clap::Args)]
pub struct AuditArgs {
    /// The audited template: `domain.template`, or `template` when one domain has it.
    template: String,
    /// The record's id.
    key: String,
    /// Records per page (at most 500).
    #[arg(long, default_value_t = 20)]
    limit: u32,
    /// The page after this cursor (printed under the previous page).
    #[arg(long)]
    cursor: Option<String>,
    /// Print the admin's reply data as JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// Why `beds audit` printed no trail.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error(transparent)]
    Name(#[from] AuditNameError),
    #[error("`{key}` is not an id of {template}: its ids are integers")]
    Key { template: String, key: String },
    #[error("--limit is {0}; ask for 1 to {MAX_LIMIT} records per page")]
    Limit(u32),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("the admin refused: {}", .0.message)]
    Remote(BedsError),
}

/// Resolves the template, asks the admin and prints the page.
pub async fn run(config: &Config, catalog: &Catalog, args: AuditArgs) -> Result<(), AuditError> {
    let t = resolve(catalog, &args.template)?;
    let name = format!("{}.{}", t.domain, t.name);
    if !(1..=MAX_LIMIT).contains(&args.limit) {
        return Err(AuditError::Limit(args.limit));
    }
    let key = match t.id {
        IdKind::Sequence => Json::from(args.key.parse::<i64>().map_err(|_| AuditError::Key {
            template: name.clone(),
            key: args.key.clone(),
        })?),
        IdKind::Uuid7 => Json::from(args.key.clone()),
    };
    let mut fields = Map::new();
    fields.insert("template".into(), Json::from(name.clone()));
    fields.insert("key".into(), key);
    fields.insert("limit".into(), Json::from(args.limit));
    if let Some(cursor) = &args.cursor {
        fields.insert("cursor".into(), Json::from(cursor.clone()));
    }
    let client = Client::connect(ClientOptions::from_config(config, "beds-audit")).await?;
    let sent = client.admin_exchange("audit", fields).await;
    let _ = client.close().await;
    let data = sent?.into_result().map_err(AuditError::Remote)?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&data).expect("JSON serialises")
        );
    } else {
        print!("{}", table(&name, &args.key, &data));
    }
    Ok(())
}

/// The page as a table: one line per write, its changed fields after it.
fn table(template: &str, key: &str, data: &Json) -> String {
    let records = data["records"].as_array().cloned().unwrap_or_default();
    let mut out = String::new();
    if records.is_empty() {
        let _ = writeln!(out, "no audit records for {template} {key}");
        return out;
    }
    let _ = writeln!(
        out,
        "{:<30}  {:<6}  {:>7}  {:<16}  {:<16}  REQUEST",
        "COMMITTED", "OP", "VERSION", "SERVICE", "SUBJECT"
    );
    for r in &records {
        let s = |v: &Json| v.as_str().unwrap_or("-").to_string();
        let _ = writeln!(
            out,
            "{:<30}  {:<6}  {:>7}  {:<16}  {:<16}  {}",
            s(&r["committed_at"]),
            s(&r["op"]),
            r["version"],
            s(&r["caller"]["service"]),
            s(&r["caller"]["subject"]),
            s(&r["request_id"]),
        );
        let changes = &r["changes"];
        let empty = Map::new();
        let before = changes["before"].as_object().unwrap_or(&empty);
        let after = changes["after"].as_object().unwrap_or(&empty);
        let mut names: Vec<&String> = after.keys().chain(before.keys()).collect();
        names.sort();
        names.dedup();
        for name in names {
            let shown =
                |side: &Map<String, Json>| side.get(name).map_or("-".into(), Json::to_string);
            let _ = writeln!(out, "    {name}: {} -> {}", shown(before), shown(after));
        }
    }
    if let Some(next) = data["next"].as_str() {
        let _ = writeln!(out, "more: beds audit {template} {key} --cursor {next}");
    }
    out
}
