//! Step: a request whose caller has given up on it is answered, not run.

use crate::envelope::Request;
use crate::error::{BedsError, ErrorCode};

pub(crate) fn check(req: &Request) -> Result<(), BedsError> {
    match req.deadline {
        Some(deadline) if deadline < chrono::Utc::now() => Err(BedsError::new(
            ErrorCode::DeadlineExceeded,
            format!("the request's deadline {deadline} passed before it ran; it was not executed"),
        )),
        _ => Ok(()),
    }
}
