//! Retrying a write whose message stays unacked until it is stored: a database that is
//! down only delays the queue, it never loses what the queue holds.

use std::fmt::Display;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// The first pause after a failed write; it doubles after each further failure.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// The longest pause between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Runs `write` until it succeeds, logging each failure as `what` failed; `None` when
/// `stop` fires first (the caller leaves its delivery unacked: the broker redelivers it
/// to the next run).
pub(crate) async fn until_written<T, E, F, Fut>(
    stop: &CancellationToken,
    what: &str,
    mut write: F,
) -> Option<T>
where
    E: Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut pause = FIRST_BACKOFF;
    loop {
        match write().await {
            Ok(v) => return Some(v),
            Err(e) => {
                tracing::warn!(error = %e, retry_ms = pause.as_millis() as u64, "{what} failed; retrying");
                tokio::select! {
                    () = stop.cancelled() => return None,
                    () = tokio::time::sleep(pause) => {}
                }
                pause = (pause * 2).min(MAX_BACKOFF);
            }
        }
    }
}
