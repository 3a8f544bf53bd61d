//! Validation of one field declaration: its type, constraints, default and storage name.

use crate::diag::{Ctx, suggest};
use crate::model::{Field, FieldType, IdKind, Literal, OnDelete, SetOn, camel};
use crate::read::{
    bound, check_documented_keys, doc, expect_map, flag, get, integer, is_snake, shown,
    storage_ident,
};
use crate::yaml::Node;

const FIELD_KEYS: &[&str] = &[
    "type",
    "ref",
    "min",
    "max",
    "pattern",
    "values",
    "optional",
    "default",
    "set",
    "column",
    "on_delete",
];

pub(crate) fn field(
    cx: &mut Ctx,
    path: &str,
    name: String,
    spec: &Node,
    templates: &[&str],
    column_for: &dyn Fn(&str) -> String,
) -> Option<Field> {
    let entries = expect_map(cx, spec, path)?;
    check_documented_keys(cx, entries, path, FIELD_KEYS);
    let doc = doc(cx, entries, path);
    let optional = flag(cx, entries, path, "optional");
    let column = match get(entries, "column") {
        Some(n) => storage_ident(cx, n, &format!("{path}.column"))?,
        None => column_for(&name),
    };
    let ty = field_type(cx, path, spec, entries, templates, optional)?;
    for key in ["min", "max", "pattern", "values", "on_delete"] {
        if let Some(n) = get(entries, key)
            && !ty.constraint_keys().contains(&key)
        {
            cx.error_hint(
                n.pos,
                &format!("{path}.{key}"),
                format!("`{key}` does not apply to a field of type `{}`", ty.name()), "remove the key; see the field table in wiki/declarations.md for what each type takes");
        }
    }
    let set = set_on(cx, path, entries, &ty)?;
    let default = match get(entries, "default") {
        None => None,
        Some(n) => {
            if set.is_some() {
                cx.error_hint(
                    n.pos,
                    &format!("{path}.default"),
                    "a server-set field cannot have a default",
                    "remove `default`; the server sets this field",
                );
            }
            literal(cx, &format!("{path}.default"), n, &ty)
        }
    };
    Some(Field {
        name,
        doc,
        column,
        ty,
        optional,
        set,
        default,
    })
}

fn field_type(
    cx: &mut Ctx,
    path: &str,
    spec: &Node,
    entries: &[(Node, Node)],
    templates: &[&str],
    optional: bool,
) -> Option<FieldType> {
    match (get(entries, "type"), get(entries, "ref")) {
        (Some(t), Some(_)) => {
            cx.error_hint(
                t.pos,
                path,
                "a field has either `type` or `ref`, not both",
                "use `ref: <template>` for a reference and drop `type`",
            );
            None
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
            None
        }
        (None, Some(r)) => reference(cx, path, spec, entries, r, templates, optional),
        (Some(t), None) => {
            let p = format!("{path}.type");
            let Some(name) = t.as_str() else {
                cx.error_hint(
                    t.pos,
                    &p,
                    format!("expected a type name, found {}", t.describe()),
                    "write a type name such as `type: string`",
                );
                return None;
            };
            Some(match name {
                "string" => {
                    let min = bound(cx, entries, path, "min").map(|v| v as u32);
                    let Some(max) = bound(cx, entries, path, "max").map(|v| v as u32) else {
                        cx.error_hint(
                            spec.pos,
                            &format!("{path}.max"),
                            "a string field needs `max`, its longest length in characters",
                            "add e.g. `max: 255`, or use `type: text` for unbounded text",
                        );
                        return None;
                    };
                    if max == 0 {
                        cx.error_hint(
                            spec.pos,
                            &format!("{path}.max"),
                            "`max` must be at least 1",
                            "set `max` to the longest allowed length, at least 1",
                        );
                    }
                    if min.is_some_and(|m| m > max) {
                        cx.error_hint(
                            spec.pos,
                            &format!("{path}.min"),
                            "`min` is greater than `max`",
                            "swap the bounds, or fix the one that is wrong",
                        );
                    }
                    let pattern = get(entries, "pattern").and_then(|n| pattern(cx, path, n));
                    FieldType::String { min, max, pattern }
                }
                "text" => FieldType::Text {
                    max: bound(cx, entries, path, "max").map(|v| v as u32),
                },
                "integer" | "bigint" => {
                    let (lo, hi) = if name == "integer" {
                        (i64::from(i32::MIN), i64::from(i32::MAX))
                    } else {
                        (i64::MIN, i64::MAX)
                    };
                    let min = integer(cx, entries, path, "min");
                    let max = integer(cx, entries, path, "max");
                    for (key, v) in [("min", min), ("max", max)] {
                        if v.is_some_and(|v| v < lo || v > hi) {
                            cx.error_hint(
                                spec.pos,
                                &format!("{path}.{key}"),
                                format!("`{key}` is outside the range of a 32-bit {name}"),
                                "use `type: bigint` for 64-bit values",
                            );
                        }
                    }
                    if let (Some(lo), Some(hi)) = (min, max)
                        && lo > hi
                    {
                        cx.error_hint(
                            spec.pos,
                            &format!("{path}.min"),
                            "`min` is greater than `max`",
                            "swap the bounds, or fix the one that is wrong",
                        );
                    }
                    if name == "integer" {
                        FieldType::Integer { min, max }
                    } else {
                        FieldType::BigInt { min, max }
                    }
                }
                "float" => {
                    let num = |cx: &mut Ctx, key: &str| {
                        let n = get(entries, key)?;
                        let v = n.as_f64();
                        if v.is_none() {
                            cx.error_hint(
                                n.pos,
                                &format!("{path}.{key}"),
                                format!("expected a number, found {}", n.describe()),
                                "write a plain number, e.g. `0.5`",
                            );
                        }
                        v
                    };
                    let (min, max) = (num(cx, "min"), num(cx, "max"));
                    if let (Some(lo), Some(hi)) = (min, max)
                        && lo > hi
                    {
                        cx.error_hint(
                            spec.pos,
                            &format!("{path}.min"),
                            "`min` is greater than `max`",
                            "swap the bounds, or fix the one that is wrong",
                        );
                    }
                    FieldType::Float { min, max }
                }
                "enum" => FieldType::Enum {
                    values: enum_values(cx, path, spec, entries)?,
                },
                "bool" => FieldType::Bool,
                "timestamp" => FieldType::Timestamp,
                "date" => FieldType::Date,
                "uuid" => FieldType::Uuid,
                "json" => FieldType::Json,
                other => {
                    cx.error_hint(
                        t.pos,
                        &p,
                        format!("unknown field type `{other}`"),
                        suggest(other, FieldType::NAMES),
                    );
                    return None;
                }
            })
        }
    }
}

