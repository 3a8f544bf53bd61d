//! The node's HTTP server: `/metrics` (Prometheus text format), `/healthz` (alive) and
//! `/readyz` (ready to take work, or 503 naming the checks that failed).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Map, Value as Json, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::metrics::Metrics;

/// One readiness check: its name and, if it failed, why.
#[derive(Debug)]
pub(crate) struct Check {
    pub name: &'static str,
    pub failed: Option<String>,
}

/// What decides readiness; the node implements it (telemetry does not know nodes).
pub(crate) trait Probe: Send + Sync + 'static {
    fn checks(&self) -> impl Future<Output = Vec<Check>> + Send;
}

/// The telemetry server could not start.
#[derive(Debug, thiserror::Error)]
#[error(
    "the telemetry server cannot listen on {addr}: {source}; set telemetry.listen to a free \
     address (port 0 picks one) or to `off`"
)]
pub struct ListenError {
    addr: SocketAddr,
    source: std::io::Error,
}

struct App<P> {
    metrics: Arc<Metrics>,
    probe: Arc<P>,
}

/// Binds `addr` and serves until `stop` fires; returns the bound address (the port chosen
/// when `addr` has port 0). `extra` adds a role's own routes (the admin's operator page).
pub(crate) async fn serve<P: Probe>(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    probe: Arc<P>,
    extra: Option<Router>,
    stop: CancellationToken,
) -> Result<SocketAddr, ListenError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ListenError { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| ListenError { addr, source })?;
    let app = Router::new()
        .route("/metrics", get(render::<P>))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz::<P>))
        .with_state(Arc::new(App { metrics, probe }));
    let app = match extra {
        Some(routes) => app.merge(routes),
        None => app,
    };
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "the telemetry server failed");
        }
    });
    tracing::info!(addr = %bound, "telemetry served: /metrics /healthz /readyz");
    Ok(bound)
}

async fn render<P: Probe>(State(app): State<Arc<App<P>>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        )],
        app.metrics.render(),
    )
        .into_response()
}

/// Alive: answered while the process serves at all.
async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz<P: Probe>(State(app): State<Arc<App<P>>>) -> Response {
    let checks = app.probe.checks().await;
    let (status, body) = readiness(&checks);
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// `{"ready": bool, "failed": [names], "checks": {name: "ok" | why}}`, 200 or 503.
fn readiness(checks: &[Check]) -> (StatusCode, Json) {
    let failed: Vec<&str> = checks
        .iter()
        .filter(|c| c.failed.is_some())
        .map(|c| c.name)
        .collect();
    let each: Map<String, Json> = checks
        .iter()
        .map(|c| {
            let state = c.failed.as_deref().unwrap_or("ok");
            (c.name.to_string(), Json::from(state))
        })
        .collect();
    let status = if failed.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        json!({ "ready": failed.is_empty(), "failed": failed, "checks": each }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_check_makes_it_not_ready_and_is_named() {
        let checks = [
            Check {
                name: "broker",
                failed: Some("down".into()),
            },
            Check {
                name: "database",
                failed: None,
            },
        ];
        let (status, body) = readiness(&checks);
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            body,
            json!({"ready": false, "failed": ["broker"], "checks": {"broker": "down", "database": "ok"}})
        );
        let (status, body) = readiness(&checks[1..]);
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["ready"], true);
    }
}
