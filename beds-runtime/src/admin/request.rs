//! One `adm` request as the admin reads it, and its op's fields.

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value as Json};
use uuid::Uuid;

use crate::envelope::Origin;
use crate::error::{BedsError, DetailCode};

/// One adm request: the op, the lineage the caller set (all optional) and the op's fields.
#[derive(Debug, Clone, Deserialize)]
pub struct AdminRequest {
    pub v: u32,
    pub op: String,
    /// The message id; the AMQP `message_id` or a new id when absent.
    #[serde(default)]
    pub id: Option<Uuid>,
    /// The conversation; the request's id when absent.
    #[serde(default)]
    pub correlation_id: Option<Uuid>,
    #[serde(default)]
    pub causation_id: Option<Uuid>,
    #[serde(default)]
    pub depth: Option<u32>,
    #[serde(default)]
    pub origin: Option<Origin>,
    /// The calling service (AMQP `user_id`), set by the admin, never read from the body.
    #[serde(skip)]
    pub caller: String,
    /// The op's own fields.
    #[serde(flatten)]
    pub fields: Map<String, Json>,
}

impl AdminRequest {
    /// An optional field of the op, `invalid_input` naming it when it has the wrong type.
    pub fn field<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, BedsError> {
        match self.fields.get(name) {
            None | Some(Json::Null) => Ok(None),
            Some(value) => serde_json::from_value(value.clone())
                .map(Some)
                .map_err(|e| {
                    BedsError::detail(
                        name,
                        DetailCode::WrongType,
                        format!("`{name}` of op `{}`: {e}", self.op),
                    )
                }),
        }
    }

    /// A required field of the op, `invalid_input` naming it when missing.
    pub fn required<T: DeserializeOwned>(&self, name: &str) -> Result<T, BedsError> {
        self.field(name)?.ok_or_else(|| {
            BedsError::detail(
                name,
                DetailCode::Missing,
                format!("op `{}` needs `{name}`", self.op),
            )
        })
    }
}
