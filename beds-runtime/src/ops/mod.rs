//! Operator tools behind the `beds` command line: one request sent from the shell,
//! dead-letter inspection and replay, the JSON Schema of the wire contract, and a
//! conversation's lineage tree. They reach
//! RabbitMQ through the transport like any client; none of them touches a database except
//! `schema`, the DBA's migrations.

pub mod audit;
pub(crate) mod call;
pub mod dead_letters;
pub mod diag;
pub(crate) mod json_schema;
pub mod lineage;
pub mod mig;
pub mod schema;
