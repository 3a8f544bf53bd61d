//! The one module generated code reaches the runtime through (`use
//! ::beds_runtime::support as rt`). Its contents are for generated code and the derives;
//! applications use the crate root.

pub use beds_macros::Record;
pub use serde;
pub use uuid::Uuid;

pub use crate::client::{Client, QueryClient, TemplateClient};
pub use crate::envelope::Op;
pub use crate::meta::{
    Capabilities, Catalog, CheckMeta, CondOp, ConditionMeta, CountMeta, DefaultValue, DomainMeta,
    FieldKind, FieldMeta, IdKind, OnDelete, Operand, PageMeta, ParamKind, ParamMeta, QueryMeta,
    RetentionMeta, RouteError, Routes, SelectMeta, SetOn, TemplateMeta, TokenSetMeta, UniqueMeta,
    WithKind, WithMeta,
};
pub use crate::record::{FieldType, Key, Query, Record, assert_field, kinds};
pub use crate::value::{Date, Timestamp};
pub use serde_json::Value as Json;
