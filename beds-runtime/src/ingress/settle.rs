//! The last step: turn a delivery's outcome into reply, ack, retry or dead-letter, by the
//! error-class table (wiki/reliability.md). Every wait on the broker here is bounded, so a
//! delivery on a connection lapin has abandoned ends instead of holding its worker.
//!
//! The retry and dead-letter headers are the node's own: a client's `x-beds-*` headers are
//! dropped before the node adds its own, and what it adds is signed with the service key
//! (transport::signing). A delivery's attempt count is read only from a valid retry
//! signature, so a client cannot shorten its retries, and a delivery that came back
//! through a retry lane without one is dead-lettered as `untrusted_origin`.

use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicRejectOptions};
use lapin::types::{AMQPValue, ShortString};
use lapin::{BasicProperties, Channel};

use super::accept::{ReplyTo, caller};
use super::lane::Lane;
use crate::config::RetryConfig;
use crate::envelope::Reply;
use crate::error::{BedsError, ErrorClass, ErrorCode};
use crate::lineage::{Lineage, Parent, Record, RecordType};
use crate::telemetry::metrics::Metrics;
use crate::transport::names::{DEAD_LETTER_EXCHANGE, EXCHANGE, headers, retry_queue};
use crate::transport::publish::{CONFIRM_TIMEOUT, PublishError, Published, publish};
use crate::transport::signing::{Purpose, ServiceKey, foreign_headers};

/// How the node vouches for what it publishes.
#[derive(Debug, Clone)]
pub(crate) struct Signer {
    pub key: ServiceKey,
    /// The node's broker login, set as the replies' `user_id` (RabbitMQ refuses a
    /// `user_id` that is not the publishing connection's login, so a client can trust it).
    pub login: Option<ShortString>,
}

impl Signer {
    /// The login is the user named in the AMQP URL; none when the URL names none or the
    /// broker authenticates otherwise (EXTERNAL), since a wrong `user_id` closes the channel.
    pub fn new(key: ServiceKey, amqp_url: &str) -> Signer {
        let named = amqp_url
            .split_once("://")
            .and_then(|(_, rest)| rest.split(['/', '?']).next())
            .is_some_and(|authority| authority.contains('@'));
        let login = amqp_url
            .parse::<lapin::uri::AMQPUri>()
            .ok()
            .filter(|uri| {
                named
                    && !matches!(
                        uri.query.auth_mechanism,
                        Some(lapin::uri::SASLMechanism::External)
                    )
            })
            .map(|uri| ShortString::from(uri.authority.userinfo.username));
        Signer { key, login }
    }
}

/// The lineage of what settle publishes: the request it stands for (when its ids could be
/// read) and whether its conversation is recorded.
pub(crate) struct Trail<'a> {
    pub lineage: &'a Lineage,
    pub parent: Option<Parent>,
    pub sampled: bool,
}

impl Trail<'_> {
    /// Records what settle published on the request's behalf, if sampled.
    fn record(
        &self,
        kind: RecordType,
        id: uuid::Uuid,
        name: String,
        at: crate::value::Timestamp,
        took: std::time::Duration,
        code: Option<ErrorCode>,
    ) {
        let Some(parent) = self.parent.filter(|_| self.sampled) else {
            return;
        };
        self.lineage.record(
            Record::new(
                kind,
                id,
                parent.correlation,
                Some(parent.id),
                parent.depth + 1,
                self.lineage.origin().clone(),
                name,
                at,
            )
            .took(took)
            .ended(code),
        );
    }

    /// The signed lineage headers of a republished request, under a new id.
    fn headers(&self, id: uuid::Uuid) -> Vec<(&'static str, AMQPValue)> {
        self.parent
            .map(|p| self.lineage.headers(id, p).to_vec())
            .unwrap_or_default()
    }
}

/// How a delivery ended. Made once per delivery and moved into settle: boxing the reply
/// would only add an allocation per reply.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub(crate) enum Outcome {
    /// A reply to send (with an error or not).
    Reply { to: ReplyTo, reply: Reply },
    /// The message cannot be answered (no `reply_to`, undecodable, handler panicked).
    Unanswerable(BedsError),
    /// A read for another role's queue (`"tier": "warehouse"`): republished to
    /// `routing_key` as it came, then acked; that role answers it.
    Forward { routing_key: String },
}

impl Outcome {
    /// The error code it ends with, if any.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Outcome::Reply { reply, .. } => reply.error.as_ref().map(|e| e.code),
            Outcome::Unanswerable(e) => Some(e.code),
            Outcome::Forward { .. } => None,
        }
    }
}

