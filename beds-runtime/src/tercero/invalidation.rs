//! The invalidation broadcast for each applied write event, for every node's cache.

use uuid::Uuid;

use crate::cache::{Invalidation, KIND};
use crate::envelope::Origin;
use crate::events::{WriteEvent, WriteOp};

/// The invalidation of `event`'s record: the event's version, or none for a delete
/// (nothing newer can be cached).
pub(crate) fn invalidation(event: &WriteEvent, origin: &Origin) -> Invalidation {
    Invalidation {
        v: 1,
        kind: KIND.to_string(),
        id: Uuid::now_v7(),
        correlation_id: event.correlation_id,
        causation_id: event.id,
        depth: event.depth + 1,
        origin: origin.clone(),
        domain: event.domain.clone(),
        template: event.template.clone(),
        key: event.key.clone(),
        version: match event.op {
            WriteOp::Delete => None,
            WriteOp::Create | WriteOp::Update => Some(event.version),
        },
    }
}
