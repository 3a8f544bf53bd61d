//! Field values between JSON and storage, and input validation against the declaration.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value as Json};
use uuid::Uuid;

use crate::error::{BedsError, DetailCode, ErrorDetail};
use crate::meta::{FieldKind, FieldMeta, SetOn, TemplateMeta};

/// A timestamp as records carry it: UTC, microsecond precision.
pub type Timestamp = DateTime<Utc>;

/// One typed field value, independent of any database.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Text(String),
    Uuid(Uuid),
    Timestamp(Timestamp),
}

/// The one text form of a timestamp, used in JSON and in text-typed storage; fixed width
/// so that text order is time order.
pub fn format_timestamp(t: &Timestamp) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Now, truncated to what storage keeps, so a record reads back exactly as written.
pub fn now() -> Timestamp {
    let t = Utc::now();
    t - chrono::Duration::nanoseconds(i64::from(t.timestamp_subsec_nanos() % 1000))
}

/// Validates a create request's `data`: every input field, all problems at once.
/// Returns one value per declared field, server-set fields filled in.
pub fn create_values(
    meta: &TemplateMeta,
    data: &Map<String, Json>,
) -> Result<Vec<Value>, BedsError> {
    let mut details = unknown_fields(meta, data);
    let now = now();
    let mut values = Vec::with_capacity(meta.fields.len());
    for f in meta.fields {
        let v = match (f.set, data.get(f.name)) {
            (Some(_), None) => Value::Timestamp(now),
            (Some(_), Some(_)) => {
                details.push(read_only(f));
                Value::Null
            }
            (None, None | Some(Json::Null)) if f.optional => Value::Null,
            (None, None) => {
                details.push(detail(f, DetailCode::Missing, "is required".into()));
                Value::Null
            }
            (None, Some(j)) => field_value(f, j).unwrap_or_else(|d| {
                details.push(d);
                Value::Null
            }),
        };
        values.push(v);
    }
    if details.is_empty() {
        Ok(values)
    } else {
        Err(BedsError::invalid(details))
    }
}

/// Validates an update request's `data`: the fields to change, with `on_update`
/// timestamps added.
pub fn patch_values(
    meta: &TemplateMeta,
    data: &Map<String, Json>,
) -> Result<Vec<(&'static FieldMeta, Value)>, BedsError> {
    let mut details = unknown_fields(meta, data);
    let mut changes = Vec::with_capacity(data.len() + 1);
    for f in meta.fields {
        match (f.set, data.get(f.name)) {
            (Some(SetOn::Update), None) => changes.push((f, Value::Timestamp(now()))),
            (_, None) => {}
            (Some(_), Some(_)) => details.push(read_only(f)),
            (None, Some(Json::Null)) if f.optional => changes.push((f, Value::Null)),
            (None, Some(j)) => match field_value(f, j) {
                Ok(v) => changes.push((f, v)),
                Err(d) => details.push(d),
            },
        }
    }
    if details.is_empty() && !changes.iter().any(|(f, _)| f.is_input()) {
        details.push(ErrorDetail {
            field: "data".into(),
            code: DetailCode::Empty,
            message: "an update must change at least one field".into(),
        });
    }
    if details.is_empty() {
        Ok(changes)
    } else {
        Err(BedsError::invalid(details))
    }
}

fn unknown_fields(meta: &TemplateMeta, data: &Map<String, Json>) -> Vec<ErrorDetail> {
    data.keys()
        .filter(|k| meta.field(k).is_none())
        .map(|k| ErrorDetail {
            field: format!("data.{k}"),
            code: DetailCode::Unknown,
            message: format!("`{}` has no field `{k}`", meta.name),
        })
        .collect()
}

fn read_only(f: &FieldMeta) -> ErrorDetail {
    detail(
        f,
        DetailCode::ReadOnly,
        "is set by the server and cannot be written".into(),
    )
}

fn detail(f: &FieldMeta, code: DetailCode, message: String) -> ErrorDetail {
    ErrorDetail {
        field: format!("data.{}", f.name),
        code,
        message: format!("{} {message}", f.name),
    }
}

