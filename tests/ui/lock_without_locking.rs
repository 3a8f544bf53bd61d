// A template that does not declare `locking` has no lease methods on its typed client.
use beds_runtime::support as rt;
use serde::{Deserialize, Serialize};

include!("shared/key.rs");

#[derive(Serialize, Deserialize, rt::Record)]
#[beds(domain = "d", template = "thing", create = In, patch = In)]
pub struct Thing {
    pub id: ThingId,
    pub version: i64,
}

async fn lease(client: &rt::Client, id: ThingId) {
    let _ = client
        .template::<Thing>()
        .lock(id, std::time::Duration::from_secs(1))
        .await;
}

fn main() {}
