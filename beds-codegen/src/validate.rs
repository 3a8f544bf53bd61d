//! Reads a spanned YAML tree into the declaration model, collecting every error.

use std::collections::{HashMap, HashSet};

use crate::diag::{Ctx, suggest};
use crate::fields::field;
use crate::model::{
    Capabilities, Domain, FieldType, IdKind, MODULE_TYPES, OPERATIONS, Page, Retention, SetOn,
    TYPE_SUFFIXES, Template, Unique, camel, enum_type, key_type,
};
use crate::read::{
    MAX_IDENT, check_documented_keys, check_keys, doc, duration, expect_map, field_names, flag,
    get, ident, list, page, principals, shown, storage_ident,
};
use crate::yaml::{Node, Pos};

const DOMAIN_KEYS: &[&str] = &["domain", "version", "table_prefix", "templates", "queries"];
const TEMPLATE_KEYS: &[&str] = &[
    "version",
    "table",
    "column_suffix",
    "id",
    "fields",
    "unique",
    "indexes",
    "page",
    "append_only",
    "internal",
    "capabilities",
    "access",
    "owner",
    "tokens",
    "counts",
    "checks",
];
const CAPABILITY_KEYS: &[&str] = &["audit", "journal", "locking", "cache", "retention"];
const UNIQUE_KEYS: &[&str] = &["fields", "case_insensitive"];
/// Names the runtime owns on every record.
const RESERVED_FIELDS: &[&str] = &["id", "version"];

/// Validates one parsed domain file. Errors go to `cx`; the returned model is only
/// meaningful when `cx` collected none.
pub(crate) fn domain(cx: &mut Ctx, file: &str, root: &Node) -> Domain {
    let mut out = Domain {
        name: String::new(),
        version: 1,
        file: file.to_string(),
        templates: Vec::new(),
        queries: Vec::new(),
    };
    let Some(entries) = expect_map(cx, root, "") else {
        return out;
    };
    check_keys(cx, entries, "", DOMAIN_KEYS);
    match get(entries, "domain") {
        Some(n) => {
            if let Some(name) = ident(cx, n, "domain", "domain name") {
                out.name = name;
            }
        }
        None => cx.error_hint(
            Pos { line: 1, col: 1 },
            "domain",
            "missing `domain`",
            "start the file with `domain: <name>`, a snake_case name",
        ),
    }
    if let Some(n) = get(entries, "version") {
        match n.as_i64() {
            Some(v) if v >= 1 => out.version = v,
            _ => cx.error_hint(
                n.pos,
                "version",
                format!("expected a positive integer, found {}", n.describe()),
                "write a whole number, 1 or more",
            ),
        }
    }
    let Some(templates) = get(entries, "templates") else {
        cx.error_hint(
            Pos { line: 1, col: 1 },
            "templates",
            "missing `templates`",
            "declare at least one template under `templates:`",
        );
        return out;
    };
    let Some(tmap) = expect_map(cx, templates, "templates") else {
        return out;
    };
    if tmap.is_empty() {
        cx.error_hint(
            templates.pos,
            "templates",
            "no templates declared; a domain needs at least one",
            "declare a template, e.g. `item: { fields: { name: { type: string, max: 50 } } }`",
        );
    }
    // A DBA's naming convention for every table not named explicitly: `cln_` + template.
    let prefix = get(entries, "table_prefix")
        .and_then(|n| storage_ident(cx, n, "table_prefix"))
        .unwrap_or_default();
    let names: Vec<&str> = tmap.iter().filter_map(|(k, _)| k.as_str()).collect();
    let mut seen = HashSet::new();
    for (key, body) in tmap {
        let path = format!("templates.{}", key.as_str().unwrap_or("?"));
        let Some(name) = ident(cx, key, &path, "template name") else {
            continue;
        };
        if !seen.insert(name.clone()) {
            cx.error_hint(
                key.pos,
                &path,
                format!("template `{name}` is declared twice"),
                "remove or rename one of the two",
            );
            continue;
        }
        out.templates
            .push(template(cx, &path, name, &prefix, body, &names));
    }
    resolve_reference_ids(&mut out);
    check_tables(cx, &out, tmap);
    crate::derived::check_counts(cx, &mut out, tmap);
    if let Some(q) = get(entries, "queries") {
        out.queries = crate::queries::queries(cx, q, &out);
    }
    check_type_names(cx, &out, tmap);
    out
}

