use beds_runtime::support as rt;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThingId(pub uuid::Uuid);
impl rt::Key for ThingId {}
#[derive(Serialize)]
pub struct In;

#[derive(Serialize, Deserialize, rt::Record)]
pub enum Thing {
    A,
}

fn main() {}
