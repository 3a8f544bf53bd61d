//! Step: the key a write's reply is remembered under — the request's `idempotency_key`,
//! else its message id, so a redelivered copy of the same message is applied once. The
//! store claims the key in the write's own transaction (the claim must commit or roll back
//! with the write), and answers a replay with the stored reply.

use super::command::Command;
use crate::envelope::Request;

pub(crate) fn key(command: &Command, req: &Request) -> Option<String> {
    match command {
        Command::Write(_) => Some(
            req.idempotency_key
                .clone()
                .unwrap_or_else(|| req.id.to_string()),
        ),
        _ => None,
    }
}
