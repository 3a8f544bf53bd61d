//! Everything BEDS does on RabbitMQ below the message contract: connecting (with a bound,
//! over TLS when the URL says `amqps://`), connections that outlive lapin's own recovery,
//! the topology and its names, and publishing with a bounded wait for the broker's
//! confirm. Server, client and the operator tools share it.

pub(crate) mod link;
pub mod names;
pub(crate) mod publish;
pub mod signing;
pub mod topology;

use std::io;
use std::time::Duration;

use amq_protocol_tcp::{AMQPUriTcpExt, OwnedIdentity, OwnedTLSConfig};
use futures_util::io::{AsyncReadExt, AsyncWriteExt};
use lapin::uri::{AMQPScheme, AMQPUri};
use lapin::{Connection, ConnectionProperties, ErrorKind};

use crate::config::{AmqpTlsConfig, SecretError, redact};

/// How long one connection attempt may take. A broker that is booting can accept the TCP
/// connection and leave the AMQP handshake hanging; without a bound, a reconnect made while
/// holding the node's connection (see `Link::get`) would stall every worker for good.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// AMQP 0-9-1's protocol header, the first bytes a client sends.
const PROTOCOL_HEADER: &[u8] = b"AMQP\x00\x00\x09\x01";

/// Why a connection to RabbitMQ could not be opened; one line each, naming the cause.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(
        "cannot connect to RabbitMQ at {url}: connection refused (nothing listens there); \
         start it with `rabbitmq-server -detached` or point amqp.url at a running broker"
    )]
    Refused { url: String },
    #[error("cannot reach RabbitMQ at {url}: {reason}; check the host name and the network")]
    Unreachable { url: String, reason: String },
    #[error(
        "RabbitMQ at {url} did not {stage} within {} s; check the address and firewall, or \
         wait if the broker is still starting",
        .after.as_secs()
    )]
    Timeout {
        url: String,
        stage: &'static str,
        after: Duration,
    },
    #[error(
        "TLS with RabbitMQ at {url} failed: {reason}; check that amqp.tls.ca_file holds the CA \
         that signed the broker's certificate, that the URL's host is named in it, and that \
         the port is the broker's TLS listener (5671)"
    )]
    Tls { url: String, reason: String },
    #[error("the TLS set-up for RabbitMQ is unusable: {0}")]
    TlsSetup(#[from] SecretError),
    #[error(
        "RabbitMQ at {url} refused the login of user `{user}` ({reason}); check the user name \
         and password (amqp.url_file or amqp.password_file) and the user's permissions on \
         the vhost"
    )]
    AccessRefused {
        url: String,
        user: String,
        reason: String,
    },
    #[error("cannot connect to RabbitMQ at {url}: {source}")]
    Failed { url: String, source: lapin::Error },
}

/// Connects to RabbitMQ, with TLS for an `amqps://` URL. The transport (TCP, then TLS) is
/// tried once first: lapin retries a refused or failed transport with backoff and would
/// report it only when the bound expires (and its retrying thread then panics when the
/// runtime shuts down); the probe names the cause at once.
pub async fn connect(
    url: &str,
    tls: &AmqpTlsConfig,
    name: &str,
) -> Result<Connection, ConnectError> {
    let shown = redact(url);
    let uri: AMQPUri = url.parse().map_err(|reason| ConnectError::Unreachable {
        url: shown.clone(),
        reason: format!("the URL does not parse ({reason})"),
    })?;
    let over_tls = uri.scheme == AMQPScheme::AMQPS;
    let tls_config = match uri.scheme {
        AMQPScheme::AMQPS => {
            let files = tls.load()?;
            OwnedTLSConfig {
                cert_chain: Some(files.ca),
                identity: files
                    .identity
                    .map(|(pem, key)| OwnedIdentity::PKCS8 { pem, key }),
            }
        }
        AMQPScheme::AMQP => OwnedTLSConfig::default(),
    };
    let runtime = lapin::runtime::default_runtime().map_err(|source| ConnectError::Failed {
        url: shown.clone(),
        source,
    })?;
    // Resolved first, so that an unknown host is not taken for a TLS failure below.
    let host = (uri.authority.host.as_str(), uri.authority.port);
    if let Err(e) = tokio::net::lookup_host(host).await {
        return Err(ConnectError::Unreachable {
            url: shown,
            reason: format!("cannot resolve {}: {e}", uri.authority.host),
        });
    }
    let probe = async {
        let mut stream = uri
            .connect_with_config_async(tls_config.as_ref(), &runtime)
            .await?;
        // The broker answers the protocol header with Connection.Start. Over TLS 1.3 a
        // refused client certificate shows only here, as an alert on the first read.
        stream.write_all(PROTOCOL_HEADER).await?;
        stream.flush().await?;
        let mut first = [0u8; 1];
        match stream.read(&mut first).await? {
            0 => Err(io::Error::from(io::ErrorKind::ConnectionAborted)),
            _ => Ok(()),
        }
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, probe).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(transport_error(shown, over_tls, e)),
        Err(_) => {
            return Err(ConnectError::Timeout {
                url: shown,
                stage: "answer the connection (TCP, TLS, protocol header)",
                after: CONNECT_TIMEOUT,
            });
        }
    }
    let user = uri.authority.userinfo.username.clone();
    // Auto-recovery reconnects and replays channels, consumers and declarations after the
    // broker closes the connection or restarts.
    let attempt = Connection::connect_uri_with_config(
        uri,
        ConnectionProperties::default()
            .with_connection_name(name.into())
            .enable_auto_recover(),
        tls_config,
        runtime,
    );
    match tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(source)) => Err(match source.kind() {
            // 403 ACCESS_REFUSED (bad login), 530 NOT_ALLOWED (no access to the vhost).
            ErrorKind::ProtocolError(e) if [403, 530].contains(&e.get_id()) => {
                ConnectError::AccessRefused {
                    url: shown,
                    user,
                    reason: e.to_string(),
                }
            }
            ErrorKind::IOError(io) if over_tls && io.kind() == io::ErrorKind::InvalidData => {
                ConnectError::Tls {
                    url: shown,
                    reason: io.to_string(),
                }
            }
            _ => ConnectError::Failed { url: shown, source },
        }),
        Err(_) => Err(ConnectError::Timeout {
            url: shown,
            stage: "complete the AMQP handshake",
            after: CONNECT_TIMEOUT,
        }),
    }
}

/// Names the cause of a failed TCP connect or TLS handshake.
fn transport_error(url: String, over_tls: bool, e: io::Error) -> ConnectError {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => ConnectError::Refused { url },
        io::ErrorKind::TimedOut => ConnectError::Timeout {
            url,
            stage: "accept the TCP connection",
            after: CONNECT_TIMEOUT,
        },
        io::ErrorKind::NotFound
        | io::ErrorKind::HostUnreachable
        | io::ErrorKind::NetworkUnreachable
        | io::ErrorKind::AddrNotAvailable => ConnectError::Unreachable {
            url,
            reason: e.to_string(),
        },
        // The TCP connection was made; what failed is the handshake over it.
        _ if over_tls => ConnectError::Tls {
            url,
            reason: e.to_string(),
        },
        _ => ConnectError::Unreachable {
            url,
            reason: e.to_string(),
        },
    }
}
