//! Compiled template and query metadata, as generated from declarations: plain data, with
//! no behaviour beyond look-ups.
//!
//! Everything here is `'static` data built at compile time; the runtime reads it and never
//! parses a declaration.

use crate::envelope::{Consistency, Op};

/// Every template of `domains`, with its domain.
pub fn templates(
    domains: &[&'static DomainMeta],
) -> impl Iterator<Item = (&'static DomainMeta, &'static TemplateMeta)> {
    domains
        .iter()
        .flat_map(|d| d.templates.iter().map(move |t| (*d, *t)))
}

#[derive(Debug)]
pub struct DomainMeta {
    pub name: &'static str,
    pub version: u32,
    pub templates: &'static [&'static TemplateMeta],
    pub queries: &'static [&'static QueryMeta],
}

impl DomainMeta {
    pub fn template(&self, name: &str) -> Option<&'static TemplateMeta> {
        self.templates.iter().copied().find(|t| t.name == name)
    }

    /// The templates ordered so that each comes after the templates it references (for
    /// creating tables and records); references in a cycle keep declaration order.
    pub fn in_reference_order(&self) -> Vec<&'static TemplateMeta> {
        let mut done: Vec<&'static TemplateMeta> = Vec::new();
        let mut pending = self.templates.to_vec();
        while !pending.is_empty() {
            let ready = pending
                .iter()
                .position(|t| {
                    t.fields.iter().all(|f| match f.kind {
                        FieldKind::Ref { template, .. } => {
                            template == t.name || done.iter().any(|d| d.name == template)
                        }
                        _ => true,
                    })
                })
                .unwrap_or(0);
            done.push(pending.remove(ready));
        }
        done
    }
}

/// One template: its API shape and its storage names.
#[derive(Debug, PartialEq)]
pub struct TemplateMeta {
    pub domain: &'static str,
    pub name: &'static str,
    /// The declared contract version.
    pub version: u32,
    /// Hash of the API contract (names, types, constraints, operations), as 16 hex digits:
    /// any change a client could notice changes it; storage names do not.
    pub fingerprint: &'static str,
    pub table: &'static str,
    pub id: IdKind,
    pub id_column: &'static str,
    pub version_column: &'static str,
    pub fields: &'static [FieldMeta],
    pub unique: &'static [UniqueMeta],
    /// Non-unique indexes, each a list of field names (`id` allowed).
    pub indexes: &'static [&'static [&'static str]],
    pub page: PageMeta,
    /// Only `create`, `fetch` and `list` exist.
    pub append_only: bool,
    /// Not routed for clients.
    pub internal: bool,
    pub capabilities: Capabilities,
    /// Declared principals per operation (`public`, `authenticated`, `owner`, role names);
    /// an operation without a rule gets the node's `security.default_access`.
    pub access: &'static [(Op, &'static [&'static str])],
    /// The field holding the subject that owns a record (`id`: the record is its own
    /// subject), for `owner` rules.
    pub owner: Option<&'static str>,
    /// Token sets derived from text fields at write time (hashtags, mentions, …).
    pub tokens: &'static [TokenSetMeta],
    /// Counts of referencing records a query can return with each item.
    pub counts: &'static [CountMeta],
    /// Rules across fields, enforced on every write and by the database.
    pub checks: &'static [CheckMeta],
}

/// A set of tokens taken from a text field by a pattern each time the field is written,
/// stored in a table of its own and queryable like a field.
#[derive(Debug, PartialEq)]
pub struct TokenSetMeta {
    pub name: &'static str,
    /// The field the tokens are taken from.
    pub source: &'static str,
    /// Every match is a token: its first capture group if it has one, else the match.
    pub pattern: &'static str,
    /// Tokens (and the parameters compared with them) are lowercased.
    pub lowercase: bool,
    /// Longer matches are not tokens.
    pub max_len: u32,
    /// `(owner, token)` rows, one per distinct token of a record.
    pub table: &'static str,
}

/// The number of `template` records whose reference `by` points at a record (and that
/// match `filter`).
#[derive(Debug, PartialEq)]
pub struct CountMeta {
    pub name: &'static str,
    pub template: &'static str,
    pub by: &'static str,
    /// All must hold: single fields of `template` compared with literal values.
    pub filter: &'static [ConditionMeta],
    /// Read from the counter table the tercero role keeps from write events, not counted
    /// at each read.
    pub maintained: bool,
}

/// A rule across fields: `fields[0]` and `fields[1]` must differ.
#[derive(Debug, PartialEq)]
pub struct CheckMeta {
    /// The database constraint's name.
    pub name: &'static str,
    pub differ: [&'static str; 2],
    /// What the caller is told when the rule is broken.
    pub message: &'static str,
}

/// Capability toggles as declared; what each does at run time comes with its feature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Capabilities {
    pub audit: bool,
    pub journal: bool,
    pub locking: bool,
    pub cache_ttl_ms: Option<u64>,
    /// What a fetch without `consistency` gets: `cached` when the template declares a cache
    /// (unless it declares `consistency: strong`), else `strong`.
    pub consistency: Consistency,
    pub retention: Option<RetentionMeta>,
}

/// `retention: { field, hot, cool, then }` (wiki/retention.md): segundo moves a record
/// older than `hot` (by `field`) from the serving database to the warehouse, and one older
/// than `cool` from the warehouse to cold files or away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionMeta {
    /// A required timestamp field of the template.
    pub field: &'static str,
    pub hot_ms: u64,
    /// Longer than `hot_ms`.
    pub cool_ms: u64,
    pub then: RetentionEnd,
}

/// What becomes of a record past `cool`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetentionEnd {
    /// Written to a cold file and kept there.
    Keep,
    /// Deleted for good.
    Delete,
}

