//! Named queries over AMQP: equality, ranges, membership, prefixes, joins through
//! references, keyset pages, counts, grouped counts, and their errors.

use std::collections::HashSet;

use beds::spew::{
    self, SpewCountByAuthor, SpewCountByAuthorParams, SpewCountsByAuthorsGroup,
    SpewCountsByAuthorsParams, SpewCreate, SpewsByAuthorsParams, SpewsByHandleParams, UserCreate,
    UserTimeline, UserTimelineParams, UsersByHandlePrefixParams,
};
use beds_runtime::support as rt;
use beds_runtime::{ClientError, Cursor, DetailCode, ErrorCode, Server};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::support::TestEnv;

#[tokio::test]
async fn named_queries_filter_join_page_and_count() {
    let env = TestEnv::new("queries");
    let server = env.start().await;
    let client = env.client().await;
    let api = spew::client(&client);
    let mut users = Vec::new();
    for h in ["ann", "anna", "bob"] {
        users.push(
            api.user()
                .create(&UserCreate {
                    handle: h.into(),
                    display_name: h.into(),
                    bio: None,
                })
                .await
                .unwrap(),
        );
    }
    let (ann, anna, bob) = (&users[0], &users[1], &users[2]);
    let mut ann_spews = Vec::new();
    for i in 0..25 {
        let s = api
            .spew()
            .create(&SpewCreate {
                author: ann.id,
                body: format!("ann {i}"),
                reply_to: None,
                respew_of: None,
            })
            .await
            .unwrap();
        ann_spews.push(s);
        if i % 5 == 0 {
            api.spew()
                .create(&SpewCreate {
                    author: bob.id,
                    body: format!("bob {i}"),
                    reply_to: None,
                    respew_of: None,
                })
                .await
                .unwrap();
        }
    }

    // Keyset pages: newest first, no gaps, no duplicates, a cursor while pages are full.
    let timeline = api.user_timeline();
    let params = UserTimelineParams {
        author: ann.id,
        before: None,
    };
    let mut seen = Vec::new();
    let mut cursor: Option<Cursor> = None;
    loop {
        let page = timeline
            .page(&params, Some(10), cursor.take())
            .await
            .unwrap();
        assert!(page.items.iter().all(|s| s.record.author == ann.id));
        seen.extend(page.items.iter().map(|s| s.record.id));
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
        // A spew arriving between pages is newer than the cursor: it never shows up late.
        api.spew()
            .create(&SpewCreate {
                author: ann.id,
                body: "late".into(),
                reply_to: None,
                respew_of: None,
            })
            .await
            .unwrap();
    }
    let expected: Vec<_> = ann_spews.iter().rev().map(|s| s.id).collect();
    assert_eq!(seen, expected, "every spew once, newest first");

    // Optional range parameter.
    let before = ann_spews[5].created_at;
    let older = timeline
        .page(
            &UserTimelineParams {
                author: ann.id,
                before: Some(before),
            },
            Some(100),
            None,
        )
        .await
        .unwrap();
    let older_ids: Vec<_> = older.items.iter().map(|s| s.record.id).collect();
    assert_eq!(
        older_ids,
        ann_spews[..5]
            .iter()
            .rev()
            .map(|s| s.id)
            .collect::<Vec<_>>()
    );

    // Join through the author reference.
    let by_handle = api
        .spews_by_handle()
        .page(
            &SpewsByHandleParams {
                handle: "bob".into(),
            },
            Some(100),
            None,
        )
        .await
        .unwrap();
    assert_eq!(by_handle.items.len(), 5);
    assert!(by_handle.items.iter().all(|s| s.author == bob.id));

    // Membership.
    let both = api
        .spews_by_authors()
        .page(
            &SpewsByAuthorsParams {
                authors: vec![anna.id, bob.id],
            },
            Some(100),
            None,
        )
        .await
        .unwrap();
    assert_eq!(both.items.len(), 5);
    let none = api
        .spews_by_authors()
        .page(&SpewsByAuthorsParams { authors: vec![] }, None, None)
        .await
        .unwrap();
    assert!(none.items.is_empty());

    // Prefix, ordered by handle; handles are case-insensitive, so the prefix is too.
    let an = api
        .users_by_handle_prefix()
        .page(
            &UsersByHandlePrefixParams {
                prefix: "an".into(),
            },
            None,
            None,
        )
        .await
        .unwrap();
    let handles: Vec<&str> = an.items.iter().map(|u| u.handle.as_str()).collect();
    assert_eq!(handles, ["ann", "anna"]);
    let upper = api
        .users_by_handle_prefix()
        .page(
            &UsersByHandlePrefixParams {
                prefix: "AN".into(),
            },
            None,
            None,
        )
        .await
        .unwrap();
    let handles: Vec<&str> = upper.items.iter().map(|u| u.handle.as_str()).collect();
    assert_eq!(handles, ["ann", "anna"]);

    // Counts equal the rows.
    let count = client
        .query::<SpewCountByAuthor>()
        .count(&SpewCountByAuthorParams { author: ann.id })
        .await
        .unwrap();
    let db = env.db().await;
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM spw_spews WHERE author_spw = ?")
        .bind(ann.id.to_string())
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(count, rows as u64);
    assert_eq!(count, 25 + 2, "25 spews plus one late spew per full page");

    let distinct: HashSet<_> = seen.iter().collect();
    assert_eq!(distinct.len(), seen.len());
    client.close().await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn query_errors_are_replies() {
    let env = TestEnv::new("query_errors");
    let server = env.start().await;
    let raw = env.raw().await;
    let read = env.queue("rec.read");
    let ask = |extra: serde_json::Value| {
        let mut req = json!({"v": 1, "id": uuid::Uuid::now_v7(), "domain": "spew", "op": "query"});
        req.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        serde_json::to_vec(&req).unwrap()
    };
    let code = |reply: &serde_json::Value| reply["error"]["code"].as_str().unwrap().to_string();

    let r = raw.request(&read, &ask(json!({"query": "nope"}))).await;
    assert_eq!(code(&r), "unknown_query", "{r}");
    let r = raw
        .request(
            &read,
            &ask(json!({"query": "user_timeline", "params": {"autor": "x"}})),
        )
        .await;
    let details: Vec<(&str, &str)> = r["error"]["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["field"].as_str().unwrap(), d["code"].as_str().unwrap()))
        .collect();
    assert_eq!(
        details,
        [("params.autor", "unknown"), ("params.author", "missing")],
        "{r}"
    );
    let r = raw
        .request(&read, &ask(json!({"query": "user_timeline", "params": {"author": uuid::Uuid::now_v7()}, "cursor": [1]})))
        .await;
    assert_eq!(
        (
            code(&r).as_str(),
            r["error"]["details"][0]["field"].as_str()
        ),
        ("invalid_input", Some("cursor"))
    );
    let r = raw
        .request(&read, &ask(json!({"query": "user_timeline", "params": {"author": uuid::Uuid::now_v7()}, "limit": 101})))
        .await;
    assert_eq!(r["error"]["details"][0]["code"], "above_max");
    let r = raw
        .request(
            &env.queue("rec.write"),
            &ask(json!({"query": "user_timeline"})),
        )
        .await;
    assert_eq!(code(&r), "wrong_queue");

    let client = env.client().await;
    let e = client
        .query::<UserTimeline>()
        .page(
            &UserTimelineParams {
                author: spew::UserId(uuid::Uuid::now_v7()),
                before: None,
            },
            Some(0),
            None,
        )
        .await
        .unwrap_err();
    let ClientError::Remote(e) = e else {
        panic!("{e:?}")
    };
    assert_eq!(
        (e.code, e.details[0].code),
        (ErrorCode::InvalidInput, DetailCode::BelowMin)
    );
    client.close().await.unwrap();
    server.stop().await;
}

/// A grouped query over AMQP, on the database `BEDS_TEST_DATABASE` names: one typed row per
/// author with a spew, ascending by author, paged by the author key; the wire shape and
/// the JSON Schema agree.
#[tokio::test]
async fn grouped_counts_page_by_their_keys() {
    let env = TestEnv::matrix("grouped_queries");
    let server = env.start().await;
    let client = env.client().await;
    let api = spew::client(&client);
    let mut users = Vec::new();
    for h in ["gia", "gus", "gil", "gwen"] {
        let user = api
            .user()
            .create(&UserCreate {
                handle: h.into(),
                display_name: h.into(),
                bio: None,
            })
            .await
            .unwrap();
        users.push(user);
    }
    // gia 3 spews, gus 1, gil none; gwen's 2 are outside the asked authors.
    for (author, n) in [(0, 3), (1, 1), (3, 2)] {
        for i in 0..n {
            api.spew()
                .create(&SpewCreate {
                    author: users[author].id,
                    body: format!("spew {i}"),
                    reply_to: None,
                    respew_of: None,
                })
                .await
                .unwrap();
        }
    }
    let params = SpewCountsByAuthorsParams {
        authors: users[..3].iter().map(|u| u.id).collect(),
    };
    let mut expected = vec![
        SpewCountsByAuthorsGroup {
            author: users[0].id,
            count: 3,
        },
        SpewCountsByAuthorsGroup {
            author: users[1].id,
            count: 1,
        },
    ];
    expected.sort_by_key(|g| g.author);
    let grouped = api.spew_counts_by_authors();
    let all = grouped.page(&params, None, None).await.unwrap();
    assert_eq!(
        all.items, expected,
        "one row per author with spews, by author"
    );
    assert_eq!(all.next, None);

    let mut walked = Vec::new();
    let mut cursor: Option<Cursor> = None;
    loop {
        let page = grouped.page(&params, Some(1), cursor.take()).await.unwrap();
        walked.extend(page.items.iter().cloned());
        match page.next {
            Some(next) => {
                let last = page.items.last().unwrap();
                assert_eq!(next.0, [json!(last.author)], "the cursor is the row's keys");
                cursor = Some(next);
            }
            None => break,
        }
    }
    assert_eq!(walked, expected, "pages of one row walk the same rows");

    // The wire shape, as a client in another language sees it.
    let raw = env.raw().await;
    let request = json!({
        "v": 1, "id": uuid::Uuid::now_v7(), "domain": "spew", "op": "query",
        "query": "spew_counts_by_authors", "params": { "authors": [users[0].id, users[1].id] },
        "limit": 1,
    });
    let reply = raw
        .request(
            &env.queue("rec.read"),
            &serde_json::to_vec(&request).unwrap(),
        )
        .await;
    let first = &expected[0];
    assert_eq!(
        reply["data"],
        json!({ "items": [{ "author": first.author, "count": first.count }], "next": [first.author] }),
        "{reply}"
    );
    let bad_cursor = json!({
        "v": 1, "id": uuid::Uuid::now_v7(), "domain": "spew", "op": "query",
        "query": "spew_counts_by_authors", "params": { "authors": [] }, "cursor": ["x"],
    });
    let reply = raw
        .request(
            &env.queue("rec.read"),
            &serde_json::to_vec(&bad_cursor).unwrap(),
        )
        .await;
    assert_eq!(
        (
            &reply["error"]["code"],
            &reply["error"]["details"][0]["field"]
        ),
        (&json!("invalid_input"), &json!("cursor")),
        "{reply}"
    );

    // `BEDS_*` variables overlay the node's configuration; the test's own is not one.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_beds"))
        .args(["schema", "--json"])
        .output()
        .unwrap();
    let schema: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let row =
        &schema["$defs"]["spew.spew_counts_by_authors.result"]["properties"]["items"]["items"];
    assert_eq!(row["required"], json!(["author", "count"]), "{row}");
    assert_eq!(row["properties"]["count"]["minimum"], 1, "{row}");
    client.close().await.unwrap();
    server.stop().await;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct LabelId(pub uuid::Uuid);

impl rt::Key for LabelId {}

/// A template whose only field is case-insensitive, with one query per condition that
/// folds: SPEW declares no `in` on a handle.
#[derive(Debug, Clone, Serialize, Deserialize, rt::Record)]
#[beds(domain = "labels", template = "label", create = LabelInput, patch = LabelInput)]
#[beds(unique(fields = "name", case_insensitive))]
pub struct Label {
    pub id: LabelId,
    pub version: i64,
    #[beds(string, max = 20)]
    pub name: String,
}

#[derive(Debug, Serialize)]
pub struct LabelInput {
    pub name: String,
}

const NAME: &rt::FieldMeta = &<Label as rt::Record>::META.fields[0];

/// `name <op> $name` (a list for `in`), ordered by name.
const fn label_query(
    name: &'static str,
    params: &'static [rt::ParamMeta],
    filter: &'static [rt::ConditionMeta],
) -> rt::QueryMeta {
    rt::QueryMeta {
        domain: "labels",
        name,
        from: <Label as rt::Record>::META,
        params,
        filter,
        any: &[],
        order: &[("name", false)],
        page: rt::PageMeta {
            default: 10,
            max: 10,
        },
        count: false,
        with: &[],
        group: &[],
        cache_ttl_ms: None,
        reads: &["label"],
        access: &[],
        warehouse: false,
    }
}

const fn param(list: bool) -> rt::ParamMeta {
    rt::ParamMeta {
        name: "name",
        kind: rt::ParamKind::Field(NAME),
        optional: false,
        list,
    }
}

const fn on_name(op: rt::CondOp) -> rt::ConditionMeta {
    rt::ConditionMeta {
        path: &["name"],
        op,
        operand: rt::Operand::Param("name"),
    }
}

static NAMED: rt::QueryMeta = label_query("named", &[param(false)], &[on_name(rt::CondOp::Eq)]);
static NAMED_ANY: rt::QueryMeta =
    label_query("named_any", &[param(true)], &[on_name(rt::CondOp::In)]);
static PREFIXED: rt::QueryMeta =
    label_query("prefixed", &[param(false)], &[on_name(rt::CondOp::Prefix)]);
static LABEL_ROUTES: rt::Routes = rt::Routes::of::<Label>();
static LABELS: rt::DomainMeta = rt::DomainMeta {
    name: "labels",
    version: 1,
    templates: &[<Label as rt::Record>::META],
    queries: &[&NAMED, &NAMED_ANY, &PREFIXED],
};
static LABEL_CATALOG: rt::Catalog = rt::Catalog {
    domains: &[&LABELS],
    route: |domain, template| match (domain, template) {
        ("labels", "label") => Ok(&LABEL_ROUTES),
        ("labels", _) => Err(rt::RouteError::UnknownTemplate),
        _ => Err(rt::RouteError::UnknownDomain),
    },
};

/// `eq`, `in` and `prefix` on a case-insensitive field match in any case, on every
/// database (`BEDS_TEST_DATABASE`).
#[tokio::test]
async fn conditions_on_case_insensitive_fields_match_in_any_case() {
    let env = TestEnv::matrix("label_case");
    let server = Server::start(&env.config, &LABEL_CATALOG)
        .await
        .expect("start");
    let raw = env.raw().await;
    let (read, write) = (env.queue("rec.read"), env.queue("rec.write"));
    let envelope = |extra: serde_json::Value| {
        let mut req = json!({"v": 1, "id": uuid::Uuid::now_v7(), "domain": "labels"});
        req.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        serde_json::to_vec(&req).unwrap()
    };
    for name in ["Rust", "rusty", "Go"] {
        let r = raw
            .request(
                &write,
                &envelope(json!({"template": "label", "op": "create", "data": {"name": name}})),
            )
            .await;
        assert_eq!(r["status"], "ok", "{r}");
    }
    let names = |r: serde_json::Value| -> Vec<String> {
        assert_eq!(r["status"], "ok", "{r}");
        let mut names: Vec<String> = r["data"]["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["name"].as_str().unwrap().to_string())
            .collect();
        names.sort();
        names
    };
    let ask = |name: &str, value: serde_json::Value| {
        envelope(json!({"op": "query", "query": name, "params": {"name": value}}))
    };
    for (query, value, expected) in [
        ("named", json!("RUST"), vec!["Rust"]),
        ("named", json!("rust"), vec!["Rust"]),
        ("named_any", json!(["rUST", "go"]), vec!["Go", "Rust"]),
        ("prefixed", json!("RUS"), vec!["Rust", "rusty"]),
        ("prefixed", json!("g"), vec!["Go"]),
    ] {
        let r = raw.request(&read, &ask(query, value.clone())).await;
        assert_eq!(names(r), expected, "{query}({value})");
    }
    server.stop().await;
}
