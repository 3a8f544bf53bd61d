use beds_runtime::support as rt;
use serde::{Deserialize, Serialize};

include!("shared/key.rs");

#[derive(Serialize, Deserialize, rt::Record)]
#[beds(domain = "d", template = "thing", create = In, patch = In, retention)]
pub struct Thing {
    pub id: ThingId,
    pub version: i64,
    #[beds(string, max = 5)]
    pub name: String,
}

fn main() {}
