//! Step: the key a write's reply is remembered under — the request's `idempotency_key`,
//! else its message id, so a redelivered copy of the same message is applied once. The
//! store claims the key in the write's own transaction (the claim must commit or roll back
//! with the write), and answers a replay with the stored reply.
//!
//! The key is scoped to the caller: what is stored is a UUIDv5 of (calling service,
//! subject, key), so another caller reusing a key gets its own write, never the first
//! caller's reply, and a client cannot send a stored key to read someone else's reply.

use super::command::Command;
use crate::envelope::Request;
use crate::security::Principal;
use crate::store::IdempotencyKey;

/// The namespace of stored idempotency keys (a UUIDv5 namespace of its own).
const NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x6b1e_4c0a_9d3f_5e27_8a41_2f90_c3d7_b5e8);

pub(crate) fn key(command: &Command, req: &Request, caller: &Principal) -> Option<IdempotencyKey> {
    match command {
        Command::Write(_) => {
            let key = req
                .idempotency_key
                .clone()
                .unwrap_or_else(|| req.id.to_string());
            let scoped = serde_json::json!([caller.service, caller.subject, key]).to_string();
            Some(IdempotencyKey {
                stored: uuid::Uuid::new_v5(&NAMESPACE, scoped.as_bytes()).to_string(),
                given: key,
            })
        }
        _ => None,
    }
}
