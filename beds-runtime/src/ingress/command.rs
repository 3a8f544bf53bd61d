//! The typed value between the validate step and the dispatch step.

use crate::envelope::AsOf;
use crate::store::WriteOp;
use crate::value::{RecordKey, Value};

/// A validated operation, ready to run.
#[derive(Debug)]
pub(crate) enum Command {
    Write(WriteOp),
    Fetch(RecordKey),
    /// A journaled record as it was at a version or time (by id); never cached.
    FetchAsOf {
        key: RecordKey,
        as_of: AsOf,
    },
    /// Journal entries of a record (by id), newest first, after the entry `after`.
    History {
        key: RecordKey,
        limit: u32,
        after: Option<i64>,
    },
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
