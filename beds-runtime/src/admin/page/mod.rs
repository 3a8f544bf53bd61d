//! The operator page: server-rendered HTML the admin role adds to its telemetry server.
//! Read-only: it shows nodes and their health, live per-lane plots, dead letters with their
//! headers, a conversation's lineage tree, and a record's audit trail and journal; it
//! changes nothing. It shows record data, so it listens where telemetry does (127.0.0.1 by
//! default) and must not be exposed publicly (wiki/security.md).

mod html;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Map, Value as Json, json};

use super::commands::{AdminCtx, AdminRequest, dispatch};
use super::nodes::{HISTORY, Liveness};
use crate::catalog::Catalog;
use crate::client::{Client, ClientOptions};
use crate::config::{AmqpConfig, Config};
use crate::envelope::{Op, Request};
use crate::lineage;
use crate::meta::{IdKind, TemplateMeta};
use crate::ops::dead_letters;
use crate::tercero::EVENT_QUEUE_KEY;
use crate::transport::names::{READ_KEY, WRITE_KEY};
use crate::transport::signing::ServiceKey;
use html::{LetterQueue, esc};

/// Dead letters read per queue for one page view: enough to see the reasons, bounded so a
/// full DLQ costs the broker little.
const LETTERS_SHOWN: usize = 20;
/// Bytes of a dead letter's body shown.
const BODY_SHOWN: usize = 2_000;
/// Journal versions and audit records shown for one record.
const TRAIL_SHOWN: u32 = 50;

/// The columns of a journal version, in this order.
const JOURNAL_COLUMNS: &[&str] = &["version", "op", "written_at", "record"];
/// The columns of an audit record shown, in this order (the template and key are the page's).
const AUDIT_COLUMNS: &[&str] = &[
    "committed_at",
    "op",
    "version",
    "caller",
    "changes",
    "correlation_id",
    "request_id",
];

/// Scripts only from the page's own file, nothing from elsewhere: markup that reached the
/// page through record data could not run even if escaping missed it.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                   connect-src 'self'; img-src 'self'; form-action 'self'; base-uri 'none'";

/// What the page reads from.
pub(crate) struct Page {
    /// The admin node serving the page.
    node: String,
    amqp: AmqpConfig,
    key: ServiceKey,
    catalog: &'static Catalog,
    /// For `history` requests (journals), connected on first use.
    client_options: ClientOptions,
    client: tokio::sync::OnceCell<Client>,
    /// The work queues whose dead letters are shown.
    dead_letter_queues: Vec<String>,
    /// What the admin's ops read: the page asks them in process, as the `adm` route would.
    admin: Arc<AdminCtx>,
}

impl Page {
    pub(crate) fn new(config: &Config, key: ServiceKey, admin: Arc<AdminCtx>) -> Page {
        let dead_letter_queues = [READ_KEY, WRITE_KEY, EVENT_QUEUE_KEY]
            .iter()
            .map(|k| config.amqp.queue(k))
            .collect();
        Page {
            node: config.node.clone(),
            amqp: config.amqp.clone(),
            key,
            catalog: admin.catalog,
            client_options: ClientOptions::from_config(config, "beds-operator-page"),
            client: tokio::sync::OnceCell::new(),
            dead_letter_queues,
            admin,
        }
    }
}

/// The page's routes, for the admin node's telemetry server.
pub(crate) fn routes(page: Arc<Page>) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/api/series", get(series))
        .route("/lineage", get(lineage_form))
        .route("/lineage/{id}", get(lineage))
        .route("/audit", get(record_form))
        .route("/audit/{template}/{key}", get(record))
        .route("/assets/page.js", get(script))
        .route("/assets/page.css", get(style))
        .with_state(page)
}

fn html(status: StatusCode, body: String) -> Response {
    let mut response = (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        body,
    )
        .into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

async fn script() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("assets/page.js"),
    )
        .into_response()
}

