//! A RabbitMQ node of the test's own: fault tests stop, start and restart it instead of the
//! shared broker at 127.0.0.1:5672, which other tests and developers use.
//!
//! The node gets its own name (`beds-fault-<pid>-<n>@localhost`), two free ports (AMQP and
//! Erlang distribution), its own data, log, plugins and config files in a temporary
//! directory owned by the `rabbitmq` user (the Debian wrapper runs the server as that user),
//! and is managed with `rabbitmqctl -n <name>`, which shares the node's Erlang cookie (both
//! run as `rabbitmq`). Dropping a [`Node`] stops it and removes its directory, also when the
//! test panics.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};

/// How long a fresh node may take to boot (a first boot takes several seconds here).
const BOOT: Duration = Duration::from_secs(90);
/// How long a probe of the node over AMQP may take.
const PROBE: Duration = Duration::from_secs(3);

static NODES: AtomicUsize = AtomicUsize::new(0);

#[derive(Debug)]
pub struct Node {
    name: String,
    port: u16,
    /// The TLS listener's port, if the node has one.
    tls_port: Option<u16>,
    dir: Option<tempfile::TempDir>,
}

/// PEM files of a TLS listener that requires client certificates signed by `ca`.
#[derive(Debug, Clone)]
pub struct TlsListener {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A port nobody listens on now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0 to find a free port")
        .port()
}

fn output(cmd: &mut Command, what: &str) -> Output {
    cmd.output().unwrap_or_else(|e| {
        panic!(
            "{what}: cannot run {:?} ({e}); the fault tests need RabbitMQ's \
             rabbitmq-server and rabbitmqctl on PATH",
            cmd.get_program()
        )
    })
}

impl Node {
    /// Boots a new node and waits until its broker application runs.
    pub async fn start() -> Node {
        blocking(|| Node::boot(None)).await
    }

    /// A node with a TLS listener too, verifying client certificates against `tls.ca`.
    pub async fn start_tls(tls: TlsListener) -> Node {
        blocking(move || Node::boot(Some(tls))).await
    }

    fn boot(tls: Option<TlsListener>) -> Node {
        let n = NODES.fetch_add(1, Ordering::Relaxed);
        let name = format!("beds-fault-{}-{n}@localhost", std::process::id());
        let port = free_port();
        let mut dist = free_port();
        while dist == port {
            dist = free_port();
        }
        let dir = tempfile::Builder::new()
            .prefix("beds-fault-node.")
            .tempdir()
            .expect("a temporary directory for the node");
        let path = dir.path().to_path_buf();
        let path = path.as_path();
        std::fs::create_dir(path.join("mnesia")).unwrap();
        std::fs::create_dir(path.join("log")).unwrap();
        std::fs::write(path.join("enabled_plugins"), "[].\n").unwrap();
        // Its own config file: /etc/rabbitmq/rabbitmq.conf pins 5672.
        let mut conf = format!("listeners.tcp.local = 127.0.0.1:{port}\n");
        let tls_port = tls.map(|tls| {
            let mut tls_port = free_port();
            while [port, dist].contains(&tls_port) {
                tls_port = free_port();
            }
            // Copied in: the node runs as `rabbitmq` and reads only its own directory.
            for (file, from) in [
                ("ca.pem", &tls.ca),
                ("cert.pem", &tls.cert),
                ("key.pem", &tls.key),
            ] {
                std::fs::copy(from, path.join(file)).unwrap();
            }
            conf.push_str(&format!(
                "listeners.ssl.default = 127.0.0.1:{tls_port}\n\
                 ssl_options.cacertfile = {dir}/ca.pem\n\
                 ssl_options.certfile = {dir}/cert.pem\n\
                 ssl_options.keyfile = {dir}/key.pem\n\
                 ssl_options.verify = verify_peer\n\
                 ssl_options.fail_if_no_peer_cert = true\n",
                dir = path.display()
            ));
            tls_port
        });
        std::fs::write(path.join("rabbitmq.conf"), conf).unwrap();
        // The Debian wrapper runs the server as `rabbitmq`: it must own its directories.
        let chown = output(
            Command::new("chown")
                .args(["-R", "rabbitmq:rabbitmq"])
                .arg(path),
            "giving the node directory to the rabbitmq user",
        );
        assert!(
            chown.status.success(),
            "chown -R rabbitmq:rabbitmq {}: {} (the fault tests run as root or as rabbitmq)",
            path.display(),
            String::from_utf8_lossy(&chown.stderr)
        );
        let node = Node {
            name,
            port,
            tls_port,
            dir: Some(dir),
        };
        let started = output(
            Command::new("rabbitmq-server")
                .arg("-detached")
                .env("RABBITMQ_NODENAME", &node.name)
                .env("RABBITMQ_NODE_PORT", port.to_string())
                .env("RABBITMQ_DIST_PORT", dist.to_string())
                .env("RABBITMQ_MNESIA_BASE", path.join("mnesia"))
                .env("RABBITMQ_LOG_BASE", path.join("log"))
                .env(
                    "RABBITMQ_ENABLED_PLUGINS_FILE",
                    path.join("enabled_plugins"),
                )
                .env("RABBITMQ_CONFIG_FILE", path.join("rabbitmq.conf")),
            "starting a private RabbitMQ node",
        );
        assert!(
            started.status.success(),
            "rabbitmq-server -detached for {}: {}{}",
            node.name,
            String::from_utf8_lossy(&started.stdout),
            String::from_utf8_lossy(&started.stderr)
        );
        // `wait` follows the pid file, then the broker application's start.
        let waited = Instant::now();
        let pid_file = node.pid_file();
        let timeout = BOOT.as_secs().to_string();
        let up = output(
            Command::new("rabbitmqctl")
                .args(["-q", "-n", &node.name, "wait"])
                .arg(&pid_file)
                .args(["--timeout", &timeout]),
            "waiting for the private node",
        );
        assert!(
            up.status.success(),
            "the private node {} did not boot within {BOOT:?}: {}{}\n{}",
            node.name,
            String::from_utf8_lossy(&up.stdout),
            String::from_utf8_lossy(&up.stderr),
            node.log_tail()
        );
        println!(
            "private RabbitMQ node {} on 127.0.0.1:{port} booted in {:.1} s",
            node.name,
            waited.elapsed().as_secs_f64()
        );
        node
    }