/// What the settle step does with a reply, decided by its error's class.
#[derive(Debug, PartialEq, Eq)]
enum Disposition {
    /// Publish the reply, then ack.
    Answer,
    /// Park the request in the retry lane, or dead-letter and answer once attempts run out.
    Retry,
}

/// The error-class table. Transient failures of writes are retried (reads are answered: a
/// caller re-reads cheaply); `deadline_exceeded` is transient for the caller but retrying
/// cannot help once the deadline has passed, so it is answered.
fn disposition(lane: Lane, error: Option<&BedsError>) -> Disposition {
    match error {
        Some(e)
            if e.class == ErrorClass::Transient
                && e.code != ErrorCode::DeadlineExceeded
                && lane == Lane::Write =>
        {
            Disposition::Retry
        }
        _ => Disposition::Answer,
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) async fn settle(
    channel: &Channel,
    delivery: &Delivery,
    lane: Lane,
    retry: &RetryConfig,
    signer: &Signer,
    metrics: &Metrics,
    outcome: Outcome,
    trail: &Trail<'_>,
) {
    let key = &signer.key;
    let (to, reply) = match outcome {
        Outcome::Unanswerable(error) => {
            return unanswerable(channel, key, delivery, lane, metrics, error, trail).await;
        }
        Outcome::Reply { to, reply } => (to, reply),
        Outcome::Forward { routing_key } => {
            return forward(channel, key, delivery, &routing_key, trail).await;
        }
    };
    if let (Disposition::Retry, Some(error)) = (
        disposition(lane, reply.error.as_ref()),
        reply.error.as_ref(),
    ) {
        let attempt = attempts(key, delivery) + 1;
        if attempt < retry.max_attempts {
            match park_for_retry(channel, key, delivery, lane, attempt, retry, trail).await {
                Ok(()) => {
                    metrics.retried(lane);
                    ack(delivery).await;
                }
                // Not acked: the request is redelivered and tried again.
                Err(e) => {
                    tracing::warn!(error = %e, "could not park a failed write; leaving it unacked")
                }
            }
            return;
        }
        if let Err(e) =
            traced_dead_letter(channel, key, delivery, lane, error, attempt, trail).await
        {
            tracing::warn!(error = %e, "could not dead-letter a failed write; leaving it unacked");
            return;
        }
        metrics.dead_lettered(lane, error.code);
    }
    let at = crate::value::now();
    let started = std::time::Instant::now();
    if answer(channel, signer, lane == Lane::Write, to, &reply).await {
        let code = reply.error.as_ref().map(|e| e.code);
        trail.record(
            RecordType::Reply,
            reply.id,
            "reply".into(),
            at,
            started.elapsed(),
            code,
        );
        ack(delivery).await;
    }
}

/// Hands a delivery to another queue: the same body, `reply_to` and `correlation_id`, the
/// caller in the signed `x-beds-user-id` header (as a retry carries it, since RabbitMQ
/// refuses a `user_id` that is not the node's login), with its lineage headers; acked once
/// the broker has it. A failed or unroutable publish leaves the delivery unacked, to be
/// redelivered.
async fn forward(
    channel: &Channel,
    key: &ServiceKey,
    delivery: &Delivery,
    routing_key: &str,
    trail: &Trail<'_>,
) {
    let id = uuid::Uuid::now_v7();
    let at = crate::value::now();
    let started = std::time::Instant::now();
    let props = republished(key, Purpose::Retry, delivery, &trail.headers(id));
    match park(channel, EXCHANGE, routing_key, delivery, props).await {
        Ok(()) => {
            trail.record(
                RecordType::Retry,
                id,
                routing_key.to_string(),
                at,
                started.elapsed(),
                None,
            );
            ack(delivery).await;
        }
        Err(e) => {
            tracing::warn!(error = %e, routing_key, "could not forward a read; leaving it unacked")
        }
    }
}

/// Publishes the reply; true when the request may be acked. `confirmed` replies (to
/// writes) are mandatory and confirmed: the request is acked only once the broker has the
/// reply (or has said no one can receive it).
pub(crate) async fn answer(
    channel: &Channel,
    signer: &Signer,
    confirmed: bool,
    to: ReplyTo,
    reply: &Reply,
) -> bool {
    let body = serde_json::to_vec(reply).expect("replies serialize");
    let correlation = to
        .correlation
        .unwrap_or_else(|| reply.causation_id.to_string().into());
    let mut properties = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_correlation_id(correlation)
        .with_message_id(reply.id.to_string().into());
    if let Some(login) = &signer.login {
        properties = properties.with_user_id(login.clone());
    }
    let properties = signer.key.sign(Purpose::Reply, properties, &body);
    match publish(channel, "", to.queue.as_str(), confirmed, &body, properties).await {
        Ok(Published::Delivered) => true,
        Ok(Published::Unroutable) => {
            // The write is done and remembered; a resend with the same key gets this reply.
            tracing::warn!(reply_to = %to.queue, "reply unroutable: the caller's reply queue is gone");
            true
        }
        Err(e) => {
            // Not acked: redelivered (when the channel closes), then answered from the
            // idempotency record.
            tracing::warn!(reply_to = %to.queue, error = %e, "the reply was not taken; the request will be redelivered");
            false
        }
    }
}

pub(crate) async fn ack(delivery: &Delivery) {
    match tokio::time::timeout(CONFIRM_TIMEOUT, delivery.ack(BasicAckOptions::default())).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "ack failed; the request may be redelivered"),
        Err(_) => tracing::error!("ack timed out; the request may be redelivered"),
    }
}

