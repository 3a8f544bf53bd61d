//! Each lane's state as operators set it (pause, resume, drain over the control queue):
//! the workers of a lane watch it and cancel or restart their consumers; the state
//! outlives a worker's restart, so a paused lane stays paused.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::watch;

use crate::ingress::lane::Lane;
use crate::telemetry::metrics::Metrics;
use crate::telemetry::status::{ControlAnswer, ControlOp, LaneState, LaneStatus};

/// How often a drain looks at what is left in flight.
const DRAIN_POLL: Duration = Duration::from_millis(10);

/// One lane of a node.
#[derive(Debug)]
pub(crate) struct LaneControl {
    pub lane: Lane,
    state: watch::Sender<LaneState>,
    /// Workers whose consumer is open now.
    consuming: AtomicUsize,
}

impl LaneControl {
    pub fn state(&self) -> LaneState {
        *self.state.borrow()
    }

    /// A receiver of the state, for a worker.
    pub fn watch(&self) -> watch::Receiver<LaneState> {
        self.state.subscribe()
    }

    /// Counts a worker as consuming until the guard drops.
    pub fn consuming(self: &Arc<Self>) -> Consuming {
        self.consuming.fetch_add(1, Ordering::Relaxed);
        Consuming(self.clone())
    }

    fn set(&self, state: LaneState, metrics: &Metrics) {
        self.state.send_replace(state);
        metrics.lane_state(self.lane, state);
    }
}

/// A worker's open consumer.
#[derive(Debug)]
pub(crate) struct Consuming(Arc<LaneControl>);

impl Drop for Consuming {
    fn drop(&mut self) {
        self.0.consuming.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The lanes of a node, with what they report.
#[derive(Debug)]
pub(crate) struct Lanes {
    pub node: String,
    each: Vec<Arc<LaneControl>>,
    metrics: Arc<Metrics>,
}

/// A control command the node cannot carry out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum LaneError {
    #[error("node {node} does not consume lane `{lane}`; it consumes: {served}")]
    NotServed {
        node: String,
        lane: String,
        served: String,
    },
}

impl Lanes {
    pub fn new(node: &str, lanes: &[Lane], metrics: Arc<Metrics>) -> Lanes {
        Lanes {
            node: node.to_string(),
            each: lanes
                .iter()
                .map(|&lane| {
                    Arc::new(LaneControl {
                        lane,
                        state: watch::Sender::new(LaneState::Consuming),
                        consuming: AtomicUsize::new(0),
                    })
                })
                .collect(),
            metrics,
        }
    }

    pub fn get(&self, lane: Lane) -> Option<&Arc<LaneControl>> {
        self.each.iter().find(|c| c.lane == lane)
    }

    /// Every lane's state, workers consuming and deliveries in flight.
    pub fn status(&self) -> Vec<LaneStatus> {
        self.each
            .iter()
            .map(|c| LaneStatus {
                lane: c.lane.key().to_string(),
                state: c.state(),
                workers: c.consuming.load(Ordering::Relaxed),
                in_flight: self.metrics.deliveries().count(c.lane),
            })
            .collect()
    }

    /// Lanes not consuming, for readiness.
    pub fn stopped(&self) -> Vec<(Lane, LaneState)> {
        self.each
            .iter()
            .map(|c| (c.lane, c.state()))
            .filter(|(_, s)| *s != LaneState::Consuming)
            .collect()
    }

    /// Carries out `op` on the lane keyed `key`; a drain waits (up to `drain_timeout`)
    /// until the lane's consumers are cancelled and nothing of it is in flight.
    pub async fn command(
        &self,
        op: ControlOp,
        key: &str,
        drain_timeout: Duration,
    ) -> Result<ControlAnswer, LaneError> {
        let Some(control) = Lane::parse(key).and_then(|lane| self.get(lane)) else {
            return Err(LaneError::NotServed {
                node: self.node.clone(),
                lane: key.to_string(),
                served: if self.each.is_empty() {
                    "none (its role serves no data lane)".to_string()
                } else {
                    self.each
                        .iter()
                        .map(|c| c.lane.key())
                        .collect::<Vec<_>>()
                        .join(", ")
                },
            });
        };
        let lane = control.lane;
        let mut answer = ControlAnswer {
            node: self.node.clone(),
            lane: key.to_string(),
            state: LaneState::Consuming,
            finished: None,
            left: None,
        };
        match op {
            ControlOp::Pause => control.set(LaneState::Paused, &self.metrics),
            ControlOp::Resume => control.set(LaneState::Consuming, &self.metrics),
            ControlOp::Drain => {
                let deliveries = self.metrics.deliveries();
                let before = deliveries.settled(lane);
                control.set(LaneState::Draining, &self.metrics);
                let empty = || {
                    control.consuming.load(Ordering::Relaxed) == 0 && deliveries.count(lane) == 0
                };
                let waited = tokio::time::timeout(drain_timeout, async {
                    // A resume (or pause) meanwhile ends the drain: the newest command wins.
                    while !empty() && control.state() == LaneState::Draining {
                        tokio::time::sleep(DRAIN_POLL).await;
                    }
                })
                .await;
                if waited.is_ok() && control.state() == LaneState::Draining {
                    control.set(LaneState::Drained, &self.metrics);
                }
                answer.finished = Some(deliveries.settled(lane) - before);
                if waited.is_err() {
                    answer.left = Some(deliveries.count(lane));
                }
            }
        }
        answer.state = control.state();
        tracing::info!(
            op = op.as_str(),
            lane = key,
            state = answer.state.as_str(),
            finished = answer.finished,
            "lane control"
        );
        Ok(answer)
    }
}
