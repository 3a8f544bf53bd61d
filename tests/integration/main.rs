//! Integration tests against real RabbitMQ and real SQLite; one binary, so one link.
//! Each test has its own queue tag and data directory.

mod admin;
mod audit;
mod authorization;
mod bounds;
mod cache;
mod call;
mod concurrency;
mod conformance;
mod control;
mod counts;
mod diag;
mod errors;
mod events;
mod field_kinds;
mod http;
mod journal;
mod json_schema;
mod lineage;
mod locking;
mod mig;
mod operator_page;
mod poison;
mod queries;
mod reliability;
mod round_trip;
mod security;
mod signed;
mod spawn;
mod spew;
mod support;
mod telemetry;
mod vhost;
mod wire;
