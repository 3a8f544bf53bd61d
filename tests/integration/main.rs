//! Integration tests against real RabbitMQ and real SQLite; one binary, so one link.
//! Each test has its own queue tag and data directory.

mod cache;
mod call;
mod concurrency;
mod conformance;
mod errors;
mod field_kinds;
mod json_schema;
mod poison;
mod queries;
mod reliability;
mod round_trip;
mod spawn;
mod spew;
mod support;
mod wire;
