//! Readers of the spanned YAML tree shared by every part of the validator: typed getters
//! that report what they expected, name and key checks. This module imports no part of the
//! validator, so `validate`, `fields`, `queries` and `derived` all depend on it and never
//! on each other's helpers.

use crate::diag::{Ctx, suggest};
use crate::model::{Page, Template};
use crate::yaml::Node;

/// Longest storage name: PostgreSQL cuts identifiers at 63 bytes (MariaDB allows 64).
pub(crate) const MAX_IDENT: usize = 63;

const RUST_KEYWORDS: &[&str] = &[
    "as", "async", "await", "break", "const", "continue", "crate", "dyn", "else", "enum", "extern",
    "false", "fn", "for", "gen", "if", "impl", "in", "let", "loop", "match", "mod", "move", "mut",
    "pub", "ref", "return", "self", "static", "struct", "super", "trait", "true", "type", "unsafe",
    "use", "where", "while", "yield", "abstract", "become", "box", "do", "final", "macro",
    "override", "priv", "typeof", "unsized", "virtual", "try",
];

const PAGE_KEYS: &[&str] = &["default", "max"];

pub(crate) fn list<'a>(cx: &mut Ctx, path: &str, node: &'a Node) -> Option<&'a [Node]> {
    let items = node.as_seq();
    if items.is_none() {
        cx.error_hint(
            node.pos,
            path,
            format!("expected a list, found {}", node.describe()),
            "write a YAML list, e.g. `[a, b]`",
        );
    }
    items
}

/// A non-empty list of the template's field names (`id` too when `with_id`).
pub(crate) fn field_names(
    cx: &mut Ctx,
    path: &str,
    node: &Node,
    t: &Template,
    with_id: bool,
    example: &str,
) -> Option<Vec<String>> {
    let Some(items) = node.as_seq().filter(|l| !l.is_empty()) else {
        cx.error_hint(
            node.pos,
            path,
            "expected a non-empty list of field names",
            example,
        );
        return None;
    };
    let known: Vec<&str> = t.fields.iter().map(|f| f.name.as_str()).collect();
    let mut names = Vec::new();
    for f in items {
        match f.as_str() {
            Some(name) if known.contains(&name) || (with_id && name == "id") => {
                names.push(name.to_string())
            }
            Some(name) => cx.error_hint(
                f.pos,
                path,
                format!("`{name}` is not a field of this template"),
                suggest(name, &known),
            ),
            None => cx.error_hint(
                f.pos,
                path,
                "expected a field name",
                "write the name of a field of this template",
            ),
        }
    }
    Some(names)
}

pub(crate) fn page(cx: &mut Ctx, path: &str, node: &Node) -> Page {
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
        cx.error_hint(
            node.pos,
            path,
            format!(
                "page sizes must satisfy 1 <= default <= max (default {}, max {})",
                page.default, page.max
            ),
            "e.g. `page: { default: 20, max: 100 }`",
        );
    }
    page
}

pub(crate) fn shown(value: Option<&str>, node: &Node) -> String {
    match value {
        Some(v) => format!("`{v}`"),
        None => node.describe().to_string(),
    }
}

pub(crate) fn get<'a>(entries: &'a [(Node, Node)], key: &str) -> Option<&'a Node> {
    entries
        .iter()
        .find(|(k, _)| k.as_str() == Some(key))
        .map(|(_, v)| v)
}

pub(crate) fn expect_map<'a>(
    cx: &mut Ctx,
    node: &'a Node,
    path: &str,
) -> Option<&'a [(Node, Node)]> {
    let map = node.as_map();
    if map.is_none() {
        cx.error_hint(
            node.pos,
            path,
            format!("expected a mapping, found {}", node.describe()),
            "write a YAML mapping of `key: value` lines (or `{ key: value }`)",
        );
    }
    map
}

pub(crate) fn check_keys(cx: &mut Ctx, entries: &[(Node, Node)], path: &str, known: &[&str]) {
    for (k, _) in entries {
        match k.as_str() {
            Some(key) if known.contains(&key) => {}
            Some(key) => cx.error_hint(
                k.pos,
                &join(path, key),
                format!("unknown key `{key}`"),
                suggest(key, known),
            ),
            None => cx.error_hint(
                k.pos,
                path,
                "keys must be plain names",
                "write the key as a plain word, without quotes or special characters",
            ),
        }
    }
}

pub(crate) fn flag(cx: &mut Ctx, entries: &[(Node, Node)], path: &str, key: &str) -> bool {
    match get(entries, key) {
        None => false,
        Some(n) => n.as_bool().unwrap_or_else(|| {
            cx.error_hint(
                n.pos,
                &join(path, key),
                format!("expected true or false, found {}", n.describe()),
                "write `true` or `false`, unquoted",
            );
            false
        }),
    }
}

