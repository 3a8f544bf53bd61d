//! Access rules of every domain: each operation and query whose rule does not admit
//! `public` is refused (`forbidden`) to a caller with no subject and no role; each rule
//! naming `owner` refuses a non-owner subject on a missing record (`forbidden`, not
//! `not_found`); and each rule naming a role admits a subject holding it. Names no domain.

use beds_runtime::support::TemplateMeta;
use beds_runtime::{Client, ClientOptions, ErrorCode, Op, Request};
use serde_json::{Map, Value as Json, json};

use crate::support::TestEnv;

/// The rule an operation is under, as wiki/security.md states it: lock and unlock under
/// `update`'s, history under `fetch`'s, a `list` without its own under `fetch`'s without
/// `owner`, else `[public]` (the harness's default).
fn rule(t: &TemplateMeta, op: Op) -> Vec<&'static str> {
    let declared = |op: Op| t.access.iter().find(|(o, _)| *o == op).map(|(_, w)| *w);
    let under = match op {
        Op::Lock | Op::Unlock => Op::Update,
        Op::History => Op::Fetch,
        op => op,
    };
    match (declared(under), op) {
        (Some(who), _) => who.to_vec(),
        (None, Op::List) => declared(Op::Fetch).map_or(vec!["public"], |who| {
            who.iter().copied().filter(|w| *w != "owner").collect()
        }),
        (None, _) => vec!["public"],
    }
}

fn request(domain: &str, t: &TemplateMeta, op: Op) -> Request {
    let mut r = Request::new(domain, t.name, op);
    if !matches!(op, Op::Create | Op::List) {
        let id = match t.id {
            beds_runtime::support::IdKind::Sequence => json!(i32::MAX),
            _ => json!(uuid::Uuid::now_v7()),
        };
        r.key = Some(Map::from_iter([("id".to_string(), id)]));
    }
    if matches!(op, Op::Create | Op::Update) {
        r.data = Some(Map::new());
    }
    if op == Op::Unlock {
        r.lock_token = Some("no-such-lease".into());
    }
    r
}

async fn code(client: &Client, r: Request) -> Option<ErrorCode> {
    client.request(r).await.err().and_then(|e| e.code())
}

#[tokio::test]
async fn every_access_rule_is_enforced() {
    let mut env = TestEnv::new("access_conformance");
    // The harness's user holds no role here, and may assert subjects and roles.
    env.config.security.service_roles.clear();
    env.config.security.trusted_services = vec![env.login()];
    let server = env.start().await;
    let options = || ClientOptions::from_config(&env.config, "tests");
    let nobody = Client::connect(options()).await.unwrap();
    let stranger = Client::connect(options().as_subject(Some("a-stranger"), &[]))
        .await
        .unwrap();
    let mut refused = 0;
    for d in beds::CATALOG.domains {
        for t in d.templates.iter().filter(|t| !t.internal) {
            for op in t.ops() {
                let who = rule(t, op);
                let open = who.contains(&"public");
                let got = code(&nobody, request(d.name, t, op)).await;
                if open {
                    assert_ne!(
                        got,
                        Some(ErrorCode::Forbidden),
                        "{}.{} {op:?}",
                        d.name,
                        t.name
                    );
                    continue;
                }
                assert_eq!(
                    got,
                    Some(ErrorCode::Forbidden),
                    "{}.{} {op:?} to nobody",
                    d.name,
                    t.name
                );
                refused += 1;
                // Updates need valid data first (the SPEW test covers them), creates a record.
                if who.contains(&"owner")
                    && !who.contains(&"authenticated")
                    && !matches!(op, Op::Create | Op::Update)
                {
                    let got = code(&stranger, request(d.name, t, op)).await;
                    assert_eq!(
                        got,
                        Some(ErrorCode::Forbidden),
                        "{}.{} {op:?} of a missing record to a non-owner",
                        d.name,
                        t.name
                    );
                }
                for role in who
                    .iter()
                    .filter(|w| !["owner", "authenticated"].contains(w))
                {
                    let holder = Client::connect(options().as_subject(Some("holder"), &[role]))
                        .await
                        .unwrap();
                    let got = code(&holder, request(d.name, t, op)).await;
                    assert_ne!(
                        got,
                        Some(ErrorCode::Forbidden),
                        "{}.{} {op:?} as {role}",
                        d.name,
                        t.name
                    );
                    holder.close().await.ok();
                }
            }
        }
        // A query's own rule, or (without one) the `fetch` rule without `owner` of every
        // template it reads: refused to nobody unless each admits `public`.
        let closed = |q: &&&beds_runtime::support::QueryMeta| {
            if !q.access.is_empty() {
                return !q.access.contains(&"public");
            }
            q.reads.iter().filter_map(|name| d.template(name)).any(|t| {
                t.access
                    .iter()
                    .find(|(o, _)| *o == Op::Fetch)
                    .is_some_and(|(_, who)| !who.contains(&"public"))
            })
        };
        for q in d.queries.iter().filter(closed) {
            let mut r = Request::new(d.name, "", Op::Query);
            r.query = Some(q.name.into());
            r.params = Some(Map::<String, Json>::new());
            assert_eq!(
                code(&nobody, r).await,
                Some(ErrorCode::Forbidden),
                "{}.{}",
                d.name,
                q.name
            );
            refused += 1;
        }
    }
    println!("access conformance: {refused} refusals checked");
    nobody.close().await.ok();
    stranger.close().await.ok();
    server.stop().await;
}
