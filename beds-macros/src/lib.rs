//! Derives for BEDS record types.
//!
//! `#[derive(Record)]` turns a struct annotated with `#[beds(...)]` into a compiled
//! template: it emits the `Record` impl with the template's static metadata (the registry
//! entry the runtime dispatches and stores by) and compile-time checks that every
//! field's Rust type matches its declared kind. beds-codegen emits these annotations from
//! domain YAML; they can also be written by hand.
//!
//! ```text
//! #[derive(Serialize, Deserialize, Record)]
//! #[beds(domain = "shop", template = "item", create = ItemCreate, patch = ItemPatch)]
//! #[beds(unique(fields = "sku"))]
//! struct Item {
//!     id: ItemId,
//!     version: i64,
//!     #[beds(string, max = 32)]
//!     sku: String,
//!     #[beds(integer, min = 0, optional)]
//!     stock: Option<i64>,
//! }
//! ```

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::quote;
use syn::meta::ParseNestedMeta;
use syn::{Data, DeriveInput, Fields, Lit, LitInt, LitStr, Path, Type, parse_macro_input};

#[proc_macro_derive(Record, attributes(beds))]
pub fn derive_record(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    record(&input)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

#[derive(Default)]
struct TemplateAttrs {
    domain: Option<String>,
    template: Option<String>,
    table: Option<String>,
    id_column: Option<String>,
    version_column: Option<String>,
    page_default: Option<u32>,
    page_max: Option<u32>,
    create: Option<Path>,
    patch: Option<Path>,
    unique: Vec<(Vec<String>, bool, Span)>,
    indexes: Vec<(Vec<String>, Span)>,
    version: Option<u32>,
    flags: Vec<String>,
    cache_ttl_ms: Option<u64>,
    retention: Option<(u64, String)>,
    access: Vec<(String, Vec<String>)>,
    /// `id = "sequence"`: database-assigned integers instead of UUIDv7.
    sequence: bool,
    tokens: Vec<TokenAttrs>,
    /// (name, template, by)
    counts: Vec<(String, String, String, Span)>,
    /// (fields, message, name)
    differ: Vec<(Vec<String>, String, Option<String>, Span)>,
}

#[derive(Default)]
struct TokenAttrs {
    name: String,
    from: String,
    pattern: String,
    lowercase: bool,
    max_len: Option<u32>,
    table: Option<String>,
    span: Option<Span>,
}

const FLAGS: &[&str] = &["append_only", "internal", "audit", "journal", "locking"];
const OPS: &[&str] = &["create", "fetch", "update", "delete", "list"];

enum Kind {
    String,
    Text,
    Integer,
    BigInt,
    Float,
    Bool,
    Timestamp,
    Date,
    Uuid,
    Json,
    Enum(Vec<String>),
    Ref(String),
}

impl Kind {
    fn name(&self) -> &'static str {
        match self {
            Kind::String => "string",
            Kind::Text => "text",
            Kind::Integer => "integer",
            Kind::BigInt => "bigint",
            Kind::Float => "float",
            Kind::Bool => "bool",
            Kind::Timestamp => "timestamp",
            Kind::Date => "date",
            Kind::Uuid => "uuid",
            Kind::Json => "json",
            Kind::Enum(_) => "enum",
            Kind::Ref(_) => "reference",
        }
    }
}

#[derive(Default)]
struct FieldAttrs {
    kind: Option<Kind>,
    min: Option<Lit>,
    max: Option<Lit>,
    pattern: Option<String>,
    optional: bool,
    set: Option<String>,
    default: Option<Lit>,
    column: Option<String>,
    on_delete: Option<String>,
    /// The target's id kind: `reference_id = "sequence"` (default uuid7).
    reference_id: Option<String>,
}

/// Collects every error rather than stopping at the first, like serde_derive's `Ctxt`.
#[derive(Default)]
struct Errors(Option<syn::Error>);

impl Errors {
    fn push(&mut self, e: syn::Error) {
        match &mut self.0 {
            Some(all) => all.combine(e),
            None => self.0 = Some(e),
        }
    }

