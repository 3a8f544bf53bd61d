//! The two lanes of the data path, and the step that keeps each operation on its own.

use crate::envelope::Op;
use crate::error::{BedsError, ErrorCode};
use crate::transport::names::{READ_KEY, WRITE_KEY};

/// Which queue a pool consumes, and so which operations it accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    Read,
    Write,
}

impl Lane {
    /// Every lane, in a fixed order ([`Lane::index`]).
    pub const ALL: [Lane; 2] = [Lane::Read, Lane::Write];

    /// The lane's position in [`Lane::ALL`], for per-lane arrays.
    pub fn index(self) -> usize {
        match self {
            Lane::Read => 0,
            Lane::Write => 1,
        }
    }

    /// The lane named by its routing key (`rec.read`, `rec.write`).
    pub fn parse(key: &str) -> Option<Lane> {
        Lane::ALL.into_iter().find(|l| l.key() == key)
    }

    /// The lane's routing key, before the queue tag.
    pub fn key(self) -> &'static str {
        match self {
            Lane::Read => READ_KEY,
            Lane::Write => WRITE_KEY,
        }
    }

    /// The broker pool's name in logs and consumer tags.
    pub fn broker(self) -> &'static str {
        match self {
            Lane::Read => "rBroker",
            Lane::Write => "wBroker",
        }
    }

    pub fn of(op: Op) -> Lane {
        if op.is_write() {
            Lane::Write
        } else {
            Lane::Read
        }
    }
}

/// Step: a write sent to the read lane (or the reverse) is refused, naming the right key.
pub(crate) fn check(lane: Lane, op: Op) -> Result<(), BedsError> {
    if Lane::of(op) == lane {
        return Ok(());
    }
    Err(BedsError::new(
        ErrorCode::WrongQueue,
        format!(
            "`{}` is a {} operation; publish it with routing key {}",
            op.as_str(),
            if op.is_write() { "write" } else { "read" },
            Lane::of(op).key()
        ),
    ))
}
