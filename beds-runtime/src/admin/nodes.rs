//! What the admin role knows about the nodes, from their heartbeats (`{tag}log.status`):
//! each node's last status and when it was heard from (silent for [`LOST_AFTER`]
//! heartbeats: `lost`), and per node and lane a ring buffer of throughput and latency
//! samples derived from two consecutive heartbeats' counters. The operator page and
//! `beds diag` read it through [`Nodes::view`] and [`Nodes::history`].

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::telemetry::status::{
    InFlightDelivery, LATENCY_BOUNDS, LaneCounters, LaneStatus, NodeHealth, NodeStatus, Versions,
};

/// Heartbeats a node may miss before it is reported lost.
pub const LOST_AFTER: u32 = 3;

/// How much history each lane keeps by default.
pub const HISTORY: Duration = Duration::from_secs(10 * 60);

/// Whether a node is still heard from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Liveness {
    Alive,
    /// Silent for [`LOST_AFTER`] heartbeats.
    Lost,
}

/// One lane of one node over one heartbeat interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// The end of the interval (the node's `sent_at`).
    pub at: DateTime<Utc>,
    /// Requests settled per second.
    pub throughput: f64,
    /// Requests settled with an error per second.
    pub errors: f64,
    pub retries: f64,
    pub dead_letters: f64,
    /// Latency of the interval's requests, in milliseconds; none when none settled.
    pub mean_ms: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// The rate samples of one lane, oldest first.
#[derive(Debug, Clone, Default)]
pub struct LaneHistory {
    samples: VecDeque<Sample>,
    /// The counters the next sample is measured from, with the run they belong to.
    base: Option<(Uuid, DateTime<Utc>, LaneCounters)>,
}

impl LaneHistory {
    pub fn samples(&self) -> impl Iterator<Item = &Sample> {
        self.samples.iter()
    }

    pub fn latest(&self) -> Option<&Sample> {
        self.samples.back()
    }

    /// Adds the sample between the last counters and `now`'s; a restarted node (another
    /// run, or counters that went down) starts over from `now`'s.
    fn observe(&mut self, run: Uuid, at: DateTime<Utc>, now: &LaneCounters, keep: Duration) {
        if let Some((base_run, base_at, base)) = &self.base
            && *base_run == run
            && at > *base_at
            && let Some(sample) = sample(base, now, (at - *base_at).to_std().unwrap_or_default())
        {
            self.samples.push_back(Sample { at, ..sample });
        }
        self.base = Some((run, at, now.clone()));
        let keep = chrono::Duration::from_std(keep).unwrap_or(chrono::Duration::MAX);
        while self.samples.front().is_some_and(|s| at - s.at > keep) {
            self.samples.pop_front();
        }
    }
}

/// The rates between two counter readings `elapsed` apart; none if the counters went
/// down (not the same run) or no time passed.
pub fn sample(before: &LaneCounters, after: &LaneCounters, elapsed: Duration) -> Option<Sample> {
    let secs = elapsed.as_secs_f64();
    if secs <= 0.0 {
        return None;
    }
    let delta = |a: u64, b: u64| b.checked_sub(a);
    let ok = delta(before.ok, after.ok)?;
    let error = delta(before.error, after.error)?;
    let retries = delta(before.retries, after.retries)?;
    let dead_before: u64 = before.dead_letters.values().sum();
    let dead_after: u64 = after.dead_letters.values().sum();
    let dead = delta(dead_before, dead_after)?;
    let sum_us = delta(before.latency_sum_us, after.latency_sum_us)?;
    let buckets: Vec<u64> = after
        .latency_buckets
        .iter()
        .enumerate()
        .map(|(i, n)| n.checked_sub(before.latency_buckets.get(i).copied().unwrap_or(0)))
        .collect::<Option<_>>()?;
    let settled = ok + error;
    Some(Sample {
        at: DateTime::<Utc>::MIN_UTC,
        throughput: settled as f64 / secs,
        errors: error as f64 / secs,
        retries: retries as f64 / secs,
        dead_letters: dead as f64 / secs,
        mean_ms: (settled > 0).then(|| sum_us as f64 / settled as f64 / 1000.0),
        p50_ms: quantile(&buckets, 0.5),
        p99_ms: quantile(&buckets, 0.99),
    })
}