/// Step 0: a delivery that came back through its retry lane (RabbitMQ's `x-death` names
/// the lane) must carry the retry signature the node put on it when it parked it; anyone
/// else's message there is refused before anything runs. A client's own `x-death` on a
/// direct publish only gets its message refused.
pub(crate) fn provenance(key: &ServiceKey, delivery: &Delivery) -> Result<(), BedsError> {
    let lane = retry_queue(delivery.routing_key.as_str());
    let via_retry = match delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(headers::DEATH))
    {
        Some(AMQPValue::FieldArray(deaths)) => deaths.as_slice().iter().any(|d| match d {
            AMQPValue::FieldTable(t) => match t.inner().get("queue") {
                Some(AMQPValue::LongString(q)) => q.as_bytes() == lane.as_bytes(),
                Some(AMQPValue::ShortString(q)) => q.as_str() == lane,
                _ => false,
            },
            _ => false,
        }),
        _ => false,
    };
    if !via_retry {
        return Ok(());
    }
    key.verify(Purpose::Retry, &delivery.properties, &delivery.data)
        .map_err(|why| {
            BedsError::new(
                ErrorCode::UntrustedOrigin,
                format!(
                    "arrived through the retry lane {lane} but {why}: only a node parks writes                      there; publish requests to {EXCHANGE} with routing key {}",
                    delivery.routing_key
                ),
            )
        })
}

/// Attempts a request has had: from the header of a retry the node signed, else none (a
/// client's `x-beds-attempt` is not read).
fn attempts(key: &ServiceKey, delivery: &Delivery) -> u32 {
    if key
        .verify(Purpose::Retry, &delivery.properties, &delivery.data)
        .is_err()
    {
        return 0;
    }
    delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(headers::ATTEMPT).cloned())
        .and_then(|v| match v {
            AMQPValue::LongLongInt(n) => u32::try_from(n).ok(),
            AMQPValue::LongUInt(n) => Some(n),
            AMQPValue::LongInt(n) => u32::try_from(n).ok(),
            _ => None,
        })
        .unwrap_or(0)
}

/// The original message, persistent, with every `x-beds-*` header it came with replaced
/// by `extra`, signed for `purpose`. Other headers (RabbitMQ's `x-death` included) stay.
fn republished(
    key: &ServiceKey,
    purpose: Purpose,
    delivery: &Delivery,
    extra: &[(&str, AMQPValue)],
) -> BasicProperties {
    let mut table = foreign_headers(&delivery.properties);
    if let Some(user) = caller(key, delivery) {
        table.insert(
            headers::CALLER.into(),
            AMQPValue::LongString(user.as_str().into()),
        );
    }
    for (k, v) in extra {
        table.insert((*k).into(), v.clone());
    }
    let properties = without_user_id(&delivery.properties)
        .with_headers(table)
        .with_delivery_mode(2);
    key.sign(purpose, properties, &delivery.data)
}

/// `properties` without `user_id`: RabbitMQ refuses a publish whose `user_id` is not the
/// node's own login, so a republished request carries its caller in a header instead.
fn without_user_id(p: &BasicProperties) -> BasicProperties {
    let mut out = BasicProperties::default();
    macro_rules! copy {
        ($($get:ident => $set:ident),*) => {
            $(if let Some(v) = p.$get() { out = out.$set(v.clone()); })*
        };
    }
    copy!(
        content_type => with_content_type,
        content_encoding => with_content_encoding,
        headers => with_headers,
        delivery_mode => with_delivery_mode,
        priority => with_priority,
        correlation_id => with_correlation_id,
        reply_to => with_reply_to,
        expiration => with_expiration,
        message_id => with_message_id,
        timestamp => with_timestamp,
        kind => with_type,
        app_id => with_app_id,
        cluster_id => with_cluster_id
    );
    out
}

