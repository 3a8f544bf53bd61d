//! The `diag` report: nodes with their health and lanes, stuck deliveries, queue depth and
//! lag per lane, dead letters by reason and retry rates — built from the node table
//! ([`super::nodes`]) and the polled queue depths, as typed data (`--json`) and as text.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::nodes::{Liveness, Nodes};
use crate::telemetry::queues::QueueSink;
use crate::telemetry::status::{LaneStatus, NodeStatus};

/// The admin's live view of the deployment: the node table and the lanes' queue depths,
/// shared by the heartbeat consumer, the queue poller, the `diag` op and the operator page.
#[derive(Debug)]
pub struct Diagnostics {
    nodes: Mutex<Nodes>,
    queues: Mutex<BTreeMap<String, QueueDepth>>,
    /// `admin.stuck_after`.
    pub stuck_after: Duration,
}

impl Diagnostics {
    pub fn new(stuck_after: Duration) -> Diagnostics {
        Diagnostics {
            nodes: Mutex::new(Nodes::default()),
            queues: Mutex::new(BTreeMap::new()),
            stuck_after,
        }
    }

    /// Takes a verified heartbeat, received now.
    pub fn observe(&self, status: NodeStatus) {
        self.nodes().observe(status, Utc::now());
    }

    /// The node table and histories, locked for reading (hold it briefly).
    pub fn nodes(&self) -> MutexGuard<'_, Nodes> {
        self.nodes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The last depth read of every lane queue, by name without the queue tag.
    pub fn queues(&self) -> BTreeMap<String, QueueDepth> {
        self.queues
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The `diag` report now.
    pub fn report(&self) -> DiagReport {
        let queues = self.queues();
        report(&self.nodes(), &queues, self.stuck_after, Utc::now())
    }
}

impl QueueSink for Diagnostics {
    fn queue(&self, label: &str, depth: Option<(u32, u32)>) {
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        match depth {
            Some((messages, consumers)) => {
                queues.insert(
                    label.to_string(),
                    QueueDepth {
                        messages,
                        consumers,
                    },
                );
            }
            // A queue that is gone is not reported with its last depth.
            None => {
                queues.remove(label);
            }
        }
    }
}

/// What a passive declare of a queue read, by its name without the queue tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueDepth {
    pub messages: u32,
    pub consumers: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiagReport {
    pub generated_at: DateTime<Utc>,
    pub stuck_after_ms: u64,
    pub nodes: Vec<NodeSummary>,
    pub stuck: Vec<StuckDelivery>,
    pub lanes: Vec<LaneReport>,
    /// Dead letters by reason, counted by the nodes since they started (alive and lost).
    pub dead_letters: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeSummary {
    pub node: String,
    pub role: String,
    pub version: String,
    pub liveness: Liveness,
    pub ready: bool,
    /// The readiness checks that failed, with why.
    pub failed: BTreeMap<String, String>,
    pub last_seen_ms: u64,
    pub lanes: Vec<LaneStatus>,
}

/// Why a delivery is reported stuck.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StuckBecause {
    /// In flight past its request's deadline.
    Deadline,
    /// In flight longer than `admin.stuck_after`.
    Threshold,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StuckDelivery {
    pub node: String,
    pub message_id: Option<Uuid>,
    pub correlation_id: Option<Uuid>,
    pub lane: String,
    pub target: Option<String>,
    /// How long it has been in flight, at the report.
    pub age_ms: u64,
    pub because: StuckBecause,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LaneReport {
    pub lane: String,
    /// Messages ready and consumers of the lane's queue; none if not read yet.
    pub queue: Option<QueueDepth>,
    pub retry: Option<QueueDepth>,
    pub dlq: Option<QueueDepth>,
    /// Requests settled per second by every alive node (their last samples).
    pub throughput: f64,
    /// Retries per second by every alive node.
    pub retries: f64,
    /// Seconds the ready messages take at the current throughput; none when idle.
    pub lag_s: Option<f64>,
}

/// The lanes reported, by routing key: the data path's, then tercero's event queue.
pub const LANES: [&str; 3] = ["rec.read", "rec.write", "evt.tercero"];

/// Builds the report at `now`.
pub fn report(
    nodes: &Nodes,
    queues: &BTreeMap<String, QueueDepth>,
    stuck_after: Duration,
    now: DateTime<Utc>,
) -> DiagReport {
    let mut summaries = Vec::new();
    let mut stuck = Vec::new();
    let mut dead_letters: BTreeMap<String, u64> = BTreeMap::new();
    let mut throughput: BTreeMap<&str, (f64, f64)> = BTreeMap::new();
    for entry in nodes.entries() {
        let last = &entry.last;
        let liveness = entry.liveness(now);
        let since = (now - entry.last_seen).to_std().unwrap_or_default();
        summaries.push(NodeSummary {
            node: last.node.clone(),
            role: last.role.clone(),
            version: last.version.beds.clone(),
            liveness,
            ready: last.health.ready,
            failed: last
                .health
                .checks
                .iter()
                .filter(|(_, v)| v.as_str() != "ok")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            last_seen_ms: since.as_millis() as u64,
            lanes: last.lanes.clone(),
        });
        for counters in &last.counters {
            for (reason, n) in &counters.dead_letters {
                *dead_letters.entry(reason.clone()).or_default() += n;
            }
        }
        if liveness == Liveness::Lost {
            continue;
        }
        for (lane, history) in &entry.lanes {
            if let (Some(sample), Some(key)) =
                (history.latest(), LANES.iter().find(|k| **k == lane))
            {
                let t = throughput.entry(key).or_default();
                t.0 += sample.throughput;
                t.1 += sample.retries;
            }
        }
        for d in &last.in_flight {
            let age_ms = d.age_ms + since.as_millis() as u64;
            let because = match d.deadline_ms {
                Some(deadline) if age_ms as i64 > deadline => StuckBecause::Deadline,
                _ if age_ms >= stuck_after.as_millis() as u64 => StuckBecause::Threshold,
                _ => continue,
            };
            stuck.push(StuckDelivery {
                node: last.node.clone(),
                message_id: d.message_id,
                correlation_id: d.correlation_id,
                lane: d.lane.clone(),
                target: d.target.clone(),
                age_ms,
                because,
            });
        }
    }
    stuck.sort_by_key(|s| std::cmp::Reverse(s.age_ms));
    let lanes = LANES
        .iter()
        .filter(|key| queues.contains_key(**key) || throughput.contains_key(**key))
        .map(|key| {
            let queue = queues.get(*key).copied();
            let (rate, retries) = throughput.get(key).copied().unwrap_or_default();
            LaneReport {
                lane: key.to_string(),
                queue,
                retry: queues.get(&format!("{key}.retry")).copied(),
                dlq: queues.get(&format!("{key}.dlq")).copied(),
                throughput: rate,
                retries,
                lag_s: queue
                    .filter(|_| rate > 0.0)
                    .map(|q| f64::from(q.messages) / rate),
            }
        })
        .collect();
    DiagReport {
        generated_at: now,
        stuck_after_ms: stuck_after.as_millis() as u64,
        nodes: summaries,
        stuck,
        lanes,
        dead_letters,
    }
}

fn depth(q: &Option<QueueDepth>) -> String {
    match q {
        Some(q) => format!("{} ready, {} consumers", q.messages, q.consumers),
        None => "not read".into(),
    }
}

/// The text `beds diag` prints.
impl fmt::Display for DiagReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "nodes ({}):", self.nodes.len())?;
        if self.nodes.is_empty() {
            writeln!(f, "  none heard from yet (no heartbeat on log.status)")?;
        }
        for n in &self.nodes {
            let health = if n.ready {
                "ready".to_string()
            } else {
                let why: Vec<String> = n.failed.iter().map(|(k, v)| format!("{k}: {v}")).collect();
                format!("NOT READY ({})", why.join("; "))
            };
            let lanes: Vec<String> = n
                .lanes
                .iter()
                .map(|l| {
                    format!(
                        "{} {} ({} workers, {} in flight)",
                        l.lane,
                        l.state.as_str(),
                        l.workers,
                        l.in_flight
                    )
                })
                .collect();
            writeln!(
                f,
                "  {} {} v{} {} {}, seen {} ms ago; {}",
                n.node,
                n.role,
                n.version,
                match n.liveness {
                    Liveness::Alive => "alive",
                    Liveness::Lost => "LOST",
                },
                health,
                n.last_seen_ms,
                if lanes.is_empty() {
                    "no lanes".into()
                } else {
                    lanes.join(", ")
                }
            )?;
        }
        writeln!(
            f,
            "stuck deliveries (over {} ms or past their deadline): {}",
            self.stuck_after_ms,
            self.stuck.len()
        )?;
        for s in &self.stuck {
            let id = |u: Option<Uuid>| u.map_or("-".to_string(), |u| u.to_string());
            writeln!(
                f,
                "  {} {} message {} correlation {} {} for {} ms ({})",
                s.node,
                s.lane,
                id(s.message_id),
                id(s.correlation_id),
                s.target.as_deref().unwrap_or("(not routed yet)"),
                s.age_ms,
                match s.because {
                    StuckBecause::Deadline => "past its deadline",
                    StuckBecause::Threshold => "over the threshold",
                }
            )?;
        }
        writeln!(f, "lanes:")?;
        for l in &self.lanes {
            writeln!(
                f,
                "  {}: queue {}; retry {}; dlq {}; {:.1} req/s, {:.2} retries/s, lag {}",
                l.lane,
                depth(&l.queue),
                depth(&l.retry),
                depth(&l.dlq),
                l.throughput,
                l.retries,
                l.lag_s.map_or("-".to_string(), |s| format!("{s:.1} s"))
            )?;
        }
        write!(f, "dead letters by reason:")?;
        if self.dead_letters.is_empty() {
            write!(f, " none")?;
        }
        writeln!(f)?;
        for (reason, n) in &self.dead_letters {
            writeln!(f, "  {reason}: {n}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::status::{
        InFlightDelivery, LaneCounters, NodeHealth, NodeStatus, Versions,
    };

    fn delivery(age_ms: u64, deadline_ms: Option<i64>) -> InFlightDelivery {
        InFlightDelivery {
            message_id: Some(Uuid::now_v7()),
            correlation_id: None,
            lane: "rec.write".into(),
            target: Some("d.t.create".into()),
            age_ms,
            deadline_ms,
        }
    }

    #[test]
    fn deliveries_are_stuck_past_the_threshold_or_their_deadline() {
        let now = Utc::now();
        let run = Uuid::now_v7();
        let mut dead = LaneCounters {
            lane: "rec.write".into(),
            ..LaneCounters::default()
        };
        dead.dead_letters.insert("no_reply_to".into(), 2);
        let status = NodeStatus {
            v: 1,
            id: Uuid::now_v7(),
            correlation_id: run,
            causation_id: run,
            depth: 0,
            origin: crate::envelope::Origin {
                service: "beds".into(),
                node: "n1".into(),
                env: "test".into(),
            },
            node: "n1".into(),
            role: "appServer".into(),
            env: "test".into(),
            version: Versions {
                beds: "0.1.0".into(),
                domains: vec![],
            },
            started_at: now,
            sent_at: now,
            heartbeat_ms: 1000,
            health: NodeHealth {
                connected: true,
                workers_down: 0,
                restarts: 0,
                ready: true,
                checks: BTreeMap::new(),
            },
            lanes: vec![],
            in_flight: vec![
                delivery(5_000, None),
                delivery(3_000, Some(2_000)),
                delivery(1_500, None),
            ],
            counters: vec![dead],
        };
        let mut nodes = Nodes::default();
        nodes.observe(status, now);
        let queues = BTreeMap::from([(
            "rec.write".to_string(),
            QueueDepth {
                messages: 7,
                consumers: 0,
            },
        )]);
        let r = report(&nodes, &queues, Duration::from_secs(4), now);
        let because: Vec<(u64, StuckBecause)> =
            r.stuck.iter().map(|s| (s.age_ms, s.because)).collect();
        assert_eq!(
            because,
            [
                (5_000, StuckBecause::Threshold),
                (3_000, StuckBecause::Deadline)
            ]
        );
        assert_eq!(r.dead_letters.get("no_reply_to"), Some(&2));
        assert_eq!(r.lanes.len(), 1);
        assert_eq!(r.lanes[0].queue.unwrap().messages, 7);
        assert_eq!(r.lanes[0].lag_s, None);
        let text = r.to_string();
        assert!(text.contains("n1 appServer v0.1.0 alive ready"), "{text}");
        assert!(
            text.contains(&r.stuck[0].message_id.unwrap().to_string()),
            "{text}"
        );
        // A lost node's deliveries are not reported: its last word is stale.
        let later = now + chrono::Duration::seconds(10);
        assert!(
            report(&nodes, &queues, Duration::from_secs(4), later)
                .stuck
                .is_empty()
        );
    }
}
