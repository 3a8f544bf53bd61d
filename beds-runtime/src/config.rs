//! Configuration: `config/beds.yaml`, an optional environment overlay
//! (`config/beds.<env>.yaml`), then `BEDS_*` environment variables, validated at start-up.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_yaml::{Mapping, Value as Yaml};

pub mod migrate;

/// The configuration schema version this runtime reads.
pub const CONFIG_VERSION: u32 = 2;
/// The exchange every application message is published to.
pub const EXCHANGE: &str = "beds.events";
/// The exchange rejected messages are dead-lettered to.
pub const DEAD_LETTER_EXCHANGE: &str = "beds.dlx";
/// Environment variables that are not config keys.
const NOT_KEYS: &[&str] = &["BEDS_CONFIG"];
/// Variables of the test harness (`BEDS_TEST_DATABASE`, `BEDS_TEST_SEED`, ...): a node started
/// by a test inherits them and must not read them as configuration keys.
const TEST_PREFIX: &str = "BEDS_TEST_";

/// Which brokers a node runs; one binary serves every role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Role {
    #[serde(rename = "appServer")]
    AppServer,
    #[serde(rename = "admin")]
    Admin,
    #[serde(rename = "segundo")]
    Segundo,
    #[serde(rename = "tercero")]
    Tercero,
}

impl Role {
    pub const NAMES: [&'static str; 4] = ["appServer", "admin", "segundo", "tercero"];

    pub fn name(self) -> &'static str {
        match self {
            Role::AppServer => "appServer",
            Role::Admin => "admin",
            Role::Segundo => "segundo",
            Role::Tercero => "tercero",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = UnknownRole;

    fn from_str(s: &str) -> Result<Role, UnknownRole> {
        serde_yaml::from_value(Yaml::String(s.to_string())).map_err(|_| UnknownRole(s.to_string()))
    }
}

/// A role name that is none of [`Role::NAMES`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role `{}`; expected one of {}", .0, Role::NAMES.join(", "))]
pub struct UnknownRole(pub String);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Config version of this file ([`CONFIG_VERSION`]); `beds config migrate` rewrites
    /// older ones.
    pub version: u32,
    pub role: Role,
    /// Environment name; selects the overlay `beds.<env>.yaml`.
    pub env: String,
    /// This node's name in message origins and consumer tags.
    pub node: String,
    pub amqp: AmqpConfig,
    pub brokers: BrokersConfig,
    pub database: DatabaseConfig,
    pub shutdown: ShutdownConfig,
    pub idempotency: IdempotencyConfig,
    pub events: EventsConfig,
    pub retry: RetryConfig,
    pub tercero: TerceroConfig,
    pub client: ClientConfig,
    pub log: LogConfig,
    pub locking: LockingConfig,
    pub cache: CacheConfig,
    pub security: SecurityConfig,
    pub limits: LimitsConfig,
    pub telemetry: TelemetryConfig,
    pub lineage: LineageConfig,
    pub admin: AdminConfig,
    pub segundo: SegundoConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            version: CONFIG_VERSION,
            role: Role::AppServer,
            env: "dev".into(),
            node: "node1".into(),
            amqp: AmqpConfig::default(),
            brokers: BrokersConfig::default(),
            database: DatabaseConfig::default(),
            shutdown: ShutdownConfig::default(),
            idempotency: IdempotencyConfig::default(),
            events: EventsConfig::default(),
            retry: RetryConfig::default(),
            tercero: TerceroConfig::default(),
            client: ClientConfig::default(),
            log: LogConfig::default(),
            locking: LockingConfig::default(),
            cache: CacheConfig::default(),
            security: SecurityConfig::default(),
            limits: LimitsConfig::default(),
            telemetry: TelemetryConfig::default(),
            lineage: LineageConfig::default(),
            admin: AdminConfig::default(),
            segundo: SegundoConfig::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AmqpConfig {
    pub url: String,
    /// Prefix of every queue name and routing key, so environments can share a broker.
    pub queue_tag: String,
    /// Type of the work queues: `classic`, or `quorum` (replicated, with a delivery limit).
    pub queue_type: QueueType,
    /// Quorum queues only: deliveries after which RabbitMQ dead-letters a message that was
    /// never acked (e.g. one that crashes or hangs the node every time).
    pub delivery_limit: u32,
    /// A file holding the whole URL, password included; replaces `url`. Keeps the secret
    /// out of config files and the process environment.
    pub url_file: Option<PathBuf>,
    /// A file holding the login's password; replaces the password of `url`.
    pub password_file: Option<PathBuf>,
    pub tls: AmqpTlsConfig,
}

/// TLS to RabbitMQ: an `amqps://` URL connects with TLS, verifying the broker's certificate
/// against `ca_file` only (no system roots).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AmqpTlsConfig {
    pub mode: AmqpTlsMode,
    /// PEM file of the CA(s) that signed the broker's certificate; required by `amqps://`.
    pub ca_file: Option<PathBuf>,
    /// PEM certificate (chain) presented to the broker; needs `key_file`.
    pub cert_file: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of `cert_file`.
    pub key_file: Option<PathBuf>,
}

/// Whether a plaintext `amqp://` URL is allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AmqpTlsMode {
    /// The URL's scheme decides: `amqps://` uses TLS, `amqp://` does not.
    #[default]
    Optional,
    /// Only `amqps://` is accepted; an `amqp://` URL is refused at start-up.
    Required,
}

/// The PEM material of an [`AmqpTlsConfig`], read and checked.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The CA certificates, PEM.
    pub ca: String,
    /// The client certificate chain and key, PEM.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

/// A secret or TLS file that cannot be used; names the key to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("{key}: cannot read {path}: {reason}; fix the path or the file's permissions")]
    Unreadable {
        key: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("{key}: {path} holds no usable PEM {what}; give a PEM file (-----BEGIN {what}-----)")]
    NotPem {
        key: &'static str,
        path: PathBuf,
        what: PemKind,
    },
    #[error("{key}: {path} is empty; write the secret into it")]
    Empty { key: &'static str, path: PathBuf },
    #[error("{set} is set without {missing}; set both or neither")]
    Pair {
        set: &'static str,
        missing: &'static str,
    },
}

impl AmqpTlsConfig {
    /// Reads the CA and the optional client identity, checking each is PEM of the right kind.
    pub fn load(&self) -> Result<TlsFiles, SecretError> {
        let ca_path = self.ca_file.as_ref().ok_or(SecretError::Pair {
            set: "an amqps:// amqp.url",
            missing: "amqp.tls.ca_file (the PEM CA that signed the broker's certificate)",
        })?;
        let ca = read_pem("amqp.tls.ca_file", ca_path, PemKind::Certificate)?;
        let identity = match (&self.cert_file, &self.key_file) {
            (None, None) => None,
            (Some(_), None) => {
                return Err(SecretError::Pair {
                    set: "amqp.tls.cert_file",
                    missing: "amqp.tls.key_file",
                });
            }
            (None, Some(_)) => {
                return Err(SecretError::Pair {
                    set: "amqp.tls.key_file",
                    missing: "amqp.tls.cert_file",
                });
            }
            (Some(cert), Some(key)) => Some((
                read_pem("amqp.tls.cert_file", cert, PemKind::Certificate)?.into_bytes(),
                read_pem("amqp.tls.key_file", key, PemKind::PrivateKey)?.into_bytes(),
            )),
        };
        Ok(TlsFiles { ca, identity })
    }
}

/// What a PEM file must hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PemKind {
    Certificate,
    PrivateKey,
}

impl std::fmt::Display for PemKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PemKind::Certificate => "CERTIFICATE",
            PemKind::PrivateKey => "PRIVATE KEY",
        })
    }
}

