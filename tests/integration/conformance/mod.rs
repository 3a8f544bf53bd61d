//! The conformance suite: for every template of every compiled domain, valid and invalid
//! inputs generated from the declaration, sent over AMQP through create, fetch, list,
//! update, delete and every named query, with replies and rows checked; then every
//! declared behaviour (unique indexes, references' `on_delete`, append-only refusals,
//! leases of `locking` templates, the history of `journal` templates). It
//! names no domain: a new domain file gets this coverage without writing a test.
//!
//! Samples come from one seed per run, printed at the start and in any failure;
//! `BEDS_TEST_SEED=<seed>` replays a run.

mod access;
mod groups;
mod journal;
mod locking;
mod model;
mod query;
mod sample;

use std::collections::HashMap;
use std::future::Future;

use crate::support::{Rows, TestDatabase, TestEnv};
use beds_runtime::support::{DomainMeta, FieldKind, FieldMeta, IdKind, OnDelete, TemplateMeta};
use beds_runtime::{Client, ClientError, DetailCode, ErrorCode, Op, Request};
use serde_json::{Map, Value as Json, json};

use model::Model;
use sample::{Gen, collisions, stored};

/// Records created so far, by template name (one domain at a time).
type Made = HashMap<&'static str, Vec<Json>>;

/// Records made per template: enough for several to share a reference, a token or a
/// value, so that queries match several and page across boundaries.
const PER_TEMPLATE: usize = 6;

/// Runs `body` with this run's seed; a failure names the seed to replay it with.
async fn seeded<F>(name: &str, body: impl FnOnce(u64) -> F)
where
    F: Future<Output = ()> + Send + 'static,
{
    let seed = sample::seed();
    println!("{name}: BEDS_TEST_SEED={seed}");
    if let Err(e) = tokio::spawn(body(seed)).await {
        let cause = e.try_into_panic().map_or_else(
            |e| e.to_string(),
            |p| {
                p.downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default()
            },
        );
        panic!("{name} failed; replay with BEDS_TEST_SEED={seed}: {cause}");
    }
}

#[tokio::test]
async fn every_template_and_query_conforms() {
    seeded("conformance", conforms).await;
}

async fn conforms(seed: u64) {
    let env = TestEnv::matrix("conformance");
    // Counts a template declares `maintained` are kept by a tercero beside the appServer.
    let server = env.start_counting().await;
    let client = env.client().await;
    let db = env.rows().await;
    let fold = TestDatabase::from_env() == TestDatabase::MariaDb;
    let mut samples = Gen::new(seed);
    let mut exercised = Vec::new();
    for d in beds::CATALOG.domains {
        let order = d.in_reference_order();
        let mut made: Made = HashMap::new();
        for t in &order {
            if t.internal {
                let e = send(&client, d.name, t.name, Op::List, |_| {})
                    .await
                    .unwrap_err();
                assert_eq!(
                    code(&e),
                    Some(ErrorCode::UnknownTemplate),
                    "{}: internal templates are not routed",
                    t.name
                );
                exercised.push(format!("{}.{}", d.name, t.name));
                continue;
            }
            let base = samples.record(t, &made, &Map::new());
            invalid_inputs(&client, d.name, t, &base).await;
            for _ in 0..PER_TEMPLATE {
                let record = create_valid(&client, &db, d.name, t, &mut samples, &made).await;
                made.entry(t.name).or_default().push(record);
            }
            read_back(&client, d.name, t, &made).await;
            update_one(&client, &db, d.name, t, &mut samples, &mut made).await;
            locking::leases(&client, d.name, t, &mut made).await;
            journal::versions(&client, d.name, t, &mut samples, &made).await;
            exercised.push(format!("{}.{}", d.name, t.name));
        }
        // Queries read maintained counts from counters, which lag the writes above.
        env.settle().await;
        for q in d.queries {
            if q.grouped() {
                groups::grouped_query(&client, d.name, q, &made).await;
            } else {
                query::run_query(&client, q, &made, fold, seed).await;
            }
            exercised.push(format!("{}.{}", d.name, q.name));
        }
        for t in order.iter().filter(|t| !t.internal) {
            unique_indexes(&client, &db, d, t, &mut samples, &made).await;
            references(&client, &db, d, t, &mut samples, &mut made).await;
        }
        for t in order.iter().rev().filter(|t| !t.internal) {
            let ids: Vec<Json> = made.get(t.name).into_iter().flatten().map(id_of).collect();
            for id in ids {
                delete_checked(&client, &db, d, t, &id, &mut made).await;
            }
        }
    }
    println!("conformance covered: {}", exercised.join(", "));
    assert!(!exercised.is_empty());
    // The zero-core-diff gate compares this list with what `beds check` serves.
    if let Some(path) = std::env::var_os("BEDS_TEST_COVERAGE") {
        std::fs::write(path, exercised.join("\n") + "\n").unwrap();
    }
    client.close().await.unwrap();
    server.stop().await;
}

