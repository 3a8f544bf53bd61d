//! `beds call`: one request from the command line. The target and its arguments are checked
//! against the compiled catalog before anything is sent, so a typo is caught locally with a
//! suggestion; the request then goes through the runtime's [`Client`] like any other.

use std::time::Duration;

use serde_json::{Map, Value as Json};

use crate::catalog::Catalog;
use crate::client::{Client, ClientError, ClientOptions};
use crate::config::{Config, Millis};
use crate::envelope::{Consistency, Op, Request};
use crate::error::BedsError;
use crate::meta::{DomainMeta, QueryMeta, TemplateMeta};
use crate::suggest::closest;

/// Exit code when the node answered with an error reply.
pub(crate) const EXIT_REMOTE: u8 = 3;
/// Exit code when the command line does not name a valid call (clap uses 2 as well).
const EXIT_USAGE: u8 = 2;
/// Exit code when no reply came: RabbitMQ unreachable, no queue, or the timeout passed.
pub(crate) const EXIT_NO_REPLY: u8 = 4;

/// Send one request to a node and print its reply.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Targets and their JSON argument:
  DOMAIN.TEMPLATE.create DATA                 the record's fields
  DOMAIN.TEMPLATE.fetch  KEY                  {\"id\":…}, a unique key {\"<field>\":…}, or just the id
                                              [--consistency strong|cached] [--min-version N]
  DOMAIN.TEMPLATE.update KEY --data CHANGES   [--expect-version N]
  DOMAIN.TEMPLATE.delete KEY                  [--expect-version N]
  DOMAIN.TEMPLATE.list                        [--limit N] [--cursor NEXT]
  DOMAIN.QUERY           [PARAMS]             [--limit N] [--cursor NEXT]
`beds check` lists the domains, templates, operations and queries of this binary;
`beds schema --json` the fields and parameters.

Prints the reply's `data` as JSON (--raw: the whole reply envelope).
Exit codes: 0 ok; 1 configuration invalid; 2 bad command line (unknown name, invalid JSON);
3 the node answered with an error (code, message and details on stderr);
4 no reply (RabbitMQ unreachable, no node for this queue tag, or --timeout passed).")]
pub struct CallArgs {
    /// `domain.template.op` (op: create, fetch, update, delete, list; lock and unlock on a
    /// template declaring `locking`; history on one declaring `journal`) or `domain.query`.
    target: String,
    /// JSON: create's data, the key of fetch/update/delete, a query's parameters.
    json: Option<String>,
    /// update: the fields to change, as a JSON object; lock: the lease, `{"ttl": "30s"}`.
    #[arg(long, value_name = "CHANGES")]
    data: Option<String>,
    /// list, history and queries: page size (default and maximum from the declaration).
    #[arg(long, value_name = "N")]
    limit: Option<u32>,
    /// list, history and queries: the previous page's `next`, passed back unchanged.
    #[arg(long, value_name = "NEXT")]
    cursor: Option<String>,
    /// update and delete: apply only if the record is at this version.
    #[arg(long, value_name = "N")]
    expect_version: Option<i64>,
    /// update, delete and unlock: the lease's token (`lock` answers it); lock: extends it.
    #[arg(long, value_name = "TOKEN")]
    lock_token: Option<String>,
    /// fetch: `strong` (the database) or `cached` (the node's cache when it holds the
    /// record) [default: the template's declaration].
    #[arg(long, value_name = "LEVEL", value_parser = consistency)]
    consistency: Option<Consistency>,
    /// fetch: served from the cache only at this version or later (read-your-writes).
    #[arg(long, value_name = "N")]
    min_version: Option<i64>,
    /// How long to wait for the reply, e.g. `500ms`, `10s` [default: the configuration's
    /// client.timeout, 5s unless set].
    #[arg(long, value_name = "DURATION")]
    timeout: Option<Millis>,
    /// Print the whole reply envelope (ids, status, data or error), not only its `data`.
    #[arg(long)]
    raw: bool,
    /// A file holding the end user's signed token, sent as `auth` (a file, so the token
    /// stays out of the command line and shell history).
    #[arg(long, value_name = "FILE")]
    auth_file: Option<std::path::PathBuf>,
}

/// Why a call failed; [`CallError::exit_code`] tells a usage error, an error reply and a
/// missing reply apart.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error(
        "`{0}` is not a call target: write `domain.template.op` (op: create, fetch, update, \
         delete, list) or `domain.query`; `beds check` lists them"
    )]
    Shape(String),
    #[error("this binary has no domain `{name}`{}; it serves: {known}", mean(.suggestion))]
    UnknownDomain {
        name: String,
        suggestion: Option<String>,
        known: String,
    },
    #[error(
        "domain `{domain}` has no template or query `{name}`{}; templates: {templates}; queries: {queries}",
        mean(.suggestion)
    )]
    UnknownName {
        domain: &'static str,
        name: String,
        suggestion: Option<String>,
        templates: String,
        queries: String,
    },
    #[error(
        "`{target}` is a template, not a query: add an operation, e.g. `{target}.fetch` \
         (it takes: {ops})"
    )]
    MissingOp { target: String, ops: String },
    #[error("`{domain}.{query}` is a query: call it without an operation, as `{domain}.{query}`")]
    QueryWithOp {
        domain: &'static str,
        query: &'static str,
    },
    #[error("{target} has no operation `{op}`{}; it takes: {ops}", mean(.suggestion))]
    UnknownOp {
        target: String,
        op: String,
        suggestion: Option<String>,
        ops: String,
    },
    #[error("{target} needs {what}")]
    Missing { target: String, what: String },
    #[error("{target} takes no {what}{hint}")]
    Unexpected {
        target: String,
        what: &'static str,
        hint: &'static str,
    },
    #[error("{what} is not valid JSON: {error}{}", caret(.text, .error))]
    Json {
        what: String,
        text: String,
        error: serde_json::Error,
    },
    #[error("{what} must be a JSON object such as {example} or an id; `{text}` is neither")]
    BareKey {
        what: String,
        text: String,
        example: String,
    },
    #[error("{what} must be {expected}, found {found}")]
    Shaped {
        what: String,
        expected: &'static str,
        found: String,
    },
    #[error("{}", remote(.0))]
    Remote(BedsError),
    #[error(
        "no reply to {target} within {after:?} (request {id}): is a node serving queue tag \
         {tag:?} at {url}? Start one with `beds run` and the same amqp.url and \
         amqp.queue_tag, or wait longer with --timeout"
    )]
    NoReply {
        target: String,
        id: uuid::Uuid,
        after: Duration,
        tag: String,
        url: String,
    },
    #[error("cannot read the token file `{}` (--auth-file): {source}", path.display())]
    AuthFile {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Client(ClientError),
}