/// Two templates must not generate the same Rust type (`order_id` vs `order` + `Id`).
fn check_type_names(cx: &mut Ctx, domain: &Domain, tmap: &[(Node, Node)]) {
    let mut owners: HashMap<String, &str> = MODULE_TYPES
        .iter()
        .map(|t| (t.to_string(), "the generated module"))
        .collect();
    for t in &domain.templates {
        let enums = t
            .fields
            .iter()
            .filter(|f| matches!(f.ty, FieldType::Enum { .. }));
        let types: Vec<String> = TYPE_SUFFIXES
            .iter()
            .map(|suffix| format!("{}{suffix}", camel(&t.name)))
            .chain(enums.map(|f| enum_type(&t.name, &f.name)))
            .chain(t.unique.iter().map(|u| key_type(&t.name, &u.fields)))
            .collect();
        for ty in types {
            if let Some(other) = owners.insert(ty.clone(), &t.name) {
                let pos = key_pos(tmap, &t.name);
                cx.error_hint(
                    pos,
                    &format!("templates.{}", t.name),
                    format!(
                        "template `{}` would generate type `{ty}`, already defined by {other}",
                        t.name
                    ),
                    "rename the template; its table name can stay the same via `table`",
                );
                break;
            }
        }
    }
    let accessors: Vec<&str> = domain.templates.iter().map(|t| t.name.as_str()).collect();
    for q in &domain.queries {
        let pos = q.pos;
        if accessors.contains(&q.name.as_str()) {
            cx.error_hint(
                pos,
                &format!("queries.{}", q.name),
                format!("query `{}` has the name of a template", q.name),
                "rename the query, e.g. `<template>_by_<field>`",
            );
            continue;
        }
        let mut types = vec![camel(&q.name), format!("{}Params", camel(&q.name))];
        if !q.with.is_empty() {
            types.push(format!("{}Item", camel(&q.name)));
            types.push(format!("{}With", camel(&q.name)));
        }
        if !q.group.is_empty() {
            types.push(q.group_type());
        }
        for ty in types {
            if let Some(other) = owners.insert(ty.clone(), &q.name) {
                cx.error_hint(
                    pos,
                    &format!("queries.{}", q.name),
                    format!(
                        "query `{}` would generate type `{ty}`, already defined by {other}",
                        q.name
                    ),
                    "rename the query",
                );
                break;
            }
        }
    }
}

/// Gives every reference the id kind of its target, so nothing after the validator looks a
/// template up by name to learn a field's type.
fn resolve_reference_ids(domain: &mut Domain) {
    let ids: HashMap<String, IdKind> = domain
        .templates
        .iter()
        .map(|t| (t.name.clone(), t.id))
        .collect();
    for f in domain
        .templates
        .iter_mut()
        .flat_map(|t| t.fields.iter_mut())
    {
        if let FieldType::Ref { template, id, .. } = &mut f.ty
            && let Some(kind) = ids.get(template)
        {
            *id = *kind;
        }
    }
}

fn key_pos(entries: &[(Node, Node)], key: &str) -> Pos {
    entries
        .iter()
        .find(|(k, _)| k.as_str() == Some(key))
        .map_or(Pos::default(), |(k, _)| k.pos)
}

