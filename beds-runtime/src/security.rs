//! Who is calling: the calling service (the AMQP `user_id`, which RabbitMQ checks against
//! the connection's login), the end user it acts for (a verified token or, from a trusted
//! service, an assertion) and their roles; and the check of a record's owner against them.
//! The rules themselves are applied by the ingress `authorize` step (wiki/security.md).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value as Json;

use crate::config::{Config, TokenAlg};
use crate::error::{BedsError, ErrorCode};
use crate::meta::TemplateMeta;

/// The caller of one request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Principal {
    /// The AMQP `user_id` the request was published with.
    pub service: Option<String>,
    /// The end user, from a verified token or a trusted service's assertion.
    pub subject: Option<String>,
    pub roles: Vec<String>,
}

/// Why a node's security settings cannot be used; stops start-up.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    #[error(
        "security.tokens.keys: cannot read the key file `{}` of kid `{kid}`: {source}; check the path and its permissions",
        file.display()
    )]
    KeyFile {
        kid: String,
        file: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "security.tokens.keys: the file of kid `{kid}` is not an Ed25519 public key in PEM form ({reason}); write `-----BEGIN PUBLIC KEY-----` ..."
    )]
    BadKey { kid: String, reason: String },
    #[error("security.tokens.keys: kid `{0}` appears twice; each key needs its own id")]
    DuplicateKid(String),
    #[error(
        "security.tokens.keys: the HS256 secret of kid `{kid}` has {len} bytes; a guessable secret lets anyone sign tokens: use at least {MIN_SECRET} (e.g. `openssl rand -hex 32`)"
    )]
    ShortSecret { kid: String, len: usize },
}

/// The shortest HS256 secret accepted, in bytes (after surrounding whitespace).
const MIN_SECRET: usize = 32;

/// Why a token was refused. Never carries the token itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the `auth` token has expired; get a new one")]
    Expired,
    #[error(
        "the `auth` token's signature does not verify; it was altered or signed with another key"
    )]
    BadSignature,
    #[error(
        "the `auth` token names the unknown key id `{0}`; sign with a key listed in security.tokens.keys"
    )]
    UnknownKid(String),
    #[error(
        "the `auth` token has no `kid` header; sign it with a key id listed in security.tokens.keys"
    )]
    NoKid,
    #[error("the `auth` token's issuer is not the one this node accepts")]
    WrongIssuer,
    #[error("the `auth` token is not meant for this audience")]
    WrongAudience,
    #[error("the `auth` token is not valid yet (`nbf` is in the future)")]
    NotYetValid,
    #[error("the `auth` token is not a well-formed signed token with `sub` and `exp`: {0}")]
    Malformed(String),
}

/// The claims BEDS reads from a token.
#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    roles: Vec<String>,
}

/// A node's security settings, with its verification keys loaded.
pub struct Security {
    pub require_user_id: bool,
    trusted_services: Vec<String>,
    service_roles: BTreeMap<String, Vec<String>>,
    default_access: Vec<String>,
    keys: HashMap<String, (Algorithm, DecodingKey)>,
    issuer: Option<String>,
    audience: Option<String>,
}

