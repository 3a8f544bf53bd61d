//! Telemetry: the log set-up (here), the metrics of a node ([`metrics`]), the lanes'
//! queue depths ([`queues`]) and the HTTP server that exposes them with the node's
//! health ([`http`]). See wiki/operations.md.

pub(crate) mod http;
pub(crate) mod in_flight;
pub(crate) mod metrics;
pub(crate) mod queues;
pub(crate) mod series;
pub mod status;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// lapin modules that log message bodies (as decimal byte arrays): every message the broker
/// returns, at WARN, and every frame, at TRACE. Bodies are personal data and a returned
/// 1 MB reply became 20 MB of log, so these caps apply on top of any `log.filter` or
/// `RUST_LOG` (a separate filter both must pass; `lapin=trace` cannot lift them).
pub const BODY_DUMP_CAPS: [(&str, LevelFilter); 3] = [
    ("lapin::returned_messages", LevelFilter::ERROR),
    ("lapin::channels", LevelFilter::DEBUG),
    ("lapin::frames", LevelFilter::DEBUG),
];

/// The caps of [`BODY_DUMP_CAPS`]; everything else passes.
pub fn body_dump_caps() -> Targets {
    Targets::new()
        .with_default(LevelFilter::TRACE)
        .with_targets(BODY_DUMP_CAPS)
}

/// Installs the fmt subscriber once; `RUST_LOG` overrides the configured filter.
pub fn init(filter: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(filter));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .finish()
        .with(body_dump_caps())
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_dumps_are_capped_and_the_rest_passes() {
        let caps = body_dump_caps();
        assert!(!caps.would_enable("lapin::returned_messages", &tracing::Level::WARN));
        assert!(!caps.would_enable("lapin::channels", &tracing::Level::TRACE));
        assert!(caps.would_enable("lapin::channels", &tracing::Level::DEBUG));
        assert!(caps.would_enable("beds_runtime::node", &tracing::Level::TRACE));
    }
}
