//! Bounds on a request body, checked before it is parsed: the size from the delivery's
//! length, then depth and field count in one pass over the bytes that builds nothing, so a
//! hostile body costs at most one linear scan before it is refused.

use crate::config::LimitsConfig;
use crate::error::{BedsError, ErrorCode};

/// Which bound a body breaks. Each names its configuration key, so the message says what
/// a sender (or an operator) can change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error(
        "the message is {size} bytes, over the limit of {limit} (limits.max_message_bytes); \
         send less per request"
    )]
    Size { size: usize, limit: u64 },
    #[error(
        "the message nests objects and arrays more than {limit} levels deep (limits.max_depth); \
         send flatter data"
    )]
    Depth { limit: u32 },
    #[error(
        "the message has more than {limit} object fields (limits.max_fields); send fewer fields \
         per request"
    )]
    Fields { limit: u32 },
}

impl From<LimitError> for BedsError {
    fn from(e: LimitError) -> BedsError {
        BedsError::new(ErrorCode::TooLarge, e.to_string())
    }
}

/// Checks `body` against `limits`. Not a JSON validator: on invalid JSON it may pass (the
/// parser then refuses it) or refuse by a count it made, which is deterministic either way.
pub fn check(body: &[u8], limits: &LimitsConfig) -> Result<(), LimitError> {
    if body.len() as u64 > limits.max_message_bytes {
        return Err(LimitError::Size {
            size: body.len(),
            limit: limits.max_message_bytes,
        });
    }
    let mut depth = 0u32;
    let mut fields = 0u32;
    let mut in_string = false;
    let mut escaped = false;
    for &b in body {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > limits.max_depth {
                    return Err(LimitError::Depth {
                        limit: limits.max_depth,
                    });
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            // Outside strings a colon only ever separates an object field from its value.
            b':' => {
                fields += 1;
                if fields > limits.max_fields {
                    return Err(LimitError::Fields {
                        limit: limits.max_fields,
                    });
                }
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMALL: LimitsConfig = LimitsConfig {
        max_message_bytes: 64,
        max_depth: 3,
        max_fields: 4,
    };

    #[test]
    fn each_bound_is_checked_and_named() {
        assert_eq!(check(br#"{"a":{"b":[1,"{[:]}"]}}"#, &SMALL), Ok(()));
        assert_eq!(
            check(&[b' '; 65], &SMALL),
            Err(LimitError::Size {
                size: 65,
                limit: 64
            })
        );
        assert_eq!(
            check(br#"{"a":[[{}]]}"#, &SMALL),
            Err(LimitError::Depth { limit: 3 })
        );
        assert_eq!(
            check(br#"{"a":1,"b":2,"c":3,"d":4,"e":5}"#, &SMALL),
            Err(LimitError::Fields { limit: 4 })
        );
        let e = BedsError::from(LimitError::Fields { limit: 4 });
        assert_eq!(e.code, ErrorCode::TooLarge);
        assert!(e.message.contains("limits.max_fields"), "{}", e.message);
    }

    #[test]
    fn escaped_quotes_do_not_end_a_string() {
        // The brackets and colons inside the string are text, not structure.
        assert_eq!(check(br#"{"a":"\"[[[[:::::"}"#, &SMALL), Ok(()));
        assert_eq!(
            check(br#"{"a":"\\","b":[[[]]]}"#, &SMALL),
            Err(LimitError::Depth { limit: 3 })
        );
    }
}
