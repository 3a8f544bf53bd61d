//! `/readyz` follows the broker: not ready (503, naming the broker) while the node's
//! RabbitMQ is stopped, ready again after it started; `/healthz` answers throughout.

use std::time::Duration;

use serde_json::Value as Json;

use crate::http::get;
use crate::node::Node;
use crate::{RESUME_BOUND, SERIAL, env_on};

/// Polls `/readyz` until it answers `status`, for at most `within`; its last body.
async fn readyz_until(addr: std::net::SocketAddr, status: u16, within: Duration) -> Json {
    let end = tokio::time::Instant::now() + within;
    loop {
        let (got, body) = get(addr, "/readyz").await.expect("/readyz answers");
        if got == status {
            return serde_json::from_str(&body).expect("a JSON body");
        }
        assert!(
            tokio::time::Instant::now() < end,
            "/readyz still answers {got} ({body}), not {status}, after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn readyz_goes_not_ready_while_the_broker_is_stopped_and_ready_again_after() {
    let _serial = SERIAL.lock().await;
    let broker = Node::start().await;
    let env = env_on(&broker, "fault_readyz");
    let server = env.start().await;
    let addr = server
        .http_addr()
        .expect("telemetry.listen is set in the test config");
    let ready = readyz_until(addr, 200, Duration::from_secs(10)).await;
    assert_eq!(ready["ready"], true, "{ready}");

    broker.stop_app().await;
    let down = readyz_until(addr, 503, Duration::from_secs(15)).await;
    assert_eq!(down["ready"], false, "{down}");
    assert!(
        down["failed"]
            .as_array()
            .unwrap()
            .contains(&Json::from("broker")),
        "{down}"
    );
    assert_eq!(down["checks"]["database"], "ok", "{down}");
    assert_eq!(
        get(addr, "/healthz").await.unwrap(),
        (200, "ok\n".to_string()),
        "alive while not ready"
    );

    broker.start_app().await;
    let again = readyz_until(addr, 200, RESUME_BOUND).await;
    assert_eq!(again["failed"], Json::Array(vec![]), "{again}");
    server.stop().await;
}
