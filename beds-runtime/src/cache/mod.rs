//! The read cache of templates that declare `capabilities: { cache: { ttl } }`: fetches by
//! id are served from memory, bounded by `cache.max_entries`, each entry living for its
//! template's TTL. A committed write drops its record on the writing node at once and is
//! broadcast as an [`Invalidation`] so the other nodes drop theirs ([`subscriber`]).
//! wiki/cache.md has the semantics and the measured delay.

mod invalidation;
pub(crate) mod subscriber;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use moka::Expiry;
use serde_json::Value as Json;
use tokio::sync::{mpsc, watch};

use crate::config::CacheConfig;
pub use invalidation::{Invalidation, KEY_PREFIX, KIND};

/// What identifies a cached record: its template and its id as text.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Key {
    pub domain: &'static str,
    pub template: &'static str,
    pub id: String,
}

/// A cached record with its version and how long it may live.
#[derive(Debug)]
pub(crate) struct Entry {
    pub version: i64,
    pub record: Json,
    ttl: Duration,
}

/// Each entry expires after its own template's TTL.
struct PerTemplate;

impl Expiry<Key, Arc<Entry>> for PerTemplate {
    fn expire_after_create(&self, _: &Key, entry: &Arc<Entry>, _: Instant) -> Option<Duration> {
        Some(entry.ttl)
    }

    fn expire_after_update(
        &self,
        _: &Key,
        entry: &Arc<Entry>,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(entry.ttl)
    }
}

/// A cached result of a named query: the generations of the templates it reads, taken
/// before the database read, and when it stops being served.
#[derive(Debug)]
pub(crate) struct QueryEntry {
    pub result: Json,
    generations: Vec<u64>,
    ttl: Duration,
}

/// Each query result expires after its query's TTL.
struct PerQuery;

impl Expiry<String, Arc<QueryEntry>> for PerQuery {
    fn expire_after_create(
        &self,
        _: &String,
        entry: &Arc<QueryEntry>,
        _: Instant,
    ) -> Option<Duration> {
        Some(entry.ttl)
    }

    fn expire_after_update(
        &self,
        _: &String,
        entry: &Arc<QueryEntry>,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(entry.ttl)
    }
}

/// The `origin.service` of invalidations BEDS nodes send.
pub const SERVICE: &str = "beds";

/// How many invalidations may wait for the broker before new ones are dropped: the
/// broadcast is best-effort (tercero's, from the durable events, is the guaranteed one).
const OUTBOX: usize = 4096;

/// A node's cache, shared by its workers and its invalidation subscriber.
#[derive(Debug)]
pub(crate) struct Cache {
    entries: moka::sync::Cache<Key, Arc<Entry>>,
    /// Bumped by every invalidation: a record read from the database is kept only if no
    /// invalidation happened while it was read (see [`Cache::keep`]).
    epoch: AtomicU64,
    outbox: mpsc::Sender<Invalidation>,
    /// Fetches answered from the cache.
    hits: AtomicU64,
    /// Named query results, keyed by the query, its parameters, cursor and limit as JSON.
    queries: moka::sync::Cache<String, Arc<QueryEntry>>,
    /// Per (domain, template): bumped by every invalidation this node applies, so a cached
    /// query result that read the template is no longer served.
    generations: Mutex<HashMap<(String, String), u64>>,
    /// Bumped by [`Cache::clear`]: every template's generation changes at once.
    cleared: AtomicU64,
    /// Queries answered from the cache.
    query_hits: AtomicU64,
    /// Invalidations from other nodes applied so far, for tests and measurements.
    applied: watch::Sender<u64>,
}

impl Cache {
    /// The cache and the receiving end of its outbox, for the subscriber to publish.
    pub fn new(config: &CacheConfig) -> (Cache, mpsc::Receiver<Invalidation>) {
        let (outbox, rx) = mpsc::channel(OUTBOX);
        let cache = Cache {
            entries: moka::sync::Cache::builder()
                .max_capacity(config.max_entries)
                .expire_after(PerTemplate)
                .build(),
            epoch: AtomicU64::new(0),
            outbox,
            hits: AtomicU64::new(0),
            queries: moka::sync::Cache::builder()
                .max_capacity(config.max_entries)
                .expire_after(PerQuery)
                .build(),
            generations: Mutex::new(HashMap::new()),
            cleared: AtomicU64::new(0),
            query_hits: AtomicU64::new(0),
            applied: watch::Sender::new(0),
        };
        (cache, rx)
    }

