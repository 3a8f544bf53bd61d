//! The adm ops on nodes: `diag` (the report of [`super::diag`]) and `pause`, `resume`,
//! `drain` `{node, lane}`, forwarded signed to the node's control queue `{tag}ctl.{node}`
//! and answered with the node's reply (wiki/operations.md).

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::BasicProperties;
use lapin::options::ConfirmSelectOptions;
use serde_json::Value as Json;
use uuid::Uuid;

use super::diag::Diagnostics;
use super::request::AdminRequest;
use crate::envelope::{Origin, Reply};
use crate::error::{BedsError, ErrorCode};
use crate::telemetry::status::{ControlCommand, ControlOp, STATUS_VERSION, control_key};
use crate::transport::link::Link;
use crate::transport::names::{DIRECT_REPLY_TO, EXCHANGE};
use crate::transport::publish::{Published, publish};
use crate::transport::signing::{Purpose, ServiceKey};
use crate::transport::topology::consume_unacked;

/// How long a pause or resume may take to be answered; a drain gets `shutdown.drain_timeout`
/// on top.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// What the node ops need: the node table, the service key that signs commands, the
/// connection, and the deployment's queue tag and drain timeout.
#[derive(Debug)]
pub struct NodeControl {
    pub diagnostics: Arc<Diagnostics>,
    pub key: ServiceKey,
    pub link: Arc<Link>,
    pub queue_tag: String,
    pub drain_timeout: Duration,
    /// This admin node, as the origin of the commands it forwards.
    pub origin: Origin,
}

impl NodeControl {
    /// `diag`: the report as data.
    pub fn diag(&self) -> Result<Json, BedsError> {
        Ok(serde_json::to_value(self.diagnostics.report()).expect("reports serialize"))
    }

    /// `pause`, `resume` or `drain` `{node, lane}`.
    pub async fn lane(&self, op: ControlOp, req: &AdminRequest) -> Result<Json, BedsError> {
        let node: String = req.required("node")?;
        let lane: String = req.required("lane")?;
        let known = self.diagnostics.nodes().names();
        if !known.contains(&node) {
            return Err(BedsError::new(
                ErrorCode::NotFound,
                format!(
                    "no node `{node}` has sent a heartbeat to this admin; known nodes: {}",
                    if known.is_empty() {
                        "none yet".to_string()
                    } else {
                        known.join(", ")
                    }
                ),
            ));
        }
        let wait = match op {
            ControlOp::Drain => ANSWER_TIMEOUT + self.drain_timeout,
            ControlOp::Pause | ControlOp::Resume => ANSWER_TIMEOUT,
        };
        self.forward(op, &node, &lane, req, wait)
            .await
            .map_err(|e| match e {
                Forward::Remote(e) => e,
                other => BedsError::new(
                    ErrorCode::DeadlineExceeded,
                    format!("`{}` to node `{node}`: {other}", op.as_str()),
                ),
            })
    }

    async fn forward(
        &self,
        op: ControlOp,
        node: &str,
        lane: &str,
        req: &AdminRequest,
        wait: Duration,
    ) -> Result<Json, Forward> {
        let conn = self.link.get().await;
        let channel = bounded(conn.create_channel()).await?;
        let exchange = async {
            bounded(channel.confirm_select(ConfirmSelectOptions::default())).await?;
            // Direct reply-to: consumed on this channel before the command is published.
            let mut replies = bounded(consume_unacked(&channel, DIRECT_REPLY_TO)).await?;
            let command = ControlCommand {
                v: STATUS_VERSION,
                op,
                lane: lane.to_string(),
                causation_id: req.id,
                depth: req.depth.unwrap_or(0) + 1,
                origin: Some(self.origin.clone()),
            };
            let body = serde_json::to_vec(&command).expect("commands serialize");
            let id = Uuid::now_v7();
            let conversation = req.correlation_id.or(req.id).unwrap_or(id).to_string();
            let props = BasicProperties::default()
                .with_content_type("application/json".into())
                .with_message_id(id.to_string().into())
                .with_correlation_id(conversation.into())
                .with_reply_to(DIRECT_REPLY_TO.into());
            let props = self.key.sign(Purpose::Control, props, &body);
            let key = format!("{}{}", self.queue_tag, control_key(node));
            match publish(&channel, EXCHANGE, &key, true, &body, props).await {
                Ok(Published::Delivered) => {}
                Ok(Published::Unroutable) => return Err(Forward::NotListening),
                Err(e) => return Err(Forward::Publish(e.to_string())),
            }
            let delivery = tokio::time::timeout(wait, replies.next())
                .await
                .map_err(|_| Forward::NoAnswer(wait))?
                .ok_or(Forward::NoAnswer(wait))?
                .map_err(Forward::Amqp)?;
            self.key
                .verify(Purpose::Reply, &delivery.properties, &delivery.data)
                .map_err(|_| Forward::Unsigned)?;
            let reply: Reply =
                serde_json::from_slice(&delivery.data).map_err(|_| Forward::Unsigned)?;
            reply.into_result().map_err(Forward::Remote)
        };
        let answered = exchange.await;
        let _ = tokio::time::timeout(ANSWER_TIMEOUT, channel.close(200, "answered".into())).await;
        answered
    }
}

/// Why a forwarded command got no usable answer.
#[derive(Debug, thiserror::Error)]
enum Forward {
    #[error("the node's control queue does not exist: the node stopped (or is lost)")]
    NotListening,
    #[error("publishing the command failed: {0}")]
    Publish(String),
    #[error("the node did not answer within {} s", .0.as_secs())]
    NoAnswer(Duration),
    #[error("the node's answer is not a signed reply")]
    Unsigned,
    #[error("the broker failed: {0}")]
    Amqp(lapin::Error),
    #[error("the broker did not answer within {} s", ANSWER_TIMEOUT.as_secs())]
    BrokerTimeout,
    /// The node's own refusal, passed on as it is.
    #[error("{0}")]
    Remote(BedsError),
}

async fn bounded<T>(step: impl Future<Output = lapin::Result<T>>) -> Result<T, Forward> {
    match tokio::time::timeout(ANSWER_TIMEOUT, step).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(Forward::Amqp(e)),
        Err(_) => Err(Forward::BrokerTimeout),
    }
}
