//! Step 1: the AMQP properties. A message without `reply_to`, or whose body is not UTF-8
//! JSON, cannot be answered: it is dead-lettered, not replied to.

use lapin::message::Delivery;
use lapin::types::ShortString;

use crate::error::{BedsError, ErrorCode};

/// Where and how the reply goes.
#[derive(Debug)]
pub(crate) struct ReplyTo {
    pub queue: ShortString,
    /// The AMQP correlation id the caller matches replies on, echoed back.
    pub correlation: Option<ShortString>,
}

pub(crate) fn delivery(delivery: &Delivery) -> Result<ReplyTo, BedsError> {
    let props = &delivery.properties;
    let Some(queue) = props.reply_to().clone() else {
        return Err(BedsError::new(
            ErrorCode::NoReplyTo,
            "no reply_to: the request cannot be answered",
        ));
    };
    if props
        .content_type()
        .as_ref()
        .is_some_and(|ct| ct.as_str() != "application/json")
        || std::str::from_utf8(&delivery.data).is_err()
    {
        return Err(BedsError::new(
            ErrorCode::Undecodable,
            "undecodable body: not UTF-8 JSON (or a content type other than application/json)",
        ));
    }
    Ok(ReplyTo {
        queue,
        correlation: props.correlation_id().clone(),
    })
}
