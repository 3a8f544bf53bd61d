//! Lowers a validated template to the runtime's static metadata: the one place a template
//! becomes a `TemplateMeta` and a fingerprint. The emitter calls it for every declared
//! template and `#[derive(Record)]` (beds-macros) for hand-written ones, so both write the
//! same metadata from the same model.

use proc_macro2::{Ident, Literal as Lit, Span, TokenStream};
use quote::quote;

use crate::model::{FieldType, IdKind, Literal, OnDelete, SetOn, Template, camel};

/// The `impl Record` of a record type: its key, input types and metadata. Paths are
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
    quote! {
        impl rt::Record for #record {
            type Id = #id;
            type Create = #create;
            type Patch = #patch;
            const META: &'static rt::TemplateMeta = &#meta;
        }
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
    let cache = option(c.cache_ttl_ms.map(|ms| {
        let ms = Lit::u64_unsuffixed(ms);
        quote!(#ms)
    }));
    let retention = option(c.retention.as_ref().map(|r| {
        let (age, target) = (Lit::u64_unsuffixed(r.age_ms), &r.target);
        quote!(rt::RetentionMeta { age_ms: #age, target: #target })
    }));
    let access = t.access.iter().map(|(op, who)| {
        let op = Ident::new(&camel(op), Span::call_site());
        quote!((rt::Op::#op, &[#(#who),*]))
    });
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
        let (name, from, by) = (&c.name, &c.from, &c.by);
        quote!(rt::CountMeta { name: #name, template: #from, by: #by })
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
                retention: #retention,
            },
            access: &[#(#access),*],
            tokens: &[#(#tokens),*],
            counts: &[#(#counts),*],
            checks: &[#(#checks),*],
        }
    }
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
/// unique keys, token sets, counts, checks, version and the append-only and internal flags.
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
        line(&["count".into(), text(&c.name), text(&c.from), text(&c.by)]);
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
