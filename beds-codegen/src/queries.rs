//! Validation of named queries: sources, parameters, conditions through references,
//! ordering and paging, all checked against the domain's templates.

use std::collections::HashMap;

use crate::diag::{Ctx, suggest};
use crate::model::{
    CondLiteral, CondOp, Condition, Domain, FieldType, Operand, Page, Param, ParamTarget, Query,
    Select, Template, With, WithWhat,
};
use crate::read::{
    check_documented_keys, check_keys, doc, duration, expect_map, flag, get, is_snake, list, page,
    query_access,
};
use crate::yaml::Node;

const QUERY_KEYS: &[&str] = &[
    "doc", "from", "params", "where", "order", "page", "count", "with", "group", "cache", "access",
    "tiers",
];
/// The tiers a query may read: the serving database, and the warehouse retention moves
/// records to (wiki/retention.md).
const TIERS: &[&str] = &["hot", "warehouse"];
const PARAM_KEYS: &[&str] = &["optional"];
/// More sort keys than this make keyset cursors unwieldy and rarely help.
const MAX_ORDER: usize = 3;
/// The name of each group row's count, so no group key may have it.
const COUNT_KEY: &str = "count";

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
    // Invalidated by a generation per template it reads (wiki/cache.md).
    let cache_ttl_ms = get(entries, "cache").and_then(|n| {
        let p = format!("{path}.cache");
        let m = expect_map(cx, n, &p)?;
        check_keys(cx, m, &p, &["ttl"]);
        match get(m, "ttl") {
            Some(ttl) => duration(cx, &format!("{p}.ttl"), ttl),
            None => {
                cx.error_hint(n.pos, &p, "missing `ttl`", "e.g. `cache: { ttl: 30s }`");
                None
            }
        }
    });
    check_documented_keys(cx, entries, path, QUERY_KEYS);
    let access = get(entries, "access")
        .map(|n| query_access(cx, &format!("{path}.access"), n))
        .unwrap_or_default();
    let warehouse = get(entries, "tiers")
        .map(|n| tiers(cx, &format!("{path}.tiers"), n))
        .unwrap_or(false);
    let doc = doc(cx, entries, path);
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

    // Each used parameter's type, list-ness and target, from its first use.
    let mut used: HashMap<String, Use> = HashMap::new();
    let mut filter = Vec::new();
    let mut any = Vec::new();
    if let Some(w) = get(entries, "where") {
        let wpath = format!("{path}.where");
        let mut scope = Scope {
            domain,
            declared: &declared,
            used: &mut used,
        };
        if let Some(wmap) = expect_map(cx, w, &wpath) {
            for (k, v) in wmap {
                if k.as_str() == Some("any") {
                    any = alternatives(cx, &format!("{wpath}.any"), v, from, &mut scope);
                    continue;
                }
                filter.extend(condition(cx, &wpath, k, v, from, &mut scope, true));
            }
        }
    }
    let mut params = Vec::new();
    for (pname, optional, node) in &declared {
        match used.get(pname) {
            Some(u) => params.push(Param {
                name: pname.clone(),
                ty: u.ty.clone(),
                optional: *optional,
                list: u.list,
                target: u.target.clone(),
            }),
            // A use in a condition that failed to compile was reported already.
            None if get(entries, "where").is_some_and(|w| mentions(w, pname)) => {}
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
    let mut with = Vec::new();
    if let Some(w) = get(entries, "with") {
        let wpath = format!("{path}.with");
        if count {
            cx.error_hint(
                w.pos,
                &wpath,
                "a count query returns no items to add values to",
                "remove `with`, or `count: true`",
            );
        }
        with = with_values(cx, &wpath, w, from, domain);
    }
    let mut group = Vec::new();
    if let Some(g) = get(entries, "group") {
        let gpath = format!("{path}.group");
        if count {
            // The count query's own errors already cover `order` and `with`.
            if let Some(n) = get(entries, "count") {
                cx.error_hint(
                    n.pos,
                    &format!("{path}.count"),
                    "a grouped query counts per group already",
                    "remove `count: true`",
                );
            }
        } else {
            let conflicts = [
                (
                    "order",
                    "a grouped query is ordered by its group keys",
                    "remove `order`; list the group keys in the order the rows should sort",
                ),
                (
                    "with",
                    "a grouped query returns group rows, which carry no `with` values",
                    "remove `with`, or `group`",
                ),
            ];
            for (key, message, hint) in conflicts {
                if let Some(n) = get(entries, key) {
                    cx.error_hint(n.pos, &format!("{path}.{key}"), message, hint);
                }
            }
        }
        group = group_keys(cx, &gpath, g, from);
    }
    if warehouse && (count || !group.is_empty()) {
        let node = get(entries, "tiers").unwrap_or(body);
        cx.error_hint(
            node.pos,
            &format!("{path}.tiers"),
            "a count or grouped query cannot include the warehouse: its counts would be summed across tiers, counting a record that is being moved twice",
            "remove `tiers`, or make it a paged query of records",
        );
    }
    Some(Query {
        warehouse,
        group,
        doc,
        pos: body.pos,
        name: name.to_string(),
        from: from.name.clone(),
        params,
        filter,
        any,
        with,
        order,
        page: q_page,
        count,
        cache_ttl_ms,
        access,
    })
}

/// Whether `$name` appears anywhere in `node`.
fn mentions(node: &Node, name: &str) -> bool {
    if node.as_str().and_then(|s| s.strip_prefix('$')) == Some(name) {
        return true;
    }
    node.as_map()
        .map(|m| m.iter().any(|(_, v)| mentions(v, name)))
        .or_else(|| node.as_seq().map(|l| l.iter().any(|v| mentions(v, name))))
        .unwrap_or(false)
}

/// A parameter's first use.
struct Use {
    ty: FieldType,
    list: bool,
    target: ParamTarget,
}

/// What conditions are checked against: the domain and the query's parameters.
struct Scope<'a> {
    domain: &'a Domain,
    declared: &'a [(String, bool, &'a Node)],
    used: &'a mut HashMap<String, Use>,
}

