//! The `journal` capability on SPEW's journaled templates through the typed client:
//! history pages, `fetch_as_of` a version and a time (past the read cache), and the
//! versions a cascade and a `set_null` write into the journal; what is refused, and how.

use beds::spew::{self, Spew, SpewCreate, User, UserCreate, UserPatch};
use beds_runtime::events::WriteOp;
use beds_runtime::{AsOf, Client, ErrorCode, Op, ReadOptions, Request};
use serde_json::{Map, json};

use crate::support::TestEnv;

fn user(handle: &str) -> UserCreate {
    UserCreate {
        handle: handle.into(),
        display_name: handle.to_uppercase(),
        bio: None,
    }
}

fn spew_by(author: &User, body: &str, reply_to: Option<&Spew>) -> SpewCreate {
    SpewCreate {
        author: author.id,
        body: body.into(),
        reply_to: reply_to.map(|s| s.id),
        respew_of: None,
    }
}

#[tokio::test]
async fn journal_round_trips_through_the_typed_client() {
    let env = TestEnv::matrix("journal_typed");
    let server = env.start().await;
    let client = env.client().await;
    let users = spew::client(&client).user();

    let v1 = users.create(&user("ada")).await.unwrap();
    let mut states = vec![v1.clone()];
    for name in ["Ada L.", "Countess Lovelace"] {
        let patch = UserPatch {
            display_name: Some(name.into()),
            ..UserPatch::default()
        };
        states.push(users.update(v1.id, &patch).await.unwrap());
    }

    let history = users.history(v1.id, None, None).await.unwrap();
    let shown: Vec<(i64, WriteOp)> = history.items.iter().map(|v| (v.version, v.op)).collect();
    assert_eq!(
        shown,
        [
            (3, WriteOp::Update),
            (2, WriteOp::Update),
            (1, WriteOp::Create)
        ]
    );
    let records: Vec<User> = history
        .items
        .iter()
        .rev()
        .map(|v| v.record.clone())
        .collect();
    assert_eq!(records, states, "each version as its write answered it");
    assert_eq!(history.next, None);

    // The current record is cached; `as_of` still answers the past from the journal.
    let cached = users
        .fetch_with(v1.id, ReadOptions::cached())
        .await
        .unwrap();
    assert_eq!(cached.display_name, "Countess Lovelace");
    let first = users.fetch_as_of(v1.id, AsOf::Version(1)).await.unwrap();
    assert_eq!(first, states[0]);
    let second_at = history.items[1].written_at;
    let second = users
        .fetch_as_of(v1.id, AsOf::Time(second_at))
        .await
        .unwrap();
    assert_eq!(second, states[1]);
    let before = users
        .fetch_as_of(
            v1.id,
            AsOf::Time(history.items[2].written_at - chrono::Duration::seconds(1)),
        )
        .await
        .unwrap_err();
    assert_eq!(before.code(), Some(ErrorCode::NotFound));

    // Pages of two: the cursor continues with the oldest version.
    let page = users.history(v1.id, Some(2), None).await.unwrap();
    assert_eq!(page.items.len(), 2);
    let rest = users.history(v1.id, Some(2), page.next).await.unwrap();
    assert_eq!(
        rest.items.iter().map(|v| v.version).collect::<Vec<_>>(),
        [1]
    );
    assert_eq!(rest.next, None);

    client.close().await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn cascaded_deletes_and_set_null_are_journaled() {
    let env = TestEnv::matrix("journal_cascade");
    let server = env.start().await;
    let client = env.client().await;
    let (users, spews) = (spew::client(&client).user(), spew::client(&client).spew());

    let bob = users.create(&user("bob")).await.unwrap();
    let carol = users.create(&user("carol")).await.unwrap();
    let original = spews.create(&spew_by(&bob, "first!", None)).await.unwrap();
    let reply = spews
        .create(&spew_by(&carol, "welcome", Some(&original)))
        .await
        .unwrap();

    // Deleting bob deletes his spew, which nulls carol's reply's `reply_to`.
    users.delete(bob.id).await.unwrap();

    let ops = |h: &beds_runtime::History<Spew>| -> Vec<(i64, WriteOp)> {
        h.items.iter().map(|v| (v.version, v.op)).collect()
    };
    let gone = spews.history(original.id, None, None).await.unwrap();
    assert_eq!(ops(&gone), [(2, WriteOp::Delete), (1, WriteOp::Create)]);
    assert_eq!(
        gone.items[0].record.body, "first!",
        "the tombstone holds the last state"
    );
    let nulled = spews.history(reply.id, None, None).await.unwrap();
    // The database does not bump a nulled record's version; the journal keeps it so.
    assert_eq!(ops(&nulled), [(1, WriteOp::Update), (1, WriteOp::Create)]);
    assert_eq!(nulled.items[0].record.reply_to, None);
    assert_eq!(nulled.items[1].record.reply_to, Some(original.id));
    let bob_history = users.history(bob.id, None, None).await.unwrap();
    assert_eq!(
        bob_history
            .items
            .iter()
            .map(|v| (v.version, v.op))
            .collect::<Vec<_>>(),
        [(2, WriteOp::Delete), (1, WriteOp::Create)]
    );

    assert_eq!(
        spews
            .fetch_as_of(original.id, AsOf::Version(1))
            .await
            .unwrap(),
        original
    );
    let deleted = spews
        .fetch_as_of(original.id, AsOf::Version(2))
        .await
        .unwrap_err();
    assert_eq!(deleted.code(), Some(ErrorCode::NotFound));
    assert_eq!(
        spews.fetch(original.id).await.unwrap_err().code(),
        Some(ErrorCode::NotFound)
    );

    client.close().await.unwrap();
    server.stop().await;
}

/// The error reply to `op` on `template`, shaped by `shape`.
async fn refused(
    client: &Client,
    template: &str,
    op: Op,
    shape: impl FnOnce(&mut Request),
) -> beds_runtime::BedsError {
    let mut req = Request::new("spew", template, op);
    shape(&mut req);
    match client.request(req).await.unwrap_err() {
        beds_runtime::ClientError::Remote(e) => e,
        other => panic!("expected an error reply, got {other}"),
    }
}

#[tokio::test]
async fn journal_requests_are_refused_clearly() {
    let env = TestEnv::new("journal_refusals");
    let server = env.start().await;
    let client = env.client().await;
    let ada = spew::client(&client)
        .user()
        .create(&user("ada"))
        .await
        .unwrap();
    let by_handle = Map::from_iter([("handle".to_string(), json!("ada"))]);
    let by_id = Map::from_iter([("id".to_string(), json!(ada.id))]);

    // Past versions are kept by id: a unique key is refused, naming `key`.
    let e = refused(&client, "user", Op::History, |r| {
        r.key = Some(by_handle.clone())
    })
    .await;
    assert_eq!(
        (e.code, e.details[0].field.as_str()),
        (ErrorCode::InvalidInput, "key")
    );
    let e = refused(&client, "user", Op::Fetch, |r| {
        r.key = Some(by_handle.clone());
        r.as_of = Some(AsOf::Version(1));
    })
    .await;
    assert_eq!(
        (e.code, e.details[0].field.as_str()),
        (ErrorCode::InvalidInput, "key")
    );

    // Read options would do nothing on the journal: refused, not ignored.
    let e = refused(&client, "user", Op::Fetch, |r| {
        r.key = Some(by_id.clone());
        r.as_of = Some(AsOf::Version(1));
        r.consistency = Some(beds_runtime::Consistency::Cached);
    })
    .await;
    assert_eq!(e.code, ErrorCode::InvalidEnvelope);
    assert!(e.message.contains("never the cache"), "{}", e.message);

    // A cursor that is not a page's `next`.
    let e = refused(&client, "user", Op::History, |r| {
        r.key = Some(by_id.clone());
        r.cursor = Some(vec![json!("x")]);
    })
    .await;
    assert_eq!(
        (e.code, e.details[0].field.as_str()),
        (ErrorCode::InvalidInput, "cursor")
    );

    // `follow` keeps no journal: both refused, saying what it would need.
    let e = refused(&client, "follow", Op::History, |r| {
        r.key = Some(by_id.clone())
    })
    .await;
    assert_eq!(e.code, ErrorCode::OperationNotAllowed);
    assert!(e.message.contains("journal: true"), "{}", e.message);
    let e = refused(&client, "follow", Op::Fetch, |r| {
        r.key = Some(by_id.clone());
        r.as_of = Some(AsOf::Version(1));
    })
    .await;
    assert_eq!(e.code, ErrorCode::OperationNotAllowed);
    assert!(e.message.contains("`journal`"), "{}", e.message);

    client.close().await.unwrap();
    server.stop().await;
}

/// A journaled template written by hand (the derive's `journal` flag), with sequence ids.
mod by_hand {
    use beds_runtime::support as rt;
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
    #[serde(transparent)]
    pub struct EntryId(pub i64);

    impl rt::Key for EntryId {}

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, rt::Record)]
    #[beds(domain = "ledger", template = "entry", create = EntryInput, patch = EntryInput)]
    #[beds(id = "sequence", journal)]
    pub struct Entry {
        pub id: EntryId,
        pub version: i64,
        #[beds(string, max = 40)]
        pub label: String,
    }

    #[derive(Debug, Clone, Serialize)]
    pub struct EntryInput {
        pub label: String,
    }

    static ENTRIES: rt::Routes = rt::Routes::of::<Entry>();
    static DOMAIN: rt::DomainMeta = rt::DomainMeta {
        name: "ledger",
        version: 1,
        templates: &[<Entry as rt::Record>::META],
        queries: &[],
    };
    pub static CATALOG: rt::Catalog = rt::Catalog {
        domains: &[&DOMAIN],
        route: |domain, template| match (domain, template) {
            ("ledger", "entry") => Ok(&ENTRIES),
            ("ledger", _) => Err(rt::RouteError::UnknownTemplate),
            _ => Err(rt::RouteError::UnknownDomain),
        },
    };
}

