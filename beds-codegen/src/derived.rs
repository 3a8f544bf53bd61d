//! Template declarations beyond fields: token sets derived from text fields, counts of
//! referencing records, and cross-field checks.

use crate::diag::{Ctx, suggest};
use crate::model::{
    Check, CondOp, Condition, Count, Domain, FieldType, Operand, Template, TokenSet,
};
use crate::read::{
    bound, check_keys, expect_map, field_names, flag, get, is_snake, list, storage_ident,
};
use crate::yaml::Node;

const TOKEN_KEYS: &[&str] = &["from", "pattern", "lowercase", "max_len", "table"];
const COUNT_KEYS: &[&str] = &["from", "by", "where", "maintained"];
const CHECK_KEYS: &[&str] = &["differ", "message"];
/// Longest token a set may keep (an indexed VARCHAR everywhere).
const MAX_TOKEN_LEN: i64 = 255;

fn name(cx: &mut Ctx, key: &Node, path: &str, t: &Template, what: &str) -> Option<String> {
    let Some(n) = key.as_str().filter(|n| is_snake(n)) else {
        cx.error_hint(
            key.pos,
            path,
            format!("{what} names are snake_case"),
            "a lowercase letter, then lowercase letters, digits or `_`",
        );
        return None;
    };
    if t.field(n).is_some() || n == "id" || n == "version" {
        cx.error_hint(
            key.pos,
            path,
            format!("`{n}` is already a field of `{}`", t.name),
            format!("give the {what} its own name"),
        );
        return None;
    }
    Some(n.to_string())
}

/// `tokens: { tags: { from: body, pattern: '#(\w+)', lowercase: true } }`.
pub(crate) fn tokens(cx: &mut Ctx, path: &str, node: &Node, t: &Template) -> Vec<TokenSet> {
    let mut out: Vec<TokenSet> = Vec::new();
    let Some(entries) = expect_map(cx, node, path) else {
        return out;
    };
    for (key, body) in entries {
        let p = format!("{path}.{}", key.as_str().unwrap_or("?"));
        let Some(set_name) = name(cx, key, &p, t, "token set") else {
            continue;
        };
        let Some(m) = expect_map(cx, body, &p) else {
            continue;
        };
        check_keys(cx, m, &p, TOKEN_KEYS);
        let from = match get(m, "from").map(|n| (n, n.as_str())) {
            Some((n, Some(f))) => match t.field(f).map(|f| &f.ty) {
                Some(FieldType::String { .. } | FieldType::Text { .. }) => Some(f.to_string()),
                Some(other) => {
                    cx.error_hint(
                        n.pos,
                        &format!("{p}.from"),
                        format!(
                            "tokens are taken from text, and `{f}` is of type `{}`",
                            other.name()
                        ),
                        "name a `string` or `text` field",
                    );
                    None
                }
                None => {
                    let known: Vec<&str> = t.fields.iter().map(|f| f.name.as_str()).collect();
                    cx.error_hint(
                        n.pos,
                        &format!("{p}.from"),
                        format!("`{f}` is not a field of `{}`", t.name),
                        suggest(f, &known),
                    );
                    None
                }
            },
            _ => {
                cx.error_hint(
                    body.pos,
                    &format!("{p}.from"),
                    "missing `from`",
                    "name the string or text field the tokens are taken from",
                );
                None
            }
        };
        let pattern = match get(m, "pattern").map(|n| (n, n.as_str())) {
            Some((n, Some(src))) => match regex::Regex::new(src) {
                Ok(re) if re.captures_len() <= 2 => Some(src.to_string()),
                Ok(_) => {
                    cx.error_hint(
                        n.pos,
                        &format!("{p}.pattern"),
                        "the pattern has more than one capture group",
                        "capture the token with one group and make the others non-capturing: `(?:...)`",
                    );
                    None
                }
                Err(e) => {
                    cx.error_hint(
                        n.pos,
                        &format!("{p}.pattern"),
                        format!("invalid regular expression: {e}"),
                        "Rust regex syntax; the first capture group (or the match) is the token, e.g. '#(\\w+)'",
                    );
                    None
                }
            },
            _ => {
                cx.error_hint(
                    body.pos,
                    &format!("{p}.pattern"),
                    "missing `pattern`",
                    "e.g. `pattern: '#(\\w+)'`: each match's first group is a token",
                );
                None
            }
        };
        let lowercase = flag(cx, m, &p, "lowercase");
        let max_len = match bound(cx, m, &p, "max_len") {
            Some(n) if (1..=MAX_TOKEN_LEN).contains(&n) => n as u32,
            Some(_) => {
                cx.error_hint(
                    get(m, "max_len").map_or(body.pos, |n| n.pos),
                    &format!("{p}.max_len"),
                    format!("max_len must be between 1 and {MAX_TOKEN_LEN}"),
                    "longer matches are not kept as tokens",
                );
                TokenSet::DEFAULT_MAX_LEN
            }
            None => TokenSet::DEFAULT_MAX_LEN,
        };
        let table = get(m, "table")
            .and_then(|n| storage_ident(cx, n, &format!("{p}.table")))
            .unwrap_or_else(|| format!("{}_{set_name}", t.table));
        if let (Some(from), Some(pattern)) = (from, pattern) {
            out.push(TokenSet {
                name: set_name,
                from,
                pattern,
                lowercase,
                max_len,
                table,
            });
        }
    }
    out
}

