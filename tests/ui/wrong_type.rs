use beds_runtime::support as rt;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThingId(pub uuid::Uuid);
impl rt::Key for ThingId {}
#[derive(Serialize)]
pub struct In;

#[derive(Serialize, Deserialize, rt::Record)]
#[beds(domain = "d", template = "thing", create = In, patch = In)]
pub struct Thing {
    pub id: ThingId,
    pub version: i64,
    #[beds(string, max = 5)]
    pub name: i64,
}

fn main() {}
