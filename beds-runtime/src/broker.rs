//! Broker pools: consumers on `rec.read` (rBroker) and `rec.write` (wBroker) that decode,
//! validate, dispatch, reply on `reply_to` with the `correlation_id`, then ack.

use std::sync::Arc;

use futures_util::{FutureExt, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    BasicRejectOptions, ConfirmSelectOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::config::{AmqpConfig, DEAD_LETTER_EXCHANGE, PoolConfig, RetryConfig};
use crate::dispatch::Ctx;
use crate::envelope::{Op, Reply, Request};
use crate::error::{BedsError, DetailCode, ErrorCode};
use crate::meta::{Catalog, RouteError};
use crate::topology;
use crate::topology::{READ_KEY, WRITE_KEY};

/// Which queue a pool consumes, and so which operations it accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    Read,
    Write,
}

impl Lane {
    pub fn key(self) -> &'static str {
        match self {
            Lane::Read => READ_KEY,
            Lane::Write => WRITE_KEY,
        }
    }

    pub fn broker(self) -> &'static str {
        match self {
            Lane::Read => "rBroker",
            Lane::Write => "wBroker",
        }
    }

    pub fn of(op: Op) -> Lane {
        if op.is_write() {
            Lane::Write
        } else {
            Lane::Read
        }
    }
}

/// What every worker of a node shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub ctx: Ctx,
    pub catalog: &'static Catalog,
    pub retry: RetryConfig,
}

/// One consumer of a pool: its own channel, its own prefetch window.
pub(crate) struct Worker {
    pub lane: Lane,
    pub amqp: AmqpConfig,
    pub tag: String,
    pub pool: PoolConfig,
    pub shared: Arc<Shared>,
}

/// Why a worker's run ended.
#[derive(Debug)]
pub(crate) enum WorkerExit {
    /// The stop token fired and in-flight deliveries were finished.
    Stopped,
    /// The run failed; the supervisor starts a new one.
    Failed(String),
}