    /// The entry of `key` if it is at `floor` or later, counting the hit.
    pub fn get(&self, key: &Key, floor: i64) -> Option<Arc<Entry>> {
        let entry = self.entries.get(key).filter(|e| e.version >= floor)?;
        self.hits.fetch_add(1, Ordering::Relaxed);
        Some(entry)
    }

    /// Fetches answered from the cache so far.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// Keeps a record read from the database at `epoch`. If an invalidation came in
    /// meanwhile the read may predate its write, so the entry is dropped again: an
    /// invalidation bumps the epoch before it removes, so either it removes this entry or
    /// this check sees the bump.
    pub fn keep(&self, key: Key, version: i64, record: Json, ttl: Duration, epoch: u64) {
        let entry = Arc::new(Entry {
            version,
            record,
            ttl,
        });
        self.entries.insert(key.clone(), entry);
        if self.epoch() != epoch {
            self.entries.invalidate(&key);
        }
    }

    /// Drops one record and bumps its template's generation.
    pub fn invalidate(&self, key: &Key) {
        self.bump(key.domain, key.template);
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.entries.invalidate(key);
    }

    /// Bumps the generation of a template: cached query results that read it go stale.
    pub fn bump(&self, domain: &str, template: &str) {
        let mut g = self.generations.lock().unwrap_or_else(|e| e.into_inner());
        *g.entry((domain.to_string(), template.to_string()))
            .or_insert(0) += 1;
    }

    /// The generations of `reads` now (the clear count first), to compare later.
    pub fn generations(&self, domain: &str, reads: &[&str]) -> Vec<u64> {
        let mut out = vec![self.cleared.load(Ordering::SeqCst)];
        let g = self.generations.lock().unwrap_or_else(|e| e.into_inner());
        out.extend(reads.iter().map(|t| {
            g.get(&(domain.to_string(), (*t).to_string()))
                .copied()
                .unwrap_or(0)
        }));
        out
    }

    /// The cached result of `key` if it has not expired and none of the templates it
    /// read changed since (`reads` of its query in `domain`), counting the hit.
    pub fn query(&self, key: &str, domain: &str, reads: &[&str]) -> Option<Json> {
        let entry = self.queries.get(key)?;
        if entry.generations != self.generations(domain, reads) {
            self.queries.invalidate(key);
            return None;
        }
        self.query_hits.fetch_add(1, Ordering::Relaxed);
        Some(entry.result.clone())
    }

    /// Keeps a query result read with the generations taken before the read.
    pub fn keep_query(&self, key: String, result: Json, generations: Vec<u64>, ttl: Duration) {
        self.queries.insert(
            key,
            Arc::new(QueryEntry {
                result,
                generations,
                ttl,
            }),
        );
    }

    /// Queries answered from the cache so far.
    pub fn query_hits(&self) -> u64 {
        self.query_hits.load(Ordering::Relaxed)
    }

    /// Drops everything: after a reconnect, invalidations sent meanwhile were lost.
    pub fn clear(&self) {
        self.cleared.fetch_add(1, Ordering::SeqCst);
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.entries.invalidate_all();
        self.queries.invalidate_all();
    }

    /// Queues an invalidation for the other nodes; a full outbox drops it (best-effort).
    pub fn broadcast(&self, inv: Invalidation) {
        if self.outbox.try_send(inv).is_err() {
            tracing::warn!(
                "invalidation outbox full or closed; other nodes rely on the TTL and tercero"
            );
        }
    }

    /// Applies an invalidation from another node.
    pub fn apply(&self, inv: &Invalidation, domain: &'static str, template: &'static str) {
        match inv.key.get("id").and_then(id_text) {
            Some(id) => self.invalidate(&Key {
                domain,
                template,
                id,
            }),
            None => self.bump(domain, template),
        }
        self.applied.send_modify(|n| *n += 1);
    }

    /// Counts invalidations from other nodes as they are applied.
    pub fn applied(&self) -> watch::Receiver<u64> {
        self.applied.subscribe()
    }

    /// Entries held now (after pending evictions ran).
    pub fn len(&self) -> u64 {
        self.entries.run_pending_tasks();
        self.entries.entry_count()
    }
}

/// A record id as the cache keys it: a UUID's text or an integer's digits.
pub(crate) fn id_text(id: &Json) -> Option<String> {
    match id {
        Json::String(s) => Some(s.clone()),
        Json::Number(n) => Some(n.to_string()),
        _ => None,
    }
}
