//! The one module generated code reaches the runtime through (`use
//! ::beds_runtime::support as rt`), like prost's generated code names only `::prost`. Its
//! contents are for generated code, the derive, hand-written dispatch tables and the
//! property tests of the decoders (tests/fuzz.rs); they are hidden from the documentation
//! and not part of the application API. Nothing here opens a database: handlers get the
//! store only inside a [`Call`] the ingress chain built.

pub use beds_macros::Record;
pub use serde;
pub use uuid::Uuid;

pub use crate::catalog::{Catalog, RouteError, Routes};
pub use crate::client::{Client, QueryClient, TemplateClient};
pub use crate::envelope::{Consistency, Op};
pub use crate::ingress::dispatch::{Call, Ctx, Handler, HandlerFuture, execute};
pub use crate::meta::{
    Capabilities, CheckMeta, CondOp, ConditionMeta, CountMeta, DefaultValue, DomainMeta, FieldKind,
    FieldMeta, IdKind, LiteralValue, OnDelete, Operand, PageMeta, ParamKind, ParamMeta, QueryMeta,
    RetentionEnd, RetentionMeta, SelectMeta, SetOn, TemplateMeta, TokenSetMeta, UniqueMeta,
    WithKind, WithMeta,
};
pub use crate::record::{FieldType, Journaled, Key, Locking, Query, Record, assert_field, kinds};
pub use crate::value::{Date, Patterns, Timestamp, Value, cursor_values};
pub use serde_json::Value as Json;