fn reference(
    cx: &mut Ctx,
    path: &str,
    spec: &Node,
    entries: &[(Node, Node)],
    r: &Node,
    templates: &[&str],
    optional: bool,
) -> Option<FieldType> {
    let p = format!("{path}.ref");
    let template = match r.as_str() {
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
            cx.error_hint(
                r.pos,
                &p,
                format!("expected a template name, found {}", r.describe()),
                "write the name of a template of this domain, e.g. `ref: account`",
            );
            return None;
        }
    };
    let on_delete = match get(entries, "on_delete") {
        None => OnDelete::Restrict,
        Some(n) => match n.as_str() {
            Some("restrict") => OnDelete::Restrict,
            Some("cascade") => OnDelete::Cascade,
            Some("set_null") => OnDelete::SetNull,
            other => {
                cx.error_hint(
                    n.pos,
                    &format!("{path}.on_delete"),
                    format!("unknown delete behaviour {}", shown(other, n)),
                    suggest(other.unwrap_or(""), OnDelete::NAMES),
                );
                return None;
            }
        },
    };
    if on_delete == OnDelete::SetNull && !optional {
        cx.error_hint(
            spec.pos,
            &format!("{path}.on_delete"),
            "`on_delete: set_null` needs an optional field",
            "add `optional: true`, or choose `restrict` or `cascade`",
        );
    }
    // The target's id kind is filled in once every template of the domain is read.
    Some(FieldType::Ref {
        template,
        on_delete,
        id: IdKind::Uuid7,
    })
}

fn pattern(cx: &mut Ctx, path: &str, n: &Node) -> Option<String> {
    let p = format!("{path}.pattern");
    let Some(src) = n.as_str() else {
        cx.error_hint(
            n.pos,
            &p,
            format!("expected a regular expression, found {}", n.describe()),
            "quote the pattern, e.g. pattern: '^[a-z]+$'",
        );
        return None;
    };
    match regex::Regex::new(src) {
        Ok(_) => Some(src.to_string()),
        Err(e) => {
            cx.error_hint(
                n.pos,
                &p,
                format!("invalid regular expression: {e}"),
                "patterns use Rust regex syntax and usually anchor with ^ and $, e.g. '^[a-z0-9_]+$'",
            );
            None
        }
    }
}