/// Reads a PEM file and decodes it: at least one certificate, or one private key.
fn read_pem(key: &'static str, path: &Path, what: PemKind) -> Result<String, SecretError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let text = std::fs::read_to_string(path).map_err(|e| SecretError::Unreadable {
        key,
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let usable = match what {
        PemKind::Certificate => CertificateDer::pem_slice_iter(text.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .is_ok_and(|certs| !certs.is_empty()),
        PemKind::PrivateKey => PrivateKeyDer::from_pem_slice(text.as_bytes()).is_ok(),
    };
    if !usable {
        return Err(SecretError::NotPem {
            key,
            path: path.to_path_buf(),
            what,
        });
    }
    Ok(text)
}

/// Reads a one-line secret (trailing newline dropped).
fn read_secret(key: &'static str, path: &Path) -> Result<String, SecretError> {
    let text = std::fs::read_to_string(path).map_err(|e| SecretError::Unreadable {
        key,
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let secret = text.trim_end_matches(['\n', '\r']).to_string();
    if secret.is_empty() {
        return Err(SecretError::Empty {
            key,
            path: path.to_path_buf(),
        });
    }
    Ok(secret)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum QueueType {
    Classic,
    Quorum,
}

impl Default for AmqpConfig {
    fn default() -> Self {
        AmqpConfig {
            url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
            queue_tag: String::new(),
            queue_type: QueueType::Classic,
            delivery_limit: 5,
            url_file: None,
            password_file: None,
            tls: AmqpTlsConfig::default(),
        }
    }
}

impl AmqpConfig {
    /// The URL with any password replaced, for logs and messages.
    pub fn redacted_url(&self) -> String {
        redact(&self.url)
    }

    /// The queue name, which is also the routing key, for a base key such as `rec.read`.
    pub fn queue(&self, key: &str) -> String {
        format!("{}{key}", self.queue_tag)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct PoolConfig {
    /// Consumers (each with its own channel).
    pub workers: u16,
    /// Unacknowledged deliveries per consumer; also its in-flight limit.
    pub prefetch: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct BrokersConfig {
    pub read: PoolConfig,
    pub write: PoolConfig,
}

impl Default for BrokersConfig {
    fn default() -> Self {
        BrokersConfig {
            read: PoolConfig {
                workers: 2,
                prefetch: 64,
            },
            write: PoolConfig {
                workers: 2,
                prefetch: 32,
            },
        }
    }
}

impl Default for PoolConfig {
    fn default() -> Self {
        BrokersConfig::default().read
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Driver {
    /// Embedded, in `data_dir/sqlite_file`; the default.
    Sqlite,
    /// A PostgreSQL server at `url`.
    Postgres,
    /// A MariaDB server at `url` (the MySQL protocol).
    Mariadb,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SqliteSync {
    Full,
    Normal,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    pub driver: Driver,
    /// Directory for embedded database files, relative to the working directory.
    pub data_dir: PathBuf,
    /// SQLite file name inside `data_dir` (or an absolute path).
    pub sqlite_file: PathBuf,
    /// PostgreSQL and MariaDB: `postgres://user@host:5432/db`, `mysql://user@host:3306/db`.
    pub url: Option<String>,
    pub max_connections: u32,
    pub busy_timeout: Millis,
    /// SQLite: `full` syncs the write-ahead log on every commit; `normal` only at
    /// checkpoints (faster writes; a power loss may lose the last commits, never corrupt).
    pub sqlite_synchronous: SqliteSync,
    /// What start-up does with the live schema (wiki/migrations.md): `create` creates
    /// missing tables, `verify` only compares. Unset: `create` in env `dev` and `test`,
    /// `verify` elsewhere (see [`Config::schema_mode`]).
    pub schema: Option<SchemaMode>,
    /// Where `beds schema diff` writes migration files and where start-up looks for a
    /// pending one to name.
    pub migrations_dir: PathBuf,
    /// A file holding the whole URL, password included; replaces `url`.
    pub url_file: Option<PathBuf>,
    pub tls: DatabaseTlsConfig,
}

/// What a node does at start-up when its database's schema differs from its declarations.
/// Either way a difference other than a missing table refuses the start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SchemaMode {
    /// Create the tables (and their indexes) that are missing entirely.
    Create,
    /// Create nothing: any difference refuses the start.
    Verify,
}

/// TLS to PostgreSQL and MariaDB, passed to the driver as URL parameters.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseTlsConfig {
    /// Unset: the driver's default (`prefer`: TLS when the server offers it, unverified).
    pub mode: Option<DatabaseTlsMode>,
    /// PEM file of the CA that signed the server's certificate (`verify_ca`, `verify_full`).
    pub ca_file: Option<PathBuf>,
}

/// PostgreSQL's `sslmode` names; MariaDB gets their `ssl-mode` equivalents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DatabaseTlsMode {
    /// Plaintext.
    Disable,
    /// TLS when the server offers it, certificate not verified.
    Prefer,
    /// TLS or no connection; certificate not verified.
    Require,
    /// TLS with the certificate verified against `ca_file`.
    VerifyCa,
    /// As `verify_ca`, and the host name must match the certificate.
    VerifyFull,
}

impl DatabaseTlsMode {
    fn verifies(self) -> bool {
        matches!(
            self,
            DatabaseTlsMode::VerifyCa | DatabaseTlsMode::VerifyFull
        )
    }

    /// The driver's name for the mode, as an `ssl-mode` URL parameter.
    fn driver_name(self, driver: Driver) -> &'static str {
        use DatabaseTlsMode::*;
        match (driver, self) {
            (Driver::Mariadb, Disable) => "DISABLED",
            (Driver::Mariadb, Prefer) => "PREFERRED",
            (Driver::Mariadb, Require) => "REQUIRED",
            (Driver::Mariadb, VerifyCa) => "VERIFY_CA",
            (Driver::Mariadb, VerifyFull) => "VERIFY_IDENTITY",
            (_, Disable) => "disable",
            (_, Prefer) => "prefer",
            (_, Require) => "require",
            (_, VerifyCa) => "verify-ca",
            (_, VerifyFull) => "verify-full",
        }
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            driver: Driver::Sqlite,
            data_dir: PathBuf::from("data"),
            sqlite_file: PathBuf::from("beds.sqlite"),
            url: None,
            max_connections: 4,
            busy_timeout: Millis(5_000),
            sqlite_synchronous: SqliteSync::Full,
            schema: None,
            migrations_dir: PathBuf::from("migrations"),
            url_file: None,
            tls: DatabaseTlsConfig::default(),
        }
    }
}

impl DatabaseConfig {
    /// `url` with the `database.tls` settings added as the driver's URL parameters.
    pub fn connect_url(&self) -> Option<String> {
        let url = self.url.clone()?;
        let mut params = Vec::new();
        if let Some(mode) = self.tls.mode {
            params.push(format!("ssl-mode={}", mode.driver_name(self.driver)));
        }
        if let Some(ca) = &self.tls.ca_file {
            params.push(format!("ssl-ca={}", ca.display()));
        }
        if params.is_empty() {
            return Some(url);
        }
        let joint = if url.contains('?') { '&' } else { '?' };
        Some(format!("{url}{joint}{}", params.join("&")))
    }

    pub fn sqlite_path(&self) -> PathBuf {
        // `join` keeps an absolute `sqlite_file` as it is.
        self.data_dir.join(&self.sqlite_file)
    }

    /// Checks of the database section `at`.
    fn validate(&self, at: DatabaseKey) -> Result<(), String> {
        if self.max_connections == 0 {
            return Err(format!("{at}.max_connections must be at least 1"));
        }
        match (self.driver, self.url.as_deref()) {
            (Driver::Sqlite, Some(_)) => {
                return Err(format!(
                    "{at}.url is for postgres and mariadb; sqlite uses {at}.data_dir and {at}.sqlite_file"
                ));
            }
            (Driver::Postgres, None) => {
                return Err(format!(
                    "{at}.driver postgres needs {at}.url, e.g. postgres://postgres@127.0.0.1:5432/beds"
                ));
            }
            (Driver::Mariadb, None) => {
                return Err(format!(
                    "{at}.driver mariadb needs {at}.url, e.g. mysql://root@127.0.0.1:3306/beds"
                ));
            }
            (Driver::Postgres, Some(url))
                if !url.starts_with("postgres://") && !url.starts_with("postgresql://") =>
            {
                return Err(format!(
                    "{at}.url for postgres must start with postgres://, not `{}`",
                    redact(url)
                ));
            }
            (Driver::Mariadb, Some(url))
                if !url.starts_with("mysql://") && !url.starts_with("mariadb://") =>
            {
                return Err(format!(
                    "{at}.url for mariadb must start with mysql://, not `{}`",
                    redact(url)
                ));
            }
            _ => {}
        }
        self.validate_tls(at)
    }

    /// TLS checks of a database section at key `at`.
    fn validate_tls(&self, at: DatabaseKey) -> Result<(), String> {
        let db = self;
        let tls = &db.tls;
        if db.driver == Driver::Sqlite {
            if tls.mode.is_some() || tls.ca_file.is_some() {
                return Err(format!(
                    "{at}.tls is for postgres and mariadb; sqlite is a local file"
                ));
            }
            return Ok(());
        }
        let url = db.url.as_deref().unwrap_or_default();
        if (tls.mode.is_some() || tls.ca_file.is_some())
            && ["sslmode", "ssl-mode", "sslrootcert", "ssl-ca", "sslca"]
                .iter()
                .any(|p| url.contains(&format!("{p}=")))
        {
            return Err(format!(
                "{at}.url sets TLS parameters and so does {at}.tls; keep only {at}.tls"
            ));
        }
        match (tls.mode, &tls.ca_file) {
            (Some(mode), None) if mode.verifies() => Err(format!(
                "{at}.tls.mode {} needs {at}.tls.ca_file, the PEM CA that signed the \
                 server's certificate",
                serde_yaml::to_string(&mode).unwrap_or_default().trim()
            )),
            (Some(mode), Some(_)) if !mode.verifies() => Err(format!(
                "{at}.tls.ca_file is only used by {at}.tls.mode verify_ca or verify_full; \
                 set one of them or remove the file"
            )),
            (_, Some(ca)) => read_pem(at.ca_file, ca, PemKind::Certificate)
                .map(drop)
                .map_err(|e| e.to_string()),
            _ => Ok(()),
        }
    }
}

/// Where a database section sits in the file, for its error messages.
#[derive(Debug, Clone, Copy)]
struct DatabaseKey {
    /// The section's key path.
    at: &'static str,
    /// Its `tls.ca_file` key path.
    ca_file: &'static str,
}

impl DatabaseKey {
    const SERVING: DatabaseKey = DatabaseKey {
        at: "database",
        ca_file: "database.tls.ca_file",
    };
    const ADMIN: DatabaseKey = DatabaseKey {
        at: "admin.database",
        ca_file: "admin.database.tls.ca_file",
    };
    const WAREHOUSE: DatabaseKey = DatabaseKey {
        at: "segundo.warehouse",
        ca_file: "segundo.warehouse.tls.ca_file",
    };
}

impl std::fmt::Display for DatabaseKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.at)
    }
}

/// How long a delivery must have been in flight to be listed in a heartbeat.
pub const IN_FLIGHT_REPORTED_AFTER_MS: u64 = 1_000;

/// The admin role (wiki/operations.md): its own database and its consumers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// The admin's own database (audit records and the other admin tables), the same keys
    /// as `database`; the DBA owns its schema (`beds schema --admin`).
    pub database: DatabaseConfig,
    /// Unacked deliveries per admin consumer (`adm` commands, audit events).
    pub prefetch: u16,
    /// How long a delivery may be in flight (when its request has no earlier deadline)
    /// before `beds diag` reports it stuck.
    pub stuck_after: Millis,
    /// How long lineage records are kept (by their `at`), e.g. `7d`.
    pub lineage_keep: Millis,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            database: DatabaseConfig {
                sqlite_file: PathBuf::from("admin.sqlite"),
                ..DatabaseConfig::default()
            },
            prefetch: 64,
            stuck_after: Millis(30_000),
            lineage_keep: Millis(7 * 86_400_000),
        }
    }
}

