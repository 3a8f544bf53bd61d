//! A node's readiness, as `/readyz` reports it: [`Health`] plus the database and whether the
//! node is stopping.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::lanes::Lanes;
use super::{Counters, Health};
use crate::store::Store;
use crate::telemetry::http::{Check, Probe};
use crate::transport::link::Link;

/// How long a database check's result is reused: probes every second cost the database
/// one `SELECT 1` per second at most, whatever the number of probers.
const DATABASE_CHECK_TTL: Duration = Duration::from_secs(1);
/// How long the readiness `SELECT 1` may take before the database counts as unreachable.
const DATABASE_CHECK_TIMEOUT: Duration = Duration::from_secs(1);

/// A node's readiness for `/readyz`: [`Health`] (broker connected, every consumer up),
/// every lane consuming, the database reachable, and not stopping.
pub(super) struct Readiness {
    pub link: Arc<Link>,
    pub counters: Arc<Counters>,
    pub store: Store,
    pub stop: CancellationToken,
    pub lanes: Arc<Lanes>,
    /// The last database check: when, and why it failed if it did.
    pub database: tokio::sync::Mutex<Option<(Instant, Option<String>)>>,
}

impl Readiness {
    /// A lane an operator paused or drained takes none of its work on this node, so the
    /// node is not ready for its role (wiki/operations.md, "Readiness and paused lanes").
    fn lanes_stopped(&self) -> Option<String> {
        let stopped = self.lanes.stopped();
        if stopped.is_empty() {
            return None;
        }
        let each: Vec<String> = stopped
            .iter()
            .map(|(lane, state)| format!("{} is {}", lane.key(), state.as_str()))
            .collect();
        Some(format!(
            "{} by an operator; `beds admin resume {} LANE` consumes again",
            each.join(", "),
            self.lanes.node
        ))
    }

    async fn database(&self) -> Option<String> {
        let mut last = self.database.lock().await;
        if let Some((at, failed)) = &*last
            && at.elapsed() < DATABASE_CHECK_TTL
        {
            return failed.clone();
        }
        let failed = match tokio::time::timeout(DATABASE_CHECK_TIMEOUT, self.store.ping()).await {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(format!("the database is unreachable: {e}")),
            Err(_) => Some(format!(
                "the database did not answer SELECT 1 within {} ms",
                DATABASE_CHECK_TIMEOUT.as_millis()
            )),
        };
        *last = Some((Instant::now(), failed.clone()));
        failed
    }
}

impl Probe for Readiness {
    async fn checks(&self) -> Vec<Check> {
        let health = Health::of(&self.link, &self.counters);
        vec![
            Check {
                name: "broker",
                failed: (!health.connected).then(|| {
                    "the AMQP connection is down; the node reconnects on its own".to_string()
                }),
            },
            Check {
                name: "consumers",
                failed: (health.workers_down > 0).then(|| {
                    format!(
                        "{} consumer(s) are between a failure and their restart",
                        health.workers_down
                    )
                }),
            },
            Check {
                name: "lanes",
                failed: self.lanes_stopped(),
            },
            Check {
                name: "database",
                failed: self.database().await,
            },
            Check {
                name: "running",
                failed: self
                    .stop
                    .is_cancelled()
                    .then(|| "the node is stopping".to_string()),
            },
        ]
    }
}
