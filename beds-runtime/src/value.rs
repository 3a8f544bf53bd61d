//! Field values between JSON and storage, and input validation against the declaration.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value as Json};
use uuid::Uuid;

use crate::echo::{self, clip};
use crate::error::{BedsError, DetailCode, ErrorDetail};
use std::collections::{HashMap, HashSet};

use crate::meta::{
    DefaultValue, DomainMeta, FieldKind, FieldMeta, IdKind, ParamKind, QueryMeta, SetOn,
    TemplateMeta, TokenSetMeta,
};

/// A timestamp as records carry it: UTC, microsecond precision.
pub type Timestamp = DateTime<Utc>;

/// A calendar date.
pub type Date = chrono::NaiveDate;

/// One typed field value, independent of any database.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
    Uuid(Uuid),
    Timestamp(Timestamp),
    Date(Date),
    Json(Json),
    /// The values of a list parameter (`in`).
    List(Vec<Value>),
}

/// A declared pattern the regex engine refuses (the declaration compiler checks patterns,
/// so only hand-written metadata can get here).
#[derive(Debug, thiserror::Error)]
#[error("{at}: invalid pattern: {source}")]
pub struct PatternError {
    pub at: String,
    pub source: regex::Error,
}

/// The `pattern`s of every string field, compiled once at start-up.
#[derive(Debug, Default)]
pub struct Patterns(HashMap<&'static str, regex::Regex>);

impl Patterns {
    pub fn compile(domains: &[&'static DomainMeta]) -> Result<Patterns, PatternError> {
        let mut map = HashMap::new();
        for (_, t) in crate::meta::templates(domains) {
            for f in t.fields {
                if let FieldKind::String {
                    pattern: Some(p), ..
                } = f.kind
                {
                    let re = regex::Regex::new(p).map_err(|source| PatternError {
                        at: format!("{}.{}", t.name, f.name),
                        source,
                    })?;
                    map.insert(p, re);
                }
            }
            for set in t.tokens {
                let re = regex::Regex::new(set.pattern).map_err(|source| PatternError {
                    at: format!("{}.tokens.{}", t.name, set.name),
                    source,
                })?;
                map.insert(set.pattern, re);
            }
        }
        Ok(Patterns(map))
    }

    fn is_match(&self, pattern: &str, s: &str) -> bool {
        self.0.get(pattern).is_some_and(|re| re.is_match(s))
    }

    /// The distinct tokens of `text`, in order of first appearance: each match's first
    /// capture group (or the whole match), lowercased if declared, at most `max_len`
    /// characters. One pass over the text (the regex engine is linear, duplicates are found
    /// by hash), and the scan stops as soon as more than [`MAX_TOKENS`] distinct tokens
    /// were seen: the text arrives over the wire, so its cost is bounded by the cap.
    pub fn tokens(&self, set: &TokenSetMeta, text: &str) -> Result<Vec<String>, TooManyTokens> {
        let Some(re) = self.0.get(set.pattern) else {
            return Ok(Vec::new());
        };
        let mut seen: HashSet<String> = HashSet::new();
        let mut out: Vec<String> = Vec::new();
        for caps in re.captures_iter(text) {
            let Some(m) = caps.get(1).or_else(|| caps.get(0)) else {
                continue;
            };
            let token = if set.lowercase {
                m.as_str().to_lowercase()
            } else {
                m.as_str().to_string()
            };
            let len = token.chars().count();
            if len == 0 || len > set.max_len as usize || seen.contains(&token) {
                continue;
            }
            if out.len() == MAX_TOKENS {
                return Err(TooManyTokens);
            }
            seen.insert(token.clone());
            out.push(token);
        }
        Ok(out)
    }
}

/// More tokens than this in one field is refused rather than indexed in part.
pub const MAX_TOKENS: usize = 256;

/// A value holds more than [`MAX_TOKENS`] distinct tokens of one set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooManyTokens;

/// The tokens of every set whose source field is among `written` (field, value), by set
/// index, for [`crate::store::WriteOp`].
pub fn derive_tokens<'a>(
    t: &TemplateMeta,
    written: impl Iterator<Item = (&'a FieldMeta, &'a Value)> + Clone,
    patterns: &Patterns,
) -> Result<Vec<(usize, Vec<String>)>, BedsError> {
    let mut out = Vec::new();
    for (i, set) in t.tokens.iter().enumerate() {
        let Some((_, v)) = written.clone().find(|(f, _)| f.name == set.source) else {
            continue;
        };
        let tokens = match v {
            Value::Text(text) => patterns.tokens(set, text).map_err(|TooManyTokens| {
                BedsError::detail(
                    format!("data.{}", set.source),
                    DetailCode::AboveMax,
                    format!(
                        "{} has more than {MAX_TOKENS} distinct {}; at most {MAX_TOKENS} are indexed",
                        set.source, set.name
                    ),
                )
            })?,
            _ => Vec::new(),
        };
        out.push((i, tokens));
    }
    Ok(out)
}

/// The declared cross-field rules a new record's values must meet.
pub fn check_rules(t: &TemplateMeta, values: &[Value]) -> Result<(), BedsError> {
    let value = |name: &str| {
        t.fields
            .iter()
            .position(|f| f.name == name)
            .map(|i| &values[i])
    };
    for c in t.checks {
        let (a, b) = (value(c.differ[0]), value(c.differ[1]));
        if a.is_some() && a == b && a != Some(&Value::Null) {
            return Err(BedsError::detail(
                format!("data.{}", c.differ[1]),
                DetailCode::Other,
                c.message,
            ));
        }
    }
    Ok(())
}

/// A page cursor as values of the query's sort keys (as the previous page returned them).
pub fn cursor_values(
    q: &QueryMeta,
    cursor: &[Json],
    patterns: &Patterns,
) -> Result<Vec<Value>, BedsError> {
    let bad = || {
        BedsError::detail(
            "cursor",
            DetailCode::InvalidFormat,
            "cursor must be the `next` value of a previous page of this query, unchanged",
        )
    };
    let keys = q.keys();
    if cursor.len() != keys.len() {
        return Err(bad());
    }
    keys.iter()
        .zip(cursor)
        .map(|((k, _), j)| match q.from.field(k) {
            Some(f) => field_value(f, j, patterns, "cursor", k).map_err(|_| bad()),
            None => id_value(q.from.id, j).map_err(|_| bad()),
        })
        .collect()
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
    patterns: &Patterns,
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
            (None, None) if f.default.is_some() => default_value(f.default),
            (None, None | Some(Json::Null)) if f.optional => Value::Null,
            (None, None) => {
                details.push(detail(
                    "data",
                    f.name,
                    DetailCode::Missing,
                    "is required".into(),
                ));
                Value::Null
            }
            (None, Some(j)) => field_value(f, j, patterns, "data", f.name).unwrap_or_else(|d| {
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

/// A record of a bulk import (wiki/migration.md), validated like a `create`: `id` and
/// `version` are kept when the line carries them, and so are the values of server-set
/// fields (`set:`), so an imported record reads back as it was exported.
#[derive(Debug)]
pub struct Imported {
    /// `None`: a new id (uuid7 templates) or the database's (sequence templates).
    pub id: Option<Uuid>,
    pub version: i64,
    pub values: Vec<Value>,
}

/// Validates one imported record: every problem of the line at once.
pub fn import_values(
    meta: &TemplateMeta,
    record: &Map<String, Json>,
    patterns: &Patterns,
) -> Result<Imported, BedsError> {
    let mut rest = record.clone();
    let mut details = Vec::new();
    let id = match (rest.remove("id"), meta.id) {
        (None | Some(Json::Null), _) => None,
        (Some(j), IdKind::Uuid7) => match id_value(IdKind::Uuid7, &j) {
            Ok(Value::Uuid(u)) => Some(u),
            Ok(_) => None,
            Err(m) => {
                details.push(detail("data", "id", DetailCode::WrongType, m));
                None
            }
        },
        (Some(_), IdKind::Sequence) => {
            details.push(detail(
                "data",
                "id",
                DetailCode::Unknown,
                "ids of this template are assigned by the database (id: sequence); import the \
                 line without `id`"
                    .into(),
            ));
            None
        }
    };
    let version = match rest.remove("version") {
        None | Some(Json::Null) => 1,
        Some(j) => match j.as_i64().filter(|v| *v >= 1) {
            Some(v) => v,
            None => {
                details.push(detail(
                    "data",
                    "version",
                    DetailCode::WrongType,
                    format!("must be a positive integer, found {}", echo::json(&j)),
                ));
                1
            }
        },
    };
    let mut kept = Vec::new();
    for (i, f) in meta.fields.iter().enumerate() {
        if f.set.is_none() {
            continue;
        }
        if let Some(j) = rest.remove(f.name) {
            match field_value(f, &j, patterns, "data", f.name) {
                Ok(v) => kept.push((i, v)),
                Err(d) => details.push(d),
            }
        }
    }
    let values = match create_values(meta, &rest, patterns) {
        Ok(mut values) => {
            for (i, v) in kept {
                values[i] = v;
            }
            Some(values)
        }
        Err(e) => {
            details.extend(e.details);
            None
        }
    };
    match values {
        Some(values) if details.is_empty() => Ok(Imported {
            id,
            version,
            values,
        }),
        _ => Err(BedsError::invalid(details)),
    }
}

/// Validates an update request's `data`: the fields to change, with `on_update`
/// timestamps added.
pub fn patch_values(
    meta: &TemplateMeta,
    data: &Map<String, Json>,
    patterns: &Patterns,
) -> Result<Vec<(&'static FieldMeta, Value)>, BedsError> {
    let mut details = unknown_fields(meta, data);
    let mut changes = Vec::with_capacity(data.len() + 1);
    for f in meta.fields {
        match (f.set, data.get(f.name)) {
            (Some(SetOn::Update), None) => changes.push((f, Value::Timestamp(now()))),
            (_, None) => {}
            (Some(_), Some(_)) => details.push(read_only(f)),
            (None, Some(Json::Null)) if f.optional => changes.push((f, Value::Null)),
            (None, Some(j)) => match field_value(f, j, patterns, "data", f.name) {
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
            field: format!("data.{}", clip(k)),
            code: DetailCode::Unknown,
            message: format!("`{}` has no field `{}`", meta.name, clip(k)),
        })
        .collect()
}

fn read_only(f: &FieldMeta) -> ErrorDetail {
    detail(
        "data",
        f.name,
        DetailCode::ReadOnly,
        "is set by the server and cannot be written".into(),
    )
}

fn detail(at: &str, name: &str, code: DetailCode, message: String) -> ErrorDetail {
    ErrorDetail {
        field: format!("{at}.{name}"),
        code,
        message: format!("{name} {message}"),
    }
}

fn default_value(d: Option<DefaultValue>) -> Value {
    match d {
        Some(DefaultValue::Bool(b)) => Value::Bool(b),
        Some(DefaultValue::Int(i)) => Value::Int(i),
        Some(DefaultValue::Float(x)) => Value::Float(x),
        Some(DefaultValue::Text(t)) => Value::Text(t.to_string()),
        None => Value::Null,
    }
}

/// Converts and checks one caller-supplied JSON value against its declared field.
/// `at` and `name` place it in error details (`data.handle`, `params.author`).
pub(crate) fn field_value(
    f: &FieldMeta,
    j: &Json,
    patterns: &Patterns,
    at: &str,
    name: &str,
) -> Result<Value, ErrorDetail> {
    let wrong = || {
        let found = match j {
            Json::Null => {
                return detail(at, name, DetailCode::NotNullable, "cannot be null".into());
            }
            Json::Bool(_) => "a bool",
            Json::Number(_) => "a number",
            Json::String(_) => "a string",
            Json::Array(_) => "a list",
            Json::Object(_) => "an object",
        };
        detail(
            at,
            name,
            DetailCode::WrongType,
            format!("must be {}, found {found}", f.kind.expected()),
        )
    };
    let length = |s: &str, min: u32, max: Option<u32>| {
        let len = s.chars().count();
        if let Some(max) = max.filter(|m| len > *m as usize) {
            return Err(detail(
                at,
                name,
                DetailCode::TooLong,
                format!("must be at most {max} characters, found {len}"),
            ));
        }
        if len < min as usize {
            return Err(detail(
                at,
                name,
                DetailCode::TooShort,
                format!("must be at least {min} characters, found {len}"),
            ));
        }
        Ok(())
    };
    match f.kind {
        FieldKind::String { min, max, pattern } => {
            let s = j.as_str().ok_or_else(wrong)?;
            length(s, min, Some(max))?;
            if let Some(p) = pattern
                && !patterns.is_match(p, s)
            {
                return Err(detail(
                    at,
                    name,
                    DetailCode::InvalidFormat,
                    format!("must match `{p}`"),
                ));
            }
            Ok(Value::Text(s.to_string()))
        }
        FieldKind::Text { max } => {
            let s = j.as_str().ok_or_else(wrong)?;
            length(s, 0, max)?;
            Ok(Value::Text(s.to_string()))
        }
        FieldKind::Integer { min, max } | FieldKind::BigInt { min, max } => {
            let i = j.as_i64().ok_or_else(wrong)?;
            if i < min {
                return Err(detail(
                    at,
                    name,
                    DetailCode::BelowMin,
                    format!("must be at least {min}"),
                ));
            }
            if i > max {
                return Err(detail(
                    at,
                    name,
                    DetailCode::AboveMax,
                    format!("must be at most {max}"),
                ));
            }
            Ok(Value::Int(i))
        }
        FieldKind::Float { min, max } => {
            let x = j.as_f64().ok_or_else(wrong)?;
            if let Some(min) = min.filter(|m| x < *m) {
                return Err(detail(
                    at,
                    name,
                    DetailCode::BelowMin,
                    format!("must be at least {min}"),
                ));
            }
            if let Some(max) = max.filter(|m| x > *m) {
                return Err(detail(
                    at,
                    name,
                    DetailCode::AboveMax,
                    format!("must be at most {max}"),
                ));
            }
            Ok(Value::Float(x))
        }
        FieldKind::Bool => j.as_bool().map(Value::Bool).ok_or_else(wrong),
        FieldKind::Timestamp => {
            let s = j.as_str().ok_or_else(wrong)?;
            DateTime::parse_from_rfc3339(s)
                .map(|t| Value::Timestamp(t.with_timezone(&Utc)))
                .map_err(|_| {
                    detail(
                        at,
                        name,
                        DetailCode::InvalidFormat,
                        "is not an RFC 3339 timestamp such as 2026-01-31T12:00:00Z".into(),
                    )
                })
        }
        FieldKind::Date => {
            let s = j.as_str().ok_or_else(wrong)?;
            Date::parse_from_str(s, "%Y-%m-%d")
                .map(Value::Date)
                .map_err(|_| {
                    detail(
                        at,
                        name,
                        DetailCode::InvalidFormat,
                        "is not a YYYY-MM-DD date such as 2026-01-31".into(),
                    )
                })
        }
        FieldKind::Enum { values } => {
            let s = j.as_str().ok_or_else(wrong)?;
            if values.contains(&s) {
                Ok(Value::Text(s.to_string()))
            } else {
                Err(detail(
                    at,
                    name,
                    DetailCode::InvalidFormat,
                    format!("must be one of {}, found `{}`", values.join(", "), clip(s)),
                ))
            }
        }
        FieldKind::Json => match j {
            Json::Null => Err(wrong()),
            j => Ok(Value::Json(j.clone())),
        },
        FieldKind::Ref {
            id: IdKind::Sequence,
            ..
        } => id_value(IdKind::Sequence, j)
            .map_err(|m| detail(at, name, DetailCode::InvalidFormat, m)),
        FieldKind::Uuid | FieldKind::Ref { .. } => {
            let s = j.as_str().ok_or_else(wrong)?;
            parse_uuid(s).map(Value::Uuid).ok_or_else(|| {
                detail(
                    at,
                    name,
                    DetailCode::InvalidFormat,
                    format!("is not a UUID: `{}`", clip(s)),
                )
            })
        }
    }
}

/// A parameter takes its field's type but not the record's constraints: a prefix may be
/// shorter than `min`, a range bound may lie outside the stored values.
fn as_param(f: &FieldMeta) -> FieldMeta {
    let kind = match f.kind {
        FieldKind::String { max, .. } => FieldKind::String {
            min: 0,
            max,
            pattern: None,
        },
        FieldKind::Integer { .. } => FieldKind::Integer {
            min: i64::from(i32::MIN),
            max: i64::from(i32::MAX),
        },
        FieldKind::BigInt { .. } => FieldKind::BigInt {
            min: i64::MIN,
            max: i64::MAX,
        },
        FieldKind::Float { .. } => FieldKind::Float {
            min: None,
            max: None,
        },
        other => other,
    };
    FieldMeta { kind, ..*f }
}

/// Validates a query's parameters; one value per declared parameter, in order.
pub fn query_params(
    q: &QueryMeta,
    params: Option<&Map<String, Json>>,
    patterns: &Patterns,
) -> Result<Vec<Value>, BedsError> {
    let empty = Map::new();
    let params = params.unwrap_or(&empty);
    let mut details: Vec<ErrorDetail> = params
        .keys()
        .filter(|k| !q.params.iter().any(|p| p.name == k.as_str()))
        .map(|k| ErrorDetail {
            field: format!("params.{}", clip(k)),
            code: DetailCode::Unknown,
            message: format!("query `{}` has no parameter `{}`", q.name, clip(k)),
        })
        .collect();
    let mut values = Vec::with_capacity(q.params.len());
    for p in q.params {
        let one = |j: &Json| match p.kind {
            ParamKind::Field(f) => field_value(&as_param(f), j, patterns, "params", p.name),
            ParamKind::Id(t) => id_value(t.id, j)
                .map_err(|m| detail("params", p.name, DetailCode::InvalidFormat, m)),
            ParamKind::Token(set) => match j {
                Json::String(s) if set.lowercase => Ok(Value::Text(s.to_lowercase())),
                Json::String(s) => Ok(Value::Text(s.clone())),
                _ => Err(detail(
                    "params",
                    p.name,
                    DetailCode::WrongType,
                    "must be a string".into(),
                )),
            },
        };
        let v = match params.get(p.name) {
            None | Some(Json::Null) if p.optional => Ok(Value::Null),
            None => Err(detail(
                "params",
                p.name,
                DetailCode::Missing,
                "is required".into(),
            )),
            Some(Json::Array(items)) if p.list => items
                .iter()
                .map(one)
                .collect::<Result<_, _>>()
                .map(Value::List),
            Some(_) if p.list => Err(detail(
                "params",
                p.name,
                DetailCode::WrongType,
                "must be a list".into(),
            )),
            Some(j) => one(j),
        };
        match v {
            Ok(v) => values.push(v),
            Err(d) => details.push(d),
        }
    }
    if details.is_empty() {
        Ok(values)
    } else {
        Err(BedsError::invalid(details))
    }
}

/// Which record a fetch, update or delete means: by `id` (slot 0) or by the fields of
/// unique index `slot - 1`, with the key's values in index order.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordKey {
    pub slot: usize,
    pub values: Vec<Value>,
}

impl RecordKey {
    /// `id 0192…` or `handle = "bob"`, for messages.
    pub fn describe(&self, t: &TemplateMeta) -> String {
        let names: Vec<&str> = match self.slot {
            0 => vec!["id"],
            i => t.unique[i - 1].fields.to_vec(),
        };
        names
            .iter()
            .zip(&self.values)
            .map(|(n, v)| match v {
                Value::Uuid(u) => format!("{n} {u}"),
                Value::Int(i) => format!("{n} {i}"),
                Value::Text(s) => format!("{n} {:?}", clip(s)),
                other => format!("{n} {other:?}"),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The most names of a wrong key an error repeats (keys have a few fields).
const MAX_KEY_NAMES: usize = 8;

/// Reads the key of a fetch, update or delete: `{"id": "<uuid>"}`, or the fields of one of
/// the template's unique indexes, e.g. `{"handle": "bob"}`.
pub fn record_key(
    t: &TemplateMeta,
    key: Option<&Map<String, Json>>,
    patterns: &Patterns,
) -> Result<RecordKey, BedsError> {
    let ways = || {
        std::iter::once("{\"id\": \"<uuid>\"}".to_string())
            .chain(
                t.unique
                    .iter()
                    .map(|u| format!("{{{}}}", u.fields.join(", "))),
            )
            .collect::<Vec<_>>()
            .join(" or ")
    };
    let Some(key) = key.filter(|k| !k.is_empty()) else {
        return Err(BedsError::detail(
            "key",
            DetailCode::Missing,
            format!("this operation needs `key`: {}", ways()),
        ));
    };
    if key.contains_key("id") {
        if let Some(other) = key.keys().find(|k| *k != "id") {
            return Err(BedsError::detail(
                format!("key.{}", clip(other)),
                DetailCode::Unknown,
                format!(
                    "a key by `id` has no other fields; `{}` is not part of it",
                    clip(other)
                ),
            ));
        }
        let id = id_value(t.id, &key["id"]).map_err(|m| {
            BedsError::detail("key.id", DetailCode::InvalidFormat, format!("key.id {m}"))
        })?;
        return Ok(RecordKey {
            slot: 0,
            values: vec![id],
        });
    }
    let Some(slot) = t
        .unique
        .iter()
        .position(|u| u.fields.len() == key.len() && u.fields.iter().all(|f| key.contains_key(*f)))
    else {
        return Err(BedsError::detail(
            "key",
            DetailCode::Unknown,
            format!(
                "`{}` is not a key of `{}`; use {}",
                echo::list(key.keys().map(String::as_str), MAX_KEY_NAMES),
                t.name,
                ways()
            ),
        ));
    };
    let mut values = Vec::new();
    let mut details = Vec::new();
    for name in t.unique[slot].fields {
        let f = t.field(name).expect("unique fields are declared");
        match field_value(&as_param(f), &key[*name], patterns, "key", name) {
            Ok(v) => values.push(v),
            Err(d) => details.push(d),
        }
    }
    if details.is_empty() {
        Ok(RecordKey {
            slot: slot + 1,
            values,
        })
    } else {
        Err(BedsError::invalid(details))
    }
}

/// An id as the wire carries it: a UUID string, or a positive integer for sequences.
pub fn id_value(kind: IdKind, j: &Json) -> Result<Value, String> {
    match kind {
        IdKind::Uuid7 => j
            .as_str()
            .and_then(parse_uuid)
            .map(Value::Uuid)
            .ok_or_else(|| format!("must be a UUID string, found {}", echo::json(j))),
        IdKind::Sequence => j
            .as_i64()
            .filter(|i| *i > 0)
            .map(Value::Int)
            .ok_or_else(|| format!("must be a positive integer id, found {}", echo::json(j))),
    }
}

fn parse_uuid(s: &str) -> Option<Uuid> {
    // Only the hyphenated form, so one record has one spelling of its key.
    (s.len() == 36).then(|| Uuid::parse_str(s).ok()).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TAGS: TokenSetMeta = TokenSetMeta {
        name: "tags",
        source: "body",
        pattern: r"#(\w+)",
        lowercase: true,
        max_len: 8,
        table: "t_tags",
    };

    fn patterns() -> Patterns {
        Patterns(HashMap::from([(
            TAGS.pattern,
            regex::Regex::new(TAGS.pattern).unwrap(),
        )]))
    }

    #[test]
    fn tokens_are_distinct_lowercased_and_bounded_in_length() {
        let tokens = patterns().tokens(&TAGS, "#Rust #rust #toolongatag #Café #rust");
        assert_eq!(tokens, Ok(vec!["rust".to_string(), "café".to_string()]));
    }

    #[test]
    fn the_cap_counts_distinct_tokens_and_stops_the_scan() {
        let at_cap: String = (0..MAX_TOKENS).map(|i| format!("#t{i} ")).collect();
        // Repeats of known tokens do not count towards the cap.
        let repeated = format!("{at_cap}{at_cap}");
        assert_eq!(
            patterns().tokens(&TAGS, &repeated).unwrap().len(),
            MAX_TOKENS
        );
        let over = format!("{at_cap}#one_more");
        assert_eq!(patterns().tokens(&TAGS, &over), Err(TooManyTokens));
        // A huge text is refused at the first token past the cap, whatever follows.
        let huge: String = (0..200_000).map(|i| format!("#{i} ")).collect();
        assert_eq!(patterns().tokens(&TAGS, &huge), Err(TooManyTokens));
    }
}
