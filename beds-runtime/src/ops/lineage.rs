//! `beds lineage ID`: one conversation's lineage records, asked of the admin node with the
//! `lineage` adm op, printed as a tree (or as JSON).

use serde_json::{Map, Value as Json};
use uuid::Uuid;

use crate::client::{Client, ClientError, ClientOptions};
use crate::config::Config;
use crate::lineage::{Record, render};

/// Why `beds lineage` printed no tree.
#[derive(Debug, thiserror::Error)]
pub enum LineageError {
    #[error("asking the admin node for lineage: {0}")]
    Client(#[from] ClientError),
    #[error(
        "the admin's answer is not a list of lineage records: {0}; is the admin node of the same release?"
    )]
    Decode(serde_json::Error),
    #[error(
        "no lineage records of {id}: it was not sampled (lineage.sample on the nodes), its \
         records expired (admin.lineage_keep), or they are still on their way (retry in a \
         moment); give a correlation id or the id of any message of the conversation"
    )]
    NotFound { id: Uuid },
}

/// Asks the admin for the conversation of `id` and prints it: a tree, or with `json` the
/// records as the admin stores them.
pub async fn run(config: &Config, id: Uuid, json: bool) -> Result<(), LineageError> {
    let client = Client::connect(ClientOptions::from_config(config, "beds-lineage")).await?;
    let mut fields = Map::new();
    fields.insert("message_id".into(), Json::from(id.to_string()));
    let answer = client.admin("lineage", fields).await;
    // The answer is what matters; a failed close only leaves a connection to time out.
    let _ = client.close().await;
    let mut answer = answer?;
    let records = answer["records"].take();
    let truncated = answer["truncated"].as_bool().unwrap_or(false);
    let list = records.as_array().map_or(0, Vec::len);
    if list == 0 {
        return Err(LineageError::NotFound { id });
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&records).expect("JSON prints")
        );
    } else {
        let records: Vec<Record> = serde_json::from_value(records).map_err(LineageError::Decode)?;
        print!("{}", render(&records));
    }
    if truncated {
        eprintln!("(only the first {list} records of this conversation are shown)");
    }
    Ok(())
}