impl CallError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CallError::Remote(_) => EXIT_REMOTE,
            CallError::NoReply { .. } | CallError::Client(_) => EXIT_NO_REPLY,
            _ => EXIT_USAGE,
        }
    }
}

/// Checks, sends and prints one call.
pub async fn run(config: &Config, catalog: &Catalog, args: CallArgs) -> Result<(), CallError> {
    let target = resolve(catalog, &args.target)?;
    let req = request(&target, &args)?;
    let mut options = ClientOptions::from_config(config, "beds-call");
    if let Some(t) = args.timeout {
        options.timeout = t.duration();
    }
    if let Some(path) = &args.auth_file {
        let token = std::fs::read_to_string(path).map_err(|source| CallError::AuthFile {
            path: path.clone(),
            source,
        })?;
        options = options.with_auth(token.trim());
    }
    let timeout = options.timeout;
    let client = Client::connect(options).await.map_err(CallError::Client)?;
    let sent = client.exchange(req).await;
    // The reply (or its absence) is what matters; a slow close is bounded by the client.
    let _ = client.close().await;
    let reply = match sent {
        Ok(reply) => reply,
        Err(ClientError::Timeout { id, .. }) => {
            return Err(CallError::NoReply {
                target: args.target,
                id,
                after: timeout,
                tag: config.amqp.queue_tag.clone(),
                url: config.amqp.redacted_url(),
            });
        }
        Err(e) => return Err(CallError::Client(e)),
    };
    if args.raw {
        println!("{}", pretty(&reply));
    }
    let data = reply.into_result().map_err(CallError::Remote)?;
    if !args.raw {
        println!("{}", pretty(&data));
    }
    Ok(())
}

fn pretty(value: &impl serde::Serialize) -> String {
    serde_json::to_string_pretty(value).expect("replies serialize")
}

