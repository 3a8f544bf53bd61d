//! Step: who is calling ([`principal`], right after decode, so an unidentified caller
//! learns nothing about the catalog) and whether the target's `access` rule lets them
//! ([`check`], after `route`, before `validate`). Rules without a record to look at are
//! decided here; an `owner` rule on a stored record is handed on as an [`OwnerCheck`]: to
//! the store for update, delete, lock and unlock (read in the write's transaction), and to
//! the fetch result.

use serde_json::Value as Json;

use super::route::Target;
use crate::catalog::Catalog;
use crate::envelope::{Op, Request};
use crate::error::{BedsError, ErrorCode};
use crate::meta::{QueryMeta, TemplateMeta};
use crate::security::{
    OwnerCheck, Principal, Security, forbidden_owner, query_read_rules, same_subject, template_rule,
};

/// The caller: the AMQP `user_id`, then a verified token or a trusted service's assertion.
pub(crate) fn principal(
    security: &Security,
    user_id: Option<&str>,
    req: &Request,
) -> Result<Principal, BedsError> {
    let service = user_id.map(str::to_string);
    if service.is_none() && security.require_user_id {
        return Err(BedsError::new(
            ErrorCode::Unauthenticated,
            "the request has no AMQP `user_id` property, which this node requires: set it to \
             the user name the connection logged in with (RabbitMQ checks that they match)",
        ));
    }
    let asserted = req.subject.is_some() || req.roles.is_some();
    if let Some(token) = &req.auth {
        if asserted {
            return Err(BedsError::new(
                ErrorCode::InvalidEnvelope,
                "send either `auth` or `subject`/`roles`, not both",
            ));
        }
        let (subject, roles) = security
            .verify(token)
            .map_err(|e| BedsError::new(ErrorCode::Unauthenticated, e.to_string()))?;
        return Ok(Principal {
            service,
            subject: Some(subject),
            roles,
        });
    }
    if asserted {
        return match service {
            Some(s) if security.trusts(&s) => Ok(Principal {
                service: Some(s),
                subject: req.subject.clone(),
                roles: req.roles.clone().unwrap_or_default(),
            }),
            Some(s) => Err(BedsError::new(
                ErrorCode::Forbidden,
                format!(
                    "service `{s}` may not assert `subject` or `roles`: only services listed in \
                     security.trusted_services may; send the end user's signed token in `auth`"
                ),
            )),
            None => Err(BedsError::new(
                ErrorCode::Unauthenticated,
                "`subject` and `roles` are taken only from an identified trusted service: set \
                 the AMQP `user_id` property, or send a signed token in `auth`",
            )),
        };
    }
    let roles = service
        .as_deref()
        .map(|s| security.service_roles(s))
        .unwrap_or_default();
    Ok(Principal {
        service,
        subject: None,
        roles,
    })
}

/// Applies the target's rule. `Ok(Some(_))`: allowed only as the record's owner, which the
/// caller checks on the record.
pub(crate) fn check(
    security: &Security,
    catalog: &Catalog,
    principal: &Principal,
    target: &Target,
    req: &Request,
) -> Result<Option<OwnerCheck>, BedsError> {
    let default = security.default_access();
    let who = match *target {
        Target::Template { meta, op, .. } => template_rule(default, meta, op).0,
        Target::Query(q) => {
            let reads =
                query_read_rules(q, |name| catalog.route(q.domain, name).ok().map(|r| r.meta));
            for (template, rule) in reads {
                if !rule.iter().any(|p| grants(p, principal)) {
                    return Err(denied_read(q, template, &rule, principal));
                }
            }
            if q.access.is_empty() {
                default.iter().map(String::as_str).collect()
            } else {
                q.access.to_vec()
            }
        }
    };
    if who.iter().any(|p| grants(p, principal)) {
        return Ok(None);
    }
    let owner = who.contains(&"owner");
    let owned = match (*target, owner, &principal.subject) {
        (Target::Template { meta, .. }, true, Some(subject)) => {
            meta.owner.map(|field| OwnerCheck {
                field,
                subject: subject.clone(),
            })
        }
        _ => None,
    };
    let Some(check) = owned else {
        return Err(denied(target, &who, principal));
    };
    let Target::Template { meta, op, .. } = *target else {
        unreachable!("owner checks are only made for templates")
    };
    match op {
        // The new record must name the caller as its owner: a like is made only for oneself.
        Op::Create => {
            let data = req.data.as_ref().and_then(|d| d.get(check.field));
            creates_own(meta, &check, data)?;
            Ok(None)
        }
        // An owner may not hand the record to someone else.
        Op::Update => {
            if let Some(v) = req.data.as_ref().and_then(|d| d.get(check.field))
                && !same_subject(v, &check.subject)
            {
                return Err(forbidden_owner(meta, op.as_str(), check.field));
            }
            Ok(Some(check))
        }
        _ => Ok(Some(check)),
    }
}

/// Whether `p` of a rule lets the principal in; `owner` needs a record, checked apart.
fn grants(p: &str, principal: &Principal) -> bool {
    match p {
        "public" => true,
        "authenticated" => principal.subject.is_some(),
        "owner" => false,
        role => principal.roles.iter().any(|r| r == role),
    }
}

/// A query refused because a template it reads is fetched under a rule the caller fails.
fn denied_read(q: &QueryMeta, template: &str, rule: &[&str], principal: &Principal) -> BedsError {
    let who = if rule.is_empty() {
        "nobody (it is fetched by its owner only)".to_string()
    } else {
        rule.join(", ")
    };
    let hint = if principal.subject.is_none() {
        "send the end user's signed token in `auth`"
    } else {
        "act as a subject that holds one of these"
    };
    BedsError::new(
        ErrorCode::Forbidden,
        format!(
            "the query `{}.{}` reads `{template}`, which is fetched by: {who}; {hint}, or \
             declare the query's own `access`",
            q.domain, q.name
        ),
    )
}

fn creates_own(
    t: &TemplateMeta,
    check: &OwnerCheck,
    value: Option<&Json>,
) -> Result<(), BedsError> {
    match value {
        Some(v) if same_subject(v, &check.subject) => Ok(()),
        _ => Err(BedsError::new(
            ErrorCode::Forbidden,
            format!(
                "a `{}.{}` is created only for oneself: `data.{}` must be the caller's subject",
                t.domain, t.name, check.field
            ),
        )),
    }
}

fn denied(target: &Target, who: &[&str], principal: &Principal) -> BedsError {
    let what = match target {
        Target::Template { meta, op, .. } => {
            format!("`{}` on `{}.{}`", op.as_str(), meta.domain, meta.name)
        }
        Target::Query(q) => format!("the query `{}.{}`", q.domain, q.name),
    };
    let hint = if principal.subject.is_none() {
        "send the end user's signed token in `auth`"
    } else {
        "act as a subject that holds one of these"
    };
    let allowed = if who.is_empty() {
        "nobody: its template is fetched by its owner only; declare a `list` rule to open it"
            .to_string()
    } else {
        who.join(", ")
    };
    BedsError::new(
        ErrorCode::Forbidden,
        format!("{what} is allowed to: {allowed}; {hint}"),
    )
}
