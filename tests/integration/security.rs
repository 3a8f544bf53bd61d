//! Security of the broker side: the permissions `scripts/rabbitmq-permissions.sh` gives a
//! node and a client, passwords read from files and never shown, and no message bodies in
//! the log. Each test has a vhost and users of its own, removed when it ends.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use beds::spew::{self, UserCreate};
use beds_runtime::{Client, ClientOptions};
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};

use crate::support::{TestEnv, repo_config_path};
use crate::vhost::Vhost;

/// Expects the broker to refuse `what` by closing the channel with ACCESS_REFUSED.
fn assert_refused<T: std::fmt::Debug>(what: &str, result: Result<T, lapin::Error>) {
    match result {
        Ok(v) => panic!("{what} was allowed: {v:?}"),
        Err(e) => assert!(
            e.to_string().contains("ACCESS_REFUSED"),
            "{what} failed, but not with ACCESS_REFUSED: {e}"
        ),
    }
}

/// A node and a client, each with the script's permissions: the client's request is
/// answered, but the client can neither consume the write queue, nor publish to the
/// dead-letter exchange, a retry lane, or an event routing key.
#[tokio::test]
async fn a_restricted_client_calls_the_node_and_nothing_else() {
    let mut broker = Vhost::new("perm");
    let mut env = TestEnv::new("perm");
    let tag = env.config.amqp.queue_tag.clone();
    let (node_user, node_pw) = broker.scripted_user("appServer", &tag);
    let (client_user, client_pw) = broker.scripted_user("client", &tag);
    env.config.amqp.url = broker.url_from_file(&node_user, &node_pw);
    let server = env.start().await;

    // The client's own login, which is also the user_id its requests carry.
    let options = ClientOptions::from_config(&env.config, "perm-client")
        .with_url(&broker.url_from_file(&client_user, &client_pw));
    let client = Client::connect(options.clone())
        .await
        .expect("client login");
    let user = spew::client(&client)
        .user()
        .create(&UserCreate {
            handle: "restricted".into(),
            display_name: "R".into(),
            bio: None,
        })
        .await
        .expect("the restricted client's request is answered");
    assert_eq!(user.handle, "restricted");
    client.close().await.unwrap();

    let conn = Connection::connect(&options.url, ConnectionProperties::default())
        .await
        .expect("raw client login");
    let channel = conn.create_channel().await.unwrap();
    assert_refused(
        "consuming rec.write",
        channel
            .basic_consume(
                env.queue("rec.write").as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await,
    );
    let forged = [
        ("beds.dlx", env.queue("rec.write")),
        ("", format!("{}.retry", env.queue("rec.write"))),
        ("beds.events", format!("{}.retry", env.queue("rec.write"))),
        ("beds.events", env.queue("evt.spew.user.create")),
    ];
    for (exchange, key) in forged {
        let channel = conn.create_channel().await.unwrap();
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        let published = async {
            channel
                .basic_publish(
                    exchange.into(),
                    key.as_str().into(),
                    BasicPublishOptions::default(),
                    b"{}",
                    BasicProperties::default(),
                )
                .await?
                .await
        };
        assert_refused(
            &format!("publishing to `{exchange}` with key {key}"),
            published.await,
        );
    }
    let _ = conn.close(200, "done".into()).await;
    server.stop().await;
}

/// Polls `cond` every 50 ms until it holds or `within` passes.
fn wait_until(within: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "{what} within {within:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn beds(env: &TestEnv, args: &[&str], vars: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_beds"));
    cmd.args(args)
        .arg("--config")
        .arg(repo_config_path())
        .env("BEDS_ENV", "test")
        .env("BEDS_AMQP__QUEUE_TAG", &env.config.amqp.queue_tag)
        .env("BEDS_DATABASE__DATA_DIR", &env.config.database.data_dir);
    for (k, v) in vars {
        cmd.env(k, v);
    }
    cmd
}