#[tokio::test]
async fn a_derived_template_declares_journal() {
    use by_hand::{CATALOG, Entry, EntryInput};
    let env = TestEnv::matrix("journal_derive");
    let server = beds_runtime::Server::start(&env.config, &CATALOG)
        .await
        .expect("start");
    let client = env.client().await;
    let entries = client.template::<Entry>();
    let input = |label: &str| EntryInput {
        label: label.into(),
    };
    let first = entries.create(&input("opened")).await.unwrap();
    let second = entries.update(first.id, &input("settled")).await.unwrap();
    entries.delete(first.id).await.unwrap();

    let history = entries.history(first.id, None, None).await.unwrap();
    let labels: Vec<(i64, &str)> = history
        .items
        .iter()
        .map(|v| (v.version, v.record.label.as_str()))
        .collect();
    assert_eq!(labels, [(3, "settled"), (2, "settled"), (1, "opened")]);
    assert_eq!(
        entries
            .fetch_as_of(first.id, AsOf::Version(2))
            .await
            .unwrap(),
        second
    );
    assert_eq!(
        entries
            .fetch_as_of(first.id, AsOf::Version(3))
            .await
            .unwrap_err()
            .code(),
        Some(ErrorCode::NotFound)
    );
    client.close().await.unwrap();
    server.stop().await;
}
