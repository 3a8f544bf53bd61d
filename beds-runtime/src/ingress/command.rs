//! The typed value between the validate step and the dispatch step.

use crate::store::WriteOp;
use crate::value::{RecordKey, Value};

/// A validated operation, ready to run.
#[derive(Debug)]
pub(crate) enum Command {
    Write(WriteOp),
    Fetch(RecordKey),
    List {
        limit: u32,
        after: Option<Value>,
    },
    Page {
        params: Vec<Value>,
        cursor: Option<Vec<Value>>,
        limit: u32,
    },
    Count {
        params: Vec<Value>,
    },
}
