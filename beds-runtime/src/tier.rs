//! The storage tiers a moved record can be in (wiki/retention.md), named on the wire by a
//! `moved` error and by a segundo reply; the envelope and the error contract both use them.

use serde::{Deserialize, Serialize};

/// Where a moved record is kept: `warehouse` (COOL, the warehouse database) or `cold`
/// (compressed files). Named by a `moved` error and by the reply a segundo node sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    Warehouse,
    Cold,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Warehouse => "warehouse",
            Tier::Cold => "cold",
        }
    }

    pub fn parse(s: &str) -> Option<Tier> {
        match s {
            "warehouse" => Some(Tier::Warehouse),
            "cold" => Some(Tier::Cold),
            _ => None,
        }
    }
}
