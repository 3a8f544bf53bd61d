//! Ingress: what happens to one delivery, as a chain of small steps, each with one job,
//! composed in one place ([`run`]):
//!
//! ```text
//! provenance (retry signature) -> accept (AMQP properties, caller) -> decode -> principal
//!     -> deadline -> route -> lane -> authorize -> validate -> idempotency -> cache lookup
//!     -> dispatch -> owner check of a fetched record -> cache keep / invalidate
//!                                        ... then settle: reply, ack, retry, dead-letter
//! ```
//!
//! A step either hands a typed value to the next or ends the chain with a [`BedsError`];
//! [`settle`] turns the outcome into reply, ack, retry or dead-letter by the error-class
//! table. Later layers (telemetry, write events) are further lines in
//! [`run`]; wiki/architecture.md says where each goes.

pub(crate) mod accept;
mod authorize;
pub(crate) mod cache;
pub(crate) mod command;
mod deadline;
pub mod dispatch;
mod idempotency;
pub mod lane;
pub(crate) mod route;
pub(crate) mod service;
pub(crate) mod settle;
mod validate;

use std::sync::Arc;
use std::time::Instant;

use futures_util::FutureExt;
use lapin::Channel;
use lapin::message::Delivery;
use serde_json::Value as Json;
use tracing::Instrument;

use crate::cache::Cache;
use crate::catalog::Catalog;
use crate::config::{LimitsConfig, LockingConfig, RetryConfig};
use crate::envelope::{Op, Origin, ReadTier, Reply, Request};
use crate::error::{BedsError, ErrorCode};
use crate::lineage::{Lineage, Parent, Record, RecordType};
use crate::security::Security;
use crate::telemetry::in_flight::Tracked;
use crate::telemetry::metrics::{Metrics, Series};
use crate::value::Patterns;
use dispatch::{Call, Ctx};
use lane::Lane;
use route::Target;
use settle::Outcome;

/// What every worker of a node shares: the compiled catalog, the compiled patterns, the
/// database, the retry policy, the input bounds, the read cache, the security settings
/// the node's metrics and its lineage sink.
#[derive(Debug)]
pub(crate) struct Ingress {
    pub catalog: &'static Catalog,
    pub patterns: Arc<Patterns>,
    pub ctx: Ctx,
    pub retry: RetryConfig,
    pub leases: LockingConfig,
    pub limits: LimitsConfig,
    pub cache: Arc<Cache>,
    pub lineage: Lineage,
    pub signer: settle::Signer,
    pub security: Arc<Security>,
    pub metrics: Arc<Metrics>,
    /// The routing key (queue tag included) of the warehouse reads a segundo node serves,
    /// where a read sent with `"tier": "warehouse"` is forwarded.
    pub warehouse_key: String,
}

/// Handles one delivery to the end: the chain, then settle, in a span naming the message
/// (its ids once decoded, its target once routed), counted in the node's metrics; the
/// worker registered it as in flight (`tracked`) and it stays so until settled.
pub(crate) async fn handle(
    ingress: Arc<Ingress>,
    channel: Channel,
    lane: Lane,
    delivery: Delivery,
    tracked: Tracked,
) {
    let started = Instant::now();
    let _in_flight = ingress.metrics.in_flight(lane);
    if delivery.redelivered {
        ingress.metrics.redelivered(lane);
    }
    let span = tracing::info_span!(
        "delivery",
        lane = lane.key(),
        message_id = tracing::field::Empty,
        correlation_id = tracing::field::Empty,
        template = tracing::field::Empty,
        op = tracing::field::Empty,
    );
    async {
        let at = crate::value::now();
        let mut series = Series::unknown(None);
        let mut trace = Trace::default();
        let outcome = process(&ingress, lane, &delivery, &tracked, &mut series, &mut trace).await;
        let code = outcome.code();
        if trace.parent.is_none() && matches!(outcome, Outcome::Unanswerable(_)) {
            // Undecodable or refused before decoding: its dead letter names what it can.
            let (correlation, id) = Request::ids_of(&delivery.data, &ingress.limits);
            trace.parent = Some(Parent {
                id,
                correlation,
                depth: 0,
            });
        }
        let trail = settle::Trail {
            lineage: &ingress.lineage,
            parent: trace.parent,
            sampled: trace.seen.is_some(),
        };
        settle::settle(
            &channel,
            &delivery,
            lane,
            &ingress.retry,
            &ingress.signer,
            &ingress.metrics,
            outcome,
            &trail,
        )
        .await;
        let took = started.elapsed();
        ingress.metrics.request(lane, series, code, took);
        if let (Some(seen), Some(parent)) = (trace.seen, trace.parent) {
            let origin = seen.origin.unwrap_or_else(|| Origin {
                service: crate::telemetry::metrics::UNKNOWN.into(),
                node: crate::telemetry::metrics::UNKNOWN.into(),
                env: ingress.lineage.origin().env.clone(),
            });
            let name = format!("{}.{}.{}", series.domain, series.template, series.op);
            let record = Record::new(
                RecordType::Request,
                parent.id,
                parent.correlation,
                seen.causation,
                parent.depth,
                origin,
                name,
                at,
            );
            ingress.lineage.record(record.took(took).ended(code));
        }
    }
    .instrument(span)
    .await;
    drop(tracked);
}