/// The `q` quantile (0..=1) of a latency histogram (counts per bucket of
/// [`LATENCY_BOUNDS`], then the overflow bucket), in milliseconds, interpolated linearly
/// within its bucket; the overflow bucket reports the last bound.
pub fn quantile(buckets: &[u64], q: f64) -> Option<f64> {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = q.clamp(0.0, 1.0) * total as f64;
    let mut below = 0u64;
    for (i, &n) in buckets.iter().enumerate() {
        if n > 0 && (below + n) as f64 >= rank {
            let Some(&upper) = LATENCY_BOUNDS.get(i) else {
                return Some(LATENCY_BOUNDS[LATENCY_BOUNDS.len() - 1] * 1000.0);
            };
            let lower = if i == 0 { 0.0 } else { LATENCY_BOUNDS[i - 1] };
            let within = ((rank - below as f64) / n as f64).clamp(0.0, 1.0);
            return Some((lower + (upper - lower) * within) * 1000.0);
        }
        below += n;
    }
    Some(LATENCY_BOUNDS[LATENCY_BOUNDS.len() - 1] * 1000.0)
}

/// One node as the admin knows it.
#[derive(Debug, Clone)]
pub struct NodeEntry {
    pub last: NodeStatus,
    /// When the admin received the last heartbeat (its own clock).
    pub last_seen: DateTime<Utc>,
    pub lanes: BTreeMap<String, LaneHistory>,
}

impl NodeEntry {
    pub fn liveness(&self, now: DateTime<Utc>) -> Liveness {
        let period = chrono::Duration::milliseconds(self.last.heartbeat_ms as i64);
        if now - self.last_seen > period * LOST_AFTER as i32 {
            Liveness::Lost
        } else {
            Liveness::Alive
        }
    }
}

/// A node's row in the node table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeView {
    pub node: String,
    pub role: String,
    pub env: String,
    pub version: Versions,
    pub liveness: Liveness,
    pub started_at: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    pub health: NodeHealth,
    pub lanes: Vec<LaneStatus>,
    /// Deliveries in flight over 1 s at the last heartbeat.
    pub in_flight: Vec<InFlightDelivery>,
}

/// Every node heard from, by name.
#[derive(Debug, Clone)]
pub struct Nodes {
    nodes: BTreeMap<String, NodeEntry>,
    keep: Duration,
}

impl Default for Nodes {
    fn default() -> Self {
        Nodes::new(HISTORY)
    }
}

impl Nodes {
    /// Keeps `keep` of history per lane.
    pub fn new(keep: Duration) -> Nodes {
        Nodes {
            nodes: BTreeMap::new(),
            keep,
        }
    }

    /// Takes a (verified) heartbeat received at `now`.
    pub fn observe(&mut self, status: NodeStatus, now: DateTime<Utc>) {
        let entry = self
            .nodes
            .entry(status.node.clone())
            .or_insert_with(|| NodeEntry {
                last: status.clone(),
                last_seen: now,
                lanes: BTreeMap::new(),
            });
        for counters in &status.counters {
            entry
                .lanes
                .entry(counters.lane.clone())
                .or_default()
                .observe(status.correlation_id, status.sent_at, counters, self.keep);
        }
        entry.last = status;
        entry.last_seen = now;
    }

    pub fn get(&self, node: &str) -> Option<&NodeEntry> {
        self.nodes.get(node)
    }

    /// The names of every node heard from.
    pub fn names(&self) -> Vec<String> {
        self.nodes.keys().cloned().collect()
    }

    pub fn entries(&self) -> impl Iterator<Item = &NodeEntry> {
        self.nodes.values()
    }

    /// The node table at `now`.
    pub fn view(&self, now: DateTime<Utc>) -> Vec<NodeView> {
        self.nodes
            .values()
            .map(|e| NodeView {
                node: e.last.node.clone(),
                role: e.last.role.clone(),
                env: e.last.env.clone(),
                version: e.last.version.clone(),
                liveness: e.liveness(now),
                started_at: e.last.started_at,
                last_seen: e.last_seen,
                health: e.last.health.clone(),
                lanes: e.last.lanes.clone(),
                in_flight: e.last.in_flight.clone(),
            })
            .collect()
    }

