//! The deliveries a node is handling now: registered by the worker as it hands a delivery
//! on, filled in as the chain learns its ids and target, removed when it is settled (the
//! guard drops, also on a panic). Heartbeats list the old ones (stuck-delivery detection),
//! `/metrics` shows the oldest age per lane, and a drain waits for a lane to empty.
//!
//! Sharded by a sequence number so that concurrent workers rarely share a lock; an entry
//! is a few words copied from the delivery (ids, `&'static` catalog names), never a copy
//! of the body.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::series::Series;
use super::status::InFlightDelivery;
use crate::envelope::Request;
use crate::ingress::lane::Lane;

const SHARDS: usize = 16;

#[derive(Debug, Clone, Copy)]
struct Entry {
    lane: Lane,
    started: Instant,
    message_id: Option<Uuid>,
    correlation_id: Option<Uuid>,
    target: Option<Series>,
    deadline: Option<DateTime<Utc>>,
}

#[derive(Debug, Default)]
struct LaneCount {
    now: AtomicUsize,
    settled: AtomicU64,
}

/// The registry of one node.
#[derive(Debug, Default)]
pub(crate) struct Deliveries {
    shards: [Mutex<HashMap<u64, Entry>>; SHARDS],
    next: AtomicU64,
    lanes: [LaneCount; 2],
}

impl Deliveries {
    /// Registers a delivery of `lane` starting now; it stays until the guard drops.
    pub fn start(self: &Arc<Self>, lane: Lane) -> Tracked {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let entry = Entry {
            lane,
            started: Instant::now(),
            message_id: None,
            correlation_id: None,
            target: None,
            deadline: None,
        };
        self.shard(id).insert(id, entry);
        self.lanes[lane.index()].now.fetch_add(1, Ordering::Relaxed);
        Tracked {
            registry: self.clone(),
            id,
        }
    }

    fn shard(&self, id: u64) -> std::sync::MutexGuard<'_, HashMap<u64, Entry>> {
        // A panic while holding it cannot leave an entry half-written (entries are Copy).
        self.shards[id as usize % SHARDS]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn update(&self, id: u64, change: impl FnOnce(&mut Entry)) {
        if let Some(entry) = self.shard(id).get_mut(&id) {
            change(entry);
        }
    }

    /// Deliveries of `lane` in flight now.
    pub fn count(&self, lane: Lane) -> usize {
        self.lanes[lane.index()].now.load(Ordering::Relaxed)
    }

    /// Deliveries of `lane` settled since start.
    pub fn settled(&self, lane: Lane) -> u64 {
        self.lanes[lane.index()].settled.load(Ordering::Relaxed)
    }

    /// How long the oldest delivery of `lane` in flight has been.
    pub fn oldest(&self, lane: Lane) -> Option<Duration> {
        let now = Instant::now();
        self.shards
            .iter()
            .filter_map(|shard| {
                let shard = shard.lock().unwrap_or_else(|p| p.into_inner());
                shard
                    .values()
                    .filter(|e| e.lane == lane)
                    .map(|e| e.started)
                    .min()
            })
            .min()
            .map(|started| now.saturating_duration_since(started))
    }

    /// Deliveries in flight for at least `older_than`, oldest first, at most `cap`.
    pub fn older_than(&self, older_than: Duration, cap: usize) -> Vec<InFlightDelivery> {
        let now = Instant::now();
        let mut old: Vec<Entry> = Vec::new();
        for shard in &self.shards {
            let shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            old.extend(
                shard
                    .values()
                    .filter(|e| now.saturating_duration_since(e.started) >= older_than),
            );
        }
        old.sort_by_key(|e| e.started);
        old.truncate(cap);
        let wall = Utc::now();
        old.into_iter()
            .map(|e| {
                let age = now.saturating_duration_since(e.started);
                let started_at = wall - chrono::Duration::from_std(age).unwrap_or_default();
                InFlightDelivery {
                    message_id: e.message_id,
                    correlation_id: e.correlation_id,
                    lane: e.lane.key().to_string(),
                    target: e
                        .target
                        .map(|s| format!("{}.{}.{}", s.domain, s.template, s.op)),
                    age_ms: age.as_millis() as u64,
                    deadline_ms: e.deadline.map(|d| (d - started_at).num_milliseconds()),
                }
            })
            .collect()
    }
}

/// A registered delivery; dropping it removes it.
#[derive(Debug)]
pub(crate) struct Tracked {
    registry: Arc<Deliveries>,
    id: u64,
}

impl Tracked {
    /// The decoded request's ids and deadline.
    pub fn identify(&self, req: &Request) {
        let (message_id, correlation_id, deadline) = (req.id, req.conversation(), req.deadline);
        self.registry.update(self.id, |e| {
            e.message_id = Some(message_id);
            e.correlation_id = Some(correlation_id);
            e.deadline = deadline;
        });
    }

    /// What the request addresses, once routed.
    pub fn target(&self, series: Series) {
        self.registry.update(self.id, |e| e.target = Some(series));
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        let removed = self.registry.shard(self.id).remove(&self.id);
        if let Some(entry) = removed {
            let lane = &self.registry.lanes[entry.lane.index()];
            lane.now.fetch_sub(1, Ordering::Relaxed);
            lane.settled.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::Op;

    #[test]
    fn deliveries_are_listed_oldest_first_until_settled() {
        let registry = Arc::new(Deliveries::default());
        let first = registry.start(Lane::Write);
        let mut req = Request::new("d", "t", Op::Update);
        req.deadline = Some(Utc::now() + chrono::Duration::seconds(30));
        first.identify(&req);
        first.target(Series {
            domain: "d",
            template: "t",
            op: "update",
        });
        std::thread::sleep(Duration::from_millis(5));
        let second = registry.start(Lane::Read);
        assert_eq!(
            (registry.count(Lane::Write), registry.count(Lane::Read)),
            (1, 1)
        );
        let listed = registry.older_than(Duration::ZERO, 10);
        assert_eq!(listed.len(), 2);
        assert_eq!(listed[0].message_id, Some(req.id));
        assert_eq!(listed[0].target.as_deref(), Some("d.t.update"));
        assert_eq!(listed[0].lane, "rec.write");
        let deadline = listed[0].deadline_ms.unwrap();
        assert!((29_000..=30_100).contains(&deadline), "{deadline}");
        assert_eq!(listed[1].message_id, None);
        assert_eq!(registry.older_than(Duration::ZERO, 1).len(), 1);
        assert!(registry.older_than(Duration::from_secs(60), 10).is_empty());
        assert!(registry.oldest(Lane::Write).unwrap() >= registry.oldest(Lane::Read).unwrap());
        drop(first);
        assert_eq!(registry.count(Lane::Write), 0);
        assert_eq!(registry.settled(Lane::Write), 1);
        assert_eq!(registry.oldest(Lane::Write), None);
        drop(second);
        assert!(registry.older_than(Duration::ZERO, 10).is_empty());
    }
}
