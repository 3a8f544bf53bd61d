//! `beds diag` and `beds admin pause|resume|drain NODE LANE`: the admin role's node ops,
//! sent on the `adm` route and printed (wiki/operations.md).

use std::time::Duration;

use serde_json::{Map, Value as Json};

use super::call::{EXIT_NO_REPLY, EXIT_REMOTE, remote};
use crate::admin::diag::DiagReport;
use crate::client::{Client, ClientError, ClientOptions};
use crate::config::Config;
use crate::error::BedsError;

/// Why a node op failed; exit codes as `beds call`'s.
#[derive(Debug, thiserror::Error)]
pub enum DiagError {
    #[error("{}", remote(.0))]
    Remote(BedsError),
    #[error(
        "no answer from an admin node within {after:?}: is one running (`beds run --role \
         admin`) with queue tag {tag:?} at {url}?"
    )]
    NoReply {
        after: Duration,
        tag: String,
        url: String,
    },
    #[error(transparent)]
    Client(ClientError),
    #[error("the admin's diag report does not decode ({0}); is it the same BEDS version?")]
    Report(serde_json::Error),
}

impl DiagError {
    pub fn exit_code(&self) -> u8 {
        match self {
            DiagError::Remote(_) | DiagError::Report(_) => EXIT_REMOTE,
            DiagError::NoReply { .. } | DiagError::Client(_) => EXIT_NO_REPLY,
        }
    }
}

/// Sends adm `op` with `fields`, waiting up to `timeout`, and returns its data.
async fn send(
    config: &Config,
    op: &str,
    fields: Map<String, Json>,
    timeout: Duration,
) -> Result<Json, DiagError> {
    let mut options = ClientOptions::from_config(config, "beds-admin");
    options.timeout = timeout;
    let client = Client::connect(options).await.map_err(DiagError::Client)?;
    let sent = client.admin(op, fields).await;
    let _ = client.close().await;
    sent.map_err(|e| match e {
        ClientError::Remote(e) => DiagError::Remote(e),
        ClientError::Timeout { .. } => DiagError::NoReply {
            after: timeout,
            tag: config.amqp.queue_tag.clone(),
            url: config.amqp.redacted_url(),
        },
        e => DiagError::Client(e),
    })
}

/// `beds diag`: the report as text, or as JSON with `json`.
pub async fn diag(config: &Config, json: bool) -> Result<String, DiagError> {
    let data = send(config, "diag", Map::new(), config.client.timeout.duration()).await?;
    if json {
        return Ok(serde_json::to_string_pretty(&data).expect("JSON prints"));
    }
    let report: DiagReport = serde_json::from_value(data).map_err(DiagError::Report)?;
    Ok(report.to_string())
}

/// `beds admin OP NODE LANE`: the node's answer. A drain may take the node's
/// `shutdown.drain_timeout`, so it is waited for on top of the client timeout.
pub async fn lane(config: &Config, op: &str, node: &str, lane: &str) -> Result<String, DiagError> {
    let mut fields = Map::new();
    fields.insert("node".into(), Json::from(node));
    fields.insert("lane".into(), Json::from(lane));
    let mut timeout = config.client.timeout.duration() + Duration::from_secs(10);
    if op == "drain" {
        timeout += config.shutdown.drain_timeout.duration();
    }
    let data = send(config, op, fields, timeout).await?;
    Ok(serde_json::to_string_pretty(&data).expect("JSON prints"))
}