fn template(
    cx: &mut Ctx,
    path: &str,
    name: String,
    prefix: &str,
    body: &Node,
    templates: &[&str],
) -> Template {
    let mut t = Template {
        table: format!("{prefix}{name}"),
        doc: None,
        id_column: "id".into(),
        version_column: "version".into(),
        name,
        id: IdKind::Uuid7,
        fields: Vec::new(),
        unique: Vec::new(),
        indexes: Vec::new(),
        page: Page::default(),
        version: 1,
        append_only: false,
        internal: false,
        capabilities: Capabilities::default(),
        access: Vec::new(),
        owner: None,
        tokens: Vec::new(),
        counts: Vec::new(),
        checks: Vec::new(),
    };
    let Some(entries) = expect_map(cx, body, path) else {
        return t;
    };
    check_documented_keys(cx, entries, path, TEMPLATE_KEYS);
    t.doc = doc(cx, entries, path);
    if let Some(table) =
        get(entries, "table").and_then(|n| storage_ident(cx, n, &format!("{path}.table")))
    {
        t.table = table;
    }
    let suffix = get(entries, "column_suffix")
        .and_then(|n| storage_ident(cx, n, &format!("{path}.column_suffix")));
    let column_for = |field: &str| match &suffix {
        Some(s) => format!("{field}_{s}"),
        None => field.to_string(),
    };
    t.id_column = column_for("id");
    t.version_column = column_for("version");
    if let Some(n) = get(entries, "id") {
        let p = format!("{path}.id");
        match n.as_str() {
            Some("uuid7") => t.id = IdKind::Uuid7,
            Some("sequence") => t.id = IdKind::Sequence,
            Some(other) => cx.error_hint(
                n.pos,
                &p,
                format!("unknown id kind `{other}`"),
                suggest(other, IdKind::NAMES),
            ),
            None => cx.error_hint(
                n.pos,
                &p,
                format!("expected an id kind, found {}", n.describe()),
                "write `id: uuid7`",
            ),
        }
    }
    match get(entries, "fields") {
        None => cx.error_hint(
            body.pos,
            &format!("{path}.fields"),
            "missing `fields`",
            "declare the record's fields under `fields:`",
        ),
        Some(fields_node) => {
            let fpath = format!("{path}.fields");
            if let Some(fmap) = expect_map(cx, fields_node, &fpath) {
                let mut seen = HashSet::new();
                for (key, spec) in fmap {
                    let p = format!("{fpath}.{}", key.as_str().unwrap_or("?"));
                    let Some(fname) = ident(cx, key, &p, "field name") else {
                        continue;
                    };
                    if RESERVED_FIELDS.contains(&fname.as_str()) {
                        cx.error_hint(
                            key.pos,
                            &p,
                            format!("`{fname}` is reserved: every record has it already"),
                            "remove the field; the runtime manages `id` and `version`",
                        );
                        continue;
                    }
                    if !seen.insert(fname.clone()) {
                        cx.error_hint(
                            key.pos,
                            &p,
                            format!("field `{fname}` is declared twice"),
                            "remove or rename one of the two",
                        );
                        continue;
                    }
                    if let Some(f) = field(cx, &p, fname, spec, templates, &column_for) {
                        t.fields.push(f);
                    }
                }
                let mut columns: HashMap<&str, &str> = HashMap::new();
                columns.insert(&t.id_column, "id");
                columns.insert(&t.version_column, "version");
                for f in &t.fields {
                    if let Some(other) = columns.insert(&f.column, &f.name) {
                        let pos = key_pos(fmap, &f.name);
                        cx.error_hint(
                            pos,
                            &format!("{fpath}.{}", f.name),
                            format!(
                                "column `{}` is used by both `{other}` and `{}`",
                                f.column, f.name
                            ),
                            "give one of the fields its own `column`",
                        );
                    }
                }
            }
        }
    }
    if let Some(n) = get(entries, "unique") {
        t.unique = unique(cx, &format!("{path}.unique"), n, &t);
    }
    if let Some(n) = get(entries, "indexes") {
        t.indexes = indexes(cx, &format!("{path}.indexes"), n, &t);
    }
    if let Some(n) = get(entries, "page") {
        t.page = page(cx, &format!("{path}.page"), n);
    }
    if let Some(n) = get(entries, "version") {
        match n
            .as_i64()
            .and_then(|v| u32::try_from(v).ok())
            .filter(|v| *v >= 1)
        {
            Some(v) => t.version = v,
            None => cx.error_hint(
                n.pos,
                &format!("{path}.version"),
                format!("expected a positive integer, found {}", n.describe()),
                "write a whole number, 1 or more",
            ),
        }
    }
    t.append_only = flag(cx, entries, path, "append_only");
    t.internal = flag(cx, entries, path, "internal");
    if let Some(n) = get(entries, "capabilities") {
        t.capabilities = capabilities(cx, &format!("{path}.capabilities"), n);
    }
    if let Some(n) = get(entries, "access") {
        t.access = access(cx, &format!("{path}.access"), n);
    }
    if let Some(n) = get(entries, "owner") {
        t.owner = owner(cx, &format!("{path}.owner"), n, &t);
    }
    owner_rules(cx, path, body, &t, get(entries, "owner").is_some());
    if let Some(n) = get(entries, "tokens") {
        t.tokens = crate::derived::tokens(cx, &format!("{path}.tokens"), n, &t);
    }
    if let Some(n) = get(entries, "counts") {
        t.counts = crate::derived::counts(cx, &format!("{path}.counts"), n, &t);
    }
    if let Some(n) = get(entries, "checks") {
        t.checks = crate::derived::checks(cx, &format!("{path}.checks"), n, &t);
    }
    coherence(cx, path, body, &t);
    t
}

