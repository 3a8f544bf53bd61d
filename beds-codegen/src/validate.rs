//! Reads a spanned YAML tree into the declaration model, collecting every error.

use std::collections::{HashMap, HashSet};

use crate::diag::{Ctx, suggest};
use crate::model::{
    Domain, Field, FieldType, IdKind, MODULE_TYPES, OnDelete, Page, SetOn, TYPE_SUFFIXES, Template,
    Unique, camel,
};
use crate::yaml::{Node, Pos};

const DOMAIN_KEYS: &[&str] = &["domain", "version", "templates"];
const TEMPLATE_KEYS: &[&str] = &["table", "column_suffix", "id", "fields", "unique", "page"];
const FIELD_KEYS: &[&str] = &[
    "type",
    "ref",
    "min",
    "max",
    "optional",
    "set",
    "column",
    "on_delete",
];
const UNIQUE_KEYS: &[&str] = &["fields", "case_insensitive"];
const PAGE_KEYS: &[&str] = &["default", "max"];
/// Names the runtime owns on every record.
const RESERVED_FIELDS: &[&str] = &["id", "version"];
const RUST_KEYWORDS: &[&str] = &[
    "as", "async", "await", "break", "const", "continue", "crate", "dyn", "else", "enum", "extern",
    "false", "fn", "for", "gen", "if", "impl", "in", "let", "loop", "match", "mod", "move", "mut",
    "pub", "ref", "return", "self", "static", "struct", "super", "trait", "true", "type", "unsafe",
    "use", "where", "while", "yield", "abstract", "become", "box", "do", "final", "macro",
    "override", "priv", "typeof", "unsized", "virtual", "try",
];
/// Longest identifier every supported database accepts (MariaDB's limit).
const MAX_IDENT: usize = 64;

/// Validates one parsed domain file. Errors go to `cx`; the returned model is only
/// meaningful when `cx` collected none.
pub(crate) fn domain(cx: &mut Ctx, file: &str, root: &Node) -> Domain {
    let mut out = Domain {
        name: String::new(),
        version: 1,
        file: file.to_string(),
        templates: Vec::new(),
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
            root.pos,
            "domain",
            "missing `domain`",
            "start the file with `domain: <name>`, a snake_case name",
        ),
    }
    if let Some(n) = get(entries, "version") {
        match n.as_i64() {
            Some(v) if v >= 1 => out.version = v,
            _ => cx.error(
                n.pos,
                "version",
                format!("expected a positive integer, found {}", n.describe()),
            ),
        }
    }
    let Some(templates) = get(entries, "templates") else {
        cx.error_hint(
            root.pos,
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
        cx.error(
            templates.pos,
            "templates",
            "no templates declared; a domain needs at least one",
        );
    }
    let names: Vec<&str> = tmap.iter().filter_map(|(k, _)| k.as_str()).collect();
    let mut seen = HashSet::new();
    for (key, body) in tmap {
        let path = format!("templates.{}", key.as_str().unwrap_or("?"));
        let Some(name) = ident(cx, key, &path, "template name") else {
            continue;
        };
        if !seen.insert(name.clone()) {
            cx.error(
                key.pos,
                &path,
                format!("template `{name}` is declared twice"),
            );
            continue;
        }
        out.templates.push(template(cx, &path, name, body, &names));
    }
    check_tables(cx, &out, tmap);
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
        for suffix in TYPE_SUFFIXES {
            let ty = format!("{}{suffix}", camel(&t.name));
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
}

fn key_pos(entries: &[(Node, Node)], key: &str) -> Pos {
    entries
        .iter()
        .find(|(k, _)| k.as_str() == Some(key))
        .map_or(Pos::default(), |(k, _)| k.pos)
}

fn template(cx: &mut Ctx, path: &str, name: String, body: &Node, templates: &[&str]) -> Template {
    let mut t = Template {
        table: name.clone(),
        id_column: "id".into(),
        version_column: "version".into(),
        name,
        id: IdKind::Uuid7,
        fields: Vec::new(),
        unique: Vec::new(),
        page: Page::default(),
    };
    let Some(entries) = expect_map(cx, body, path) else {
        return t;
    };
    check_keys(cx, entries, path, TEMPLATE_KEYS);
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
            Some(other) => cx.error_hint(
                n.pos,
                &p,
                format!("unknown id kind `{other}`"),
                suggest(other, IdKind::NAMES),
            ),
            None => cx.error(
                n.pos,
                &p,
                format!("expected an id kind, found {}", n.describe()),
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
                        cx.error(key.pos, &p, format!("field `{fname}` is declared twice"));
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
                        cx.error(
                            pos,
                            &format!("{fpath}.{}", f.name),
                            format!(
                                "column `{}` is used by both `{other}` and `{}`",
                                f.column, f.name
                            ),
                        );
                    }
                }
            }
        }
    }
    if let Some(n) = get(entries, "unique") {
        t.unique = unique(cx, &format!("{path}.unique"), n, &t);
    }
    if let Some(n) = get(entries, "page") {
        t.page = page(cx, &format!("{path}.page"), n);
    }
    t
}

