//! Envelope v1: the JSON request and reply every BEDS message carries.
//!
//! The wiki page `wiki/envelope.md` documents this contract for clients in any language.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json};
use uuid::Uuid;

use crate::error::{BedsError, ErrorCode};

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
}

impl Op {
    pub const ALL: [Op; 6] = [
        Op::Create,
        Op::Fetch,
        Op::Update,
        Op::Delete,
        Op::List,
        Op::Query,
    ];
    /// The operations of a template (`query` belongs to the domain).
    pub const TEMPLATE: [Op; 5] = [Op::Create, Op::Fetch, Op::Update, Op::Delete, Op::List];

    pub fn as_str(self) -> &'static str {
        match self {
            Op::Create => "create",
            Op::Fetch => "fetch",
            Op::Update => "update",
            Op::Delete => "delete",
            Op::List => "list",
            Op::Query => "query",
        }
    }

    pub fn parse(s: &str) -> Option<Op> {
        Op::ALL.into_iter().find(|op| op.as_str() == s)
    }

    /// Writes go to `rec.write` and the wBroker pool; reads to `rec.read`.
    pub fn is_write(self) -> bool {
        matches!(self, Op::Create | Op::Update | Op::Delete)
    }
}

/// A request. Only `v`, `id`, `domain`, `template` and `op` are always required.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    pub v: u32,
    /// This message's id (UUIDv7).
    pub id: Uuid,
    /// The root conversation this request belongs to; defaults to `id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<Uuid>,
    /// The message that caused this one, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<Uuid>,
    /// How many messages deep in its conversation this one is.
    #[serde(default)]
    pub depth: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<Origin>,
    pub domain: String,
    /// The template, for every operation but `query`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub template: String,
    /// Kept as text so an unknown operation gets its own error code.
    pub op: String,
    /// The record's key, e.g. `{"id": "…"}`, for fetch, update and delete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<Map<String, Json>>,
    /// When the caller stops waiting; an expired request is answered, not executed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<chrono::DateTime<chrono::Utc>>,
    /// Replays of a write with the same key return the first reply and change nothing;
    /// defaults to the request `id`, so redeliveries and resends of one message are safe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// For update and delete: apply only if the record is at this version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_version: Option<i64>,
    /// Field values for create and update.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Map<String, Json>>,
    /// Page size for list (the template's default when absent, capped at its max).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// Keyset cursor for list: the `next` value of the previous page (an id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<Json>,
    /// The named query, for `query`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// The query's parameters by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<Map<String, Json>>,
    /// Keyset cursor for query: the `next` value of the previous page, passed back as is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<Vec<Json>>,
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
            data: None,
            limit: None,
            after: None,
            query: None,
            params: None,
            cursor: None,
        }
    }

    /// Decodes a message body, telling bad JSON, a wrong version and a bad envelope apart.
    pub fn decode(body: &[u8]) -> Result<Request, BedsError> {
        match serde_json::from_slice::<Request>(body) {
            Ok(req) if req.v == VERSION => Ok(req),
            Ok(req) => Err(unsupported(Some(req.v))),
            Err(e) if e.is_syntax() || e.is_eof() => Err(BedsError::new(
                ErrorCode::MalformedJson,
                format!("the body is not valid JSON: {e}"),
            )),
            Err(e) => {
                // Check the version before the shape: a v2 envelope may differ entirely.
                let v = serde_json::from_slice::<Json>(body)
                    .ok()
                    .and_then(|j| j.get("v").map(|v| v.as_u64()));
                match v {
                    Some(Some(v)) if v != u64::from(VERSION) => {
                        Err(unsupported(u32::try_from(v).ok()))
                    }
                    None => Err(unsupported(None)),
                    _ => Err(BedsError::new(
                        ErrorCode::InvalidEnvelope,
                        format!("the envelope does not match v{VERSION}: {e}"),
                    )),
                }
            }
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
    pub status: Status,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Json>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<BedsError>,
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
            status,
            data,
            error,
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

    #[test]
    fn requests_round_trip() {
        let mut r = Request::new("d", "t", Op::Fetch);
        r.key = Some(Map::from_iter([("id".to_string(), Json::from("k"))]));
        let back = Request::decode(&serde_json::to_vec(&r).unwrap()).unwrap();
        assert_eq!(back, r);
    }
}
