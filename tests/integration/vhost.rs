//! A RabbitMQ vhost of a test's own, with broker users of its own, for the tests that log in
//! as someone other than the harness's `guest`; the users and the vhost are removed on drop.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs `rabbitmqctl -q ARGS`, failing the test loudly if it cannot; returns its output.
pub fn rabbitmqctl(args: &[&str]) -> String {
    let out = Command::new("rabbitmqctl")
        .arg("-q")
        .args(args)
        .output()
        .expect("these tests need rabbitmqctl on PATH");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub struct Vhost {
    pub name: String,
    users: Vec<String>,
    secrets: tempfile::TempDir,
}

impl Vhost {
    /// A new vhost, on which `guest` (the harness's login) may do everything.
    pub fn new(label: &str) -> Vhost {
        let name = format!("beds-{label}-{}", uuid::Uuid::now_v7().simple());
        rabbitmqctl(&["add_vhost", &name]);
        rabbitmqctl(&["set_permissions", "-p", &name, "guest", ".*", ".*", ".*"]);
        Vhost {
            name,
            users: Vec::new(),
            secrets: tempfile::tempdir().expect("a directory for password files"),
        }
    }

    /// A user named after `role` with every permission on the vhost and the password
    /// `secret`; returns its name.
    pub fn open_user(&mut self, role: &str) -> String {
        let name = format!("{}-{role}", self.name);
        rabbitmqctl(&["add_user", &name, "secret"]);
        self.users.push(name.clone());
        rabbitmqctl(&["set_permissions", "-p", &self.name, &name, ".*", ".*", ".*"]);
        name
    }

    /// A user of `profile` made by `scripts/rabbitmq-permissions.sh` for queue tag `tag`;
    /// returns its name and its password file.
    pub fn scripted_user(&mut self, profile: &str, tag: &str) -> (String, PathBuf) {
        let name = format!("{}-{profile}", self.name);
        let file = self.secrets.path().join(&name);
        std::fs::write(&file, format!("pw-{}\n", uuid::Uuid::now_v7().simple())).unwrap();
        self.users.push(name.clone());
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/rabbitmq-permissions.sh");
        let out = Command::new("bash")
            .arg(script)
            .args(["--vhost", &self.name, "--tag", tag, profile, &name])
            .arg(&file)
            .output()
            .expect("run scripts/rabbitmq-permissions.sh");
        assert!(
            out.status.success(),
            "rabbitmq-permissions.sh {profile}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (name, file)
    }

    /// The URL logging in to this vhost as `user` with `password`.
    pub fn url(&self, user: &str, password: &str) -> String {
        format!("amqp://{user}:{password}@127.0.0.1:5672/{}", self.name)
    }

    /// The URL logging in as `user` with the password in `file`.
    pub fn url_from_file(&self, user: &str, file: &Path) -> String {
        self.url(user, std::fs::read_to_string(file).unwrap().trim())
    }
}

impl Drop for Vhost {
    fn drop(&mut self) {
        for user in &self.users {
            let _ = Command::new("rabbitmqctl")
                .args(["-q", "delete_user", user])
                .status();
        }
        let _ = Command::new("rabbitmqctl")
            .args(["-q", "delete_vhost", &self.name])
            .status();
    }
}