/// Concurrent deliveries of one write (same request id, so the same idempotency key) are
/// applied once and all answered with the first reply, on every database: the race between
/// them is decided by the idempotency claim, not by the record's own unique index.
#[tokio::test]
async fn concurrent_duplicate_writes_apply_once() {
    seeded("duplicates", duplicates_apply_once).await;
}

async fn duplicates_apply_once(seed: u64) {
    let env = TestEnv::matrix("duplicates");
    let server = env.start().await;
    let client = env.client().await;
    let db = env.rows().await;
    let mut samples = Gen::new(seed);
    for d in beds::CATALOG.domains {
        for t in d.in_reference_order().into_iter().filter(|t| !t.internal) {
            if t.fields
                .iter()
                .any(|f| matches!(f.kind, FieldKind::Ref { .. }))
            {
                continue; // needs records of other templates; covered by the suite above
            }
            let mut req = Request::new(d.name, t.name, Op::Create);
            req.data = Some(samples.record(t, &HashMap::new(), &Map::new()));
            let replies =
                futures_util::future::join_all((0..8).map(|_| client.request(req.clone()))).await;
            let first = replies[0]
                .as_ref()
                .unwrap_or_else(|e| panic!("{}: {e}", t.name));
            for r in &replies {
                assert_eq!(
                    r.as_ref().unwrap(),
                    first,
                    "{}: every duplicate gets the first reply",
                    t.name
                );
            }
            assert_eq!(
                db.total(t.table).await,
                1,
                "{}: applied once (a second application would be a second row)",
                t.name
            );
        }
    }
    client.close().await.unwrap();
    server.stop().await;
}

async fn send(
    client: &Client,
    domain: &str,
    template: &str,
    op: Op,
    shape: impl FnOnce(&mut Request),
) -> Result<Json, ClientError> {
    let mut req = Request::new(domain, template, op);
    shape(&mut req);
    client.request(req).await
}

fn code(e: &ClientError) -> Option<ErrorCode> {
    e.code()
}

fn detail(e: &ClientError) -> Vec<(String, DetailCode)> {
    match e {
        ClientError::Remote(e) => e
            .details
            .iter()
            .map(|d| (d.field.clone(), d.code))
            .collect(),
        _ => panic!("expected an error reply, got {e}"),
    }
}

fn id_of(record: &Json) -> Json {
    let id = record["id"].clone();
    assert!(
        id.is_string() || id.as_i64().is_some_and(|i| i > 0),
        "ids are UUID strings or positive integers: {id}"
    );
    id
}

fn key(id: &Json) -> Map<String, Json> {
    Map::from_iter([("id".to_string(), id.clone())])
}

/// Equal as the declared type means it (timestamps by instant, numbers by value).
fn same(f: &FieldMeta, sent: &Json, got: &Json) -> bool {
    match f.kind {
        FieldKind::Timestamp if sent.is_string() && got.is_string() => {
            let t = |j: &Json| chrono::DateTime::parse_from_rfc3339(j.as_str().unwrap()).unwrap();
            t(sent) == t(got)
        }
        FieldKind::Float { .. } if !sent.is_null() => sent.as_f64() == got.as_f64(),
        _ => sent == got,
    }
}

async fn rows(db: &Rows, t: &TemplateMeta, id: &Json) -> i64 {
    db.count(t.table, t.id_column, id).await
}

async fn create_valid(
    client: &Client,
    db: &Rows,
    domain: &str,
    t: &TemplateMeta,
    samples: &mut Gen,
    made: &Made,
) -> Json {
    let data = samples.record(t, made, &Map::new());
    create(client, db, domain, t, data).await
}

