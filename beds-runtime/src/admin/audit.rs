//! The `audit` capability's admin side (wiki/audit.md): every committed write of an
//! audited template, read from its write event, kept append-only in `beds_audit`, and the
//! `audit` op that reads a record's trail.
//!
//! Complete because each link is: the event is written to the outbox in the write's own
//! transaction, the relay publishes it at least once after commit, the admin's queue is
//! durable, and a delivery is acked only after its row committed. Exactly once because the
//! row is keyed by the event's id: a redelivery inserts nothing.

use std::collections::HashSet;
use std::sync::Arc;

use lapin::Channel;
use lapin::message::Delivery;
use lapin::options::BasicNackOptions;
use serde_json::{Map, Value as Json, json};
use sqlx::Row;
use tokio_util::sync::CancellationToken;

use super::request::AdminRequest;
use super::store::AdminStore;
use crate::catalog::Catalog;
use crate::config::AmqpConfig;
use crate::error::{BedsError, ErrorCode};
use crate::events::{WriteEvent, WriteOp};
use crate::ingress::settle::{ack, dead_letter_to};
use crate::meta::TemplateMeta;
use crate::node::consumer::Handler;
use crate::store::{Dialect, until_written};
use crate::suggest::closest;
use crate::transport::publish::CONFIRM_TIMEOUT;
use crate::transport::signing::{Purpose, ServiceKey};
use crate::transport::topology;

/// The admin's audit queue, before the queue tag.
pub const AUDIT_KEY: &str = "audit";
/// Records an `audit` op returns when it names no `limit`.
pub const DEFAULT_LIMIT: u32 = 50;
/// The most records one `audit` op returns.
pub const MAX_LIMIT: u32 = 500;

/// The templates of `catalog` that declare `audit`.
pub fn audited(catalog: &Catalog) -> Vec<&'static TemplateMeta> {
    catalog
        .templates()
        .map(|(_, t)| t)
        .filter(|t| t.capabilities.audit)
        .collect()
}

/// The bindings (before the queue tag) of the audit queue: every event of each audited
/// template.
pub fn bindings(catalog: &Catalog) -> Vec<String> {
    audited(catalog)
        .iter()
        .map(|t| format!("evt.{}.{}.*", t.domain, t.name))
        .collect()
}

/// Declares the durable audit queue `{tag}audit` (with its DLQ) bound by each of
/// `bindings`. Every node that publishes events declares it too, so the events of audited
/// templates wait in it from the first write, whether or not an admin runs yet.
pub(crate) async fn declare(
    channel: &Channel,
    amqp: &AmqpConfig,
    bindings: &[String],
) -> lapin::Result<()> {
    let Some((first, rest)) = bindings.split_first() else {
        return Ok(());
    };
    topology::declare_events(channel, amqp, AUDIT_KEY, first).await?;
    for binding in rest {
        topology::bind(channel, amqp, AUDIT_KEY, binding).await?;
    }
    Ok(())
}

/// Why a template name cannot be audited; each says what to write instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuditNameError {
    #[error("no template `{name}`{}; audited templates: {audited}", mean(.suggestion))]
    Unknown {
        name: String,
        suggestion: Option<String>,
        audited: String,
    },
    #[error("`{name}` is a template of several domains ({candidates}); write `domain.{name}`")]
    Ambiguous { name: String, candidates: String },
    #[error(
        "`{name}` does not declare `capabilities: {{ audit: true }}`, so it has no audit trail; audited templates: {audited}"
    )]
    NotAudited { name: String, audited: String },
}

fn mean(suggestion: &Option<String>) -> String {
    suggestion
        .as_ref()
        .map_or_else(String::new, |s| format!(" (did you mean `{s}`?)"))
}