/// Parks a failed write in the retry lane for an exponential, jittered delay.
async fn park_for_retry(
    channel: &Channel,
    key: &ServiceKey,
    delivery: &Delivery,
    lane: Lane,
    attempt: u32,
    cfg: &RetryConfig,
    trail: &Trail<'_>,
) -> Result<(), PublishError> {
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
    let id = uuid::Uuid::now_v7();
    let mut extra = trail.headers(id);
    extra.push((headers::ATTEMPT, AMQPValue::LongLongInt(i64::from(attempt))));
    // The expiration is not signed: it only says how long the lane holds the message.
    let props = republished(key, Purpose::Retry, delivery, &extra)
        .with_expiration((base + jitter).to_string().into());
    tracing::info!(
        attempt,
        delay_ms = base + jitter,
        "transient failure; retrying later"
    );
    let queue = retry_queue(delivery.routing_key.as_str());
    let at = crate::value::now();
    let started = std::time::Instant::now();
    park(channel, "", &queue, delivery, props).await?;
    trail.record(
        RecordType::Retry,
        id,
        format!("{}.retry", lane.key()),
        at,
        started.elapsed(),
        None,
    );
    Ok(())
}

/// Sends a message to the dead-letter queue, saying why in headers.
pub(crate) async fn dead_letter(
    channel: &Channel,
    key: &ServiceKey,
    delivery: &Delivery,
    error: &BedsError,
    attempt: u32,
) -> Result<(), PublishError> {
    let routing_key = delivery.routing_key.as_str();
    dead_letter_to(channel, key, delivery, error, attempt, routing_key).await
}

/// [`dead_letter`] (first attempt), then acks; if that publish fails, rejects the delivery
/// so the queue's own dead-lettering keeps it. False when the reject failed as well: the
/// delivery will be redelivered.
pub(crate) async fn dead_letter_or_reject(
    channel: &Channel,
    key: &ServiceKey,
    delivery: &Delivery,
    error: &BedsError,
) -> bool {
    if dead_letter(channel, key, delivery, error, 1).await.is_ok() {
        ack(delivery).await;
        return true;
    }
    let reject = delivery.reject(BasicRejectOptions { requeue: false });
    matches!(
        tokio::time::timeout(CONFIRM_TIMEOUT, reject).await,
        Ok(Ok(_))
    )
}

/// [`dead_letter`] to the dead-letter queue bound by `routing_key` (the consumed queue's
/// name, where the delivery's own routing key, e.g. an event's, binds none there).
pub(crate) async fn dead_letter_to(
    channel: &Channel,
    key: &ServiceKey,
    delivery: &Delivery,
    error: &BedsError,
    attempt: u32,
    routing_key: &str,
) -> Result<(), PublishError> {
    park_dead(
        channel,
        key,
        delivery,
        error,
        attempt,
        routing_key,
        Vec::new(),
    )
    .await
}

/// Dead-letters a request of a lane with its lineage headers, recorded when sampled.
async fn traced_dead_letter(
    channel: &Channel,
    key: &ServiceKey,
    delivery: &Delivery,
    lane: Lane,
    error: &BedsError,
    attempt: u32,
    trail: &Trail<'_>,
) -> Result<(), PublishError> {
    let id = uuid::Uuid::now_v7();
    let at = crate::value::now();
    let started = std::time::Instant::now();
    let routing_key = delivery.routing_key.as_str();
    park_dead(
        channel,
        key,
        delivery,
        error,
        attempt,
        routing_key,
        trail.headers(id),
    )
    .await?;
    trail.record(
        RecordType::DeadLetter,
        id,
        format!("{}.dlq", lane.key()),
        at,
        started.elapsed(),
        Some(error.code),
    );
    Ok(())
}