/// Rejects combinations that cannot mean anything.
fn coherence(cx: &mut Ctx, path: &str, body: &Node, t: &Template) {
    if t.append_only {
        if t.capabilities.locking {
            cx.error_hint(
                body.pos,
                &format!("{path}.capabilities.locking"),
                "`locking` guards updates, and an append-only template has none",
                "remove `locking` or `append_only`",
            );
        }
        if t.capabilities.journal {
            cx.error_hint(
                body.pos,
                &format!("{path}.capabilities.journal"),
                crate::model::APPEND_ONLY_JOURNAL,
                "remove `journal` (`fetch` and `list` already show every version) or `append_only`",
            );
        }
        for (op, _) in &t.access {
            if op == "update" || op == "delete" {
                cx.error_hint(
                    body.pos,
                    &format!("{path}.access.{op}"),
                    format!("an append-only template has no `{op}` operation"),
                    format!("remove the `{op}` rule or `append_only`"),
                );
            }
        }
        for f in &t.fields {
            if f.set == Some(SetOn::Update) {
                cx.error_hint(
                    body.pos,
                    &format!("{path}.fields.{}.set", f.name),
                    "an append-only record is never updated",
                    "use `set: on_create`",
                );
            }
        }
    }
    if t.internal && t.capabilities.audit {
        cx.error_hint(
            body.pos,
            &format!("{path}.capabilities.audit"),
            crate::model::INTERNAL_AUDIT,
            "remove `audit` or `internal`",
        );
    }
    if let Some(r) = &t.capabilities.retention {
        retention_field(cx, path, t, r);
    }
    if t.internal && !t.access.is_empty() {
        cx.error_hint(
            body.pos,
            &format!("{path}.access"),
            "an internal template is not callable by clients, so access rules never apply",
            "remove `access` or `internal`",
        );
    }
}