/// The segundo role (wiki/retention.md, wiki/migration.md): the warehouse and the
/// long-running data duties beside the serving database.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct SegundoConfig {
    /// The warehouse (the COOL tier), the same keys as `database`: a second SQLite file,
    /// or another PostgreSQL/MariaDB database.
    pub warehouse: DatabaseConfig,
    /// Where the COLD tier's files and their manifest are written.
    pub cold_dir: PathBuf,
    /// How often a retention pass runs.
    pub interval: Millis,
    /// Records moved per batch, each batch one transaction per tier.
    pub batch: u32,
    /// Unacked deliveries per segundo consumer.
    pub prefetch: u16,
}

impl Default for SegundoConfig {
    fn default() -> Self {
        SegundoConfig {
            warehouse: DatabaseConfig {
                sqlite_file: PathBuf::from("warehouse.sqlite"),
                ..DatabaseConfig::default()
            },
            cold_dir: PathBuf::from("data/cold"),
            interval: Millis(60_000),
            batch: 500,
            prefetch: 16,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// How long in-flight messages may take to finish after a stop signal.
    pub drain_timeout: Millis,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            drain_timeout: Millis(10_000),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct IdempotencyConfig {
    /// How long the reply of an applied write is kept for replays of its key.
    pub ttl: Millis,
}

impl Default for IdempotencyConfig {
    fn default() -> Self {
        IdempotencyConfig {
            ttl: Millis(24 * 3_600_000),
        }
    }
}

/// Bounds on what one request may hold, checked before its body is parsed (wiki/security.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// The largest request body, in bytes; also the largest reply a client reads.
    pub max_message_bytes: u64,
    /// The deepest nesting of objects and arrays in a request (the envelope itself is 1).
    pub max_depth: u32,
    /// The most object fields in one request, counted over the whole body.
    pub max_fields: u32,
}

/// serde_json refuses deeper JSON on its own, with a message naming its internals.
pub const MAX_DEPTH_CEILING: u32 = 100;

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_message_bytes: 1024 * 1024,
            max_depth: 32,
            max_fields: 1000,
        }
    }
}

/// Leases of templates declaring `locking`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct LockingConfig {
    /// The lease a `lock` without `data.ttl` gets.
    pub default_ttl: Millis,
    /// The longest lease a `lock` may ask for; a longer one is refused, not shortened, so
    /// a holder never believes it holds a lease it does not.
    pub max_ttl: Millis,
}

impl Default for LockingConfig {
    fn default() -> Self {
        LockingConfig {
            default_ttl: Millis(30_000),
            max_ttl: Millis(3_600_000),
        }
    }
}

/// Committed-write events: the outbox written with every write and the relay that
/// publishes it (see wiki/events.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    /// Writes record events and appServer nodes run the relay.
    pub enabled: bool,
    /// Outbox rows read and published per round.
    pub batch: u32,
    /// How long the relay waits before looking again when the outbox had nothing to send.
    pub poll: Millis,
    /// Rows younger than this are left for later: a publish delay (0 in production; tests
    /// use it to hold committed events in the outbox).
    pub publish_after: Millis,
    /// How long the one active relay of a database holds its lease without renewing it;
    /// another node's relay takes over after that.
    pub lease_ttl: Millis,
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig {
            enabled: true,
            batch: 100,
            poll: Millis(100),
            publish_after: Millis(0),
            lease_ttl: Millis(30_000),
        }
    }
}

/// The read cache of templates that declare `cache` (wiki/cache.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Records the node keeps, across all cached templates; past it the least useful go.
    pub max_entries: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            max_entries: 100_000,
        }
    }
}

/// Retries of writes that failed with a transient error, through the retry lane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Attempts in all, the first included; after the last, the request is dead-lettered
    /// and answered with its error.
    pub max_attempts: u32,
    /// Delay before the second attempt; doubles each time, with jitter.
    pub backoff: Millis,
    /// Longest delay between attempts.
    pub max_backoff: Millis,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_attempts: 5,
            backoff: Millis(200),
            max_backoff: Millis(10_000),
        }
    }
}

/// The tercero role's event consumers: each applies write events in batches of at most
/// `batch`, waiting at most `wait` for a batch to fill.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TerceroConfig {
    /// Consumers on the event queue (each with its own channel).
    pub workers: u16,
    /// Events applied in one database transaction, at most; also the prefetch.
    pub batch: u16,
    /// How long a batch waits for more events after its first; part of the staleness
    /// bound of maintained counts.
    pub wait: Millis,
    /// How long applied event ids are kept to recognise redeliveries.
    pub dedup_ttl: Millis,
}

impl Default for TerceroConfig {
    fn default() -> Self {
        TerceroConfig {
            workers: 1,
            batch: 256,
            wait: Millis(50),
            dedup_ttl: Millis(7 * 24 * 3_600_000),
        }
    }
}

/// Which conversations leave lineage records (wiki/envelope.md, "Lineage").
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct LineageConfig {
    /// The share of conversations recorded, 0.0 (off) to 1.0 (all), decided by a hash of
    /// the correlation id so a conversation is recorded whole or not at all.
    pub sample: f64,
}

impl Default for LineageConfig {
    fn default() -> Self {
        LineageConfig { sample: 0.01 }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ClientConfig {
    /// How long a client waits for a reply.
    pub timeout: Millis,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            timeout: Millis(5_000),
        }
    }
}