/// `any: [ {conditions}, {conditions} ]`: at least one group must hold.
fn alternatives(
    cx: &mut Ctx,
    apath: &str,
    node: &Node,
    from: &Template,
    scope: &mut Scope<'_>,
) -> Vec<Vec<Condition>> {
    let Some(items) = node.as_seq().filter(|l| l.len() >= 2) else {
        cx.error_hint(
            node.pos,
            apath,
            "`any` takes a list of at least two groups of conditions",
            "e.g. `any: [ { author: $user }, { reply_to: $spew } ]`",
        );
        return Vec::new();
    };
    let mut groups = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let gpath = format!("{apath}[{i}]");
        let Some(gmap) = expect_map(cx, item, &gpath) else {
            continue;
        };
        let mut group = Vec::new();
        for (k, v) in gmap {
            if k.as_str() == Some("any") {
                cx.error_hint(
                    k.pos,
                    &gpath,
                    "`any` cannot be nested",
                    "list every alternative in the one top-level `any`",
                );
                continue;
            }
            group.extend(condition(cx, &gpath, k, v, from, scope, true));
        }
        if group.is_empty() {
            cx.error_hint(
                item.pos,
                &gpath,
                "an alternative needs at least one condition",
                "add a condition or remove the group",
            );
        }
        groups.push(group);
    }
    groups
}

