//! Conformance of grouped queries (`group:`), for every compiled domain: rows are the
//! distinct group keys of the matching records with their counts, and keyset pages of one
//! row walk the same rows as one full page. Names no domain.

use std::collections::HashMap;

use beds_runtime::support::{
    CondOp, ConditionMeta, FieldKind, LiteralValue, Operand, ParamKind, QueryMeta, TemplateMeta,
};
use beds_runtime::{Client, Op, Request};
use serde_json::{Map, Value as Json, json};

/// Runs grouped query `q` over the records in `made` (by template name).
pub async fn grouped_query(
    client: &Client,
    domain: &str,
    q: &QueryMeta,
    made: &HashMap<&'static str, Vec<Json>>,
) {
    let records = made.get(q.from.name).map(Vec::as_slice).unwrap_or_default();
    let Some(sample) = records.first() else {
        panic!("query {}: no `{}` records to query", q.name, q.from.name);
    };
    let params = params(q, sample, made);
    let page = |limit: u32, cursor: Option<Vec<Json>>| {
        let params = params.clone();
        async move {
            let mut req = Request::new(domain, "", Op::Query);
            req.query = Some(q.name.to_string());
            req.params = Some(params.clone());
            req.limit = Some(limit);
            req.cursor = cursor;
            client
                .request(req)
                .await
                .unwrap_or_else(|e| panic!("query {}: {e}\nparams {params:?}", q.name))
        }
    };
    let all = page(q.page.max, None).await;
    let rows = all["items"].as_array().unwrap().clone();
    let keys = |row: &Json| -> Vec<Json> { q.group.iter().map(|g| row[*g].clone()).collect() };
    for row in &rows {
        let object = row.as_object().unwrap();
        assert_eq!(
            object.len(),
            q.group.len() + 1,
            "query {}: a row is its keys and `count`: {row}",
            q.name
        );
        assert!(
            row["count"].as_i64().unwrap() >= 1,
            "query {}: {row}",
            q.name
        );
    }
    for pair in rows.windows(2) {
        assert_ne!(
            keys(&pair[0]),
            keys(&pair[1]),
            "query {}: one row per group",
            q.name
        );
    }

    // Pages of one row: the same rows in the same order, each `next` the row's keys.
    let mut walked = Vec::new();
    let mut cursor = None;
    loop {
        let reply = page(1, cursor.take()).await;
        let items = reply["items"].as_array().unwrap();
        walked.extend(items.iter().cloned());
        match &reply["next"] {
            Json::Null => break,
            Json::Array(next) => {
                assert_eq!(*next, keys(items.last().unwrap()), "query {}", q.name);
                cursor = Some(next.clone());
            }
            other => panic!("query {}: `next` is {other}", q.name),
        }
        assert!(
            walked.len() <= rows.len() + 1,
            "query {}: pages end",
            q.name
        );
    }
    assert_eq!(
        walked, rows,
        "query {}: pages of one row walk the full page",
        q.name
    );
    // After the first row's keys come exactly the other rows, even when no page was full
    // (so every grouped query binds a cursor of its key types).
    if let Some(first) = rows.first() {
        let rest = page(q.page.max, Some(keys(first))).await;
        assert_eq!(
            rest["items"].as_array().unwrap()[..],
            rows[1..],
            "query {}",
            q.name
        );
    }

    // When every condition can be evaluated here, the rows are exactly the groups of the
    // matching records.
    if let Some(matching) = records
        .iter()
        .map(|r| matches(q, r, &params, made))
        .collect::<Option<Vec<bool>>>()
    {
        let mut expected: Vec<(Vec<Json>, i64)> = Vec::new();
        for (r, _) in records.iter().zip(matching).filter(|(_, m)| *m) {
            let k = keys(r);
            match expected.iter_mut().find(|(e, _)| *e == k) {
                Some((_, n)) => *n += 1,
                None => expected.push((k, 1)),
            }
        }
        let got: Vec<(Vec<Json>, i64)> = rows
            .iter()
            .map(|r| (keys(r), r["count"].as_i64().unwrap()))
            .collect();
        let text = |v: &Vec<(Vec<Json>, i64)>| {
            let mut v: Vec<String> = v.iter().map(|e| format!("{e:?}")).collect();
            v.sort();
            v
        };
        assert_eq!(
            text(&got),
            text(&expected),
            "query {}: groups and counts",
            q.name
        );
        assert!(!rows.is_empty() || expected.is_empty(), "query {}", q.name);
    }
}

