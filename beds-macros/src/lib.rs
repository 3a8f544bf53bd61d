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
use syn::{Data, DeriveInput, Fields, LitInt, LitStr, Path, Type, parse_macro_input};

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
}

enum Kind {
    String,
    Integer,
    Bool,
    Timestamp,
    Uuid,
    Ref(String),
}

struct FieldAttrs {
    kind: Option<Kind>,
    min: Option<LitInt>,
    max: Option<LitInt>,
    optional: bool,
    set: Option<String>,
    column: Option<String>,
    on_delete: Option<String>,
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
                checks.push(quote!(rt::assert_field::<#ty, rt::kinds::Integer>();));
                continue;
            }
            _ => {}
        }
        let mut f = FieldAttrs {
            kind: None,
            min: None,
            max: None,
            optional: false,
            set: None,
            column: None,
            on_delete: None,
        };
        for attr in field.attrs.iter().filter(|a| a.path().is_ident("beds")) {
            if let Err(e) = attr.parse_nested_meta(|meta| field_attr(&mut f, &meta)) {
                errors.push(e);
            }
        }
        match field_meta(&fname, &f, &field.ty) {
            Ok((meta, check)) => {
                metas.push(meta);
                checks.push(check);
                field_names.push(fname);
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
    errors.finish()?;

    let table = t.table.unwrap_or_else(|| template.clone());
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
                    id: rt::IdKind::Uuid7,
                    id_column: #id_column,
                    version_column: #version_column,
                    fields: &[#(#metas),*],
                    unique: &[#(#uniques),*],
                    page: rt::PageMeta { default: #page_default, max: #page_max },
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
        if kind.value() != "uuid7" {
            return Err(syn::Error::new_spanned(
                kind,
                "the only id kind is \"uuid7\"",
            ));
        }
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
    } else {
        return Err(meta.error(
            "unknown template attribute; expected domain, template, table, id, id_column, \
             version_column, page_default, page_max, create, patch or unique(...)",
        ));
    }
    Ok(())
}

fn field_attr(f: &mut FieldAttrs, meta: &ParseNestedMeta<'_>) -> syn::Result<()> {
    let string = |meta: &ParseNestedMeta<'_>| -> syn::Result<String> {
        Ok(meta.value()?.parse::<LitStr>()?.value())
    };
    let p = &meta.path;
    let kind = if p.is_ident("string") {
        Some(Kind::String)
    } else if p.is_ident("integer") {
        Some(Kind::Integer)
    } else if p.is_ident("bool") {
        Some(Kind::Bool)
    } else if p.is_ident("timestamp") {
        Some(Kind::Timestamp)
    } else if p.is_ident("uuid") {
        Some(Kind::Uuid)
    } else if p.is_ident("reference") {
        Some(Kind::Ref(string(meta)?))
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
    } else if p.is_ident("optional") {
        f.optional = true;
    } else if p.is_ident("set") {
        f.set = Some(string(meta)?);
    } else if p.is_ident("column") {
        f.column = Some(string(meta)?);
    } else if p.is_ident("on_delete") {
        f.on_delete = Some(string(meta)?);
    } else {
        return Err(meta.error(
            "unknown field attribute; expected a kind (string, integer, bool, timestamp, uuid, \
             reference = \"template\") or min, max, optional, set, column, on_delete",
        ));
    }
    Ok(())
}

/// The `FieldMeta` expression and the type check for one declared field.
fn field_meta(
    name: &str,
    f: &FieldAttrs,
    ty: &Type,
) -> Result<(TokenStream2, TokenStream2), String> {
    let Some(kind) = &f.kind else {
        return Err(format!(
            "field `{name}` needs a kind: #[beds(string, max = N)], #[beds(integer)], #[beds(bool)], \
             #[beds(timestamp)], #[beds(uuid)] or #[beds(reference = \"template\")]"
        ));
    };
    let int = |lit: &Option<LitInt>| -> Result<Option<i64>, String> {
        lit.as_ref()
            .map(|l| l.base10_parse::<i64>().map_err(|e| e.to_string()))
            .transpose()
    };
    let (kind_expr, marker) = match kind {
        Kind::String => {
            let max =
                int(&f.max)?.ok_or_else(|| format!("string field `{name}` needs `max = N`"))?;
            let min = int(&f.min)?.unwrap_or(0);
            let (Ok(max), Ok(min)) = (u32::try_from(max), u32::try_from(min)) else {
                return Err(format!("`{name}`: string lengths must fit a u32"));
            };
            (
                quote!(rt::FieldKind::String { min: #min, max: #max }),
                quote!(rt::kinds::Str),
            )
        }
        Kind::Integer => {
            let opt = |v: Option<i64>| match v {
                Some(v) => quote!(::core::option::Option::Some(#v)),
                None => quote!(::core::option::Option::None),
            };
            let (min, max) = (opt(int(&f.min)?), opt(int(&f.max)?));
            (
                quote!(rt::FieldKind::Integer { min: #min, max: #max }),
                quote!(rt::kinds::Integer),
            )
        }
        Kind::Bool => (quote!(rt::FieldKind::Bool), quote!(rt::kinds::Bool)),
        Kind::Timestamp => (
            quote!(rt::FieldKind::Timestamp),
            quote!(rt::kinds::Timestamp),
        ),
        Kind::Uuid => (quote!(rt::FieldKind::Uuid), quote!(rt::kinds::Uuid)),
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
            (
                quote!(rt::FieldKind::Ref { template: #template, on_delete: #on_delete }),
                quote!(rt::kinds::Ref),
            )
        }
    };
    if !matches!(kind, Kind::String | Kind::Integer) && (f.min.is_some() || f.max.is_some()) {
        return Err(format!(
            "`{name}`: min and max apply only to string and integer fields"
        ));
    }
    if f.on_delete.is_some() && !matches!(kind, Kind::Ref(_)) {
        return Err(format!("`{name}`: on_delete applies only to a reference"));
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
    let column = f.column.clone().unwrap_or_else(|| name.to_string());
    let optional = f.optional;
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
        }),
        quote!(rt::assert_field::<#ty, #marker>();),
    ))
}
