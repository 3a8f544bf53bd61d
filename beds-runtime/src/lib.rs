//! The BEDS runtime: configuration, the envelope contract, AMQP topology and broker pools,
//! generated-dispatch plumbing, the sqlx storage adapter and the client.
//!
//! It never names a domain: everything domain-specific arrives as a compiled
//! [`Catalog`] from the code `beds-codegen` generates.

mod broker;
pub mod cli;
pub mod client;
pub mod config;
pub mod dead_letters;
pub mod dispatch;
pub mod envelope;
pub mod error;
pub mod json_schema;
mod link;
pub mod meta;
pub mod record;
pub mod server;
pub mod store;
pub mod support;
pub mod telemetry;
pub mod topology;
pub mod value;

pub use broker::Lane;
pub use client::{
    Client, ClientError, ClientOptions, Cursor, Page, QueryClient, QueryPage, TemplateClient,
};
pub use config::{Config, Role};
pub use envelope::{Op, Reply, Request};
pub use error::{BedsError, DetailCode, ErrorClass, ErrorCode, ErrorDetail};
pub use meta::Catalog;
pub use record::{Key, Query, Record};
pub use server::{Server, ServerError};
pub use value::Timestamp;
