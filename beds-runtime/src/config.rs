//! Configuration: `config/beds.yaml`, an optional environment overlay
//! (`config/beds.<env>.yaml`), then `BEDS_*` environment variables, validated at start-up.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_yaml::{Mapping, Value as Yaml};

/// The configuration schema version this runtime reads.
pub const CONFIG_VERSION: u32 = 1;
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Schema version of this file; must be 1.
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
    pub limits: LimitsConfig,
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
            limits: LimitsConfig::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolConfig {
    /// Consumers (each with its own channel).
    pub workers: u16,
    /// Unacknowledged deliveries per consumer; also its in-flight limit.
    pub prefetch: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Driver {
    /// Embedded, in `data_dir/sqlite_file`; the default.
    Sqlite,
    /// A PostgreSQL server at `url`.
    Postgres,
    /// A MariaDB server at `url` (the MySQL protocol).
    Mariadb,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SqliteSync {
    Full,
    Normal,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    /// Create missing tables and indexes at start-up.
    pub apply_schema: bool,
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
            apply_schema: true,
        }
    }
}

impl DatabaseConfig {
    pub fn sqlite_path(&self) -> PathBuf {
        // `join` keeps an absolute `sqlite_file` as it is.
        self.data_dir.join(&self.sqlite_file)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
        let known = serde_yaml::to_value(Config::default()).expect("defaults serialize");
        for (var, raw) in &env {
            let keys: Vec<String> = var["BEDS_".len()..]
                .split("__")
                .map(str::to_ascii_lowercase)
                .collect();
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
        let config: Config = serde_yaml::from_value(tree).map_err(|e| ConfigError::Invalid {
            sources: sources.join(", "),
            message: e.to_string(),
        })?;
        config.validate().map_err(|message| ConfigError::Invalid {
            sources: sources.join(", "),
            message,
        })?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        if self.version != CONFIG_VERSION {
            return Err(format!(
                "config version {} is not supported; this build reads version {CONFIG_VERSION}",
                self.version
            ));
        }
        if !self.amqp.url.starts_with("amqp://") && !self.amqp.url.starts_with("amqps://") {
            return Err(format!(
                "amqp.url `{}` must start with amqp:// or amqps://",
                self.amqp.url
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
        if self.database.max_connections == 0 {
            return Err("database.max_connections must be at least 1".into());
        }
        match (self.database.driver, self.database.url.as_deref()) {
            (Driver::Sqlite, Some(_)) => {
                return Err("database.url is for postgres and mariadb; sqlite uses database.data_dir and database.sqlite_file".into());
            }
            (Driver::Postgres, None) => {
                return Err("database.driver postgres needs database.url, e.g. postgres://postgres@127.0.0.1:5432/beds".into());
            }
            (Driver::Mariadb, None) => {
                return Err("database.driver mariadb needs database.url, e.g. mysql://root@127.0.0.1:3306/beds".into());
            }
            (Driver::Postgres, Some(url))
                if !url.starts_with("postgres://") && !url.starts_with("postgresql://") =>
            {
                return Err(format!(
                    "database.url for postgres must start with postgres://, not `{}`",
                    redact(url)
                ));
            }
            (Driver::Mariadb, Some(url))
                if !url.starts_with("mysql://") && !url.starts_with("mariadb://") =>
            {
                return Err(format!(
                    "database.url for mariadb must start with mysql://, not `{}`",
                    redact(url)
                ));
            }
            _ => {}
        }
        Ok(())
    }
}

/// `amqp://name:secret@host/` -> `amqp://name:***@host/`.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.split_once('@') {
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
            "version: 1\nenv: dev\nbrokers: { read: { workers: 3 } }\n",
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
    fn errors_name_their_source() {
        let dir = tempfile::tempdir().unwrap();
        let base = write(dir.path(), "beds.yaml", "version: 1\namqp: { urll: x }\n");
        let e = Config::load_with_env(&base, env(&[]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("beds.yaml") && e.contains("urll"), "{e}");
        let ok = write(dir.path(), "ok.yaml", "version: 1\n");
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
    fn event_settings_are_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let ok = write(dir.path(), "beds.yaml", "version: 1\n");
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
        let ok = write(dir.path(), "ok.yaml", "version: 1\n");
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
    fn input_limits_are_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let ok = write(dir.path(), "ok.yaml", "version: 1\n");
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
}
