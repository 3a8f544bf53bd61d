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

/// One committed change to one record (see wiki/events.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
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
}

impl WriteEvent {
    /// `{queue_tag}evt.{domain}.{template}.{op}` on `beds.events`.
    pub fn routing_key(&self, queue_tag: &str) -> String {
        format!(
            "{queue_tag}evt.{}.{}.{}",
            self.domain,
            self.template,
            self.op.name()
        )
    }
}

/// Where a write came from: what its events carry of the request.
#[derive(Debug, Clone)]
pub(crate) struct Lineage {
    pub correlation_id: Uuid,
    pub causation_id: Uuid,
    pub depth: u32,
    pub origin: Origin,
}
