//! Named queries: parameters chosen from the records made so that several match, every
//! page followed through `next`, the union compared with what the model expects.

use std::collections::HashSet;

use beds_runtime::support::{CondOp, ConditionMeta, Operand, ParamKind, QueryMeta};
use beds_runtime::{Client, DetailCode, Op};
use serde_json::{Map, Value as Json, json};

use super::model::{Model, tokens};
use super::{Made, detail, send};

/// Runs `q` with parameters taken from the records made: of every candidate assignment
/// (each record as the sample, optional parameters given or left out, prefixes of none,
/// one or all of the sample's characters) it keeps the one matching the most records, preferring one
/// that filters, among those on which a case-folding and a case-exact database agree.
/// A count must equal the matches; a page query is followed page by page with a small
/// limit: no duplicates, no gaps, the declared order across page boundaries, every item
/// as made and its `with` values as the records made say.
pub async fn run_query(client: &Client, q: &QueryMeta, made: &Made, fold: bool, seed: u64) {
    let exact = Model {
        d: domain_of(q),
        made,
        fold: false,
    };
    let folding = Model {
        fold: true,
        ..exact
    };
    let model = Model { fold, ..exact };
    let param = |name: &str| q.params.iter().find(|p| p.name == name).unwrap();
    // A prefix is cut to `cut` characters (`None`: the whole value).
    let arg = |c: &ConditionMeta, v: &Json, cut: Option<usize>| match (c.op, cut) {
        (CondOp::In, _) => json!([v]),
        (CondOp::Prefix, Some(n)) => {
            json!(v.as_str().unwrap_or("").chars().take(n).collect::<String>())
        }
        _ => v.clone(),
    };
    let universe = exact.records(q.from.name).len();
    let mut best: Option<(bool, usize, Map<String, Json>)> = None;
    let inner_from = q.conditions().find_map(|c| match &c.operand {
        Operand::Select(s) => Some(s.from.name),
        Operand::Param(_) | Operand::Literal(_) => None,
    });
    let inner = inner_from.map_or(&[][..], |t| exact.records(t));
    for sample in exact.records(q.from.name) {
        for inner_sample in inner.iter().map(Some).chain([None]) {
            let variants = [
                (Some(1), false),
                (None, false),
                (Some(0), false),
                (Some(1), true),
            ];
            for (cut, drop_optional) in variants {
                let mut params = Map::new();
                for c in q.conditions() {
                    match &c.operand {
                        Operand::Param(name) => {
                            let v = match param(name).kind {
                                ParamKind::Token(set) => {
                                    let (last, refs) = c.path.split_last().unwrap();
                                    let Some((t, r)) = exact.follow(q.from, sample, refs) else {
                                        continue;
                                    };
                                    let set = t.token_set(last).unwrap_or(set);
                                    let found = tokens(set, r[set.source].as_str().unwrap_or(""));
                                    let Some(token) = found.first() else { continue };
                                    json!(token)
                                }
                                _ => {
                                    match exact.follow(q.from, sample, &c.path[..c.path.len() - 1])
                                    {
                                        Some((_, r)) => r[c.path[c.path.len() - 1]].clone(),
                                        None => Json::Null,
                                    }
                                }
                            };
                            params
                                .entry(name.to_string())
                                .or_insert_with(|| arg(c, &v, cut));
                        }
                        Operand::Select(s) => {
                            let Some(r) = inner_sample else { continue };
                            for c in s.filter {
                                if let Operand::Param(name) = c.operand {
                                    params
                                        .entry(name.to_string())
                                        .or_insert_with(|| arg(c, &r[c.path[0]], cut));
                                }
                            }
                        }
                        Operand::Literal(_) => {}
                    }
                }
                if drop_optional {
                    params.retain(|k, _| !param(k).optional);
                }
                if q.params
                    .iter()
                    .any(|p| !p.optional && params.get(p.name).is_none_or(Json::is_null))
                {
                    continue;
                }
                let found = exact.matching(q, &params);
                let ids = |v: Vec<&Json>| {
                    v.iter()
                        .map(|r| r["id"].to_string())
                        .collect::<HashSet<_>>()
                };
                if ids(found.clone()) != ids(folding.matching(q, &params)) {
                    continue; // depends on case folding, which databases do differently
                }
                let filters = found.len() >= 2 && found.len() < universe;
                if best
                    .as_ref()
                    .is_none_or(|(f, n, _)| (filters, found.len()) > (*f, *n))
                {
                    best = Some((filters, found.len(), params));
                }
            }
        }
    }
    let Some((_, _, params)) = best else {
        panic!(
            "query {}: no parameters can be taken from the records made (seed {seed})",
            q.name
        )
    };
    let mut expected = model.matching(q, &params);
    expected.sort_by(|a, b| {
        if model.before(q, a, b) {
            std::cmp::Ordering::Less
        } else {
            std::cmp::Ordering::Greater
        }
    });
    let context = format!("query {} with {params:?} (seed {seed})", q.name);
    if q.count {
        let reply = send(client, q.domain, "", Op::Query, |r| {
            r.query = Some(q.name.to_string());
            r.params = Some(params.clone());
        })
        .await
        .unwrap_or_else(|e| panic!("{context}: {e}"));
        assert_eq!(
            reply["count"].as_u64(),
            Some(expected.len() as u64),
            "{context}: counts every matching record"
        );
    } else {
        // Parameters are taken from the records made, so some record matches, unless a
        // literal condition (`status: open`) holds for none of the randomly drawn records:
        // then the node must answer an empty page.
        let literal = q
            .conditions()
            .any(|c| matches!(c.operand, Operand::Literal(_)));
        assert!(
            !expected.is_empty() || literal,
            "{context}: matches no record made"
        );
        // At least two pages whenever two records match.
        let limit = (expected.len() / 3).clamp(1, q.page.max as usize) as u32;
        let mut got: Vec<Json> = Vec::new();
        let mut cursor: Option<Vec<Json>> = None;
        for page in 0.. {
            assert!(
                page <= expected.len() + 1,
                "{context}: pages never end (cursor {cursor:?})"
            );
            let reply = send(client, q.domain, "", Op::Query, |r| {
                r.query = Some(q.name.to_string());
                r.params = Some(params.clone());
                r.limit = Some(limit);
                r.cursor = cursor.clone();
            })
            .await
            .unwrap_or_else(|e| panic!("{context}, page {page}: {e}"));
            let items = reply["items"].as_array().unwrap();
            assert!(
                items.len() <= limit as usize,
                "{context}: a page holds at most the limit"
            );
            got.extend(items.iter().cloned());
            match &reply["next"] {
                Json::Null => break,
                Json::Array(next) => cursor = Some(next.clone()),
                other => panic!("{context}: `next` is an array or null, not {other}"),
            }
        }
        println!(
            "query {}.{}: {} of {universe} records match, paged {limit} at a time",
            q.domain,
            q.name,
            expected.len()
        );
        let ids: Vec<&Json> = got.iter().map(|i| &i["id"]).collect();
        let want: Vec<&Json> = expected.iter().map(|r| &r["id"]).collect();
        assert_eq!(
            ids,
            want,
            "{context}: pages of {limit} hold every match once, in the declared order {:?}",
            q.keys()
        );
        for pair in got.windows(2) {
            assert!(
                model.before(q, &pair[0], &pair[1]),
                "{context}: {} sorts before {} by {:?}",
                pair[0],
                pair[1],
                q.keys()
            );
        }
        for (item, record) in got.iter().zip(&expected) {
            let mut bare = item.clone();
            let with = bare.as_object_mut().unwrap().remove("with");
            assert_eq!(&bare, *record, "{context}: items are the records as stored");
            if !q.with.is_empty() {
                assert_eq!(
                    with,
                    Some(Json::Object(model.with_values(q, record))),
                    "{context}: `with` values of {}",
                    record["id"]
                );
            }
        }
    }
    let unknown = send(client, q.domain, "", Op::Query, |r| {
        r.query = Some(q.name.to_string());
        r.params = Some(Map::from_iter([("no_such_param".to_string(), json!(1))]));
    })
    .await
    .unwrap_err();
    assert!(
        detail(&unknown).contains(&("params.no_such_param".to_string(), DetailCode::Unknown)),
        "{context}"
    );
}

fn domain_of(q: &QueryMeta) -> &'static beds_runtime::support::DomainMeta {
    beds::CATALOG
        .domains
        .iter()
        .copied()
        .find(|d| d.name == q.domain)
        .unwrap()
}
