//! Step 1: the AMQP properties. A message without `reply_to` (or with an empty one), or
//! whose body is not UTF-8 JSON, cannot be answered: it is dead-lettered, not replied to,
//! before anything runs. The AMQP `user_id` (which RabbitMQ validates against the
//! connection's login) is the calling service, handed to the authorize step.

use lapin::message::Delivery;
use lapin::types::{AMQPValue, ShortString};

use crate::error::{BedsError, ErrorCode};
use crate::transport::names::{self, headers};
use crate::transport::signing::{Purpose, ServiceKey};

/// Where and how the reply goes.
#[derive(Debug)]
pub(crate) struct ReplyTo {
    pub queue: ShortString,
    /// The AMQP correlation id the caller matches replies on, echoed back.
    pub correlation: Option<ShortString>,
}

/// An answerable delivery: where the reply goes and who sent it.
#[derive(Debug)]
pub(crate) struct Accepted {
    pub reply: ReplyTo,
    pub user_id: Option<String>,
}

pub(crate) fn delivery(delivery: &Delivery, key: &ServiceKey) -> Result<Accepted, BedsError> {
    let props = &delivery.properties;
    // An empty name is the default exchange's own routing key: no queue would take the
    // reply, so it is as unanswerable as a missing one.
    let Some(queue) = props.reply_to().clone().filter(|q| !q.as_str().is_empty()) else {
        return Err(BedsError::new(
            ErrorCode::NoReplyTo,
            "no reply_to (or an empty one): the request cannot be answered",
        ));
    };
    reply_queue(queue.as_str())?;
    if let Some(ct) = props.content_type() {
        content_type(ct.as_str())?;
    }
    if std::str::from_utf8(&delivery.data).is_err() {
        return Err(BedsError::new(
            ErrorCode::Undecodable,
            "undecodable body: not UTF-8",
        ));
    }
    Ok(Accepted {
        reply: ReplyTo {
            queue,
            correlation: props.correlation_id().clone(),
        },
        user_id: caller(key, delivery)
            .map(|u| u.to_string())
            .filter(|u| !u.is_empty()),
    })
}

/// Who sent a request: its `user_id` (RabbitMQ checked it against the sender's login), or,
/// on a delivery the node republished itself (a retry, a replay), the `x-beds-user-id` it
/// carried under its retry signature. A client's own `x-beds-user-id` is never read.
pub(crate) fn caller(key: &ServiceKey, delivery: &Delivery) -> Option<ShortString> {
    if let Some(user) = delivery.properties.user_id() {
        return Some(user.clone());
    }
    key.verify(Purpose::Retry, &delivery.properties, &delivery.data)
        .ok()?;
    match delivery
        .properties
        .headers()
        .as_ref()?
        .inner()
        .get(headers::CALLER)?
    {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).as_ref().into()),
        AMQPValue::ShortString(s) => Some(s.clone()),
        _ => None,
    }
}

/// Only reply queues of the documented form are answered: a `reply_to` naming a work queue
/// or another client's queue would make the node publish there on the caller's behalf.
fn reply_queue(queue: &str) -> Result<(), BedsError> {
    if names::is_reply_queue(queue) {
        return Ok(());
    }
    Err(BedsError::new(
        ErrorCode::BadReplyTo,
        format!(
            "reply_to `{}` is not a reply queue: use `{}` or a queue of your own named `beds.reply.<unique>`",
            queue.chars().take(64).collect::<String>(),
            names::DIRECT_REPLY_TO
        ),
    ))
}

/// Accepts `application/json` in any case, with at most a `charset` parameter that says
/// UTF-8 (RFC 8259 allows no other); anything else is refused, saying what was wrong.
fn content_type(ct: &str) -> Result<(), BedsError> {
    let refuse = |why: &str| {
        Err(BedsError::new(
            ErrorCode::Undecodable,
            format!("content_type `{ct}`: {why}"),
        ))
    };
    let mut parts = ct.split(';');
    let media = parts.next().unwrap_or_default().trim();
    if !media.eq_ignore_ascii_case("application/json") {
        return refuse("the media type must be application/json");
    }
    for parameter in parts {
        let (name, value) = parameter.split_once('=').unwrap_or((parameter, ""));
        if !name.trim().eq_ignore_ascii_case("charset") {
            return refuse("the only parameter allowed is charset=utf-8");
        }
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value);
        if !value.eq_ignore_ascii_case("utf-8") {
            return refuse("the charset must be utf-8");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_documented_reply_queues_are_answered() {
        for ok in [
            "amq.rabbitmq.reply-to",
            "amq.rabbitmq.reply-to.g1h2AA5yZXBseUAxMjM0.xyz",
            "beds.reply.0193abc",
        ] {
            assert!(reply_queue(ok).is_ok(), "{ok}");
        }
        for bad in [
            "rec.read",
            "dev_rec.write",
            "beds.reply.",
            "beds.replyx",
            "amq.rabbitmq.reply-to.",
            "victim",
        ] {
            let e = reply_queue(bad).unwrap_err();
            assert_eq!(e.code, ErrorCode::BadReplyTo, "{bad}");
            assert!(e.message.contains("beds.reply.<unique>"), "{}", e.message);
        }
    }

    #[test]
    fn json_is_accepted_in_any_case_with_a_utf8_charset_only() {
        for ok in [
            "application/json",
            "Application/JSON",
            "application/json; charset=utf-8",
            "application/json;charset=\"UTF-8\"",
        ] {
            assert!(content_type(ok).is_ok(), "{ok}");
        }
        for (bad, why) in [
            ("text/plain", "media type"),
            ("application/json; charset=latin1", "utf-8"),
            ("application/json; boundary=x", "only parameter"),
            ("application/jsonx", "media type"),
        ] {
            let e = content_type(bad).unwrap_err();
            assert_eq!(e.code, ErrorCode::Undecodable);
            assert!(e.message.contains(why), "{bad}: {}", e.message);
        }
    }
}
