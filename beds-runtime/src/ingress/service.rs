//! What the service routes (`adm`, `mig.bulk`) share: a request published by another
//! service, read with its lineage ids, its version and calling service checked, its op run,
//! then answered and acked; an unanswerable one is dead-lettered.

use lapin::Channel;
use lapin::message::Delivery;
use serde::de::DeserializeOwned;
use serde_json::Value as Json;
use uuid::Uuid;

use crate::envelope::Reply;
use crate::error::{BedsError, ErrorCode};
use crate::ingress::accept;
use crate::ingress::settle::{Signer, ack, answer, dead_letter_or_reject};
use crate::security::Security;

/// A service route, as its checks and errors name it.
#[derive(Debug)]
pub(crate) struct ServiceRoute {
    /// The route with its article, as in "an adm request" or "a mig message".
    pub called: &'static str,
    /// The route's short name, as in "adm request version 2".
    pub name: &'static str,
    /// The node that answers it, as in "this admin reads version 1".
    pub reader: &'static str,
    /// The request version this node reads.
    pub version: u32,
    /// The roles (`security.service_roles`), any one of which admits a caller.
    pub roles: &'static [&'static str],
    /// What a caller without them may not do, as in "may not send adm commands".
    pub action: &'static str,
    /// The role to grant, as the refusal names it.
    pub grant: &'static str,
}

/// A request of a service route: its version and its lineage ids.
pub(crate) trait ServiceRequest: DeserializeOwned {
    fn version(&self) -> u32;
    /// The request's id (set here when the caller sent none) and its conversation.
    fn ids(&mut self) -> (&mut Option<Uuid>, Option<Uuid>);
}

impl ServiceRoute {
    /// Handles one delivery: reads the request, checks it and its caller, runs `op` with the
    /// request, the calling service and the correlation id, then answers and acks.
    pub(crate) async fn serve<R: ServiceRequest>(
        &self,
        channel: &Channel,
        signer: &Signer,
        security: &Security,
        delivery: &Delivery,
        op: impl AsyncFnOnce(R, String, Uuid) -> Result<Json, BedsError>,
    ) {
        let accepted = match accept::delivery(delivery, &signer.key) {
            Ok(accepted) => accepted,
            Err(error) => return self.unanswerable(channel, signer, delivery, error).await,
        };
        let caller = accepted.user_id.clone().unwrap_or_default();
        let (correlation, causation, request) = self.read::<R>(delivery);
        let result = match request {
            Ok(req) => match self.check(req.version(), security, &caller) {
                Ok(()) => op(req, caller, correlation).await,
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        if let Err(e) = &result {
            tracing::info!(code = ?e.code, reason = %e.message, "{} request refused", self.name);
        }
        let reply = Reply::to(correlation, causation, result);
        if answer(channel, signer, false, accepted.reply, &reply).await {
            ack(delivery).await;
        }
    }

    /// The request with the correlation and causation ids to answer it under (its own,
    /// else the AMQP `message_id`, else new), or why it cannot be read.
    fn read<R: ServiceRequest>(&self, delivery: &Delivery) -> (Uuid, Uuid, Result<R, BedsError>) {
        let message_id = delivery
            .properties
            .message_id()
            .as_ref()
            .and_then(|id| Uuid::parse_str(id.as_str()).ok());
        match serde_json::from_slice::<R>(&delivery.data) {
            Err(e) => {
                let id = message_id.unwrap_or_else(Uuid::now_v7);
                let code = if serde_json::from_slice::<Json>(&delivery.data).is_ok() {
                    ErrorCode::InvalidEnvelope
                } else {
                    ErrorCode::MalformedJson
                };
                let error = BedsError::new(
                    code,
                    format!(
                        "not {} request ({e}); send {{\"v\":1,\"op\":\"<name>\", ...}}",
                        self.called
                    ),
                );
                (id, id, Err(error))
            }
            Ok(mut req) => {
                let (id, correlation) = req.ids();
                let id = *id.get_or_insert(message_id.unwrap_or_else(Uuid::now_v7));
                (correlation.unwrap_or(id), id, Ok(req))
            }
        }
    }

    /// Refuses another request version, a caller without an AMQP `user_id`, and one that
    /// holds none of the route's roles.
    fn check(&self, version: u32, security: &Security, caller: &str) -> Result<(), BedsError> {
        if version != self.version {
            return Err(BedsError::new(
                ErrorCode::UnsupportedVersion,
                format!(
                    "{} request version {version}; this {} reads version {}",
                    self.name, self.reader, self.version
                ),
            ));
        }
        if caller.is_empty() {
            return Err(BedsError::new(
                ErrorCode::Unauthenticated,
                format!(
                    "{} request needs the AMQP user_id property (the calling service's login)",
                    self.called
                ),
            ));
        }
        let roles = security.service_roles(caller);
        if !roles.iter().any(|r| self.roles.contains(&r.as_str())) {
            return Err(BedsError::new(
                ErrorCode::Forbidden,
                format!(
                    "service `{caller}` may not {}: give it the role {} in \
                     security.service_roles",
                    self.action, self.grant
                ),
            ));
        }
        Ok(())
    }

    /// Dead-letters a message that cannot be answered (the reason in headers), then acks
    /// it; if that publish fails, rejects it so the queue's own dead-lettering keeps it.
    async fn unanswerable(
        &self,
        channel: &Channel,
        signer: &Signer,
        delivery: &Delivery,
        error: BedsError,
    ) {
        tracing::warn!(code = ?error.code, reason = %error.message, "dead-lettering {} message that cannot be answered", self.called);
        if !dead_letter_or_reject(channel, &signer.key, delivery, &error).await {
            tracing::error!(
                "rejecting {} dead letter failed; it will be redelivered",
                self.called
            );
        }
    }
}
