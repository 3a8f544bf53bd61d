//! TLS to RabbitMQ: a private node with a TLS listener that requires client certificates,
//! and certificates made for the test by the `openssl` command.

use std::path::{Path, PathBuf};
use std::process::Command;

use beds::spew::{self, UserCreate};
use beds_runtime::config::{AmqpTlsConfig, AmqpTlsMode};
use beds_runtime::{Client, ClientError, ClientOptions};

use crate::node::{Node, TlsListener};
use crate::support::{TestEnv, repo_config_path};

/// A CA, a server and a client certificate it signed, and a second CA that signed nothing
/// the broker presents.
struct Certs {
    dir: tempfile::TempDir,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("the TLS test needs the openssl command on PATH");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Certs {
    fn generate() -> Certs {
        let dir = tempfile::tempdir().expect("a directory for the certificates");
        let at = dir.path();
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        for ca in ["ca", "other-ca"] {
            let (key, pem, subj) = (
                format!("{ca}.key"),
                format!("{ca}.pem"),
                format!("/CN={ca}"),
            );
            let mut args = vec!["req", "-x509"];
            args.extend(ec);
            args.extend(["-keyout", &key, "-out", &pem, "-days", "2", "-subj", &subj]);
            openssl(at, &args);
        }
        std::fs::write(
            at.join("ext.cnf"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n",
        )
        .unwrap();
        for who in ["server", "client"] {
            let (key, csr, pem) = (
                format!("{who}.key"),
                format!("{who}.csr"),
                format!("{who}.pem"),
            );
            let mut args = vec!["req"];
            args.extend(ec);
            args.extend(["-keyout", &key, "-out", &csr, "-subj", "/CN=127.0.0.1"]);
            openssl(at, &args);
            openssl(
                at,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &csr,
                    "-CA",
                    "ca.pem",
                    "-CAkey",
                    "ca.key",
                    "-CAcreateserial",
                    "-out",
                    &pem,
                    "-days",
                    "2",
                    "-extfile",
                    "ext.cnf",
                ],
            );
        }
        Certs { dir }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn listener(&self) -> TlsListener {
        TlsListener {
            ca: self.file("ca.pem"),
            cert: self.file("server.pem"),
            key: self.file("server.key"),
        }
    }

    /// Client settings trusting `ca`, with the client certificate or without.
    fn client(&self, ca: &str, with_cert: bool) -> AmqpTlsConfig {
        AmqpTlsConfig {
            mode: AmqpTlsMode::Required,
            ca_file: Some(self.file(ca)),
            cert_file: with_cert.then(|| self.file("client.pem")),
            key_file: with_cert.then(|| self.file("client.key")),
        }
    }
}

/// Over amqps:// with the broker's CA and a client certificate, a node serves a request
/// end to end; a wrong CA, or no client certificate, is a TLS failure saying so.
#[tokio::test]
async fn amqps_serves_with_the_broker_ca_and_fails_without_it() {
    let _serial = crate::SERIAL.lock().await;
    let certs = Certs::generate();
    let broker = Node::start_tls(certs.listener()).await;
    let mut env = TestEnv::new("fault_tls");
    env.config.amqp.url = broker.tls_url();
    env.config.amqp.tls = certs.client("ca.pem", true);
    let server = env.start().await;
    let client = Client::connect(ClientOptions::from_config(&env.config, "fault-tls"))
        .await
        .expect("a client over TLS");
    let user = spew::client(&client)
        .user()
        .create(&UserCreate {
            handle: "tls".into(),
            display_name: "Over TLS".into(),
            bio: None,
        })
        .await
        .expect("a create answered over TLS");
    assert_eq!(user.handle, "tls");
    client.close().await.unwrap();

    // Without a client certificate, TLS 1.3 lets the client finish its handshake before the
    // broker checks for one: the broker's `certificate_required` alert may arrive, or only its
    // reset of the connection (seen in CI). Either way it is a TLS failure.
    let no_cert: &[&str] = &["CertificateRequired", "reset by peer"];
    for (ca, with_cert, says) in [
        ("other-ca.pem", true, &["UnknownIssuer"][..]),
        ("ca.pem", false, no_cert),
    ] {
        let mut options = ClientOptions::from_config(&env.config, "fault-tls-refused");
        options.tls = certs.client(ca, with_cert);
        let err = match Client::connect(options).await {
            Ok(_) => panic!("{ca} (client certificate: {with_cert}) connected"),
            Err(e) => e,
        };
        assert!(matches!(err, ClientError::Connect(_)), "{err:?}");
        let text = err.to_string();
        assert!(
            text.contains("TLS with RabbitMQ") && says.iter().any(|s| text.contains(s)),
            "{ca}: {text}"
        );
    }
    server.stop().await;
}

/// `amqp.tls.mode: required` refuses a plaintext URL before connecting; `beds check` shows
/// the TLS set-up.
#[test]
fn tls_required_refuses_a_plaintext_url_at_start() {
    let out = Command::new(env!("CARGO_BIN_EXE_beds"))
        .args(["run", "--config"])
        .arg(repo_config_path())
        .env("BEDS_ENV", "test")
        .env("BEDS_AMQP__URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
        .env("BEDS_AMQP__TLS__MODE", "required")
        .output()
        .expect("run the beds binary");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("amqp.tls.mode is required") && err.contains("plaintext"),
        "{err}"
    );
    // `beds check` shows the TLS set-up it would use.
    let certs = Certs::generate();
    let ca = certs.file("ca.pem");
    let out = Command::new(env!("CARGO_BIN_EXE_beds"))
        .args(["check", "--config"])
        .arg(repo_config_path())
        .env("BEDS_ENV", "test")
        .env("BEDS_AMQP__URL", "amqps://guest:guest@127.0.0.1:5671/%2f")
        .env("BEDS_AMQP__TLS__MODE", "required")
        .env("BEDS_AMQP__TLS__CA_FILE", &ca)
        .output()
        .expect("run beds check");
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains(&format!(
            "amqp amqps://guest:***@127.0.0.1:5671/%2f (TLS required, CA {})",
            ca.display()
        )),
        "{shown}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
