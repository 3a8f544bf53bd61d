//! Validation of named queries: sources, parameters, conditions through references,
//! ordering and paging, all checked against the domain's templates.

use std::collections::HashMap;

use crate::diag::{Ctx, suggest};
use crate::model::{CondOp, Condition, Domain, FieldType, Page, Param, Query, Template};
use crate::validate::{check_keys, expect_map, flag, get, is_snake, page};
use crate::yaml::Node;

const QUERY_KEYS: &[&str] = &["from", "params", "where", "order", "page", "count"];
const PARAM_KEYS: &[&str] = &["optional"];
/// More sort keys than this make keyset cursors unwieldy and rarely help.
const MAX_ORDER: usize = 3;

pub(crate) fn queries(cx: &mut Ctx, node: &Node, domain: &Domain) -> Vec<Query> {
    let Some(entries) = expect_map(cx, node, "queries") else {
        return Vec::new();
    };
    let mut out: Vec<Query> = Vec::new();
    for (key, body) in entries {
        let path = format!("queries.{}", key.as_str().unwrap_or("?"));
        let Some(name) = key.as_str().filter(|n| is_snake(n)) else {
            cx.error_hint(
                key.pos,
                &path,
                "query names are snake_case",
                "a lowercase letter, then lowercase letters, digits or `_`",
            );
            continue;
        };
        if out.iter().any(|q| q.name == name) {
            cx.error_hint(
                key.pos,
                &path,
                format!("query `{name}` is declared twice"),
                "remove or rename one of the two",
            );
            continue;
        }
        if let Some(mut q) = query(cx, &path, name, body, domain) {
            q.pos = key.pos;
            out.push(q);
        }
    }
    out
}

