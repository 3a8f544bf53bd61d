//! Every template declaring `journal`: a record created, updated twice and deleted has a
//! history of four versions, newest first, each readable with `fetch` `as_of` its version
//! or its time; before its creation it is `not_found`; pages of one walk the whole
//! history. Templates without `journal` refuse `history` and `as_of`.

use beds_runtime::envelope::AsOf;
use beds_runtime::support::{FieldKind, TemplateMeta};
use beds_runtime::{Client, ErrorCode, Op};
use serde_json::{Map, Value as Json};

use super::sample::{Gen, collisions};
use super::{Made, code, id_of, key, send};

pub(super) async fn versions(
    client: &Client,
    domain: &str,
    t: &TemplateMeta,
    samples: &mut Gen,
    made: &Made,
) {
    let Some(existing) = made.get(t.name).and_then(|r| r.first()) else {
        return;
    };
    if !t.capabilities.journal {
        let id = id_of(existing);
        let history = send(client, domain, t.name, Op::History, |r| {
            r.key = Some(key(&id))
        })
        .await;
        assert_eq!(
            code(&history.unwrap_err()),
            Some(ErrorCode::OperationNotAllowed),
            "{}: no `journal`, no history",
            t.name
        );
        let past = send(client, domain, t.name, Op::Fetch, |r| {
            r.key = Some(key(&id));
            r.as_of = Some(AsOf::Version(1));
        })
        .await;
        assert_eq!(
            code(&past.unwrap_err()),
            Some(ErrorCode::OperationNotAllowed),
            "{}: no `journal`, no `as_of`",
            t.name
        );
        return;
    }
    let data = samples.record(t, made, &Map::new());
    let created = send(client, domain, t.name, Op::Create, |r| r.data = Some(data))
        .await
        .unwrap_or_else(|e| panic!("{}: create failed: {e}", t.name));
    let id = id_of(&created);
    let mut states = vec![created.clone()];
    let field = t
        .fields
        .iter()
        .find(|f| f.is_input() && !matches!(f.kind, FieldKind::Ref { .. }));
    for _ in 0..2 {
        let last = states.last().unwrap().clone();
        // A new value when one keeps the unique indexes free, else the same: the version
        // moves either way.
        let data = field.map_or_else(Map::new, |f| {
            let value = (0..100)
                .filter_map(|_| samples.value(t, f, made))
                .find(|v| {
                    let mut after = last.as_object().unwrap().clone();
                    after.insert(f.name.into(), v.clone());
                    collisions(t, &after, made, Some(&id)).is_empty()
                })
                .unwrap_or_else(|| last[f.name].clone());
            Map::from_iter([(f.name.to_string(), value)])
        });
        if data.is_empty() {
            return; // nothing a client can change: no versions to journal beyond create
        }
        let updated = send(client, domain, t.name, Op::Update, |r| {
            r.key = Some(key(&id));
            r.data = Some(data);
        })
        .await
        .unwrap_or_else(|e| panic!("{}: update failed: {e}", t.name));
        states.push(updated);
    }
    send(client, domain, t.name, Op::Delete, |r| {
        r.key = Some(key(&id))
    })
    .await
    .unwrap_or_else(|e| panic!("{}: delete failed: {e}", t.name));

    let history = send(client, domain, t.name, Op::History, |r| {
        r.key = Some(key(&id))
    })
    .await
    .unwrap_or_else(|e| panic!("{}: history failed: {e}", t.name));
    let items = history["items"].as_array().expect("items").clone();
    let shown: Vec<(i64, &str)> = items
        .iter()
        .map(|i| (i["version"].as_i64().unwrap(), i["op"].as_str().unwrap()))
        .collect();
    assert_eq!(
        shown,
        [(4, "delete"), (3, "update"), (2, "update"), (1, "create")],
        "{}: every version, newest first, the delete a tombstone",
        t.name
    );
    assert!(history["next"].is_null(), "{}: one page holds it", t.name);
    for (item, state) in items.iter().rev().zip(&states) {
        assert_eq!(&item["record"], state, "{}: the version as written", t.name);
        let written_at = &item["written_at"];
        let version = state["version"].as_i64().unwrap();
        for as_of in [AsOf::Version(version), AsOf::Time(time(written_at))] {
            let past = send(client, domain, t.name, Op::Fetch, |r| {
                r.key = Some(key(&id));
                r.as_of = Some(as_of);
            })
            .await
            .unwrap_or_else(|e| panic!("{}: fetch as_of {as_of:?} failed: {e}", t.name));
            assert_eq!(&past, state, "{}: fetch as_of {as_of:?}", t.name);
        }
    }
    let created_at = time(&items[3]["written_at"]);
    for as_of in [
        AsOf::Version(0),
        AsOf::Time(created_at - chrono::Duration::milliseconds(1)),
        AsOf::Version(4),
    ] {
        let gone = send(client, domain, t.name, Op::Fetch, |r| {
            r.key = Some(key(&id));
            r.as_of = Some(as_of);
        })
        .await;
        assert_eq!(
            code(&gone.unwrap_err()),
            Some(ErrorCode::NotFound),
            "{}: as_of {as_of:?} is before its creation or after its delete",
            t.name
        );
    }
    // Pages of one: the cursor walks the same history.
    let mut walked = Vec::new();
    let mut cursor: Option<Vec<Json>> = None;
    loop {
        let page = send(client, domain, t.name, Op::History, |r| {
            r.key = Some(key(&id));
            r.limit = Some(1);
            r.cursor = cursor.take();
        })
        .await
        .unwrap_or_else(|e| panic!("{}: history page failed: {e}", t.name));
        walked.extend(page["items"].as_array().unwrap().iter().cloned());
        match page["next"].as_array() {
            Some(next) => cursor = Some(next.clone()),
            None => break,
        }
        assert!(walked.len() <= items.len(), "{}: paging ends", t.name);
    }
    assert_eq!(walked, items, "{}: pages of one walk it all", t.name);
}

fn time(text: &Json) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339(text.as_str().expect("an RFC 3339 time"))
        .expect("an RFC 3339 time")
        .with_timezone(&chrono::Utc)
}
