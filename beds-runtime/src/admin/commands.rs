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
use crate::error::{BedsError, ErrorCode};
use crate::ingress::service::{ServiceRequest, ServiceRoute};
use crate::ingress::settle::Signer;
use crate::node::consumer::Handler;
use crate::security::Security;
use crate::telemetry::status::ControlOp;
use crate::transport::link::Link;
use crate::transport::topology;

pub use crate::transport::names::{ADMIN_KEY, ADMIN_VERSION};
/// The role a calling service must hold (`security.service_roles`) to send commands.
pub const ADMIN_ROLE: &str = "admin";
/// The route, as its checks and errors name it.
const ADMIN_ROUTE: ServiceRoute = ServiceRoute {
    called: "an adm",
    name: "adm",
    reader: "admin",
    version: ADMIN_VERSION,
    roles: &[ADMIN_ROLE],
    action: "send adm commands",
    grant: "`admin`",
};

impl ServiceRequest for AdminRequest {
    fn version(&self) -> u32 {
        self.v
    }

    fn ids(&mut self) -> (&mut Option<Uuid>, Option<Uuid>) {
        (&mut self.id, self.correlation_id)
    }
}

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
        ADMIN_ROUTE
            .serve(
                &channel,
                &self.signer,
                &self.security,
                &delivery,
                async |mut req: AdminRequest, caller, _| {
                    req.caller = caller;
                    dispatch(&self.ctx, &req).await
                },
            )
            .await;
    }
}