/// The audited template `name` names: `domain.template`, or `template` when one domain
/// alone has it.
pub fn resolve(catalog: &Catalog, name: &str) -> Result<&'static TemplateMeta, AuditNameError> {
    let audited_names = || {
        let names: Vec<String> = audited(catalog)
            .iter()
            .map(|t| format!("{}.{}", t.domain, t.name))
            .collect();
        if names.is_empty() {
            "none".to_string()
        } else {
            names.join(", ")
        }
    };
    let matches: Vec<&'static TemplateMeta> = catalog
        .templates()
        .map(|(_, t)| t)
        .filter(|t| !t.internal && (format!("{}.{}", t.domain, t.name) == name || t.name == name))
        .collect();
    let t = match matches.as_slice() {
        [one] => *one,
        [] => {
            let known: Vec<String> = catalog
                .templates()
                .filter(|(_, t)| !t.internal)
                .flat_map(|(_, t)| [format!("{}.{}", t.domain, t.name), t.name.to_string()])
                .collect();
            let known: Vec<&str> = known.iter().map(String::as_str).collect();
            return Err(AuditNameError::Unknown {
                name: name.to_string(),
                suggestion: closest(name, &known).map(str::to_string),
                audited: audited_names(),
            });
        }
        many => {
            return Err(AuditNameError::Ambiguous {
                name: name.to_string(),
                candidates: many
                    .iter()
                    .map(|t| format!("{}.{}", t.domain, t.name))
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
    };
    if !t.capabilities.audit {
        return Err(AuditNameError::NotAudited {
            name: format!("{}.{}", t.domain, t.name),
            audited: audited_names(),
        });
    }
    Ok(t)
}

/// The audit table: one row per committed write of an audited template, keyed by its
/// write event's id, so a redelivered event inserts nothing. Rows are only ever inserted.
pub(crate) fn ddl(d: &dyn Dialect) -> Vec<String> {
    let [key, text, time] = d.idempotency_types();
    let int = d.key_type(crate::meta::IdKind::Sequence);
    let q = |s: &str| d.quote(s);
    vec![
        format!(
            "CREATE TABLE IF NOT EXISTS {} (\n  {} {key} NOT NULL PRIMARY KEY,\n  {} {key} NOT NULL,\n  {} {key} NOT NULL,\n  {} {key} NOT NULL,\n  {} {key} NOT NULL,\n  {} {int} NOT NULL,\n  {} {int} NOT NULL,\n  {} {time} NOT NULL,\n  {} {key},\n  {} {key},\n  {} {key} NOT NULL,\n  {} {key} NOT NULL,\n  {} {text} NOT NULL,\n  {} {time} NOT NULL\n){}",
            q("beds_audit"),
            q("id"),
            q("domain"),
            q("template"),
            q("record_key"),
            q("op"),
            q("version"),
            q("seq"),
            q("committed_at"),
            q("service"),
            q("subject"),
            q("request_id"),
            q("correlation_id"),
            q("changes"),
            q("recorded_at"),
            d.table_options()
        ),
        format!(
            "CREATE INDEX IF NOT EXISTS {} ON {} ({}, {}, {}, {})",
            q("beds_audit_record_idx"),
            q("beds_audit"),
            q("domain"),
            q("template"),
            q("record_key"),
            q("seq"),
        ),
    ]
}

/// A record's key as the audit table keeps it: a string id as it is, any other as JSON.
fn key_text(key: &Json) -> String {
    match key {
        Json::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// What a write changed: for an update, only the fields that changed (before and after;
/// the version is recorded apart); the whole record for a create (after) or delete (before).
pub(crate) fn changes(event: &WriteEvent) -> Json {
    match event.op {
        WriteOp::Create => json!({ "after": event.after }),
        WriteOp::Delete => json!({ "before": event.before }),
        WriteOp::Update => {
            let empty = Map::new();
            let object = |v: &Option<Json>| v.as_ref().and_then(Json::as_object).cloned();
            let before = object(&event.before).unwrap_or_else(|| empty.clone());
            let after = object(&event.after).unwrap_or(empty);
            let (mut was, mut is) = (Map::new(), Map::new());
            let names: Vec<&String> = after
                .keys()
                .chain(before.keys().filter(|k| !after.contains_key(*k)))
                .collect();
            for name in names {
                let (old, new) = (before.get(name), after.get(name));
                if name != "version" && old != new {
                    was.insert(name.clone(), old.cloned().unwrap_or(Json::Null));
                    is.insert(name.clone(), new.cloned().unwrap_or(Json::Null));
                }
            }
            json!({ "before": was, "after": is })
        }
    }
}

/// The consumer of `{queue_tag}audit`.
#[derive(Debug)]
pub(crate) struct Auditor {
    pub amqp: AmqpConfig,
    pub store: AdminStore,
    pub key: ServiceKey,
    /// The audited templates, as (domain, template).
    pub audited: HashSet<(&'static str, &'static str)>,
    pub bindings: Vec<String>,
    /// The node's stop: a record the database refuses is retried until it fires.
    pub stop: CancellationToken,
}

impl Handler for Auditor {
    async fn declare(&self, channel: &Channel) -> lapin::Result<()> {
        declare(channel, &self.amqp, &self.bindings).await
    }

    async fn handle(self: Arc<Self>, channel: Channel, delivery: Delivery) {
        if let Err(why) = self
            .key
            .verify(Purpose::WriteEvent, &delivery.properties, &delivery.data)
        {
            let error = BedsError::new(
                ErrorCode::UntrustedOrigin,
                format!("a write event not signed by a node of this deployment: {why}"),
            );
            return self.poison(&channel, &delivery, error).await;
        }
        let event = match crate::tercero::parse(&delivery.data) {
            Ok(event) => event,
            Err(e) => {
                let error = BedsError::new(ErrorCode::Undecodable, e.to_string());
                return self.poison(&channel, &delivery, error).await;
            }
        };
        // A binding of a template no longer audited stays until the DBA removes it.
        if !self
            .audited
            .contains(&(event.domain.as_str(), event.template.as_str()))
        {
            return ack(&delivery).await;
        }
        let record = || insert(&self.store, &event);
        if until_written(&self.stop, "recording an audit record", record)
            .await
            .is_none()
        {
            return;
        }
        ack(&delivery).await;
    }
}

impl Auditor {
    /// Dead-letters a delivery that is no write event of this deployment to the audit
    /// queue's DLQ (reason in headers), then acks it; if that publish fails it is requeued,
    /// never dropped.
    async fn poison(&self, channel: &Channel, delivery: &Delivery, error: BedsError) {
        tracing::warn!(code = ?error.code, reason = %error.message, "dead-lettering a delivery on the audit queue");
        let queue = self.amqp.queue(AUDIT_KEY);
        if dead_letter_to(channel, &self.key, delivery, &error, 1, &queue)
            .await
            .is_ok()
        {
            return ack(delivery).await;
        }
        let nack = delivery.nack(BasicNackOptions {
            requeue: true,
            ..BasicNackOptions::default()
        });
        if !matches!(tokio::time::timeout(CONFIRM_TIMEOUT, nack).await, Ok(Ok(_))) {
            tracing::error!("requeueing a poison audit delivery failed; it will be redelivered");
        }
    }
}

/// Inserts the audit record of `event`; an id already recorded is left as it is.
async fn insert(store: &AdminStore, event: &WriteEvent) -> Result<(), sqlx::Error> {
    let d = store.dialect();
    let q = |s: &str| d.quote(s);
    let columns = [
        "id",
        "domain",
        "template",
        "record_key",
        "op",
        "version",
        "seq",
        "committed_at",
        "service",
        "subject",
        "request_id",
        "correlation_id",
        "changes",
        "recorded_at",
    ];
    let insert = format!(
        "INSERT INTO {} ({}) VALUES ({})",
        q("beds_audit"),
        columns.map(q).join(", "),
        vec!["?"; columns.len()].join(", ")
    );
    let sql = store.sql(d.keep_existing(&insert, &q("id")));
    let caller = event.caller.as_ref();
    sqlx::query(sql)
        .bind(event.id.to_string())
        .bind(event.domain.clone())
        .bind(event.template.clone())
        .bind(key_text(event.key.get("id").unwrap_or(&Json::Null)))
        .bind(event.op.name())
        .bind(event.version)
        .bind(event.seq)
        .bind(crate::value::format_timestamp(&event.committed_at))
        .bind(caller.and_then(|c| c.service.clone()))
        .bind(caller.and_then(|c| c.subject.clone()))
        .bind(event.causation_id.to_string())
        .bind(event.correlation_id.to_string())
        .bind(changes(event).to_string())
        .bind(crate::value::format_timestamp(&crate::value::now()))
        .execute(store.pool())
        .await
        .map(drop)
}

/// The `audit` op: `{template, key, limit?, cursor?}` -> `{records, next}`, newest first;
/// `next` is the cursor of the following page, or null after the last.
pub(crate) async fn query(
    store: &AdminStore,
    catalog: &'static Catalog,
    req: &AdminRequest,
) -> Result<Json, BedsError> {
    let name: String = req.required("template")?;
    let t = resolve(catalog, &name)
        .map_err(|e| BedsError::new(ErrorCode::UnknownTemplate, e.to_string()))?;
    let key: Json = req.required("key")?;
    let limit: u32 = req.field("limit")?.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(BedsError::detail(
            "limit",
            crate::error::DetailCode::AboveMax,
            format!("`limit` is {limit}; ask for 1 to {MAX_LIMIT} records per page"),
        ));
    }
    let cursor = match req.field::<String>("cursor")? {
        None => None,
        Some(text) => Some(parse_cursor(&text).ok_or_else(|| {
            BedsError::detail(
                "cursor",
                crate::error::DetailCode::InvalidFormat,
                "`cursor` is not one this admin returned; pass the `next` of the previous page",
            )
        })?),
    };
    let d = store.dialect();
    let q = |s: &str| d.quote(s);
    let after = if cursor.is_some() {
        format!(
            " AND ({seq} < ? OR ({seq} = ? AND {id} < ?))",
            seq = q("seq"),
            id = q("id")
        )
    } else {
        String::new()
    };
    let sql = format!(
        "SELECT {} FROM {} WHERE {} = ? AND {} = ? AND {} = ?{after} ORDER BY {} DESC, {} DESC LIMIT {limit}",
        [
            "id",
            "op",
            "version",
            "seq",
            "committed_at",
            "service",
            "subject",
            "request_id",
            "correlation_id",
            "changes",
            "recorded_at"
        ]
        .map(q)
        .join(", "),
        q("beds_audit"),
        q("domain"),
        q("template"),
        q("record_key"),
        q("seq"),
        q("id"),
    );
    let mut statement = sqlx::query(store.sql(sql))
        .bind(t.domain)
        .bind(t.name)
        .bind(key_text(&key));
    if let Some((seq, id)) = &cursor {
        statement = statement.bind(*seq).bind(*seq).bind(id.clone());
    }
    let rows = statement.fetch_all(store.pool()).await.map_err(|e| {
        tracing::warn!(error = %e, "reading audit records failed");
        BedsError::new(
            ErrorCode::DatabaseUnavailable,
            format!("the admin database did not answer: {e}"),
        )
    })?;
    let mut records = Vec::with_capacity(rows.len());
    let mut last = None;
    for row in &rows {
        let record = record(t, &key, row).map_err(|e| {
            tracing::error!(error = %e, "an audit row could not be read");
            BedsError::new(ErrorCode::Internal, "an audit row could not be read")
        })?;
        last = Some((
            row.try_get::<i64, _>("seq").unwrap_or_default(),
            record["id"].clone(),
        ));
        records.push(record);
    }
    let next = match last {
        Some((seq, Json::String(id))) if records.len() == limit as usize => {
            Json::from(format!("{seq}:{id}"))
        }
        _ => Json::Null,
    };
    Ok(json!({ "records": records, "next": next }))
}

/// `{seq}:{event id}`.
fn parse_cursor(text: &str) -> Option<(i64, String)> {
    let (seq, id) = text.split_once(':')?;
    let id = uuid::Uuid::parse_str(id).ok()?;
    Some((seq.parse().ok()?, id.to_string()))
}

/// One audit row as the `audit` op returns it.
fn record(
    t: &TemplateMeta,
    key: &Json,
    row: &sqlx::any::AnyRow,
) -> Result<Json, Box<dyn std::error::Error + Send + Sync>> {
    let text = |name: &str| row.try_get::<String, _>(name);
    let service: Option<String> = row.try_get("service")?;
    let subject: Option<String> = row.try_get("subject")?;
    let caller = if service.is_none() && subject.is_none() {
        Json::Null
    } else {
        json!({ "service": service, "subject": subject })
    };
    Ok(json!({
        "id": text("id")?,
        "domain": t.domain,
        "template": t.name,
        "key": { "id": key },
        "op": text("op")?,
        "version": row.try_get::<i64, _>("version")?,
        "seq": row.try_get::<i64, _>("seq")?,
        "committed_at": text("committed_at")?,
        "caller": caller,
        "request_id": text("request_id")?,
        "correlation_id": text("correlation_id")?,
        "changes": serde_json::from_str::<Json>(&text("changes")?)?,
        "recorded_at": text("recorded_at")?,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(op: &str, before: Json, after: Json) -> WriteEvent {
        crate::tercero::parse(
            json!({
                "v": 1, "kind": "write_event", "id": "01a22107-12b7-7605-909a-dde25d9a61b3",
                "correlation_id": "01a22107-123e-753f-abe5-97ed5cc2603b",
                "causation_id": "01a22107-123e-753f-abe5-97ed5cc2603b", "depth": 1,
                "origin": {"service": "beds", "node": "n", "env": "test"}, "seq": 4,
                "domain": "d", "template": "t", "op": op, "key": {"id": 7}, "version": 2,
                "committed_at": "2026-01-01T00:00:00Z", "before": before, "after": after,
            })
            .to_string()
            .as_bytes(),
        )
        .unwrap()
    }

    #[test]
    fn an_update_records_only_the_fields_it_changed() {
        let e = event(
            "update",
            json!({"id": 7, "version": 1, "name": "a", "bio": null, "kept": 1}),
            json!({"id": 7, "version": 2, "name": "b", "bio": "x", "kept": 1}),
        );
        assert_eq!(
            changes(&e),
            json!({"before": {"name": "a", "bio": null}, "after": {"name": "b", "bio": "x"}})
        );
        let create = event("create", Json::Null, json!({"id": 7, "version": 1}));
        assert_eq!(changes(&create), json!({"after": {"id": 7, "version": 1}}));
        let delete = event("delete", json!({"id": 7, "version": 2}), Json::Null);
        assert_eq!(changes(&delete), json!({"before": {"id": 7, "version": 2}}));
    }

    #[test]
    fn cursors_read_back_and_strangers_are_refused() {
        let id = "01a22107-12b7-7605-909a-dde25d9a61b3";
        assert_eq!(
            parse_cursor(&format!("12:{id}")),
            Some((12, id.to_string()))
        );
        for bad in ["", "12", "x:y", &format!("x:{id}"), "12:not-a-uuid"] {
            assert_eq!(parse_cursor(bad), None, "{bad}");
        }
        assert_eq!(key_text(&json!("abc")), "abc");
        assert_eq!(key_text(&json!(7)), "7");
    }
}
