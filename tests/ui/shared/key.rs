// Shared by the compile-fail cases: a key type and an input type for the derive to name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ThingId(pub uuid::Uuid);
impl beds_runtime::support::Key for ThingId {}
#[derive(serde::Serialize)]
pub struct In;