impl Worker {
    /// Declares its queue (so a deleted queue comes back), consumes until `stop` fires,
    /// then cancels the consumer, finishes every delivery already received and closes the
    /// channel; unacked messages go back to the queue. Connection losses are waited out
    /// (lapin recovers the channel and the consumer); anything else ends the run.
    pub async fn run(&self, conn: &Connection, stop: &CancellationToken) -> WorkerExit {
        let queue = self.amqp.queue(self.lane.key());
        let fail = |what: &str, e: lapin::Error| WorkerExit::Failed(format!("{what}: {e}"));
        let channel = match conn.create_channel().await {
            Ok(c) => c,
            Err(e) => return fail("opening a channel", e),
        };
        if let Err(e) = topology::declare(&channel, &self.amqp, &[self.lane.key()]).await {
            return fail("declaring the queue", e);
        }
        // Replies to writes are confirmed by the broker before the request is acked.
        if self.lane == Lane::Write
            && let Err(e) = channel
                .confirm_select(ConfirmSelectOptions::default())
                .await
        {
            return fail("enabling publisher confirms", e);
        }
        if let Err(e) = channel
            .basic_qos(self.pool.prefetch, BasicQosOptions::default())
            .await
        {
            return fail("setting prefetch", e);
        }
        let mut consumer = match channel
            .basic_consume(
                queue.as_str().into(),
                self.tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
        {
            Ok(c) => c,
            Err(e) => return fail("consuming", e),
        };
        tracing::debug!(queue = %queue, tag = %self.tag, "consuming");
        let in_flight = TaskTracker::new();
        let mut cancelled = false;
        // A connection lapin has given up on ends the run, so the supervisor reconnects.
        let mut watchdog = tokio::time::interval(std::time::Duration::from_secs(1));
        let mut watch = crate::link::Watch::default();
        let exit = loop {
            let next = if cancelled {
                consumer.next().await
            } else {
                tokio::select! {
                    biased;
                    _ = watchdog.tick() => {
                        if watch.dead(conn) {
                            break WorkerExit::Failed("the connection is closed and will not recover".into());
                        }
                        continue;
                    }
                    () = stop.cancelled() => {
                        cancelled = true;
                        // Deliveries already buffered still arrive before the stream ends.
                        if let Err(e) = channel
                            .basic_cancel(self.tag.as_str().into(), BasicCancelOptions::default())
                            .await
                        {
                            tracing::warn!(error = %e, "cancelling the consumer failed");
                            break WorkerExit::Stopped;
                        }
                        continue;
                    }
                    next = consumer.next() => next,
                }
            };
            match next {
                Some(Ok(delivery)) => {
                    let shared = self.shared.clone();
                    let channel = channel.clone();
                    let lane = self.lane;
                    in_flight.spawn(handle(shared, channel, lane, delivery));
                }
                Some(Err(e)) => {
                    tracing::warn!(queue = %queue, error = %e, "consumer interrupted; waiting for recovery");
                    // Bounded: if lapin gives up silently, the watchdog ends the run.
                    let wait = std::time::Duration::from_secs(5);
                    match tokio::time::timeout(wait, channel.wait_for_recovery(e)).await {
                        Ok(Ok(())) => tracing::info!(queue = %queue, "consumer recovered"),
                        Ok(Err(e)) => break fail("consumer", e),
                        Err(_) => {}
                    }
                }
                None if cancelled => break WorkerExit::Stopped,
                None => break WorkerExit::Failed("the broker cancelled the consumer".into()),
            }
        };
        in_flight.close();
        in_flight.wait().await;
        if let Err(e) = channel.close(200, "worker done".into()).await {
            tracing::debug!(error = %e, "channel close");
        }
        exit
    }
}

/// Handles one delivery to the end: reply then ack, or reject to the dead-letter queue.
async fn handle(
    shared: Arc<Shared>,
    channel: Channel,
    lane: Lane,
    delivery: lapin::message::Delivery,
) {
    let props = &delivery.properties;
    let Some(reply_to) = props.reply_to().clone() else {
        let e = BedsError::new(
            ErrorCode::NoReplyTo,
            "no reply_to: the request cannot be answered",
        );
        return reject(&channel, &delivery, e).await;
    };
    if props
        .content_type()
        .as_ref()
        .is_some_and(|ct| ct.as_str() != "application/json")
        || std::str::from_utf8(&delivery.data).is_err()
    {
        let e = BedsError::new(
            ErrorCode::Undecodable,
            "undecodable body: not UTF-8 JSON (or a content type other than application/json)",
        );
        return reject(&channel, &delivery, e).await;
    }
    // The reply echoes the AMQP correlation id the caller matches on.
    let correlation = props.correlation_id().clone();
    // Each delivery already runs in its own task; catching the unwind here keeps a panicking
    // handler from taking its worker down, without a second task or a copy of the body.
    let work = std::panic::AssertUnwindSafe(answer(&shared, lane, &delivery.data)).catch_unwind();
    let reply = match work.await {
        Ok(reply) => reply,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::error!(panic = %what, "handler panicked");
            let e = BedsError::new(
                ErrorCode::HandlerPanicked,
                format!("the handler panicked: {what}"),
            );
            return reject(&channel, &delivery, e).await;
        }
    };
    // A write that failed transiently goes round the retry lane, until its attempts run out;
    // then it is dead-lettered with the reason and answered with the error.
    if lane == Lane::Write
        && let Some(error) = reply
            .error
            .as_ref()
            .filter(|e| e.code == ErrorCode::DatabaseUnavailable)
    {
        let attempt = attempts(&delivery) + 1;
        let parked = if attempt < shared.retry.max_attempts {
            retry(&channel, &delivery, attempt, &shared.retry).await
        } else {
            dead_letter(&channel, &delivery, error, attempt).await
        };
        match parked {
            Err(e) => {
                // Not acked: the request is redelivered and tried again.
                tracing::warn!(error = %e, "could not park a failed write; leaving it unacked");
                return;
            }
            Ok(()) if attempt < shared.retry.max_attempts => {
                if let Err(e) = delivery.ack(BasicAckOptions::default()).await {
                    tracing::error!(error = %e, "ack failed; the request may be redelivered");
                }
                return;
            }
            Ok(()) => {}
        }
    }
    let body = serde_json::to_vec(&reply).expect("replies serialize");
    let correlation = correlation.unwrap_or_else(|| reply.causation_id.to_string().into());
    let properties = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_correlation_id(correlation)
        .with_message_id(reply.id.to_string().into());
    // Write replies are mandatory and confirmed: the request is acked only once the broker
    // has the reply (or has said no one can receive it).
    let confirmed = lane == Lane::Write;
    let published = channel
        .basic_publish(
            "".into(),
            reply_to.clone(),
            BasicPublishOptions {
                mandatory: confirmed,
                ..BasicPublishOptions::default()
            },
            &body,
            properties,
        )
        .await;
    let confirmation = match published {
        Ok(pending) if confirmed => pending.await,
        Ok(_) => Ok(lapin::Confirmation::NotRequested),
        Err(e) => Err(e),
    };
    match confirmation {
        Ok(lapin::Confirmation::Nack(_)) => {
            // Not acked: redelivered, then answered from the idempotency record.
            tracing::warn!(reply_to = %reply_to, "the broker refused the reply; the request will be redelivered");
            return;
        }
        Ok(lapin::Confirmation::Ack(Some(_))) => {
            // The write is done and remembered; a resend with the same key gets this reply.
            tracing::warn!(reply_to = %reply_to, "reply unroutable: the caller's reply queue is gone");
        }
        Ok(_) => {}
        Err(e) => {
            // Not acked: the request returns to the queue when the channel closes.
            tracing::warn!(reply_to = %reply_to, error = %e, "publishing the reply failed");
            return;
        }
    }
    if let Err(e) = delivery.ack(BasicAckOptions::default()).await {
        tracing::error!(error = %e, "ack failed; the request may be redelivered");
    }
}