/// Who and what a node trusts: who is calling, what they may do, and the key that signs
/// what nodes publish (wiki/security.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct SecurityConfig {
    /// A file holding the deployment's service key, shared by all its nodes, that signs
    /// retry and dead-letter headers, events, invalidations and replies. Required outside
    /// the `dev` and `test` environments.
    pub service_key_file: Option<PathBuf>,
    /// Refuse (`unauthenticated`) a request without the AMQP `user_id` property; absent:
    /// on outside the `dev` and `test` environments ([`Config::require_user_id`]).
    pub require_user_id: Option<bool>,
    /// Calling services (AMQP user ids) that may assert `subject` and `roles` directly.
    pub trusted_services: Vec<String>,
    /// Roles a calling service holds itself when a request names no end user.
    pub service_roles: std::collections::BTreeMap<String, Vec<String>>,
    /// The rule of every operation and query that declares none.
    pub default_access: Vec<String>,
    /// Keys and claims of the signed tokens in `auth`.
    pub tokens: TokensConfig,
}

impl Default for SecurityConfig {
    fn default() -> Self {
        SecurityConfig {
            service_key_file: None,
            require_user_id: None,
            trusted_services: Vec::new(),
            service_roles: Default::default(),
            default_access: vec!["public".into()],
            tokens: TokensConfig::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TokensConfig {
    /// When set, a token's `iss` must equal it.
    pub issuer: Option<String>,
    /// When set, a token's `aud` must include it.
    pub audience: Option<String>,
    /// Verification keys by key id; a token names its key in its `kid` header.
    pub keys: Vec<TokenKeyConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenKeyConfig {
    pub kid: String,
    pub alg: TokenAlg,
    /// The secret (HS256: the shared secret's bytes) or public key (EdDSA: PEM) file.
    pub file: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum TokenAlg {
    #[serde(rename = "HS256")]
    Hs256,
    #[serde(rename = "EdDSA")]
    EdDsa,
}

/// The node's HTTP server for metrics, health and readiness (wiki/operations.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// Where `/metrics`, `/healthz` and `/readyz` are served; `off` (or null) serves none.
    /// Port 0 takes a free port (logged at start, and [`crate::Server::http_addr`]).
    #[serde(with = "listen")]
    #[schemars(with = "String")]
    pub listen: Option<SocketAddr>,
    /// How often the queue depths and consumer counts of the node's lanes are read.
    pub queue_poll: Millis,
    /// How often this node publishes its status (`{tag}log.status`); the admin role calls
    /// a node silent for three of these lost.
    pub heartbeat: Millis,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 9464))),
            queue_poll: Millis(5_000),
            heartbeat: Millis(2_000),
        }
    }
}

/// `telemetry.listen`: an address, or `off`/null for none.
mod listen {
    use std::net::SocketAddr;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<SocketAddr>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(addr) => s.serialize_str(&addr.to_string()),
            None => s.serialize_str("off"),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
        match Option::<String>::deserialize(d)?.as_deref() {
            None | Some("off") => Ok(None),
            Some(text) => text.parse().map(Some).map_err(|_| {
                serde::de::Error::custom(format!(
                    "`{text}` is not an address like 127.0.0.1:9464 (port 0 takes a free one) or `off`"
                ))
            }),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A tracing filter, e.g. `info` or `beds_runtime=debug`. `RUST_LOG` wins if set.
    pub filter: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            filter: "info".into(),
        }
    }
}

/// A duration in configuration, written as milliseconds (`250`) or with a unit
/// (`250ms`, `5s`, `2m`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Millis(pub u64);

impl Millis {
    pub fn duration(self) -> Duration {
        Duration::from_millis(self.0)
    }
}

impl JsonSchema for Millis {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "milliseconds (`250`) or a number with a unit: `250ms`, `5s`, `2m`, `1h`, `1d`",
            "oneOf": [
                { "type": "integer", "minimum": 0 },
                { "type": "string", "pattern": "^\\s*[0-9]+\\s*(ms|s|m|h|d)?\\s*$" }
            ]
        })
    }
}

impl Serialize for Millis {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}ms", self.0))
    }
}

impl<'de> Deserialize<'de> for Millis {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = Yaml::deserialize(d)?;
        let text = match &raw {
            Yaml::Number(n) => n.to_string(),
            Yaml::String(s) => s.trim().to_string(),
            other => {
                return Err(serde::de::Error::custom(format!(
                    "expected a duration, found {other:?}"
                )));
            }
        };
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// `500`, `500ms`, `5s`, `2m`, `1h`, `1d` (also for command-line flags).
impl std::str::FromStr for Millis {
    type Err = DurationError;

    fn from_str(text: &str) -> Result<Millis, DurationError> {
        let text = text.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (num, unit) = text.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| DurationError::Number(text.to_string()))?;
        let factor = match unit.trim() {
            "" | "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(DurationError::Unit(text.to_string())),
        };
        // Checked: `lock` reads a client's `data.ttl` with this parser.
        n.checked_mul(factor)
            .map(Millis)
            .ok_or_else(|| DurationError::Number(text.to_string()))
    }
}

/// A duration that is not `<number><unit>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("invalid duration `{0}`; write e.g. `500ms`, `5s` or `2m`")]
    Number(String),
    #[error("invalid duration unit in `{0}`; use ms, s, m, h or d")]
    Unit(String),
}

/// Why configuration could not be loaded; each names the source and what to change.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        source: serde_yaml::Error,
    },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    #[error("invalid configuration (from {sources}): {message}")]
    Invalid { sources: String, message: String },
    #[error(
        "{path} is config version {found}; this build reads version {CONFIG_VERSION}. Run `beds config migrate --config {path}` (it rewrites the file and its overlays, keeping each original as <file>.v{found}; `--dry-run` shows the changes first)"
    )]
    Outdated { path: PathBuf, found: u64 },
    #[error(
        "{path} is config version {found}, newer than this build's {CONFIG_VERSION}: run a beds of that version, or write the file for version {CONFIG_VERSION}"
    )]
    Newer { path: PathBuf, found: u64 },
    #[error(
        "`{}` (in {sources}) is a version-{} key: config version {} moved it to `{}`. Run `beds config migrate`, or rename it by hand",
        .moved.from, .moved.since - 1, .moved.since, .moved.to
    )]
    Moved {
        sources: String,
        moved: &'static migrate::Moved,
    },
}