fn capabilities(cx: &mut Ctx, path: &str, node: &Node) -> Capabilities {
    let mut caps = Capabilities::default();
    let Some(entries) = expect_map(cx, node, path) else {
        return caps;
    };
    check_keys(cx, entries, path, CAPABILITY_KEYS);
    caps.audit = flag(cx, entries, path, "audit");
    caps.journal = flag(cx, entries, path, "journal");
    caps.locking = flag(cx, entries, path, "locking");
    if let Some(n) = get(entries, "cache") {
        let p = format!("{path}.cache");
        if let Some(m) = expect_map(cx, n, &p) {
            check_keys(cx, m, &p, &["ttl", "consistency"]);
            match get(m, "ttl") {
                Some(ttl) => caps.cache_ttl_ms = duration(cx, &format!("{p}.ttl"), ttl),
                None => cx.error_hint(n.pos, &p, "missing `ttl`", "e.g. `cache: { ttl: 30s }`"),
            }
            // A cached template's fetches use the cache unless the request says `strong`;
            // `consistency: strong` makes the cache opt-in per request instead.
            caps.cache_cached = match get(m, "consistency").map(|c| (c, c.as_str())) {
                None | Some((_, Some("cached"))) => true,
                Some((_, Some("strong"))) => false,
                Some((node, other)) => {
                    cx.error_hint(
                        node.pos,
                        &format!("{p}.consistency"),
                        format!("unknown consistency {}", shown(other, node)),
                        suggest(other.unwrap_or(""), &["strong", "cached"]),
                    );
                    false
                }
            };
        }
    }
    if let Some(n) = get(entries, "retention") {
        caps.retention = retention(cx, &format!("{path}.retention"), n);
    }
    caps
}

/// The retention field must be a required timestamp of the template; internal templates
/// hold the runtime's own records, which segundo does not move.
fn retention_field(cx: &mut Ctx, path: &str, t: &Template, r: &Retention) {
    let at = format!("{path}.capabilities.retention");
    if t.internal {
        cx.error_hint(
            r.pos,
            &at,
            "an internal template holds the runtime's own records, which segundo does not move",
            "remove `retention` or `internal`",
        );
    }
    let names: Vec<&str> = t
        .fields
        .iter()
        .filter(|f| f.ty == FieldType::Timestamp)
        .map(|f| f.name.as_str())
        .collect();
    match t.field(&r.field) {
        Some(f) if f.ty != FieldType::Timestamp => cx.error_hint(
            r.pos,
            &format!("{at}.field"),
            format!("`{}` is not a timestamp, so it has no age", r.field),
            suggest(&r.field, &names),
        ),
        Some(f) if f.optional => cx.error_hint(
            r.pos,
            &format!("{at}.field"),
            format!(
                "`{}` is optional: a record without it would never move",
                r.field
            ),
            "name a required timestamp, e.g. one with `set: on_create`",
        ),
        Some(_) => {}
        None => cx.error_hint(
            r.pos,
            &format!("{at}.field"),
            format!("`{}` has no field `{}`", t.name, r.field),
            suggest(&r.field, &names),
        ),
    }
}