/// The conditions of one `where` entry: `path: $param` or `path: { op: operand, ... }`.
/// `paths` allows dotted paths and token sets (the main query); sub-selects compare
/// single fields.
fn condition(
    cx: &mut Ctx,
    wpath: &str,
    k: &Node,
    v: &Node,
    from: &Template,
    scope: &mut Scope<'_>,
    paths: bool,
) -> Vec<Condition> {
    let mut out = Vec::new();
    let Some(field_path) = k.as_str() else {
        return out;
    };
    let cpath = format!("{wpath}.{field_path}");
    if !paths && field_path.contains('.') {
        cx.error_hint(
            k.pos,
            &cpath,
            "a sub-select compares fields of its own template only",
            "name a field of the sub-select's `from` template, without `.`",
        );
        return out;
    }
    let Some((ty, target, token)) = resolve(cx, &cpath, k, field_path, from, scope.domain) else {
        return out;
    };
    if token && !paths {
        cx.error_hint(
            k.pos,
            &cpath,
            "token sets can be compared in the main query only",
            "move the condition out of the sub-select",
        );
        return out;
    }
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
    let path: Vec<String> = field_path.split('.').map(str::to_string).collect();
    for (op, pv) in ops {
        if token && !matches!(op, CondOp::Eq | CondOp::In) {
            cx.error_hint(
                pv.pos,
                &cpath,
                format!("`{}` cannot be applied to a token set", op.name()),
                "a token set is matched with `eq` (contains the token) or `in` (contains one of them)",
            );
            continue;
        }
        if op == CondOp::In && pv.as_map().is_some() {
            if let Some(select) = sub_select(cx, &cpath, pv, &ty, scope) {
                out.push(Condition {
                    path: path.clone(),
                    op,
                    operand: Operand::Select(Box::new(select)),
                });
            }
            continue;
        }
        if !pv.as_str().is_some_and(|s| s.starts_with('$')) && pv.as_map().is_none() {
            if token {
                cx.error_hint(
                    pv.pos,
                    &cpath,
                    format!("expected a parameter like `$name`, found {}", pv.describe()),
                    "a token set is compared with parameters only",
                );
            } else if let Some(lit) = literal(cx, &cpath, pv, op, &ty) {
                out.push(Condition {
                    path: path.clone(),
                    op,
                    operand: Operand::Literal(lit),
                });
            }
            continue;
        }
        let Some(param) = param_ref(cx, &cpath, pv, scope.declared) else {
            continue;
        };
        if !token {
            check_op(cx, &cpath, pv, op, &ty);
        }
        let list = op == CondOp::In;
        match scope.used.get(&param) {
            Some(u) if !compatible(&u.ty, &ty) || u.list != list => cx.error_hint(
                pv.pos,
                &cpath,
                format!("`${param}` is used with two different types or shapes"),
                "declare a separate parameter for each use",
            ),
            Some(_) => {}
            None => {
                scope.used.insert(
                    param.clone(),
                    Use {
                        ty: ty.clone(),
                        list,
                        target: target.clone(),
                    },
                );
            }
        }
        out.push(Condition {
            path: path.clone(),
            op,
            operand: Operand::Param(param),
        });
    }
    out
}

const SELECT_KEYS: &[&str] = &["from", "select", "where"];

