//! Proof that a message was made by a BEDS node: an HMAC-SHA256 with the deployment's
//! service key over what the message says (its purpose, message id, body digest and the
//! `x-beds-*` headers it carries), in the `x-beds-signature` header. Retry and dead-letter
//! headers, write events, invalidations and replies are signed here and verified by
//! whoever acts on them; audit and lineage events reuse it as they arrive.
//!
//! HMAC rather than Ed25519: every signer is also a verifier (a node that parks a retry
//! reads it back), so a public-key scheme would give no one less power, and `hmac`/`sha2`
//! are already in the build through sqlx.

use std::path::{Path, PathBuf};

use hmac::{KeyInit, Mac};
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};
use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::transport::names::headers;

type HmacSha256 = hmac::Hmac<Sha256>;

/// The shortest service key accepted, in bytes (the HMAC-SHA256 block of security).
pub const MIN_KEY_LEN: usize = 32;

/// The key used in the `dev` and `test` environments when none is configured. It is in
/// the source code and so protects nothing: never use it where a client is not trusted.
const DEVELOPMENT_KEY: &[u8] = b"beds-development-service-key-INSECURE-do-not-deploy";

/// What a signature vouches for; a signature made for one purpose never verifies for
/// another (a signed dead letter cannot pose as a retry, nor an event as an invalidation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// A write the node parked in its retry lane.
    Retry,
    /// A message the node dead-lettered, with its reason headers.
    DeadLetter,
    /// A committed-write event published by the relay.
    WriteEvent,
    /// A cache invalidation (node-local or from tercero).
    Invalidation,
    /// A reply to a request.
    Reply,
    /// A node's heartbeat (`{tag}log.status`).
    Status,
    /// A lane command to a node's control queue (from the admin role).
    Control,
}

impl Purpose {
    fn label(self) -> &'static str {
        match self {
            Purpose::Retry => "retry",
            Purpose::DeadLetter => "dead-letter",
            Purpose::WriteEvent => "write-event",
            Purpose::Invalidation => "invalidation",
            Purpose::Reply => "reply",
            Purpose::Status => "status",
            Purpose::Control => "control",
        }
    }
}

/// Why the service key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(
        "security.service_key_file is not set, and env `{env}` is not dev or test: write a \
         random secret of at least {MIN_KEY_LEN} bytes to a file readable only by BEDS (e.g. \
         `openssl rand -hex 32 > /etc/beds/service.key`) and set security.service_key_file \
         (or BEDS_SECURITY__SERVICE_KEY_FILE) to its path on every node"
    )]
    Missing { env: String },
    #[error(
        "security.service_key_file {path}: cannot read it ({source}); check the path and that BEDS may read the file"
    )]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "security.service_key_file {path}: the key has {len} bytes; it needs at least \
         {MIN_KEY_LEN} (e.g. `openssl rand -hex 32 > {path}`)"
    )]
    TooShort { path: PathBuf, len: usize },
}

/// Why a message is not trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Untrusted {
    #[error("it carries no x-beds-signature")]
    Unsigned,
    #[error(
        "its x-beds-signature does not match (not made by a node of this deployment, or altered)"
    )]
    BadSignature,
}

/// The deployment's shared secret. Its bytes are never printed.
#[derive(Clone)]
pub struct ServiceKey(HmacSha256);

impl std::fmt::Debug for ServiceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServiceKey(***)")
    }
}

impl ServiceKey {
    /// The key of `config`: `security.service_key_file`, or the development key in the
    /// `dev` and `test` environments when none is set (with a warning).
    pub fn load(config: &Config) -> Result<ServiceKey, KeyError> {
        match &config.security.service_key_file {
            Some(path) => ServiceKey::from_file(path),
            None if matches!(config.env.as_str(), "dev" | "test") => {
                tracing::warn!(
                    env = %config.env,
                    "security.service_key_file is not set: using the built-in development key, \
                     which anyone can read in the BEDS source; set it before exposing the broker"
                );
                Ok(ServiceKey::development())
            }
            None => Err(KeyError::Missing {
                env: config.env.clone(),
            }),
        }
    }