/// Header counting the attempts a request has had.
const ATTEMPT_HEADER: &str = "x-beds-attempt";

fn attempts(delivery: &lapin::message::Delivery) -> u32 {
    delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(ATTEMPT_HEADER).cloned())
        .and_then(|v| match v {
            AMQPValue::LongLongInt(n) => u32::try_from(n).ok(),
            AMQPValue::LongUInt(n) => Some(n),
            AMQPValue::LongInt(n) => u32::try_from(n).ok(),
            _ => None,
        })
        .unwrap_or(0)
}

/// The original message with `extra` headers added, persistent.
fn republished(
    delivery: &lapin::message::Delivery,
    extra: &[(&str, AMQPValue)],
) -> BasicProperties {
    let mut headers = delivery.properties.headers().clone().unwrap_or_default();
    for (k, v) in extra {
        headers.insert((*k).into(), v.clone());
    }
    delivery
        .properties
        .clone()
        .with_headers(headers)
        .with_delivery_mode(2)
}

/// Parks a failed write in the retry lane for an exponential, jittered delay.
async fn retry(
    channel: &Channel,
    delivery: &lapin::message::Delivery,
    attempt: u32,
    cfg: &RetryConfig,
) -> Result<(), String> {
    let base = cfg
        .backoff
        .0
        .saturating_mul(1 << (attempt - 1).min(16))
        .min(cfg.max_backoff.0);
    // Up to a quarter more, so retries of a burst spread out.
    let jitter = u64::from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .subsec_nanos(),
    ) % (base / 4 + 1);
    let props = republished(
        delivery,
        &[(ATTEMPT_HEADER, AMQPValue::LongLongInt(i64::from(attempt)))],
    )
    .with_expiration((base + jitter).to_string().into());
    tracing::info!(
        attempt,
        delay_ms = base + jitter,
        "transient failure; retrying later"
    );
    let lane = topology::retry_queue(delivery.routing_key.as_str());
    park(channel, "", &lane, delivery, props).await
}

/// Sends a request that ran out of attempts to the dead-letter queue, saying why.
async fn dead_letter(
    channel: &Channel,
    delivery: &lapin::message::Delivery,
    error: &BedsError,
    attempt: u32,
) -> Result<(), String> {
    let class = serde_json::to_value(error.class).unwrap_or_default();
    let code = serde_json::to_value(error.code).unwrap_or_default();
    let props = republished(
        delivery,
        &[
            (ATTEMPT_HEADER, AMQPValue::LongLongInt(i64::from(attempt))),
            (
                "x-beds-reason",
                AMQPValue::LongString(error.message.as_str().into()),
            ),
            (
                "x-beds-error-class",
                AMQPValue::LongString(class.as_str().unwrap_or_default().into()),
            ),
            (
                "x-beds-error-code",
                AMQPValue::LongString(code.as_str().unwrap_or_default().into()),
            ),
        ],
    );
    tracing::warn!(attempt, code = ?error.code, "dead-lettering");
    let key = delivery.routing_key.as_str();
    park(channel, DEAD_LETTER_EXCHANGE, key, delivery, props).await
}