/// What lineage learns of a delivery: its ids once decoded, and, only when its
/// conversation is sampled, what its request record needs besides.
#[derive(Default)]
struct Trace {
    parent: Option<Parent>,
    seen: Option<Seen>,
}

struct Seen {
    causation: Option<uuid::Uuid>,
    origin: Option<Origin>,
}

async fn process(
    ingress: &Ingress,
    lane: Lane,
    delivery: &Delivery,
    tracked: &Tracked,
    series: &mut Series,
    trace: &mut Trace,
) -> Outcome {
    if let Err(e) = settle::provenance(&ingress.signer.key, delivery) {
        return Outcome::Unanswerable(e);
    }
    let (to, user_id) = match accept::delivery(delivery, &ingress.signer.key) {
        Ok(accepted) => (accepted.reply, accepted.user_id),
        Err(e) => return Outcome::Unanswerable(e),
    };
    // Each delivery already runs in its own task; catching the unwind here keeps a panicking
    // handler from taking its worker down, without a second task or a copy of the body.
    let work = std::panic::AssertUnwindSafe(answer(
        ingress,
        lane,
        &delivery.data,
        user_id,
        tracked,
        series,
        trace,
    ))
    .catch_unwind();
    match work.await {
        Ok(Answered::Reply(reply)) => Outcome::Reply { to, reply },
        Ok(Answered::Forward) => Outcome::Forward {
            routing_key: ingress.warehouse_key.clone(),
        },
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::error!(panic = %what, "handler panicked");
            Outcome::Unanswerable(BedsError::new(
                ErrorCode::HandlerPanicked,
                format!("the handler panicked: {what}"),
            ))
        }
    }
}

/// What the chain made of a decodable delivery. Moved, never stored: boxing the reply
/// would only add an allocation per reply (as [`Outcome`]).
#[allow(clippy::large_enum_variant)]
enum Answered {
    Reply(Reply),
    /// A read for the warehouse: a segundo node answers it (wiki/retention.md).
    Forward,
}

/// Decodes the body and runs the chain; every failure becomes an error reply, one level
/// below the request and naming this node. `series` becomes the request's target once the
/// chain has resolved it; `trace` its lineage once decoded.
async fn answer(
    ingress: &Ingress,
    lane: Lane,
    body: &[u8],
    user_id: Option<String>,
    tracked: &Tracked,
    series: &mut Series,
    trace: &mut Trace,
) -> Answered {
    let reply = |correlation, id, depth: u32, result| {
        let mut reply = Reply::to(correlation, id, result);
        reply.depth = depth + 1;
        reply.origin = Some(ingress.lineage.origin().clone());
        reply
    };
    let req = match Request::decode_within(body, &ingress.limits) {
        Ok(req) => req,
        Err(e) => {
            tracing::debug!(code = ?e.code, message = %e.message, "request rejected at decode");
            let (correlation, causation) = Request::ids_of(body, &ingress.limits);
            trace.parent = Some(Parent {
                id: causation,
                correlation,
                depth: 0,
            });
            return Answered::Reply(reply(correlation, causation, 0, Err(e)));
        }
    };
    trace.parent = Some(Parent {
        id: req.id,
        correlation: req.conversation(),
        depth: req.depth,
    });
    // The same request, to the same routing key, from a client in any language: the node
    // hands it to segundo unread (segundo validates and authorizes it like this chain).
    if lane == Lane::Read && req.tier == Some(ReadTier::Warehouse) {
        return Answered::Forward;
    }
    if ingress.lineage.sampled(req.conversation()) {
        trace.seen = Some(Seen {
            causation: req.causation_id,
            origin: req.origin.clone(),
        });
    }
    let span = tracing::Span::current();
    span.record("message_id", tracing::field::display(req.id));
    span.record(
        "correlation_id",
        tracing::field::display(req.conversation()),
    );
    tracked.identify(&req);
    *series = Series::unknown(Some(&req));
    let result = run(ingress, lane, &req, user_id.as_deref(), tracked, series).await;
    if let Err(e) = &result {
        tracing::debug!(id = %req.id, code = ?e.code, message = %e.message, "request failed");
    }
    Answered::Reply(reply(req.conversation(), req.id, req.depth, result))
}

