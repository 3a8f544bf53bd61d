//! Committed-write events: the contract consumers read from `beds.events`.
//!
//! One [`WriteEvent`] per changed record (cascaded deletes and `set_null` updates included)
//! is written to the outbox in the write's transaction and published after commit by the
//! node's relay, in `seq` order. This module is the contract only: it knows no store.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json};
use uuid::Uuid;

use crate::envelope::Origin;
use crate::value::Timestamp;

/// The envelope version events are written in.
pub const EVENT_VERSION: u32 = 1;

/// What an event says happened to its record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WriteOp {
    Create,
    Update,
    Delete,
}

impl WriteOp {
    pub fn name(self) -> &'static str {
        match self {
            WriteOp::Create => "create",
            WriteOp::Update => "update",
            WriteOp::Delete => "delete",
        }
    }
}

/// The message kind, so events and requests cannot be mistaken for each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    WriteEvent,
}

/// One committed change to one record (see wiki/events.md). Unknown fields are ignored
/// when reading: the contract grows by adding fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WriteEvent {
    pub v: u32,
    pub kind: EventKind,
    /// This event's id (UUIDv7); a republished event keeps it, so consumers dedupe on it.
    pub id: Uuid,
    /// The request's correlation id (its id when it had none).
    pub correlation_id: Uuid,
    /// The id of the request whose write this is (cascaded changes included).
    pub causation_id: Uuid,
    /// The request's depth + 1.
    pub depth: u32,
    pub origin: Origin,
    /// The outbox sequence: increasing per database, in commit order per record.
    pub seq: i64,
    pub domain: String,
    pub template: String,
    pub op: WriteOp,
    /// `{"id": …}`.
    pub key: Map<String, Json>,
    /// The record's version after the change; for a delete, the version it was deleted at.
    pub version: i64,
    pub committed_at: Timestamp,
    /// The record after the change (create, update); `null` for a delete.
    pub after: Option<Json>,
    /// The record before the change (update, delete); `null` for a create.
    pub before: Option<Json>,
    /// Who asked for the write, when known; absent otherwise (audit records read it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller: Option<Caller>,
}

/// Who asked for a write: the calling service (its AMQP `user_id`) and the end user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Caller {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
}

impl Caller {
    /// The caller of a request with this principal; none when nothing is known.
    pub(crate) fn of(principal: &crate::security::Principal) -> Option<Caller> {
        (principal.service.is_some() || principal.subject.is_some()).then(|| Caller {
            service: principal.service.clone(),
            subject: principal.subject.clone(),
        })
    }
}

impl WriteEvent {
    /// `{queue_tag}evt.{domain}.{template}.{op}` on `beds.events`.
    pub fn routing_key(&self, queue_tag: &str) -> String {
        routing_key(queue_tag, &self.domain, &self.template, self.op)
    }
}

/// The routing key of an event of `domain.template` for `op`.
pub fn routing_key(queue_tag: &str, domain: &str, template: &str, op: WriteOp) -> String {
    format!("{queue_tag}evt.{domain}.{template}.{}", op.name())
}

/// Where a write came from: what its events carry of the request.
#[derive(Debug, Clone)]
pub(crate) struct Lineage {
    pub correlation_id: Uuid,
    pub causation_id: Uuid,
    pub depth: u32,
    pub origin: Origin,
    pub caller: Option<Caller>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_reads_and_writes_as_documented() {
        let text = r#"{"v":1,"kind":"write_event","id":"01a22107-12b7-7605-909a-dde25d9a61b3","correlation_id":"01a22107-123e-753f-abe5-97ed5cc2603b","causation_id":"01a22107-123e-753f-abe5-97ed5cc2603b","depth":1,"origin":{"service":"beds","node":"node1","env":"dev"},"seq":2,"domain":"shop","template":"item","op":"update","key":{"id":"01a22107-1152-77db-b7f2-fcb792989be1"},"version":2,"committed_at":"2026-11-28T07:20:41.399303Z","after":{"id":"01a22107-1152-77db-b7f2-fcb792989be1","version":2},"before":{"id":"01a22107-1152-77db-b7f2-fcb792989be1","version":1}}"#;
        let event: WriteEvent = serde_json::from_str(text).unwrap();
        assert_eq!(event.op, WriteOp::Update);
        assert_eq!(event.routing_key("prod_"), "prod_evt.shop.item.update");
        let again: Json = serde_json::to_value(&event).unwrap();
        assert_eq!(again, serde_json::from_str::<Json>(text).unwrap());
    }

    #[test]
    fn a_create_has_no_before_and_a_delete_no_after() {
        let text = r#"{"v":1,"kind":"write_event","id":"01a22107-12b7-7605-909a-dde25d9a61b3","correlation_id":"01a22107-123e-753f-abe5-97ed5cc2603b","causation_id":"01a22107-123e-753f-abe5-97ed5cc2603b","depth":1,"origin":{"service":"beds","node":"n","env":"e"},"seq":3,"domain":"shop","template":"item","op":"delete","key":{"id":7},"version":4,"committed_at":"2026-11-28T07:20:41.399303Z","after":null,"before":{"id":7,"version":4}}"#;
        let event: WriteEvent = serde_json::from_str(text).unwrap();
        assert_eq!(event.after, None);
        assert!(
            serde_json::to_string(&event)
                .unwrap()
                .contains(r#""after":null"#)
        );
    }
}