fn field(
    cx: &mut Ctx,
    path: &str,
    name: String,
    spec: &Node,
    templates: &[&str],
    column_for: &dyn Fn(&str) -> String,
) -> Option<Field> {
    let entries = expect_map(cx, spec, path)?;
    check_keys(cx, entries, path, FIELD_KEYS);
    let optional = flag(cx, entries, path, "optional");
    let column = match get(entries, "column") {
        Some(n) => storage_ident(cx, n, &format!("{path}.column"))?,
        None => column_for(&name),
    };
    let ty = match (get(entries, "type"), get(entries, "ref")) {
        (Some(t), Some(_)) => {
            cx.error_hint(
                t.pos,
                path,
                "a field has either `type` or `ref`, not both",
                "use `ref: <template>` for a reference and drop `type`",
            );
            return None;
        }
        (None, None) => {
            cx.error_hint(
                spec.pos,
                path,
                "missing `type`",
                format!(
                    "give the field a type ({}) or `ref: <template>`",
                    FieldType::NAMES.join(", ")
                ),
            );
            return None;
        }
        (None, Some(r)) => {
            let p = format!("{path}.ref");
            let target = match r.as_str() {
                Some(t) if templates.contains(&t) => t.to_string(),
                Some(t) => {
                    cx.error_hint(
                        r.pos,
                        &p,
                        format!("`{t}` is not a template of this domain"),
                        suggest(t, templates),
                    );
                    return None;
                }
                None => {
                    cx.error(
                        r.pos,
                        &p,
                        format!("expected a template name, found {}", r.describe()),
                    );
                    return None;
                }
            };
            let on_delete = match get(entries, "on_delete") {
                None => OnDelete::Restrict,
                Some(n) => {
                    let p = format!("{path}.on_delete");
                    match n.as_str() {
                        Some("restrict") => OnDelete::Restrict,
                        Some("cascade") => OnDelete::Cascade,
                        Some("set_null") => OnDelete::SetNull,
                        other => {
                            cx.error_hint(
                                n.pos,
                                &p,
                                format!("unknown delete behaviour {}", shown(other, n)),
                                suggest(other.unwrap_or(""), OnDelete::NAMES),
                            );
                            return None;
                        }
                    }
                }
            };
            if on_delete == OnDelete::SetNull && !optional {
                cx.error_hint(
                    spec.pos,
                    &format!("{path}.on_delete"),
                    "`on_delete: set_null` needs an optional field",
                    "add `optional: true`, or choose `restrict` or `cascade`",
                );
            }
            FieldType::Ref {
                template: target,
                on_delete,
            }
        }
        (Some(t), None) => {
            let p = format!("{path}.type");
            match t.as_str() {
                Some("string") => {
                    let min = bound(cx, entries, path, "min").map(|v| v as u32);
                    match bound(cx, entries, path, "max") {
                        Some(max) => {
                            if max == 0 {
                                cx.error(
                                    spec.pos,
                                    &format!("{path}.max"),
                                    "`max` must be at least 1",
                                );
                            }
                            if min.is_some_and(|m| i64::from(m) > max) {
                                cx.error(
                                    spec.pos,
                                    &format!("{path}.min"),
                                    "`min` is greater than `max`",
                                );
                            }
                            FieldType::String {
                                min,
                                max: max as u32,
                            }
                        }
                        None => {
                            cx.error_hint(
                                spec.pos,
                                &format!("{path}.max"),
                                "a string field needs `max`, its longest length in characters",
                                "add e.g. `max: 255`; the DBA sizes the column from it",
                            );
                            return None;
                        }
                    }
                }
                Some("integer") => {
                    let min = integer(cx, entries, path, "min");
                    let max = integer(cx, entries, path, "max");
                    if let (Some(lo), Some(hi)) = (min, max)
                        && lo > hi
                    {
                        cx.error(
                            spec.pos,
                            &format!("{path}.min"),
                            "`min` is greater than `max`",
                        );
                    }
                    FieldType::Integer { min, max }
                }
                Some(other @ ("bool" | "timestamp" | "uuid")) => {
                    for key in ["min", "max"] {
                        if let Some(n) = get(entries, key) {
                            cx.error(
                                n.pos,
                                &format!("{path}.{key}"),
                                format!("`{key}` does not apply to a {other} field"),
                            );
                        }
                    }
                    match other {
                        "bool" => FieldType::Bool,
                        "timestamp" => FieldType::Timestamp,
                        _ => FieldType::Uuid,
                    }
                }
                Some(other) => {
                    cx.error_hint(
                        t.pos,
                        &p,
                        format!("unknown field type `{other}`"),
                        suggest(other, FieldType::NAMES),
                    );
                    return None;
                }
                None => {
                    cx.error(
                        t.pos,
                        &p,
                        format!("expected a type name, found {}", t.describe()),
                    );
                    return None;
                }
            }
        }
    };
    if let Some(n) = get(entries, "on_delete")
        && !matches!(ty, FieldType::Ref { .. })
    {
        cx.error(
            n.pos,
            &format!("{path}.on_delete"),
            "`on_delete` applies only to a `ref` field",
        );
    }
    let set = match get(entries, "set") {
        None => None,
        Some(n) => {
            let p = format!("{path}.set");
            let set = match n.as_str() {
                Some("on_create") => SetOn::Create,
                Some("on_update") => SetOn::Update,
                other => {
                    cx.error_hint(
                        n.pos,
                        &p,
                        format!("unknown `set` value {}", shown(other, n)),
                        suggest(other.unwrap_or(""), SetOn::NAMES),
                    );
                    return None;
                }
            };
            if ty != FieldType::Timestamp {
                cx.error_hint(
                    n.pos,
                    &p,
                    "only a timestamp field can be set by the server",
                    "make the field `type: timestamp`, or remove `set`",
                );
            }
            Some(set)
        }
    };
    Some(Field {
        name,
        column,
        ty,
        optional,
        set,
    })
}

