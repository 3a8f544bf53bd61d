//! An AMQP connection that outlives lapin's own recovery; the one reconnect logic of the
//! server's workers and the client.
//!
//! lapin's auto-recovery handles a closed connection, but after a broker restart it can stay
//! "reconnecting" for ever (seen here with `rabbitmqctl stop_app` / `start_app`, when an
//! attempt lands while the broker boots). A [`Link`] treats a connection that is closed,
//! errored, or not connected for [`STALLED`] as dead and opens a new one, so the supervisors
//! that ask it for a connection get a live one once the broker is back.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lapin::Connection;
use tokio::sync::Mutex;

use crate::config::AmqpTlsConfig;
use crate::transport::{ConnectError, connect};

/// How long closing a connection may take at shutdown.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a connection may stay unconnected before it is given up on.
pub const STALLED: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct Link {
    url: String,
    tls: AmqpTlsConfig,
    name: String,
    current: Mutex<(Arc<Connection>, Watch)>,
}

/// Remembers since when a connection has been down.
#[derive(Debug, Default)]
pub struct Watch {
    down_since: Option<Instant>,
}

impl Watch {
    /// Closed, errored, or down for longer than [`STALLED`].
    pub fn dead(&mut self, conn: &Connection) -> bool {
        let status = conn.status();
        if status.connected() {
            self.down_since = None;
            return false;
        }
        if status.closed() || status.errored() {
            return true;
        }
        self.down_since.get_or_insert_with(Instant::now).elapsed() >= STALLED
    }
}

impl Link {
    pub async fn open(url: &str, tls: &AmqpTlsConfig, name: &str) -> Result<Link, ConnectError> {
        let conn = connect(url, tls, name).await?;
        Ok(Link {
            url: url.to_string(),
            tls: tls.clone(),
            name: name.to_string(),
            current: Mutex::new((Arc::new(conn), Watch::default())),
        })
    }

    /// The live connection, reconnecting first if the current one is dead for good. If the
    /// broker is still away, the dead connection is returned and the caller backs off.
    pub async fn get(&self) -> Arc<Connection> {
        let mut current = self.current.lock().await;
        let (conn, watch) = &mut *current;
        if watch.dead(conn) {
            match connect(&self.url, &self.tls, &self.name).await {
                Ok(fresh) => {
                    tracing::info!(name = %self.name, "reconnected to RabbitMQ");
                    let stale = std::mem::replace(conn, Arc::new(fresh));
                    *watch = Watch::default();
                    // Stop lapin's own attempts on the abandoned connection.
                    tokio::spawn(async move { stale.close(320, "replaced".into()).await });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reconnecting failed; retrying after a backoff")
                }
            }
        }
        conn.clone()
    }

    /// A connected connection: waits (polling, 100 ms growing to 1 s) while the broker is
    /// away or lapin is reconnecting, replacing a dead connection on the way. Workers start
    /// on it instead of failing against a connection that is still reconnecting.
    pub async fn live(&self) -> Arc<Connection> {
        let mut pause = Duration::from_millis(100);
        loop {
            let conn = self.get().await;
            if conn.status().connected() {
                return conn;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(1));
        }
    }

    /// Whether the connection is up, without waiting (false while a reconnect is underway).
    pub fn connected(&self) -> bool {
        self.current
            .try_lock()
            .is_ok_and(|c| c.0.status().connected())
    }

    /// Closes the connection, waiting at most [`CLOSE_TIMEOUT`]: a stop must not hang on
    /// a connection the broker no longer answers.
    pub async fn close(&self) {
        let conn = self.current.lock().await.0.clone();
        match tokio::time::timeout(CLOSE_TIMEOUT, conn.close(200, "shutdown".into())).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "connection close"),
            Err(_) => tracing::warn!("closing the connection timed out; leaving it"),
        }
    }
}
