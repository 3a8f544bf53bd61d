// A template that does not declare `journal` has no `history` or `fetch_as_of` on its
// typed client.
use beds_runtime::support as rt;
use serde::{Deserialize, Serialize};

include!("shared/key.rs");

#[derive(Serialize, Deserialize, rt::Record)]
#[beds(domain = "d", template = "thing", create = In, patch = In)]
pub struct Thing {
    pub id: ThingId,
    pub version: i64,
}

async fn past(client: &rt::Client, id: ThingId) {
    let things = client.template::<Thing>();
    let _ = things.history(id, None, None).await;
    let _ = things.fetch_as_of(id, beds_runtime::AsOf::Version(1)).await;
}

fn main() {}
