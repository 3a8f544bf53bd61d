//! Derives for BEDS record types.
//!
//! `#[derive(Record)]` turns a hand-written struct annotated with `#[beds(...)]` into a
//! compiled template. The derive only reads the attributes and the struct's shape: each
//! field's attributes become a `beds_codegen::lower::FieldSpec`, checked and lowered by the
//! declaration compiler's own code (`lower::field`), and the `Record` impl with its static
//! metadata and fingerprint is written by `lower::record_impl`, exactly as for a template
//! declared in YAML. What stays here is what only a Rust struct has: the `id` and `version`
//! fields, the create and patch types, and compile-time checks that every field's Rust type
//! fits its kind.
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

use beds_codegen::lower::{self, FieldSpec, Number, UnknownField};
use beds_codegen::model::{self, Literal};
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
    /// `access(update = "owner,admin")`: principals per operation.
    access: Vec<(String, Vec<String>)>,
    /// `owner = "author"`: the field holding the owning subject.
    owner: Option<String>,
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

const FLAGS: &[&str] = &["append_only", "internal", "locking", "journal", "audit"];

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
    let mut fields = Vec::new();
    let mut checks = Vec::new();
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
        let mut f = FieldSpec::default();
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
        match lower::field(&fname, &f) {
            Ok(lowered) => {
                let (ty, marker) = (&field.ty, lower::kind_marker(&lowered));
                checks.push(quote!(rt::assert_field::<#ty, #marker>();));
                fields.push(lowered);
            }
            Err(e) => errors.push(syn::Error::new_spanned(ident, e.message(&fname))),
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
    let table = t.table.clone().unwrap_or_else(|| template.clone());
    let mut checks_model = Vec::new();
    let mut check_spans = Vec::new();
    for (fields, message, cname, span) in &t.differ {
        let [a, b] = fields.as_slice() else {
            errors.push(syn::Error::new(
                *span,
                "differ needs exactly two fields: `fields = \"a,b\"`",
            ));
            continue;
        };
        let differ = [a.clone(), b.clone()];
        check_spans.push(*span);
        checks_model.push(model::Check {
            name: cname
                .clone()
                .unwrap_or_else(|| model::Check::default_name(&table, &differ)),
            differ,
            message: message.clone(),
        });
    }
    let flag = |name: &str| t.flags.iter().any(|f| f == name);
    if flag("internal") && flag("audit") {
        errors.push(syn::Error::new_spanned(
            name,
            format!("{}; remove `audit` or `internal`", model::INTERNAL_AUDIT),
        ));
    }
    if flag("append_only") && flag("journal") {
        errors.push(syn::Error::new_spanned(
            name,
            format!(
                "{}; remove `journal` or `append_only`",
                model::APPEND_ONLY_JOURNAL
            ),
        ));
    }
    let defaults = model::Page::default();
    let lowered = model::Template {
        name: template.clone(),
        doc: None,
        version: t.version.unwrap_or(1),
        id: if t.sequence {
            model::IdKind::Sequence
        } else {
            model::IdKind::Uuid7
        },
        id_column: t.id_column.clone().unwrap_or_else(|| "id".into()),
        version_column: t.version_column.clone().unwrap_or_else(|| "version".into()),
        fields,
        unique: t
            .unique
            .iter()
            .map(|(fields, ci, _)| model::Unique {
                fields: fields.clone(),
                case_insensitive: *ci,
            })
            .collect(),
        indexes: t.indexes.iter().map(|(f, _)| f.clone()).collect(),
        page: model::Page {
            default: t.page_default.unwrap_or(defaults.default),
            max: t.page_max.unwrap_or(defaults.max),
        },
        append_only: flag("append_only"),
        internal: flag("internal"),
        capabilities: model::Capabilities {
            audit: flag("audit"),
            journal: flag("journal"),
            locking: flag("locking"),
            cache_ttl_ms: t.cache_ttl_ms,
            // As in a declaration without `consistency`: a cached template reads cached.
            cache_cached: t.cache_ttl_ms.is_some(),
            retention: None,
        },
        access: t.access.clone(),
        owner: t.owner.clone(),
        tokens: t
            .tokens
            .iter()
            .map(|s| model::TokenSet {
                name: s.name.clone(),
                from: s.from.clone(),
                pattern: s.pattern.clone(),
                lowercase: s.lowercase,
                max_len: s.max_len.unwrap_or(model::TokenSet::DEFAULT_MAX_LEN),
                table: s
                    .table
                    .clone()
                    .unwrap_or_else(|| format!("{table}_{}", s.name)),
            })
            .collect(),
        counts: t
            .counts
            .iter()
            .map(|(name, from, by, _)| model::Count {
                name: name.clone(),
                from: from.clone(),
                by: by.clone(),
                filter: Vec::new(),
                maintained: false,
                pos: beds_codegen::Pos::default(),
            })
            .collect(),
        checks: checks_model,
        table,
    };
    if let Some(owner) = lowered.owner.as_deref()
        && owner != "id"
        && lowered.field(owner).is_none()
    {
        errors.push(syn::Error::new(
            Span::call_site(),
            format!(
                "`owner = \"{owner}\"` names no field; name the field holding the owning subject"
            ),
        ));
    }
    for unknown in lower::unknown_fields(&lowered) {
        let span = match &unknown {
            UnknownField::Unique { index, .. } => t.unique[*index].2,
            UnknownField::Index { index, .. } => t.indexes[*index].1,
            UnknownField::Tokens { index, .. } => {
                t.tokens[*index].span.unwrap_or(Span::call_site())
            }
            UnknownField::Differ { index, .. } => check_spans[*index],
        };
        errors.push(syn::Error::new(span, unknown.message()));
    }
    errors.finish()?;
    let record_impl = lower::record_impl(
        &domain,
        &lowered,
        &quote!(#name),
        &quote!(#id_ty),
        &quote!(#create),
        &quote!(#patch),
    );
    Ok(quote! {
        const _: () = {
            use ::beds_runtime::support as rt;

            #record_impl

            const _: () = {
                rt::assert_field::<#id_ty, rt::kinds::Ref>();
                #(#checks)*
            };
        };
    })
}

fn template_attr(t: &mut TemplateAttrs, meta: &ParseNestedMeta<'_>) -> syn::Result<()> {
    if meta.path.is_ident("retention") {
        return Err(meta.error(format!(
            "{}; remove it here and declare the template in a domain",
            model::DERIVE_RETENTION
        )));
    }
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
    } else if p.is_ident("owner") {
        t.owner = Some(string(meta)?);
    } else if p.is_ident("access") {
        meta.parse_nested_meta(|inner| {
            let op = model::OPERATIONS
                .iter()
                .find(|op| inner.path.is_ident(op))
                .ok_or_else(|| inner.error("expected create, fetch, update, delete or list"))?;
            let who: Vec<String> = inner
                .value()?
                .parse::<LitStr>()?
                .value()
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect();
            if who.is_empty() {
                return Err(inner.error("expected principals, e.g. \"owner,admin\""));
            }
            if who.iter().any(|w| w == "owner") && (*op == "list" || t.owner.is_none()) {
                return Err(inner.error(
                    "`owner` needs `owner = \"<field>\"` declared before `access`, and cannot apply to `list`",
                ));
            }
            t.access.push((op.to_string(), who));
            Ok(())
        })?;
    } else if p.is_ident("cache_ttl_ms") {
        t.cache_ttl_ms = Some(meta.value()?.parse::<LitInt>()?.base10_parse()?);
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
             internal, locking, journal, audit, cache_ttl_ms, owner, access(...), index(...), unique(...), tokens(...), count(...) or differ(...)",
        ));
    }
    Ok(())
}

fn field_attr(f: &mut FieldSpec, meta: &ParseNestedMeta<'_>) -> syn::Result<()> {
    let string = |meta: &ParseNestedMeta<'_>| -> syn::Result<String> {
        Ok(meta.value()?.parse::<LitStr>()?.value())
    };
    let p = &meta.path;
    if let Some(word) = lower::kind_words().into_iter().find(|w| p.is_ident(w)) {
        if f.kind.is_some() {
            return Err(meta.error("a field has exactly one kind"));
        }
        match word {
            "reference" => f.reference = Some(string(meta)?),
            "enumeration" => {
                f.values = string(meta)?
                    .split(',')
                    .map(|v| v.trim().to_string())
                    .collect();
            }
            _ => {}
        }
        f.kind = Some(word.to_string());
    } else if p.is_ident("min") {
        f.min = Some(number(&meta.value()?.parse()?)?);
    } else if p.is_ident("max") {
        f.max = Some(number(&meta.value()?.parse()?)?);
    } else if p.is_ident("pattern") {
        f.pattern = Some(string(meta)?);
    } else if p.is_ident("default") {
        f.default = Some(literal(&meta.value()?.parse()?)?);
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
        return Err(meta.error(format!(
            "unknown field attribute; expected a kind ({}) or min, max, pattern, optional, \
             default, set, column, on_delete, reference_id",
            lower::kind_forms().join(", ")
        )));
    }
    Ok(())
}

fn number(lit: &Lit) -> syn::Result<Number> {
    match lit {
        Lit::Int(l) => Ok(Number::Int(l.base10_parse()?)),
        Lit::Float(l) => Ok(Number::Float(l.base10_parse()?)),
        other => Err(syn::Error::new_spanned(other, "expected a number")),
    }
}

fn literal(lit: &Lit) -> syn::Result<Literal> {
    match lit {
        Lit::Bool(b) => Ok(Literal::Bool(b.value)),
        Lit::Int(l) => Ok(Literal::Int(l.base10_parse()?)),
        Lit::Float(l) => Ok(Literal::Float(l.base10_parse()?)),
        Lit::Str(s) => Ok(Literal::Text(s.value())),
        other => Err(syn::Error::new_spanned(
            other,
            "expected a bool, number or string default",
        )),
    }
}