/// A request the chain has identified, routed, authorized and validated.
pub(crate) struct Prepared {
    pub principal: crate::security::Principal,
    pub target: Target,
    /// An `owner` rule still to apply to the record.
    pub owner: Option<crate::security::OwnerCheck>,
    pub command: command::Command,
}

/// The steps every reader of a request runs before touching a database, in order (the
/// appServer's chain and segundo's warehouse reads): identify the caller, check the
/// deadline, route (then `routed` learns the target), keep the lane, authorize, validate.
pub(crate) fn prepare(
    ingress: &Ingress,
    lane: Lane,
    req: &Request,
    user_id: Option<&str>,
    routed: impl FnOnce(&Target),
) -> Result<Prepared, BedsError> {
    let principal = authorize::principal(&ingress.security, user_id, req)?;
    deadline::check(req)?;
    let target = route::resolve(ingress.catalog, req)?;
    routed(&target);
    lane::check(lane, target.op())?;
    let owner = authorize::check(&ingress.security, ingress.catalog, &principal, &target, req)?;
    let command = validate::command(&target, req, &ingress.patterns, &ingress.leases)?;
    Ok(Prepared {
        principal,
        target,
        owner,
        command,
    })
}

/// The chain of a decoded request, in order. The caller is identified first; the rule is
/// applied after `route` (it needs the target) and before `validate` (a caller who may not
/// call learns nothing about the input it takes); the read cache wraps `dispatch` of
/// template operations; write events are recorded by the store inside the write's
/// transaction. The metrics count the request under its target once `route` found it.
async fn run(
    ingress: &Ingress,
    lane: Lane,
    req: &Request,
    user_id: Option<&str>,
    tracked: &Tracked,
    series: &mut Series,
) -> Result<Json, BedsError> {
    let Prepared {
        principal,
        target,
        owner,
        command,
    } = prepare(ingress, lane, req, user_id, |target| {
        *series = match target {
            Target::Query(q) => Series::query(q),
            Target::Template { meta, op, .. } => Series::template(meta, *op),
        };
        tracked.target(*series);
        // The catalog's names, not the request's: a client cannot put text in every log line.
        let span = tracing::Span::current();
        span.record("template", series.template);
        span.record("op", series.op);
    })?;
    let idempotency = idempotency::key(&command, req, &principal);
    match target {
        Target::Query(q) => {
            let lookup = cache::query_lookup(&ingress.cache, q, req);
            match lookup {
                cache::QueryLookup::Hit(result) => {
                    ingress.metrics.cache(*series, true);
                    return Ok(result);
                }
                cache::QueryLookup::Miss { .. } => ingress.metrics.cache(*series, false),
                cache::QueryLookup::Bypass => {}
            }
            let result = dispatch::query(&ingress.ctx, q, command).await;
            cache::query_after(&ingress.cache, lookup, &result);
            result
        }
        Target::Template { meta, handler, op } => {
            let lookup = cache::lookup(&ingress.cache, meta, req, &command);
            // A fetch allowed only to the owner is checked on the record, cached or not; a
            // missing one is refused alike, so its existence is not revealed.
            let fetched = |result: &Result<Json, BedsError>| match (&owner, op) {
                (Some(check), Op::Fetch) => match result {
                    Ok(record) => check.record(meta, op.as_str(), Some(record)),
                    // A moved record is not here to check either: refused alike.
                    Err(e) if matches!(e.code, ErrorCode::NotFound | ErrorCode::Moved) => {
                        check.record(meta, op.as_str(), None)
                    }
                    Err(_) => Ok(()),
                },
                _ => Ok(()),
            };
            match lookup {
                cache::Lookup::Hit(record) => {
                    ingress.metrics.cache(*series, true);
                    let hit = Ok(record);
                    fetched(&hit)?;
                    return hit;
                }
                cache::Lookup::Miss { .. } => ingress.metrics.cache(*series, false),
                cache::Lookup::Bypass => {}
            }
            let owner = owner.clone().filter(|_| op != Op::Fetch);
            let result = handler(
                &ingress.ctx,
                Call::new(
                    req,
                    meta,
                    command,
                    idempotency,
                    owner,
                    crate::events::Caller::of(&principal),
                ),
            )
            .await;
            fetched(&result)?;
            cache::after(
                &ingress.cache,
                &ingress.lineage,
                meta,
                op,
                req,
                lookup,
                &result,
                cache::queried(ingress.catalog, meta),
            );
            result
        }
    }
}