/// Creates a record from valid `data` and checks the reply and the row: every sent value
/// echoed, defaults applied, server-set fields set, absent optional fields null.
async fn create(
    client: &Client,
    db: &Rows,
    domain: &str,
    t: &TemplateMeta,
    data: Map<String, Json>,
) -> Json {
    let record = send(client, domain, t.name, Op::Create, |r| {
        r.data = Some(data.clone())
    })
    .await
    .unwrap_or_else(|e| panic!("{domain}.{}: valid create failed: {e}\n{data:?}", t.name));
    assert_eq!(
        record["version"], 1,
        "{}: new records are version 1",
        t.name
    );
    for f in t.fields {
        let got = &record[f.name];
        if f.set.is_some() {
            assert!(
                got.is_string(),
                "{}.{} is set by the server",
                t.name,
                f.name
            );
        } else {
            let want = stored(f, &data);
            assert!(
                same(f, &want, got),
                "{}.{}: sent {:?} (default {:?}), stored {got}",
                t.name,
                f.name,
                data.get(f.name),
                f.default
            );
        }
    }
    assert_eq!(
        rows(db, t, &id_of(&record)).await,
        1,
        "{}: the row is stored",
        t.name
    );
    record
}

async fn invalid_inputs(client: &Client, domain: &str, t: &TemplateMeta, base: &Map<String, Json>) {
    let mut cases: Vec<(Map<String, Json>, String, DetailCode)> = Vec::new();
    let mut with_missing: Vec<(Map<String, Json>, String)> = Vec::new();
    let mut with = |name: &str, v: Json, code: DetailCode| {
        let mut data = base.clone();
        data.insert(name.into(), v);
        cases.push((data, format!("data.{name}"), code));
    };
    for f in t.fields.iter().filter(|f| f.is_input()) {
        match f.kind {
            FieldKind::String { min, max, .. } => {
                with(f.name, json!(42), DetailCode::WrongType);
                with(
                    f.name,
                    json!("x".repeat(max as usize + 1)),
                    DetailCode::TooLong,
                );
                if min > 1 {
                    with(
                        f.name,
                        json!("x".repeat(min as usize - 1)),
                        DetailCode::TooShort,
                    );
                }
            }
            FieldKind::Text { max } => {
                with(f.name, json!(true), DetailCode::WrongType);
                if let Some(max) = max {
                    with(
                        f.name,
                        json!("x".repeat(max as usize + 1)),
                        DetailCode::TooLong,
                    );
                }
            }
            FieldKind::Integer { min, max } | FieldKind::BigInt { min, max } => {
                with(f.name, json!("7"), DetailCode::WrongType);
                if min > i64::MIN {
                    with(f.name, json!(min - 1), DetailCode::BelowMin);
                }
                if max < i64::MAX {
                    with(f.name, json!(max + 1), DetailCode::AboveMax);
                }
            }
            FieldKind::Float { min, max } => {
                with(f.name, json!("1.5"), DetailCode::WrongType);
                if let Some(min) = min {
                    with(f.name, json!(min - 1.0), DetailCode::BelowMin);
                }
                if let Some(max) = max {
                    with(f.name, json!(max + 1.0), DetailCode::AboveMax);
                }
            }
            FieldKind::Bool => with(f.name, json!("yes"), DetailCode::WrongType),
            FieldKind::Timestamp => with(f.name, json!("yesterday"), DetailCode::InvalidFormat),
            FieldKind::Date => with(f.name, json!("2026-13-01"), DetailCode::InvalidFormat),
            FieldKind::Uuid | FieldKind::Ref { .. } => {
                with(f.name, json!("not-a-uuid"), DetailCode::InvalidFormat)
            }
            FieldKind::Enum { .. } => {
                with(f.name, json!("no_such_value"), DetailCode::InvalidFormat)
            }
            FieldKind::Json => {}
        }
        if !f.optional && f.default.is_none() {
            let mut data = base.clone();
            data.remove(f.name);
            with_missing.push((data, format!("data.{}", f.name)));
        } else if !f.optional {
            with(f.name, Json::Null, DetailCode::NotNullable);
        }
    }
    for f in t.fields.iter().filter(|f| !f.is_input()) {
        with(f.name, json!("2026-01-01T00:00:00Z"), DetailCode::ReadOnly);
    }
    with("no_such_field", json!(1), DetailCode::Unknown);
    cases.extend(
        with_missing
            .into_iter()
            .map(|(d, f)| (d, f, DetailCode::Missing)),
    );
    for (data, field, expected) in cases {
        let e = send(client, domain, t.name, Op::Create, |r| r.data = Some(data))
            .await
            .expect_err("invalid input is refused");
        assert_eq!(
            code(&e),
            Some(ErrorCode::InvalidInput),
            "{}: {field}",
            t.name
        );
        assert_eq!(
            detail(&e),
            vec![(field.clone(), expected)],
            "{}: {field}",
            t.name
        );
    }
}