/// What a call target names.
#[derive(Debug)]
enum Target {
    Template {
        domain: &'static DomainMeta,
        template: &'static TemplateMeta,
        op: Op,
    },
    Query(&'static QueryMeta),
}

impl Target {
    fn op(&self) -> Op {
        match self {
            Target::Template { op, .. } => *op,
            Target::Query(_) => Op::Query,
        }
    }
}

fn ops(t: &TemplateMeta) -> Vec<&'static str> {
    t.ops().map(Op::as_str).collect()
}

fn resolve(catalog: &Catalog, text: &str) -> Result<Target, CallError> {
    let parts: Vec<&str> = text.split('.').collect();
    if parts.len() < 2 || parts.len() > 3 || parts.iter().any(|p| p.is_empty()) {
        return Err(CallError::Shape(text.to_string()));
    }
    let domains: Vec<&str> = catalog.domains.iter().map(|d| d.name).collect();
    let domain = catalog
        .domains
        .iter()
        .copied()
        .find(|d| d.name == parts[0])
        .ok_or_else(|| CallError::UnknownDomain {
            name: parts[0].to_string(),
            suggestion: closest(parts[0], &domains).map(str::to_string),
            known: domains.join(", "),
        })?;
    // Internal templates are not routed for clients; they are not call targets either.
    let template = |name: &str| {
        domain
            .templates
            .iter()
            .copied()
            .find(|t| t.name == name && !t.internal)
    };
    let query = |name: &str| domain.queries.iter().copied().find(|q| q.name == name);
    let unknown = |name: &str| {
        let templates: Vec<&str> = domain
            .templates
            .iter()
            .filter(|t| !t.internal)
            .map(|t| t.name)
            .collect();
        let queries: Vec<&str> = domain.queries.iter().map(|q| q.name).collect();
        let all: Vec<&str> = templates.iter().chain(&queries).copied().collect();
        CallError::UnknownName {
            domain: domain.name,
            name: name.to_string(),
            suggestion: closest(name, &all).map(|s| format!("{}.{s}", domain.name)),
            templates: templates.join(", "),
            queries: queries.join(", "),
        }
    };
    match parts[1..] {
        [name] => match (query(name), template(name)) {
            (Some(q), _) => Ok(Target::Query(q)),
            (None, Some(t)) => Err(CallError::MissingOp {
                target: text.to_string(),
                ops: ops(t).join(", "),
            }),
            (None, None) => Err(unknown(name)),
        },
        [name, op] => {
            let Some(t) = template(name) else {
                return Err(match query(name) {
                    Some(q) => CallError::QueryWithOp {
                        domain: domain.name,
                        query: q.name,
                    },
                    None => unknown(name),
                });
            };
            let allowed = ops(t);
            let op = Op::parse(op)
                .filter(|o| allowed.contains(&o.as_str()))
                .ok_or_else(|| CallError::UnknownOp {
                    target: format!("{}.{}", domain.name, t.name),
                    op: op.to_string(),
                    suggestion: closest(op, &allowed).map(str::to_string),
                    ops: allowed.join(", "),
                })?;
            Ok(Target::Template {
                domain,
                template: t,
                op,
            })
        }
        _ => unreachable!("two or three parts"),
    }
}