/// `retention: { field: created_at, hot: 90d, cool: 2y, then: keep }`; the field is
/// checked against the template in [`coherence`].
fn retention(cx: &mut Ctx, p: &str, n: &Node) -> Option<Retention> {
    const EXAMPLE: &str = "e.g. `retention: { field: created_at, hot: 90d, cool: 2y, then: keep }`";
    let m = expect_map(cx, n, p)?;
    check_keys(cx, m, p, &["field", "hot", "cool", "then"]);
    let field = match get(m, "field").map(|f| (f, f.as_str())) {
        Some((_, Some(f))) => Some(f.to_string()),
        Some((node, None)) => {
            cx.error_hint(
                node.pos,
                &format!("{p}.field"),
                format!("expected a field name, found {}", node.describe()),
                "name the template's timestamp field the age is measured from",
            );
            None
        }
        None => {
            cx.error_hint(n.pos, p, "missing `field`", EXAMPLE);
            None
        }
    };
    let mut span = |key: &str| match get(m, key) {
        Some(d) => duration(cx, &format!("{p}.{key}"), d),
        None => {
            cx.error_hint(n.pos, p, format!("missing `{key}`"), EXAMPLE);
            None
        }
    };
    let (hot, cool) = (span("hot"), span("cool"));
    if let (Some(h), Some(c), Some(node)) = (hot, cool, get(m, "cool"))
        && c <= h
    {
        cx.error_hint(
            node.pos,
            &format!("{p}.cool"),
            "`cool` must be longer than `hot`: a record leaves the warehouse after it entered it",
            "give `cool` the age at which records leave the warehouse, e.g. `hot: 90d, cool: 2y`",
        );
        return None;
    }
    let then = match get(m, "then").map(|t| (t, t.as_str())) {
        None => Some("keep".to_string()),
        Some((_, Some(t))) if Retention::THEN.contains(&t) => Some(t.to_string()),
        Some((node, other)) => {
            cx.error_hint(
                node.pos,
                &format!("{p}.then"),
                format!("unknown retention end {}", shown(other, node)),
                suggest(other.unwrap_or(""), Retention::THEN),
            );
            None
        }
    };
    Some(Retention {
        field: field?,
        hot_ms: hot?,
        cool_ms: cool?,
        then: then?,
        pos: n.pos,
    })
}

/// A positive duration: `500ms`, `30s`, `5m`, `12h` or `90d`.
/// `owner: author`: a reference or string field, or `id` (a record that is its subject,
/// like a user profile).
fn owner(cx: &mut Ctx, path: &str, node: &Node, t: &Template) -> Option<String> {
    let name = node.as_str()?;
    if name == "id" {
        return Some(name.to_string());
    }
    match t.field(name).map(|f| &f.ty) {
        Some(FieldType::Ref { .. } | FieldType::String { .. }) => Some(name.to_string()),
        Some(_) => {
            cx.error_hint(
                node.pos,
                path,
                format!("`{name}` is not a reference or a string, so it cannot name a subject"),
                "name a `ref:` field, a string field or `id`",
            );
            None
        }
        None => {
            let names: Vec<&str> = t.fields.iter().map(|f| f.name.as_str()).collect();
            cx.error_hint(
                node.pos,
                path,
                format!(
                    "`{}` has no field `{name}`; {}",
                    t.name,
                    suggest(name, &names)
                ),
                "name the field whose value is the owning subject (e.g. `owner: author`)",
            );
            None
        }
    }
}

/// `owner` in a rule needs the owner field (a declared but bad one is reported already); a
/// list has no one record to own.
fn owner_rules(cx: &mut Ctx, path: &str, body: &Node, t: &Template, declared: bool) {
    for (op, who) in &t.access {
        if !who.iter().any(|w| w == "owner") {
            continue;
        }
        if op == "list" {
            cx.error_hint(
                body.pos,
                &format!("{path}.access.list"),
                "`owner` cannot apply to `list`: a page has no single owner",
                "use `authenticated` or a role, and a named query filtered by owner",
            );
        } else if !declared {
            cx.error_hint(
                body.pos,
                &format!("{path}.access.{op}"),
                "`owner` needs the template's owner field",
                "add e.g. `owner: author` naming the field that holds the owning subject",
            );
        }
    }
}

fn access(cx: &mut Ctx, path: &str, node: &Node) -> Vec<(String, Vec<String>)> {
    let mut rules = Vec::new();
    let Some(entries) = expect_map(cx, node, path) else {
        return rules;
    };
    check_keys(cx, entries, path, OPERATIONS);
    for (k, v) in entries {
        let Some(op) = k.as_str().filter(|op| OPERATIONS.contains(op)) else {
            continue;
        };
        let p = format!("{path}.{op}");
        let who = principals(cx, &p, v);
        if who.is_empty() {
            continue;
        }
        rules.push((op.to_string(), who));
    }
    rules
}