async fn read_back(client: &Client, domain: &str, t: &TemplateMeta, made: &Made) {
    let mine = &made[t.name];
    for record in mine {
        let id = id_of(record);
        let got = send(client, domain, t.name, Op::Fetch, |r| {
            r.key = Some(key(&id))
        })
        .await
        .unwrap();
        assert_eq!(
            &got, record,
            "{}: fetch returns what create returned",
            t.name
        );
    }
    let page = send(client, domain, t.name, Op::List, |r| {
        r.limit = Some(t.page.max)
    })
    .await
    .unwrap();
    let listed: Vec<&Json> = page["items"].as_array().unwrap().iter().collect();
    for record in mine {
        assert!(
            listed.contains(&record),
            "{}: list contains every record",
            t.name
        );
    }
    // Each unique index is a key too.
    for u in t.unique {
        for record in mine {
            let k: Map<String, Json> = u
                .fields
                .iter()
                .map(|f| (f.to_string(), record[*f].clone()))
                .collect();
            if k.values().any(Json::is_null) {
                continue;
            }
            let got = send(client, domain, t.name, Op::Fetch, |r| {
                r.key = Some(k.clone())
            })
            .await
            .unwrap_or_else(|e| panic!("{}: fetch by {k:?}: {e}", t.name));
            assert_eq!(
                &got, record,
                "{}: fetch by unique key {:?}",
                t.name, u.fields
            );
        }
    }
}

async fn update_one(
    client: &Client,
    db: &Rows,
    domain: &str,
    t: &TemplateMeta,
    samples: &mut Gen,
    made: &mut Made,
) {
    let before = made[t.name][0].clone();
    let id = id_of(&before);
    let Some(f) = t
        .fields
        .iter()
        .find(|f| f.is_input() && !matches!(f.kind, FieldKind::Ref { .. }))
    else {
        return;
    };
    // A new value that keeps every unique index free.
    let value = (0..100)
        .map(|_| samples.value(t, f, made).unwrap())
        .find(|v| {
            let mut after = before.as_object().unwrap().clone();
            after.insert(f.name.into(), v.clone());
            collisions(t, &after, made, Some(&id)).is_empty()
        })
        .unwrap_or_else(|| panic!("{}.{}: no free value to update to", t.name, f.name));
    let data = Map::from_iter([(f.name.to_string(), value.clone())]);
    let result = send(client, domain, t.name, Op::Update, |r| {
        r.key = Some(key(&id));
        r.data = Some(data);
    })
    .await;
    if t.append_only {
        assert_eq!(
            code(&result.unwrap_err()),
            Some(ErrorCode::OperationNotAllowed),
            "{}: append-only records are not updated",
            t.name
        );
        let got = send(client, domain, t.name, Op::Fetch, |r| {
            r.key = Some(key(&id))
        })
        .await
        .unwrap();
        assert_eq!(got, before, "{}: the record is unchanged", t.name);
        return;
    }
    let updated = result.unwrap_or_else(|e| panic!("{}: update failed: {e}", t.name));
    assert_eq!(
        updated["version"], 2,
        "{}: an update bumps the version",
        t.name
    );
    assert!(
        same(f, &value, &updated[f.name]),
        "{}.{} updated",
        t.name,
        f.name
    );
    let version = db
        .int(&db.quote(t.version_column), t.table, t.id_column, &id)
        .await;
    assert_eq!(version, 2, "{}: the row carries the new version", t.name);
    made.get_mut(t.name).unwrap()[0] = updated;
}

