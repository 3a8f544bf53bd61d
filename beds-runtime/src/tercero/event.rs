//! A write event as published on `beds.events` (`{tag}evt.{domain}.{template}.{op}`).

use serde::Deserialize;
use serde_json::{Map, Value as Json};

use crate::envelope::Origin;

/// The event envelope version this consumer reads.
const EVENT_VERSION: u32 = 1;
const EVENT_KIND: &str = "write_event";

/// The operation an event reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum EventOp {
    Create,
    Update,
    Delete,
}

/// One committed create, update or delete: `before` is set for update and delete,
/// `after` for create and update.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub(crate) struct WriteEvent {
    pub v: u32,
    pub kind: String,
    pub id: String,
    pub correlation_id: Option<String>,
    pub causation_id: Option<String>,
    pub depth: u32,
    pub origin: Option<Origin>,
    pub seq: Option<i64>,
    pub domain: String,
    pub template: String,
    pub op: EventOp,
    pub key: Map<String, Json>,
    pub version: Option<i64>,
    pub committed_at: String,
    pub after: Option<Map<String, Json>>,
    pub before: Option<Map<String, Json>>,
}

/// Why a delivery is not a write event this consumer can apply (it is dead-lettered).
#[derive(Debug, thiserror::Error)]
pub(crate) enum EventError {
    #[error("not a write event: {0}")]
    Json(#[from] serde_json::Error),
    #[error("write event version {0} is not supported; this node reads {EVENT_VERSION}")]
    Version(u32),
    #[error("`kind` is `{0}`, not `{EVENT_KIND}`")]
    Kind(String),
    #[error("a {0:?} event needs its record {1}")]
    Missing(EventOp, &'static str),
}

impl WriteEvent {
    pub fn parse(body: &[u8]) -> Result<WriteEvent, EventError> {
        let e: WriteEvent = serde_json::from_slice(body)?;
        if e.v != EVENT_VERSION {
            return Err(EventError::Version(e.v));
        }
        if e.kind != EVENT_KIND {
            return Err(EventError::Kind(e.kind));
        }
        let needs_after = matches!(e.op, EventOp::Create | EventOp::Update);
        let needs_before = matches!(e.op, EventOp::Update | EventOp::Delete);
        if needs_after && e.after.is_none() {
            return Err(EventError::Missing(e.op, "after"));
        }
        if needs_before && e.before.is_none() {
            return Err(EventError::Missing(e.op, "before"));
        }
        Ok(e)
    }
}
