//! Envelope v1: the JSON request and reply every BEDS message carries.
//!
//! The wiki page `wiki/envelope.md` documents this contract for clients in any language.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json};
use uuid::Uuid;

use crate::config::LimitsConfig;
use crate::echo::clip;
use crate::error::{BedsError, DetailCode, ErrorCode, ErrorDetail};
use crate::suggest::did_you_mean;
pub use crate::tier::Tier;

/// The envelope version this runtime speaks.
pub const VERSION: u32 = 1;

/// Where a message came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Origin {
    pub service: String,
    pub node: String,
    pub env: String,
}

/// An operation on a template.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    Create,
    Fetch,
    Update,
    Delete,
    List,
    /// Runs the named query `query` of the domain.
    Query,
    /// Takes or extends a lease on a record of a template declaring `locking`.
    Lock,
    /// Gives a lease back.
    Unlock,
    /// The versions of a record of a template declaring `journal`, newest first.
    History,
}

impl Op {
    pub const ALL: [Op; 9] = [
        Op::Create,
        Op::Fetch,
        Op::Update,
        Op::Delete,
        Op::List,
        Op::Query,
        Op::Lock,
        Op::Unlock,
        Op::History,
    ];
    /// The operations of a template (`query` belongs to the domain).
    pub const TEMPLATE: [Op; 5] = [Op::Create, Op::Fetch, Op::Update, Op::Delete, Op::List];
    /// The operations a template declaring `locking` adds.
    pub const LOCKING: [Op; 2] = [Op::Lock, Op::Unlock];
    /// The operations a template declaring `journal` adds.
    pub const JOURNAL: [Op; 1] = [Op::History];

    pub fn as_str(self) -> &'static str {
        match self {
            Op::Create => "create",
            Op::Fetch => "fetch",
            Op::Update => "update",
            Op::Delete => "delete",
            Op::List => "list",
            Op::Query => "query",
            Op::Lock => "lock",
            Op::Unlock => "unlock",
            Op::History => "history",
        }
    }

    pub fn parse(s: &str) -> Option<Op> {
        Op::ALL.into_iter().find(|op| op.as_str() == s)
    }

    /// Writes go to `rec.write` and the wBroker pool; reads to `rec.read`.
    pub fn is_write(self) -> bool {
        matches!(
            self,
            Op::Create | Op::Update | Op::Delete | Op::Lock | Op::Unlock
        )
    }
}

/// How fresh a read must be (`consistency` in a request, or a cached template's declared
/// default): `strong` reads the database; `cached` may be served from the node's cache, so
/// it can be stale up to the template's TTL or the invalidation delay (wiki/cache.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Consistency {
    #[default]
    Strong,
    Cached,
}

/// For fetch on a journaled template: the record as it was at a version, or at a time
/// (the newest version written at or before it). On the wire a number or an RFC 3339 text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum AsOf {
    Version(i64),
    Time(chrono::DateTime<chrono::Utc>),
}

/// Where a read is served from (`tier` in a request): `hot`, the serving database (the
/// default), or `warehouse`, the records retention moved out of it, served by a segundo
/// node (wiki/retention.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadTier {
    #[default]
    Hot,
    Warehouse,
}

/// A request. Only `v`, `id`, `domain`, `template` and `op` are always required. Read off
/// the wire by [`Request::decode`].
#[derive(Clone, PartialEq, Serialize)]
pub struct Request {
    pub v: u32,
    /// This message's id (UUIDv7).
    pub id: Uuid,
    /// The root conversation this request belongs to; defaults to `id`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<Uuid>,
    /// The message that caused this one, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<Uuid>,
    /// How many messages deep in its conversation this one is.
    pub depth: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origin: Option<Origin>,
    pub domain: String,
    /// The template, for every operation but `query`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub template: String,
    /// Kept as text so an unknown operation gets its own error code.
    pub op: String,
    /// The record's key, e.g. `{"id": "…"}`, for fetch, update and delete.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<Map<String, Json>>,
    /// When the caller stops waiting; an expired request is answered, not executed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deadline: Option<chrono::DateTime<chrono::Utc>>,
    /// Replays of a write with the same key return the first reply and change nothing;
    /// defaults to the request `id`, so redeliveries and resends of one message are safe.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// For update and delete: apply only if the record is at this version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expect_version: Option<i64>,
    /// The lease held on the record, for update, delete, lock (to extend it) and unlock.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lock_token: Option<String>,
    /// For fetch: `strong` or `cached`; absent, the template's declared default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consistency: Option<Consistency>,
    /// For fetch (read-your-writes): the cache serves only a record at this version or
    /// later, else the database answers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_version: Option<i64>,
    /// For fetch of a journaled template: the record as it was then (never cached).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub as_of: Option<AsOf>,
    /// Field values for create and update.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<Map<String, Json>>,
    /// Page size for list and query (the declared default when absent, capped at its max).
    /// A received limit outside `u32` is kept as 0 or `u32::MAX`, so the page check refuses
    /// it with the same message as any other limit out of range (a page whose declared max
    /// is `u32::MAX` takes the latter as its max).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// Keyset cursor for list: the `next` value of the previous page (an id).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<Json>,
    /// The named query, for `query`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// The query's parameters by name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub params: Option<Map<String, Json>>,
    /// Keyset cursor for query: the `next` value of the previous page, passed back as is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cursor: Option<Vec<Json>>,
    /// A signed token (JWT) naming the end user (`sub`) and their `roles`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth: Option<String>,
    /// The end user, asserted directly: only from a trusted service (`security.trusted_services`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// The end user's roles, asserted directly: only from a trusted service.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub roles: Option<Vec<String>>,
    /// For fetch and query: `warehouse` reads the records retention moved out of the
    /// serving database; absent or `hot`, the serving database.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tier: Option<ReadTier>,
}

