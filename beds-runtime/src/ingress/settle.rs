//! The last step: turn a delivery's outcome into reply, ack, retry or dead-letter, by the
//! error-class table (wiki/reliability.md). Every wait on the broker here is bounded, so a
//! delivery on a connection lapin has abandoned ends instead of holding its worker.

use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicRejectOptions};
use lapin::types::AMQPValue;
use lapin::{BasicProperties, Channel};

use super::accept::ReplyTo;
use super::lane::Lane;
use crate::config::RetryConfig;
use crate::envelope::Reply;
use crate::error::{BedsError, ErrorClass, ErrorCode};
use crate::transport::names::{DEAD_LETTER_EXCHANGE, headers, retry_queue};
use crate::transport::publish::{CONFIRM_TIMEOUT, PublishError, Published, publish};

/// How a delivery ended.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// A reply to send (with an error or not).
    Reply { to: ReplyTo, reply: Reply },
    /// The message cannot be answered (no `reply_to`, undecodable, handler panicked).
    Unanswerable(BedsError),
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

pub(crate) async fn settle(
    channel: &Channel,
    delivery: &Delivery,
    lane: Lane,
    retry: &RetryConfig,
    outcome: Outcome,
) {
    let (to, reply) = match outcome {
        Outcome::Unanswerable(error) => return unanswerable(channel, delivery, error).await,
        Outcome::Reply { to, reply } => (to, reply),
    };
    if let (Disposition::Retry, Some(error)) = (
        disposition(lane, reply.error.as_ref()),
        reply.error.as_ref(),
    ) {
        let attempt = attempts(delivery) + 1;
        if attempt < retry.max_attempts {
            match park_for_retry(channel, delivery, attempt, retry).await {
                Ok(()) => ack(delivery).await,
                // Not acked: the request is redelivered and tried again.
                Err(e) => {
                    tracing::warn!(error = %e, "could not park a failed write; leaving it unacked")
                }
            }
            return;
        }
        if let Err(e) = dead_letter(channel, delivery, error, attempt).await {
            tracing::warn!(error = %e, "could not dead-letter a failed write; leaving it unacked");
            return;
        }
    }
    if answer(channel, lane, to, &reply).await {
        ack(delivery).await;
    }
}

/// Publishes the reply; true when the request may be acked. Write replies are mandatory
/// and confirmed: the request is acked only once the broker has the reply (or has said no
/// one can receive it).
async fn answer(channel: &Channel, lane: Lane, to: ReplyTo, reply: &Reply) -> bool {
    let body = serde_json::to_vec(reply).expect("replies serialize");
    let correlation = to
        .correlation
        .unwrap_or_else(|| reply.causation_id.to_string().into());
    let properties = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_correlation_id(correlation)
        .with_message_id(reply.id.to_string().into());
    let confirmed = lane == Lane::Write;
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

async fn ack(delivery: &Delivery) {
    match tokio::time::timeout(CONFIRM_TIMEOUT, delivery.ack(BasicAckOptions::default())).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "ack failed; the request may be redelivered"),
        Err(_) => tracing::error!("ack timed out; the request may be redelivered"),
    }
}

/// Attempts a request has had, from its header.
fn attempts(delivery: &Delivery) -> u32 {
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

/// The original message with `extra` headers added, persistent.
fn republished(delivery: &Delivery, extra: &[(&str, AMQPValue)]) -> BasicProperties {
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
async fn park_for_retry(
    channel: &Channel,
    delivery: &Delivery,
    attempt: u32,
    cfg: &RetryConfig,
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
    let props = republished(
        delivery,
        &[(headers::ATTEMPT, AMQPValue::LongLongInt(i64::from(attempt)))],
    )
    .with_expiration((base + jitter).to_string().into());
    tracing::info!(
        attempt,
        delay_ms = base + jitter,
        "transient failure; retrying later"
    );
    let lane = retry_queue(delivery.routing_key.as_str());
    park(channel, "", &lane, delivery, props).await
}

/// Sends a request to the dead-letter queue, saying why in headers.
async fn dead_letter(
    channel: &Channel,
    delivery: &Delivery,
    error: &BedsError,
    attempt: u32,
) -> Result<(), PublishError> {
    let class = serde_json::to_value(error.class).unwrap_or_default();
    let code = serde_json::to_value(error.code).unwrap_or_default();
    let props = republished(
        delivery,
        &[
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
        ],
    );
    tracing::warn!(attempt, code = ?error.code, "dead-lettering");
    let key = delivery.routing_key.as_str();
    park(channel, DEAD_LETTER_EXCHANGE, key, delivery, props).await
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
async fn unanswerable(channel: &Channel, delivery: &Delivery, error: BedsError) {
    tracing::warn!(
        routing_key = %delivery.routing_key,
        message_id = ?delivery.properties.message_id(),
        code = ?error.code,
        reason = %error.message,
        "dead-lettering a message that cannot be answered"
    );
    if let Err(why) = dead_letter(channel, delivery, &error, attempts(delivery) + 1).await {
        tracing::warn!(why = %why, "dead-letter publish failed; rejecting instead");
        let reject = delivery.reject(BasicRejectOptions { requeue: false });
        match tokio::time::timeout(CONFIRM_TIMEOUT, reject).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "rejecting the dead letter failed"),
            Err(_) => tracing::error!("rejecting the dead letter timed out"),
        }
        return;
    }
    ack(delivery).await;
}

#[cfg(test)]
mod tests {
    use super::*;

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