/// Converts and checks one caller-supplied JSON value against its declared field.
fn field_value(f: &FieldMeta, j: &Json) -> Result<Value, ErrorDetail> {
    let wrong = || {
        let found = match j {
            Json::Null => {
                return detail(f, DetailCode::NotNullable, "cannot be null".into());
            }
            Json::Bool(_) => "a bool",
            Json::Number(_) => "a number",
            Json::String(_) => "a string",
            Json::Array(_) => "a list",
            Json::Object(_) => "an object",
        };
        detail(
            f,
            DetailCode::WrongType,
            format!("must be {}, found {found}", f.kind.expected()),
        )
    };
    match f.kind {
        FieldKind::String { min, max } => {
            let s = j.as_str().ok_or_else(wrong)?;
            let len = s.chars().count();
            if len > max as usize {
                return Err(detail(
                    f,
                    DetailCode::TooLong,
                    format!("must be at most {max} characters, found {len}"),
                ));
            }
            if len < min as usize {
                return Err(detail(
                    f,
                    DetailCode::TooShort,
                    format!("must be at least {min} characters, found {len}"),
                ));
            }
            Ok(Value::Text(s.to_string()))
        }
        FieldKind::Integer { min, max } => {
            let i = j.as_i64().ok_or_else(wrong)?;
            if let Some(min) = min.filter(|m| i < *m) {
                return Err(detail(
                    f,
                    DetailCode::BelowMin,
                    format!("must be at least {min}"),
                ));
            }
            if let Some(max) = max.filter(|m| i > *m) {
                return Err(detail(
                    f,
                    DetailCode::AboveMax,
                    format!("must be at most {max}"),
                ));
            }
            Ok(Value::Int(i))
        }
        FieldKind::Bool => j.as_bool().map(Value::Bool).ok_or_else(wrong),
        FieldKind::Timestamp => {
            let s = j.as_str().ok_or_else(wrong)?;
            DateTime::parse_from_rfc3339(s)
                .map(|t| Value::Timestamp(t.with_timezone(&Utc)))
                .map_err(|e| {
                    detail(
                        f,
                        DetailCode::InvalidFormat,
                        format!("is not an RFC 3339 timestamp: {e}"),
                    )
                })
        }
        FieldKind::Uuid | FieldKind::Ref { .. } => {
            let s = j.as_str().ok_or_else(wrong)?;
            parse_uuid(s).map(Value::Uuid).ok_or_else(|| {
                detail(
                    f,
                    DetailCode::InvalidFormat,
                    format!("is not a UUID: `{s}`"),
                )
            })
        }
    }
}

/// Reads the record key of a fetch, update or delete: `{"id": "<uuid>"}`.
pub fn key_id(key: Option<&Map<String, Json>>) -> Result<Uuid, BedsError> {
    let Some(key) = key else {
        return Err(BedsError::detail(
            "key",
            DetailCode::Missing,
            "this operation needs `key`, e.g. {\"id\": \"<uuid>\"}",
        ));
    };
    if let Some(other) = key.keys().find(|k| *k != "id") {
        return Err(BedsError::detail(
            format!("key.{other}"),
            DetailCode::Unknown,
            format!("records are keyed by `id`; `{other}` is not a key"),
        ));
    }
    match key.get("id") {
        None => Err(BedsError::detail(
            "key.id",
            DetailCode::Missing,
            "key.id is required",
        )),
        Some(Json::String(s)) => parse_uuid(s).ok_or_else(|| {
            BedsError::detail(
                "key.id",
                DetailCode::InvalidFormat,
                format!("key.id is not a UUID: `{s}`"),
            )
        }),
        Some(_) => Err(BedsError::detail(
            "key.id",
            DetailCode::WrongType,
            "key.id must be a UUID string",
        )),
    }
}

fn parse_uuid(s: &str) -> Option<Uuid> {
    // Only the hyphenated form, so one record has one spelling of its key.
    (s.len() == 36).then(|| Uuid::parse_str(s).ok()).flatten()
}