impl std::fmt::Debug for Request {
    // The token is a credential: shown only as present.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("v", &self.v)
            .field("id", &self.id)
            .field("correlation_id", &self.correlation_id)
            .field("causation_id", &self.causation_id)
            .field("depth", &self.depth)
            .field("origin", &self.origin)
            .field("domain", &self.domain)
            .field("template", &self.template)
            .field("op", &self.op)
            .field("key", &self.key)
            .field("deadline", &self.deadline)
            .field("idempotency_key", &self.idempotency_key)
            .field("expect_version", &self.expect_version)
            .field("lock_token", &self.lock_token)
            .field("consistency", &self.consistency)
            .field("min_version", &self.min_version)
            .field("as_of", &self.as_of)
            .field("data", &self.data)
            .field("limit", &self.limit)
            .field("after", &self.after)
            .field("query", &self.query)
            .field("params", &self.params)
            .field("cursor", &self.cursor)
            .field("auth", &self.auth.as_ref().map(|_| "<redacted>"))
            .field("subject", &self.subject)
            .field("roles", &self.roles)
            .field("tier", &self.tier)
            .finish_non_exhaustive()
    }
}

/// A request as it arrives. The envelope's own fields are typed, so their problems are
/// `invalid_envelope`; the payload fields are read as any JSON and checked in
/// [`Wire::into_request`], so their problems are `invalid_input` naming the field, as the
/// wiki's error table says. The objects (`data`, `key`, `params`) are read without letting
/// a repeated key pass; `limit`, `after` and `cursor` hold scalars (sort keys are never
/// json), so an object in them is refused whole and needs no such check (it would cost
/// every paged request for nothing).
/// The fields of [`Wire`], for naming an unknown one without listing them all: a reply that
/// enumerated them would change whenever v1 gains an optional field.
const FIELDS: &[&str] = &[
    "v",
    "id",
    "correlation_id",
    "causation_id",
    "depth",
    "origin",
    "domain",
    "template",
    "op",
    "key",
    "deadline",
    "idempotency_key",
    "expect_version",
    "lock_token",
    "consistency",
    "min_version",
    "as_of",
    "data",
    "limit",
    "after",
    "query",
    "params",
    "cursor",
    "auth",
    "subject",
    "roles",
    "tier",
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    v: u32,
    id: Uuid,
    #[serde(default)]
    correlation_id: Option<Uuid>,
    #[serde(default)]
    causation_id: Option<Uuid>,
    #[serde(default)]
    depth: u32,
    #[serde(default)]
    origin: Option<Origin>,
    domain: String,
    #[serde(default)]
    template: String,
    op: String,
    #[serde(default)]
    key: Option<Strict>,
    #[serde(default)]
    deadline: Option<chrono::DateTime<chrono::Utc>>,
    #[serde(default)]
    idempotency_key: Option<String>,
    #[serde(default)]
    expect_version: Option<i64>,
    #[serde(default)]
    lock_token: Option<String>,
    #[serde(default)]
    consistency: Option<Consistency>,
    #[serde(default)]
    min_version: Option<i64>,
    #[serde(default)]
    as_of: Option<Json>,
    #[serde(default)]
    data: Option<Strict>,
    #[serde(default)]
    limit: Option<Json>,
    #[serde(default)]
    after: Option<Json>,
    #[serde(default)]
    query: Option<String>,
    #[serde(default)]
    params: Option<Strict>,
    #[serde(default)]
    cursor: Option<Json>,
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    subject: Option<String>,
    #[serde(default)]
    roles: Option<Vec<String>>,
    #[serde(default)]
    tier: Option<ReadTier>,
}