impl RetentionEnd {
    pub fn name(self) -> &'static str {
        match self {
            RetentionEnd::Keep => "keep",
            RetentionEnd::Delete => "delete",
        }
    }
}

impl TemplateMeta {
    /// The operations a client may send to this template (what `beds check` lists).
    pub fn ops(&self) -> impl Iterator<Item = Op> + '_ {
        let locking = if self.capabilities.locking {
            &Op::LOCKING[..]
        } else {
            &[]
        };
        let journal = if self.capabilities.journal {
            &Op::JOURNAL[..]
        } else {
            &[]
        };
        Op::TEMPLATE
            .into_iter()
            .filter(|op| !(self.append_only && matches!(op, Op::Update | Op::Delete)))
            .chain(locking.iter().copied())
            .chain(journal.iter().copied())
    }

    pub fn field(&self, name: &str) -> Option<&'static FieldMeta> {
        self.fields.iter().find(|f| f.name == name)
    }

    pub fn token_set(&self, name: &str) -> Option<&'static TokenSetMeta> {
        self.tokens.iter().find(|t| t.name == name)
    }

    pub fn count(&self, name: &str) -> Option<&'static CountMeta> {
        self.counts.iter().find(|c| c.name == name)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdKind {
    /// Generated by the server: a time-ordered UUID, a string on the wire.
    Uuid7,
    /// Assigned by the database: an increasing 64-bit integer, a number on the wire.
    Sequence,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FieldMeta {
    pub name: &'static str,
    pub column: &'static str,
    pub kind: FieldKind,
    pub optional: bool,
    pub set: Option<SetOn>,
    /// Used on create when the caller leaves the field out.
    pub default: Option<DefaultValue>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DefaultValue {
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(&'static str),
}

impl FieldMeta {
    /// Whether a caller may supply this field (server-set fields are read-only).
    pub fn is_input(&self) -> bool {
        self.set.is_none()
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FieldKind {
    String {
        min: u32,
        max: u32,
        pattern: Option<&'static str>,
    },
    Text {
        max: Option<u32>,
    },
    /// 32-bit; the bounds default to the i32 range.
    Integer {
        min: i64,
        max: i64,
    },
    /// 64-bit.
    BigInt {
        min: i64,
        max: i64,
    },
    Float {
        min: Option<f64>,
        max: Option<f64>,
    },
    Bool,
    Timestamp,
    Date,
    Uuid,
    Enum {
        values: &'static [&'static str],
    },
    Json,
    Ref {
        template: &'static str,
        on_delete: OnDelete,
        /// The target's id kind, which is this field's type.
        id: IdKind,
    },
}

impl FieldKind {
    /// The JSON shape a caller must send, for error messages.
    pub fn expected(&self) -> &'static str {
        match self {
            FieldKind::String { .. } | FieldKind::Text { .. } => "a string",
            FieldKind::Integer { .. } | FieldKind::BigInt { .. } => "an integer",
            FieldKind::Float { .. } => "a number",
            FieldKind::Bool => "true or false",
            FieldKind::Timestamp => "an RFC 3339 timestamp string",
            FieldKind::Date => "a YYYY-MM-DD date string",
            FieldKind::Uuid
            | FieldKind::Ref {
                id: IdKind::Uuid7, ..
            } => "a UUID string",
            FieldKind::Ref {
                id: IdKind::Sequence,
                ..
            } => "a positive integer id",
            FieldKind::Enum { .. } => "one of the declared values",
            FieldKind::Json => "any JSON value",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetOn {
    Create,
    Update,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnDelete {
    Restrict,
    Cascade,
    SetNull,
}

#[derive(Debug, PartialEq)]
pub struct UniqueMeta {
    pub fields: &'static [&'static str],
    pub case_insensitive: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageMeta {
    pub default: u32,
    pub max: u32,
}

/// A compiled named query.
#[derive(Debug)]
pub struct QueryMeta {
    pub domain: &'static str,
    pub name: &'static str,
    /// The template whose records it returns.
    pub from: &'static TemplateMeta,
    pub params: &'static [ParamMeta],
    /// All must hold.
    pub filter: &'static [ConditionMeta],
    /// Alternatives: when not empty, at least one group must hold (all of its conditions).
    pub any: &'static [&'static [ConditionMeta]],
    /// Sort keys on fields of `from` (`id` allowed), `true` for descending; the runtime
    /// appends `id` as the final tie-breaker.
    pub order: &'static [(&'static str, bool)],
    pub page: PageMeta,
    pub count: bool,
    /// Values returned with each item under `with`: counts and fields through references.
    pub with: &'static [WithMeta],
    /// Group keys (fields of `from`): when not empty, the query returns one row per
    /// distinct combination with its `count`, ordered and paged by these keys.
    pub group: &'static [&'static str],
    /// `cache: { ttl }`: how long a result may be served from the node's cache.
    pub cache_ttl_ms: Option<u64>,
    /// Every template of `domain` the query reads; a write to any of them makes a cached
    /// result stale (wiki/cache.md).
    pub reads: &'static [&'static str],
    /// Who may run it; empty: the node's `security.default_access`.
    pub access: &'static [&'static str],
    /// `tiers: [hot, warehouse]`: with `"tier": "warehouse"`, answered by a segundo node
    /// from the serving database and the warehouse together (wiki/retention.md).
    pub warehouse: bool,
}

impl QueryMeta {
    /// The sort keys as executed: a grouped query's group keys, ascending (each row is
    /// one distinct combination, so they need no tie-breaker); otherwise the declared
    /// ones, then `id` as tie-breaker (in the direction of the last key) unless already
    /// last.
    pub fn keys(&self) -> Vec<(&'static str, bool)> {
        if self.grouped() {
            return self.group.iter().map(|g| (*g, false)).collect();
        }
        let mut keys = self.order.to_vec();
        if keys.last().map(|k| k.0) != Some("id") {
            keys.push(("id", keys.last().is_some_and(|k| k.1)));
        }
        keys
    }

    /// Whether it returns group rows (`group:`) rather than records.
    pub fn grouped(&self) -> bool {
        !self.group.is_empty()
    }

    /// Every condition, top-level and in alternatives (not inside sub-selects).
    pub fn conditions(&self) -> impl Iterator<Item = &'static ConditionMeta> {
        self.filter
            .iter()
            .chain(self.any.iter().flat_map(|g| g.iter()))
    }
}