fn unique(cx: &mut Ctx, path: &str, node: &Node, t: &Template) -> Vec<Unique> {
    let Some(items) = node.as_seq() else {
        cx.error(
            node.pos,
            path,
            format!("expected a list, found {}", node.describe()),
        );
        return Vec::new();
    };
    let known: Vec<&str> = t.fields.iter().map(|f| f.name.as_str()).collect();
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
        let Some(list) = fields.as_seq().filter(|l| !l.is_empty()) else {
            cx.error(
                fields.pos,
                &format!("{p}.fields"),
                "expected a non-empty list of field names",
            );
            continue;
        };
        let mut names = Vec::new();
        for f in list {
            match f.as_str() {
                Some(name) if known.contains(&name) => names.push(name.to_string()),
                Some(name) => cx.error_hint(
                    f.pos,
                    &format!("{p}.fields"),
                    format!("`{name}` is not a field of this template"),
                    suggest(name, &known),
                ),
                None => cx.error(f.pos, &format!("{p}.fields"), "expected a field name"),
            }
        }
        if case_insensitive
            && names
                .iter()
                .any(|n| !matches!(t.field(n).map(|f| &f.ty), Some(FieldType::String { .. })))
        {
            cx.error(
                item.pos,
                &format!("{p}.case_insensitive"),
                "`case_insensitive` needs every field of the index to be a string",
            );
        }
        out.push(Unique {
            fields: names,
            case_insensitive,
        });
    }
    out
}

fn page(cx: &mut Ctx, path: &str, node: &Node) -> Page {
    let mut page = Page::default();
    let Some(entries) = expect_map(cx, node, path) else {
        return page;
    };
    check_keys(cx, entries, path, PAGE_KEYS);
    if let Some(v) = bound(cx, entries, path, "default") {
        page.default = v as u32;
    }
    if let Some(v) = bound(cx, entries, path, "max") {
        page.max = v as u32;
    }
    if page.default == 0 || page.default > page.max {
        cx.error(
            node.pos,
            path,
            format!(
                "page sizes must satisfy 1 <= default <= max (default {}, max {})",
                page.default, page.max
            ),
        );
    }
    page
}