/// `counts: { likes: { from: like, by: spew, maintained: true } }`; the references are checked by
/// [`check_counts`] once every template is known.
pub(crate) fn counts(cx: &mut Ctx, path: &str, node: &Node, t: &Template) -> Vec<Count> {
    let mut out = Vec::new();
    let Some(entries) = expect_map(cx, node, path) else {
        return out;
    };
    for (key, body) in entries {
        let p = format!("{path}.{}", key.as_str().unwrap_or("?"));
        let Some(count_name) = name(cx, key, &p, t, "count") else {
            continue;
        };
        let Some(m) = expect_map(cx, body, &p) else {
            continue;
        };
        check_keys(cx, m, &p, COUNT_KEYS);
        let maintained = flag(cx, m, &p, "maintained");
        let text = |k: &str| get(m, k).and_then(|n| n.as_str()).map(str::to_string);
        match (text("from"), text("by")) {
            (Some(from), Some(by)) => out.push(Count {
                name: count_name,
                from,
                by,
                filter: Vec::new(),
                maintained,
                pos: body.pos,
            }),
            _ => cx.error_hint(
                body.pos,
                &p,
                "a count needs `from` (a template) and `by` (its reference to this one)",
                "e.g. `likes: { from: like, by: spew }`",
            ),
        }
    }
    out
}

/// Each count's `from` is a template whose field `by` references the counting template;
/// its `where` (read from `tmap`, the declared templates) compares fields of `from` with
/// literal values.
pub(crate) fn check_counts(cx: &mut Ctx, domain: &mut Domain, tmap: &[(Node, Node)]) {
    let mut filters = Vec::new();
    for (ti, t) in domain.templates.iter().enumerate() {
        for (ci, c) in t.counts.iter().enumerate() {
            let Some(node) = count_where(tmap, &t.name, &c.name) else {
                continue;
            };
            let Some(from) = domain.templates.iter().find(|x| x.name == c.from) else {
                continue;
            };
            let p = format!("templates.{}.counts.{}.where", t.name, c.name);
            filters.push((ti, ci, count_filter(cx, &p, node, from)));
        }
    }
    for (ti, ci, filter) in filters {
        domain.templates[ti].counts[ci].filter = filter;
    }
    let domain = &*domain;
    let names: Vec<&str> = domain.templates.iter().map(|t| t.name.as_str()).collect();
    for t in &domain.templates {
        for c in &t.counts {
            let p = format!("templates.{}.counts.{}", t.name, c.name);
            let Some(from) = domain.templates.iter().find(|x| x.name == c.from) else {
                cx.error_hint(
                    c.pos,
                    &format!("{p}.from"),
                    format!("`{}` is not a template of this domain", c.from),
                    suggest(&c.from, &names),
                );
                continue;
            };
            match from.field(&c.by).map(|f| &f.ty) {
                Some(FieldType::Ref { template, .. }) if *template == t.name => {}
                _ => {
                    let refs: Vec<&str> = from
                        .fields
                        .iter()
                        .filter(|f| matches!(&f.ty, FieldType::Ref { template, .. } if *template == t.name))
                        .map(|f| f.name.as_str())
                        .collect();
                    cx.error_hint(
                        c.pos,
                        &format!("{p}.by"),
                        format!("`{}.{}` is not a reference to `{}`", c.from, c.by, t.name),
                        if refs.is_empty() {
                            format!("`{}` has no reference to `{}`", c.from, t.name)
                        } else {
                            format!("its references to `{}`: {}", t.name, refs.join(", "))
                        },
                    );
                }
            }
        }
    }
}