/// The envelope for `target`, with the JSON argument and flags put where its operation
/// takes them; anything the operation does not take is refused rather than dropped.
fn request(target: &Target, args: &CallArgs) -> Result<Request, CallError> {
    let name = &args.target;
    let op = target.op();
    let unexpected = |what, hint| CallError::Unexpected {
        target: name.clone(),
        what,
        hint,
    };
    if args.data.is_some() && !matches!(op, Op::Update | Op::Lock) {
        return Err(unexpected(
            "--data",
            " (only update and lock do; the JSON argument is what this operation takes)",
        ));
    }
    if args.lock_token.is_some() && !matches!(op, Op::Update | Op::Delete | Op::Lock | Op::Unlock) {
        return Err(unexpected(
            "--lock-token",
            " (only update, delete, lock and unlock do)",
        ));
    }
    if (args.limit.is_some() || args.cursor.is_some())
        && !matches!(op, Op::List | Op::Query | Op::History)
    {
        return Err(unexpected(
            "--limit or --cursor",
            " (only list, history and queries page)",
        ));
    }
    if args.expect_version.is_some() && !matches!(op, Op::Update | Op::Delete) {
        return Err(unexpected(
            "--expect-version",
            " (only update and delete do)",
        ));
    }
    if (args.consistency.is_some() || args.min_version.is_some()) && op != Op::Fetch {
        return Err(unexpected(
            "--consistency or --min-version",
            " (only fetch does)",
        ));
    }
    let mut req = match target {
        Target::Template {
            domain, template, ..
        } => Request::new(domain.name, template.name, op),
        Target::Query(q) => {
            let mut req = Request::new(q.domain, "", Op::Query);
            req.query = Some(q.name.to_string());
            req
        }
    };
    let json = args.json.as_deref();
    let needed = |what: String| CallError::Missing {
        target: name.clone(),
        what,
    };
    match target {
        Target::Template { template, .. } => match op {
            Op::Create => {
                let text = json.ok_or_else(|| needed(data_hint(template)))?;
                req.data = Some(object(&format!("the data of {name}"), text)?);
            }
            Op::Fetch | Op::Update | Op::Delete | Op::Lock | Op::Unlock => {
                let text = json.ok_or_else(|| needed(key_hint(template)))?;
                // A bare word is shown as a value of the first unique key in the hint.
                let unique = template.unique.first().map_or("id", |u| u.fields[0]);
                req.key = Some(key(&format!("the key of {name}"), text, unique)?);
                if op == Op::Update {
                    let text = args.data.as_deref().ok_or_else(|| {
                        needed("the fields to change: --data '{\"field\": value}'".into())
                    })?;
                    req.data = Some(object(&format!("--data of {name}"), text)?);
                }
                if op == Op::Lock {
                    req.data = args
                        .data
                        .as_deref()
                        .map(|text| object(&format!("--data of {name}"), text))
                        .transpose()?;
                }
                if op == Op::Unlock && args.lock_token.is_none() {
                    return Err(needed("the lease's token: --lock-token <TOKEN>".into()));
                }
                req.expect_version = args.expect_version;
                req.lock_token = args.lock_token.clone();
                req.consistency = args.consistency;
                req.min_version = args.min_version;
            }
            Op::List => {
                if json.is_some() {
                    return Err(unexpected(
                        "JSON argument",
                        " (pages by --limit and --cursor)",
                    ));
                }
                req.limit = args.limit;
                // A list's `next` is an id: accepted as JSON or as the bare id.
                req.after = args.cursor.as_deref().map(|c| {
                    serde_json::from_str(c).unwrap_or_else(|_| Json::String(c.to_string()))
                });
            }
            Op::History => {
                let text = json.ok_or_else(|| needed(key_hint(template)))?;
                req.key = Some(key(&format!("the key of {name}"), text, "id")?);
                req.limit = args.limit;
                req.cursor = args
                    .cursor
                    .as_deref()
                    .map(|c| match serde_json::from_str(c) {
                        Ok(Json::Array(items)) => items,
                        _ => vec![Json::String(c.to_string())],
                    });
            }
            Op::Query => unreachable!("templates are resolved to template operations"),
        },
        Target::Query(q) => {
            req.params = Some(match json {
                Some(text) => object(&format!("the parameters of {name}"), text)?,
                None if q.params.iter().all(|p| p.optional) => Map::new(),
                None => {
                    let names: Vec<&str> = q.params.iter().map(|p| p.name).collect();
                    return Err(needed(format!(
                        "its parameters as a JSON object: {} (`beds schema --json` shows their types)",
                        names.join(", ")
                    )));
                }
            });
            req.limit = args.limit;
            req.cursor = args
                .cursor
                .as_deref()
                .map(|c| match parse("--cursor", c)? {
                    Json::Array(keys) => Ok(keys),
                    other => Err(shaped(
                        "--cursor",
                        "the `next` array of the previous page",
                        &other,
                    )),
                })
                .transpose()?;
        }
    }
    Ok(req)
}

fn data_hint(t: &TemplateMeta) -> String {
    let input = |optional: bool| -> Vec<&str> {
        t.fields
            .iter()
            .filter(|f| f.is_input() && (f.optional || f.default.is_some()) == optional)
            .map(|f| f.name)
            .collect()
    };
    let (required, optional) = (input(false), input(true));
    format!(
        "its data as a JSON object: {}{} (`beds schema --json` shows their types)",
        if required.is_empty() {
            "no field is required".to_string()
        } else {
            required.join(", ")
        },
        if optional.is_empty() {
            String::new()
        } else {
            format!("; optional: {}", optional.join(", "))
        }
    )
}