/// Republishes a delivery's body (mandatory) and waits for the broker to take it; a
/// refusal or no route is an error.
async fn park(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    delivery: &lapin::message::Delivery,
    props: BasicProperties,
) -> Result<(), String> {
    let published = channel
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            &delivery.data,
            props,
        )
        .await;
    match published.map_err(|e| e.to_string())?.await {
        Ok(lapin::Confirmation::Ack(None) | lapin::Confirmation::NotRequested) => Ok(()),
        Ok(_) => Err("the broker refused the message or could not route it".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// Decodes and dispatches a body; every failure becomes an error reply.
async fn answer(shared: &Shared, lane: Lane, body: &[u8]) -> Reply {
    match Request::decode(body) {
        Ok(req) => {
            let result = match req.deadline {
                Some(deadline) if deadline < chrono::Utc::now() => Err(BedsError::new(
                    ErrorCode::DeadlineExceeded,
                    format!(
                        "the request's deadline {deadline} passed before it ran; it was not executed"
                    ),
                )),
                _ => dispatch(shared, lane, &req).await,
            };
            if let Err(e) = &result {
                tracing::debug!(id = %req.id, code = ?e.code, message = %e.message, "request failed");
            }
            Reply::to(req.conversation(), req.id, result)
        }
        Err(e) => {
            tracing::debug!(code = ?e.code, message = %e.message, "request rejected at decode");
            Reply::to(Uuid::nil(), Uuid::nil(), Err(e))
        }
    }
}

async fn dispatch(
    shared: &Shared,
    lane: Lane,
    req: &Request,
) -> Result<serde_json::Value, BedsError> {
    let catalog = shared.catalog;
    let op = Op::parse(&req.op);
    let unknown = |e: RouteError| match e {
        RouteError::UnknownDomain => BedsError::new(
            ErrorCode::UnknownDomain,
            format!(
                "unknown domain `{}`; this node serves: {}",
                req.domain,
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
                req.template,
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
                req.query.as_deref().unwrap_or(""),
                known(catalog, &req.domain, |d| d
                    .queries
                    .iter()
                    .map(|q| q.name)
                    .collect())
            ),
        ),
    };
    let check_lane = |op: Op| {
        if Lane::of(op) == lane {
            return Ok(());
        }
        Err(BedsError::new(
            ErrorCode::WrongQueue,
            format!(
                "`{}` is a {} operation; publish it with routing key {}",
                op.as_str(),
                if op.is_write() { "write" } else { "read" },
                Lane::of(op).key()
            ),
        ))
    };
    if op == Some(Op::Query) {
        let name = req.query.as_deref().ok_or_else(|| {
            BedsError::detail(
                "query",
                DetailCode::Missing,
                "`query` needs the query's name in `query`",
            )
        })?;
        let meta = catalog.query(&req.domain, name).map_err(unknown)?;
        check_lane(Op::Query)?;
        return crate::dispatch::query(&shared.ctx, meta, req).await;
    }
    let routes = catalog.route(&req.domain, &req.template).map_err(unknown)?;
    let op = op.ok_or_else(|| {
        BedsError::new(
            ErrorCode::UnknownOperation,
            format!(
                "unknown operation `{}`; operations: {}",
                req.op,
                Op::ALL.map(Op::as_str).join(", ")
            ),
        )
    })?;
    check_lane(op)?;
    (routes.handler(op))(&shared.ctx, req).await
}

fn known(
    catalog: &Catalog,
    domain: &str,
    names: impl Fn(&crate::meta::DomainMeta) -> Vec<&'static str>,
) -> String {
    catalog
        .domains
        .iter()
        .find(|d| d.name == domain)
        .map(|d| names(d).join(", "))
        .unwrap_or_default()
}

/// Rejects without requeue: the queue dead-letters it to `{queue}.dlq`.
/// Dead-letters a message that cannot be answered, with the reason in headers, then acks
/// it; if that publish fails, rejects it so the queue's DLX still catches it (x-death only).
async fn reject(channel: &Channel, delivery: &lapin::message::Delivery, error: BedsError) {
    tracing::warn!(
        routing_key = %delivery.routing_key,
        message_id = ?delivery.properties.message_id(),
        code = ?error.code,
        reason = %error.message,
        "dead-lettering a message that cannot be answered"
    );
    let done = match dead_letter(channel, delivery, &error, attempts(delivery) + 1).await {
        Ok(()) => delivery.ack(BasicAckOptions::default()).await,
        Err(why) => {
            tracing::warn!(why = %why, "dead-letter publish failed; rejecting instead");
            delivery.reject(BasicRejectOptions { requeue: false }).await
        }
    };
    if let Err(e) = done {
        tracing::error!(error = %e, "settling the dead letter failed");
    }
}