fn enum_values(
    cx: &mut Ctx,
    path: &str,
    spec: &Node,
    entries: &[(Node, Node)],
) -> Option<Vec<String>> {
    let p = format!("{path}.values");
    let Some(node) = get(entries, "values") else {
        cx.error_hint(
            spec.pos,
            &p,
            "an enum field needs `values`",
            "e.g. `values: [draft, published, archived]`",
        );
        return None;
    };
    let Some(items) = node.as_seq().filter(|i| !i.is_empty()) else {
        cx.error_hint(
            node.pos,
            &p,
            "expected a non-empty list of values",
            "e.g. `values: [draft, published]`",
        );
        return None;
    };
    let mut values: Vec<String> = Vec::new();
    for item in items {
        match item.as_str() {
            Some(v) if is_snake(v) && !values.iter().any(|x| camel(x) == camel(v)) => {
                values.push(v.to_string());
            }
            Some(v) if is_snake(v) => cx.error_hint(
                item.pos,
                &p,
                format!(
                    "value `{v}` repeats another value (as a Rust variant, `{}`)",
                    camel(v)
                ),
                "values must differ even when written in CamelCase; rename one",
            ),
            _ => cx.error_hint(
                item.pos,
                &p,
                format!(
                    "`{}` is not a valid enum value",
                    item.as_str().unwrap_or("?")
                ),
                "values are snake_case: a lowercase letter, then lowercase letters, digits or `_`",
            ),
        }
    }
    Some(values)
}

fn set_on(
    cx: &mut Ctx,
    path: &str,
    entries: &[(Node, Node)],
    ty: &FieldType,
) -> Option<Option<SetOn>> {
    let Some(n) = get(entries, "set") else {
        return Some(None);
    };
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
    if *ty != FieldType::Timestamp {
        cx.error_hint(
            n.pos,
            &p,
            "only a timestamp field can be set by the server",
            "make the field `type: timestamp`, or remove `set`",
        );
    }
    Some(Some(set))
}

/// Checks a default against the field's type and constraints.
fn literal(cx: &mut Ctx, path: &str, n: &Node, ty: &FieldType) -> Option<Literal> {
    let wrong = |cx: &mut Ctx, what: &str| {
        cx.error_hint(
            n.pos,
            path,
            format!("the default must be {what}, found {}", n.describe()),
            "write a default of the field's type",
        );
        None
    };
    match ty {
        FieldType::Bool => n
            .as_bool()
            .map(Literal::Bool)
            .or_else(|| wrong(cx, "true or false")),
        FieldType::Integer { min, max } | FieldType::BigInt { min, max } => {
            let Some(v) = n.as_i64() else {
                return wrong(cx, "an integer");
            };
            if min.is_some_and(|m| v < m) || max.is_some_and(|m| v > m) {
                cx.error_hint(
                    n.pos,
                    path,
                    "the default is outside the field's `min`..`max`",
                    "pick a default within `min`..`max`, or widen the bounds",
                );
            }
            Some(Literal::Int(v))
        }
        FieldType::Float { min, max } => {
            let Some(v) = n.as_f64() else {
                return wrong(cx, "a number");
            };
            if min.is_some_and(|m| v < m) || max.is_some_and(|m| v > m) {
                cx.error_hint(
                    n.pos,
                    path,
                    "the default is outside the field's `min`..`max`",
                    "pick a default within `min`..`max`, or widen the bounds",
                );
            }
            Some(Literal::Float(v))
        }
        FieldType::String { .. } | FieldType::Text { .. } | FieldType::Enum { .. } => {
            let Some(v) = n.as_str().filter(|_| n.describe() == "a string") else {
                return wrong(cx, "a string");
            };
            let len = v.chars().count() as u32;
            match ty {
                FieldType::String { min, max, pattern } => {
                    if len > *max || min.is_some_and(|m| len < m) {
                        cx.error_hint(
                            n.pos,
                            path,
                            "the default breaks the field's length limits",
                            "pick a default within the length limits",
                        );
                    }
                    if let Some(p) = pattern
                        && !regex::Regex::new(p).is_ok_and(|re| re.is_match(v))
                    {
                        cx.error_hint(
                            n.pos,
                            path,
                            "the default does not match the field's `pattern`",
                            "pick a default that matches `pattern`",
                        );
                    }
                }
                FieldType::Text { max: Some(max) } if len > *max => {
                    cx.error_hint(
                        n.pos,
                        path,
                        "the default is longer than `max`",
                        "shorten the default or raise `max`",
                    );
                }
                FieldType::Enum { values } if !values.iter().any(|x| x == v) => {
                    cx.error_hint(
                        n.pos,
                        path,
                        format!("`{v}` is not one of the enum's values"),
                        suggest(v, &values.iter().map(String::as_str).collect::<Vec<_>>()),
                    );
                }
                _ => {}
            }
            Some(Literal::Text(v.to_string()))
        }
        other => {
            cx.error_hint(
                n.pos,
                path,
                format!("a field of type `{}` cannot have a default", other.name()),
                "remove `default`; set the value on create instead (or make the field optional)",
            );
            None
        }
    }
}
