//! `beds schema --json`: a JSON Schema entry for every template and query in the catalog,
//! matching what the server actually accepts and returns.

use std::collections::BTreeSet;
use std::process::Command;

use beds::spew::{self, UserCreate};
use serde_json::Value as Json;

use crate::support::TestEnv;

fn keys(v: &Json) -> BTreeSet<String> {
    v.as_object().unwrap().keys().cloned().collect()
}

#[tokio::test]
async fn schema_covers_the_catalog_and_matches_replies() {
    let out = Command::new(env!("CARGO_BIN_EXE_beds"))
        .args(["schema", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let schema: Json = serde_json::from_slice(&out.stdout).expect("beds schema --json prints JSON");
    let defs = &schema["$defs"];
    // What a template declares decides its entries: internal templates are not for
    // clients (none), append-only ones cannot be updated (no `patch`), only those declaring
    // `locking` are leased (`lock`, `lease`), only those declaring `journal` have a history.
    for (d, t) in beds::CATALOG.templates() {
        for part in ["record", "create", "patch", "lock", "lease", "history"] {
            let expected = !t.internal
                && match part {
                    "patch" => !t.append_only,
                    "lock" | "lease" => t.capabilities.locking,
                    "history" => t.capabilities.journal,
                    _ => true,
                };
            assert_eq!(
                defs.get(format!("{}.{}.{part}", d.name, t.name)).is_some(),
                expected,
                "{}.{} {part}",
                d.name,
                t.name
            );
        }
    }
    for d in beds::CATALOG.domains {
        for q in d.queries {
            for part in ["params", "result"] {
                assert!(
                    defs.get(format!("{}.{}.{part}", d.name, q.name)).is_some(),
                    "{}",
                    q.name
                );
            }
        }
    }

    let env = TestEnv::new("json_schema");
    let server = env.start().await;
    let client = env.client().await;
    let user = spew::client(&client)
        .user()
        .create(&UserCreate {
            handle: "schema".into(),
            display_name: "S".into(),
            bio: None,
        })
        .await
        .unwrap();
    let reply = serde_json::to_value(&user).unwrap();
    let record = &defs["spew.user.record"];
    assert_eq!(
        keys(&reply),
        keys(&record["properties"]),
        "the record schema lists exactly the reply's fields"
    );
    let required: BTreeSet<String> = record["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .collect();
    assert_eq!(required, keys(&reply));
    assert_eq!(
        defs["spew.user.create"]["required"],
        serde_json::json!(["handle", "display_name"])
    );
    assert_eq!(
        defs["spew.user.create"]["properties"]["handle"]["pattern"],
        "^[A-Za-z0-9_]+$"
    );
    assert_eq!(
        defs["spew.spews_by_authors.params"]["properties"]["authors"]["type"],
        "array"
    );
    // A history item: exactly the keys `history` answers, the record nested as `record`.
    let history = spew::client(&client)
        .user()
        .history(user.id, None, None)
        .await
        .unwrap();
    let mut raw = beds_runtime::Request::new("spew", "user", beds_runtime::Op::History);
    raw.key = Some(serde_json::Map::from_iter([(
        "id".to_string(),
        serde_json::json!(user.id),
    )]));
    let page = client.request(raw).await.unwrap();
    assert_eq!(history.items.len(), 1);
    let item = &defs["spew.user.history"]["properties"]["items"]["items"];
    assert_eq!(keys(&page["items"][0]), keys(&item["properties"]));
    assert_eq!(
        keys(&page["items"][0]["record"]),
        keys(&item["properties"]["record"]["properties"])
    );
    client.close().await.unwrap();
    server.stop().await;
}
