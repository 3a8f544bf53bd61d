//! The invalidation broadcast for each applied write event, for every node's cache.

use serde_json::{Value as Json, json};
use uuid::Uuid;

use crate::envelope::Origin;
use crate::events::{WriteEvent, WriteOp};

/// The routing key (before the queue tag) and body of the invalidation of `event`'s
/// record: the event's version, or null for a delete (nothing newer can be cached).
pub(crate) fn invalidation(event: &WriteEvent, origin: &Origin) -> (String, Json) {
    let key = format!("inv.{}.{}", event.domain, event.template);
    let version = match event.op {
        WriteOp::Delete => Json::Null,
        WriteOp::Create | WriteOp::Update => json!(event.version),
    };
    let body = json!({
        "v": 1,
        "kind": "invalidation",
        "id": Uuid::now_v7().to_string(),
        "correlation_id": event.correlation_id,
        "causation_id": event.id,
        "depth": event.depth + 1,
        "origin": origin,
        "domain": event.domain,
        "template": event.template,
        "key": event.key,
        "version": version,
    });
    (key, body)
}
