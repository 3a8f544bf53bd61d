//! Compiled template metadata and the dispatch table, as generated from declarations.
//!
//! Everything here is `'static` data built at compile time; the runtime reads it and never
//! parses a declaration.

use std::fmt;

use crate::dispatch::Handler;
use crate::envelope::Op;

/// All compiled domains of a binary and the generated route lookup.
pub struct Catalog {
    pub domains: &'static [&'static DomainMeta],
    /// Generated `match` from (domain, template) to the template's routes.
    pub route: fn(&str, &str) -> Result<&'static Routes, RouteError>,
}

impl Catalog {
    /// The named query `name` of `domain`.
    pub fn query(&self, domain: &str, name: &str) -> Result<&'static QueryMeta, RouteError> {
        let d = self
            .domains
            .iter()
            .find(|d| d.name == domain)
            .ok_or(RouteError::UnknownDomain)?;
        d.queries
            .iter()
            .copied()
            .find(|q| q.name == name)
            .ok_or(RouteError::UnknownQuery)
    }
}

impl fmt::Debug for Catalog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Catalog")
            .field("domains", &self.domains)
            .finish_non_exhaustive()
    }
}

impl Catalog {
    pub fn templates(&self) -> impl Iterator<Item = (&'static DomainMeta, &'static TemplateMeta)> {
        self.domains
            .iter()
            .flat_map(|d| d.templates.iter().map(move |t| (*d, *t)))
    }

    pub fn route(&self, domain: &str, template: &str) -> Result<&'static Routes, RouteError> {
        (self.route)(domain, template)
    }

    /// Checks what the compiler cannot see file by file: that no two domains share a
    /// table, and that every reference points at a template of its own domain.
    pub fn check(&self) -> Result<(), String> {
        let mut tables = std::collections::HashMap::new();
        for (d, t) in self.templates() {
            if let Some(other) = tables.insert(t.table, (d.name, t.name)) {
                return Err(format!(
                    "table `{}` is declared by both {}.{} and {}.{}",
                    t.table, other.0, other.1, d.name, t.name
                ));
            }
            for f in t.fields {
                if let FieldKind::Ref { template, id, .. } = f.kind {
                    match d.template(template) {
                        None => {
                            return Err(format!(
                                "{}.{}.{} references unknown template `{template}`",
                                d.name, t.name, f.name
                            ));
                        }
                        Some(target) if target.id != id => {
                            return Err(format!(
                                "{}.{}.{} declares the id kind of `{template}` as {id:?}, but it is {:?}",
                                d.name, t.name, f.name, target.id
                            ));
                        }
                        Some(_) => {}
                    }
                }
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteError {
    UnknownDomain,
    UnknownTemplate,
    UnknownQuery,
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
    /// Declared principals per operation; enforcement arrives with authorization.
    pub access: &'static [(Op, &'static [&'static str])],
}

/// Capability toggles as declared; what each does at run time comes with its feature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Capabilities {
    pub audit: bool,
    pub journal: bool,
    pub locking: bool,
    pub cache_ttl_ms: Option<u64>,
    pub retention: Option<RetentionMeta>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionMeta {
    pub age_ms: u64,
    /// `cool`, `cold` or `delete`.
    pub target: &'static str,
}

impl TemplateMeta {
    pub fn field(&self, name: &str) -> Option<&'static FieldMeta> {
        self.fields.iter().find(|f| f.name == name)
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

/// A template's dispatch entry: its metadata and a handler per operation.
#[derive(Debug)]
/// Generated code builds it with [`Routes::of`]; written by hand, a handler can be swapped
/// (`Routes { create: my_handler, ..Routes::of::<T>() }`).
pub struct Routes {
    pub meta: &'static TemplateMeta,
    pub create: Handler,
    pub fetch: Handler,
    pub update: Handler,
    pub delete: Handler,
    pub list: Handler,
}

impl Routes {
    /// The routes of a record type; generated code builds one `static` per template.
    /// Append-only templates get a refusal for `update` and `delete`.
    pub const fn of<T: crate::record::Record>() -> Routes {
        use crate::dispatch::handlers;
        let append_only = T::META.append_only;
        Routes {
            meta: T::META,
            create: handlers::create::<T>,
            fetch: handlers::fetch::<T>,
            update: if append_only {
                handlers::append_only
            } else {
                handlers::update::<T>
            },
            delete: if append_only {
                handlers::append_only
            } else {
                handlers::delete::<T>
            },
            list: handlers::list::<T>,
        }
    }

    pub fn handler(&self, op: Op) -> Handler {
        match op {
            Op::Create => self.create,
            Op::Fetch => self.fetch,
            Op::Update => self.update,
            Op::Delete => self.delete,
            Op::List => self.list,
            Op::Query => unreachable!("queries are routed by name, not by template"),
        }
    }
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
    /// Sort keys on fields of `from` (`id` allowed), `true` for descending; the runtime
    /// appends `id` as the final tie-breaker.
    pub order: &'static [(&'static str, bool)],
    pub page: PageMeta,
    pub count: bool,
}

impl QueryMeta {
    /// The sort keys as executed: the declared ones, then `id` as tie-breaker (in the
    /// direction of the last key) unless already last.
    pub fn keys(&self) -> Vec<(&'static str, bool)> {
        let mut keys = self.order.to_vec();
        if keys.last().map(|k| k.0) != Some("id") {
            keys.push(("id", keys.last().is_some_and(|k| k.1)));
        }
        keys
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
}

#[derive(Debug)]
pub struct ConditionMeta {
    /// Field path from `from`, through references (`["author", "handle"]`).
    pub path: &'static [&'static str],
    pub op: CondOp,
    pub param: &'static str,
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