    fn path(&self) -> &Path {
        self.dir.as_ref().expect("the node directory").path()
    }

    fn pid_file(&self) -> PathBuf {
        self.path()
            .join("mnesia")
            .join(format!("{}.pid", self.name))
    }

    /// The AMQP URL of the default vhost.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// The AMQP-over-TLS URL of the default vhost (a node from [`Node::start_tls`]).
    pub fn tls_url(&self) -> String {
        let port = self.tls_port.expect("a node started with a TLS listener");
        format!("amqps://guest:guest@127.0.0.1:{port}/%2f")
    }

    /// The last lines of the node's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = self.path().join("log").join(format!("{}.log", self.name));
        match std::fs::read_to_string(&log) {
            Ok(text) => {
                let lines: Vec<&str> = text.lines().collect();
                let from = lines.len().saturating_sub(30);
                format!(
                    "last lines of {}:\n{}",
                    log.display(),
                    lines[from..].join("\n")
                )
            }
            Err(e) => format!("no log at {}: {e}", log.display()),
        }
    }

    /// Stops the broker application (the Erlang node stays up): every client connection
    /// drops and the port closes.
    pub async fn stop_app(&self) {
        let name = self.name.clone();
        blocking(move || ctl(&name, &["stop_app"])).await;
    }

    /// Starts the broker application again and waits until it runs.
    pub async fn start_app(&self) {
        let name = self.name.clone();
        blocking(move || {
            ctl(&name, &["start_app"]);
            ctl(&name, &["await_startup", "--timeout", "60"]);
        })
        .await;
    }

    /// `(name, messages, consumers)` of every queue of the default vhost, as the broker
    /// lists them (`rabbitmqctl list_queues`; ready and unacknowledged messages).
    pub async fn list_queues(&self) -> Vec<(String, u64, u64)> {
        let name = self.name.clone();
        let listed = blocking(move || {
            ctl(
                &name,
                &[
                    "list_queues",
                    "-p",
                    "/",
                    "--no-table-headers",
                    "name",
                    "messages",
                    "consumers",
                ],
            )
        })
        .await;
        listed
            .lines()
            .filter_map(|line| {
                let mut cols = line.split('\t');
                let name = cols.next()?.to_string();
                let messages = cols.next()?.trim().parse().ok()?;
                let consumers = cols.next()?.trim().parse().ok()?;
                Some((name, messages, consumers))
            })
            .collect()
    }

    /// `(ready messages, consumers)` of each queue, asked of the broker over AMQP (a passive
    /// declare on a fresh connection); `None` if the broker does not answer within a few
    /// seconds or a queue does not exist. Cheap enough to poll.
    pub async fn probe(&self, queues: &[String]) -> Option<Vec<(u32, u32)>> {
        let url = self.url();
        let queues = queues.to_vec();
        let probe = async move {
            let conn = Connection::connect(&url, ConnectionProperties::default())
                .await
                .ok()?;
            let mut states = Vec::new();
            for queue in &queues {
                // A failed passive declare closes its channel: one channel per queue.
                let channel = conn.create_channel().await.ok()?;
                let q = channel
                    .queue_declare(
                        queue.as_str().into(),
                        QueueDeclareOptions {
                            passive: true,
                            ..QueueDeclareOptions::default()
                        },
                        FieldTable::default(),
                    )
                    .await
                    .ok()?;
                states.push((q.message_count(), q.consumer_count()));
            }
            let _ = conn.close(200, "probe done".into()).await;
            Some(states)
        };
        tokio::time::timeout(PROBE, probe).await.ok().flatten()
    }
}

/// `rabbitmqctl -q -n <node> args…`, which must succeed; returns its stdout.
fn ctl(node: &str, args: &[&str]) -> String {
    let out = output(
        Command::new("rabbitmqctl")
            .args(["-q", "-n", node])
            .args(args),
        "managing the private node",
    );
    assert!(
        out.status.success(),
        "rabbitmqctl -n {node} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a blocking node command from async code without stalling the runtime's other tasks
/// (an in-process BEDS node serves on the same runtime).
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

impl Drop for Node {
    fn drop(&mut self) {
        let stopped = Command::new("rabbitmqctl")
            .args(["-q", "-n", &self.name, "stop"])
            .output()
            .is_ok_and(|o| o.status.success());
        if !stopped {
            // The node does not answer: end its Erlang VM by the pid it wrote.
            if let Ok(pid) = std::fs::read_to_string(self.pid_file()) {
                let _ = Command::new("kill").args(["-9", pid.trim()]).status();
            }
            eprintln!("private node {} was killed, not stopped", self.name);
        }
        if let Some(dir) = self.dir.take()
            && let Err(e) = dir.close()
        {
            eprintln!("the private node's directory was not removed: {e}");
        }
    }
}
