//! A node's metrics, in a registry of its own (not a process-wide recorder: several nodes in
//! one process, as in the tests and the examples, each count only what they handle).
//!
//! Every label value comes from the compiled catalog or a closed set (operations, error
//! codes, lanes): a client naming a template that does not exist is counted under
//! [`UNKNOWN`], so no client input can grow the number of series.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::in_flight::Deliveries;
pub(crate) use super::series::{Series, UNKNOWN};
use super::status::{LATENCY_BOUNDS, LaneCounters, LaneState};
use crate::error::ErrorCode;
use crate::ingress::lane::Lane;

/// Upper bounds (seconds) of the latency buckets: from half a millisecond (a cached read)
/// to ten seconds (a write retried against a slow database). Heartbeats use the same.
const LATENCY_BUCKETS: [f64; 14] = LATENCY_BOUNDS;

/// An error code as its wire name (`not_found`), or `none` for a success.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Code(pub Option<ErrorCode>);

/// An error code's wire name (`not_found`).
fn code_name(code: ErrorCode) -> String {
    match serde_json::to_value(code) {
        Ok(serde_json::Value::String(name)) => name,
        _ => UNKNOWN.to_string(),
    }
}

impl EncodeLabelValue for Code {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        let Some(code) = self.0 else {
            return encoder.write_str("none");
        };
        // Encoded at scrape time only; the wire name is the one clients match on.
        match serde_json::to_value(code) {
            Ok(serde_json::Value::String(name)) => encoder.write_str(&name),
            _ => encoder.write_str(UNKNOWN),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    domain: &'static str,
    template: &'static str,
    op: &'static str,
    /// `ok` or `error`.
    outcome: &'static str,
    code: Code,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelSet)]