fn indexes(cx: &mut Ctx, path: &str, node: &Node, t: &Template) -> Vec<Vec<String>> {
    let Some(items) = list(cx, path, node) else {
        return Vec::new();
    };
    items
        .iter()
        .enumerate()
        .filter_map(|(i, item)| {
            let p = format!("{path}[{i}]");
            let names = field_names(cx, &p, item, t, true, "e.g. `[author, created_at]`")?;
            indexable(cx, &p, item, t, &names);
            Some(names)
        })
        .collect()
}

/// `text` and `json` values have no bounded length, and MariaDB cannot index them.
fn indexable(cx: &mut Ctx, path: &str, node: &Node, t: &Template, names: &[String]) {
    for name in names {
        if let Some(f) = t.field(name)
            && matches!(f.ty, FieldType::Text { .. } | FieldType::Json)
        {
            cx.error_hint(
                node.pos,
                path,
                format!(
                    "`{name}` is of type `{}`, which cannot be indexed on every database",
                    f.ty.name()
                ),
                "index a `string` field with a `max` instead",
            );
        }
    }
}

fn unique(cx: &mut Ctx, path: &str, node: &Node, t: &Template) -> Vec<Unique> {
    let Some(items) = list(cx, path, node) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let p = format!("{path}[{i}]");
        let Some(entries) = expect_map(cx, item, &p) else {
            continue;
        };
        check_keys(cx, entries, &p, UNIQUE_KEYS);
        let case_insensitive = flag(cx, entries, &p, "case_insensitive");
        let Some(fields) = get(entries, "fields") else {
            cx.error_hint(
                item.pos,
                &p,
                "missing `fields`",
                "e.g. `{ fields: [handle] }`",
            );
            continue;
        };
        let example = "e.g. `{ fields: [handle] }`";
        let Some(names) = field_names(cx, &format!("{p}.fields"), fields, t, false, example) else {
            continue;
        };
        indexable(cx, &format!("{p}.fields"), fields, t, &names);
        if case_insensitive
            && names
                .iter()
                .any(|n| !matches!(t.field(n).map(|f| &f.ty), Some(FieldType::String { .. })))
        {
            cx.error_hint(
                item.pos,
                &format!("{p}.case_insensitive"),
                "`case_insensitive` needs every field of the index to be a string",
                "remove `case_insensitive`, or index only string fields",
            );
        }
        out.push(Unique {
            fields: names,
            case_insensitive,
        });
    }
    out
}

/// Two templates (or token sets) must not share a table.
fn check_tables(cx: &mut Ctx, domain: &Domain, tmap: &[(Node, Node)]) {
    let mut tables: HashMap<&str, &str> = HashMap::new();
    let owners = domain.templates.iter().flat_map(|t| {
        std::iter::once((&t.table, &t.name))
            .chain(t.tokens.iter().map(move |s| (&s.table, &t.name)))
    });
    for (table, name) in owners {
        let t = domain
            .templates
            .iter()
            .find(|t| &t.name == name)
            .expect("own template");
        // Explicit names are checked where they are read; derived ones (prefix + template,
        // table + token set) only here, once known.
        if table.len() > MAX_IDENT {
            let pos = key_pos(tmap, &t.name);
            cx.error_hint(
                pos,
                &format!("templates.{}.table", t.name),
                format!(
                    "table name `{table}` is {} characters, more than the {MAX_IDENT} PostgreSQL keeps",
                    table.len()
                ),
                "give the template (or token set) a shorter `table`, or shorten `table_prefix`",
            );
        }
        if let Some(other) = tables.insert(table, name) {
            let pos = key_pos(tmap, &t.name);
            cx.error_hint(
                pos,
                &format!("templates.{}.table", t.name),
                format!("table `{table}` is used by both `{other}` and `{}`", t.name),
                "give one of the templates (or token sets) its own `table`",
            );
        }
    }
}
