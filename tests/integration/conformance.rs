//! The conformance suite: for every template of every compiled domain, valid and invalid
//! inputs built from the declared types, sent over AMQP through create, fetch, list,
//! update, delete and every named query, with replies and rows checked. It names no
//! domain: a new domain file gets this coverage without writing a test.

use std::collections::HashMap;

use crate::support::{Rows, TestEnv};
use beds_runtime::support::{
    CondOp, ConditionMeta, FieldKind, FieldMeta, Operand, ParamKind, ParamMeta, QueryMeta,
    TemplateMeta,
};
use beds_runtime::{Client, ClientError, DetailCode, ErrorCode, Op, Request};
use serde_json::{Map, Value as Json, json};

/// Records created so far, by template name.
type Made = HashMap<&'static str, Vec<Json>>;

#[tokio::test]
async fn every_template_and_query_conforms() {
    let env = TestEnv::matrix("conformance");
    let server = env.start().await;
    let client = env.client().await;
    let db = env.rows().await;
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
                continue;
            }
            invalid_inputs(&client, d.name, t, &made).await;
            for n in 0..2 {
                let record = create_valid(&client, &db, d.name, t, n, &made).await;
                made.entry(t.name).or_default().push(record);
            }
            read_back(&client, d.name, t, &made).await;
            update_one(&client, &db, d.name, t, &mut made).await;
            exercised.push(format!("{}.{}", d.name, t.name));
        }
        for q in d.queries {
            run_query(&client, d.name, q, &made).await;
            exercised.push(format!("{}.{}", d.name, q.name));
        }
        for t in order.iter().rev().filter(|t| !t.internal) {
            delete_all(&client, &db, d.name, t, &made).await;
        }
    }
    println!("conformance covered: {}", exercised.join(", "));
    assert!(!exercised.is_empty());
    client.close().await.unwrap();
    server.stop().await;
}