/// `in: { from: follow, select: followee, where: { follower: $user } }`.
fn sub_select(
    cx: &mut Ctx,
    cpath: &str,
    node: &Node,
    outer: &FieldType,
    scope: &mut Scope<'_>,
) -> Option<Select> {
    let spath = format!("{cpath}.in");
    let m = node.as_map()?;
    check_keys(cx, m, &spath, SELECT_KEYS);
    let names: Vec<&str> = scope
        .domain
        .templates
        .iter()
        .map(|t| t.name.as_str())
        .collect();
    let from = match get(m, "from").and_then(|n| n.as_str()) {
        Some(f) => match scope.domain.templates.iter().find(|t| t.name == f) {
            Some(t) => t,
            None => {
                cx.error_hint(
                    node.pos,
                    &format!("{spath}.from"),
                    format!("`{f}` is not a template of this domain"),
                    suggest(f, &names),
                );
                return None;
            }
        },
        None => {
            cx.error_hint(
                node.pos,
                &format!("{spath}.from"),
                "missing `from`",
                "name the template the sub-select reads",
            );
            return None;
        }
    };
    let select = get(m, "select").and_then(|n| n.as_str()).unwrap_or("");
    let selected = if select == "id" {
        Some(id_type(from))
    } else {
        from.field(select).map(|f| f.ty.clone())
    };
    match selected {
        Some(ty) if compatible(&ty, outer) => {}
        Some(ty) => {
            cx.error_hint(
                node.pos,
                &format!("{spath}.select"),
                format!(
                    "`{}.{select}` is a {}, but it is compared with a {}",
                    from.name,
                    ty.name(),
                    outer.name()
                ),
                "select a field of the same type (for a reference: one to the same template, or `id`)",
            );
            return None;
        }
        None => {
            let mut known: Vec<&str> = from.fields.iter().map(|f| f.name.as_str()).collect();
            known.push("id");
            cx.error_hint(
                node.pos,
                &format!("{spath}.select"),
                if select.is_empty() {
                    "missing `select`".to_string()
                } else {
                    format!("`{select}` is not a field of `{}`", from.name)
                },
                suggest(select, &known),
            );
            return None;
        }
    }
    let mut filter = Vec::new();
    if let Some(w) = get(m, "where") {
        let wpath = format!("{spath}.where");
        if let Some(wmap) = expect_map(cx, w, &wpath) {
            for (k, v) in wmap {
                filter.extend(condition(cx, &wpath, k, v, from, scope, false));
            }
        }
    }
    Some(Select {
        from: from.name.clone(),
        select: select.to_string(),
        filter,
    })
}

/// `with: [likes, author.followers, author.handle]`.
fn with_values(
    cx: &mut Ctx,
    wpath: &str,
    node: &Node,
    from: &Template,
    domain: &Domain,
) -> Vec<With> {
    let Some(items) = list(cx, wpath, node) else {
        return Vec::new();
    };
    let mut out: Vec<With> = Vec::new();
    for item in items {
        let Some(text) = item.as_str() else {
            cx.error_hint(
                item.pos,
                wpath,
                "expected a count or a field path",
                "e.g. `likes` or `author.handle`",
            );
            continue;
        };
        let segments: Vec<&str> = text.split('.').collect();
        let (last, refs) = segments.split_last().expect("split yields one part");
        let mut t = from;
        let mut nullable = false;
        let mut ok = true;
        for seg in refs {
            match t.field(seg) {
                Some(f) => {
                    match &f.ty {
                        FieldType::Ref { template, .. } => {
                            nullable |= f.optional;
                            t = domain
                                .templates
                                .iter()
                                .find(|x| &x.name == template)
                                .expect("references are checked");
                        }
                        _ => {
                            cx.error_hint(
                            item.pos,
                            wpath,
                            format!("`{seg}` is not a reference, so the path cannot continue past it"),
                            "only `ref` fields can be followed with `.`",
                        );
                            ok = false;
                            break;
                        }
                    }
                }
                None => {
                    no_field(cx, item.pos, wpath, t, seg);
                    ok = false;
                    break;
                }
            }
        }
        if !ok {
            continue;
        }
        let what = if t.counts.iter().any(|c| c.name == *last) {
            WithWhat::Count(last.to_string())
        } else if let Some(f) = t.field(last) {
            nullable |= f.optional;
            WithWhat::Field {
                name: last.to_string(),
                ty: f.ty.clone(),
                template: t.name.clone(),
            }
        } else {
            let known: Vec<&str> = t
                .counts
                .iter()
                .map(|c| c.name.as_str())
                .chain(t.fields.iter().map(|f| f.name.as_str()))
                .collect();
            cx.error_hint(
                item.pos,
                wpath,
                format!("`{last}` is neither a count nor a field of `{}`", t.name),
                if t.counts.is_empty() {
                    format!(
                        "declare it under `templates.{}.counts`, or {}",
                        t.name,
                        suggest(last, &known)
                    )
                } else {
                    suggest(last, &known)
                },
            );
            continue;
        };
        let name = segments.join("_");
        if out.iter().any(|w| w.name == name) {
            cx.error_hint(
                item.pos,
                wpath,
                format!("`{text}` is listed twice"),
                "list each value once",
            );
            continue;
        }
        out.push(With {
            name,
            path: refs.iter().map(|s| s.to_string()).collect(),
            what,
            nullable,
        });
    }
    out
}