fn key_hint(t: &TemplateMeta) -> String {
    let uniques: Vec<String> = t
        .unique
        .iter()
        .map(|u| {
            let fields: Vec<String> = u.fields.iter().map(|f| format!("\"{f}\": …")).collect();
            format!("{{{}}}", fields.join(", "))
        })
        .collect();
    format!(
        "a key: {{\"id\": …}} or just the id{}",
        if uniques.is_empty() {
            String::new()
        } else {
            format!(", or a unique key: {}", uniques.join(", "))
        }
    )
}

fn parse(what: &str, text: &str) -> Result<Json, CallError> {
    serde_json::from_str(text).map_err(|error| CallError::Json {
        what: what.to_string(),
        text: text.to_string(),
        error,
    })
}

fn object(what: &str, text: &str) -> Result<Map<String, Json>, CallError> {
    match parse(what, text)? {
        Json::Object(m) => Ok(m),
        other => Err(shaped(what, "a JSON object ({…})", &other)),
    }
}

/// A key object, or a bare id: `0193…` (unquoted in the shell), `"0193…"` or `42`.
fn key(what: &str, text: &str, unique: &str) -> Result<Map<String, Json>, CallError> {
    let id = |v| Map::from_iter([("id".to_string(), v)]);
    if let Ok(uuid) = uuid::Uuid::parse_str(text.trim()) {
        return Ok(id(Json::String(uuid.to_string())));
    }
    // A bare word is most likely a unique value typed without its field name.
    let bare = text.trim();
    let word = !bare.is_empty()
        && bare
            .chars()
            .all(|c| c.is_alphanumeric() || "_-@.".contains(c));
    if word && serde_json::from_str::<Json>(bare).is_err_and(|e| e.is_syntax()) {
        return Err(CallError::BareKey {
            what: what.to_string(),
            text: bare.to_string(),
            example: serde_json::json!({ unique: bare }).to_string(),
        });
    }
    match parse(what, text)? {
        Json::Object(m) => Ok(m),
        v @ (Json::String(_) | Json::Number(_)) => Ok(id(v)),
        other => Err(shaped(what, "a key object or an id", &other)),
    }
}

fn shaped(what: &str, expected: &'static str, found: &Json) -> CallError {
    CallError::Shaped {
        what: what.to_string(),
        expected,
        found: match found {
            Json::Null => "null".into(),
            Json::Bool(_) => "a boolean".into(),
            Json::Number(_) => "a number".into(),
            Json::String(_) => "a string".into(),
            Json::Array(_) => "an array".into(),
            Json::Object(_) => "an object".into(),
        },
    }
}

/// The input line with a caret under the column serde_json names, for one-line input of
/// terminal width (longer input is located by line and column alone).
fn caret(text: &str, error: &serde_json::Error) -> String {
    if text.contains('\n') || text.chars().count() > 100 || error.column() == 0 {
        return String::new();
    }
    format!("\n  {text}\n  {}^", " ".repeat(error.column() - 1))
}

fn mean(suggestion: &Option<String>) -> String {
    suggestion
        .as_ref()
        .map(|s| format!(" (did you mean `{s}`?)"))
        .unwrap_or_default()
}

/// An error reply as the user reads it: code, class, message, then one line per detail.
pub(crate) fn remote(e: &BedsError) -> String {
    let (code, class) = (wire(&e.code), wire(&e.class));
    let mut out = if code == class {
        format!("the node answered {code}: {}", e.message)
    } else {
        format!("the node answered {code} ({class}): {}", e.message)
    };
    for d in &e.details {
        out.push_str(&format!(
            "\n  {}: {} ({})",
            d.field,
            d.message,
            wire(&d.code)
        ));
    }
    if let Some(v) = e.current_version {
        out.push_str(&format!("\n  current version: {v}"));
    }
    out
}

/// The wire name of a contract enum, e.g. `unique_violation`.
fn wire(value: &impl serde::Serialize) -> String {
    match serde_json::to_value(value) {
        Ok(Json::String(s)) => s,
        _ => String::from("?"),
    }
}

