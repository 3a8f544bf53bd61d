//! The catalog: every compiled domain of a binary and the generated dispatch table that
//! routes (domain, template) to a template's handlers.

use std::fmt;

use crate::config::Driver;
use crate::ingress::dispatch::{Handler, execute};
use crate::meta::{DomainMeta, FieldKind, QueryMeta, TemplateMeta};

/// The DDL the catalog's declarations need on `driver`: what `beds schema` prints for the
/// DBA, and what a node compares its database with at start-up (`database.schema`).
pub fn schema(driver: Driver, catalog: &Catalog) -> Vec<String> {
    crate::store::schema(driver, catalog.domains)
}

/// The DDL of segundo's warehouse (`segundo.warehouse`): empty when no template declares
/// retention.
pub fn warehouse_schema(driver: Driver, catalog: &Catalog) -> Vec<String> {
    crate::store::warehouse_schema(driver, catalog.domains)
}

/// The compiled domains disagree with each other in a way one file cannot show.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CatalogError(pub String);

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
        crate::meta::templates(self.domains)
    }

    pub fn route(&self, domain: &str, template: &str) -> Result<&'static Routes, RouteError> {
        (self.route)(domain, template)
    }

    /// Checks what the compiler cannot see file by file: that no two domains share a
    /// table, and that every reference points at a template of its own domain.
    pub fn check(&self) -> Result<(), CatalogError> {
        let mut tables = std::collections::HashMap::new();
        for (d, t) in self.templates() {
            if let Some(other) = tables.insert(t.table, (d.name, t.name)) {
                return Err(CatalogError(format!(
                    "table `{}` is declared by both {}.{} and {}.{}",
                    t.table, other.0, other.1, d.name, t.name
                )));
            }
            for f in t.fields {
                if let FieldKind::Ref { template, id, .. } = f.kind {
                    match d.template(template) {
                        None => {
                            return Err(CatalogError(format!(
                                "{}.{}.{} references unknown template `{template}`",
                                d.name, t.name, f.name
                            )));
                        }
                        Some(target) if target.id != id => {
                            return Err(CatalogError(format!(
                                "{}.{}.{} declares the id kind of `{template}` as {id:?}, but it is {:?}",
                                d.name, t.name, f.name, target.id
                            )));
                        }
                        Some(_) => {}
                    }
                }
            }
            for c in t.counts {
                let by = d
                    .template(c.template)
                    .and_then(|counted| counted.field(c.by));
                if !matches!(by.map(|f| f.kind), Some(FieldKind::Ref { template, .. }) if template == t.name)
                {
                    return Err(CatalogError(format!(
                        "{}.{} count `{}`: `{}.{}` is not a reference to `{}`",
                        d.name, t.name, c.name, c.template, c.by, t.name
                    )));
                }
            }
            for set in t.tokens {
                if !matches!(
                    t.field(set.source).map(|f| f.kind),
                    Some(FieldKind::String { .. } | FieldKind::Text { .. })
                ) {
                    return Err(CatalogError(format!(
                        "{}.{} tokens `{}`: `{}` is not a string or text field",
                        d.name, t.name, set.name, set.source
                    )));
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
    pub lock: Handler,
    pub unlock: Handler,
    pub history: Handler,
}

impl Routes {
    /// The routes of a record type; generated code builds one `static` per template.
    /// Every operation runs the built-in handler (append-only templates refuse `update` and
    /// `delete` in the validate step).
    pub const fn of<T: crate::record::Record>() -> Routes {
        Routes {
            meta: T::META,
            create: execute,
            fetch: execute,
            update: execute,
            delete: execute,
            list: execute,
            lock: execute,
            unlock: execute,
            history: execute,
        }
    }
}