/// A node whose password comes from `amqp.password_file`, logging at debug: the password
/// is in none of its output, `beds check`'s, `beds config show`'s, or a failed login's; and a reply the broker
/// returns (its reply queue is gone) leaves no body bytes in the log.
#[tokio::test]
async fn a_password_from_a_file_is_never_shown_and_bodies_stay_out_of_logs() {
    let mut broker = Vhost::new("secret");
    let env = TestEnv::new("secret");
    let (user, pw_file) = broker.scripted_user("appServer", &env.config.amqp.queue_tag);
    let password = std::fs::read_to_string(&pw_file)
        .unwrap()
        .trim()
        .to_string();
    let url = format!("amqp://{user}@127.0.0.1:5672/{}", broker.name);
    let pw_path = pw_file.display().to_string();
    let vars = [
        ("BEDS_AMQP__URL", url.as_str()),
        ("BEDS_AMQP__PASSWORD_FILE", pw_path.as_str()),
        ("BEDS_LOG__FILTER", "debug"),
    ];
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("node.log");
    let mut child: Child = beds(&env, &["run"], &vars)
        .env_remove("RUST_LOG")
        .stdout(Stdio::from(std::fs::File::create(&log).unwrap()))
        .stderr(Stdio::from(
            std::fs::File::create(logs.path().join("node.err")).unwrap(),
        ))
        .spawn()
        .expect("spawn beds run");
    let text = |name: &str| std::fs::read_to_string(logs.path().join(name)).unwrap_or_default();
    wait_until(Duration::from_secs(30), "the node logs in", || {
        assert!(child.try_wait().unwrap().is_none(), "{}", text("node.err"));
        text("node.log").matches("broker pool started").count() == 2
    });

    // A request whose reply queue does not exist: the broker returns the reply.
    let mut peer_url = url.clone();
    peer_url.insert_str("amqp://".len() + user.len(), &format!(":{password}"));
    let conn = Connection::connect(&peer_url, ConnectionProperties::default())
        .await
        .unwrap();
    let channel = conn.create_channel().await.unwrap();
    let body = serde_json::json!({
        "v": 1, "id": uuid::Uuid::now_v7(), "domain": "spew", "template": "user",
        "op": "create", "data": {"handle": "returned", "display_name": "Returned body"}
    });
    channel
        .basic_publish(
            "beds.events".into(),
            env.queue("rec.write").as_str().into(),
            BasicPublishOptions::default(),
            &serde_json::to_vec(&body).unwrap(),
            BasicProperties::default()
                .with_content_type("application/json".into())
                .with_correlation_id("gone-1".into())
                .with_reply_to(
                    format!("beds.reply.gone-{}", uuid::Uuid::now_v7().simple())
                        .as_str()
                        .into(),
                ),
        )
        .await
        .unwrap();
    wait_until(
        Duration::from_secs(10),
        "the node reports the returned reply",
        || text("node.log").contains("reply unroutable"),
    );
    let _ = conn.close(200, "done".into()).await;

    let check = beds(&env, &["check"], &vars).output().unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let config = beds(&env, &["config", "show"], &vars).output().unwrap();
    let shown_config = String::from_utf8_lossy(&config.stdout).to_string();
    assert!(
        config.status.success() && shown_config.contains(&format!("amqp://{user}:***@")),
        "{shown_config}{}",
        String::from_utf8_lossy(&config.stderr)
    );
    let refused = beds(
        &env,
        &["check"],
        &[
            ("BEDS_AMQP__URL", &url),
            ("BEDS_AMQP__PASSWORD_FILE", "/nonexistent"),
        ],
    )
    .output()
    .unwrap();
    let wrong_vhost = url.replace(&broker.name, "no-such-vhost");
    let failed = beds(
        &env,
        &["dlq", "list"],
        &[
            ("BEDS_AMQP__URL", &wrong_vhost),
            ("BEDS_AMQP__PASSWORD_FILE", &pw_path),
        ],
    )
    .output()
    .unwrap();
    assert!(!failed.status.success());
    assert!(
        String::from_utf8_lossy(&failed.stderr).contains("refused the login"),
        "{}",
        String::from_utf8_lossy(&failed.stderr)
    );

    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while child.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "the node did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut shown = vec![
        ("node log", text("node.log")),
        ("node stderr", text("node.err")),
    ];
    for (what, out) in [
        ("beds check", &check),
        ("beds config show", &config),
        ("a missing password file", &refused),
        ("a failed login", &failed),
    ] {
        shown.push((
            what,
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        ));
    }
    for (what, output) in &shown {
        assert!(
            !output.contains(&password),
            "{what} shows the password:\n{output}"
        );
    }
    // lapin dumps a returned message's body as decimal bytes: `{"` is `123, 34`.
    let node_log = &shown[0].1;
    assert!(
        !node_log.contains("123, 34"),
        "the log holds body bytes:\n{node_log}"
    );
    assert!(
        !node_log.contains("Returned body"),
        "the log holds the body:\n{node_log}"
    );
}

