//! The `mig.bulk` route (wiki/migration.md): bulk import and export of a template as
//! NDJSON records, answered by segundo.
//!
//! A request is `{"v":1,"op":"<op>", ...op fields}` published to `beds.events` with routing
//! key `{queue_tag}mig.bulk`, `reply_to` and `correlation_id`; the reply has the data
//! reply's shape. The caller is the AMQP `user_id` and must hold the role `mig` or `admin`
//! in `security.service_roles`. Ops:
//! - `begin {job, template, batch}`: creates the job (or returns it) — its progress.
//! - `import {job, template, first_line, lines}`: validates and applies one batch.
//! - `job {job, after?, limit?}`: the job's progress and its rejected lines.
//! - `export {template, after?, limit?}`: a page of records in key order and the cursor.

use std::sync::Arc;

use lapin::Channel;
use lapin::message::Delivery;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value as Json, json};
use uuid::Uuid;

use super::Parts;
use crate::envelope::Origin;
use crate::error::{BedsError, DetailCode, ErrorCode};
use crate::events::{Caller, Lineage};
use crate::ingress::service::{ServiceRequest, ServiceRoute};
use crate::meta::TemplateMeta;
use crate::node::consumer::Handler;
use crate::store::bulk::Line;
use crate::transport::names::{MIG_BULK_KEY, MIG_VERSION};
use crate::transport::topology;
use crate::value;

/// The roles (`security.service_roles`) that may use the route.
pub const MIG_ROLES: &[&str] = &["mig", "admin"];
/// The route, as its checks and errors name it.
const MIG_ROUTE: ServiceRoute = ServiceRoute {
    called: "a mig",
    name: "mig",
    reader: "segundo",
    version: MIG_VERSION,
    roles: MIG_ROLES,
    action: "import or export",
    grant: "`mig` (or `admin`)",
};
/// The ops the route answers.
pub const OPS: &[&str] = &["begin", "import", "job", "export"];
/// The most lines one `import` batch may carry.
pub const MAX_BATCH: i64 = 5_000;
/// The most records or rejected lines one page holds.
pub const MAX_PAGE: i64 = 5_000;

/// One `mig.bulk` request: the op, the lineage the caller set and the op's fields.
#[derive(Debug, Deserialize)]
struct MigRequest {
    v: u32,
    op: String,
    #[serde(default)]
    id: Option<Uuid>,
    #[serde(default)]
    correlation_id: Option<Uuid>,
    #[serde(default)]
    depth: Option<u32>,
    #[serde(flatten)]
    fields: Map<String, Json>,
}

impl ServiceRequest for MigRequest {
    fn version(&self) -> u32 {
        self.v
    }

    fn ids(&mut self) -> (&mut Option<Uuid>, Option<Uuid>) {
        (&mut self.id, self.correlation_id)
    }
}

impl MigRequest {
    fn field<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, BedsError> {
        match self.fields.get(name) {
            None | Some(Json::Null) => Ok(None),
            Some(v) => serde_json::from_value(v.clone()).map(Some).map_err(|e| {
                BedsError::detail(
                    name,
                    DetailCode::WrongType,
                    format!("`{name}` of op `{}`: {e}", self.op),
                )
            }),
        }
    }

    fn required<T: DeserializeOwned>(&self, name: &str) -> Result<T, BedsError> {
        self.field(name)?.ok_or_else(|| {
            BedsError::detail(
                name,
                DetailCode::Missing,
                format!("op `{}` needs `{name}`", self.op),
            )
        })
    }
}

/// The consumer of `{queue_tag}mig.bulk`.
pub(crate) struct Bulk {
    pub parts: Parts,
}

impl Handler for Bulk {
    async fn declare(&self, channel: &Channel) -> lapin::Result<()> {
        topology::declare(channel, &self.parts.config.amqp, &[MIG_BULK_KEY]).await
    }

    async fn handle(self: Arc<Self>, channel: Channel, delivery: Delivery) {
        tracing::debug!(bytes = delivery.data.len(), "mig request");
        let ingress = &self.parts.ingress;
        MIG_ROUTE
            .serve(
                &channel,
                &ingress.signer,
                &ingress.security,
                &delivery,
                async |req: MigRequest, caller, correlation| {
                    self.run(&req, &caller, correlation).await
                },
            )
            .await;
    }
}

impl Bulk {
    /// Runs the op (the route checked version and caller).
    async fn run(
        &self,
        req: &MigRequest,
        caller: &str,
        correlation: Uuid,
    ) -> Result<Json, BedsError> {
        match req.op.as_str() {
            "begin" => self.begin(req).await,
            "import" => self.import(req, caller, correlation).await,
            "job" => self.job(req).await,
            "export" => self.export(req).await,
            other => Err(BedsError::new(
                ErrorCode::UnknownOperation,
                format!(
                    "unknown mig op `{other}`{}; segundo answers {}",
                    crate::suggest::did_you_mean(other, OPS),
                    OPS.join(", ")
                ),
            )),
        }
    }

