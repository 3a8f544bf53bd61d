//! Everything BEDS does on RabbitMQ below the message contract: connecting (with a bound),
//! connections that outlive lapin's own recovery, the topology and its names, and
//! publishing with a bounded wait for the broker's confirm. Server, client and the
//! operator tools share it.

pub(crate) mod link;
pub mod names;
pub(crate) mod publish;
pub mod signing;
pub mod topology;

use std::time::Duration;

use lapin::{Connection, ConnectionProperties};

/// How long one connection attempt may take. A broker that is booting can accept the TCP
/// connection and leave the AMQP handshake hanging; without a bound, a reconnect made while
/// holding the node's connection (see `Link::get`) would stall every worker for good.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a connection to RabbitMQ could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(
        "cannot connect to RabbitMQ at {url} ({source}); start it with \
         `rabbitmq-server -detached` or point BEDS_AMQP__URL at a running broker"
    )]
    Refused { url: String, source: lapin::Error },
    #[error(
        "RabbitMQ at {url} accepted the connection but did not complete the handshake within \
         {} s; it may still be starting",
        .after.as_secs()
    )]
    Timeout { url: String, after: Duration },
}

/// Connects to RabbitMQ, naming the URL (password redacted) and how to start the broker
/// on failure.
pub async fn connect(url: &str, name: &str) -> Result<Connection, ConnectError> {
    // Auto-recovery reconnects and replays channels, consumers and declarations after the
    // broker closes the connection or restarts.
    let attempt = Connection::connect(
        url,
        ConnectionProperties::default()
            .with_connection_name(name.into())
            .enable_auto_recover(),
    );
    match tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
        Ok(result) => result.map_err(|source| ConnectError::Refused {
            url: crate::config::redact(url),
            source,
        }),
        Err(_) => Err(ConnectError::Timeout {
            url: crate::config::redact(url),
            after: CONNECT_TIMEOUT,
        }),
    }
}
