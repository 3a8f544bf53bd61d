//! Lowers a validated template to the runtime's static metadata: the one place a template
//! becomes a `TemplateMeta` and a fingerprint. The emitter calls it for every declared
//! template and `#[derive(Record)]` (beds-macros) for hand-written ones, so both write the
//! same metadata from the same model.

use proc_macro2::{Ident, Literal as Lit, Span, TokenStream};
use quote::quote;

use crate::model::{
    CondLiteral, Condition, Field, FieldType, IdKind, Literal, OnDelete, Operand, SetOn, Template,
    camel,
};

/// The `impl Record` of a record type: its key, input types and metadata (and `impl Locking`
/// if it declares `locking`, `impl Journaled` if it declares `journal`). Paths are
/// resolved against `rt`, the runtime's support module, which the caller brings into scope.
pub fn record_impl(
    domain: &str,
    t: &Template,
    record: &TokenStream,
    id: &TokenStream,
    create: &TokenStream,
    patch: &TokenStream,
) -> TokenStream {
    let meta = template_meta(domain, t);
    // The typed client's lease methods exist only for templates that take leases.
    let locking = t
        .capabilities
        .locking
        .then(|| quote!(impl rt::Locking for #record {}));
    // Likewise `history` and `fetch_as_of`, only for templates that keep a journal.
    let journal = t
        .capabilities
        .journal
        .then(|| quote!(impl rt::Journaled for #record {}));
    quote! {
        impl rt::Record for #record {
            type Id = #id;
            type Create = #create;
            type Patch = #patch;
            const META: &'static rt::TemplateMeta = &#meta;
        }
        #locking
        #journal
    }
}

/// The `rt::TemplateMeta { .. }` expression of a template.
pub fn template_meta(domain: &str, t: &Template) -> TokenStream {
    let (name, table, id_column, version_column) =
        (&t.name, &t.table, &t.id_column, &t.version_column);
    let id = id_kind(t.id);
    let version = Lit::u32_unsuffixed(t.version);
    let fingerprint = fingerprint(domain, t);
    let fields = t.fields.iter().map(|f| {
        let (fname, column, optional) = (&f.name, &f.column, f.optional);
        let kind = field_kind(&f.ty);
        let set = option(f.set.map(|s| match s {
            SetOn::Create => quote!(rt::SetOn::Create),
            SetOn::Update => quote!(rt::SetOn::Update),
        }));
        let default = option(f.default.as_ref().map(|d| match d {
            Literal::Bool(b) => quote!(rt::DefaultValue::Bool(#b)),
            Literal::Int(i) => {
                let i = Lit::i64_unsuffixed(*i);
                quote!(rt::DefaultValue::Int(#i))
            }
            Literal::Float(x) => {
                let x = Lit::f64_unsuffixed(*x);
                quote!(rt::DefaultValue::Float(#x))
            }
            Literal::Text(s) => quote!(rt::DefaultValue::Text(#s)),
        }));
        quote! {
            rt::FieldMeta {
                name: #fname,
                column: #column,
                kind: #kind,
                optional: #optional,
                set: #set,
                default: #default,
            }
        }
    });
    let unique = t.unique.iter().map(|u| {
        let (fields, ci) = (&u.fields, u.case_insensitive);
        quote!(rt::UniqueMeta { fields: &[#(#fields),*], case_insensitive: #ci })
    });
    let indexes = t.indexes.iter().map(|fields| quote!(&[#(#fields),*]));
    let (page_default, page_max) = (
        Lit::u32_unsuffixed(t.page.default),
        Lit::u32_unsuffixed(t.page.max),
    );
    let (append_only, internal) = (t.append_only, t.internal);
    let c = &t.capabilities;
    let (audit, journal, locking) = (c.audit, c.journal, c.locking);
    let consistency = if c.cache_cached {
        quote!(rt::Consistency::Cached)
    } else {
        quote!(rt::Consistency::Strong)
    };
    let cache = option(c.cache_ttl_ms.map(|ms| {
        let ms = Lit::u64_unsuffixed(ms);
        quote!(#ms)
    }));
    let retention = option(c.retention.as_ref().map(|r| {
        let field = &r.field;
        let (hot, cool) = (Lit::u64_unsuffixed(r.hot_ms), Lit::u64_unsuffixed(r.cool_ms));
        let then = Ident::new(&camel(&r.then), Span::call_site());
        quote!(rt::RetentionMeta { field: #field, hot_ms: #hot, cool_ms: #cool, then: rt::RetentionEnd::#then })
    }));
    let access = t.access.iter().map(|(op, who)| {
        let op = Ident::new(&camel(op), Span::call_site());
        quote!((rt::Op::#op, &[#(#who),*]))
    });
    let owner = option(t.owner.as_ref().map(|o| quote!(#o)));
    let tokens = t.tokens.iter().map(|s| {
        let (name, from, pattern, lowercase, table) =
            (&s.name, &s.from, &s.pattern, s.lowercase, &s.table);
        let max_len = Lit::u32_unsuffixed(s.max_len);
        quote! {
            rt::TokenSetMeta {
                name: #name,
                source: #from,
                pattern: #pattern,
                lowercase: #lowercase,
                max_len: #max_len,
                table: #table,
            }
        }
    });
    let counts = t.counts.iter().map(|c| {
        let (name, from, by, maintained) = (&c.name, &c.from, &c.by, c.maintained);
        let filter = c.filter.iter().map(condition);
        quote! {
            rt::CountMeta {
                name: #name,
                template: #from,
                by: #by,
                filter: &[#(#filter),*],
                maintained: #maintained,
            }
        }
    });
    let checks = t.checks.iter().map(|c| {
        let (name, [a, b], message) = (&c.name, &c.differ, &c.message);
        quote!(rt::CheckMeta { name: #name, differ: [#a, #b], message: #message })
    });
    quote! {
        rt::TemplateMeta {
            domain: #domain,
            name: #name,
            version: #version,
            fingerprint: #fingerprint,
            table: #table,
            id: #id,
            id_column: #id_column,
            version_column: #version_column,
            fields: &[#(#fields),*],
            unique: &[#(#unique),*],
            indexes: &[#(#indexes),*],
            page: rt::PageMeta { default: #page_default, max: #page_max },
            append_only: #append_only,
            internal: #internal,
            capabilities: rt::Capabilities {
                audit: #audit,
                journal: #journal,
                locking: #locking,
                cache_ttl_ms: #cache,
                consistency: #consistency,
                retention: #retention,
            },
            access: &[#(#access),*],
            owner: #owner,
            tokens: &[#(#tokens),*],
            counts: &[#(#counts),*],
            checks: &[#(#checks),*],
        }
    }
}

/// A condition's `rt::ConditionMeta`; a sub-select's as a nested static.
pub(crate) fn condition(c: &Condition) -> TokenStream {
    let path = &c.path;
    let op = Ident::new(&camel(c.op.name()), Span::call_site());
    let operand = match &c.operand {
        Operand::Param(p) => quote!(rt::Operand::Param(#p)),
        Operand::Literal(CondLiteral::Bool(b)) => {
            quote!(rt::Operand::Literal(rt::LiteralValue::Bool(#b)))
        }
        Operand::Literal(CondLiteral::Enum(v)) => {
            quote!(rt::Operand::Literal(rt::LiteralValue::Enum(#v)))
        }
        Operand::Select(s) => {
            let from = Ident::new(&camel(&s.from), Span::call_site());
            let select = &s.select;
            let inner = s.filter.iter().map(condition);
            quote!(rt::Operand::Select(&rt::SelectMeta {
                from: <#from as rt::Record>::META,
                select: #select,
                filter: &[#(#inner),*],
            }))
        }
    };
    quote!(rt::ConditionMeta { path: &[#(#path),*], op: rt::CondOp::#op, operand: #operand })
}

fn field_kind(ty: &FieldType) -> TokenStream {
    let (min, max) = ty.int_range().unwrap_or((0, 0));
    let (min, max) = (Lit::i64_unsuffixed(min), Lit::i64_unsuffixed(max));
    match ty {
        FieldType::String {
            min: lo,
            max: hi,
            pattern,
        } => {
            let (lo, hi) = (
                Lit::u32_unsuffixed(lo.unwrap_or(0)),
                Lit::u32_unsuffixed(*hi),
            );
            let pattern = option(pattern.as_ref().map(|p| quote!(#p)));
            quote!(rt::FieldKind::String { min: #lo, max: #hi, pattern: #pattern })
        }
        FieldType::Text { max } => {
            let max = option(max.map(|m| {
                let m = Lit::u32_unsuffixed(m);
                quote!(#m)
            }));
            quote!(rt::FieldKind::Text { max: #max })
        }
        FieldType::Integer { .. } => quote!(rt::FieldKind::Integer { min: #min, max: #max }),
        FieldType::BigInt { .. } => quote!(rt::FieldKind::BigInt { min: #min, max: #max }),
        FieldType::Float { min, max } => {
            let bound = |v: &Option<f64>| {
                option(v.map(|v| {
                    let v = Lit::f64_unsuffixed(v);
                    quote!(#v)
                }))
            };
            let (min, max) = (bound(min), bound(max));
            quote!(rt::FieldKind::Float { min: #min, max: #max })
        }
        FieldType::Bool => quote!(rt::FieldKind::Bool),
        FieldType::Timestamp => quote!(rt::FieldKind::Timestamp),
        FieldType::Date => quote!(rt::FieldKind::Date),
        FieldType::Uuid => quote!(rt::FieldKind::Uuid),
        FieldType::Json => quote!(rt::FieldKind::Json),
        FieldType::Enum { values } => quote!(rt::FieldKind::Enum { values: &[#(#values),*] }),
        FieldType::Ref {
            template,
            on_delete,
            id,
        } => {
            let on_delete = match on_delete {
                OnDelete::Restrict => quote!(rt::OnDelete::Restrict),
                OnDelete::Cascade => quote!(rt::OnDelete::Cascade),
                OnDelete::SetNull => quote!(rt::OnDelete::SetNull),
            };
            let id = id_kind(*id);
            quote!(rt::FieldKind::Ref { template: #template, on_delete: #on_delete, id: #id })
        }
    }
}

fn id_kind(id: IdKind) -> TokenStream {
    match id {
        IdKind::Uuid7 => quote!(rt::IdKind::Uuid7),
        IdKind::Sequence => quote!(rt::IdKind::Sequence),
    }
}

fn option(v: Option<TokenStream>) -> TokenStream {
    match v {
        Some(v) => quote!(::core::option::Option::Some(#v)),
        None => quote!(::core::option::Option::None),
    }
}

/// The template's fingerprint: 64-bit FNV-1a of [`contract`], as 16 hex digits.
pub fn fingerprint(domain: &str, t: &Template) -> String {
    let hash = contract(domain, t)
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
    format!("{hash:016x}")
}

/// The canonical text of what a client of the template can notice, one line per item in
/// declared order: names, kinds, constraints, defaults, optionality, server-set fields,
/// unique keys, token sets, counts (and their filters), checks, version and the append-only
/// and internal flags.
/// Storage names and docs are left out: changing them changes no request or reply.
///
/// Written by hand, not through `{:?}` or token printing, so that the value depends only on
/// the declaration: strings are length-prefixed (`5:hello`), integers decimal, floats their
/// IEEE bits in hex, integer bounds resolved to the kind's range.
pub fn contract(domain: &str, t: &Template) -> String {
    let mut out = String::from("beds-contract 1\n");
    let mut line = |parts: &[String]| {
        out.push_str(&parts.join(" "));
        out.push('\n');
    };
    line(&[
        "template".into(),
        text(domain),
        text(&t.name),
        format!("v{}", t.version),
        t.id.name().into(),
        format!("append_only={}", t.append_only),
        format!("internal={}", t.internal),
    ]);
    for f in &t.fields {
        let mut parts = vec!["field".into(), text(&f.name), f.ty.name().into()];
        match &f.ty {
            FieldType::String { min, max, pattern } => {
                parts.push(format!("len={}..{max}", min.unwrap_or(0)));
                parts.push(format!("pattern={}", opt_text(pattern.as_deref())));
            }
            FieldType::Text { max } => {
                parts.push(format!(
                    "max={}",
                    max.map_or_else(|| "-".into(), |m| m.to_string())
                ));
            }
            FieldType::Integer { .. } | FieldType::BigInt { .. } => {
                let (lo, hi) = f.ty.int_range().unwrap_or((0, 0));
                parts.push(format!("range={lo}..{hi}"));
            }
            FieldType::Float { min, max } => {
                let bound = |v: &Option<f64>| {
                    v.map_or_else(|| "-".into(), |v| format!("{:016x}", v.to_bits()))
                };
                parts.push(format!("range={}..{}", bound(min), bound(max)));
            }
            FieldType::Enum { values } => {
                parts.extend(values.iter().map(|v| text(v)));
            }
            FieldType::Ref {
                template,
                on_delete,
                id,
            } => {
                parts.push(text(template));
                parts.push(on_delete.name().into());
                parts.push(id.name().into());
            }
            FieldType::Bool
            | FieldType::Timestamp
            | FieldType::Date
            | FieldType::Uuid
            | FieldType::Json => {}
        }
        parts.push(format!("optional={}", f.optional));
        parts.push(
            match f.set {
                None => "set=-",
                Some(SetOn::Create) => "set=on_create",
                Some(SetOn::Update) => "set=on_update",
            }
            .into(),
        );
        parts.push(match &f.default {
            None => "default=-".into(),
            Some(Literal::Bool(b)) => format!("default=bool:{b}"),
            Some(Literal::Int(i)) => format!("default=int:{i}"),
            Some(Literal::Float(x)) => format!("default=float:{:016x}", x.to_bits()),
            Some(Literal::Text(s)) => format!("default=text:{}", text(s)),
        });
        line(&parts);
    }
    for u in &t.unique {
        let mut parts = vec!["unique".into()];
        parts.extend(u.fields.iter().map(|f| text(f)));
        parts.push(format!("ci={}", u.case_insensitive));
        line(&parts);
    }
    for s in &t.tokens {
        line(&[
            "tokens".into(),
            text(&s.name),
            text(&s.from),
            text(&s.pattern),
            format!("lowercase={}", s.lowercase),
            format!("max_len={}", s.max_len),
        ]);
    }
    for c in &t.counts {
        let mut parts = vec!["count".into(), text(&c.name), text(&c.from), text(&c.by)];
        // Written only when present, so counts without a filter keep their fingerprint.
        for f in &c.filter {
            parts.push(format!("where={}", text(&f.path.join("."))));
            parts.push(match &f.operand {
                Operand::Literal(CondLiteral::Bool(b)) => format!("bool:{b}"),
                Operand::Literal(CondLiteral::Enum(v)) => format!("enum:{}", text(v)),
                Operand::Param(_) | Operand::Select(_) => unreachable!("counts compare literals"),
            });
        }
        // A maintained count may lag its records (by the tercero's staleness bound), which
        // a client can notice; written only when set, like the filter.
        if c.maintained {
            parts.push("maintained".into());
        }
        line(&parts);
    }
    for c in &t.checks {
        line(&[
            "differ".into(),
            text(&c.differ[0]),
            text(&c.differ[1]),
            text(&c.message),
        ]);
    }
    out
}

fn text(s: &str) -> String {
    format!("{}:{s}", s.len())
}

fn opt_text(s: Option<&str>) -> String {
    s.map_or_else(|| "-".into(), text)
}

/// The words that name a field's kind in `#[beds(...)]`: the declaration's `type:` names,
/// with `enumeration = "a,b"` for `enum` (a Rust keyword) and `reference = "template"`.
pub fn kind_words() -> Vec<&'static str> {
    FieldType::NAMES
        .iter()
        .copied()
        .filter(|n| *n != "enum")
        .chain(["enumeration", "reference"])
        .collect()
}

/// [`kind_words`] as written in an attribute, for messages: `enumeration = "a,b"`, ...
pub fn kind_forms() -> Vec<String> {
    kind_words()
        .into_iter()
        .map(|w| match w {
            "enumeration" => "enumeration = \"a,b\"".to_string(),
            "reference" => "reference = \"template\"".to_string(),
            w => w.to_string(),
        })
        .collect()
}

/// A number as written in an attribute.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Number {
    Int(i64),
    Float(f64),
}

/// One field as a front end other than YAML (the `Record` derive) read it, before any
/// check: the same keys as a declaration's field.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FieldSpec {
    /// A word of [`kind_words`].
    pub kind: Option<String>,
    /// `reference = "template"`: the target.
    pub reference: Option<String>,
    /// `enumeration = "a,b"`: the values.
    pub values: Vec<String>,
    pub min: Option<Number>,
    pub max: Option<Number>,
    pub pattern: Option<String>,
    pub optional: bool,
    pub set: Option<String>,
    pub default: Option<Literal>,
    pub column: Option<String>,
    pub on_delete: Option<String>,
    /// The target's id kind, `uuid7` (default) or `sequence`: a lone record type cannot see
    /// its target's declaration.
    pub reference_id: Option<String>,
}

/// Why a [`FieldSpec`] is not a field.
#[derive(Debug, Clone, PartialEq)]
pub enum SpecError {
    NoKind,
    StringWithoutMax,
    NotAnInteger,
    NotANumber,
    LengthTooLarge,
    OutOfRange(&'static str),
    BoundsNotApplicable(&'static str),
    TextTakesOnlyMax,
    PatternNotString,
    ReferenceOnly,
    UnknownOnDelete(String),
    UnknownReferenceId(String),
    UnknownSet(String),
    SetNotTimestamp,
    DefaultDoesNotFit(&'static str),
}

impl SpecError {
    /// The message for field `name`.
    pub fn message(&self, name: &str) -> String {
        match self {
            SpecError::NoKind => {
                let words = kind_forms();
                let (last, rest) = words.split_last().expect("kinds exist");
                format!("field `{name}` needs a kind: {} or {last}", rest.join(", "))
            }
            SpecError::StringWithoutMax => format!("string field `{name}` needs `max = N`"),
            SpecError::NotAnInteger => format!("`{name}`: min and max of an integer are integers"),
            SpecError::NotANumber => format!("`{name}`: min and max of a float are numbers"),
            SpecError::LengthTooLarge => format!("`{name}`: string lengths must fit a u32"),
            SpecError::OutOfRange(kind) => format!("`{name}`: bounds exceed the {kind} range"),
            SpecError::BoundsNotApplicable(kind) => {
                format!("`{name}`: min and max do not apply to a {kind} field")
            }
            SpecError::TextTakesOnlyMax => format!("`{name}`: a text field takes only `max`"),
            SpecError::PatternNotString => {
                format!("`{name}`: pattern applies only to a string field")
            }
            SpecError::ReferenceOnly => {
                format!("`{name}`: on_delete and reference_id apply only to a reference")
            }
            SpecError::UnknownOnDelete(v) => {
                format!("unknown on_delete `{v}`; expected restrict, cascade or set_null")
            }
            SpecError::UnknownReferenceId(v) => {
                format!("unknown reference_id `{v}`; expected uuid7 or sequence")
            }
            SpecError::UnknownSet(v) => {
                format!("unknown set `{v}`; expected on_create or on_update")
            }
            SpecError::SetNotTimestamp => {
                format!("`{name}`: only a timestamp field can be set by the server")
            }
            SpecError::DefaultDoesNotFit(kind) => {
                format!("`{name}`: the default does not fit a {kind} field")
            }
        }
    }
}

/// Checks a [`FieldSpec`] and lowers it to the model's [`Field`], with the declaration's
/// defaults (column = name, integer bounds = the kind's range).
pub fn field(name: &str, spec: &FieldSpec) -> Result<Field, SpecError> {
    let kind = spec.kind.as_deref().ok_or(SpecError::NoKind)?;
    let int = |n: Option<Number>| match n {
        None => Ok(None),
        Some(Number::Int(i)) => Ok(Some(i)),
        Some(Number::Float(_)) => Err(SpecError::NotAnInteger),
    };
    let float = |n: Option<Number>| match n {
        None => Ok(None),
        Some(Number::Int(i)) => Ok(Some(i as f64)),
        Some(Number::Float(x)) => Ok(Some(x)),
    };
    let length = |v: Option<i64>| match v {
        None => Ok(None),
        Some(v) => u32::try_from(v)
            .map(Some)
            .map_err(|_| SpecError::LengthTooLarge),
    };
    let ty = match kind {
        "string" => FieldType::String {
            min: length(int(spec.min)?)?,
            max: length(int(spec.max)?)?.ok_or(SpecError::StringWithoutMax)?,
            pattern: spec.pattern.clone(),
        },
        "text" => FieldType::Text {
            max: length(int(spec.max)?)?,
        },
        "integer" | "bigint" => {
            let (min, max) = (int(spec.min)?, int(spec.max)?);
            let ty = if kind == "integer" {
                FieldType::Integer { min, max }
            } else {
                FieldType::BigInt { min, max }
            };
            let range = i64::from(i32::MIN)..=i64::from(i32::MAX);
            if kind == "integer" && [min, max].iter().flatten().any(|v| !range.contains(v)) {
                return Err(SpecError::OutOfRange("integer"));
            }
            ty
        }
        "float" => FieldType::Float {
            min: float(spec.min)?,
            max: float(spec.max)?,
        },
        "bool" => FieldType::Bool,
        "timestamp" => FieldType::Timestamp,
        "date" => FieldType::Date,
        "uuid" => FieldType::Uuid,
        "json" => FieldType::Json,
        "enumeration" => FieldType::Enum {
            values: spec.values.clone(),
        },
        "reference" => FieldType::Ref {
            template: spec.reference.clone().unwrap_or_default(),
            on_delete: match spec.on_delete.as_deref() {
                None | Some("restrict") => OnDelete::Restrict,
                Some("cascade") => OnDelete::Cascade,
                Some("set_null") => OnDelete::SetNull,
                Some(other) => return Err(SpecError::UnknownOnDelete(other.into())),
            },
            id: match spec.reference_id.as_deref() {
                None | Some("uuid7") => IdKind::Uuid7,
                Some("sequence") => IdKind::Sequence,
                Some(other) => return Err(SpecError::UnknownReferenceId(other.into())),
            },
        },
        _ => return Err(SpecError::NoKind),
    };
    let shown = match &ty {
        FieldType::Ref { .. } => "reference",
        ty => ty.name(),
    };
    let takes = |key: &str| ty.constraint_keys().contains(&key);
    if (spec.min.is_some() && !takes("min")) || (spec.max.is_some() && !takes("max")) {
        return Err(if takes("max") {
            SpecError::TextTakesOnlyMax
        } else {
            SpecError::BoundsNotApplicable(shown)
        });
    }
    if spec.pattern.is_some() && !takes("pattern") {
        return Err(SpecError::PatternNotString);
    }
    // `reference_id` is the derive's own: a declaration reads the target's id kind.
    if (spec.on_delete.is_some() || spec.reference_id.is_some()) && !takes("on_delete") {
        return Err(SpecError::ReferenceOnly);
    }
    let set = match spec.set.as_deref() {
        None => None,
        Some("on_create") => Some(SetOn::Create),
        Some("on_update") => Some(SetOn::Update),
        Some(other) => return Err(SpecError::UnknownSet(other.into())),
    };
    if set.is_some() && ty != FieldType::Timestamp {
        return Err(SpecError::SetNotTimestamp);
    }
    let default = match (&spec.default, &ty) {
        (None, _) => None,
        (Some(d @ Literal::Bool(_)), FieldType::Bool)
        | (Some(d @ Literal::Int(_)), FieldType::Integer { .. } | FieldType::BigInt { .. })
        | (Some(d @ Literal::Float(_)), FieldType::Float { .. })
        | (
            Some(d @ Literal::Text(_)),
            FieldType::String { .. } | FieldType::Text { .. } | FieldType::Enum { .. },
        ) => Some(d.clone()),
        (Some(Literal::Int(i)), FieldType::Float { .. }) => Some(Literal::Float(*i as f64)),
        (Some(_), _) => return Err(SpecError::DefaultDoesNotFit(shown)),
    };
    Ok(Field {
        name: name.to_string(),
        doc: None,
        column: spec.column.clone().unwrap_or_else(|| name.to_string()),
        ty,
        optional: spec.optional,
        set,
        default,
    })
}

/// The marker type (`rt::kinds::*`) a field's Rust type must accept, for the derive's
/// compile-time check that a hand-written field fits its declared kind.
pub fn kind_marker(f: &Field) -> TokenStream {
    let marker = match f.ty {
        FieldType::String { .. } | FieldType::Text { .. } => quote!(rt::kinds::Str),
        FieldType::Integer { .. } => quote!(rt::kinds::Integer),
        FieldType::BigInt { .. } => quote!(rt::kinds::BigInt),
        FieldType::Float { .. } => quote!(rt::kinds::Float),
        FieldType::Bool => quote!(rt::kinds::Bool),
        FieldType::Timestamp => quote!(rt::kinds::Timestamp),
        FieldType::Date => quote!(rt::kinds::Date),
        FieldType::Uuid => quote!(rt::kinds::Uuid),
        FieldType::Json => quote!(rt::kinds::Json),
        FieldType::Enum { .. } => quote!(rt::kinds::Enum),
        FieldType::Ref { .. } => quote!(rt::kinds::Ref),
    };
    if f.optional {
        quote!(rt::kinds::Optional<#marker>)
    } else {
        marker
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A field read from attributes lowers to the same model as the same field in YAML.
    #[test]
    fn attribute_fields_lower_like_declared_ones() {
        let yaml = crate::compile_source(
            "d.yaml",
            "domain: d\ntemplates:\n  t:\n    fields:\n      \
             a: { type: string, min: 1, max: 5, default: x }\n      \
             b: { type: integer, optional: true }\n      \
             c: { type: float, default: 2 }\n",
        )
        .unwrap();
        let spec = |kind: &str| FieldSpec {
            kind: Some(kind.into()),
            ..FieldSpec::default()
        };
        let a = FieldSpec {
            min: Some(Number::Int(1)),
            max: Some(Number::Int(5)),
            default: Some(Literal::Text("x".into())),
            ..spec("string")
        };
        let b = FieldSpec {
            optional: true,
            ..spec("integer")
        };
        let c = FieldSpec {
            default: Some(Literal::Int(2)),
            ..spec("float")
        };
        let lowered = [field("a", &a), field("b", &b), field("c", &c)].map(Result::unwrap);
        assert_eq!(yaml.templates[0].fields, lowered);
    }

    #[test]
    fn attribute_fields_are_checked() {
        let string = FieldSpec {
            kind: Some("string".into()),
            ..FieldSpec::default()
        };
        assert_eq!(field("s", &string), Err(SpecError::StringWithoutMax));
        let bool_with_max = FieldSpec {
            kind: Some("bool".into()),
            max: Some(Number::Int(1)),
            ..FieldSpec::default()
        };
        assert_eq!(
            field("b", &bool_with_max).unwrap_err().message("b"),
            "`b`: min and max do not apply to a bool field"
        );
        assert_eq!(
            field("n", &FieldSpec::default()).unwrap_err().message("n"),
            "field `n` needs a kind: string, text, integer, bigint, float, bool, timestamp, \
             date, uuid, json, enumeration = \"a,b\" or reference = \"template\""
        );
    }
}

/// A name in a template-level rule that is not a field of the template, found by
/// [`unknown_fields`]; each carries the rule's position in its list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnknownField {
    Unique {
        index: usize,
        field: String,
    },
    Index {
        index: usize,
        field: String,
    },
    Tokens {
        index: usize,
        set: String,
        field: String,
    },
    Differ {
        index: usize,
        field: String,
    },
}

impl UnknownField {
    pub fn message(&self) -> String {
        match self {
            UnknownField::Unique { field, .. } => {
                format!("unique index names unknown field `{field}`")
            }
            UnknownField::Index { field, .. } => format!("index names unknown field `{field}`"),
            UnknownField::Tokens { set, field, .. } => {
                format!("tokens `{set}` are taken from unknown field `{field}`")
            }
            UnknownField::Differ { field, .. } => format!("differ names unknown field `{field}`"),
        }
    }
}

/// Checks that unique keys, indexes (which may also name `id`), token sets and checks of
/// a template assembled outside the YAML validator name its own fields.
pub fn unknown_fields(t: &Template) -> Vec<UnknownField> {
    let known = |f: &str| t.fields.iter().any(|x| x.name == f);
    let mut out = Vec::new();
    for (index, u) in t.unique.iter().enumerate() {
        out.extend(
            u.fields
                .iter()
                .filter(|f| !known(f))
                .map(|f| UnknownField::Unique {
                    index,
                    field: f.clone(),
                }),
        );
    }
    for (index, fields) in t.indexes.iter().enumerate() {
        out.extend(fields.iter().filter(|f| *f != "id" && !known(f)).map(|f| {
            UnknownField::Index {
                index,
                field: f.clone(),
            }
        }));
    }
    for (index, s) in t.tokens.iter().enumerate() {
        if !known(&s.from) {
            out.push(UnknownField::Tokens {
                index,
                set: s.name.clone(),
                field: s.from.clone(),
            });
        }
    }
    for (index, c) in t.checks.iter().enumerate() {
        out.extend(
            c.differ
                .iter()
                .filter(|f| !known(f))
                .map(|f| UnknownField::Differ {
                    index,
                    field: f.clone(),
                }),
        );
    }
    out
}
