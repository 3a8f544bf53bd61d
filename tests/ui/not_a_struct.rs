use beds_runtime::support as rt;
use serde::{Deserialize, Serialize};

include!("shared/key.rs");

#[derive(Serialize, Deserialize, rt::Record)]
pub enum Thing {
    A,
}

fn main() {}
