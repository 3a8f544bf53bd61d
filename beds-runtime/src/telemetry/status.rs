//! What nodes tell the admin role and what it tells them, on `beds.events`: the heartbeat
//! every node publishes under `{tag}log.status` ([`NodeStatus`]), and the lane commands
//! a node takes on its control queue `{tag}ctl.{node}` ([`ControlCommand`], answered with
//! a [`crate::Reply`] whose data is a [`ControlAnswer`]). Both are signed with the service
//! key (transport::signing); wiki/operations.md documents them.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use crate::config::IN_FLIGHT_REPORTED_AFTER_MS;
use crate::envelope::Origin;

/// The version of the heartbeat and control messages.
pub const STATUS_VERSION: u32 = 1;

/// Routing key (before the queue tag) heartbeats are published with.
pub const STATUS_KEY: &str = "log.status";

/// Upper bounds (seconds) of the latency buckets of [`LaneCounters::latency_buckets`]; the
/// last bucket (one more than these) counts everything slower.
pub const LATENCY_BOUNDS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The control queue and routing key (before the queue tag) of `node`.
pub fn control_key(node: &str) -> String {
    format!("ctl.{node}")
}

/// Whether a lane's workers consume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LaneState {
    /// Consuming (the normal state).
    Consuming,
    /// Told to pause: the consumers are cancelled, messages stay queued.
    Paused,
    /// Told to drain: paused, and waiting for its in-flight deliveries to finish.
    Draining,
    /// Drained: paused with nothing in flight.
    Drained,
}

impl LaneState {
    pub const ALL: [LaneState; 4] = [
        LaneState::Consuming,
        LaneState::Paused,
        LaneState::Draining,
        LaneState::Drained,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            LaneState::Consuming => "consuming",
            LaneState::Paused => "paused",
            LaneState::Draining => "draining",
            LaneState::Drained => "drained",
        }
    }
}

/// One heartbeat of a node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub v: u32,
    /// This message's id (also its AMQP `message_id`, which the signature covers).
    pub id: Uuid,
    /// The node's run id: every heartbeat of one run shares it.
    pub correlation_id: Uuid,
    /// The node's run id as well: a heartbeat is caused by the run, not by a message.
    pub causation_id: Uuid,
    pub depth: u32,
    pub origin: Origin,
    pub node: String,
    pub role: String,
    pub env: String,
    pub version: Versions,
    pub started_at: DateTime<Utc>,
    pub sent_at: DateTime<Utc>,
    /// How often the node sends one, so the admin knows when it is overdue.
    pub heartbeat_ms: u64,
    pub health: NodeHealth,
    pub lanes: Vec<LaneStatus>,
    /// Deliveries in flight for longer than [`IN_FLIGHT_REPORTED_AFTER_MS`], oldest first,
    /// at most [`IN_FLIGHT_REPORTED`].
    pub in_flight: Vec<InFlightDelivery>,
    /// Cumulative since the node started, per lane: the admin derives rates from two.
    pub counters: Vec<LaneCounters>,
}

/// The most in-flight deliveries a heartbeat lists.
pub const IN_FLIGHT_REPORTED: usize = 50;

/// The build a node runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Versions {
    /// The `beds-runtime` crate version.
    pub beds: String,
    pub domains: Vec<DomainVersion>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainVersion {
    pub name: String,
    pub version: u32,
}

/// A node's health as `/readyz` computes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeHealth {
    pub connected: bool,
    pub workers_down: usize,
    pub restarts: u64,
    pub ready: bool,
    /// Each readiness check: `ok` or why it failed.
    pub checks: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaneStatus {
    /// The lane's routing key (`rec.read`, `rec.write`).
    pub lane: String,
    pub state: LaneState,
    /// Workers of the lane consuming now (0 when paused).
    pub workers: usize,
    pub in_flight: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InFlightDelivery {
    /// Unknown until the body is decoded.
    pub message_id: Option<Uuid>,
    pub correlation_id: Option<Uuid>,
    pub lane: String,
    /// `domain.template.op` (`op` is `query` for a named query), once routed.
    pub target: Option<String>,
    pub age_ms: u64,
    /// Milliseconds from the delivery's start to the request's deadline, if it has one.
    pub deadline_ms: Option<i64>,
}

/// One lane's cumulative counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaneCounters {
    pub lane: String,
    /// Requests answered without an error.
    pub ok: u64,
    /// Requests answered (or dead-lettered) with an error.
    pub error: u64,
    /// Sum of the settled requests' latencies, in microseconds.
    pub latency_sum_us: u64,
    /// Count per latency bucket ([`LATENCY_BOUNDS`], then one for anything slower); not
    /// cumulative.
    pub latency_buckets: Vec<u64>,
    pub retries: u64,
    pub redeliveries: u64,
    /// Dead letters by reason (error code).
    pub dead_letters: BTreeMap<String, u64>,
}

impl LaneCounters {
    /// Requests settled: `ok + error`.
    pub fn settled(&self) -> u64 {
        self.ok + self.error
    }
}

/// What a node is told to do with one of its lanes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ControlOp {
    Pause,
    Resume,
    Drain,
}

impl ControlOp {
    pub fn parse(text: &str) -> Option<ControlOp> {
        match text {
            "pause" => Some(ControlOp::Pause),
            "resume" => Some(ControlOp::Resume),
            "drain" => Some(ControlOp::Drain),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ControlOp::Pause => "pause",
            ControlOp::Resume => "resume",
            ControlOp::Drain => "drain",
        }
    }
}

/// `{"v":1,"op":"pause","lane":"rec.write"}`, signed for [`crate::signing::Purpose::Control`],
/// with the lineage of the adm request it carries out (its conversation is the AMQP
/// `correlation_id`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlCommand {
    pub v: u32,
    pub op: ControlOp,
    pub lane: String,
    /// The adm request this command carries out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<Uuid>,
    #[serde(default)]
    pub depth: u32,
    /// The admin node that sent it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<Origin>,
}

/// A node's answer to a [`ControlCommand`]: the lane's new state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlAnswer {
    pub node: String,
    pub lane: String,
    pub state: LaneState,
    /// For a drain: the deliveries that finished while it waited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished: Option<u64>,
    /// For a drain that hit `shutdown.drain_timeout`: deliveries still in flight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub left: Option<usize>,
}
