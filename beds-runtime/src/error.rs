//! The error contract: stable codes, each in one class that decides how it is handled.

use serde::{Deserialize, Serialize};

/// What kind of failure an error is; the class decides ack, retry or dead-letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// The message does not follow the envelope contract.
    Contract,
    /// The request is well-formed but its input breaks the declaration.
    Validation,
    NotFound,
    /// The request clashes with stored state (uniqueness, references).
    Conflict,
    /// The caller is not identified, or may not do this: answered and acked, never retried
    /// or dead-lettered.
    Forbidden,
    /// A passing failure (database unavailable, time-out); the same request may succeed later.
    Transient,
    /// A defect in BEDS; the message and logs say more.
    Internal,
}

/// Every error code BEDS answers with. Codes are stable: clients match on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    UnsupportedVersion,
    MalformedJson,
    InvalidEnvelope,
    /// The message breaks a configured bound (`limits.*`): size, depth or field count.
    TooLarge,
    UnknownDomain,
    UnknownTemplate,
    UnknownOperation,
    UnknownQuery,
    OperationNotAllowed,
    WrongQueue,
    /// The caller could not be identified: no AMQP `user_id` where one is required, or an
    /// `auth` token that is expired, badly signed or signed with an unknown key.
    Unauthenticated,
    /// The caller is identified but the template's or query's `access` rule does not let
    /// them do this (or they asserted a subject without being a trusted service).
    Forbidden,
    InvalidInput,
    NotFound,
    /// The record left the serving database for the warehouse (wiki/retention.md): `tier`
    /// says where it is; resend the request with `"tier": "warehouse"`.
    Moved,
    UniqueViolation,
    ReferenceNotFound,
    StillReferenced,
    /// `expect_version` did not match; `current_version` says what it is.
    VersionConflict,
    /// An idempotency key was reused for a different operation.
    IdempotencyKeyReused,
    /// The record is leased to another holder; `locked_until` says until when.
    Locked,
    DatabaseUnavailable,
    /// The request's deadline passed before it ran; it was not executed.
    DeadlineExceeded,
    /// Dead-letter only: the message had no `reply_to`.
    NoReplyTo,
    /// Dead-letter only: the body was not UTF-8 JSON.
    Undecodable,
    /// Dead-letter only: `reply_to` names no reply queue (only `amq.rabbitmq.reply-to` and
    /// `beds.reply.*` are answered).
    BadReplyTo,
    /// Dead-letter only: the message claims to come from a node (a retry, an event, an
    /// invalidation) without a valid signature.
    UntrustedOrigin,
    /// Dead-letter only: the handler panicked on this message.
    HandlerPanicked,
    Internal,
    /// A code this client does not know yet (sent by a newer server).
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    pub fn class(self) -> ErrorClass {
        use ErrorCode::*;
        match self {
            UnsupportedVersion | MalformedJson | InvalidEnvelope | TooLarge | UnknownDomain
            | UnknownTemplate | UnknownOperation | UnknownQuery | OperationNotAllowed
            | WrongQueue => ErrorClass::Contract,
            Unauthenticated | Forbidden => ErrorClass::Forbidden,
            InvalidInput => ErrorClass::Validation,
            NotFound | Moved => ErrorClass::NotFound,
            UniqueViolation | ReferenceNotFound | StillReferenced | VersionConflict
            | IdempotencyKeyReused | Locked => ErrorClass::Conflict,
            DatabaseUnavailable | DeadlineExceeded => ErrorClass::Transient,
            NoReplyTo | Undecodable | BadReplyTo | UntrustedOrigin => ErrorClass::Contract,
            HandlerPanicked | Internal | Unknown => ErrorClass::Internal,
        }
    }
}

/// What is wrong with one part of the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DetailCode {
    Missing,
    Unknown,
    WrongType,
    TooShort,
    TooLong,
    BelowMin,
    AboveMax,
    InvalidFormat,
    NotNullable,
    ReadOnly,
    Empty,
    /// A key sent twice in one object (`data`, `key`, `params` or inside a value).
    Duplicate,
    #[serde(other)]
    Other,
}

/// The most details one error lists.
pub const MAX_DETAILS: usize = 20;

/// One problem with one input field (`field` is a path like `data.handle` or `key.id`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub field: String,
    pub code: DetailCode,
    pub message: String,
}

/// An error as it travels in a reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code:?} ({class:?}): {message}")]
pub struct BedsError {
    pub code: ErrorCode,
    pub class: ErrorClass,
    pub message: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<ErrorDetail>,
    /// For `version_conflict`: the record's version now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_version: Option<i64>,
    /// For `locked`: when the lease held by another holder expires (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locked_until: Option<String>,
    /// For `moved`: where the record is now, `warehouse` or `cold`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<crate::tier::Tier>,
}

impl BedsError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        BedsError {
            code,
            class: code.class(),
            message: message.into(),
            details: Vec::new(),
            current_version: None,
            locked_until: None,
            tier: None,
        }
    }

    /// A validation error listing every field problem at once.
    /// At most [`MAX_DETAILS`] are listed, so a reply never grows with the input.
    pub fn invalid(mut details: Vec<ErrorDetail>) -> Self {
        let message = match details.as_slice() {
            [one] => format!("{}: {}", one.field, one.message),
            many if many.len() > MAX_DETAILS => format!(
                "{} fields are invalid; the first {MAX_DETAILS} are listed",
                many.len()
            ),
            many => format!("{} fields are invalid", many.len()),
        };
        details.truncate(MAX_DETAILS);
        BedsError {
            details,
            ..BedsError::new(ErrorCode::InvalidInput, message)
        }
    }

    pub fn detail(field: impl Into<String>, code: DetailCode, message: impl Into<String>) -> Self {
        BedsError::invalid(vec![ErrorDetail {
            field: field.into(),
            code,
            message: message.into(),
        }])
    }
}
