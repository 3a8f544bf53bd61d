//! Reading a write event off the tercero's queue: the shared contract type
//! ([`crate::events::WriteEvent`]) plus the checks a consumer needs before applying it.

use crate::events::{WriteEvent, WriteOp};

/// The event envelope version this consumer reads.
const EVENT_VERSION: u32 = 1;

/// Why a delivery is not a write event this consumer can apply (it is dead-lettered).
#[derive(Debug, thiserror::Error)]
pub(crate) enum EventError {
    #[error("not a write event: {0}")]
    Json(#[from] serde_json::Error),
    #[error("write event version {0} is not supported; this node reads {EVENT_VERSION}")]
    Version(u32),
    #[error("a {0:?} event needs its record {1}")]
    Missing(WriteOp, &'static str),
}

/// Decodes and checks one delivery (`kind` is checked by the type itself).
pub(crate) fn parse(body: &[u8]) -> Result<WriteEvent, EventError> {
    let e: WriteEvent = serde_json::from_slice(body)?;
    if e.v != EVENT_VERSION {
        return Err(EventError::Version(e.v));
    }
    let needs_after = matches!(e.op, WriteOp::Create | WriteOp::Update);
    let needs_before = matches!(e.op, WriteOp::Update | WriteOp::Delete);
    if needs_after && !e.after.as_ref().is_some_and(serde_json::Value::is_object) {
        return Err(EventError::Missing(e.op, "after"));
    }
    if needs_before && !e.before.as_ref().is_some_and(serde_json::Value::is_object) {
        return Err(EventError::Missing(e.op, "before"));
    }
    Ok(e)
}