fn query(cx: &mut Ctx, path: &str, name: &str, body: &Node, domain: &Domain) -> Option<Query> {
    let entries = expect_map(cx, body, path)?;
    check_keys(cx, entries, path, QUERY_KEYS);
    let templates: Vec<&str> = domain.templates.iter().map(|t| t.name.as_str()).collect();
    let Some(from_node) = get(entries, "from") else {
        cx.error_hint(
            body.pos,
            &format!("{path}.from"),
            "missing `from`",
            "name the template the query reads",
        );
        return None;
    };
    let from = match from_node
        .as_str()
        .and_then(|f| domain.templates.iter().find(|t| t.name == f))
    {
        Some(t) => t,
        None => {
            let given = from_node.as_str().unwrap_or("?");
            cx.error_hint(
                from_node.pos,
                &format!("{path}.from"),
                format!("`{given}` is not a template of this domain"),
                suggest(given, &templates),
            );
            return None;
        }
    };
    if from.internal {
        cx.error_hint(
            from_node.pos,
            &format!("{path}.from"),
            format!("`{}` is internal; clients cannot query it", from.name),
            "remove `internal` from the template, or the query",
        );
    }
    let count = flag(cx, entries, path, "count");

    // Declared parameters: name -> (optional, position).
    let mut declared: Vec<(String, bool, &Node)> = Vec::new();
    if let Some(params) = get(entries, "params") {
        let ppath = format!("{path}.params");
        if let Some(pmap) = expect_map(cx, params, &ppath) {
            for (k, v) in pmap {
                let Some(pname) = k.as_str().filter(|p| is_snake(p)) else {
                    cx.error_hint(
                        k.pos,
                        &ppath,
                        "parameter names are snake_case",
                        "a lowercase letter, then lowercase letters, digits or `_`",
                    );
                    continue;
                };
                let p = format!("{ppath}.{pname}");
                let optional = match v.as_map() {
                    Some(m) => {
                        check_keys(cx, m, &p, PARAM_KEYS);
                        flag(cx, m, &p, "optional")
                    }
                    None if v.describe() == "null" => false,
                    None => {
                        cx.error_hint(
                            v.pos,
                            &p,
                            format!(
                                "expected `{{}}` or `{{ optional: true }}`, found {}",
                                v.describe()
                            ),
                            "a parameter's type is taken from the field it is compared with",
                        );
                        false
                    }
                };
                declared.push((pname.to_string(), optional, k));
            }
        }
    }

    let mut filter = Vec::new();
    // Each used parameter's type and list-ness, from its first use.
    let mut used: HashMap<String, (FieldType, bool)> = HashMap::new();
    if let Some(w) = get(entries, "where") {
        let wpath = format!("{path}.where");
        if let Some(wmap) = expect_map(cx, w, &wpath) {
            for (k, v) in wmap {
                let Some(field_path) = k.as_str() else {
                    continue;
                };
                let cpath = format!("{wpath}.{field_path}");
                let Some(ty) = resolve(cx, &cpath, k, field_path, from, domain) else {
                    continue;
                };
                let ops: Vec<(CondOp, &Node)> = match v.as_map() {
                    None => vec![(CondOp::Eq, v)],
                    Some(m) => m
                        .iter()
                        .filter_map(|(opk, pv)| {
                            let op = opk.as_str().and_then(CondOp::parse);
                            if op.is_none() {
                                cx.error_hint(
                                    opk.pos,
                                    &cpath,
                                    format!("unknown condition `{}`", opk.as_str().unwrap_or("?")),
                                    suggest(opk.as_str().unwrap_or(""), CondOp::NAMES),
                                );
                            }
                            op.map(|op| (op, pv))
                        })
                        .collect(),
                };
                for (op, pv) in ops {
                    let Some(param) = param_ref(cx, &cpath, pv, &declared) else {
                        continue;
                    };
                    check_op(cx, &cpath, pv, op, &ty);
                    let list = op == CondOp::In;
                    match used.get(&param) {
                        Some((t, l)) if !compatible(t, &ty) || *l != list => cx.error_hint(
                            pv.pos,
                            &cpath,
                            format!("`${param}` is used with two different types or shapes"),
                            "declare a separate parameter for each use",
                        ),
                        Some(_) => {}
                        None => {
                            used.insert(param.clone(), (ty.clone(), list));
                        }
                    }
                    filter.push(Condition {
                        path: field_path.split('.').map(str::to_string).collect(),
                        op,
                        param,
                    });
                }
            }
        }
    }
    let mut params = Vec::new();
    for (pname, optional, node) in &declared {
        match used.get(pname) {
            Some((ty, list)) => params.push(Param {
                name: pname.clone(),
                ty: ty.clone(),
                optional: *optional,
                list: *list,
            }),
            None => cx.error_hint(
                node.pos,
                &format!("{path}.params.{pname}"),
                format!("parameter `{pname}` is never used"),
                "use it in `where`, or remove it",
            ),
        }
    }

    let mut order = Vec::new();
    if let Some(o) = get(entries, "order") {
        let opath = format!("{path}.order");
        if count {
            cx.error_hint(
                o.pos,
                &opath,
                "a count query has no order",
                "remove `order`, or `count: true`",
            );
        }
        match o.as_seq() {
            Some(items) if items.len() <= MAX_ORDER => {
                for item in items {
                    if let Some(key) = order_key(cx, &opath, item, from) {
                        order.push(key);
                    }
                }
            }
            Some(_) => cx.error_hint(
                o.pos,
                &opath,
                format!("at most {MAX_ORDER} sort keys"),
                "keep the keys that matter; the id is added as tie-breaker anyway",
            ),
            None => cx.error_hint(o.pos, &opath, "expected a list", "e.g. `[created_at desc]`"),
        }
    }
    let mut q_page = Page::default();
    if let Some(p) = get(entries, "page") {
        if count {
            cx.error_hint(
                p.pos,
                &format!("{path}.page"),
                "a count query has no pages",
                "remove `page`, or `count: true`",
            );
        }
        q_page = page(cx, &format!("{path}.page"), p);
    }
    Some(Query {
        pos: body.pos,
        name: name.to_string(),
        from: from.name.clone(),
        params,
        filter,
        order,
        page: q_page,
        count,
    })
}

/// The type at the end of a dotted field path, following references.
fn resolve(
    cx: &mut Ctx,
    cpath: &str,
    key: &Node,
    field_path: &str,
    from: &Template,
    domain: &Domain,
) -> Option<FieldType> {
    let mut t = from;
    let segments: Vec<&str> = field_path.split('.').collect();
    for (i, seg) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        if *seg == "id" && last {
            return Some(id_type(t));
        }
        let Some(f) = t.field(seg) else {
            no_field(cx, key.pos, cpath, t, seg);
            return None;
        };
        if last {
            return Some(f.ty.clone());
        }
        match &f.ty {
            FieldType::Ref { template, .. } => {
                t = domain.templates.iter().find(|x| &x.name == template)?;
            }
            _ => {
                cx.error_hint(
                    key.pos,
                    cpath,
                    format!("`{seg}` is not a reference, so the path cannot continue past it"),
                    "only `ref` fields can be followed with `.`",
                );
                return None;
            }
        }
    }
    None
}

