//! Step: the read cache around dispatch. A fetch by id of a cached template, asking for (or
//! defaulting to) `cached`, is answered from the node's cache when an entry at or above
//! `min_version` is there; otherwise the database answers and the record is kept. A
//! committed update or delete drops the record here at once (after commit, before the
//! reply) and queues an invalidation for the other nodes.
//!
//! A named query declaring `cache: { ttl }` is answered from the node's cache when its
//! result for the same parameters, cursor and limit is there, younger than the TTL, and
//! no template it reads has been invalidated since (generations, wiki/cache.md). Any
//! committed write of a template a cached query reads (creates included) bumps its
//! generation here and is broadcast.

use std::time::Duration;

use serde_json::{Map, Value as Json};
use uuid::Uuid;

use super::command::Command;
use crate::cache::{Cache, Invalidation, KIND, Key, id_text};
use crate::catalog::Catalog;
use crate::envelope::{Consistency, Op, Request, VERSION};
use crate::error::BedsError;
use crate::lineage::{Lineage, Record, RecordType};
use crate::meta::{QueryMeta, TemplateMeta};
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

/// What the step decided before a named query.
pub(crate) enum QueryLookup {
    /// Served from the cache.
    Hit(Json),
    /// Read from the database, then kept with the generations read before.
    Miss {
        key: String,
        generations: Vec<u64>,
        ttl: Duration,
    },
    /// Not a cached query, or a `strong` request.
    Bypass,
}

pub(crate) fn query_lookup(cache: &Cache, q: &'static QueryMeta, req: &Request) -> QueryLookup {
    let Some(ttl) = q.cache_ttl_ms else {
        return QueryLookup::Bypass;
    };
    if req.consistency == Some(Consistency::Strong) {
        return QueryLookup::Bypass;
    }
    let key = serde_json::json!([q.domain, q.name, req.params, req.cursor, req.limit]).to_string();
    // Taken before the database read: an invalidation during it makes the entry stale.
    let generations = cache.generations(q.domain, q.reads);
    match cache.query(&key, q.domain, q.reads) {
        Some(result) => QueryLookup::Hit(result),
        None => QueryLookup::Miss {
            key,
            generations,
            ttl: Duration::from_millis(ttl),
        },
    }
}

/// After a named query: keeps the result read on a miss.
pub(crate) fn query_after(cache: &Cache, lookup: QueryLookup, result: &Result<Json, BedsError>) {
    if let (
        QueryLookup::Miss {
            key,
            generations,
            ttl,
        },
        Ok(reply),
    ) = (lookup, result)
    {
        cache.keep_query(key, reply.clone(), generations, ttl);
    }
}

/// Whether a cached named query of `t`'s domain reads `t`.
pub(crate) fn queried(catalog: &Catalog, t: &TemplateMeta) -> bool {
    catalog
        .domains
        .iter()
        .filter(|d| d.name == t.domain)
        .flat_map(|d| d.queries.iter())
        .any(|q| q.cache_ttl_ms.is_some() && q.reads.contains(&t.name))
}

/// After dispatch: keeps a record read on a miss; after a committed write of a cached
/// template, or of one a cached query reads (`queried`), drops the record, bumps the
/// template's generation and broadcasts the invalidation (recorded as lineage when the
/// conversation is sampled).
#[allow(clippy::too_many_arguments)]
pub(crate) fn after(
    cache: &Cache,
    lineage: &Lineage,
    t: &'static TemplateMeta,
    op: Op,
    req: &Request,
    lookup: Lookup,
    result: &Result<Json, BedsError>,
    queried: bool,
) {
    let Ok(reply) = result else { return };
    if let Lookup::Miss { key, ttl, epoch } = lookup {
        if let Some(version) = reply.get("version").and_then(Json::as_i64) {
            cache.keep(key, version, reply.clone(), ttl, epoch);
        }
        return;
    }
    // A create has no cached record to drop (misses are not cached), but it may change
    // a cached query's result.
    let writes = if queried {
        matches!(op, Op::Create | Op::Update | Op::Delete)
    } else {
        t.capabilities.cache_ttl_ms.is_some() && matches!(op, Op::Update | Op::Delete)
    };
    if !writes {
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
    let inv = Invalidation {
        v: VERSION,
        kind: KIND.into(),
        id: Uuid::now_v7(),
        correlation_id: req.conversation(),
        causation_id: req.id,
        depth: req.depth + 1,
        origin: lineage.origin().clone(),
        domain: t.domain.into(),
        template: t.name.into(),
        key,
        // A delete's reply has no version: the record is gone.
        version: reply.get("version").and_then(Json::as_i64),
    };
    if lineage.sampled(inv.correlation_id) {
        lineage.record(
            Record::new(
                RecordType::Invalidation,
                inv.id,
                inv.correlation_id,
                Some(inv.causation_id),
                inv.depth,
                inv.origin.clone(),
                format!(
                    "{}{}.{}",
                    crate::cache::KEY_PREFIX,
                    inv.domain,
                    inv.template
                ),
                crate::value::now(),
            )
            .ended(None),
        );
    }
    cache.broadcast(inv);
}
