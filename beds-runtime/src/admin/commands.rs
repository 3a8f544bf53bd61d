//! The `adm` route: administrative commands over AMQP (wiki/operations.md).
//!
//! A request is `{"v":1,"op":"<name>", ...op fields}` published to `beds.events` with
//! routing key `{queue_tag}adm`, with `reply_to` and `correlation_id` like a data request;
//! the reply has the data reply's shape. The caller is the AMQP `user_id`, required, and
//! must hold the role `admin` (`security.service_roles`).
//!
//! Adding an op: a name in [`OPS`] and an arm in [`dispatch`].

use std::sync::Arc;

use lapin::Channel;
use lapin::message::Delivery;
use serde_json::{Value as Json, json};
use uuid::Uuid;

pub use super::request::AdminRequest;
use super::store::AdminStore;
use crate::catalog::Catalog;
use crate::config::Config;
use crate::envelope::Reply;
use crate::error::{BedsError, ErrorCode};
use crate::ingress::accept;
use crate::ingress::settle::{Signer, ack, answer, dead_letter_or_reject};
use crate::node::consumer::Handler;
use crate::security::Security;
use crate::telemetry::status::ControlOp;
use crate::transport::link::Link;
use crate::transport::topology;

pub use crate::transport::names::{ADMIN_KEY, ADMIN_VERSION};
/// The role a calling service must hold (`security.service_roles`) to send commands.
pub const ADMIN_ROLE: &str = "admin";

/// The ops the admin answers.
pub const OPS: &[&str] = &[
    "ping", "audit", "diag", "pause", "resume", "drain", "lineage",
];

/// Runs one op. Each arm hands the request to the module that owns the op.
pub(crate) async fn dispatch(ctx: &AdminCtx, req: &AdminRequest) -> Result<Json, BedsError> {
    match req.op.as_str() {
        "ping" => ping(ctx),
        "audit" => super::audit::query(&ctx.store, ctx.catalog, req).await,
        "diag" => ctx.nodes.diag(),
        "pause" => ctx.nodes.lane(ControlOp::Pause, req).await,
        "resume" => ctx.nodes.lane(ControlOp::Resume, req).await,
        "drain" => ctx.nodes.lane(ControlOp::Drain, req).await,
        "lineage" => super::lineage::query(&ctx.store, req).await,
        other => Err(unknown_op(other)),
    }
}

/// What every op handler may use: the admin's database, the compiled catalog, the node's
/// configuration and its broker connection.
#[derive(Debug)]
pub struct AdminCtx {
    pub store: AdminStore,
    pub catalog: &'static Catalog,
    pub config: Arc<Config>,
    pub link: Arc<Link>,
    /// The node table and the lane commands (`diag`, `pause`, `resume`, `drain`).
    pub nodes: Arc<super::control::NodeControl>,
}

/// `unknown_operation`, naming the ops there are.
fn unknown_op(op: &str) -> BedsError {
    BedsError::new(
        ErrorCode::UnknownOperation,
        format!(
            "unknown adm op `{op}`{}; the admin answers {}",
            crate::suggest::did_you_mean(op, OPS),
            OPS.join(", ")
        ),
    )
}

/// `ping`: the admin node's name, environment and version.
fn ping(ctx: &AdminCtx) -> Result<Json, BedsError> {
    Ok(json!({
        "node": ctx.config.node,
        "env": ctx.config.env,
        "role": ctx.config.role.name(),
        "version": env!("CARGO_PKG_VERSION"),
    }))
}

/// The consumer of `{queue_tag}adm`.
#[derive(Debug)]
pub(crate) struct Commands {
    pub ctx: Arc<AdminCtx>,
    pub signer: Signer,
    pub security: Arc<Security>,
}

impl Handler for Commands {
    async fn declare(&self, channel: &Channel) -> lapin::Result<()> {
        topology::declare(channel, &self.ctx.config.amqp, &[ADMIN_KEY]).await
    }

    async fn handle(self: Arc<Self>, channel: Channel, delivery: Delivery) {
        let accepted = match accept::delivery(&delivery, &self.signer.key) {
            Ok(accepted) => accepted,
            Err(error) => return self.unanswerable(&channel, &delivery, error).await,
        };
        let message_id = delivery
            .properties
            .message_id()
            .as_ref()
            .and_then(|id| Uuid::parse_str(id.as_str()).ok());
        let (correlation, causation, result) =
            match serde_json::from_slice::<AdminRequest>(&delivery.data) {
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
                            "not an adm request ({e}); send {{\"v\":1,\"op\":\"<name>\", ...}}"
                        ),
                    );
                    (id, id, Err(error))
                }
                Ok(mut req) => {
                    let id = *req
                        .id
                        .get_or_insert(message_id.unwrap_or_else(Uuid::now_v7));
                    let correlation = req.correlation_id.unwrap_or(id);
                    req.caller = accepted.user_id.clone().unwrap_or_default();
                    (correlation, id, self.run(&req).await)
                }
            };
        if let Err(e) = &result {
            tracing::info!(code = ?e.code, reason = %e.message, "adm request refused");
        }
        let reply = Reply::to(correlation, causation, result);
        if answer(&channel, &self.signer, false, accepted.reply, &reply).await {
            ack(&delivery).await;
        }
    }
}

impl Commands {
    /// Checks version and caller, then runs the op.
    async fn run(&self, req: &AdminRequest) -> Result<Json, BedsError> {
        if req.v != ADMIN_VERSION {
            return Err(BedsError::new(
                ErrorCode::UnsupportedVersion,
                format!(
                    "adm request version {}; this admin reads version {ADMIN_VERSION}",
                    req.v
                ),
            ));
        }
        if req.caller.is_empty() {
            return Err(BedsError::new(
                ErrorCode::Unauthenticated,
                "an adm request needs the AMQP user_id property (the calling service's login)",
            ));
        }
        if !self
            .security
            .service_roles(&req.caller)
            .iter()
            .any(|r| r == ADMIN_ROLE)
        {
            return Err(BedsError::new(
                ErrorCode::Forbidden,
                format!(
                    "service `{}` may not send adm commands: give it the role `{ADMIN_ROLE}` in security.service_roles",
                    req.caller
                ),
            ));
        }
        dispatch(&self.ctx, req).await
    }

    /// Dead-letters a message that cannot be answered (the reason in headers), then acks
    /// it; if that publish fails, rejects it so the queue's own dead-lettering keeps it.
    async fn unanswerable(&self, channel: &Channel, delivery: &Delivery, error: BedsError) {
        tracing::warn!(code = ?error.code, reason = %error.message, "dead-lettering an adm message that cannot be answered");
        if !dead_letter_or_reject(channel, &self.signer.key, delivery, &error).await {
            tracing::error!("rejecting an adm dead letter failed; it will be redelivered");
        }
    }
}
