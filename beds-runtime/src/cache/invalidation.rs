//! The invalidation message: what a node (best-effort, at once) and the tercero role (from
//! the durable write events, guaranteed) publish after a committed write, so that every
//! node drops its cached copy of the record. The contract is in wiki/cache.md.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json};
use uuid::Uuid;

use crate::envelope::Origin;

/// The `kind` every invalidation carries.
pub const KIND: &str = "invalidation";

/// The routing-key segment (after the queue tag) of invalidations.
pub const KEY_PREFIX: &str = "inv.";

/// One record changed: drop it from the cache.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Invalidation {
    pub v: u32,
    /// Always [`KIND`].
    pub kind: String,
    /// This message's id (UUIDv7).
    pub id: Uuid,
    /// The write's conversation.
    pub correlation_id: Uuid,
    /// The write request's (or write event's) id.
    pub causation_id: Uuid,
    pub depth: u32,
    pub origin: Origin,
    pub domain: String,
    pub template: String,
    /// The record's key, `{"id": …}`.
    pub key: Map<String, Json>,
    /// The committed version; `None` for a delete.
    pub version: Option<i64>,
}

impl Invalidation {
    /// The routing key on `beds.events`: `{tag}inv.{domain}.{template}`.
    pub fn routing_key(&self, queue_tag: &str) -> String {
        format!("{queue_tag}{KEY_PREFIX}{}.{}", self.domain, self.template)
    }

    /// The binding that receives every invalidation of a queue tag.
    pub fn binding(queue_tag: &str) -> String {
        format!("{queue_tag}{KEY_PREFIX}#")
    }
}