async fn style() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("assets/page.css"),
    )
        .into_response()
}

async fn index(State(page): State<Arc<Page>>) -> Response {
    let peeked = dead_letters::peek(
        &page.amqp,
        &page.key,
        &page.dead_letter_queues,
        LETTERS_SHOWN,
    )
    .await;
    let (queues, error) = match peeked {
        Ok(qs) => (
            qs.into_iter()
                .map(|q| letter_queue(&page.amqp.queue_tag, q))
                .collect(),
            None,
        ),
        Err(e) => (
            Vec::new(),
            Some(format!("the dead-letter queues could not be read: {e}")),
        ),
    };
    let body = [
        html::nodes(&node_rows(&page)),
        html::plots(),
        html::dead_letters(&queues, LETTERS_SHOWN, error.as_deref()),
        html::forms(""),
    ]
    .concat();
    html(
        StatusCode::OK,
        html::layout("Operator page", &page.node, &body),
    )
}

/// A peeked queue as the page shows it, named without the queue tag.
fn letter_queue(tag: &str, q: dead_letters::Peeked) -> LetterQueue {
    LetterQueue {
        queue: q.queue.strip_prefix(tag).unwrap_or(&q.queue).to_string(),
        depth: q.depth,
        letters: q
            .letters
            .into_iter()
            .map(|l| {
                let shown = &l.body[..l.body.len().min(BODY_SHOWN)];
                html::Letter {
                    code: l.code,
                    reason: l.reason,
                    trusted: l.trusted,
                    headers: l.headers,
                    body: String::from_utf8_lossy(shown).into_owned(),
                }
            })
            .collect(),
    }
}

/// `{"now_ms", "window_ms", "series": [{"node", "lane", "points": [[t_ms, per_s, ms]]}]}`:
/// what the script draws.
async fn series(State(page): State<Arc<Page>>) -> Response {
    let body = series_json(&page);
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body.to_string(),
    )
        .into_response()
}

/// The named parameters of a query string.
fn params(query: Option<String>) -> Vec<(String, String)> {
    form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .map(|(k, v)| (k.into_owned(), v.trim().to_string()))
        .collect()
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> &'a str {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map_or("", |(_, v)| v.as_str())
}

async fn lineage_form(page: State<Arc<Page>>, RawQuery(query): RawQuery) -> Response {
    let params = params(query);
    lineage(page, Path(param(&params, "id").to_string())).await
}

async fn lineage(State(page): State<Arc<Page>>, Path(id): Path<String>) -> Response {
    let body = match uuid::Uuid::parse_str(&id) {
        Err(_) => html::lineage(
            &id,
            &[],
            Some(
                "not a message or correlation id: give the UUID of a request or any message of its conversation",
            ),
        ),
        Ok(uuid) => match lineage_rows(&page.admin, uuid).await {
            Ok(rows) => html::lineage(&id, &rows, None),
            Err(e) => html::lineage(&id, &[], Some(&e)),
        },
    };
    let body = [body, html::forms(&id)].concat();
    html(StatusCode::OK, html::layout("Lineage", &page.node, &body))
}

async fn record_form(page: State<Arc<Page>>, RawQuery(query): RawQuery) -> Response {
    let params = params(query);
    let template = param(&params, "template").to_string();
    let key = param(&params, "key").to_string();
    record(page, Path((template, key))).await
}