impl std::fmt::Debug for Security {
    // Keys are secrets: only their ids are shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Security")
            .field("require_user_id", &self.require_user_id)
            .field("trusted_services", &self.trusted_services)
            .field("default_access", &self.default_access)
            .field("kids", &self.keys.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Security {
    /// Reads the key files named in `security.tokens.keys`.
    pub fn from_config(config: &Config) -> Result<Security, SecurityError> {
        let s = &config.security;
        let mut keys = HashMap::new();
        for k in &s.tokens.keys {
            let bytes = std::fs::read(&k.file).map_err(|source| SecurityError::KeyFile {
                kid: k.kid.clone(),
                file: k.file.clone(),
                source,
            })?;
            let key = match k.alg {
                TokenAlg::Hs256 => {
                    let secret = bytes.trim_ascii();
                    if secret.len() < MIN_SECRET {
                        return Err(SecurityError::ShortSecret {
                            kid: k.kid.clone(),
                            len: secret.len(),
                        });
                    }
                    (Algorithm::HS256, DecodingKey::from_secret(secret))
                }
                TokenAlg::EdDsa => (
                    Algorithm::EdDSA,
                    DecodingKey::from_ed_pem(&bytes).map_err(|e| SecurityError::BadKey {
                        kid: k.kid.clone(),
                        reason: e.to_string(),
                    })?,
                ),
            };
            if keys.insert(k.kid.clone(), key).is_some() {
                return Err(SecurityError::DuplicateKid(k.kid.clone()));
            }
        }
        Ok(Security {
            require_user_id: config.require_user_id(),
            trusted_services: s.trusted_services.clone(),
            service_roles: s.service_roles.clone(),
            default_access: s.default_access.clone(),
            keys,
            issuer: s.tokens.issuer.clone(),
            audience: s.tokens.audience.clone(),
        })
    }

    /// The rule of operations and queries that declare none.
    pub fn default_access(&self) -> &[String] {
        &self.default_access
    }

    pub fn trusts(&self, service: &str) -> bool {
        self.trusted_services.iter().any(|s| s == service)
    }

    /// The roles a calling service holds itself.
    pub fn service_roles(&self, service: &str) -> Vec<String> {
        self.service_roles.get(service).cloned().unwrap_or_default()
    }

    /// Verifies a token by the key its `kid` names: signature, `exp`, and the configured
    /// issuer and audience. Returns the subject and roles.
    pub fn verify(&self, token: &str) -> Result<(String, Vec<String>), TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(token_error)?;
        let kid = header.kid.ok_or(TokenError::NoKid)?;
        let (alg, key) = self
            .keys
            .get(&kid)
            .ok_or_else(|| TokenError::UnknownKid(kid.clone()))?;
        let mut validation = Validation::new(*alg);
        validation.set_required_spec_claims(&["exp", "sub"]);
        // A token dated in the future is not valid yet.
        validation.validate_nbf = true;
        validation.leeway = 5;
        match &self.issuer {
            Some(iss) => validation.set_issuer(&[iss]),
            None => validation.iss = None,
        }
        match &self.audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        let data = jsonwebtoken::decode::<Claims>(token, key, &validation).map_err(token_error)?;
        Ok((data.claims.sub, data.claims.roles))
    }
}

fn token_error(e: jsonwebtoken::errors::Error) -> TokenError {
    match e.kind() {
        ErrorKind::ExpiredSignature => TokenError::Expired,
        // A token whose header names another algorithm than its key's is signed wrongly.
        ErrorKind::InvalidSignature | ErrorKind::InvalidAlgorithm => TokenError::BadSignature,
        ErrorKind::InvalidIssuer => TokenError::WrongIssuer,
        ErrorKind::InvalidAudience => TokenError::WrongAudience,
        ErrorKind::ImmatureSignature => TokenError::NotYetValid,
        ErrorKind::MissingRequiredClaim(c) => TokenError::Malformed(format!("no `{c}` claim")),
        _ => TokenError::Malformed("not a JWT of three base64url parts with JSON claims".into()),
    }
}

/// An `owner` rule still to apply to a record: its owner field must hold `subject`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerCheck {
    pub field: &'static str,
    pub subject: String,
}

impl OwnerCheck {
    /// Checks a stored record (`None`: there is none). A missing record is refused like
    /// another's, so a caller learns nothing about records they may not touch.
    pub fn record(
        &self,
        t: &TemplateMeta,
        op: &str,
        record: Option<&Json>,
    ) -> Result<(), BedsError> {
        match record.and_then(|r| r.get(self.field)) {
            Some(v) if same_subject(v, &self.subject) => Ok(()),
            _ => Err(forbidden_owner(t, op, self.field)),
        }
    }
}

/// Whether a field value names `subject`; ids compare as UUIDs, so case does not matter.
pub fn same_subject(value: &Json, subject: &str) -> bool {
    let text = match value {
        Json::String(s) => s.clone(),
        Json::Number(n) => n.to_string(),
        _ => return false,
    };
    match (uuid::Uuid::parse_str(&text), uuid::Uuid::parse_str(subject)) {
        (Ok(a), Ok(b)) => a == b,
        _ => text == subject,
    }
}