/// A query parameter: typed like what it is compared with.
#[derive(Debug)]
pub struct ParamMeta {
    pub name: &'static str,
    pub kind: ParamKind,
    pub optional: bool,
    /// A list of values (for `in`).
    pub list: bool,
}

#[derive(Debug, Clone, Copy)]
pub enum ParamKind {
    /// Compared with this field.
    Field(&'static FieldMeta),
    /// Compared with the key of this template.
    Id(&'static TemplateMeta),
    /// Compared with the tokens of this set.
    Token(&'static TokenSetMeta),
}

#[derive(Debug, PartialEq)]
pub struct ConditionMeta {
    /// Path from the query's template, through references (`["author", "handle"]`); its
    /// last segment is a field, `id` or a token set.
    pub path: &'static [&'static str],
    pub op: CondOp,
    pub operand: Operand,
}

/// What a condition compares with.
#[derive(Debug, PartialEq)]
pub enum Operand {
    /// A parameter, by name.
    Param(&'static str),
    /// The values of one field of the records a sub-select matches (with `in`).
    Select(&'static SelectMeta),
    /// A value written in the declaration, checked against the field at build time.
    Literal(LiteralValue),
}

/// A literal in a condition: a bool, or one of an enum field's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LiteralValue {
    Bool(bool),
    Enum(&'static str),
}

/// `select` of the `from` records matching `filter`.
#[derive(Debug, PartialEq)]
pub struct SelectMeta {
    pub from: &'static TemplateMeta,
    /// A field of `from`, or `id`.
    pub select: &'static str,
    /// All must hold; paths are single fields of `from`.
    pub filter: &'static [ConditionMeta],
}

/// One value returned with each item of a query.
#[derive(Debug)]
pub struct WithMeta {
    /// Its key under `with` (`author_followers` for `author.followers`).
    pub name: &'static str,
    /// References followed from the query's template before `what`.
    pub path: &'static [&'static str],
    pub what: WithKind,
}

#[derive(Debug, Clone, Copy)]
pub enum WithKind {
    /// A declared count of the template at the end of the path.
    Count(&'static str),
    /// A field of the template at the end of the path.
    Field(&'static str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CondOp {
    Eq,
    Lt,
    Le,
    Gt,
    Ge,
    In,
    Prefix,
}