/// The `where` mapping of count `count` of template `template`, as declared.
fn count_where<'a>(tmap: &'a [(Node, Node)], template: &str, count: &str) -> Option<&'a Node> {
    let body = tmap
        .iter()
        .find(|(k, _)| k.as_str() == Some(template))?
        .1
        .as_map()?;
    let counts = get(body, "counts")?.as_map()?;
    let c = counts
        .iter()
        .find(|(k, _)| k.as_str() == Some(count))?
        .1
        .as_map()?;
    get(c, "where")
}

/// `where: { status: open }`: each key a field of the counted template, each value a
/// literal (`{ eq: open }` alike). Counts take no parameters: a query's `with` names a
/// count, so nothing could supply one.
fn count_filter(cx: &mut Ctx, path: &str, node: &Node, from: &Template) -> Vec<Condition> {
    let mut out = Vec::new();
    let Some(entries) = expect_map(cx, node, path) else {
        return out;
    };
    for (k, v) in entries {
        let Some(field) = k.as_str() else {
            continue;
        };
        let p = format!("{path}.{field}");
        let Some(f) = from.field(field) else {
            let known: Vec<&str> = from.fields.iter().map(|f| f.name.as_str()).collect();
            cx.error_hint(
                k.pos,
                &p,
                format!("`{}` has no field `{field}`", from.name),
                if field.contains('.') {
                    "a count's conditions name fields of the counted template, without `.`"
                        .to_string()
                } else {
                    suggest(field, &known)
                },
            );
            continue;
        };
        let value = match v.as_map() {
            Some([(op, value)]) if op.as_str() == Some("eq") => value,
            Some(_) => {
                cx.error_hint(
                    v.pos,
                    &p,
                    "a count's condition is an equality with a literal value",
                    format!("write `{field}: <value>`"),
                );
                continue;
            }
            None => v,
        };
        if value.as_str().is_some_and(|s| s.starts_with('$')) {
            cx.error_hint(
                value.pos,
                &p,
                "a count takes no parameters",
                "compare with a literal value, e.g. `status: open`; a query's own `where` takes parameters",
            );
            continue;
        }
        if let Some(lit) = crate::queries::literal(cx, &p, value, CondOp::Eq, &f.ty) {
            out.push(Condition {
                path: vec![field.to_string()],
                op: CondOp::Eq,
                operand: Operand::Literal(lit),
            });
        }
    }
    out
}

/// `checks: [{ differ: [follower, followee], message: you cannot follow yourself }]`.
pub(crate) fn checks(cx: &mut Ctx, path: &str, node: &Node, t: &Template) -> Vec<Check> {
    let mut out = Vec::new();
    let Some(items) = list(cx, path, node) else {
        return out;
    };
    for (i, item) in items.iter().enumerate() {
        let p = format!("{path}[{i}]");
        let Some(m) = expect_map(cx, item, &p) else {
            continue;
        };
        check_keys(cx, m, &p, CHECK_KEYS);
        let message = match get(m, "message").and_then(|n| n.as_str()) {
            Some(msg) if !msg.trim().is_empty() => Some(msg.to_string()),
            _ => {
                cx.error_hint(
                    item.pos,
                    &format!("{p}.message"),
                    "missing `message`",
                    "say what the caller did wrong, e.g. `message: you cannot follow yourself`",
                );
                None
            }
        };
        let Some(differ) = get(m, "differ") else {
            cx.error_hint(
                item.pos,
                &format!("{p}.differ"),
                "missing `differ`",
                "name the two fields that must differ: `differ: [a, b]`",
            );
            continue;
        };
        let dp = format!("{p}.differ");
        let Some(fields) = field_names(cx, &dp, differ, t, false, "e.g. `differ: [a, b]`") else {
            continue;
        };
        let [a, b] = fields.as_slice() else {
            cx.error_hint(
                differ.pos,
                &dp,
                format!("`differ` takes two fields, found {}", fields.len()),
                "e.g. `differ: [follower, followee]`",
            );
            continue;
        };
        let (ta, tb) = (
            &t.field(a).expect("checked").ty,
            &t.field(b).expect("checked").ty,
        );
        if a == b || ta.name() != tb.name() {
            cx.error_hint(
                differ.pos,
                &dp,
                "`differ` compares two different fields of the same type",
                "e.g. two references to the same template",
            );
            continue;
        }
        if let Some(message) = message {
            let differ = [a.clone(), b.clone()];
            out.push(Check {
                name: Check::default_name(&t.table, &differ),
                differ,
                message,
            });
        }
    }
    out
}