pub fn forbidden_owner(t: &TemplateMeta, op: &str, field: &str) -> BedsError {
    BedsError::new(
        ErrorCode::Forbidden,
        format!(
            "`{op}` on `{}.{}` is allowed only to the record's owner (its `{field}`) or the roles its access rule names; act as that subject or with such a role",
            t.domain, t.name
        ),
    )
}

/// Where an operation's rule comes from, for `beds check`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RuleSource {
    Declared,
    /// A `list` with no rule of its own: its template's `fetch` rule.
    Fetch,
    /// `security.default_access`.
    Default,
}

/// The rule an operation reads its template's records under: `lock` and `unlock` under
/// `update`, `history` under `fetch`.
fn declared(t: &TemplateMeta, op: crate::envelope::Op) -> Option<&'static [&'static str]> {
    use crate::envelope::Op;
    let under = match op {
        Op::Lock | Op::Unlock => Op::Update,
        Op::History => Op::Fetch,
        op => op,
    };
    t.access.iter().find(|(o, _)| *o == under).map(|(_, w)| *w)
}

/// A declared `fetch` rule as it applies to many records at once: without `owner`, since
/// a page or a query result has no one owner.
fn fetch_for_many(t: &TemplateMeta) -> Option<Vec<&'static str>> {
    declared(t, crate::envelope::Op::Fetch)
        .map(|who| who.iter().copied().filter(|w| *w != "owner").collect())
}

/// The rule of a template operation. A `list` with no rule of its own is under its
/// template's declared `fetch` rule (without `owner`), never the more open default:
/// listing records must not show what fetching them one by one would refuse.
pub(crate) fn template_rule<'a>(
    default: &'a [String],
    t: &TemplateMeta,
    op: crate::envelope::Op,
) -> (Vec<&'a str>, RuleSource) {
    if let Some(who) = declared(t, op) {
        return (who.to_vec(), RuleSource::Declared);
    }
    if op == crate::envelope::Op::List
        && let Some(who) = fetch_for_many(t)
    {
        return (who, RuleSource::Fetch);
    }
    (
        default.iter().map(String::as_str).collect(),
        RuleSource::Default,
    )
}

/// The further rules a named query without an `access` rule of its own is under: the
/// declared `fetch` rule (without `owner`) of every template it reads, so a query shows no
/// more than fetching would; each must grant it. Its own rule is `access` or the default.
pub(crate) fn query_read_rules(
    q: &crate::meta::QueryMeta,
    template: impl Fn(&str) -> Option<&'static TemplateMeta>,
) -> Vec<(&'static str, Vec<&'static str>)> {
    if !q.access.is_empty() {
        return Vec::new();
    }
    q.reads
        .iter()
        .filter_map(|name| {
            let t = template(name)?;
            fetch_for_many(t).map(|who| (t.name, who))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TokenKeyConfig;

    #[test]
    fn a_short_hs256_secret_stops_the_start_and_whitespace_is_not_part_of_it() {
        let dir = tempfile::tempdir().unwrap();
        let load = |secret: &str| {
            let file = dir.path().join("hs");
            std::fs::write(&file, secret).unwrap();
            let mut config = Config::default();
            config.security.tokens.keys = vec![TokenKeyConfig {
                kid: "k1".into(),
                alg: TokenAlg::Hs256,
                file,
            }];
            Security::from_config(&config)
        };
        let e = load("short secret\n").unwrap_err().to_string();
        assert!(
            e.contains("kid `k1` has 12 bytes") && e.contains("at least 32"),
            "{e}"
        );
        let e = load(&format!("{}\n", "x".repeat(31))).unwrap_err();
        assert!(
            matches!(e, SecurityError::ShortSecret { len: 31, .. }),
            "{e}"
        );
        load(&format!("{}\n", "x".repeat(32))).expect("32 bytes are enough");
    }
}