    /// The samples of `node`'s `lane`, oldest first.
    pub fn history(&self, node: &str, lane: &str) -> Option<&LaneHistory> {
        self.nodes.get(node)?.lanes.get(lane)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counters(ok: u64, error: u64, sum_ms: u64, buckets: &[(usize, u64)]) -> LaneCounters {
        let mut b = vec![0; LATENCY_BOUNDS.len() + 1];
        for &(i, n) in buckets {
            b[i] = n;
        }
        LaneCounters {
            lane: "rec.write".into(),
            ok,
            error,
            latency_sum_us: sum_ms * 1000,
            latency_buckets: b,
            ..LaneCounters::default()
        }
    }

    #[test]
    fn rates_are_the_difference_over_the_interval() {
        let before = counters(10, 0, 100, &[(4, 10)]);
        // 20 more in 2 s: 18 ok, 2 errors, 400 ms more latency in all.
        let mut after = counters(28, 2, 500, &[(4, 20), (6, 10)]);
        after.retries = 4;
        after.dead_letters.insert("database_unavailable".into(), 1);
        let s = sample(&before, &after, Duration::from_secs(2)).unwrap();
        assert_eq!(s.throughput, 10.0);
        assert_eq!(s.errors, 1.0);
        assert_eq!(s.retries, 2.0);
        assert_eq!(s.dead_letters, 0.5);
        assert_eq!(s.mean_ms, Some(20.0));
        // Half in (5 ms, 10 ms], half in (25 ms, 50 ms]: the median is the top of the
        // first half, p99 near the top of the second.
        assert_eq!(s.p50_ms, Some(10.0));
        let p99 = s.p99_ms.unwrap();
        assert!((49.0..=50.0).contains(&p99), "{p99}");
        // Counters that went down are another run: no sample.
        assert_eq!(sample(&after, &before, Duration::from_secs(2)), None);
        assert_eq!(sample(&before, &after, Duration::ZERO), None);
        // Nothing settled: no latency.
        let idle = sample(&after, &after, Duration::from_secs(2)).unwrap();
        assert_eq!(
            (idle.throughput, idle.mean_ms, idle.p50_ms),
            (0.0, None, None)
        );
    }

    #[test]
    fn quantiles_interpolate_within_buckets_and_cap_at_the_last_bound() {
        let mut b = vec![0; LATENCY_BOUNDS.len() + 1];
        b[0] = 4; // (0, 0.5 ms]
        assert_eq!(quantile(&b, 0.5), Some(0.25));
        assert_eq!(quantile(&b, 1.0), Some(0.5));
        b[LATENCY_BOUNDS.len()] = 4; // over 10 s
        assert_eq!(quantile(&b, 0.99), Some(10_000.0));
        assert_eq!(quantile(&[0; 15], 0.5), None);
    }

    fn status(node: &str, run: Uuid, at: DateTime<Utc>, ok: u64) -> NodeStatus {
        NodeStatus {
            v: 1,
            id: Uuid::now_v7(),
            correlation_id: run,
            causation_id: run,
            depth: 0,
            origin: crate::envelope::Origin {
                service: "beds".into(),
                node: node.into(),
                env: "test".into(),
            },
            node: node.into(),
            role: "appServer".into(),
            env: "test".into(),
            version: Versions {
                beds: "0".into(),
                domains: vec![],
            },
            started_at: at,
            sent_at: at,
            heartbeat_ms: 1000,
            health: NodeHealth {
                connected: true,
                workers_down: 0,
                restarts: 0,
                ready: true,
                checks: BTreeMap::new(),
            },
            lanes: vec![],
            in_flight: vec![],
            counters: vec![counters(ok, 0, ok, &[(3, ok)])],
        }
    }

    #[test]
    fn nodes_keep_a_bounded_history_and_go_lost_after_three_silent_heartbeats() {
        let mut nodes = Nodes::new(Duration::from_secs(5));
        let run = Uuid::now_v7();
        let t0 = Utc::now();
        let at = |s: i64| t0 + chrono::Duration::seconds(s);
        for s in 0..=10 {
            nodes.observe(status("n1", run, at(s), 10 * s as u64), at(s));
        }
        let history = nodes.history("n1", "rec.write").unwrap();
        let samples: Vec<&Sample> = history.samples().collect();
        // 10 intervals, of which those within 5 s of the last are kept.
        assert_eq!(samples.len(), 6);
        assert!(samples.iter().all(|s| s.throughput == 10.0));
        assert_eq!(samples.last().unwrap().at, at(10));
        // A restart (new run id, counters from zero) adds no sample; the window moves on.
        nodes.observe(status("n1", Uuid::now_v7(), at(11), 0), at(11));
        let history = nodes.history("n1", "rec.write").unwrap();
        assert_eq!(history.samples().count(), 5);
        assert_eq!(history.latest().unwrap().at, at(10));

        assert_eq!(nodes.view(at(13))[0].liveness, Liveness::Alive);
        assert_eq!(nodes.view(at(15))[0].liveness, Liveness::Lost);
        assert_eq!(nodes.names(), ["n1"]);
    }
}