/// What a dotted path ends at, following references: its type, what a parameter
/// compared with it targets, and whether it is a token set.
fn resolve(
    cx: &mut Ctx,
    cpath: &str,
    key: &Node,
    field_path: &str,
    from: &Template,
    domain: &Domain,
) -> Option<(FieldType, ParamTarget, bool)> {
    let mut t = from;
    let segments: Vec<&str> = field_path.split('.').collect();
    for (i, seg) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        if *seg == "id" && last {
            let target = ParamTarget::Id {
                template: t.name.clone(),
            };
            return Some((id_type(t), target, false));
        }
        if last && let Some(index) = t.tokens.iter().position(|s| s.name == *seg) {
            let target = ParamTarget::Token {
                template: t.name.clone(),
                set: seg.to_string(),
                index,
            };
            return Some((FieldType::Text { max: None }, target, true));
        }
        let Some(index) = t.fields.iter().position(|f| f.name == *seg) else {
            no_field(cx, key.pos, cpath, t, seg);
            return None;
        };
        let f = &t.fields[index];
        if last {
            let target = ParamTarget::Field {
                template: t.name.clone(),
                field: f.clone(),
                index,
            };
            return Some((f.ty.clone(), target, false));
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
        id: t.id,
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
                format!(
                    "expected a parameter like `$name`, found {}",
                    node.describe()
                ),
                "write `$name` for a parameter, or a literal value of an enum or bool field",
            );
            None
        }
    }
}

/// A literal compared with a field of type `ty` (anything but `$name`): an enum field's
/// value or a bool, with `eq`. Other types are refused until their literals have a typed
/// form (strings would blur with parameter names, numbers and dates with their formats).
pub(crate) fn literal(
    cx: &mut Ctx,
    cpath: &str,
    node: &Node,
    op: CondOp,
    ty: &FieldType,
) -> Option<CondLiteral> {
    if node.as_seq().is_some() {
        cx.error_hint(
            node.pos,
            cpath,
            "lists of literal values are not supported yet",
            "use `any` with one group per value, or a list parameter (`in: $name`)",
        );
        return None;
    }
    if op != CondOp::Eq {
        cx.error_hint(
            node.pos,
            cpath,
            format!("`{}` takes a parameter, not a literal value", op.name()),
            "literal values are compared for equality only: write `field: value`",
        );
        return None;
    }
    match ty {
        FieldType::Enum { values } => match node.as_str() {
            Some(v) if node.as_bool().is_none() && values.iter().any(|x| x == v) => {
                Some(CondLiteral::Enum(v.to_string()))
            }
            _ => {
                let shown = node.as_str().unwrap_or("?");
                let names: Vec<&str> = values.iter().map(String::as_str).collect();
                cx.error_hint(
                    node.pos,
                    cpath,
                    format!("`{shown}` is not a value of this enum field"),
                    format!("one of: {}", names.join(", ")),
                );
                None
            }
        },
        FieldType::Bool => match node.as_bool() {
            Some(b) => Some(CondLiteral::Bool(b)),
            None => {
                cx.error_hint(
                    node.pos,
                    cpath,
                    format!("expected `true` or `false`, found {}", node.describe()),
                    "a bool field is compared with `true`, `false` or a parameter `$name`",
                );
                None
            }
        },
        other => {
            cx.error_hint(
                node.pos,
                cpath,
                format!(
                    "literal values for `{}` fields are not supported yet, found {}",
                    other.name(),
                    node.describe()
                ),
                "compare with a parameter `$name`; literal values work for enum and bool fields",
            );
            None
        }
    }
}

/// More group keys than this make cursors unwieldy and rows rarely useful.
const MAX_GROUP: usize = 3;