/// Concurrent deliveries of one write (same request id, so the same idempotency key) are
/// applied once and all answered with the first reply, on every database: the race between
/// them is decided by the idempotency claim, not by the record's own unique index.
#[tokio::test]
async fn concurrent_duplicate_writes_apply_once() {
    let env = TestEnv::matrix("duplicates");
    let server = env.start().await;
    let client = env.client().await;
    let db = env.rows().await;
    for d in beds::CATALOG.domains {
        for t in d.in_reference_order().into_iter().filter(|t| !t.internal) {
            let data = valid_data(t, 0, &HashMap::new());
            if t.fields
                .iter()
                .any(|f| matches!(f.kind, FieldKind::Ref { .. }))
            {
                continue; // needs records of other templates; covered by the suite above
            }
            let mut req = Request::new(d.name, t.name, Op::Create);
            req.data = Some(data);
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

/// A valid value of field `f` (the `n`th variant, so unique fields differ).
fn valid(f: &FieldMeta, n: usize, made: &Made) -> Json {
    match f.kind {
        FieldKind::String { min, max, pattern } => {
            let candidates = [
                format!("v{n}abcdefghij"),
                format!("{}", 1_000_000_000_000_u64 + n as u64),
                format!("A{}", (b'A' + n as u8) as char),
                format!("m{n}@example.org"),
                format!("Name {n}"),
            ];
            let re = pattern.map(|p| regex::Regex::new(p).unwrap());
            candidates
                .iter()
                .map(|c| fit(c, min as usize, max as usize))
                .find(|c| re.as_ref().is_none_or(|re| re.is_match(c)))
                .map(Json::String)
                .unwrap_or_else(|| {
                    panic!("{}: no sample value matches pattern {pattern:?}", f.name)
                })
        }
        FieldKind::Text { max } => json!(fit(&format!("text {n}"), 1, max.unwrap_or(100) as usize)),
        FieldKind::Integer { min, max } | FieldKind::BigInt { min, max } => {
            json!((min.max(1) + n as i64).min(max))
        }
        FieldKind::Float { min, max } => {
            let x = min.unwrap_or(0.0) + 1.5 + n as f64;
            json!(max.map_or(x, |m| x.min(m)))
        }
        FieldKind::Bool => json!(n.is_multiple_of(2)),
        FieldKind::Timestamp => json!(format!("2026-01-0{}T10:00:00Z", n % 9 + 1)),
        FieldKind::Date => json!(format!("2026-02-1{}", n % 9)),
        FieldKind::Uuid => json!(uuid::Uuid::now_v7()),
        FieldKind::Enum { values } => json!(values[n % values.len()]),
        FieldKind::Json => json!({ "n": n, "tags": ["a", "b"] }),
        FieldKind::Ref { template, .. } => {
            let targets = made.get(template).filter(|v| !v.is_empty());
            match targets {
                Some(v) => id_of(&v[n % v.len()]),
                None => Json::Null,
            }
        }
    }
}

/// Pads (repeating the last character) or truncates `s` into `min..=max` characters.
fn fit(s: &str, min: usize, max: usize) -> String {
    let mut chars: Vec<char> = s.chars().take(max.max(1)).collect();
    while chars.len() < min {
        chars.push(*chars.last().unwrap_or(&'a'));
    }
    chars.into_iter().collect()
}

/// Data for a create: variant 0 sets every field, variant 1 leaves optional and defaulted
/// fields out.
fn valid_data(t: &TemplateMeta, n: usize, made: &Made) -> Map<String, Json> {
    let mut data = Map::new();
    for f in t.fields.iter().filter(|f| f.is_input()) {
        if n == 1 && (f.optional || f.default.is_some()) {
            continue;
        }
        let v = valid(f, n, made);
        if !v.is_null() || f.optional {
            data.insert(f.name.into(), v);
        }
    }
    // Fields declared to differ get different values.
    for c in t.checks {
        let [a, b] = c.differ;
        if data.get(a).is_some() && data.get(a) == data.get(b) {
            data.insert(b.into(), valid(t.field(b).unwrap(), n + 1, made));
        }
    }
    data
}

/// Equal as the declared type means it (timestamps by instant, numbers by value).
fn same(f: &FieldMeta, sent: &Json, got: &Json) -> bool {
    match f.kind {
        FieldKind::Timestamp => {
            let t = |j: &Json| chrono::DateTime::parse_from_rfc3339(j.as_str().unwrap()).unwrap();
            t(sent) == t(got)
        }
        FieldKind::Float { .. } => sent.as_f64() == got.as_f64(),
        _ => sent == got,
    }
}

async fn create_valid(
    client: &Client,
    db: &Rows,
    domain: &str,
    t: &TemplateMeta,
    n: usize,
    made: &Made,
) -> Json {
    let data = valid_data(t, n, made);
    let record = send(client, domain, t.name, Op::Create, |r| {
        r.data = Some(data.clone())
    })
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{domain}.{}: valid create #{n} failed: {e}\n{data:?}",
            t.name
        )
    });
    assert_eq!(
        record["version"], 1,
        "{}: new records are version 1",
        t.name
    );
    for f in t.fields {
        let got = &record[f.name];
        match data.get(f.name) {
            Some(sent) => assert!(
                same(f, sent, got),
                "{}.{}: sent {sent}, stored {got}",
                t.name,
                f.name
            ),
            None if f.set.is_some() => assert!(
                got.is_string(),
                "{}.{} is set by the server",
                t.name,
                f.name
            ),
            None => match f.default {
                Some(_) => assert!(!got.is_null(), "{}.{}: the default applies", t.name, f.name),
                None => assert!(
                    got.is_null(),
                    "{}.{}: absent optional field is null",
                    t.name,
                    f.name
                ),
            },
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

async fn rows(db: &Rows, t: &TemplateMeta, id: &Json) -> i64 {
    db.count(t.table, t.id_column, id).await
}

async fn invalid_inputs(client: &Client, domain: &str, t: &TemplateMeta, made: &Made) {
    let base = valid_data(t, 0, made);
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
        let k: Map<String, Json> = u
            .fields
            .iter()
            .map(|f| (f.to_string(), mine[0][*f].clone()))
            .collect();
        let got = send(client, domain, t.name, Op::Fetch, |r| {
            r.key = Some(k.clone())
        })
        .await
        .unwrap();
        assert_eq!(
            got, mine[0],
            "{}: fetch by unique key {:?}",
            t.name, u.fields
        );
    }
}

fn key(id: &Json) -> Map<String, Json> {
    Map::from_iter([("id".to_string(), id.clone())])
}

async fn update_one(client: &Client, db: &Rows, domain: &str, t: &TemplateMeta, made: &mut Made) {
    let id = id_of(&made[t.name][0]);
    let Some(f) = t
        .fields
        .iter()
        .find(|f| f.is_input() && !matches!(f.kind, FieldKind::Ref { .. }))
    else {
        return;
    };
    let value = valid(f, 5, made);
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
            "{}",
            t.name
        );
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

/// The value at a field path from a record, following references through `made`.
fn value_at(made: &Made, from: &TemplateMeta, record: &Json, path: &[&str]) -> Json {
    let (first, rest) = path.split_first().unwrap();
    let v = record[*first].clone();
    if rest.is_empty() {
        return v;
    }
    let FieldKind::Ref { template, .. } = from.field(first).unwrap().kind else {
        unreachable!("paths follow references")
    };
    let target = beds::CATALOG
        .domains
        .iter()
        .find_map(|d| d.template(template))
        .unwrap();
    let next = made[template]
        .iter()
        .find(|r| r["id"] == v)
        .expect("referenced record was made");
    value_at(made, target, next, rest)
}

async fn run_query(client: &Client, domain: &str, q: &QueryMeta, made: &Made) {
    if q.grouped() {
        return crate::conformance_groups::grouped_query(client, domain, q, made).await;
    }
    let Some(sample) = made.get(q.from.name).and_then(|v| v.first()) else {
        panic!("query {}: no `{}` records to query", q.name, q.from.name);
    };
    // Every parameter takes its value from the sample (or, inside a sub-select, from a
    // record of the sub-select's template); the first use of a shared one wins.
    let mut params = Map::new();
    let arg = |c: &ConditionMeta, v: Json, p: &ParamMeta| match (c.op, p.kind) {
        (CondOp::In, ParamKind::Token(_)) => json!(["sample"]),
        (_, ParamKind::Token(_)) => json!("sample"),
        (CondOp::In, _) => json!([v]),
        (CondOp::Prefix, _) => json!(v.as_str().unwrap().chars().take(1).collect::<String>()),
        (_, ParamKind::Field(_) | ParamKind::Id(_)) => v,
    };
    let param = |name: &str| q.params.iter().find(|p| p.name == name).unwrap();
    for c in q.conditions() {
        match &c.operand {
            Operand::Param(name) => {
                let p = param(name);
                let v = match p.kind {
                    ParamKind::Token(_) => Json::Null,
                    _ => value_at(made, q.from, sample, c.path),
                };
                params
                    .entry(name.to_string())
                    .or_insert_with(|| arg(c, v, p));
            }
            Operand::Select(s) => {
                let inner_sample = made
                    .get(s.from.name)
                    .and_then(|v| v.first())
                    .unwrap_or_else(|| panic!("query {}: no `{}` records", q.name, s.from.name));
                for inner in s.filter {
                    if let Operand::Param(name) = inner.operand {
                        let v = inner_sample[inner.path[0]].clone();
                        params
                            .entry(name.to_string())
                            .or_insert_with(|| arg(inner, v, param(name)));
                    }
                }
            }
            Operand::Literal(_) => {}
        }
    }
    // A group of plain equalities and inclusive ranges must find the sample; strict
    // ranges, sub-selects and token sets may not.
    let plain = |c: &ConditionMeta| {
        matches!(c.operand, Operand::Param(p) if !matches!(param(p).kind, ParamKind::Token(_)))
            && !matches!(c.op, CondOp::Lt | CondOp::Gt)
    };
    let must_find = q.filter.iter().all(plain)
        && (q.any.is_empty() || q.any.iter().any(|g| g.iter().all(plain)));
    let reply = send(client, domain, "", Op::Query, |r| {
        r.query = Some(q.name.to_string());
        r.params = Some(params.clone());
        r.limit = (!q.count).then_some(q.page.max);
    })
    .await
    .unwrap_or_else(|e| panic!("query {}: {e}\nparams {params:?}", q.name));
    if q.count {
        let n = reply["count"].as_u64().unwrap();
        assert!(!must_find || n >= 1, "query {}: counts the sample", q.name);
        return;
    }
    let items = reply["items"].as_array().unwrap();
    if must_find {
        assert!(
            items.iter().any(|i| i["id"] == sample["id"]),
            "query {}: finds the sample",
            q.name
        );
    }
    // The declared order holds across the page.
    for pair in items.windows(2) {
        let key = |r: &Json| -> Vec<Json> { q.keys().iter().map(|(k, _)| r[*k].clone()).collect() };
        let (a, b) = (key(&pair[0]), key(&pair[1]));
        assert_ne!(a, b, "query {}: sort keys are unique", q.name);
    }
    let empty = send(client, domain, "", Op::Query, |r| {
        r.query = Some(q.name.to_string());
        r.params = Some(Map::from_iter([("no_such_param".to_string(), json!(1))]));
    })
    .await
    .unwrap_err();
    assert!(
        detail(&empty).contains(&("params.no_such_param".to_string(), DetailCode::Unknown)),
        "query {}",
        q.name
    );
}

async fn delete_all(client: &Client, db: &Rows, domain: &str, t: &TemplateMeta, made: &Made) {
    for record in made.get(t.name).into_iter().flatten() {
        let id = id_of(record);
        let result = send(client, domain, t.name, Op::Delete, |r| {
            r.key = Some(key(&id))
        })
        .await;
        if t.append_only {
            assert_eq!(
                code(&result.unwrap_err()),
                Some(ErrorCode::OperationNotAllowed),
                "{}",
                t.name
            );
            continue;
        }
        match result {
            Ok(reply) => assert_eq!(reply["deleted"], true),
            // Already removed by a cascade from a record deleted before it.
            Err(e) => assert_eq!(code(&e), Some(ErrorCode::NotFound), "{}: {e}", t.name),
        }
        let gone = send(client, domain, t.name, Op::Fetch, |r| {
            r.key = Some(key(&id))
        })
        .await
        .unwrap_err();
        assert_eq!(
            code(&gone),
            Some(ErrorCode::NotFound),
            "{}: deleted records are gone",
            t.name
        );
        assert_eq!(rows(db, t, &id).await, 0, "{}: the row is gone", t.name);
    }
}