impl Config {
    /// Loads `path`, the overlay for the selected environment next to it, and `BEDS_*`
    /// variables from the process environment.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::load_with_env(path, std::env::vars())
    }

    /// Like [`Config::load`], with the environment given explicitly (for tests).
    pub fn load_with_env(
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let env: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| {
                k.starts_with("BEDS_")
                    && !k.starts_with(TEST_PREFIX)
                    && !NOT_KEYS.contains(&k.as_str())
            })
            .collect();
        let mut sources = vec![path.display().to_string()];
        let mut tree = read_yaml(path)?;
        match tree.get("version").and_then(Yaml::as_u64) {
            Some(found) if found < u64::from(CONFIG_VERSION) => {
                return Err(ConfigError::Outdated {
                    path: path.to_path_buf(),
                    found,
                });
            }
            Some(found) if found > u64::from(CONFIG_VERSION) => {
                return Err(ConfigError::Newer {
                    path: path.to_path_buf(),
                    found,
                });
            }
            _ => {}
        }
        let env_name = env
            .iter()
            .find(|(k, _)| k == "BEDS_ENV")
            .map(|(_, v)| v.clone())
            .or_else(|| tree.get("env").and_then(Yaml::as_str).map(str::to_string));
        if let Some(name) = env_name {
            let overlay = overlay_path(path, &name);
            if overlay.exists() {
                merge(&mut tree, read_yaml(&overlay)?);
                sources.push(overlay.display().to_string());
            }
        }
        if let Some(moved) = migrate::first_moved(&tree) {
            return Err(ConfigError::Moved {
                sources: sources.join(", "),
                moved,
            });
        }
        let known = serde_yaml::to_value(Config::default()).expect("defaults serialize");
        for (var, raw) in &env {
            let keys: Vec<String> = var["BEDS_".len()..]
                .split("__")
                .map(str::to_ascii_lowercase)
                .collect();
            if let Some(moved) = migrate::moved(&keys.join(".")) {
                return Err(ConfigError::Moved {
                    sources: var.clone(),
                    moved,
                });
            }
            if !has_path(&known, &keys) {
                return Err(ConfigError::Env {
                    var: var.clone(),
                    message: format!(
                        "`{}` is not a configuration key; nested keys are joined by `__`, e.g. BEDS_AMQP__URL",
                        keys.join(".")
                    ),
                });
            }
            let value: Yaml =
                serde_yaml::from_str(raw).unwrap_or_else(|_| Yaml::String(raw.clone()));
            set_path(&mut tree, &keys, value);
            sources.push(var.clone());
        }
        let mut config: Config =
            serde_yaml::from_value(tree).map_err(|e| ConfigError::Invalid {
                sources: sources.join(", "),
                message: e.to_string(),
            })?;
        config.read_secrets().map_err(|e| ConfigError::Invalid {
            sources: sources.join(", "),
            message: e.to_string(),
        })?;
        config.validate().map_err(|message| ConfigError::Invalid {
            sources: sources.join(", "),
            message,
        })?;
        Ok(config)
    }

    /// Replaces URLs and passwords by the contents of their `*_file` keys.
    fn read_secrets(&mut self) -> Result<(), SecretError> {
        if let Some(path) = &self.amqp.url_file {
            self.amqp.url = read_secret("amqp.url_file", path)?;
        }
        if let Some(path) = &self.amqp.password_file {
            let password = read_secret("amqp.password_file", path)?;
            self.amqp.url = with_password(&self.amqp.url, &password).ok_or(SecretError::Pair {
                set: "amqp.password_file",
                missing: "a user name in amqp.url (amqp://user@host:5672/vhost)",
            })?;
        }
        if let Some(path) = &self.database.url_file {
            self.database.url = Some(read_secret("database.url_file", path)?);
        }
        if let Some(path) = &self.admin.database.url_file {
            self.admin.database.url = Some(read_secret("admin.database.url_file", path)?);
        }
        if let Some(path) = &self.segundo.warehouse.url_file {
            self.segundo.warehouse.url = Some(read_secret("segundo.warehouse.url_file", path)?);
        }
        Ok(())
    }

    /// TLS and login checks of `amqp`; the URL itself must already be amqp(s)://.
    fn validate_amqp(&self) -> Result<(), String> {
        let amqp = &self.amqp;
        let uri: lapin::uri::AMQPUri = amqp.url.parse().map_err(|e| {
            format!(
                "amqp.url `{}` is not a valid AMQP URL ({e}); write amqp://user@host:5672/vhost",
                amqp.redacted_url()
            )
        })?;
        let tls = amqp.url.starts_with("amqps://");
        if !tls && amqp.tls.mode == AmqpTlsMode::Required {
            return Err(format!(
                "amqp.tls.mode is required but amqp.url `{}` is plaintext; use an amqps:// URL \
                 (port 5671) and set amqp.tls.ca_file",
                amqp.redacted_url()
            ));
        }
        if tls {
            amqp.tls.load().map_err(|e| e.to_string())?;
        } else if amqp.tls.ca_file.is_some()
            || amqp.tls.cert_file.is_some()
            || amqp.tls.key_file.is_some()
        {
            return Err(format!(
                "amqp.tls files are set but amqp.url `{}` is plaintext, so they would not be \
                 used; use an amqps:// URL or remove them",
                amqp.redacted_url()
            ));
        }
        // lapin logs in as guest when the URL names no user.
        if uri.authority.userinfo.username == "guest" && !["dev", "test"].contains(&&*self.env) {
            return Err(format!(
                "amqp.url logs in as `guest` in env `{}`; guest is for dev and test only: \
                 create a user for this node (scripts/rabbitmq-permissions.sh) and put its \
                 URL in amqp.url_file",
                self.env
            ));
        }
        Ok(())
    }

    /// The configuration as YAML with the passwords of its URLs redacted (secret files
    /// are already read into them), for `beds config show`.
    pub fn shown(&self) -> String {
        let mut shown = self.clone();
        shown.amqp.url = self.amqp.redacted_url();
        shown.database.url = self.database.url.as_deref().map(redact);
        shown.admin.database.url = self.admin.database.url.as_deref().map(redact);
        shown.segundo.warehouse.url = self.segundo.warehouse.url.as_deref().map(redact);
        serde_yaml::to_string(&shown).expect("a configuration serialises")
    }

    /// A database section's `schema`, or its default: `create` in `dev` and `test`, where
    /// databases are scratch; `verify` elsewhere, where the DBA owns the schema and a node
    /// must not create tables in a database nobody reviewed.
    pub fn schema_mode(&self, database: &DatabaseConfig) -> SchemaMode {
        database
            .schema
            .unwrap_or(if matches!(self.env.as_str(), "dev" | "test") {
                SchemaMode::Create
            } else {
                SchemaMode::Verify
            })
    }

    /// The JSON Schema (draft 2020-12) of a configuration file of [`CONFIG_VERSION`], for
    /// `beds config schema` and editors. It is derived from the same types the loader
    /// deserialises into, so a file the schema accepts has the shape the loader reads;
    /// the loader's semantic checks (ranges, TLS files, roles) come on top.
    pub fn json_schema() -> serde_json::Value {
        let mut schema =
            serde_json::to_value(schemars::schema_for!(Config)).expect("a JSON Schema serialises");
        schema["title"] = format!("BEDS configuration, version {CONFIG_VERSION}").into();
        schema
    }

    /// `security.require_user_id`, or its default: on outside `dev` and `test`.
    pub fn require_user_id(&self) -> bool {
        self.security
            .require_user_id
            .unwrap_or(!matches!(self.env.as_str(), "dev" | "test"))
    }

    fn validate(&self) -> Result<(), String> {
        // Every broker has a `guest` user by default; outside dev and test it must not
        // carry roles or be trusted to assert end users.
        if !matches!(self.env.as_str(), "dev" | "test")
            && (self.security.service_roles.contains_key("guest")
                || self.security.trusted_services.iter().any(|s| s == "guest"))
        {
            return Err(format!(
                "security.service_roles or security.trusted_services names `guest` in env `{}`; guest is for dev and test only: give roles and trust to the broker users of your services",
                self.env
            ));
        }
        if let Some(bad) = self.security.default_access.iter().find(|p| *p == "owner") {
            return Err(format!(
                "security.default_access cannot name `{bad}`: not every template declares an owner field; use `public`, `authenticated` or roles"
            ));
        }
        if self.security.default_access.is_empty() {
            return Err("security.default_access needs at least one principal, e.g. `[public]` or `[authenticated]`".into());
        }
        if self.version != CONFIG_VERSION {
            return Err(format!(
                "config version {} is not supported; this build reads version {CONFIG_VERSION}",
                self.version
            ));
        }
        if !self.amqp.url.starts_with("amqp://") && !self.amqp.url.starts_with("amqps://") {
            return Err(format!(
                "amqp.url `{}` must start with amqp:// or amqps://",
                self.amqp.redacted_url()
            ));
        }
        self.validate_amqp()?;
        if !(0.0..=1.0).contains(&self.lineage.sample) {
            return Err(format!(
                "lineage.sample is {}; use a share from 0.0 (record nothing) to 1.0 (record every conversation)",
                self.lineage.sample
            ));
        }
        if self.telemetry.queue_poll.0 < 100 {
            return Err(format!(
                "telemetry.queue_poll is {} ms; use at least 100ms (each poll declares every lane's queue)",
                self.telemetry.queue_poll.0
            ));
        }
        if self.telemetry.heartbeat.0 < 100 {
            return Err(format!(
                "telemetry.heartbeat is {} ms; use at least 100ms (every node publishes a status each time)",
                self.telemetry.heartbeat.0
            ));
        }
        if self.admin.stuck_after.0 < IN_FLIGHT_REPORTED_AFTER_MS {
            return Err(format!(
                "admin.stuck_after is {} ms; use at least {IN_FLIGHT_REPORTED_AFTER_MS}ms (heartbeats list deliveries in flight that long)",
                self.admin.stuck_after.0
            ));
        }
        if !self
            .amqp
            .queue_tag
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
        {
            return Err(format!(
                "amqp.queue_tag `{}` may use only letters, digits, `_`, `-` and `.`",
                self.amqp.queue_tag
            ));
        }
        for (name, pool) in [("read", self.brokers.read), ("write", self.brokers.write)] {
            if pool.workers == 0 || pool.prefetch == 0 {
                return Err(format!(
                    "brokers.{name}: workers and prefetch must be at least 1"
                ));
            }
        }
        if self.tercero.workers == 0 || self.tercero.batch == 0 {
            return Err("tercero: workers and batch must be at least 1".into());
        }
        if self.amqp.queue_type == QueueType::Quorum && self.amqp.delivery_limit == 0 {
            return Err("amqp.delivery_limit must be at least 1 for quorum queues".into());
        }
        if self.retry.max_attempts == 0 {
            return Err("retry.max_attempts must be at least 1 (1 means no retry)".into());
        }
        let lease = self.locking;
        if lease.default_ttl.0 == 0 || lease.default_ttl.0 > lease.max_ttl.0 {
            return Err(
                "locking.default_ttl must be at least 1ms and at most locking.max_ttl".into(),
            );
        }
        let limits = self.limits;
        if limits.max_message_bytes == 0 || limits.max_fields == 0 {
            return Err("limits.max_message_bytes and limits.max_fields must be at least 1".into());
        }
        if !(2..=MAX_DEPTH_CEILING).contains(&limits.max_depth) {
            return Err(format!(
                "limits.max_depth must be between 2 (an envelope holding an object) and {MAX_DEPTH_CEILING}"
            ));
        }
        if self.events.batch == 0 {
            return Err("events.batch must be at least 1".into());
        }
        // A relay must be able to finish a publish (bounded by the confirm timeout) well
        // within its lease, or two relays could publish at once.
        if self.events.lease_ttl.0 < 20_000 {
            return Err(
                "events.lease_ttl must be at least 20s (twice the publish confirm bound)".into(),
            );
        }
        self.database.validate(DatabaseKey::SERVING)?;
        if self.admin.prefetch == 0 {
            return Err("admin.prefetch must be at least 1".into());
        }
        if self.admin.lineage_keep.0 < 60_000 {
            return Err(format!(
                "admin.lineage_keep is {} ms; keep lineage records at least 1m (e.g. `7d`)",
                self.admin.lineage_keep.0
            ));
        }
        self.admin.database.validate(DatabaseKey::ADMIN)?;
        if self.segundo.batch == 0 || self.segundo.prefetch == 0 {
            return Err("segundo.batch and segundo.prefetch must be at least 1".into());
        }
        if self.segundo.interval.0 < 100 {
            return Err(format!(
                "segundo.interval is {} ms; use at least 100ms (each pass scans every retained template)",
                self.segundo.interval.0
            ));
        }
        self.segundo.warehouse.validate(DatabaseKey::WAREHOUSE)?;
        // A `segundo.warehouse` section that names only some keys takes the others from
        // `database`'s defaults (`beds.sqlite`): refused, since retention would copy records
        // onto themselves and then delete them.
        let (w, d) = (&self.segundo.warehouse, &self.database);
        let same = w.driver == d.driver
            && match w.driver {
                Driver::Sqlite => w.sqlite_path() == d.sqlite_path(),
                _ => w.url.is_some() && w.url == d.url,
            };
        if same {
            return Err(
                "segundo.warehouse names the serving database (database); give it a database of its own, e.g. segundo.warehouse.sqlite_file: warehouse.sqlite".into(),
            );
        }
        Ok(())
    }
}