/// `group: [status, member]`: required fields of `from` with bounded, exactly comparable
/// values.
fn group_keys(cx: &mut Ctx, gpath: &str, node: &Node, from: &Template) -> Vec<String> {
    let Some(items) = list(cx, gpath, node) else {
        return Vec::new();
    };
    if items.is_empty() || items.len() > MAX_GROUP {
        cx.error_hint(
            node.pos,
            gpath,
            format!("a group needs 1 to {MAX_GROUP} keys"),
            "e.g. `group: [status]`",
        );
        return Vec::new();
    }
    let mut out: Vec<String> = Vec::new();
    for item in items {
        let name = item.as_str().unwrap_or_default();
        let refuse = |cx: &mut Ctx, message: String, hint: &str| {
            cx.error_hint(item.pos, gpath, message, hint);
        };
        if name.contains('.') {
            refuse(
                cx,
                format!("cannot group by `{name}`: paths through references are not supported yet"),
                "group by the reference itself (e.g. `author`), a field of the query's template",
            );
            continue;
        }
        if name == "id" {
            refuse(
                cx,
                "cannot group by `id`: every group would be one record".into(),
                "group by a field that records share, e.g. an enum or a reference",
            );
            continue;
        }
        if name == COUNT_KEY {
            refuse(
                cx,
                format!("cannot group by `{COUNT_KEY}`: each row's count has that name"),
                "rename the field",
            );
            continue;
        }
        let Some(f) = from.field(name) else {
            no_field(cx, item.pos, gpath, from, name);
            continue;
        };
        let why = match &f.ty {
            _ if f.optional => {
                Some("optional fields are not supported yet as group keys (a cursor needs a value)")
            }
            FieldType::Text { .. } | FieldType::Json => Some("its values are unbounded"),
            FieldType::Float { .. } => Some("floats do not compare exactly"),
            FieldType::Timestamp => Some("every instant would be its own group"),
            FieldType::String { .. }
                if from
                    .unique
                    .iter()
                    .any(|u| u.case_insensitive && u.fields.contains(&f.name)) =>
            {
                Some(
                    "case-insensitive strings are not supported yet as group keys (databases group them differently)",
                )
            }
            _ => None,
        };
        if let Some(why) = why {
            refuse(
                cx,
                format!("cannot group by `{name}` ({}): {why}", f.ty.name()),
                "group by a required enum, bool, reference, integer, date, uuid or string field",
            );
            continue;
        }
        if out.iter().any(|g| g == name) {
            refuse(
                cx,
                format!("`{name}` is listed twice"),
                "list each group key once",
            );
            continue;
        }
        out.push(name.to_string());
    }
    out
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

/// `tiers: [hot, warehouse]`: whether the query also reads the warehouse. `hot` is always
/// read, so it must be listed; `[hot]` alone is the default.
fn tiers(cx: &mut Ctx, path: &str, node: &Node) -> bool {
    let Some(items) = node.as_seq().filter(|i| !i.is_empty()) else {
        cx.error_hint(
            node.pos,
            path,
            format!(
                "expected a non-empty list of tiers, found {}",
                node.describe()
            ),
            "write `tiers: [hot, warehouse]`",
        );
        return false;
    };
    let mut seen: Vec<&str> = Vec::new();
    for item in items {
        match item.as_str().filter(|t| TIERS.contains(t)) {
            Some(t) if seen.contains(&t) => cx.error_hint(
                item.pos,
                path,
                format!("tier `{t}` is listed twice"),
                "list each tier once",
            ),
            Some(t) => seen.push(t),
            None => {
                let given = item.as_str().unwrap_or("?");
                cx.error_hint(
                    item.pos,
                    path,
                    format!("`{given}` is not a tier a query reads"),
                    suggest(given, TIERS),
                );
            }
        }
    }
    if !seen.is_empty() && !seen.contains(&"hot") {
        cx.error_hint(
            node.pos,
            path,
            "a query always reads the serving database: `hot` must be listed",
            "write `tiers: [hot, warehouse]`",
        );
    }
    seen.contains(&"warehouse")
}