/// Parameters taken from the sample record (a list of its value for `in`), as the main
/// conformance run does.
fn params(
    q: &QueryMeta,
    sample: &Json,
    made: &HashMap<&'static str, Vec<Json>>,
) -> Map<String, Json> {
    let mut out = Map::new();
    for c in q.conditions() {
        let Operand::Param(name) = c.operand else {
            continue;
        };
        let p = q.params.iter().find(|p| p.name == name).unwrap();
        let v = match p.kind {
            ParamKind::Token(_) => json!("sample"),
            _ => value_at(made, q.from, sample, c.path),
        };
        let v = match c.op {
            CondOp::In => json!([v]),
            CondOp::Prefix => json!(v.as_str().unwrap().chars().take(1).collect::<String>()),
            _ => v,
        };
        out.entry(name.to_string()).or_insert(v);
    }
    out
}

/// Whether `record` matches the query, or `None` when a condition is beyond this check
/// (ranges, prefixes, token sets, sub-selects).
fn matches(
    q: &QueryMeta,
    record: &Json,
    params: &Map<String, Json>,
    made: &HashMap<&'static str, Vec<Json>>,
) -> Option<bool> {
    let holds = |c: &ConditionMeta| -> Option<bool> {
        let path_ends_in_field = {
            let mut t = q.from;
            let mut ok = true;
            for seg in c.path {
                match t.field(seg).map(|f| f.kind) {
                    Some(FieldKind::Ref { template, .. }) => t = template_of(template),
                    Some(_) => {}
                    None => ok = *seg == "id",
                }
            }
            ok
        };
        if !path_ends_in_field {
            return None;
        }
        let v = value_at(made, q.from, record, c.path);
        let wanted = match (&c.operand, c.op) {
            (Operand::Literal(LiteralValue::Bool(b)), _) => json!(b),
            (Operand::Literal(LiteralValue::Enum(e)), _) => json!(e),
            (Operand::Param(p), CondOp::Eq | CondOp::In) => params.get(*p)?.clone(),
            _ => return None,
        };
        Some(match c.op {
            CondOp::In => wanted.as_array()?.contains(&v),
            _ => wanted == v,
        })
    };
    let mut all = true;
    for c in q.filter {
        all &= holds(c)?;
    }
    if !q.any.is_empty() {
        let mut one = false;
        for g in q.any {
            let mut group = true;
            for c in *g {
                group &= holds(c)?;
            }
            one |= group;
        }
        all &= one;
    }
    Some(all)
}

fn template_of(name: &str) -> &'static TemplateMeta {
    beds::CATALOG
        .domains
        .iter()
        .find_map(|d| d.template(name))
        .unwrap()
}

/// The value at a field path from a record, following references through `made`.
fn value_at(
    made: &HashMap<&'static str, Vec<Json>>,
    from: &TemplateMeta,
    record: &Json,
    path: &[&str],
) -> Json {
    let (first, rest) = path.split_first().unwrap();
    let v = record[*first].clone();
    // An unset optional reference leads nowhere: everything past it is null.
    if rest.is_empty() || v.is_null() {
        return v;
    }
    let Some(FieldKind::Ref { template, .. }) = from.field(first).map(|f| f.kind) else {
        unreachable!("paths follow references")
    };
    let next = made[template]
        .iter()
        .find(|r| r["id"] == v)
        .expect("referenced record was made");
    value_at(made, template_of(template), next, rest)
}