/// Parses `--consistency`.
fn consistency(s: &str) -> Result<Consistency, String> {
    match s {
        "strong" => Ok(Consistency::Strong),
        "cached" => Ok(Consistency::Cached),
        other => Err(format!(
            "`{other}` is not a consistency; use strong or cached"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::{Capabilities, IdKind, PageMeta};

    static LEASED: TemplateMeta = TemplateMeta {
        domain: "d",
        name: "crate_box",
        version: 1,
        fingerprint: "0000000000000000",
        table: "crate_box",
        id: IdKind::Sequence,
        id_column: "id",
        version_column: "version",
        fields: &[],
        unique: &[],
        indexes: &[],
        page: PageMeta { default: 1, max: 1 },
        append_only: false,
        internal: false,
        capabilities: Capabilities {
            audit: false,
            journal: false,
            locking: true,
            cache_ttl_ms: None,
            consistency: Consistency::Strong,
            retention: None,
        },
        access: &[],
        owner: None,
        tokens: &[],
        counts: &[],
        checks: &[],
    };
    static DOMAIN: DomainMeta = DomainMeta {
        name: "d",
        version: 1,
        templates: &[&LEASED],
        queries: &[],
    };

    fn args(target: &str, json: &str, data: Option<&str>, token: Option<&str>) -> CallArgs {
        CallArgs {
            target: target.into(),
            json: Some(json.into()),
            data: data.map(str::to_string),
            limit: None,
            cursor: None,
            expect_version: None,
            lock_token: token.map(str::to_string),
            consistency: None,
            min_version: None,
            timeout: None,
            raw: false,
            auth_file: None,
        }
    }

    #[test]
    fn lock_and_unlock_take_a_key_a_lease_and_a_token() {
        let target = |op| Target::Template {
            domain: &DOMAIN,
            template: &LEASED,
            op,
        };
        let lock = request(
            &target(Op::Lock),
            &args("d.crate_box.lock", "7", Some(r#"{"ttl":"30s"}"#), None),
        )
        .unwrap();
        assert_eq!(
            (lock.op.as_str(), lock.key.unwrap()["id"].clone()),
            ("lock", Json::from(7))
        );
        assert_eq!(lock.data.unwrap()["ttl"], Json::from("30s"));
        let unlock = request(
            &target(Op::Unlock),
            &args("d.crate_box.unlock", "7", None, Some("t1")),
        )
        .unwrap();
        assert_eq!(unlock.lock_token.as_deref(), Some("t1"));
        let update = request(
            &target(Op::Update),
            &args("d.crate_box.update", "7", Some("{}"), Some("t1")),
        )
        .unwrap();
        assert_eq!(update.lock_token.as_deref(), Some("t1"));
        assert!(matches!(
            request(
                &target(Op::Unlock),
                &args("d.crate_box.unlock", "7", None, None)
            ),
            Err(CallError::Missing { .. })
        ));
        assert!(matches!(
            request(
                &target(Op::Fetch),
                &args("d.crate_box.fetch", "7", None, Some("t1"))
            ),
            Err(CallError::Unexpected { .. })
        ));
    }

    #[test]
    fn invalid_json_points_at_the_column() {
        let err = parse("the data", r#"{"a" 1}"#).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the data is not valid JSON: expected `:` at line 1 column 6\n  {\"a\" 1}\n       ^"
        );
    }

    #[test]
    fn a_key_may_be_a_bare_id() {
        let id = "01a21a0b-f268-7734-b721-07145516fadb";
        for text in [id.to_string(), format!("\"{id}\"")] {
            assert_eq!(
                key("k", &text, "name").unwrap()["id"],
                Json::String(id.into())
            );
        }
        assert_eq!(key("k", "42", "name").unwrap()["id"], Json::from(42));
        assert!(matches!(
            key("k", "[1]", "name"),
            Err(CallError::Shaped { found, .. }) if found == "an array"
        ));
        assert_eq!(
            key("the key", "ada", "name").unwrap_err().to_string(),
            r#"the key must be a JSON object such as {"name":"ada"} or an id; `ada` is neither"#
        );
    }

    #[test]
    fn error_replies_read_as_codes_and_details() {
        let e = BedsError::detail(
            "data.name",
            crate::error::DetailCode::TooLong,
            "name is too long",
        );
        assert_eq!(
            remote(&e),
            "the node answered invalid_input (validation): data.name: name is too long\n  \
             data.name: name is too long (too_long)"
        );
    }
}