    fn finish(self) -> syn::Result<()> {
        self.0.map_or(Ok(()), Err)
    }
}

fn record(input: &DeriveInput) -> syn::Result<TokenStream2> {
    let mut errors = Errors::default();
    let Data::Struct(data) = &input.data else {
        return Err(syn::Error::new_spanned(
            input,
            "Record can only be derived for a struct",
        ));
    };
    let Fields::Named(named) = &data.fields else {
        return Err(syn::Error::new_spanned(
            input,
            "Record needs a struct with named fields",
        ));
    };
    let mut t = TemplateAttrs::default();
    for attr in input.attrs.iter().filter(|a| a.path().is_ident("beds")) {
        if let Err(e) = attr.parse_nested_meta(|meta| template_attr(&mut t, &meta)) {
            errors.push(e);
        }
    }
    let name = &input.ident;
    let (Some(domain), Some(template)) = (t.domain.clone(), t.template.clone()) else {
        errors.push(syn::Error::new_spanned(
            name,
            "Record needs #[beds(domain = \"...\", template = \"...\")]",
        ));
        return Err(errors.0.expect("just pushed"));
    };
    let (Some(create), Some(patch)) = (t.create.clone(), t.patch.clone()) else {
        errors.push(syn::Error::new_spanned(
            name,
            "Record needs #[beds(create = CreateType, patch = PatchType)]",
        ));
        return Err(errors.0.expect("just pushed"));
    };

    let mut id_ty: Option<&Type> = None;
    let mut has_version = false;
    let mut metas = Vec::new();
    let mut checks = Vec::new();
    let mut field_names = Vec::new();
    let mut contracts = Vec::new();
    for field in &named.named {
        let ident = field.ident.as_ref().expect("named fields");
        let fname = ident.to_string();
        let has_attr = field.attrs.iter().any(|a| a.path().is_ident("beds"));
        match fname.as_str() {
            "id" if !has_attr => {
                id_ty = Some(&field.ty);
                continue;
            }
            "version" if !has_attr => {
                has_version = true;
                let ty = &field.ty;
                checks.push(quote!(rt::assert_field::<#ty, rt::kinds::BigInt>();));
                continue;
            }
            _ => {}
        }
        let mut f = FieldAttrs::default();
        let mut parsed = true;
        for attr in field.attrs.iter().filter(|a| a.path().is_ident("beds")) {
            if let Err(e) = attr.parse_nested_meta(|meta| field_attr(&mut f, &meta)) {
                errors.push(e);
                parsed = false;
            }
        }
        if !parsed {
            // One error per mistake: the attribute error already says what is wrong.
            continue;
        }
        match field_meta(&fname, &f, &field.ty) {
            Ok((meta, check, contract)) => {
                metas.push(meta);
                checks.push(check);
                field_names.push(fname);
                contracts.push(contract);
            }
            Err(msg) => errors.push(syn::Error::new_spanned(ident, msg)),
        }
    }
    let Some(id_ty) = id_ty else {
        errors.push(syn::Error::new_spanned(
            name,
            "a Record needs an `id` field holding its key type",
        ));
        return Err(errors.0.expect("just pushed"));
    };
    if !has_version {
        errors.push(syn::Error::new_spanned(
            name,
            "a Record needs a `version: i64` field",
        ));
    }
    let uniques: Vec<TokenStream2> = t
        .unique
        .iter()
        .map(|(fields, ci, span)| {
            for f in fields {
                if !field_names.contains(f) {
                    errors.push(syn::Error::new(
                        *span,
                        format!("unique index names unknown field `{f}`"),
                    ));
                }
            }
            quote!(rt::UniqueMeta { fields: &[#(#fields),*], case_insensitive: #ci })
        })
        .collect();
    let indexes: Vec<TokenStream2> = t
        .indexes
        .iter()
        .map(|(fields, span)| {
            for f in fields {
                if f != "id" && !field_names.contains(f) {
                    errors.push(syn::Error::new(
                        *span,
                        format!("index names unknown field `{f}`"),
                    ));
                }
            }
            quote!(&[#(#fields),*])
        })
        .collect();
    let table = t.table.clone().unwrap_or_else(|| template.clone());
    let tokens: Vec<TokenStream2> = t
        .tokens
        .iter()
        .map(|s| {
            if !field_names.contains(&s.from) {
                errors.push(syn::Error::new(
                    s.span.unwrap_or_else(Span::call_site),
                    format!(
                        "tokens `{}` are taken from unknown field `{}`",
                        s.name, s.from
                    ),
                ));
            }
            let (name, from, pattern, lowercase) = (&s.name, &s.from, &s.pattern, s.lowercase);
            let max_len = s.max_len.unwrap_or(64);
            let token_table = s.table.clone().unwrap_or_else(|| format!("{table}_{name}"));
            quote!(rt::TokenSetMeta {
                name: #name, source: #from, pattern: #pattern, lowercase: #lowercase,
                max_len: #max_len, table: #token_table,
            })
        })
        .collect();
    let counts = t.counts.iter().map(|(name, template, by, _)| {
        quote!(rt::CountMeta { name: #name, template: #template, by: #by })
    });
    let differ: Vec<TokenStream2> = t
        .differ
        .iter()
        .map(|(fields, message, cname, span)| {
            if fields.len() != 2 {
                errors.push(syn::Error::new(
                    *span,
                    "differ needs exactly two fields: `fields = \"a,b\"`",
                ));
                return quote!();
            }
            for f in fields {
                if !field_names.contains(f) {
                    errors.push(syn::Error::new(
                        *span,
                        format!("differ names unknown field `{f}`"),
                    ));
                }
            }
            let (a, b) = (&fields[0], &fields[1]);
            let cname = cname
                .clone()
                .unwrap_or_else(|| format!("{table}_{a}_{b}_check"));
            quote!(rt::CheckMeta { name: #cname, differ: [#a, #b], message: #message })
        })
        .collect();
    errors.finish()?;
    let flag = |name: &str| t.flags.iter().any(|f| f == name);
    let (append_only, internal) = (flag("append_only"), flag("internal"));
    let (audit, journal, locking) = (flag("audit"), flag("journal"), flag("locking"));
    let cache = match t.cache_ttl_ms {
        Some(ms) => quote!(::core::option::Option::Some(#ms)),
        None => quote!(::core::option::Option::None),
    };
    let retention = match &t.retention {
        Some((age, target)) => {
            quote!(::core::option::Option::Some(rt::RetentionMeta { age_ms: #age, target: #target }))
        }
        None => quote!(::core::option::Option::None),
    };
    let access = t.access.iter().map(|(op, who)| {
        let op = syn::Ident::new(&camel(op), Span::call_site());
        quote!((rt::Op::#op, &[#(#who),*]))
    });
    let version = t.version.unwrap_or(1);
    let id_kind = if t.sequence {
        quote!(rt::IdKind::Sequence)
    } else {
        quote!(rt::IdKind::Uuid7)
    };
    // The contract as a client sees it: storage names are left out on purpose.
    let mut contract = format!(
        "{domain}.{template} v{version} id={} append_only={append_only} internal={internal} fields:",
        if t.sequence { "sequence" } else { "uuid7" }
    );
    for c in &contracts {
        contract.push_str(c);
        contract.push(';');
    }
    for (fields, ci, _) in &t.unique {
        contract.push_str(&format!(" unique({}, ci={ci})", fields.join(",")));
    }
    for s in &t.tokens {
        contract.push_str(&format!(
            " tokens({} from {} /{}/ lower={} max={:?})",
            s.name, s.from, s.pattern, s.lowercase, s.max_len
        ));
    }
    for (name, template, by, _) in &t.counts {
        contract.push_str(&format!(" count({name} of {template} by {by})"));
    }
    for (fields, _, _, _) in &t.differ {
        contract.push_str(&format!(" differ({})", fields.join(",")));
    }
    let fingerprint = format!("{:016x}", fnv1a(contract.as_bytes()));

    let id_column = t.id_column.unwrap_or_else(|| "id".into());
    let version_column = t.version_column.unwrap_or_else(|| "version".into());
    let page_default = t.page_default.unwrap_or(20);
    let page_max = t.page_max.unwrap_or(100);
    Ok(quote! {
        const _: () = {
            use ::beds_runtime::support as rt;

            impl rt::Record for #name {
                type Id = #id_ty;
                type Create = #create;
                type Patch = #patch;
                const META: &'static rt::TemplateMeta = &rt::TemplateMeta {
                    domain: #domain,
                    name: #template,
                    table: #table,
                    id: #id_kind,
                    id_column: #id_column,
                    version_column: #version_column,
                    fields: &[#(#metas),*],
                    unique: &[#(#uniques),*],
                    indexes: &[#(#indexes),*],
                    page: rt::PageMeta { default: #page_default, max: #page_max },
                    version: #version,
                    fingerprint: #fingerprint,
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
                    checks: &[#(#differ),*],
                };
            }

            const _: () = {
                rt::assert_field::<#id_ty, rt::kinds::Ref>();
                #(#checks)*
            };
        };
    })
}

fn template_attr(t: &mut TemplateAttrs, meta: &ParseNestedMeta<'_>) -> syn::Result<()> {
    let string = |meta: &ParseNestedMeta<'_>| -> syn::Result<String> {
        Ok(meta.value()?.parse::<LitStr>()?.value())
    };
    let number = |meta: &ParseNestedMeta<'_>| -> syn::Result<u32> {
        meta.value()?.parse::<LitInt>()?.base10_parse()
    };
    let p = &meta.path;
    if p.is_ident("domain") {
        t.domain = Some(string(meta)?);
    } else if p.is_ident("template") {
        t.template = Some(string(meta)?);
    } else if p.is_ident("table") {
        t.table = Some(string(meta)?);
    } else if p.is_ident("id") {
        let kind = meta.value()?.parse::<LitStr>()?;
        t.sequence = match kind.value().as_str() {
            "uuid7" => false,
            "sequence" => true,
            _ => {
                return Err(syn::Error::new_spanned(
                    kind,
                    "the id kind is \"uuid7\" or \"sequence\"",
                ));
            }
        };
    } else if p.is_ident("id_column") {
        t.id_column = Some(string(meta)?);
    } else if p.is_ident("version_column") {
        t.version_column = Some(string(meta)?);
    } else if p.is_ident("page_default") {
        t.page_default = Some(number(meta)?);
    } else if p.is_ident("page_max") {
        t.page_max = Some(number(meta)?);
    } else if p.is_ident("create") {
        t.create = Some(meta.value()?.parse()?);
    } else if p.is_ident("patch") {
        t.patch = Some(meta.value()?.parse()?);
    } else if p.is_ident("version") {
        t.version = Some(number(meta)?);
    } else if let Some(flag) = FLAGS.iter().find(|f| p.is_ident(f)) {
        t.flags.push(flag.to_string());
    } else if p.is_ident("cache_ttl_ms") {
        t.cache_ttl_ms = Some(meta.value()?.parse::<LitInt>()?.base10_parse()?);
    } else if p.is_ident("retention") {
        let (mut age, mut target) = (None, None);
        meta.parse_nested_meta(|inner| {
            if inner.path.is_ident("age_ms") {
                age = Some(inner.value()?.parse::<LitInt>()?.base10_parse()?);
            } else if inner.path.is_ident("target") {
                target = Some(inner.value()?.parse::<LitStr>()?.value());
            } else {
                return Err(inner.error("expected `age_ms = N` or `target = \"cool|cold|delete\"`"));
            }
            Ok(())
        })?;
        match (age, target) {
            (Some(age), Some(target)) => t.retention = Some((age, target)),
            _ => return Err(meta.error("retention needs both `age_ms` and `target`")),
        }
    } else if p.is_ident("access") {
        meta.parse_nested_meta(|inner| {
            let Some(op) = OPS.iter().find(|op| inner.path.is_ident(op)) else {
                return Err(
                    inner.error("expected an operation: create, fetch, update, delete or list")
                );
            };
            let who = inner.value()?.parse::<LitStr>()?.value();
            t.access.push((
                op.to_string(),
                who.split(',').map(|s| s.trim().to_string()).collect(),
            ));
            Ok(())
        })?;
    } else if p.is_ident("index") {
        let span = p.require_ident()?.span();
        meta.parse_nested_meta(|inner| {
            if inner.path.is_ident("fields") {
                let list = inner.value()?.parse::<LitStr>()?.value();
                t.indexes.push((
                    list.split(',').map(|s| s.trim().to_string()).collect(),
                    span,
                ));
                Ok(())
            } else {
                Err(inner.error("expected `fields = \"a,b\"`"))
            }
        })?;
    } else if p.is_ident("unique") {
        let mut fields = Vec::new();
        let mut ci = false;
        let span = p.require_ident()?.span();
        meta.parse_nested_meta(|inner| {
            if inner.path.is_ident("fields") {
                let list = inner.value()?.parse::<LitStr>()?.value();
                fields = list.split(',').map(|s| s.trim().to_string()).collect();
                Ok(())
            } else if inner.path.is_ident("case_insensitive") {
                ci = true;
                Ok(())
            } else {
                Err(inner.error("expected `fields = \"a,b\"` or `case_insensitive`"))
            }
        })?;
        t.unique.push((fields, ci, span));
    } else if p.is_ident("tokens") {
        let mut s = TokenAttrs {
            span: Some(p.require_ident()?.span()),
            ..TokenAttrs::default()
        };
        meta.parse_nested_meta(|inner| {
            let text = |inner: &ParseNestedMeta<'_>| -> syn::Result<String> {
                Ok(inner.value()?.parse::<LitStr>()?.value())
            };
            let q = &inner.path;
            if q.is_ident("name") {
                s.name = text(&inner)?;
            } else if q.is_ident("from") {
                s.from = text(&inner)?;
            } else if q.is_ident("pattern") {
                s.pattern = text(&inner)?;
            } else if q.is_ident("table") {
                s.table = Some(text(&inner)?);
            } else if q.is_ident("lowercase") {
                s.lowercase = true;
            } else if q.is_ident("max_len") {
                s.max_len = Some(inner.value()?.parse::<LitInt>()?.base10_parse()?);
            } else {
                return Err(
                    inner.error("expected name, from, pattern, lowercase, max_len or table")
                );
            }
            Ok(())
        })?;
        if s.name.is_empty() || s.from.is_empty() || s.pattern.is_empty() {
            return Err(meta.error("tokens needs `name`, `from` and `pattern`"));
        }
        t.tokens.push(s);
    } else if p.is_ident("count") {
        let span = p.require_ident()?.span();
        let (mut name, mut template, mut by) = (None, None, None);
        meta.parse_nested_meta(|inner| {
            let v = inner.value()?.parse::<LitStr>()?.value();
            if inner.path.is_ident("name") {
                name = Some(v);
            } else if inner.path.is_ident("template") {
                template = Some(v);
            } else if inner.path.is_ident("by") {
                by = Some(v);
            } else {
                return Err(inner.error("expected `name`, `template` or `by`"));
            }
            Ok(())
        })?;
        match (name, template, by) {
            (Some(n), Some(t2), Some(b)) => t.counts.push((n, t2, b, span)),
            _ => return Err(meta.error("count needs `name`, `template` and `by`")),
        }
    } else if p.is_ident("differ") {
        let span = p.require_ident()?.span();
        let (mut fields, mut message, mut cname) = (Vec::new(), None, None);
        meta.parse_nested_meta(|inner| {
            let v = inner.value()?.parse::<LitStr>()?.value();
            if inner.path.is_ident("fields") {
                fields = v.split(',').map(|s| s.trim().to_string()).collect();
            } else if inner.path.is_ident("message") {
                message = Some(v);
            } else if inner.path.is_ident("name") {
                cname = Some(v);
            } else {
                return Err(inner.error("expected `fields`, `message` or `name`"));
            }
            Ok(())
        })?;
        let message = message.ok_or_else(|| meta.error("differ needs a `message` for callers"))?;
        t.differ.push((fields, message, cname, span));
    } else {
        return Err(meta.error(
            "unknown template attribute; expected domain, template, table, id, id_column, \
             version_column, page_default, page_max, create, patch, version, append_only, \
             internal, audit, journal, locking, cache_ttl_ms, retention(...), access(...), \
             index(...), unique(...), tokens(...), count(...) or differ(...)",
        ));
    }
    Ok(())
}

fn field_attr(f: &mut FieldAttrs, meta: &ParseNestedMeta<'_>) -> syn::Result<()> {
    let string = |meta: &ParseNestedMeta<'_>| -> syn::Result<String> {
        Ok(meta.value()?.parse::<LitStr>()?.value())
    };
    let p = &meta.path;
    let simple = [
        ("string", (|| Kind::String) as fn() -> Kind),
        ("text", || Kind::Text),
        ("integer", || Kind::Integer),
        ("bigint", || Kind::BigInt),
        ("float", || Kind::Float),
        ("bool", || Kind::Bool),
        ("timestamp", || Kind::Timestamp),
        ("date", || Kind::Date),
        ("uuid", || Kind::Uuid),
        ("json", || Kind::Json),
    ];
    let kind = if let Some((_, make)) = simple.iter().find(|(n, _)| p.is_ident(n)) {
        Some(make())
    } else if p.is_ident("reference") {
        Some(Kind::Ref(string(meta)?))
    } else if p.is_ident("enumeration") {
        Some(Kind::Enum(
            string(meta)?
                .split(',')
                .map(|v| v.trim().to_string())
                .collect(),
        ))
    } else {
        None
    };
    if let Some(kind) = kind {
        if f.kind.is_some() {
            return Err(meta.error("a field has exactly one kind"));
        }
        f.kind = Some(kind);
    } else if p.is_ident("min") {
        f.min = Some(meta.value()?.parse()?);
    } else if p.is_ident("max") {
        f.max = Some(meta.value()?.parse()?);
    } else if p.is_ident("pattern") {
        f.pattern = Some(string(meta)?);
    } else if p.is_ident("default") {
        f.default = Some(meta.value()?.parse()?);
    } else if p.is_ident("optional") {
        f.optional = true;
    } else if p.is_ident("set") {
        f.set = Some(string(meta)?);
    } else if p.is_ident("column") {
        f.column = Some(string(meta)?);
    } else if p.is_ident("on_delete") {
        f.on_delete = Some(string(meta)?);
    } else if p.is_ident("reference_id") {
        f.reference_id = Some(string(meta)?);
    } else {
        return Err(meta.error(
            "unknown field attribute; expected a kind (string, text, integer, bigint, float, bool, \
             timestamp, date, uuid, json, enumeration = \"a,b\", reference = \"template\") or \
             min, max, pattern, optional, default, set, column, on_delete, reference_id",
        ));
    }
    Ok(())
}

/// The `FieldMeta` expression, the type check and the contract text of one field.
fn field_meta(
    name: &str,
    f: &FieldAttrs,
    ty: &Type,
) -> Result<(TokenStream2, TokenStream2, String), String> {
    let Some(kind) = &f.kind else {
        return Err(format!(
            "field `{name}` needs a kind: string, text, integer, bigint, float, bool, timestamp, \
             date, uuid, json, enumeration = \"a,b\" or reference = \"template\""
        ));
    };
    let int = |lit: &Option<Lit>| -> Result<Option<i64>, String> {
        match lit {
            None => Ok(None),
            Some(Lit::Int(l)) => l.base10_parse::<i64>().map(Some).map_err(|e| e.to_string()),
            Some(_) => Err(format!("`{name}`: min and max of an integer are integers")),
        }
    };
    let float = |lit: &Option<Lit>| -> Result<Option<f64>, String> {
        match lit {
            None => Ok(None),
            Some(Lit::Int(l)) => l.base10_parse::<f64>().map(Some).map_err(|e| e.to_string()),
            Some(Lit::Float(l)) => l.base10_parse::<f64>().map(Some).map_err(|e| e.to_string()),
            Some(_) => Err(format!("`{name}`: min and max of a float are numbers")),
        }
    };
    let opt_u32 = |v: Option<i64>| -> Result<TokenStream2, String> {
        Ok(match v {
            Some(v) => {
                let v =
                    u32::try_from(v).map_err(|_| format!("`{name}`: lengths must fit a u32"))?;
                quote!(::core::option::Option::Some(#v))
            }
            None => quote!(::core::option::Option::None),
        })
    };
    let opt_f64 = |v: Option<f64>| match v {
        Some(v) => quote!(::core::option::Option::Some(#v)),
        None => quote!(::core::option::Option::None),
    };
    let mut contract = format!("{name}:{}", kind.name());
    let (kind_expr, marker) = match kind {
        Kind::String => {
            let max =
                int(&f.max)?.ok_or_else(|| format!("string field `{name}` needs `max = N`"))?;
            let min = int(&f.min)?.unwrap_or(0);
            let (Ok(max), Ok(min)) = (u32::try_from(max), u32::try_from(min)) else {
                return Err(format!("`{name}`: string lengths must fit a u32"));
            };
            let pattern = match &f.pattern {
                Some(p) => quote!(::core::option::Option::Some(#p)),
                None => quote!(::core::option::Option::None),
            };
            contract.push_str(&format!("[{min},{max}]{:?}", f.pattern));
            (
                quote!(rt::FieldKind::String { min: #min, max: #max, pattern: #pattern }),
                quote!(rt::kinds::Str),
            )
        }
        Kind::Text => {
            let max = int(&f.max)?;
            contract.push_str(&format!("[{max:?}]"));
            let max = opt_u32(max)?;
            (
                quote!(rt::FieldKind::Text { max: #max }),
                quote!(rt::kinds::Str),
            )
        }
        Kind::Integer | Kind::BigInt => {
            let (lo, hi) = match kind {
                Kind::Integer => (i64::from(i32::MIN), i64::from(i32::MAX)),
                _ => (i64::MIN, i64::MAX),
            };
            let min = int(&f.min)?.unwrap_or(lo);
            let max = int(&f.max)?.unwrap_or(hi);
            if min < lo || max > hi {
                return Err(format!("`{name}`: bounds exceed the {} range", kind.name()));
            }
            contract.push_str(&format!("[{min},{max}]"));
            match kind {
                Kind::Integer => (
                    quote!(rt::FieldKind::Integer { min: #min, max: #max }),
                    quote!(rt::kinds::Integer),
                ),
                _ => (
                    quote!(rt::FieldKind::BigInt { min: #min, max: #max }),
                    quote!(rt::kinds::BigInt),
                ),
            }
        }
        Kind::Float => {
            let (min, max) = (float(&f.min)?, float(&f.max)?);
            contract.push_str(&format!("[{min:?},{max:?}]"));
            let (min, max) = (opt_f64(min), opt_f64(max));
            (
                quote!(rt::FieldKind::Float { min: #min, max: #max }),
                quote!(rt::kinds::Float),
            )
        }
        Kind::Bool => (quote!(rt::FieldKind::Bool), quote!(rt::kinds::Bool)),
        Kind::Timestamp => (
            quote!(rt::FieldKind::Timestamp),
            quote!(rt::kinds::Timestamp),
        ),
        Kind::Date => (quote!(rt::FieldKind::Date), quote!(rt::kinds::Date)),
        Kind::Uuid => (quote!(rt::FieldKind::Uuid), quote!(rt::kinds::Uuid)),
        Kind::Json => (quote!(rt::FieldKind::Json), quote!(rt::kinds::Json)),
        Kind::Enum(values) => {
            contract.push_str(&format!("{values:?}"));
            (
                quote!(rt::FieldKind::Enum { values: &[#(#values),*] }),
                quote!(rt::kinds::Enum),
            )
        }
        Kind::Ref(template) => {
            let on_delete = match f.on_delete.as_deref() {
                None | Some("restrict") => quote!(rt::OnDelete::Restrict),
                Some("cascade") => quote!(rt::OnDelete::Cascade),
                Some("set_null") => quote!(rt::OnDelete::SetNull),
                Some(other) => {
                    return Err(format!(
                        "unknown on_delete `{other}`; expected restrict, cascade or set_null"
                    ));
                }
            };
            let id = match f.reference_id.as_deref() {
                None | Some("uuid7") => quote!(rt::IdKind::Uuid7),
                Some("sequence") => quote!(rt::IdKind::Sequence),
                Some(other) => {
                    return Err(format!(
                        "unknown reference_id `{other}`; expected uuid7 or sequence"
                    ));
                }
            };
            contract.push_str(&format!(
                "->{template}/{:?}/{:?}",
                f.on_delete, f.reference_id
            ));
            (
                quote!(rt::FieldKind::Ref { template: #template, on_delete: #on_delete, id: #id }),
                quote!(rt::kinds::Ref),
            )
        }
    };
    let ranged = matches!(
        kind,
        Kind::String | Kind::Text | Kind::Integer | Kind::BigInt | Kind::Float
    );
    if !ranged && (f.min.is_some() || f.max.is_some()) {
        return Err(format!(
            "`{name}`: min and max do not apply to a {} field",
            kind.name()
        ));
    }
    if matches!(kind, Kind::Text) && f.min.is_some() {
        return Err(format!("`{name}`: a text field takes only `max`"));
    }
    if f.pattern.is_some() && !matches!(kind, Kind::String) {
        return Err(format!("`{name}`: pattern applies only to a string field"));
    }
    if (f.on_delete.is_some() || f.reference_id.is_some()) && !matches!(kind, Kind::Ref(_)) {
        return Err(format!(
            "`{name}`: on_delete and reference_id apply only to a reference"
        ));
    }
    let set = match f.set.as_deref() {
        None => quote!(::core::option::Option::None),
        Some("on_create") => quote!(::core::option::Option::Some(rt::SetOn::Create)),
        Some("on_update") => quote!(::core::option::Option::Some(rt::SetOn::Update)),
        Some(other) => {
            return Err(format!(
                "unknown set `{other}`; expected on_create or on_update"
            ));
        }
    };
    if f.set.is_some() && !matches!(kind, Kind::Timestamp) {
        return Err(format!(
            "`{name}`: only a timestamp field can be set by the server"
        ));
    }
    let default = match (&f.default, kind) {
        (None, _) => quote!(::core::option::Option::None),
        (Some(Lit::Bool(b)), Kind::Bool) => {
            quote!(::core::option::Option::Some(rt::DefaultValue::Bool(#b)))
        }
        (Some(Lit::Int(i)), Kind::Integer | Kind::BigInt) => {
            let i = i.base10_parse::<i64>().map_err(|e| e.to_string())?;
            quote!(::core::option::Option::Some(rt::DefaultValue::Int(#i)))
        }
        (Some(l @ (Lit::Int(_) | Lit::Float(_))), Kind::Float) => {
            let x = float(&Some(l.clone()))?.unwrap_or_default();
            quote!(::core::option::Option::Some(rt::DefaultValue::Float(#x)))
        }
        (Some(Lit::Str(s)), Kind::String | Kind::Text | Kind::Enum(_)) => {
            let s = s.value();
            quote!(::core::option::Option::Some(rt::DefaultValue::Text(#s)))
        }
        (Some(_), _) => {
            return Err(format!(
                "`{name}`: the default does not fit a {} field",
                kind.name()
            ));
        }
    };
    if let Some(d) = &f.default {
        contract.push_str(&format!(" default={}", quote!(#d)));
    }
    let column = f.column.clone().unwrap_or_else(|| name.to_string());
    let optional = f.optional;
    contract.push_str(&format!(" optional={optional} set={:?}", f.set));
    let marker = if optional {
        quote!(rt::kinds::Optional<#marker>)
    } else {
        marker
    };
    Ok((
        quote!(rt::FieldMeta {
            name: #name,
            column: #column,
            kind: #kind_expr,
            optional: #optional,
            set: #set,
            default: #default,
        }),
        quote!(rt::assert_field::<#ty, #marker>();),
        contract,
    ))
}

/// `create` -> `Create`.
fn camel(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
        .unwrap_or_default()
}

/// 64-bit FNV-1a: stable across builds and platforms, unlike `DefaultHasher`.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    })
}
