//! Step: find what a request names in the catalog: a template and an operation, or a
//! named query. Unknown names are answered with the names that exist.

use super::dispatch::Handler;
use crate::catalog::{Catalog, RouteError, Routes};
use crate::echo::clip;
use crate::envelope::{Op, Request};
use crate::error::{BedsError, DetailCode, ErrorCode};
use crate::meta::{DomainMeta, QueryMeta, TemplateMeta};
use crate::suggest::did_you_mean;

/// What a request runs.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Target {
    /// `op` on a template (never [`Op::Query`]), run by the handler its routes name.
    Template {
        meta: &'static TemplateMeta,
        op: Op,
        handler: Handler,
    },
    Query(&'static QueryMeta),
}

impl Target {
    pub fn op(&self) -> Op {
        match self {
            Target::Template { op, .. } => *op,
            Target::Query(_) => Op::Query,
        }
    }
}

pub(crate) fn resolve(catalog: &Catalog, req: &Request) -> Result<Target, BedsError> {
    let op = Op::parse(&req.op);
    if op == Some(Op::Query) {
        let name = req.query.as_deref().ok_or_else(|| {
            BedsError::detail(
                "query",
                DetailCode::Missing,
                "`query` needs the query's name in `query`",
            )
        })?;
        let meta = catalog
            .query(&req.domain, name)
            .map_err(|e| unknown(catalog, req, e))?;
        return Ok(Target::Query(meta));
    }
    let routes = catalog
        .route(&req.domain, &req.template)
        .map_err(|e| unknown(catalog, req, e))?;
    // Names what this template takes, not every operation the envelope knows: the reply
    // then changes only when the template's declaration does.
    let op = op.ok_or_else(|| {
        let ops: Vec<&str> = routes.meta.ops().map(Op::as_str).collect();
        BedsError::new(
            ErrorCode::UnknownOperation,
            format!(
                "unknown operation `{}`{}; `{}.{}` takes: {}",
                clip(&req.op),
                did_you_mean(&req.op, &ops),
                req.domain,
                req.template,
                ops.join(", ")
            ),
        )
    })?;
    Ok(Target::Template {
        meta: routes.meta,
        op,
        handler: handler(routes, op),
    })
}

fn handler(routes: &Routes, op: Op) -> Handler {
    match op {
        Op::Create => routes.create,
        Op::Fetch => routes.fetch,
        Op::Update => routes.update,
        Op::Delete => routes.delete,
        Op::List => routes.list,
        Op::Lock => routes.lock,
        Op::Unlock => routes.unlock,
        Op::History => routes.history,
        Op::Query => unreachable!("queries are routed by name, not by template"),
    }
}

fn unknown(catalog: &Catalog, req: &Request, e: RouteError) -> BedsError {
    match e {
        RouteError::UnknownDomain => BedsError::new(
            ErrorCode::UnknownDomain,
            format!(
                "unknown domain `{}`; this node serves: {}",
                clip(&req.domain),
                catalog
                    .domains
                    .iter()
                    .map(|d| d.name)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ),
        RouteError::UnknownTemplate => BedsError::new(
            ErrorCode::UnknownTemplate,
            format!(
                "domain `{}` has no template `{}`; templates: {}",
                req.domain,
                clip(&req.template),
                known(catalog, &req.domain, |d| d
                    .templates
                    .iter()
                    .filter(|t| !t.internal)
                    .map(|t| t.name)
                    .collect())
            ),
        ),
        RouteError::UnknownQuery => BedsError::new(
            ErrorCode::UnknownQuery,
            format!(
                "domain `{}` has no query `{}`; queries: {}",
                req.domain,
                clip(req.query.as_deref().unwrap_or("")),
                known(catalog, &req.domain, |d| d
                    .queries
                    .iter()
                    .map(|q| q.name)
                    .collect())
            ),
        ),
    }
}

fn known(
    catalog: &Catalog,
    domain: &str,
    names: impl Fn(&DomainMeta) -> Vec<&'static str>,
) -> String {
    catalog
        .domains
        .iter()
        .find(|d| d.name == domain)
        .map(|d| names(d).join(", "))
        .unwrap_or_default()
}