    /// Reads a key file; surrounding whitespace (a trailing newline) is not part of it.
    pub fn from_file(path: &Path) -> Result<ServiceKey, KeyError> {
        let bytes = std::fs::read(path).map_err(|source| KeyError::Unreadable {
            path: path.to_path_buf(),
            source,
        })?;
        let key = bytes.trim_ascii();
        if key.len() < MIN_KEY_LEN {
            return Err(KeyError::TooShort {
                path: path.to_path_buf(),
                len: key.len(),
            });
        }
        Ok(ServiceKey::from_bytes(key))
    }

    /// The documented, insecure key of the `dev` and `test` environments.
    pub fn development() -> ServiceKey {
        ServiceKey::from_bytes(DEVELOPMENT_KEY)
    }

    fn from_bytes(key: &[u8]) -> ServiceKey {
        ServiceKey(HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length"))
    }

    /// `properties` with the signature of `body` for `purpose` added (replacing any).
    pub fn sign(
        &self,
        purpose: Purpose,
        properties: BasicProperties,
        body: &[u8],
    ) -> BasicProperties {
        let mut table = FieldTable::default();
        for (k, v) in properties.headers().clone().unwrap_or_default().inner() {
            if k.as_str() != headers::SIGNATURE {
                table.insert(k.clone(), v.clone());
            }
        }
        let mac = self.mac(purpose, &properties, &table, body);
        let signature = hex(&mac.finalize().into_bytes());
        table.insert(
            headers::SIGNATURE.into(),
            AMQPValue::LongString(signature.as_str().into()),
        );
        properties.with_headers(table)
    }

    /// Whether `properties` carry a valid signature of `body` for `purpose`.
    pub fn verify(
        &self,
        purpose: Purpose,
        properties: &BasicProperties,
        body: &[u8],
    ) -> Result<(), Untrusted> {
        let table = properties.headers().clone().unwrap_or_default();
        let claimed = match table.inner().get(headers::SIGNATURE) {
            Some(AMQPValue::LongString(s)) => unhex(s.as_bytes()),
            Some(AMQPValue::ShortString(s)) => unhex(s.as_str().as_bytes()),
            Some(_) => None,
            None => return Err(Untrusted::Unsigned),
        }
        .ok_or(Untrusted::BadSignature)?;
        self.mac(purpose, properties, &table, body)
            .verify_slice(&claimed)
            .map_err(|_| Untrusted::BadSignature)
    }

    /// The MAC over purpose, message id, body digest and every `x-beds-*` header but the
    /// signature, sorted by name, each value with its kind (so `1` and `"1"` differ, but
    /// the integer widths and string kinds the broker may re-encode do not).
    fn mac(
        &self,
        purpose: Purpose,
        properties: &BasicProperties,
        table: &FieldTable,
        body: &[u8],
    ) -> HmacSha256 {
        let mut mac = self.0.clone();
        let field = |mac: &mut HmacSha256, bytes: &[u8]| {
            mac.update(&(bytes.len() as u64).to_be_bytes());
            mac.update(bytes);
        };
        field(&mut mac, b"beds-signature-v1");
        field(&mut mac, purpose.label().as_bytes());
        let id = properties.message_id().as_ref().map(|s| s.as_str());
        field(&mut mac, id.unwrap_or_default().as_bytes());
        field(&mut mac, &Sha256::digest(body));
        let mut signed: Vec<_> = table
            .inner()
            .iter()
            .filter(|(k, _)| {
                k.as_str().starts_with(headers::PREFIX) && k.as_str() != headers::SIGNATURE
            })
            .collect();
        signed.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
        for (name, value) in signed {
            field(&mut mac, name.as_str().as_bytes());
            field(&mut mac, &canonical(value));
        }
        mac
    }
}

/// `properties`' headers without any `x-beds-*` one: what is left of a message before
/// the node adds (and signs) its own.
pub fn foreign_headers(properties: &BasicProperties) -> FieldTable {
    let mut table = FieldTable::default();
    for (k, v) in properties.headers().clone().unwrap_or_default().inner() {
        if !k.as_str().starts_with(headers::PREFIX) {
            table.insert(k.clone(), v.clone());
        }
    }
    table
}

/// A header value as signed bytes.
fn canonical(value: &AMQPValue) -> Vec<u8> {
    let tagged = |tag: u8, text: &[u8]| [&[tag], text].concat();
    match value {
        AMQPValue::LongString(s) => tagged(b's', s.as_bytes()),
        AMQPValue::ShortString(s) => tagged(b's', s.as_str().as_bytes()),
        AMQPValue::Boolean(b) => tagged(b'b', if *b { b"1" } else { b"0" }),
        AMQPValue::ShortShortInt(n) => tagged(b'i', n.to_string().as_bytes()),
        AMQPValue::ShortShortUInt(n) => tagged(b'i', n.to_string().as_bytes()),
        AMQPValue::ShortInt(n) => tagged(b'i', n.to_string().as_bytes()),
        AMQPValue::ShortUInt(n) => tagged(b'i', n.to_string().as_bytes()),
        AMQPValue::LongInt(n) => tagged(b'i', n.to_string().as_bytes()),
        AMQPValue::LongUInt(n) => tagged(b'i', n.to_string().as_bytes()),
        AMQPValue::LongLongInt(n) => tagged(b'i', n.to_string().as_bytes()),
        other => tagged(b'?', format!("{other:?}").as_bytes()),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &[u8]) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    text.chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props() -> BasicProperties {
        let mut table = FieldTable::default();
        table.insert(headers::ATTEMPT.into(), AMQPValue::LongLongInt(2));
        table.insert("other".into(), AMQPValue::LongString("kept".into()));
        BasicProperties::default()
            .with_message_id("m-1".into())
            .with_headers(table)
    }

    #[test]
    fn a_signature_verifies_only_for_its_key_purpose_body_and_headers() {
        let key = ServiceKey::development();
        let signed = key.sign(Purpose::Retry, props(), b"body");
        assert_eq!(key.verify(Purpose::Retry, &signed, b"body"), Ok(()));
        assert_eq!(
            key.verify(Purpose::DeadLetter, &signed, b"body"),
            Err(Untrusted::BadSignature)
        );
        assert_eq!(
            key.verify(Purpose::Retry, &signed, b"bodx"),
            Err(Untrusted::BadSignature)
        );
        let other = ServiceKey::from_bytes(&[7; 32]);
        assert_eq!(
            other.verify(Purpose::Retry, &signed, b"body"),
            Err(Untrusted::BadSignature)
        );
        assert_eq!(
            key.verify(Purpose::Retry, &props(), b"body"),
            Err(Untrusted::Unsigned)
        );
        // A changed attempt count breaks it; a header outside x-beds-* does not.
        let mut table = signed.headers().clone().unwrap();
        table.insert(headers::ATTEMPT.into(), AMQPValue::LongLongInt(1));
        let forged = signed.clone().with_headers(table);
        assert_eq!(
            key.verify(Purpose::Retry, &forged, b"body"),
            Err(Untrusted::BadSignature)
        );
        let mut table = signed.headers().clone().unwrap();
        table.insert("x-death".into(), AMQPValue::LongString("added".into()));
        table.insert(headers::ATTEMPT.into(), AMQPValue::LongInt(2));
        let rewritten = signed.with_headers(table);
        assert_eq!(key.verify(Purpose::Retry, &rewritten, b"body"), Ok(()));
    }

    #[test]
    fn key_files_are_checked_and_never_printed() {
        let dir = tempfile::tempdir().unwrap();
        let short = dir.path().join("short.key");
        std::fs::write(&short, "too short\n").unwrap();
        let e = ServiceKey::from_file(&short).unwrap_err().to_string();
        assert!(
            e.contains("security.service_key_file") && e.contains("at least 32"),
            "{e}"
        );
        let missing = ServiceKey::from_file(&dir.path().join("absent")).unwrap_err();
        assert!(matches!(missing, KeyError::Unreadable { .. }), "{missing}");
        let good = dir.path().join("good.key");
        std::fs::write(&good, format!("{}\n", "ab".repeat(32))).unwrap();
        let key = ServiceKey::from_file(&good).unwrap();
        assert_eq!(format!("{key:?}"), "ServiceKey(***)");

        let mut config = Config {
            env: "prod".into(),
            ..Config::default()
        };
        let e = ServiceKey::load(&config).unwrap_err().to_string();
        assert!(e.contains("security.service_key_file is not set"), "{e}");
        config.env = "test".into();
        assert!(ServiceKey::load(&config).is_ok());
    }
}