/// A record's audit trail (when its template is audited) and journal (when journaled).
async fn record(
    State(page): State<Arc<Page>>,
    Path((template, key)): Path<(String, String)>,
) -> Response {
    let title = format!("{template} {key}");
    let meta = match resolve(page.catalog, &template) {
        Ok(meta) => meta,
        Err(e) => {
            let body = [html::notice("record", &title, &e), html::forms("")].concat();
            return html(
                StatusCode::NOT_FOUND,
                html::layout(&title, &page.node, &body),
            );
        }
    };
    let mut body = format!(
        "<section id=\"record\"><h2>{}.{} <code>{}</code></h2></section>",
        esc(meta.domain),
        esc(meta.name),
        esc(&key)
    );
    body.push_str(&if meta.capabilities.audit {
        match audit(&page.admin, meta, &key).await {
            Ok(items) => html::records(
                "audit",
                "Audit trail (newest first)",
                AUDIT_COLUMNS,
                &items,
                None,
            ),
            Err(e) => html::notice("audit", "Audit trail", &e),
        }
    } else {
        html::records(
            "audit",
            "Audit trail",
            &[],
            &[],
            Some("the template does not declare `audit`"),
        )
    });
    body.push_str(&if meta.capabilities.journal {
        match journal(&page, meta, &key).await {
            Ok(items) => html::records(
                "journal",
                "Journal (newest first)",
                JOURNAL_COLUMNS,
                &items,
                None,
            ),
            Err(e) => html::notice("journal", "Journal", &e),
        }
    } else {
        html::records(
            "journal",
            "Journal",
            &[],
            &[],
            Some("the template does not declare `journal`"),
        )
    });
    body.push_str(&html::forms(""));
    html(StatusCode::OK, html::layout(&title, &page.node, &body))
}

/// `domain.template`, or a template name only one domain has.
fn resolve(catalog: &Catalog, name: &str) -> Result<&'static TemplateMeta, String> {
    let all = || {
        catalog
            .domains
            .iter()
            .flat_map(|d| d.templates.iter().copied())
            .filter(|t| !t.internal)
    };
    let found: Vec<_> = match name.split_once('.') {
        Some((domain, template)) => all()
            .filter(|t| t.domain == domain && t.name == template)
            .collect(),
        None => all().filter(|t| t.name == name).collect(),
    };
    match found.as_slice() {
        [one] => Ok(one),
        [] => {
            let known: Vec<String> = all().map(|t| format!("{}.{}", t.domain, t.name)).collect();
            let known: Vec<&str> = known.iter().map(String::as_str).collect();
            Err(format!(
                "no template `{name}`{}; give `domain.template`",
                crate::suggest::did_you_mean(name, &known)
            ))
        }
        many => Err(format!(
            "`{name}` is a template of {} domains; give `domain.template`",
            many.len()
        )),
    }
}

/// The record's versions through a `history` request over AMQP, like any client's.
async fn journal(page: &Page, meta: &TemplateMeta, key: &str) -> Result<Vec<Json>, String> {
    let id = match meta.id {
        IdKind::Uuid7 => Json::from(key),
        IdKind::Sequence => key
            .parse::<i64>()
            .map(Json::from)
            .map_err(|_| format!("`{key}` is not a key of {}: it takes a number", meta.name))?,
    };
    let client = page
        .client
        .get_or_try_init(|| Client::connect(page.client_options.clone()))
        .await
        .map_err(|e| format!("the journal could not be asked for: {e}"))?;
    let mut req = Request::new(meta.domain, meta.name, Op::History);
    req.key = Some(Map::from_iter([("id".to_string(), id)]));
    req.limit = Some(TRAIL_SHOWN);
    let reply = client
        .request(req)
        .await
        .map_err(|e| format!("the journal could not be read: {e}"))?;
    Ok(reply["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|v| {
            json!({
                "version": v["version"],
                "op": v["op"],
                "written_at": v["written_at"],
                "record": v["record"],
            })
        })
        .collect())
}

/// Runs the admin op `op` in process, as the `adm` route would for an admin caller; its
/// error as the text the page shows.
async fn ask(ctx: &AdminCtx, op: &str, fields: Json) -> Result<Json, String> {
    let Json::Object(fields) = fields else {
        unreachable!("op fields are an object")
    };
    let req = AdminRequest {
        v: super::commands::ADMIN_VERSION,
        op: op.to_string(),
        id: Some(uuid::Uuid::now_v7()),
        correlation_id: None,
        causation_id: None,
        depth: None,
        origin: None,
        caller: String::new(),
        fields,
    };
    dispatch(ctx, &req)
        .await
        .map_err(|e| format!("the admin's `{op}` failed: {}", e.message))
}

