//! What a request addressed, as the label set of its metrics and in-flight entries.

use prometheus_client::encoding::EncodeLabelSet;

use crate::envelope::{Op, Request};
use crate::meta::{QueryMeta, TemplateMeta};

/// The label value of a domain, template or operation the catalog does not know (or of a
/// message that could not be decoded far enough to name one).
pub(crate) const UNKNOWN: &str = "unknown";

/// What a request addressed, in catalog names: for a named query, `template` is the
/// query's name and `op` is `query`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct Series {
    pub domain: &'static str,
    pub template: &'static str,
    pub op: &'static str,
}

impl Series {
    /// A request whose target is not known (yet): its operation only if the envelope
    /// names one of the closed set.
    pub fn unknown(req: Option<&Request>) -> Series {
        Series {
            domain: UNKNOWN,
            template: UNKNOWN,
            op: req
                .and_then(|r| Op::parse(&r.op))
                .map_or(UNKNOWN, Op::as_str),
        }
    }

    pub fn template(meta: &'static TemplateMeta, op: Op) -> Series {
        Series {
            domain: meta.domain,
            template: meta.name,
            op: op.as_str(),
        }
    }

    pub fn query(meta: &'static QueryMeta) -> Series {
        Series {
            domain: meta.domain,
            template: meta.name,
            op: Op::Query.as_str(),
        }
    }
}