struct LaneLabels {
    /// The lane's routing key (`rec.read`, `rec.write`).
    lane: &'static str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelSet)]
struct LaneStateLabels {
    lane: &'static str,
    /// `consuming`, `paused`, `draining` or `drained`.
    state: &'static str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DeadLetterLabels {
    lane: &'static str,
    /// The error code the dead letter carries in `x-beds-error-code`.
    reason: Code,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RetentionLabels {
    domain: &'static str,
    template: &'static str,
    /// Where the records went: `warehouse`, `cold` or `deleted`.
    tier: &'static str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelSet)]
struct CacheLabels {
    domain: &'static str,
    template: &'static str,
    op: &'static str,
    /// `hit` or `miss`.
    result: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct QueueLabels {
    /// The queue's name without the queue tag (`rec.write`, `rec.write.dlq`).
    pub queue: String,
}

#[derive(Debug, Clone)]
struct LatencyBuckets;

impl MetricConstructor<Histogram> for LatencyBuckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(LATENCY_BUCKETS)
    }
}

/// The metrics of one node; cheap to share (`Arc`), each update a few atomic operations.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<Series, Histogram, LatencyBuckets>,
    in_flight: Family<LaneLabels, Gauge>,
    redeliveries: Family<LaneLabels, Counter>,
    retries: Family<LaneLabels, Counter>,
    dead_letters: Family<DeadLetterLabels, Counter>,
    cache: Family<CacheLabels, Counter>,
    retention: Family<RetentionLabels, Counter>,
    queue_messages: Family<QueueLabels, Gauge>,
    queue_consumers: Family<QueueLabels, Gauge>,
    outbox_backlog: Gauge,
    lineage_sent: Counter,
    lineage_dropped: Counter,
    oldest: Family<LaneLabels, Gauge<f64, AtomicU64>>,
    lane_state: Family<LaneStateLabels, Gauge>,
    /// The lanes this node consumes (the per-lane gauges show only these).
    lanes: &'static [Lane],
    deliveries: Arc<Deliveries>,
    /// Per-lane totals for heartbeats, indexed by [`Lane::index`].
    totals: [LaneTotals; 2],
}

/// One lane's cumulative counts, read whole by heartbeats (the Prometheus families are
/// per template).
#[derive(Debug, Default)]
struct LaneTotals {
    ok: AtomicU64,
    error: AtomicU64,
    latency_sum_us: AtomicU64,
    latency_buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    retries: AtomicU64,
    redeliveries: AtomicU64,
    /// Few distinct reasons, and written only when a message is dead-lettered.
    dead_letters: Mutex<HashMap<ErrorCode, u64>>,
}

impl Metrics {
    pub fn new(lanes: &'static [Lane]) -> Metrics {
        let mut registry = Registry::with_prefix("beds");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests handled, by target, outcome and error code",
            requests.clone(),
        );
        let latency = Family::new_with_constructor(LatencyBuckets);
        registry.register(
            "request_duration_seconds",
            "Time from delivery to settled (reply published, acked), by target",
            latency.clone(),
        );
        let in_flight = Family::<LaneLabels, Gauge>::default();
        registry.register(
            "in_flight",
            "Deliveries being handled now, by lane",
            in_flight.clone(),
        );
        let redeliveries = Family::<LaneLabels, Counter>::default();
        registry.register(
            "redeliveries",
            "Deliveries the broker marked redelivered (a previous attempt was not acked)",
            redeliveries.clone(),
        );
        let retries = Family::<LaneLabels, Counter>::default();
        registry.register(
            "retries",
            "Requests parked in the retry lane after a transient failure",
            retries.clone(),
        );
        let dead_letters = Family::<DeadLetterLabels, Counter>::default();
        registry.register(
            "dead_letters",
            "Messages dead-lettered, by lane and reason (error code)",
            dead_letters.clone(),
        );
        let cache = Family::<CacheLabels, Counter>::default();
        registry.register(
            "cache_lookups",
            "Read-cache lookups of cached templates and queries, by result",
            cache.clone(),
        );
        let retention = Family::<RetentionLabels, Counter>::default();
        registry.register(
            "retention_records",
            "Records segundo's retention moved, by template and the tier they went to (warehouse, cold, deleted)",
            retention.clone(),
        );
        let queue_messages = Family::<QueueLabels, Gauge>::default();
        registry.register(
            "queue_messages",
            "Messages ready in a queue this node consumes or feeds (polled)",
            queue_messages.clone(),
        );
        let queue_consumers = Family::<QueueLabels, Gauge>::default();
        registry.register(
            "queue_consumers",
            "Consumers on a queue, all nodes together (polled)",
            queue_consumers.clone(),
        );
        let outbox_backlog = Gauge::default();
        registry.register(
            "outbox_backlog",
            "Write events waiting in the outbox (reported by the relay holding the lease)",
            outbox_backlog.clone(),
        );
        let lineage_sent = Counter::default();
        registry.register(
            "lineage_records_sent",
            "Lineage records published to the admin role (sampled conversations only)",
            lineage_sent.clone(),
        );
        let lineage_dropped = Counter::default();
        registry.register(
            "lineage_records_dropped",
            "Lineage records dropped: the in-memory queue was full or the broker did not take a batch",
            lineage_dropped.clone(),
        );
        let oldest = Family::<LaneLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "in_flight_oldest_seconds",
            "Age of the oldest delivery being handled now, by lane (0 when none)",
            oldest.clone(),
        );
        let lane_state = Family::<LaneStateLabels, Gauge>::default();
        registry.register(
            "lane_state",
            "1 for the state each lane is in (consuming, paused, draining, drained), 0 for the others",
            lane_state.clone(),
        );
        let metrics = Metrics {
            registry,
            requests,
            latency,
            in_flight,
            redeliveries,
            retries,
            dead_letters,
            cache,
            retention,
            queue_messages,
            queue_consumers,
            outbox_backlog,
            lineage_sent,
            lineage_dropped,
            oldest,
            lane_state,
            lanes,
            deliveries: Arc::new(Deliveries::default()),
            totals: Default::default(),
        };
        for &lane in lanes {
            metrics.lane_state(lane, LaneState::Consuming);
        }
        metrics
    }

    /// The node's registry of deliveries in flight.
    pub fn deliveries(&self) -> &Arc<Deliveries> {
        &self.deliveries
    }

    /// Shows `state` as `lane`'s current state.
    pub fn lane_state(&self, lane: Lane, state: LaneState) {
        for each in LaneState::ALL {
            let labels = LaneStateLabels {
                lane: lane.key(),
                state: each.as_str(),
            };
            self.lane_state
                .get_or_create(&labels)
                .set(i64::from(each == state));
        }
    }

    /// `lane`'s cumulative counts since start.
    pub fn lane_counters(&self, lane: Lane) -> LaneCounters {
        let t = &self.totals[lane.index()];
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let dead_letters = t
            .dead_letters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(code, n)| (code_name(*code), *n))
            .collect();
        LaneCounters {
            lane: lane.key().to_string(),
            ok: load(&t.ok),
            error: load(&t.error),
            latency_sum_us: load(&t.latency_sum_us),
            latency_buckets: t.latency_buckets.iter().map(load).collect(),
            retries: load(&t.retries),
            redeliveries: load(&t.redeliveries),
            dead_letters,
        }
    }

    /// The lineage publisher's counters: records sent, records dropped.
    pub fn lineage(&self) -> (Counter, Counter) {
        (self.lineage_sent.clone(), self.lineage_dropped.clone())
    }

    /// The Prometheus text format (0.0.4) of every series.
    pub fn render(&self) -> String {
        for &lane in self.lanes {
            let age = self.deliveries.oldest(lane).unwrap_or_default();
            self.oldest
                .get_or_create(&LaneLabels { lane: lane.key() })
                .set(age.as_secs_f64());
        }
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// One request settled: counted by outcome and code, its latency observed.
    pub fn request(&self, lane: Lane, series: Series, code: Option<ErrorCode>, took: Duration) {
        let labels = RequestLabels {
            domain: series.domain,
            template: series.template,
            op: series.op,
            outcome: if code.is_some() { "error" } else { "ok" },
            code: Code(code),
        };
        self.requests.get_or_create(&labels).inc();
        self.latency
            .get_or_create(&series)
            .observe(took.as_secs_f64());
        let t = &self.totals[lane.index()];
        if code.is_some() { &t.error } else { &t.ok }.fetch_add(1, Ordering::Relaxed);
        t.latency_sum_us
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
        let secs = took.as_secs_f64();
        let bucket = LATENCY_BUCKETS
            .iter()
            .position(|bound| secs <= *bound)
            .unwrap_or(LATENCY_BUCKETS.len());
        t.latency_buckets[bucket].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a delivery as in flight until the guard drops.
    pub fn in_flight(&self, lane: Lane) -> InFlight {
        let gauge = self
            .in_flight
            .get_or_create_owned(&LaneLabels { lane: lane.key() });
        gauge.inc();
        InFlight(gauge)
    }

    pub fn redelivered(&self, lane: Lane) {
        self.redeliveries
            .get_or_create(&LaneLabels { lane: lane.key() })
            .inc();
        self.totals[lane.index()]
            .redeliveries
            .fetch_add(1, Ordering::Relaxed);
    }

    pub fn retried(&self, lane: Lane) {
        self.retries
            .get_or_create(&LaneLabels { lane: lane.key() })
            .inc();
        self.totals[lane.index()]
            .retries
            .fetch_add(1, Ordering::Relaxed);
    }

    pub fn dead_lettered(&self, lane: Lane, code: ErrorCode) {
        let labels = DeadLetterLabels {
            lane: lane.key(),
            reason: Code(Some(code)),
        };
        self.dead_letters.get_or_create(&labels).inc();
        *self.totals[lane.index()]
            .dead_letters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(code)
            .or_default() += 1;
    }

    /// A lookup of the read cache for `series`.
    pub fn cache(&self, series: Series, hit: bool) {
        let labels = CacheLabels {
            domain: series.domain,
            template: series.template,
            op: series.op,
            result: if hit { "hit" } else { "miss" },
        };
        self.cache.get_or_create(&labels).inc();
    }

    /// `records` of `domain.template` moved to `tier` by a retention pass.
    pub fn retention(
        &self,
        domain: &'static str,
        template: &'static str,
        tier: &'static str,
        records: u64,
    ) {
        let labels = RetentionLabels {
            domain,
            template,
            tier,
        };
        self.retention.get_or_create(&labels).inc_by(records);
    }

    /// What a passive declare of `queue` (named without its tag) read.
    pub fn queue(&self, queue: &str, messages: u32, consumers: u32) {
        let labels = QueueLabels {
            queue: queue.to_string(),
        };
        self.queue_messages
            .get_or_create(&labels)
            .set(i64::from(messages));
        self.queue_consumers
            .get_or_create(&labels)
            .set(i64::from(consumers));
    }

    pub fn outbox_backlog(&self) -> &Gauge {
        &self.outbox_backlog
    }
}

/// A delivery in flight; dropping it (also on a panic) takes it off the gauge.
#[derive(Debug)]
pub(crate) struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
        text.lines().find(|l| l.starts_with(prefix))
    }

    #[test]
    fn requests_are_counted_by_outcome_and_code_with_latency() {
        let m = Metrics::new(&[Lane::Read, Lane::Write]);
        let s = Series {
            domain: "d",
            template: "t",
            op: "create",
        };
        m.request(Lane::Write, s, None, Duration::from_millis(2));
        m.request(Lane::Write, s, None, Duration::from_millis(3));
        m.request(
            Lane::Write,
            s,
            Some(ErrorCode::NotFound),
            Duration::from_millis(20),
        );
        let text = m.render();
        assert_eq!(
            line(
                &text,
                r#"beds_requests_total{domain="d",template="t",op="create",outcome="ok",code="none"}"#
            ),
            Some(
                r#"beds_requests_total{domain="d",template="t",op="create",outcome="ok",code="none"} 2"#
            )
        );
        assert!(text.contains(
            r#"beds_requests_total{domain="d",template="t",op="create",outcome="error",code="not_found"} 1"#
        ));
        assert!(text.contains(
            r#"beds_request_duration_seconds_count{domain="d",template="t",op="create"} 3"#
        ));
        assert!(text.contains(
            r#"beds_request_duration_seconds_bucket{domain="d",template="t",op="create",le="0.005"} 2"#
        ), "{text}");
    }

    #[test]
    fn the_in_flight_gauge_follows_its_guards() {
        let m = Metrics::new(&[Lane::Read, Lane::Write]);
        let a = m.in_flight(Lane::Write);
        let b = m.in_flight(Lane::Write);
        assert!(m.render().contains(r#"beds_in_flight{lane="rec.write"} 2"#));
        drop(a);
        drop(b);
        assert!(m.render().contains(r#"beds_in_flight{lane="rec.write"} 0"#));
    }

    #[test]
    fn an_unknown_target_has_fixed_labels() {
        let s = Series::unknown(None);
        assert_eq!((s.domain, s.template, s.op), (UNKNOWN, UNKNOWN, UNKNOWN));
    }
}