/// Two templates must not share a table.
fn check_tables(cx: &mut Ctx, domain: &Domain, tmap: &[(Node, Node)]) {
    let mut tables: HashMap<&str, &str> = HashMap::new();
    for t in &domain.templates {
        if let Some(other) = tables.insert(&t.table, &t.name) {
            let pos = key_pos(tmap, &t.name);
            cx.error(
                pos,
                &format!("templates.{}.table", t.name),
                format!(
                    "table `{}` is used by both `{other}` and `{}`",
                    t.table, t.name
                ),
            );
        }
    }
}

fn shown(value: Option<&str>, node: &Node) -> String {
    match value {
        Some(v) => format!("`{v}`"),
        None => node.describe().to_string(),
    }
}

fn get<'a>(entries: &'a [(Node, Node)], key: &str) -> Option<&'a Node> {
    entries
        .iter()
        .find(|(k, _)| k.as_str() == Some(key))
        .map(|(_, v)| v)
}

fn expect_map<'a>(cx: &mut Ctx, node: &'a Node, path: &str) -> Option<&'a [(Node, Node)]> {
    let map = node.as_map();
    if map.is_none() {
        cx.error(
            node.pos,
            path,
            format!("expected a mapping, found {}", node.describe()),
        );
    }
    map
}

fn check_keys(cx: &mut Ctx, entries: &[(Node, Node)], path: &str, known: &[&str]) {
    for (k, _) in entries {
        match k.as_str() {
            Some(key) if known.contains(&key) => {}
            Some(key) => cx.error_hint(
                k.pos,
                &join(path, key),
                format!("unknown key `{key}`"),
                suggest(key, known),
            ),
            None => cx.error(k.pos, path, "keys must be plain names"),
        }
    }
}

fn flag(cx: &mut Ctx, entries: &[(Node, Node)], path: &str, key: &str) -> bool {
    match get(entries, key) {
        None => false,
        Some(n) => n.as_bool().unwrap_or_else(|| {
            cx.error(
                n.pos,
                &join(path, key),
                format!("expected true or false, found {}", n.describe()),
            );
            false
        }),
    }
}

fn integer(cx: &mut Ctx, entries: &[(Node, Node)], path: &str, key: &str) -> Option<i64> {
    let n = get(entries, key)?;
    let v = n.as_i64();
    if v.is_none() {
        cx.error(
            n.pos,
            &join(path, key),
            format!("expected an integer, found {}", n.describe()),
        );
    }
    v
}

/// A non-negative size that fits a `u32`.
fn bound(cx: &mut Ctx, entries: &[(Node, Node)], path: &str, key: &str) -> Option<i64> {
    let n = get(entries, key)?;
    match n.as_i64() {
        Some(v) if (0..=i64::from(u32::MAX)).contains(&v) => Some(v),
        _ => {
            cx.error(
                n.pos,
                &join(path, key),
                format!("expected a non-negative integer, found {}", n.describe()),
            );
            None
        }
    }
}

/// An API name: snake_case, usable as a Rust identifier.
fn ident(cx: &mut Ctx, node: &Node, path: &str, what: &str) -> Option<String> {
    let Some(s) = node.as_str() else {
        cx.error(
            node.pos,
            path,
            format!("expected a {what}, found {}", node.describe()),
        );
        return None;
    };
    if !is_snake(s) {
        cx.error_hint(
            node.pos,
            path,
            format!("`{s}` is not a valid {what}"),
            "use snake_case: a lowercase letter, then lowercase letters, digits or `_`",
        );
        return None;
    }
    if RUST_KEYWORDS.contains(&s) {
        cx.error_hint(
            node.pos,
            path,
            format!("`{s}` is a reserved word and cannot be a {what}"),
            format!(
                "pick another name, e.g. `{s}_`; the storage name can still be `{s}` via `column`"
            ),
        );
        return None;
    }
    Some(s.to_string())
}

/// A storage name (table, column, suffix): a plain SQL identifier.
fn storage_ident(cx: &mut Ctx, node: &Node, path: &str) -> Option<String> {
    match node.as_str() {
        Some(s) if is_snake(s) && s.len() <= MAX_IDENT => Some(s.to_string()),
        _ => {
            cx.error_hint(
                node.pos,
                path,
                format!(
                    "`{}` is not a valid storage name",
                    node.as_str().unwrap_or("?")
                ),
                format!("use lowercase letters, digits and `_`, at most {MAX_IDENT} characters"),
            );
            None
        }
    }
}

fn is_snake(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}