/// Every unique index refuses a second record with the key of an existing one
/// (differently cased where the index is case-insensitive): `unique_violation` naming the
/// index's fields, and no row added.
async fn unique_indexes(
    client: &Client,
    db: &Rows,
    d: &DomainMeta,
    t: &TemplateMeta,
    samples: &mut Gen,
    made: &Made,
) {
    for (i, u) in t.unique.iter().enumerate() {
        if u.fields.iter().any(|f| !t.field(f).unwrap().is_input()) {
            continue; // a key the server sets cannot be repeated on purpose
        }
        let Some(existing) = made[t.name]
            .iter()
            .find(|r| u.fields.iter().all(|f| !r[*f].is_null()))
        else {
            continue;
        };
        let pinned: Map<String, Json> = u
            .fields
            .iter()
            .map(|f| {
                let v = &existing[*f];
                // Differently cased where the index folds case and the field's pattern
                // allows it.
                let pattern = match t.field(f).unwrap().kind {
                    FieldKind::String { pattern, .. } => pattern,
                    _ => None,
                };
                let v = match (v, u.case_insensitive) {
                    (Json::String(s), true)
                        if pattern.is_none_or(|p| {
                            regex::Regex::new(p).unwrap().is_match(&swap_case(s))
                        }) =>
                    {
                        json!(swap_case(s))
                    }
                    _ => v.clone(),
                };
                (f.to_string(), v)
            })
            .collect();
        let mut others = made.clone();
        others
            .get_mut(t.name)
            .unwrap()
            .retain(|r| r["id"] != existing["id"]);
        // Only this index may collide, so the refusal is this index's.
        let data = (0..100)
            .map(|_| samples.record(t, &others, &pinned))
            .find(|data| collisions(t, data, made, None) == [i])
            .unwrap_or_else(|| panic!("{}: no record colliding on {:?} alone", t.name, u.fields));
        let total = db.total(t.table).await;
        let e = send(client, d.name, t.name, Op::Create, |r| {
            r.data = Some(data.clone())
        })
        .await
        .expect_err("a duplicate key is refused");
        let context = format!("{}: duplicate {:?} in {data:?}", t.name, u.fields);
        assert_eq!(code(&e), Some(ErrorCode::UniqueViolation), "{context}: {e}");
        let fields: Vec<(String, DetailCode)> = u
            .fields
            .iter()
            .map(|f| (format!("data.{f}"), DetailCode::Other))
            .collect();
        assert_eq!(detail(&e), fields, "{context}");
        assert_eq!(db.total(t.table).await, total, "{context}: no row added");
    }
}