/// The key of a template, as the type a parameter compared with it has.
fn id_type(t: &Template) -> FieldType {
    FieldType::Ref {
        template: t.name.clone(),
        on_delete: crate::model::OnDelete::Restrict,
    }
}

/// Parameters compare equal by kind; references by their target.
fn compatible(a: &FieldType, b: &FieldType) -> bool {
    match (a, b) {
        (FieldType::Ref { template: x, .. }, FieldType::Ref { template: y, .. }) => x == y,
        _ => a.name() == b.name(),
    }
}

fn param_ref(
    cx: &mut Ctx,
    cpath: &str,
    node: &Node,
    declared: &[(String, bool, &Node)],
) -> Option<String> {
    let names: Vec<&str> = declared.iter().map(|(n, _, _)| n.as_str()).collect();
    match node.as_str().and_then(|s| s.strip_prefix('$')) {
        Some(p) if names.contains(&p) => Some(p.to_string()),
        Some(p) => {
            cx.error_hint(
                node.pos,
                cpath,
                format!("`${p}` is not a declared parameter"),
                if names.is_empty() {
                    format!("declare it under `params: {{ {p}: {{}} }}`")
                } else {
                    suggest(p, &names)
                },
            );
            None
        }
        None => {
            cx.error_hint(
                node.pos,
                cpath,
                format!("expected a parameter like `$name`, found {}", node.describe()),
                "queries compare fields with parameters only; literal values belong in the client's params",
            );
            None
        }
    }
}

fn check_op(cx: &mut Ctx, cpath: &str, node: &Node, op: CondOp, ty: &FieldType) {
    let fits = match op {
        _ if *ty == FieldType::Json => false,
        CondOp::Prefix => matches!(ty, FieldType::String { .. } | FieldType::Text { .. }),
        CondOp::Lt | CondOp::Le | CondOp::Gt | CondOp::Ge => !matches!(
            ty,
            FieldType::Bool | FieldType::Enum { .. } | FieldType::Ref { .. } | FieldType::Uuid
        ),
        CondOp::In => *ty != FieldType::Bool,
        CondOp::Eq => true,
    };
    if !fits {
        cx.error_hint(
            node.pos,
            cpath,
            format!("`{}` cannot be applied to a field of type `{}`", op.name(), ty.name()), "`prefix` needs a string or text field; ranges need an ordered type; json takes no conditions");
    }
}

fn order_key(cx: &mut Ctx, opath: &str, item: &Node, from: &Template) -> Option<(String, bool)> {
    let text = item.as_str().unwrap_or_default();
    let mut words = text.split_whitespace();
    let (field, dir) = (words.next().unwrap_or(""), words.next().unwrap_or("asc"));
    let desc = match dir {
        "asc" => false,
        "desc" => true,
        other => {
            cx.error_hint(
                item.pos,
                opath,
                format!("unknown direction `{other}`"),
                "use `asc` or `desc`",
            );
            return None;
        }
    };
    if words.next().is_some() {
        cx.error_hint(
            item.pos,
            opath,
            format!("`{text}` is not a sort key"),
            "write `field` or `field desc`",
        );
        return None;
    }
    if field == "id" {
        return Some((field.to_string(), desc));
    }
    let Some(f) = from.field(field) else {
        no_field(cx, item.pos, opath, from, field);
        return None;
    };
    if f.optional || f.ty == FieldType::Json {
        cx.error_hint(
            item.pos,
            opath,
            format!("cannot sort by `{field}`"),
            "sort keys must be required, non-json fields, so cursors always have a value",
        );
        return None;
    }
    Some((field.to_string(), desc))
}

fn no_field(cx: &mut Ctx, pos: crate::yaml::Pos, path: &str, t: &Template, name: &str) {
    let known: Vec<&str> = t
        .fields
        .iter()
        .map(|f| f.name.as_str())
        .chain(["id"])
        .collect();
    cx.error_hint(
        pos,
        path,
        format!("`{}` has no field `{name}`", t.name),
        suggest(name, &known),
    );
}