pub(crate) fn integer(
    cx: &mut Ctx,
    entries: &[(Node, Node)],
    path: &str,
    key: &str,
) -> Option<i64> {
    let n = get(entries, key)?;
    let v = n.as_i64();
    if v.is_none() {
        cx.error_hint(
            n.pos,
            &join(path, key),
            format!("expected an integer, found {}", n.describe()),
            "write a whole number, unquoted",
        );
    }
    v
}

/// A non-negative size that fits a `u32`.
pub(crate) fn bound(cx: &mut Ctx, entries: &[(Node, Node)], path: &str, key: &str) -> Option<i64> {
    let n = get(entries, key)?;
    match n.as_i64() {
        Some(v) if (0..=i64::from(u32::MAX)).contains(&v) => Some(v),
        _ => {
            cx.error_hint(
                n.pos,
                &join(path, key),
                format!("expected a non-negative integer, found {}", n.describe()),
                "write a whole number, 0 or more, unquoted",
            );
            None
        }
    }
}

/// An API name: snake_case, usable as a Rust identifier.
pub(crate) fn ident(cx: &mut Ctx, node: &Node, path: &str, what: &str) -> Option<String> {
    let Some(s) = node.as_str() else {
        cx.error_hint(
            node.pos,
            path,
            format!("expected a {what}, found {}", node.describe()),
            "write a snake_case name",
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
pub(crate) fn storage_ident(cx: &mut Ctx, node: &Node, path: &str) -> Option<String> {
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

pub(crate) fn is_snake(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

pub(crate) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// [`check_keys`] for a mapping that may also carry `doc:`. The hint for an unknown key
/// lists only the keys that change what is generated, as it did before `doc:` existed.
pub(crate) fn check_documented_keys(
    cx: &mut Ctx,
    entries: &[(Node, Node)],
    path: &str,
    known: &[&str],
) {
    let rest: Vec<(Node, Node)> = entries
        .iter()
        .filter(|(k, _)| k.as_str() != Some("doc"))
        .cloned()
        .collect();
    check_keys(cx, &rest, path, known);
}

/// The optional `doc:` text of a template, field or query, carried into the generated
/// doc comments.
pub(crate) fn doc(cx: &mut Ctx, entries: &[(Node, Node)], path: &str) -> Option<String> {
    let n = get(entries, "doc")?;
    match n.as_str() {
        Some(text) if n.describe() == "a string" && !text.trim().is_empty() => {
            Some(text.trim().to_string())
        }
        _ => {
            cx.error_hint(
                n.pos,
                &join(path, "doc"),
                format!("expected documentation text, found {}", n.describe()),
                "write a sentence, e.g. `doc: A person who posts.` (quote it if it looks like a number)",
            );
            None
        }
    }
}

/// A duration like `30s`, `90d` or `2y` (365 days a year), in milliseconds.
pub(crate) fn duration(cx: &mut Ctx, path: &str, node: &Node) -> Option<u64> {
    let text = node.as_str().unwrap_or_default();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (num, unit) = text.split_at(split);
    let factor = match unit {
        "ms" => Some(1),
        "s" => Some(1_000),
        "m" => Some(60_000),
        "h" => Some(3_600_000),
        "d" => Some(86_400_000),
        "y" => Some(365 * 86_400_000),
        _ => None,
    };
    match (num.parse::<u64>().ok().filter(|n| *n > 0), factor) {
        (Some(n), Some(f)) => Some(n * f),
        _ => {
            cx.error_hint(
                node.pos,
                path,
                format!("`{text}` is not a duration"),
                "write a positive number with a unit: ms, s, m, h, d or y (365 days) (e.g. `30s`, `90d`)",
            );
            None
        }
    }
}

/// A query's `access: [authenticated, admin]`; `owner` has no record to apply to there.
pub(crate) fn query_access(cx: &mut Ctx, path: &str, node: &Node) -> Vec<String> {
    let who = principals(cx, path, node);
    if who.iter().any(|w| w == "owner") {
        cx.error_hint(
            node.pos,
            path,
            "`owner` cannot apply to a query: its rows have no single owner",
            "use `public`, `authenticated` or role names, and pass the subject as a parameter",
        );
    }
    who
}

pub(crate) fn principals(cx: &mut Ctx, p: &str, v: &Node) -> Vec<String> {
    let Some(items) = v.as_seq().filter(|i| !i.is_empty()) else {
        cx.error_hint(
            v.pos,
            p,
            "expected a non-empty list of principals",
            "e.g. `[public]`, `[owner, admin]`",
        );
        return Vec::new();
    };
    let mut who = Vec::new();
    for item in items {
        match item.as_str().filter(|s| is_snake(s)) {
            Some(s) => who.push(s.to_string()),
            None => cx.error_hint(
                item.pos,
                p,
                "principals and roles are snake_case names",
                "e.g. `[public]`, `[owner, admin]`",
            ),
        }
    }
    who
}