impl Wire {
    /// Checks the payload fields, every problem at once.
    fn into_request(self) -> Result<Request, BedsError> {
        let mut details = Vec::new();
        let key = object("key", self.key, &mut details);
        let data = object("data", self.data, &mut details);
        let params = object("params", self.params, &mut details);
        let cursor = match self.cursor {
            Some(Json::Array(items)) => Some(items),
            Some(_) => {
                details.push(wrong_type(
                    "cursor",
                    "an array (a page's `next`, unchanged)",
                ));
                None
            }
            None => None,
        };
        let limit = match self.limit {
            // Out of range saturates; see `Request::limit`.
            Some(Json::Number(n)) if n.is_u64() || n.is_i64() => Some(
                n.as_u64()
                    .map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX)),
            ),
            Some(_) => {
                details.push(wrong_type("limit", "a whole number"));
                None
            }
            None => None,
        };
        let as_of = match self.as_of {
            Some(Json::Number(n)) if n.is_i64() => n.as_i64().map(AsOf::Version),
            Some(Json::String(text)) => match chrono::DateTime::parse_from_rfc3339(&text) {
                Ok(t) => Some(AsOf::Time(t.with_timezone(&chrono::Utc))),
                Err(_) => {
                    details.push(ErrorDetail {
                        field: "as_of".to_string(),
                        code: DetailCode::InvalidFormat,
                        message: "`as_of` text must be an RFC 3339 time, e.g. \
                                  `2026-01-31T12:00:00Z`"
                            .to_string(),
                    });
                    None
                }
            },
            Some(Json::Null) | None => None,
            Some(_) => {
                details.push(wrong_type(
                    "as_of",
                    "a version (a whole number) or an RFC 3339 time",
                ));
                None
            }
        };
        if !details.is_empty() {
            return Err(BedsError::invalid(details));
        }
        Ok(Request {
            v: self.v,
            id: self.id,
            correlation_id: self.correlation_id,
            causation_id: self.causation_id,
            depth: self.depth,
            origin: self.origin,
            domain: self.domain,
            template: self.template,
            op: self.op,
            key,
            deadline: self.deadline,
            idempotency_key: self.idempotency_key,
            expect_version: self.expect_version,
            lock_token: self.lock_token,
            consistency: self.consistency,
            min_version: self.min_version,
            as_of,
            data,
            limit,
            after: self.after,
            query: self.query,
            params,
            cursor,
            auth: self.auth,
            subject: self.subject,
            roles: self.roles,
            tier: self.tier,
        })
    }
}

/// A payload value, or a detail if it repeats a key.
fn unique(field: &str, value: Strict, details: &mut Vec<ErrorDetail>) -> Option<Json> {
    match value.duplicate {
        None => Some(value.value),
        Some(path) => {
            let at = path.at(field);
            details.push(ErrorDetail {
                message: format!("{at} appears more than once; send each key once"),
                field: at,
                code: DetailCode::Duplicate,
            });
            None
        }
    }
}

/// A payload value that must be an object.
fn object(
    field: &str,
    value: Option<Strict>,
    details: &mut Vec<ErrorDetail>,
) -> Option<Map<String, Json>> {
    match unique(field, value?, details)? {
        Json::Object(map) => Some(map),
        _ => {
            details.push(wrong_type(field, "an object"));
            None
        }
    }
}

fn wrong_type(field: &str, expected: &str) -> ErrorDetail {
    ErrorDetail {
        field: field.to_string(),
        code: DetailCode::WrongType,
        message: format!("`{field}` must be {expected}"),
    }
}

/// A JSON value read like serde_json's own `Value`, except that a key repeated in one
/// object is remembered instead of silently replacing the first. Costs nothing per key
/// when there is no repeat (the path is built only for the first repeat found).
struct Strict {
    value: Json,
    duplicate: Option<Path>,
}

/// Where a repeated key is, innermost segment first (reversed when shown).
struct Path(Vec<Segment>);

enum Segment {
    Key(String),
    Index(usize),
}

impl Path {
    /// The path under `field`, as details name fields: `data.a.b`, `cursor[0]`.
    fn at(mut self, field: &str) -> String {
        let mut out = field.to_string();
        while let Some(segment) = self.0.pop() {
            match segment {
                Segment::Key(k) => {
                    out.push('.');
                    out.push_str(&clip(&k));
                }
                Segment::Index(i) => out.push_str(&format!("[{i}]")),
            }
        }
        out
    }
}

impl Strict {
    fn plain(value: Json) -> Strict {
        Strict {
            value,
            duplicate: None,
        }
    }
}

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Strict, D::Error> {
        d.deserialize_any(StrictVisitor)
    }
}