async fn park_dead(
    channel: &Channel,
    key: &ServiceKey,
    delivery: &Delivery,
    error: &BedsError,
    attempt: u32,
    routing_key: &str,
    mut extra: Vec<(&'static str, AMQPValue)>,
) -> Result<(), PublishError> {
    let class = serde_json::to_value(error.class).unwrap_or_default();
    let code = serde_json::to_value(error.code).unwrap_or_default();
    extra.extend([
        (headers::ATTEMPT, AMQPValue::LongLongInt(i64::from(attempt))),
        (
            headers::REASON,
            AMQPValue::LongString(error.message.as_str().into()),
        ),
        (
            headers::ERROR_CLASS,
            AMQPValue::LongString(class.as_str().unwrap_or_default().into()),
        ),
        (
            headers::ERROR_CODE,
            AMQPValue::LongString(code.as_str().unwrap_or_default().into()),
        ),
    ]);
    let props = republished(key, Purpose::DeadLetter, delivery, &extra);
    tracing::warn!(attempt, code = ?error.code, "dead-lettering");
    park(channel, DEAD_LETTER_EXCHANGE, routing_key, delivery, props).await
}

/// Republishes a delivery's body (mandatory, confirmed): no route is an error.
async fn park(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    delivery: &Delivery,
    props: BasicProperties,
) -> Result<(), PublishError> {
    match publish(channel, exchange, routing_key, true, &delivery.data, props).await? {
        Published::Delivered => Ok(()),
        Published::Unroutable => Err(PublishError::Unroutable),
    }
}

/// Dead-letters a message that cannot be answered, with the reason in headers, then acks
/// it; if that publish fails, rejects it so the queue's DLX still catches it (x-death only).
async fn unanswerable(
    channel: &Channel,
    key: &ServiceKey,
    delivery: &Delivery,
    lane: Lane,
    metrics: &Metrics,
    error: BedsError,
    trail: &Trail<'_>,
) {
    tracing::warn!(
        routing_key = %delivery.routing_key,
        message_id = ?delivery.properties.message_id(),
        code = ?error.code,
        reason = %error.message,
        "dead-lettering a message that cannot be answered"
    );
    let attempt = attempts(key, delivery) + 1;
    if let Err(why) = traced_dead_letter(channel, key, delivery, lane, &error, attempt, trail).await
    {
        tracing::warn!(why = %why, "dead-letter publish failed; rejecting instead");
        let reject = delivery.reject(BasicRejectOptions { requeue: false });
        match tokio::time::timeout(CONFIRM_TIMEOUT, reject).await {
            Ok(Ok(_)) => metrics.dead_lettered(lane, error.code),
            Ok(Err(e)) => tracing::error!(error = %e, "rejecting the dead letter failed"),
            Err(_) => tracing::error!("rejecting the dead letter timed out"),
        }
        return;
    }
    metrics.dead_lettered(lane, error.code);
    ack(delivery).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_republished_request_keeps_every_property_but_user_id() {
        let p = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_correlation_id("c".into())
            .with_reply_to("beds.reply.x".into())
            .with_message_id("m".into())
            .with_priority(3)
            .with_user_id("client-a".into());
        let out = without_user_id(&p);
        assert_eq!(out.user_id(), &None);
        assert_eq!(
            (
                out.content_type(),
                out.correlation_id(),
                out.reply_to(),
                out.message_id(),
                out.priority()
            ),
            (
                p.content_type(),
                p.correlation_id(),
                p.reply_to(),
                p.message_id(),
                p.priority()
            )
        );
    }

    #[test]
    fn replies_name_the_login_of_the_url_only() {
        let login = |url: &str| Signer::new(ServiceKey::development(), url).login;
        assert_eq!(
            login("amqp://beds-node:secret@host:5672/%2f"),
            Some("beds-node".into())
        );
        assert_eq!(login("amqp://host:5672/%2f"), None);
        assert_eq!(login("amqps://node@host/%2f?auth_mechanism=external"), None);
    }

    #[test]
    fn the_class_decides_and_only_writes_are_retried() {
        let e = |code| BedsError::new(code, "x");
        let unavailable = e(ErrorCode::DatabaseUnavailable);
        assert_eq!(
            disposition(Lane::Write, Some(&unavailable)),
            Disposition::Retry
        );
        assert_eq!(
            disposition(Lane::Read, Some(&unavailable)),
            Disposition::Answer
        );
        let late = e(ErrorCode::DeadlineExceeded);
        assert_eq!(disposition(Lane::Write, Some(&late)), Disposition::Answer);
        for code in [
            ErrorCode::InvalidInput,
            ErrorCode::NotFound,
            ErrorCode::UniqueViolation,
            ErrorCode::WrongQueue,
            ErrorCode::Unauthenticated,
            ErrorCode::Forbidden,
            ErrorCode::Internal,
        ] {
            assert_eq!(
                disposition(Lane::Write, Some(&e(code))),
                Disposition::Answer
            );
        }
        assert_eq!(disposition(Lane::Write, None), Disposition::Answer);
    }
}
