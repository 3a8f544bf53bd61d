//! Logging set-up.

use tracing_subscriber::EnvFilter;

/// lapin modules that log message bodies (as decimal byte arrays): every message the broker
/// returns, at WARN, and every frame, at TRACE. Bodies are personal data and a returned
/// 1 MB reply became 20 MB of log, so these caps are added after the user's filter, where
/// the more specific directive wins over e.g. `lapin=trace`.
pub const BODY_DUMP_CAPS: [&str; 3] = [
    "lapin::returned_messages=error",
    "lapin::channels=debug",
    "lapin::frames=debug",
];

/// The configured filter (`RUST_LOG` overrides it) with [`BODY_DUMP_CAPS`] on top.
pub fn filter(configured: &str) -> EnvFilter {
    let mut filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(configured));
    for cap in BODY_DUMP_CAPS {
        filter = filter.add_directive(cap.parse().expect("the caps are valid directives"));
    }
    filter
}

/// Installs the fmt subscriber once.
pub fn init(configured: &str) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter(configured))
        .with_target(false)
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_dump_caps_win_over_a_broad_lapin_filter() {
        let shown = filter("info,lapin=trace,lapin::returned_messages=trace").to_string();
        assert!(shown.contains("lapin::returned_messages=error"), "{shown}");
        assert!(!shown.contains("lapin::returned_messages=trace"), "{shown}");
    }
}