/// `beds run` against a closed port and with a wrong password: a non-zero exit at once,
/// one line on stderr naming the cause, and no panic from lapin's threads.
#[test]
fn beds_run_names_a_connection_failure_in_one_line() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    for (url, says, within) in [
        (
            format!("amqp://guest:guest@127.0.0.1:{closed}/%2f"),
            "connection refused",
            Duration::from_secs(3),
        ),
        (
            "amqp://guest:wrong-password@127.0.0.1:5672/%2f".to_string(),
            "refused the login of user `guest`",
            Duration::from_secs(9),
        ),
    ] {
        let started = Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_beds"))
            .args(["run", "--config"])
            .arg(repo_config_path())
            .env("BEDS_ENV", "test")
            .env("BEDS_AMQP__URL", &url)
            .env("BEDS_AMQP__QUEUE_TAG", "test.connfail.")
            .env(
                "BEDS_DATABASE__DATA_DIR",
                tempfile::tempdir().unwrap().path(),
            )
            .output()
            .expect("run the beds binary");
        let took = started.elapsed();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{url}: exit 0");
        assert_eq!(err.trim_end().lines().count(), 1, "{url}: {err}");
        assert!(
            err.starts_with("error: ") && err.contains(says),
            "{url}: {err}"
        );
        assert!(
            !err.contains("panicked") && !err.contains("wrong-password"),
            "{err}"
        );
        assert!(took < within, "{url}: took {took:?}");
    }
}

/// A port that accepts TCP connections but never answers: `beds run` says the broker did
/// not answer within the connect bound, in one line, instead of hanging or panicking.
#[test]
fn beds_run_names_a_silent_broker_a_timeout() {
    // Connections queue in the backlog and are never accepted, so nothing is ever sent back.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_beds"))
        .args(["run", "--config"])
        .arg(repo_config_path())
        .env("BEDS_ENV", "test")
        .env(
            "BEDS_AMQP__URL",
            format!("amqp://guest:guest@127.0.0.1:{port}/%2f"),
        )
        .env(
            "BEDS_DATABASE__DATA_DIR",
            tempfile::tempdir().unwrap().path(),
        )
        .output()
        .expect("run the beds binary");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.contains("did not answer the connection") && err.contains("within 10 s"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    drop(silent);
}

/// TLS to PostgreSQL (the local server has TLS with its own certificate): `require`
/// connects encrypted; `verify_full` with a CA that did not sign the server's certificate
/// fails the start, saying why.
#[tokio::test]
async fn postgres_tls_is_required_and_verified() {
    let psql = |sql: &str| {
        let out = Command::new("psql")
            .args([
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-Atc",
                sql,
            ])
            .output()
            .expect("the TLS database test needs psql and the local PostgreSQL");
        assert!(
            out.status.success(),
            "{sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    if psql("show ssl") != "on" {
        panic!("the local PostgreSQL has ssl off; this test needs TLS on it");
    }
    let db = format!(
        "beds_tls_{}",
        &uuid::Uuid::now_v7().simple().to_string()[20..]
    );
    psql(&format!("CREATE DATABASE {db}"));
    struct Dropped<F: Fn()>(F);
    impl<F: Fn()> Drop for Dropped<F> {
        fn drop(&mut self) {
            (self.0)()
        }
    }
    let _drop = Dropped(|| {
        let _ = Command::new("psql")
            .args([
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-qAtc",
            ])
            .arg(format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
            .status();
    });
    let mut env = TestEnv::new("pgtls");
    env.config.database.driver = beds_runtime::config::Driver::Postgres;
    env.config.database.url = Some(format!("postgres://postgres@127.0.0.1:5432/{db}"));
    env.config.database.tls.mode = Some(beds_runtime::config::DatabaseTlsMode::Require);
    let server = env.start().await;
    let encrypted = psql(&format!(
        "SELECT count(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) \
         WHERE datname = '{db}' AND ssl"
    ));
    assert_ne!(encrypted, "0", "the node's connections are not encrypted");
    server.stop().await;

    let certs = tempfile::tempdir().unwrap();
    let out = Command::new("openssl")
        .current_dir(certs.path())
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "1",
            "-subj",
            "/CN=other",
        ])
        .output()
        .expect("the TLS database test needs the openssl command");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    env.config.database.tls.mode = Some(beds_runtime::config::DatabaseTlsMode::VerifyFull);
    env.config.database.tls.ca_file = Some(certs.path().join("ca.pem"));
    let err = match beds_runtime::Server::start(&env.config, &beds::CATALOG).await {
        Ok(_) => panic!("verify_full accepted a server certificate the CA did not sign"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("cannot open the PostgreSQL database")
            && err.contains("invalid peer certificate"),
        "{err}"
    );
}