/// A record's audit trail, newest first, through the admin's `audit` op.
async fn audit(ctx: &AdminCtx, meta: &TemplateMeta, key: &str) -> Result<Vec<Json>, String> {
    let template = format!("{}.{}", meta.domain, meta.name);
    let reply = ask(
        ctx,
        "audit",
        json!({ "template": template, "key": key, "limit": TRAIL_SHOWN }),
    )
    .await?;
    Ok(match reply {
        Json::Array(items) => items,
        mut page => page["records"]
            .take()
            .as_array()
            .cloned()
            .unwrap_or_default(),
    })
}

/// The node table as the admin's diagnostics have it (the `diag` report's nodes).
fn node_rows(page: &Page) -> Vec<html::NodeRow> {
    page.admin
        .nodes
        .diagnostics
        .report()
        .nodes
        .into_iter()
        .map(|n| {
            let lost = n.liveness == Liveness::Lost;
            let health = if lost {
                "lost".to_string()
            } else if n.ready {
                "ok".to_string()
            } else {
                let failed: Vec<String> = n
                    .failed
                    .iter()
                    .map(|(k, why)| format!("{k}: {why}"))
                    .collect();
                format!("not ready: {}", failed.join("; "))
            };
            html::NodeRow {
                healthy: !lost && n.ready,
                health,
                lanes: n
                    .lanes
                    .iter()
                    .map(|l| {
                        (
                            l.lane.clone(),
                            l.state.as_str().to_string(),
                            l.in_flight as u64,
                        )
                    })
                    .collect(),
                node: n.node,
                role: n.role,
                version: n.version,
                last_seen_ms: n.last_seen_ms,
            }
        })
        .collect()
}

/// Every node's lanes' samples: `[at ms, requests/s, p50 ms (the mean when no buckets)]`.
fn series_json(page: &Page) -> Json {
    let nodes = page.admin.nodes.diagnostics.nodes();
    let series: Vec<Json> = nodes
        .entries()
        .flat_map(|entry| {
            entry.lanes.iter().map(|(lane, history)| {
                let points: Vec<Json> = history
                    .samples()
                    .map(|s| {
                        json!([
                            s.at.timestamp_millis(),
                            s.throughput,
                            s.p50_ms.or(s.mean_ms)
                        ])
                    })
                    .collect();
                json!({ "node": entry.last.node, "lane": lane, "points": points })
            })
        })
        .collect();
    json!({
        "now_ms": chrono::Utc::now().timestamp_millis(),
        "window_ms": HISTORY.as_millis() as u64,
        "series": series,
    })
}

/// The conversation of `id` through the admin's `lineage` op, in tree order.
async fn lineage_rows(ctx: &AdminCtx, id: uuid::Uuid) -> Result<Vec<html::LineageRow>, String> {
    let reply = ask(ctx, "lineage", json!({ "message_id": id })).await?;
    let records = match reply {
        Json::Array(items) => Json::Array(items),
        mut page => page["records"].take(),
    };
    let records: Vec<lineage::Record> = serde_json::from_value(records)
        .map_err(|e| format!("the admin's lineage records do not decode: {e}"))?;
    Ok(lineage::tree(&records)
        .into_iter()
        .map(|line| html::LineageRow {
            depth: line.level,
            kind: line.record.kind_of.name().to_string(),
            name: line.record.name.clone(),
            node: line.record.origin.node.clone(),
            outcome: line.record.outcome.clone().unwrap_or_default(),
            offset_ms: line.offset_us as f64 / 1000.0,
            duration_us: line.record.duration_us,
            id: line.record.id.to_string(),
            orphan: line.orphan,
        })
        .collect())
}
