//! Step: the read cache around dispatch. A fetch by id of a cached template, asking for (or
//! defaulting to) `cached`, is answered from the node's cache when an entry at or above
//! `min_version` is there; otherwise the database answers and the record is kept. A
//! committed update or delete drops the record here at once (after commit, before the
//! reply) and queues an invalidation for the other nodes.

use std::time::Duration;

use serde_json::{Map, Value as Json};
use uuid::Uuid;

use super::command::Command;
use crate::cache::{Cache, Invalidation, KIND, Key, SERVICE, id_text};
use crate::envelope::{Consistency, Op, Origin, Request, VERSION};
use crate::error::BedsError;
use crate::meta::TemplateMeta;
use crate::value::Value;

/// What the step decided before dispatch.
pub(crate) enum Lookup {
    /// Served from the cache.
    Hit(Json),
    /// Read from the database, then kept if nothing was invalidated meanwhile.
    Miss { key: Key, ttl: Duration, epoch: u64 },
    /// Not a cached read.
    Bypass,
}

/// Who this node is, for the origin of its invalidations.
#[derive(Debug, Clone)]
pub(crate) struct Sender {
    pub node: String,
    pub env: String,
}

pub(crate) fn lookup(
    cache: &Cache,
    t: &'static TemplateMeta,
    req: &Request,
    command: &Command,
) -> Lookup {
    let (Some(ttl), Command::Fetch(key)) = (t.capabilities.cache_ttl_ms, command) else {
        return Lookup::Bypass;
    };
    // By id only: a fetch by a unique key reads the database (wiki/cache.md says why).
    if key.slot != 0 || req.consistency.unwrap_or(t.capabilities.consistency) != Consistency::Cached
    {
        return Lookup::Bypass;
    }
    let id = match key.values.first() {
        Some(Value::Uuid(u)) => u.to_string(),
        Some(Value::Int(i)) => i.to_string(),
        _ => return Lookup::Bypass,
    };
    let key = Key {
        domain: t.domain,
        template: t.name,
        id,
    };
    let floor = req.min_version.unwrap_or(i64::MIN);
    match cache.get(&key, floor) {
        Some(entry) => Lookup::Hit(entry.record.clone()),
        None => Lookup::Miss {
            epoch: cache.epoch(),
            key,
            ttl: Duration::from_millis(ttl),
        },
    }
}

/// After dispatch: keeps a record read on a miss; after a committed write of a cached
/// template, drops the record and broadcasts the invalidation.
pub(crate) fn after(
    cache: &Cache,
    sender: &Sender,
    t: &'static TemplateMeta,
    op: Op,
    req: &Request,
    lookup: Lookup,
    result: &Result<Json, BedsError>,
) {
    let Ok(reply) = result else { return };
    if let Lookup::Miss { key, ttl, epoch } = lookup {
        if let Some(version) = reply.get("version").and_then(Json::as_i64) {
            cache.keep(key, version, reply.clone(), ttl, epoch);
        }
        return;
    }
    // A create has nothing cached to drop (misses are not cached).
    if t.capabilities.cache_ttl_ms.is_none() || !matches!(op, Op::Update | Op::Delete) {
        return;
    }
    let Some(id) = reply.get("id") else { return };
    let Some(text) = id_text(id) else { return };
    cache.invalidate(&Key {
        domain: t.domain,
        template: t.name,
        id: text,
    });
    let mut key = Map::new();
    key.insert("id".into(), id.clone());
    cache.broadcast(Invalidation {
        v: VERSION,
        kind: KIND.into(),
        id: Uuid::now_v7(),
        correlation_id: req.conversation(),
        causation_id: req.id,
        depth: req.depth + 1,
        origin: Origin {
            service: SERVICE.into(),
            node: sender.node.clone(),
            env: sender.env.clone(),
        },
        domain: t.domain.into(),
        template: t.name.into(),
        key,
        // A delete's reply has no version: the record is gone.
        version: reply.get("version").and_then(Json::as_i64),
    });
}