    fn template(&self, req: &MigRequest) -> Result<&'static TemplateMeta, BedsError> {
        let name: String = req.required("template")?;
        let found: Vec<&'static TemplateMeta> = self
            .parts
            .catalog
            .templates()
            .map(|(_, t)| t)
            .filter(|t| {
                !t.internal && (format!("{}.{}", t.domain, t.name) == name || t.name == name)
            })
            .collect();
        match found.as_slice() {
            [one] => Ok(one),
            [] => Err(BedsError::new(
                ErrorCode::UnknownTemplate,
                format!("no template `{name}`; name it `domain.template`"),
            )),
            _ => Err(BedsError::new(
                ErrorCode::UnknownTemplate,
                format!("`{name}` is a template of several domains; name it `domain.template`"),
            )),
        }
    }

    async fn begin(&self, req: &MigRequest) -> Result<Json, BedsError> {
        let t = self.template(req)?;
        let job: String = req.required("job")?;
        let batch: i64 = req.required("batch")?;
        if !(1..=MAX_BATCH).contains(&batch) {
            return Err(BedsError::detail(
                "batch",
                DetailCode::AboveMax,
                format!("`batch` is {batch}; send 1 to {MAX_BATCH} lines per batch"),
            ));
        }
        let job = self
            .parts
            .store
            .bulk_begin(&job, &format!("{}.{}", t.domain, t.name), batch)
            .await?;
        Ok(job.to_json())
    }

    async fn import(
        &self,
        req: &MigRequest,
        caller: &str,
        correlation: Uuid,
    ) -> Result<Json, BedsError> {
        let t = self.template(req)?;
        let job: String = req.required("job")?;
        let first: i64 = req.required("first_line")?;
        let lines: Vec<Json> = req.required("lines")?;
        if lines.len() as i64 > MAX_BATCH {
            return Err(BedsError::detail(
                "lines",
                DetailCode::AboveMax,
                format!("{} lines; a batch holds at most {MAX_BATCH}", lines.len()),
            ));
        }
        let patterns = &self.parts.ingress.patterns;
        let lines = lines
            .iter()
            .map(|line| self.line(t, line, patterns))
            .collect();
        let lineage = self
            .parts
            .ingress
            .ctx
            .events()
            .map(|origin: &Origin| Lineage {
                correlation_id: correlation,
                causation_id: req.id.unwrap_or(correlation),
                depth: req.depth.unwrap_or(0).saturating_add(1),
                origin: origin.clone(),
                caller: Some(Caller {
                    service: Some(caller.to_string()),
                    subject: None,
                }),
            });
        let applied = self
            .parts
            .store
            .bulk_apply(t, &job, first, lines, lineage.as_ref())
            .await?;
        Ok(json!({
            "accepted": applied.accepted,
            "rejected": applied.rejected,
            "replayed": applied.replayed,
            "job": applied.job.to_json(),
        }))
    }

    /// One line, validated with the rules of a `create` (wiki/migration.md says what is
    /// kept of `id`, `version` and server-set fields).
    fn line(&self, t: &'static TemplateMeta, line: &Json, patterns: &value::Patterns) -> Line {
        let parsed;
        let record = match line {
            Json::String(text) => match serde_json::from_str::<Json>(text) {
                Ok(v) => {
                    parsed = v;
                    &parsed
                }
                Err(e) => {
                    return Line::Rejected(BedsError::new(
                        ErrorCode::MalformedJson,
                        format!("not JSON: {e}"),
                    ));
                }
            },
            other => other,
        };
        let Json::Object(record) = record else {
            return Line::Rejected(BedsError::new(
                ErrorCode::InvalidInput,
                "a line must be one JSON object: a record",
            ));
        };
        let checked = value::import_values(t, record, patterns).and_then(|imported| {
            value::check_rules(t, &imported.values)?;
            let tokens = value::derive_tokens(t, t.fields.iter().zip(&imported.values), patterns)?;
            Ok((imported, tokens))
        });
        match checked {
            Ok((imported, tokens)) => Line::Record { imported, tokens },
            Err(e) => Line::Rejected(e),
        }
    }

    async fn job(&self, req: &MigRequest) -> Result<Json, BedsError> {
        let name: String = req.required("job")?;
        let after: i64 = req.field("after")?.unwrap_or(0);
        let limit = page_limit(req)?;
        let store = &self.parts.store;
        let job = store
            .bulk_job(&name)
            .await?
            .ok_or_else(|| BedsError::new(ErrorCode::NotFound, format!("no bulk job `{name}`")))?;
        let rejects = store.bulk_rejects(&name, after, limit).await?;
        let next = match rejects.last() {
            Some(last) if rejects.len() as i64 == limit => Json::from(last.line),
            _ => Json::Null,
        };
        let rejects: Vec<Json> = rejects
            .into_iter()
            .map(|r| json!({"line": r.line, "code": r.code, "message": r.message}))
            .collect();
        let mut out = job.to_json();
        out["rejects"] = Json::from(rejects);
        out["next"] = next;
        Ok(out)
    }

    async fn export(&self, req: &MigRequest) -> Result<Json, BedsError> {
        let t = self.template(req)?;
        let limit = page_limit(req)?;
        let after = match req.fields.get("after") {
            None | Some(Json::Null) => None,
            Some(j) => Some(value::id_value(t.id, j).map_err(|m| {
                BedsError::detail("after", DetailCode::InvalidFormat, format!("`after` {m}"))
            })?),
        };
        let items = self.parts.store.list(t, limit as u32, after).await?;
        let next = match items.last() {
            Some(last) if items.len() as i64 == limit => {
                last.get("id").cloned().unwrap_or(Json::Null)
            }
            _ => Json::Null,
        };
        Ok(json!({ "items": items, "next": next }))
    }
}

/// `limit` of a page: 1 to [`MAX_PAGE`], 1000 when absent.
fn page_limit(req: &MigRequest) -> Result<i64, BedsError> {
    let limit: i64 = req.field("limit")?.unwrap_or(1_000);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(BedsError::detail(
            "limit",
            DetailCode::AboveMax,
            format!("`limit` is {limit}; ask for 1 to {MAX_PAGE}"),
        ));
    }
    Ok(limit)
}