/// `Ada` for `aDA`: the same key to a case-insensitive index.
fn swap_case(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_lowercase() {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect()
}

/// An id no record has, of the kind `id`.
fn missing_id(id: IdKind) -> Json {
    match id {
        IdKind::Uuid7 => json!(uuid::Uuid::now_v7()),
        IdKind::Sequence => json!(i64::MAX - 7),
    }
}

/// Every reference of `t`: a create and an update pointing at a missing record answer
/// `reference_not_found`; a fresh target with one fresh `t` record pointing at it shows
/// the declared `on_delete` when the target is deleted.
async fn references(
    client: &Client,
    db: &Rows,
    d: &'static DomainMeta,
    t: &'static TemplateMeta,
    samples: &mut Gen,
    made: &mut Made,
) {
    for f in t.fields {
        let FieldKind::Ref {
            template,
            on_delete,
            id,
        } = f.kind
        else {
            continue;
        };
        let context = format!("{}.{} ({on_delete:?} -> {template})", t.name, f.name);
        let missing = Map::from_iter([(f.name.to_string(), missing_id(id))]);
        let data = samples.record(t, made, &missing);
        let e = send(client, d.name, t.name, Op::Create, |r| r.data = Some(data))
            .await
            .expect_err("a missing target is refused");
        assert_eq!(
            code(&e),
            Some(ErrorCode::ReferenceNotFound),
            "{context}: create: {e}"
        );
        if !t.append_only {
            let target = id_of(&made[t.name][0]);
            let e = send(client, d.name, t.name, Op::Update, |r| {
                r.key = Some(key(&target));
                r.data = Some(missing.clone());
            })
            .await
            .expect_err("a missing target is refused");
            assert_eq!(
                code(&e),
                Some(ErrorCode::ReferenceNotFound),
                "{context}: update: {e}"
            );
        }
        let target_t = d.template(template).unwrap();
        let parent = create_valid(client, db, d.name, target_t, samples, made).await;
        let pin = Map::from_iter([(f.name.to_string(), parent["id"].clone())]);
        let data = samples.record(t, made, &pin);
        // Added after the child is generated, so no other reference picks the parent.
        made.entry(template).or_default().push(parent.clone());
        let child = create(client, db, d.name, t, data).await;
        made.entry(t.name).or_default().push(child.clone());
        let model = Model {
            d,
            made,
            fold: false,
        };
        match model.delete(target_t, &parent["id"]) {
            Err(_) => assert_eq!(
                on_delete,
                OnDelete::Restrict,
                "{context}: only a restrict reference refuses"
            ),
            Ok(effect) => {
                let gone = effect
                    .gone
                    .iter()
                    .any(|(x, i)| x.name == t.name && *i == child["id"]);
                let nulled = effect
                    .nulled
                    .iter()
                    .any(|(x, i, n)| x.name == t.name && *i == child["id"] && *n == f.name);
                match on_delete {
                    OnDelete::Cascade => assert!(gone, "{context}"),
                    OnDelete::SetNull => assert!(nulled, "{context}"),
                    OnDelete::Restrict => panic!("{context}: not refused"),
                }
            }
        }
        delete_checked(client, db, d, target_t, &parent["id"], made).await;
        if on_delete == OnDelete::Restrict && !t.append_only {
            // With its referrer gone the target goes too.
            delete_checked(client, db, d, t, &child["id"], made).await;
            delete_checked(client, db, d, target_t, &parent["id"], made).await;
        }
    }
}

/// Deletes `id` of `t` and checks what the model says follows: refused on an append-only
/// template (`operation_not_allowed`) or by a restrict reference (`still_referenced`,
/// the record still there), else the record and its cascade gone (replies and rows) and
/// set-null references cleared; a record already gone answers `not_found`.
async fn delete_checked(
    client: &Client,
    db: &Rows,
    d: &'static DomainMeta,
    t: &'static TemplateMeta,
    id: &Json,
    made: &mut Made,
) {
    let context = format!("delete {}.{} {id}", d.name, t.name);
    let result = send(client, d.name, t.name, Op::Delete, |r| {
        r.key = Some(key(id))
    })
    .await;
    let model = Model {
        d,
        made,
        fold: false,
    };
    let Some(before) = model.find(t.name, id).cloned() else {
        let e = result.expect_err("a deleted record is gone");
        assert_eq!(code(&e), Some(ErrorCode::NotFound), "{context}: {e}");
        return;
    };
    let effect = if t.append_only {
        Err(ErrorCode::OperationNotAllowed)
    } else {
        model.delete(t, id).map_err(|_| ErrorCode::StillReferenced)
    };
    let effect = match effect {
        Ok(effect) => effect,
        Err(expected) => {
            let e = result.expect_err("the delete is refused");
            assert_eq!(code(&e), Some(expected), "{context}: {e}");
            let got = send(client, d.name, t.name, Op::Fetch, |r| r.key = Some(key(id)))
                .await
                .unwrap_or_else(|e| panic!("{context}: still there: {e}"));
            assert_eq!(got, before, "{context}: unchanged");
            assert_eq!(rows(db, t, id).await, 1, "{context}: the row stays");
            return;
        }
    };
    let reply = result.unwrap_or_else(|e| panic!("{context}: {e}"));
    assert_eq!(reply["deleted"], true, "{context}");
    for (x, gone) in &effect.gone {
        let e = send(client, d.name, x.name, Op::Fetch, |r| {
            r.key = Some(key(gone))
        })
        .await
        .expect_err("deleted records are gone");
        assert_eq!(
            code(&e),
            Some(ErrorCode::NotFound),
            "{context}: {}.{gone}",
            x.name
        );
        assert_eq!(
            rows(db, x, gone).await,
            0,
            "{context}: the row of {}.{gone} is gone",
            x.name
        );
    }
    for (x, kept, f) in &effect.nulled {
        let got = send(client, d.name, x.name, Op::Fetch, |r| {
            r.key = Some(key(kept))
        })
        .await
        .unwrap_or_else(|e| panic!("{context}: {}.{kept} is kept: {e}", x.name));
        assert_eq!(
            got[*f],
            Json::Null,
            "{context}: {}.{kept}.{f} is set to null",
            x.name
        );
    }
    effect.apply(made);
}