/// `url` with its password replaced (percent-encoded); `None` when it names no user.
fn with_password(url: &str, password: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let (userinfo, host) = rest.rsplit_once('@')?;
    let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
    if user.is_empty() {
        return None;
    }
    let encoded: String = password
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect();
    Some(format!("{scheme}://{user}:{encoded}@{host}"))
}

/// `amqp://name:secret@host/` -> `amqp://name:***@host/`.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    // The last `@`: a password may hold one unencoded.
    match rest.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((name, _)) => format!("{scheme}://{name}:***@{host}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

fn read_yaml(path: &Path) -> Result<Yaml, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let value: Yaml = serde_yaml::from_str(&text).map_err(|source| ConfigError::Parse {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(match value {
        Yaml::Null => Yaml::Mapping(Mapping::new()),
        v => v,
    })
}

fn overlay_path(base: &Path, env: &str) -> PathBuf {
    let stem = base.file_stem().and_then(|s| s.to_str()).unwrap_or("beds");
    base.with_file_name(format!("{stem}.{env}.yaml"))
}

/// Deep merge: mappings merge key by key, anything else is replaced.
fn merge(base: &mut Yaml, over: Yaml) {
    match (base, over) {
        (Yaml::Mapping(b), Yaml::Mapping(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

fn has_path(tree: &Yaml, keys: &[String]) -> bool {
    match keys.split_first() {
        None => true,
        Some((k, rest)) => tree.get(k.as_str()).is_some_and(|v| has_path(v, rest)),
    }
}

fn set_path(tree: &mut Yaml, keys: &[String], value: Yaml) {
    let Some((k, rest)) = keys.split_first() else {
        *tree = value;
        return;
    };
    if !tree.is_mapping() {
        *tree = Yaml::Mapping(Mapping::new());
    }
    let map = tree.as_mapping_mut().expect("made a mapping above");
    let slot = map
        .entry(Yaml::String(k.clone()))
        .or_insert(Yaml::Mapping(Mapping::new()));
    set_path(slot, rest, value);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn overlay_then_environment_win() {
        let dir = tempfile::tempdir().unwrap();
        let base = write(
            dir.path(),
            "beds.yaml",
            "version: 2\nenv: dev\nbrokers: { read: { workers: 3 } }\n",
        );
        write(dir.path(), "beds.dev.yaml", "amqp: { queue_tag: dev_ }\n");
        let c = Config::load_with_env(
            &base,
            env(&[
                ("BEDS_BROKERS__READ__PREFETCH", "7"),
                ("BEDS_ROLE", "admin"),
            ]),
        )
        .unwrap();
        assert_eq!(c.amqp.queue_tag, "dev_");
        assert_eq!(
            c.brokers.read,
            PoolConfig {
                workers: 3,
                prefetch: 7
            }
        );
        assert_eq!(c.role, Role::Admin);
    }

    #[test]
    fn security_defaults_follow_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let base = write(dir.path(), "beds.yaml", "version: 2\n");
        let dev = Config::load_with_env(&base, env(&[])).unwrap();
        assert!(!dev.require_user_id());
        assert_eq!(dev.security.default_access, vec!["public".to_string()]);
        let prod = Config::load_with_env(
            &base,
            env(&[
                ("BEDS_ENV", "prod"),
                ("BEDS_AMQP__URL", "amqp://web:pw@127.0.0.1:5672/%2f"),
            ]),
        )
        .unwrap();
        assert!(prod.require_user_id(), "on outside dev and test");
        let e = Config::load_with_env(&base, env(&[("BEDS_ENV", "prod")])).unwrap_err();
        assert!(
            e.to_string().contains("guest is for dev and test only"),
            "{e}"
        );
        let e = Config::load_with_env(&base, env(&[("BEDS_SECURITY__DEFAULT_ACCESS", "[owner]")]))
            .unwrap_err();
        assert!(e.to_string().contains("cannot name `owner`"), "{e}");
    }

    #[test]
    fn lineage_keep_reads_durations_and_refuses_less_than_a_minute() {
        let dir = tempfile::tempdir().unwrap();
        let base = write(dir.path(), "beds.yaml", "version: 2\n");
        let c = Config::load_with_env(&base, env(&[])).unwrap();
        assert_eq!(c.admin.lineage_keep, Millis(7 * 86_400_000));
        let c = Config::load_with_env(&base, env(&[("BEDS_ADMIN__LINEAGE_KEEP", "2h")])).unwrap();
        assert_eq!(c.admin.lineage_keep.duration(), Duration::from_secs(7200));
        let e = Config::load_with_env(&base, env(&[("BEDS_ADMIN__LINEAGE_KEEP", "30s")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("admin.lineage_keep") && e.contains("1m"), "{e}");
    }

    #[test]
    fn a_warehouse_naming_the_serving_database_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let base = write(dir.path(), "beds.yaml", "version: 2\n");
        let c = Config::load_with_env(&base, env(&[])).unwrap();
        assert_ne!(c.segundo.warehouse.sqlite_path(), c.database.sqlite_path());
        // Setting only `data_dir` leaves `sqlite_file` at `database`'s default.
        let e = Config::load_with_env(&base, env(&[("BEDS_SEGUNDO__WAREHOUSE__DATA_DIR", "data")]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("segundo.warehouse names the serving database"),
            "{e}"
        );
        Config::load_with_env(
            &base,
            env(&[
                ("BEDS_SEGUNDO__WAREHOUSE__DATA_DIR", "data"),
                ("BEDS_SEGUNDO__WAREHOUSE__SQLITE_FILE", "warehouse.sqlite"),
            ]),
        )
        .unwrap();
    }

    #[test]
    fn errors_name_their_source() {
        let dir = tempfile::tempdir().unwrap();
        let base = write(dir.path(), "beds.yaml", "version: 2\namqp: { urll: x }\n");
        let e = Config::load_with_env(&base, env(&[]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("beds.yaml") && e.contains("urll"), "{e}");
        let ok = write(dir.path(), "ok.yaml", "version: 2\n");
        let e = Config::load_with_env(&ok, env(&[("BEDS_AMQP__URLL", "x")]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("BEDS_AMQP__URLL") && e.contains("amqp.urll"),
            "{e}"
        );
        let e = Config::load_with_env(&ok, env(&[("BEDS_SHUTDOWN__DRAIN_TIMEOUT", "5 hours")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("duration"), "{e}");
    }

    #[test]
    fn an_older_version_or_a_moved_key_names_the_migration() {
        let dir = tempfile::tempdir().unwrap();
        let old = write(dir.path(), "beds.yaml", "version: 1\n");
        let e = Config::load_with_env(&old, env(&[]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("config version 1") && e.contains("beds config migrate"),
            "{e}"
        );
        let newer = write(dir.path(), "new.yaml", "version: 3\n");
        let e = Config::load_with_env(&newer, env(&[]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("newer"), "{e}");
        let ok = write(dir.path(), "ok.yaml", "version: 2\nenv: prod\n");
        write(dir.path(), "ok.prod.yaml", "admin: { heartbeat: 1s }\n");
        let e = Config::load_with_env(&ok, env(&[]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("ok.prod.yaml")
                && e.contains("`admin.heartbeat`")
                && e.contains("`telemetry.heartbeat`"),
            "{e}"
        );
        let fine = write(dir.path(), "fine.yaml", "version: 2\n");
        let e = Config::load_with_env(&fine, env(&[("BEDS_ADMIN__HEARTBEAT", "1s")]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("BEDS_ADMIN__HEARTBEAT") && e.contains("`telemetry.heartbeat`"),
            "{e}"
        );
    }

    #[test]
    fn the_json_schema_describes_every_key() {
        fn keys(prefix: &str, v: &serde_json::Value, out: &mut Vec<String>) {
            if let Some(map) = v.as_object() {
                for (k, v) in map {
                    let path = format!("{prefix}{k}");
                    keys(&format!("{path}."), v, out);
                    out.push(path);
                }
            }
        }
        fn described(schema: &serde_json::Value, node: &serde_json::Value, path: &[&str]) -> bool {
            let Some((first, rest)) = path.split_first() else {
                return true;
            };
            // Follow `$ref`s into `$defs`.
            let node = match node.get("$ref").and_then(|r| r.as_str()) {
                Some(r) => &schema["$defs"][r.trim_start_matches("#/$defs/")],
                None => node,
            };
            let props = &node["properties"];
            if node
                .get("additionalProperties")
                .is_some_and(|a| a.is_object())
            {
                return true;
            }
            props
                .get(*first)
                .is_some_and(|child| described(schema, child, rest))
        }
        let schema = Config::json_schema();
        let defaults = serde_json::to_value(Config::default()).unwrap();
        let mut all = Vec::new();
        keys("", &defaults, &mut all);
        assert!(all.len() > 60, "{all:?}");
        for key in all {
            let path: Vec<&str> = key.split('.').collect();
            assert!(
                described(&schema, &schema, &path),
                "{key} is not in the schema"
            );
        }
        assert_eq!(schema["additionalProperties"], false);
        assert_eq!(schema["properties"]["version"]["default"], CONFIG_VERSION);
    }

    #[test]
    fn event_settings_are_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let ok = write(dir.path(), "beds.yaml", "version: 2\n");
        let c = Config::load_with_env(
            &ok,
            env(&[
                ("BEDS_EVENTS__PUBLISH_AFTER", "1h"),
                ("BEDS_EVENTS__BATCH", "7"),
            ]),
        )
        .unwrap();
        assert_eq!(c.events.publish_after, Millis(3_600_000));
        assert_eq!(c.events.batch, 7);
        assert!(c.events.enabled);
        for (key, value, says) in [
            ("BEDS_EVENTS__BATCH", "0", "events.batch"),
            ("BEDS_EVENTS__LEASE_TTL", "5s", "events.lease_ttl"),
        ] {
            let e = Config::load_with_env(&ok, env(&[(key, value)]))
                .unwrap_err()
                .to_string();
            assert!(e.contains(says), "{e}");
        }
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("amqp://guest:guest@h:5672/%2f"),
            "amqp://guest:***@h:5672/%2f"
        );
        assert_eq!(redact("amqp://h:5672"), "amqp://h:5672");
    }

    #[test]
    fn lease_lengths_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let ok = write(dir.path(), "ok.yaml", "version: 2\n");
        let c = Config::load_with_env(&ok, env(&[("BEDS_LOCKING__MAX_TTL", "10m")])).unwrap();
        assert_eq!(
            (c.locking.default_ttl, c.locking.max_ttl),
            (Millis(30_000), Millis(600_000))
        );
        let e = Config::load_with_env(&ok, env(&[("BEDS_LOCKING__DEFAULT_TTL", "2h")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("locking.default_ttl"), "{e}");
    }

    #[test]
    fn secrets_come_from_files_and_are_not_shown() {
        let dir = tempfile::tempdir().unwrap();
        let ok = write(dir.path(), "beds.yaml", "version: 2\nenv: test\n");
        let url = write(dir.path(), "url", "amqp://node:s3cr3t@h:5672/%2f\n");
        let pw = write(dir.path(), "pw", "p@ss/w:rd\n");
        let db = write(dir.path(), "db", "postgres://beds:dbsecret@h/beds\n");
        let path = |p: &PathBuf| p.display().to_string();
        let c = Config::load_with_env(
            &ok,
            env(&[
                ("BEDS_AMQP__URL_FILE", &path(&url)),
                ("BEDS_DATABASE__DRIVER", "postgres"),
                ("BEDS_DATABASE__URL_FILE", &path(&db)),
            ]),
        )
        .unwrap();
        assert_eq!(c.amqp.url, "amqp://node:s3cr3t@h:5672/%2f");
        assert_eq!(c.amqp.redacted_url(), "amqp://node:***@h:5672/%2f");
        assert_eq!(
            c.database.url.as_deref(),
            Some("postgres://beds:dbsecret@h/beds")
        );
        let c = Config::load_with_env(
            &ok,
            env(&[
                ("BEDS_AMQP__URL", "amqp://node@h:5672/%2f"),
                ("BEDS_AMQP__PASSWORD_FILE", &path(&pw)),
            ]),
        )
        .unwrap();
        assert_eq!(c.amqp.url, "amqp://node:p%40ss%2Fw%3Ard@h:5672/%2f");
        assert!(
            !c.amqp.redacted_url().contains("ss"),
            "{}",
            c.amqp.redacted_url()
        );
        let e = Config::load_with_env(&ok, env(&[("BEDS_AMQP__URL_FILE", "/nonexistent/url")]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("amqp.url_file") && e.contains("/nonexistent/url"),
            "{e}"
        );
        // A plaintext-URL error does not show the password either.
        let e = Config::load_with_env(&ok, env(&[("BEDS_AMQP__URL", "http://u:hunter2@h/")]))
            .unwrap_err()
            .to_string();
        assert!(!e.contains("hunter2"), "{e}");
    }

    #[test]
    fn guest_is_refused_outside_dev_and_test() {
        let dir = tempfile::tempdir().unwrap();
        let ok = write(dir.path(), "beds.yaml", "version: 2\n");
        for url in ["amqp://guest:guest@h:5672/%2f", "amqp://h:5672/%2f"] {
            let e =
                Config::load_with_env(&ok, env(&[("BEDS_ENV", "prod"), ("BEDS_AMQP__URL", url)]))
                    .unwrap_err()
                    .to_string();
            assert!(e.contains("`guest`") && e.contains("env `prod`"), "{e}");
        }
        for name in ["dev", "test"] {
            Config::load_with_env(&ok, env(&[("BEDS_ENV", name)])).unwrap();
        }
        Config::load_with_env(
            &ok,
            env(&[
                ("BEDS_ENV", "prod"),
                ("BEDS_AMQP__URL", "amqp://node:x@h/%2f"),
            ]),
        )
        .unwrap();
        // Nor may the broker's default user hold roles or assert end users there.
        for security in [
            "service_roles: { guest: [admin] }",
            "trusted_services: [guest]",
        ] {
            let file = write(
                dir.path(),
                "guest-roles.yaml",
                &format!("version: 2\nsecurity: {{ {security} }}\n"),
            );
            let e = Config::load_with_env(
                &file,
                env(&[
                    ("BEDS_ENV", "prod"),
                    ("BEDS_AMQP__URL", "amqp://node:x@h/%2f"),
                ]),
            )
            .unwrap_err()
            .to_string();
            assert!(e.contains("names `guest` in env `prod`"), "{security}: {e}");
            Config::load_with_env(&file, env(&[("BEDS_ENV", "test")])).unwrap();
        }
    }

    #[test]
    fn amqp_tls_setups_are_checked_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let ok = write(dir.path(), "beds.yaml", "version: 2\n");
        let ca = write(
            dir.path(),
            "ca.pem",
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        );
        let junk = write(dir.path(), "junk.pem", "not pem\n");
        let broken = write(
            dir.path(),
            "broken.pem",
            "-----BEGIN CERTIFICATE-----\nM!!B\n-----END CERTIFICATE-----\n",
        );
        let path = |p: &PathBuf| p.display().to_string();
        let amqps = ("BEDS_AMQP__URL", "amqps://guest:guest@h:5671/%2f");
        let cases: Vec<(Vec<(&str, String)>, &str)> = vec![
            (
                vec![("BEDS_AMQP__TLS__MODE", "required".into())],
                "amqp.tls.mode is required",
            ),
            (vec![(amqps.0, amqps.1.into())], "amqp.tls.ca_file"),
            (
                vec![
                    (amqps.0, amqps.1.into()),
                    ("BEDS_AMQP__TLS__CA_FILE", path(&junk)),
                ],
                "holds no usable PEM CERTIFICATE",
            ),
            (
                vec![
                    (amqps.0, amqps.1.into()),
                    ("BEDS_AMQP__TLS__CA_FILE", path(&broken)),
                ],
                "broken.pem holds no usable PEM CERTIFICATE",
            ),
            (
                vec![
                    (amqps.0, amqps.1.into()),
                    ("BEDS_AMQP__TLS__CA_FILE", path(&ca)),
                    ("BEDS_AMQP__TLS__CERT_FILE", path(&ca)),
                    ("BEDS_AMQP__TLS__KEY_FILE", path(&ca)),
                ],
                "amqp.tls.key_file: ",
            ),
            (
                vec![
                    (amqps.0, amqps.1.into()),
                    ("BEDS_AMQP__TLS__CA_FILE", "/nonexistent/ca.pem".into()),
                ],
                "amqp.tls.ca_file: cannot read /nonexistent/ca.pem",
            ),
            (
                vec![
                    (amqps.0, amqps.1.into()),
                    ("BEDS_AMQP__TLS__CA_FILE", path(&ca)),
                    ("BEDS_AMQP__TLS__CERT_FILE", path(&ca)),
                ],
                "amqp.tls.cert_file is set without amqp.tls.key_file",
            ),
            (
                vec![("BEDS_AMQP__TLS__CA_FILE", path(&ca))],
                "would not be used",
            ),
        ];
        for (vars, says) in cases {
            let vars: Vec<(String, String)> =
                vars.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
            let e = Config::load_with_env(&ok, vars).unwrap_err().to_string();
            assert!(e.contains(says), "{says}: {e}");
        }
        let c = Config::load_with_env(
            &ok,
            env(&[
                amqps,
                ("BEDS_AMQP__TLS__CA_FILE", &path(&ca)),
                ("BEDS_AMQP__TLS__MODE", "required"),
            ]),
        )
        .unwrap();
        assert_eq!(c.amqp.tls.load().unwrap().ca.lines().count(), 3);
    }

    #[test]
    fn database_tls_becomes_driver_parameters() {
        let dir = tempfile::tempdir().unwrap();
        let ok = write(dir.path(), "beds.yaml", "version: 2\n");
        let ca = write(
            dir.path(),
            "ca.pem",
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        );
        let load = |driver: &str, url: &str, mode: &str, ca: Option<&Path>| {
            let mut vars = vec![
                ("BEDS_DATABASE__DRIVER".to_string(), driver.to_string()),
                ("BEDS_DATABASE__URL".to_string(), url.to_string()),
                ("BEDS_DATABASE__TLS__MODE".to_string(), mode.to_string()),
            ];
            if let Some(ca) = ca {
                vars.push((
                    "BEDS_DATABASE__TLS__CA_FILE".into(),
                    ca.display().to_string(),
                ));
            }
            Config::load_with_env(&ok, vars)
        };
        let c = load("postgres", "postgres://u@h/db", "require", None).unwrap();
        assert_eq!(
            c.database.connect_url().unwrap(),
            "postgres://u@h/db?ssl-mode=require"
        );
        let c = load("mariadb", "mysql://u@h/db?x=1", "verify_full", Some(&ca)).unwrap();
        assert_eq!(
            c.database.connect_url().unwrap(),
            format!(
                "mysql://u@h/db?x=1&ssl-mode=VERIFY_IDENTITY&ssl-ca={}",
                ca.display()
            )
        );
        for (url, mode, ca, says) in [
            (
                "postgres://u@h/db",
                "verify_ca",
                None,
                "needs database.tls.ca_file",
            ),
            (
                "postgres://u@h/db",
                "require",
                Some(ca.as_path()),
                "only used by",
            ),
            (
                "postgres://u@h/db?sslmode=disable",
                "require",
                None,
                "keep only database.tls",
            ),
        ] {
            let e = load("postgres", url, mode, ca).unwrap_err().to_string();
            assert!(e.contains(says), "{says}: {e}");
        }
    }

    #[test]
    fn input_limits_are_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let ok = write(dir.path(), "ok.yaml", "version: 2\n");
        let c = Config::load_with_env(&ok, env(&[])).unwrap();
        assert_eq!(c.limits, LimitsConfig::default());
        let c = Config::load_with_env(
            &ok,
            env(&[
                ("BEDS_LIMITS__MAX_MESSAGE_BYTES", "4096"),
                ("BEDS_LIMITS__MAX_DEPTH", "8"),
                ("BEDS_LIMITS__MAX_FIELDS", "50"),
            ]),
        )
        .unwrap();
        assert_eq!(
            c.limits,
            LimitsConfig {
                max_message_bytes: 4096,
                max_depth: 8,
                max_fields: 50
            }
        );
        for (key, value, says) in [
            ("BEDS_LIMITS__MAX_DEPTH", "500", "limits.max_depth"),
            ("BEDS_LIMITS__MAX_DEPTH", "1", "limits.max_depth"),
            ("BEDS_LIMITS__MAX_FIELDS", "0", "limits.max_fields"),
            (
                "BEDS_LIMITS__MAX_MESSAGE_BYTES",
                "0",
                "limits.max_message_bytes",
            ),
        ] {
            let e = Config::load_with_env(&ok, env(&[(key, value)]))
                .unwrap_err()
                .to_string();
            assert!(e.contains(says), "{key}={value}: {e}");
        }
    }

    #[test]
    fn durations_take_units() {
        let m: Millis = serde_yaml::from_str("5s").unwrap();
        assert_eq!(m, Millis(5000));
        let m: Millis = serde_yaml::from_str("250").unwrap();
        assert_eq!(m, Millis(250));
        assert!("18446744073709551d".parse::<Millis>().is_err(), "overflow");
    }

    #[test]
    fn telemetry_listens_on_an_address_or_is_off() {
        let dir = tempfile::tempdir().unwrap();
        let base = write(dir.path(), "beds.yaml", "version: 2\n");
        let load = |pairs: &[(&str, &str)]| Config::load_with_env(&base, env(pairs));
        assert_eq!(
            load(&[]).unwrap().telemetry.listen,
            Some("127.0.0.1:9464".parse().unwrap())
        );
        let off = load(&[("BEDS_TELEMETRY__LISTEN", "off")]).unwrap();
        assert_eq!(off.telemetry.listen, None);
        let null = load(&[("BEDS_TELEMETRY__LISTEN", "~")]).unwrap();
        assert_eq!(null.telemetry.listen, None);
        let any = load(&[("BEDS_TELEMETRY__LISTEN", "0.0.0.0:0")]).unwrap();
        assert_eq!(any.telemetry.listen, Some("0.0.0.0:0".parse().unwrap()));
        let bad = load(&[("BEDS_TELEMETRY__LISTEN", "localhost")])
            .unwrap_err()
            .to_string();
        assert!(
            bad.contains("`localhost` is not an address like 127.0.0.1:9464"),
            "{bad}"
        );
        let fast = load(&[("BEDS_TELEMETRY__QUEUE_POLL", "10ms")])
            .unwrap_err()
            .to_string();
        assert!(
            fast.contains("telemetry.queue_poll is 10 ms; use at least 100ms"),
            "{fast}"
        );
    }
}
