//! Every field kind end to end, through a template written by hand with the `Record`
//! derive (no YAML): validation, defaults, storage and the reply.

use beds_runtime::support as rt;
use beds_runtime::{ClientError, DetailCode, ErrorCode, Server};
use serde::{Deserialize, Serialize};

use crate::support::TestEnv;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct GadgetId(pub uuid::Uuid);

impl rt::Key for GadgetId {}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Colour {
    Red,
    DeepBlue,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, rt::Record)]
#[beds(domain = "lab", template = "gadget", create = GadgetCreate, patch = GadgetPatch, version = 3)]
#[beds(index(fields = "colour,made_on"), append_only, cache_ttl_ms = 30000)]
pub struct Gadget {
    pub id: GadgetId,
    pub version: i64,
    #[beds(string, min = 2, max = 8, pattern = "^[a-z]+-[0-9]+$")]
    pub code: String,
    #[beds(text, optional)]
    pub notes: Option<String>,
    #[beds(integer, min = 0, max = 10, default = 5)]
    pub rating: i32,
    #[beds(bigint)]
    pub serial: i64,
    #[beds(float, min = 0.0, max = 1.5)]
    pub ratio: f64,
    #[beds(date)]
    pub made_on: rt::Date,
    #[beds(enumeration = "red,deep_blue", default = "red")]
    pub colour: Colour,
    #[beds(json, optional)]
    pub specs: Option<serde_json::Value>,
    #[beds(bool, default = true)]
    pub active: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct GadgetCreate(serde_json::Map<String, serde_json::Value>);

#[derive(Debug, Clone, Serialize)]
pub struct GadgetPatch(serde_json::Map<String, serde_json::Value>);

static ROUTES: rt::Routes = rt::Routes::of::<Gadget>();
static DOMAIN: rt::DomainMeta = rt::DomainMeta {
    name: "lab",
    version: 1,
    templates: &[<Gadget as rt::Record>::META],
    queries: &[],
};
static CATALOG: rt::Catalog = rt::Catalog {
    domains: &[&DOMAIN],
    route: |domain, template| match (domain, template) {
        ("lab", "gadget") => Ok(&ROUTES),
        ("lab", _) => Err(rt::RouteError::UnknownTemplate),
        _ => Err(rt::RouteError::UnknownDomain),
    },
};

fn create(v: serde_json::Value) -> GadgetCreate {
    GadgetCreate(v.as_object().unwrap().clone())
}

#[test]
fn declarations_reach_the_metadata() {
    let m = <Gadget as rt::Record>::META;
    assert_eq!(
        (m.version, m.append_only, m.capabilities.cache_ttl_ms),
        (3, true, Some(30_000))
    );
    assert_eq!(m.indexes, &[&["colour", "made_on"][..]]);
    assert_eq!(m.fingerprint.len(), 16);
    let ddl = beds_runtime::schema(beds_runtime::config::Driver::Sqlite, &CATALOG).join("\n");
    assert!(ddl.contains("\"ratio\" REAL NOT NULL"), "{ddl}");
    assert!(ddl.contains("CREATE INDEX IF NOT EXISTS \"gadget_colour_made_on_idx\" ON \"gadget\" (\"colour\", \"made_on\")"), "{ddl}");
}

#[tokio::test]
async fn every_kind_round_trips_over_amqp() {
    let env = TestEnv::new("kinds");
    let server = Server::start(&env.config, &CATALOG).await.expect("start");
    let client = env.client().await;
    let gadgets = client.template::<Gadget>();

    let g = gadgets
        .create(&create(serde_json::json!({
            "code": "ab-12", "serial": 9_007_199_254_740_993_i64, "ratio": 0.25,
            "made_on": "2026-02-28", "specs": {"volts": [3.3, 5]},
        })))
        .await
        .unwrap();
    assert_eq!(
        (g.code.as_str(), g.rating, g.colour, g.active),
        ("ab-12", 5, Colour::Red, true),
        "defaults applied"
    );
    assert_eq!(
        (g.serial, g.ratio, g.notes.as_deref()),
        (9_007_199_254_740_993, 0.25, None)
    );
    assert_eq!(g.made_on, rt::Date::from_ymd_opt(2026, 2, 28).unwrap());
    assert_eq!(g.specs, Some(serde_json::json!({"volts": [3.3, 5]})));
    assert_eq!(gadgets.fetch(g.id).await.unwrap(), g);

    let db = env.db().await;
    let (colour, specs): (String, String) = sqlx::query_as("SELECT colour, specs FROM gadget")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(
        (colour.as_str(), specs.as_str()),
        ("red", r#"{"volts":[3.3,5]}"#)
    );

    let bad = gadgets
        .create(&create(serde_json::json!({
            "code": "AB12", "rating": 11, "serial": 1, "ratio": 2, "made_on": "2026-02-30",
            "colour": "green",
        })))
        .await
        .unwrap_err();
    let ClientError::Remote(e) = bad else {
        panic!("{bad:?}")
    };
    let details: Vec<(&str, DetailCode)> = e
        .details
        .iter()
        .map(|d| (d.field.as_str(), d.code))
        .collect();
    assert_eq!(
        details,
        [
            ("data.code", DetailCode::InvalidFormat),
            ("data.rating", DetailCode::AboveMax),
            ("data.ratio", DetailCode::AboveMax),
            ("data.made_on", DetailCode::InvalidFormat),
            ("data.colour", DetailCode::InvalidFormat),
        ]
    );

    let refused = gadgets.delete(g.id).await.unwrap_err();
    assert_eq!(
        refused.code(),
        Some(ErrorCode::OperationNotAllowed),
        "append-only"
    );

    client.close().await.unwrap();
    server.stop().await;
}
