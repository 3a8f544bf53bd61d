//! The BEDS runtime: configuration, the envelope contract, AMQP topology and broker pools,
//! generated-dispatch plumbing, the sqlx storage adapter and the client.
//!
//! It never names a domain: everything domain-specific arrives as a compiled
//! [`Catalog`] from the code `beds-codegen` generates.

pub mod admin;
pub mod cache;
mod catalog;
pub mod cli;
pub mod client;
pub mod compat;
pub mod config;
mod echo;
pub mod envelope;
pub mod error;
pub mod events;
mod ingress;
pub mod limits;
pub mod lineage;
mod meta;
mod node;
pub mod ops;
pub mod record;
pub mod security;
mod segundo;
mod store;
mod suggest;
#[doc(hidden)]
pub mod support;
pub mod telemetry;
mod tercero;
mod tier;
mod transport;
mod value;

pub use catalog::{Catalog, CatalogError, RouteError, Routes, schema};
pub use client::{
    Client, ClientError, ClientOptions, Cursor, History, Lease, Page, QueryClient, QueryPage,
    ReadOptions, TemplateClient, Version,
};
pub use config::{Config, Role};
pub use envelope::{AsOf, Consistency, Op, ReadTier, Reply, Request, Tier};
pub use error::{BedsError, DetailCode, ErrorClass, ErrorCode, ErrorDetail};
pub use ingress::lane::Lane;
pub use node::{Health, Server, ServerError};
pub use record::{Journaled, Key, Locking, Query, Record};
pub use tercero::{EVENT_BINDING, EVENT_QUEUE_KEY};
pub use transport::{CONNECT_TIMEOUT, ConnectError, names, signing, topology};
pub use value::{Date, Timestamp, format_timestamp};
