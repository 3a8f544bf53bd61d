//! A node's control queue: an exclusive, auto-delete queue `{tag}ctl.{node}` bound to the
//! same routing key on `beds.events`, where the admin role sends lane commands (pause,
//! resume, drain). Only commands signed with the service key are carried out; each is
//! answered on its `reply_to` with a signed [`Reply`] whose data is the lane's new state.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::{BasicProperties, Channel, Connection, Consumer};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::lanes::Lanes;
use crate::envelope::{Origin, Reply};
use crate::error::{BedsError, ErrorCode};
use crate::ingress::settle::Signer;
use crate::telemetry::status::{ControlCommand, STATUS_VERSION, control_key};
use crate::transport::link::{Link, Watch};
use crate::transport::names::is_reply_queue;
use crate::transport::publish::publish;
use crate::transport::signing::Purpose;
use crate::transport::topology::private_subscription;

/// How long declaring the queue (or closing its channel) may take.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);

pub(super) struct Control {
    pub link: Arc<Link>,
    pub queue_tag: String,
    pub lanes: Arc<Lanes>,
    pub signer: Arc<Signer>,
    pub drain_timeout: Duration,
    /// This node, as the origin of its answers.
    pub origin: Origin,
}

impl Control {
    /// Runs until `stop`: one queue per live connection, declared again after a loss.
    pub async fn run(self, stop: CancellationToken) {
        let control = Arc::new(self);
        loop {
            let conn = tokio::select! {
                conn = control.link.live() => conn,
                () = stop.cancelled() => return,
            };
            match tokio::time::timeout(SETUP_TIMEOUT, control.subscribe(&conn)).await {
                Ok(Ok((channel, consumer))) => {
                    control.serve(&conn, &channel, consumer, &stop).await;
                    if stop.is_cancelled() {
                        return;
                    }
                }
                // Another node with the same name holds the queue (RESOURCE_LOCKED), or
                // the broker is away: said once per attempt, retried.
                Ok(Err(e)) => tracing::warn!(
                    queue = %control.queue(),
                    error = %e,
                    "declaring the control queue failed; is another node named the same?"
                ),
                Err(_) => tracing::warn!("declaring the control queue timed out"),
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
                () = stop.cancelled() => return,
            }
        }
    }

    fn queue(&self) -> String {
        format!("{}{}", self.queue_tag, control_key(&self.lanes.node))
    }

    async fn subscribe(&self, conn: &Connection) -> lapin::Result<(Channel, Consumer)> {
        let channel = conn.create_channel().await?;
        let name = self.queue();
        let consumer = private_subscription(&channel, &name, &name).await?;
        Ok((channel, consumer))
    }

    async fn serve(
        self: &Arc<Self>,
        conn: &Connection,
        channel: &Channel,
        mut consumer: Consumer,
        stop: &CancellationToken,
    ) {
        let mut watchdog = tokio::time::interval(Duration::from_secs(1));
        let mut watch = Watch::default();
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = watchdog.tick() => {
                    if watch.dead(conn) {
                        break;
                    }
                }
                next = consumer.next() => match next {
                    // Each in a task of its own: a drain waits, and a resume meanwhile
                    // must still be heard.
                    Some(Ok(delivery)) => {
                        tokio::spawn(self.clone().receive(channel.clone(), delivery));
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "control consumer interrupted");
                        break;
                    }
                    None => break,
                },
            }
        }
        let close = channel.close(200, "control done".into());
        if let Ok(Err(e)) = tokio::time::timeout(SETUP_TIMEOUT, close).await {
            tracing::debug!(error = %e, "control channel close");
        }
    }

    /// Checks, carries out and answers one command.
    async fn receive(self: Arc<Self>, channel: Channel, delivery: Delivery) {
        let props = &delivery.properties;
        let id = props
            .message_id()
            .as_ref()
            .and_then(|id| Uuid::parse_str(id.as_str()).ok())
            .unwrap_or_else(Uuid::now_v7);
        let (depth, result) = self.carry_out(&delivery).await;
        let Some(reply_to) = props.reply_to().as_ref().map(|q| q.to_string()) else {
            return;
        };
        if !is_reply_queue(&reply_to) {
            tracing::warn!(reply_to = %reply_to, "control command with a reply_to that is not a reply queue; not answered");
            return;
        }
        let correlation = props
            .correlation_id()
            .clone()
            .unwrap_or_else(|| id.to_string().into());
        let conversation = Uuid::parse_str(correlation.as_str()).unwrap_or(id);
        let mut reply = Reply::to(conversation, id, result);
        reply.depth = depth + 1;
        reply.origin = Some(self.origin.clone());
        let body = serde_json::to_vec(&reply).expect("replies serialize");
        let mut properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_correlation_id(correlation)
            .with_message_id(reply.id.to_string().into());
        if let Some(login) = &self.signer.login {
            properties = properties.with_user_id(login.clone());
        }
        let properties = self.signer.key.sign(Purpose::Reply, properties, &body);
        if let Err(e) = publish(&channel, "", &reply_to, false, &body, properties).await {
            tracing::warn!(reply_to = %reply_to, error = %e, "answering a control command failed");
        }
    }

    /// The command's depth (0 when it cannot be read) and the answer.
    async fn carry_out(&self, delivery: &Delivery) -> (u32, Result<serde_json::Value, BedsError>) {
        let command = match self.read(delivery) {
            Ok(command) => command,
            Err(e) => return (0, Err(e)),
        };
        let answer = self
            .lanes
            .command(command.op, &command.lane, self.drain_timeout)
            .await
            .map(|answer| serde_json::to_value(answer).expect("answers serialize"))
            .map_err(|e| BedsError::new(ErrorCode::NotFound, e.to_string()));
        (command.depth, answer)
    }

    /// A signed, decodable command of this version.
    fn read(&self, delivery: &Delivery) -> Result<ControlCommand, BedsError> {
        if let Err(why) =
            self.signer
                .key
                .verify(Purpose::Control, &delivery.properties, &delivery.data)
        {
            tracing::warn!(
                why = %why,
                "refusing a control command not signed with the service key (untrusted_origin)"
            );
            return Err(BedsError::new(
                ErrorCode::UntrustedOrigin,
                format!(
                    "control commands must be signed with the deployment's service key and \
                     come from the admin role (`beds admin pause|resume|drain`); this one {why}"
                ),
            ));
        }
        let command: ControlCommand = serde_json::from_slice(&delivery.data).map_err(|e| {
            BedsError::new(
                ErrorCode::Undecodable,
                format!(
                    "a control command is {{\"v\":1,\"op\":\"pause\"|\"resume\"|\"drain\",\"lane\":\"rec.read\"|\"rec.write\"}}: {e}"
                ),
            )
        })?;
        if command.v != STATUS_VERSION {
            return Err(BedsError::new(
                ErrorCode::Undecodable,
                format!(
                    "control command version {} is not supported; this node reads version {STATUS_VERSION}",
                    command.v
                ),
            ));
        }
        Ok(command)
    }
}