struct StrictVisitor;

impl<'de> serde::de::Visitor<'de> for StrictVisitor {
    type Value = Strict;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Strict, E> {
        Ok(Strict::plain(Json::Bool(v)))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Strict, E> {
        Ok(Strict::plain(Json::from(v)))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Strict, E> {
        Ok(Strict::plain(Json::from(v)))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Strict, E> {
        Ok(Strict::plain(
            serde_json::Number::from_f64(v).map_or(Json::Null, Json::Number),
        ))
    }

    fn visit_str<E>(self, v: &str) -> Result<Strict, E> {
        Ok(Strict::plain(Json::String(v.to_string())))
    }

    fn visit_string<E>(self, v: String) -> Result<Strict, E> {
        Ok(Strict::plain(Json::String(v)))
    }

    fn visit_unit<E>(self) -> Result<Strict, E> {
        Ok(Strict::plain(Json::Null))
    }

    fn visit_none<E>(self) -> Result<Strict, E> {
        Ok(Strict::plain(Json::Null))
    }

    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Strict, D::Error> {
        Strict::deserialize(d)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Strict, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        let mut duplicate = None;
        while let Some(item) = seq.next_element::<Strict>()? {
            if duplicate.is_none() {
                duplicate = item.duplicate.map(|mut p: Path| {
                    p.0.push(Segment::Index(items.len()));
                    p
                });
            }
            items.push(item.value);
        }
        Ok(Strict {
            value: Json::Array(items),
            duplicate,
        })
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Strict, A::Error> {
        let mut fields = Map::new();
        let mut duplicate = None;
        while let Some(key) = map.next_key::<String>()? {
            let item = map.next_value::<Strict>()?;
            match fields.entry(key) {
                serde_json::map::Entry::Vacant(e) => {
                    if duplicate.is_none() {
                        duplicate = item.duplicate.map(|mut p: Path| {
                            p.0.push(Segment::Key(e.key().clone()));
                            p
                        });
                    }
                    e.insert(item.value);
                }
                serde_json::map::Entry::Occupied(e) => {
                    if duplicate.is_none() {
                        duplicate = Some(Path(vec![Segment::Key(e.key().clone())]));
                    }
                }
            }
        }
        Ok(Strict {
            value: Json::Object(fields),
            duplicate,
        })
    }
}

impl Request {
    /// A new root request.
    pub fn new(domain: &str, template: &str, op: Op) -> Request {
        Request {
            v: VERSION,
            id: Uuid::now_v7(),
            correlation_id: None,
            causation_id: None,
            depth: 0,
            origin: None,
            domain: domain.to_string(),
            template: template.to_string(),
            op: op.as_str().to_string(),
            key: None,
            deadline: None,
            idempotency_key: None,
            expect_version: None,
            lock_token: None,
            consistency: None,
            min_version: None,
            as_of: None,
            data: None,
            limit: None,
            after: None,
            query: None,
            params: None,
            cursor: None,
            auth: None,
            subject: None,
            roles: None,
            tier: None,
        }
    }

    /// Decodes a message body within the default [`LimitsConfig`].
    pub fn decode(body: &[u8]) -> Result<Request, BedsError> {
        Request::decode_within(body, &LimitsConfig::default())
    }

    /// Decodes a message body, telling a body over `limits`, bad JSON, a wrong version, a
    /// bad envelope and bad payload fields apart. The bounds are checked before anything
    /// is parsed; messages name fields in the contract's words, never the parser's.
    pub fn decode_within(body: &[u8], limits: &LimitsConfig) -> Result<Request, BedsError> {
        crate::limits::check(body, limits)?;
        match serde_json::from_slice::<Wire>(body) {
            Ok(wire) if wire.v == VERSION => wire.into_request(),
            Ok(wire) => Err(unsupported(Some(wire.v))),
            Err(e) if e.is_syntax() || e.is_eof() => Err(malformed(&e)),
            Err(_) => {
                // Check the version before the shape: a v2 envelope may differ entirely.
                let Ok(top) = serde_json::from_slice::<Strict>(body) else {
                    return Err(unsupported(None));
                };
                let Json::Object(fields) = &top.value else {
                    return Err(unsupported(None));
                };
                match fields.get("v").map(Json::as_u64) {
                    None => Err(unsupported(None)),
                    Some(Some(v)) if v != u64::from(VERSION) => {
                        Err(unsupported(u32::try_from(v).ok()))
                    }
                    _ => Err(BedsError::new(
                        ErrorCode::InvalidEnvelope,
                        format!(
                            "the envelope does not match v{VERSION}: {}",
                            shape_problem(fields, top.duplicate)
                        ),
                    )),
                }
            }
        }
    }

    /// The conversation and message ids of a body [`Request::decode`] refused, for its
    /// error reply: read from any JSON object whose `id` (and `correlation_id`, if any)
    /// are UUIDs, else nil. Only runs for refused requests.
    pub(crate) fn ids_of(body: &[u8], limits: &LimitsConfig) -> (Uuid, Uuid) {
        // A body over the size bound is not read at all.
        if body.len() as u64 > limits.max_message_bytes {
            return (Uuid::nil(), Uuid::nil());
        }
        #[derive(Deserialize)]
        struct Ids {
            id: Option<Json>,
            correlation_id: Option<Json>,
        }
        let uuid = |j: Option<Json>| j.and_then(|j| j.as_str().and_then(|s| s.parse().ok()));
        match serde_json::from_slice::<Ids>(body) {
            Ok(ids) => {
                let id: Option<Uuid> = uuid(ids.id);
                let correlation = uuid(ids.correlation_id).or(id);
                (correlation.unwrap_or_default(), id.unwrap_or_default())
            }
            Err(_) => (Uuid::nil(), Uuid::nil()),
        }
    }

    /// The conversation id: `correlation_id`, or this request's own id for a root request.
    pub fn conversation(&self) -> Uuid {
        self.correlation_id.unwrap_or(self.id)
    }
}

fn unsupported(v: Option<u32>) -> BedsError {
    let found = v.map_or("no `v` field".to_string(), |v| format!("v{v}"));
    BedsError::new(
        ErrorCode::UnsupportedVersion,
        format!("envelope version {found} is not supported; this server speaks v{VERSION}"),
    )
}

/// Bad JSON, placed by line and column only: the parser's own words are its internals.
fn malformed(e: &serde_json::Error) -> BedsError {
    let what = if e.is_eof() {
        "it ends before the JSON does"
    } else {
        "a syntax error"
    };
    BedsError::new(
        ErrorCode::MalformedJson,
        format!(
            "the body is not valid JSON: {what} at line {}, column {}",
            e.line(),
            e.column()
        ),
    )
}

/// What a field of the envelope must hold, in the contract's words.
#[derive(Clone, Copy)]
enum Shape {
    Count,
    Uuid,
    Text,
    Integer,
    Timestamp,
    Origin,
    Consistency,
    Tier,
    /// Payload fields, checked with their own messages once the envelope is read.
    Any,
}

impl Shape {
    fn of(field: &str) -> Shape {
        match field {
            "v" | "depth" => Shape::Count,
            "id" | "correlation_id" | "causation_id" => Shape::Uuid,
            "domain" | "template" | "op" | "idempotency_key" | "lock_token" | "query" => {
                Shape::Text
            }
            "expect_version" | "min_version" => Shape::Integer,
            "deadline" => Shape::Timestamp,
            "origin" => Shape::Origin,
            "consistency" => Shape::Consistency,
            "tier" => Shape::Tier,
            _ => Shape::Any,
        }
    }

    fn holds(self, value: &Json) -> bool {
        match self {
            Shape::Count => value.as_u64().is_some_and(|n| u32::try_from(n).is_ok()),
            Shape::Uuid => value.as_str().is_some_and(|s| s.parse::<Uuid>().is_ok()),
            Shape::Text => value.is_string(),
            Shape::Integer => value.is_i64(),
            Shape::Timestamp => value
                .as_str()
                .is_some_and(|s| s.parse::<chrono::DateTime<chrono::Utc>>().is_ok()),
            Shape::Origin => value.as_object().is_some_and(|o| {
                o.len() == 3
                    && ["service", "node", "env"]
                        .iter()
                        .all(|k| o.get(*k).is_some_and(Json::is_string))
            }),
            Shape::Consistency => matches!(value.as_str(), Some("strong" | "cached")),
            Shape::Tier => matches!(value.as_str(), Some("hot" | "warehouse")),
            Shape::Any => true,
        }
    }

    fn words(self) -> &'static str {
        match self {
            Shape::Count => "a non-negative integer",
            Shape::Uuid => "a UUID string",
            Shape::Text => "a string",
            Shape::Integer => "an integer",
            Shape::Timestamp => "an RFC 3339 timestamp string",
            Shape::Origin => "an object with service, node and env, each a string",
            Shape::Consistency => "`strong` or `cached`",
            Shape::Tier => "`hot` or `warehouse`",
            Shape::Any => "any JSON value",
        }
    }
}

/// The fields every request has.
const REQUIRED: [&str; 4] = ["v", "id", "domain", "op"];

/// Why an envelope whose JSON is valid does not match v1: the first problem found, in the
/// order of [`FIELDS`], so the same body always gets the same message.
fn shape_problem(fields: &Map<String, Json>, duplicate: Option<Path>) -> String {
    if let Some(field) = fields.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return format!(
            "unknown field `{}`{}; the fields each operation takes are listed in the envelope \
             contract",
            clip(field),
            did_you_mean(field, FIELDS)
        );
    }
    for field in FIELDS {
        let shape = Shape::of(field);
        match fields.get(*field) {
            None if REQUIRED.contains(field) => {
                return format!(
                    "field `{field}` is missing; every request has {}",
                    REQUIRED.join(", ")
                );
            }
            // Absent or null optional fields take their defaults, except these two whose
            // default is not null.
            None => {}
            Some(Json::Null)
                if !REQUIRED.contains(field) && !["depth", "template"].contains(field) => {}
            Some(value) if shape.holds(value) => {}
            Some(_) => return format!("field `{field}` must be {}", shape.words()),
        }
    }
    match duplicate.map(|p| p.0) {
        Some(path) if path.len() == 1 => format!(
            "field `{}` appears more than once; send each field once",
            Path(path).at("").trim_start_matches('.')
        ),
        _ => "the envelope contract lists its fields and their types".to_string(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Ok,
    Error,
}

/// A reply, published to the request's `reply_to` with its AMQP `correlation_id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    pub v: u32,
    pub id: Uuid,
    pub correlation_id: Uuid,
    /// The request this replies to.
    pub causation_id: Uuid,
    /// The request's depth + 1.
    #[serde(default)]
    pub depth: u32,
    /// The node that answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<Origin>,
    pub status: Status,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Json>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<BedsError>,
    /// Set by a segundo node on a reply to a `"tier": "warehouse"` request that found the
    /// record: where it was read, `warehouse` or `cold`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<Tier>,
}

impl Reply {
    /// A reply in the conversation `correlation_id`, answering message `causation_id`
    /// (both nil when the request could not be decoded).
    pub fn to(correlation_id: Uuid, causation_id: Uuid, result: Result<Json, BedsError>) -> Reply {
        let (status, data, error) = match result {
            Ok(data) => (Status::Ok, Some(data), None),
            Err(e) => (Status::Error, None, Some(e)),
        };
        Reply {
            v: VERSION,
            id: Uuid::now_v7(),
            correlation_id,
            causation_id,
            depth: 0,
            origin: None,
            status,
            data,
            error,
            tier: None,
        }
    }

    pub fn into_result(self) -> Result<Json, BedsError> {
        match (self.status, self.error) {
            (Status::Error, Some(e)) => Err(e),
            (Status::Error, None) => Err(BedsError::new(
                ErrorCode::Internal,
                "error reply without an error body",
            )),
            (Status::Ok, _) => Ok(self.data.unwrap_or(Json::Null)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_hides_the_token() {
        let mut r = Request::new("d", "t", Op::Fetch);
        r.auth = Some("eyJsecret.token.sig".into());
        let shown = format!("{r:?}");
        assert!(
            shown.contains("<redacted>") && !shown.contains("eyJsecret"),
            "{shown}"
        );
    }

    #[test]
    fn the_field_list_is_the_envelopes() {
        // serde's own message for an unknown field lists every field of `Wire`.
        let e = serde_json::from_str::<Wire>(r#"{"no_such_field": 1}"#)
            .err()
            .unwrap()
            .to_string();
        let listed: Vec<&str> = e
            .split("expected one of ")
            .nth(1)
            .unwrap()
            .split(" at line")
            .next()
            .unwrap()
            .split(", ")
            .map(|f| f.trim_matches('`'))
            .collect();
        assert_eq!(listed, FIELDS);
    }

    #[test]
    fn an_unknown_field_is_named_with_its_likely_meaning() {
        let body = br#"{"v":1,"id":"0193a000-0000-7000-8000-000000000430","domain":"d","op":"list","limt":5}"#;
        let e = Request::decode(body).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidEnvelope);
        assert!(
            e.message
                .contains("unknown field `limt` (did you mean `limit`?)"),
            "{}",
            e.message
        );
    }

    fn message(body: &str) -> String {
        Request::decode(body.as_bytes()).unwrap_err().message
    }

    #[test]
    fn envelope_problems_are_told_in_the_contracts_words() {
        let id = r#""id":"0193a000-0000-7000-8000-000000000001""#;
        let head = format!(r#""v":1,{id},"domain":"d","op":"list""#);
        for (body, says) in [
            (
                format!(r#"{{{head},"depth":-1}}"#),
                "field `depth` must be a non-negative integer",
            ),
            (
                format!(r#"{{{head},"origin":{{"service":"s"}}}}"#),
                "field `origin` must be an object with service, node and env, each a string",
            ),
            (
                format!(r#"{{"v":1,{id},"domain":"d"}}"#),
                "field `op` is missing; every request has v, id, domain, op",
            ),
            (
                format!(r#"{{{head},"op":"fetch"}}"#),
                "field `op` appears more than once; send each field once",
            ),
            (
                format!(r#"{{{head},"deadline":"tomorrow"}}"#),
                "field `deadline` must be an RFC 3339 timestamp string",
            ),
            (
                format!(r#"{{{head},"consistency":"eventual"}}"#),
                "field `consistency` must be `strong` or `cached`",
            ),
            (
                format!(r#"{{{head},"tier":"cold"}}"#),
                "field `tier` must be `hot` or `warehouse`",
            ),
            (
                r#"{"v":1,"id":7,"domain":"d","op":"list"}"#.to_string(),
                "field `id` must be a UUID string",
            ),
            (
                format!(r#"{{{head},"template":null}}"#),
                "field `template` must be a string",
            ),
        ] {
            let got = message(&body);
            assert_eq!(
                got,
                format!("the envelope does not match v1: {says}"),
                "{body}"
            );
        }
        let bad = message(r#"{"v":1,"id":"#);
        assert_eq!(
            bad,
            "the body is not valid JSON: it ends before the JSON does at line 1, column 12"
        );
        assert_eq!(
            message("{nope}"),
            "the body is not valid JSON: a syntax error at line 1, column 2"
        );
    }

    #[test]
    fn parser_words_never_reach_a_reply() {
        let head = r#""v":1,"id":"0193a000-0000-7000-8000-000000000001","domain":"d","op":"list""#;
        for extra in [
            r#""depth":"x""#,
            r#""origin":7"#,
            r#""v":1.5"#,
            r#""expect_version":"1""#,
            r#""min_version":1e400"#,
            r#""lock_token":[1]"#,
        ] {
            let got = message(&format!("{{{head},{extra}}}"));
            for internal in ["expected", "struct ", "invalid type", "u32", "i64"] {
                assert!(!got.contains(internal), "{extra}: {got}");
            }
        }
    }

    #[test]
    fn an_unknown_field_name_is_echoed_clipped() {
        let long = "x".repeat(200_000);
        let body = format!(
            r#"{{"v":1,"id":"0193a000-0000-7000-8000-000000000001","domain":"d","op":"list","{long}":1}}"#
        );
        let e = Request::decode(body.as_bytes()).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidEnvelope);
        assert!(e.message.len() < 300, "{}", e.message);
    }

    #[test]
    fn bounds_are_checked_before_parsing() {
        let limits = LimitsConfig {
            max_message_bytes: 200,
            max_depth: 4,
            max_fields: 8,
        };
        let decode = |body: &str| Request::decode_within(body.as_bytes(), &limits);
        let head = r#""v":1,"id":"0193a000-0000-7000-8000-000000000001","domain":"d","op":"list""#;
        assert!(decode(&format!(r#"{{{head},"after":[[1]]}}"#)).is_ok());
        for body in [
            format!(r#"{{{head},"after":[[[[1]]]]}}"#),
            format!(r#"{{{head},"data":{{"a":1,"b":2,"c":3,"d":4,"e":5}}}}"#),
            format!(r#"{{{head},"query":"{}"}}"#, "q".repeat(200)),
            // Too deep is refused even where the JSON is broken further on.
            "[".repeat(10_000),
        ] {
            assert_eq!(
                decode(&body).unwrap_err().code,
                ErrorCode::TooLarge,
                "{body}"
            );
        }
        // An oversized body's ids are not read.
        let big = format!(r#"{{{head},"query":"{}"}}"#, "q".repeat(200));
        assert_eq!(
            Request::ids_of(big.as_bytes(), &limits),
            (Uuid::nil(), Uuid::nil())
        );
    }

    fn code(body: &str) -> ErrorCode {
        Request::decode(body.as_bytes()).unwrap_err().code
    }

    #[test]
    fn decode_tells_failures_apart() {
        assert_eq!(code("{not json"), ErrorCode::MalformedJson);
        assert_eq!(
            code(r#"{"v":2,"anything":1}"#),
            ErrorCode::UnsupportedVersion
        );
        assert_eq!(code(r#"{"id":"x"}"#), ErrorCode::UnsupportedVersion);
        assert_eq!(
            code(r#"{"v":1,"id":"0192f0e0-0000-7000-8000-000000000000"}"#),
            ErrorCode::InvalidEnvelope
        );
    }

    /// The payload's problems, as (field, detail code).
    fn details(body: &str) -> Vec<(String, DetailCode)> {
        let e = Request::decode(body.as_bytes()).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidInput, "{e}");
        e.details.into_iter().map(|d| (d.field, d.code)).collect()
    }

    const HEAD: &str =
        r#""v":1,"id":"0192f0e0-0000-7000-8000-000000000000","domain":"d","op":"list""#;

    #[test]
    fn as_of_is_a_version_or_an_rfc3339_time() {
        let as_of = |a: &str| {
            Request::decode(format!("{{{HEAD},\"as_of\":{a}}}").as_bytes())
                .unwrap()
                .as_of
        };
        assert_eq!(as_of("3"), Some(AsOf::Version(3)));
        assert_eq!(
            as_of("\"2026-01-31T12:00:00+01:00\""),
            Some(AsOf::Time(
                chrono::DateTime::parse_from_rfc3339("2026-01-31T11:00:00Z")
                    .unwrap()
                    .with_timezone(&chrono::Utc)
            ))
        );
        assert_eq!(as_of("null"), None);
        assert_eq!(
            details(&format!(r#"{{{HEAD},"as_of":"yesterday"}}"#)),
            [("as_of".to_string(), DetailCode::InvalidFormat)]
        );
        for bad in ["1.5", "true", "[1]"] {
            assert_eq!(
                details(&format!("{{{HEAD},\"as_of\":{bad}}}")),
                [("as_of".to_string(), DetailCode::WrongType)],
                "{bad}"
            );
        }
    }

    #[test]
    fn limits_out_of_range_saturate_and_wrong_types_are_input_errors() {
        let limit = |l: &str| {
            Request::decode(format!("{{{HEAD},\"limit\":{l}}}").as_bytes())
                .unwrap()
                .limit
        };
        assert_eq!(limit("5"), Some(5));
        assert_eq!(limit("-1"), Some(0));
        assert_eq!(limit("4294967296"), Some(u32::MAX));
        assert_eq!(limit("null"), None);
        for bad in [r#""5""#, "1.5", "true"] {
            assert_eq!(
                details(&format!("{{{HEAD},\"limit\":{bad}}}")),
                [("limit".to_string(), DetailCode::WrongType)]
            );
        }
        assert_eq!(
            details(&format!(r#"{{{HEAD},"cursor":"abc","key":[1]}}"#)),
            [
                ("key".to_string(), DetailCode::WrongType),
                ("cursor".to_string(), DetailCode::WrongType)
            ]
        );
    }

    #[test]
    fn repeated_keys_are_refused_at_any_depth() {
        assert_eq!(
            details(&format!(
                r#"{{{HEAD},"data":{{"a":1,"b":{{"c":[{{"d":1,"d":2}}]}},"a":2}}}}"#
            )),
            [("data.b.c[0].d".to_string(), DetailCode::Duplicate)]
        );
        assert_eq!(
            details(&format!(
                r#"{{{HEAD},"params":{{"b":{{"c":[0,{{"d":1,"d":2}}]}}}}}}"#
            )),
            [("params.b.c[1].d".to_string(), DetailCode::Duplicate)]
        );
        assert_eq!(
            details(&format!(r#"{{{HEAD},"key":{{"id":1,"id":1}}}}"#)),
            [("key.id".to_string(), DetailCode::Duplicate)]
        );
        assert_eq!(
            code(&format!(r#"{{{HEAD},"domain":"e"}}"#)),
            ErrorCode::InvalidEnvelope
        );
    }

    #[test]
    fn refused_requests_keep_their_ids_when_readable() {
        let id = "0192f0e0-0000-7000-8000-000000000001";
        let corr = "0192f0e0-0000-7000-8000-000000000002";
        let ids = |body: String| Request::ids_of(body.as_bytes(), &LimitsConfig::default());
        let (c, i) = ids(format!(
            r#"{{"id":"{id}","correlation_id":"{corr}","limit":-1}}"#
        ));
        assert_eq!((c.to_string(), i.to_string()), (corr.into(), id.into()));
        let (c, i) = ids(format!(r#"{{"id":"{id}","v":"x"}}"#));
        assert_eq!((c.to_string(), i.to_string()), (id.into(), id.into()));
        assert_eq!(ids("{not json".into()), (Uuid::nil(), Uuid::nil()));
        assert_eq!(ids(r#"{"id":7}"#.into()), (Uuid::nil(), Uuid::nil()));
    }

    #[test]
    fn requests_round_trip() {
        let mut r = Request::new("d", "t", Op::Fetch);
        r.key = Some(Map::from_iter([("id".to_string(), Json::from("k"))]));
        let back = Request::decode(&serde_json::to_vec(&r).unwrap()).unwrap();
        assert_eq!(back, r);
    }
}
