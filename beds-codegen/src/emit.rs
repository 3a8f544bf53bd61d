//! Emits the Rust for compiled domains.
//!
//! Generated code names the runtime only through `::beds_runtime::support` (as `rt`),
//! the way prost's output names only `::prost`, so the runtime can reorganise freely.

use proc_macro2::{Ident, Span, TokenStream};
use quote::{format_ident, quote};

use crate::model::{Domain, Field, FieldType, OnDelete, SetOn, Template};

/// The whole generated file for a set of domains.
pub fn domains(domains: &[Domain]) -> TokenStream {
    let modules = domains.iter().map(domain_module);
    let statics = domains.iter().map(|d| {
        let m = ident(&d.name);
        quote!(&#m::DOMAIN)
    });
    let arms = domains.iter().map(|d| {
        let m = ident(&d.name);
        let name = &d.name;
        let tarms = d.templates.iter().map(|t| {
            let tname = &t.name;
            let routes = routes_ident(t);
            quote!(#tname => ::core::result::Result::Ok(&#m::#routes),)
        });
        quote! {
            #name => match template {
                #(#tarms)*
                _ => ::core::result::Result::Err(rt::RouteError::UnknownTemplate),
            },
        }
    });
    quote! {
        #(#modules)*

        /// Every compiled domain and its dispatch table.
        pub static CATALOG: ::beds_runtime::support::Catalog = ::beds_runtime::support::Catalog {
            domains: &[#(#statics),*],
            route,
        };

        fn route(
            domain: &str,
            template: &str,
        ) -> ::core::result::Result<&'static ::beds_runtime::support::Routes, ::beds_runtime::support::RouteError> {
            use ::beds_runtime::support as rt;
            match domain {
                #(#arms)*
                _ => ::core::result::Result::Err(rt::RouteError::UnknownDomain),
            }
        }
    }
}

fn domain_module(d: &Domain) -> TokenStream {
    let m = ident(&d.name);
    let name = &d.name;
    let version = d.version as u32;
    let doc = format!("Domain `{}`, compiled from `{}`.", d.name, d.file);
    let templates = d.templates.iter().map(|t| template(&d.name, t));
    let metas = d.templates.iter().map(|t| {
        let ty = type_ident(&t.name);
        quote!(<#ty as rt::Record>::META)
    });
    let accessors = d.templates.iter().map(|t| {
        let ty = type_ident(&t.name);
        let f = ident(&t.name);
        let doc = format!("Typed requests for `{}`.", t.name);
        quote! {
            #[doc = #doc]
            pub fn #f(&self) -> rt::TemplateClient<'a, #ty> {
                self.0.template::<#ty>()
            }
        }
    });
    quote! {
        #[doc = #doc]
        pub mod #m {
            #![allow(clippy::all)]
            use ::beds_runtime::support as rt;

            pub static DOMAIN: rt::DomainMeta = rt::DomainMeta {
                name: #name,
                version: #version,
                templates: &[#(#metas),*],
            };

            /// This domain's templates, reached from a [`rt::Client`].
            #[derive(Debug, Clone, Copy)]
            pub struct Templates<'a>(pub &'a rt::Client);

            impl<'a> Templates<'a> {
                #(#accessors)*
            }

            /// This domain's typed requests over `client`.
            pub fn client(client: &rt::Client) -> Templates<'_> {
                Templates(client)
            }

            #(#templates)*
        }
    }
}

fn template(domain: &str, t: &Template) -> TokenStream {
    let ty = type_ident(&t.name);
    let id_ty = format_ident!("{}Id", ty);
    let create_ty = format_ident!("{}Create", ty);
    let patch_ty = format_ident!("{}Patch", ty);
    let routes = routes_ident(t);
    let name = &t.name;
    let table = &t.table;
    let id_column = &t.id_column;
    let version_column = &t.version_column;
    let id_kind = t.id.name();
    let page_default = t.page.default;
    let page_max = t.page.max;
    let uniques = t.unique.iter().map(|u| {
        let fields = u.fields.join(",");
        let ci = u.case_insensitive.then(|| quote!(, case_insensitive));
        quote!(#[beds(unique(fields = #fields #ci))])
    });
    let record_fields = t.fields.iter().map(|f| {
        let n = ident(&f.name);
        let ty = rust_type(f);
        let attr = field_attr(f);
        let doc = field_doc(f);
        quote! {
            #[doc = #doc]
            #attr
            pub #n: #ty,
        }
    });
    let input_fields: Vec<&Field> = t.fields.iter().filter(|f| f.set.is_none()).collect();
    let create_fields = input_fields.iter().map(|f| {
        let n = ident(&f.name);
        let ty = rust_type(f);
        let doc = field_doc(f);
        let skip = f
            .optional
            .then(|| quote!(#[serde(skip_serializing_if = "Option::is_none")]));
        quote! {
            #[doc = #doc]
            #skip
            pub #n: #ty,
        }
    });
    let patch_fields = input_fields.iter().map(|f| {
        let n = ident(&f.name);
        let inner = rust_type(f);
        let doc = format!(
            "{} Leave `None` to keep it{}.",
            field_doc(f),
            if f.optional {
                "; `Some(None)` clears it"
            } else {
                ""
            }
        );
        quote! {
            #[doc = #doc]
            #[serde(skip_serializing_if = "Option::is_none")]
            pub #n: Option<#inner>,
        }
    });
    let record_doc = format!("A `{}` record, as stored in `{}`.", t.name, t.table);
    let id_doc = format!("The key of a `{}` record.", t.name);
    let create_doc = format!("The fields a caller supplies to create a `{}`.", t.name);
    let patch_doc = format!(
        "A partial update of a `{}`: only `Some` fields change.",
        t.name
    );
    quote! {
        #[doc = #id_doc]
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord,
            rt::serde::Serialize, rt::serde::Deserialize,
        )]
        #[serde(crate = "::beds_runtime::support::serde", transparent)]
        pub struct #id_ty(pub rt::Uuid);

        impl rt::Key for #id_ty {
            fn uuid(&self) -> rt::Uuid {
                self.0
            }
        }

        impl ::core::fmt::Display for #id_ty {
            fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                ::core::fmt::Display::fmt(&self.0, f)
            }
        }

        #[doc = #record_doc]
        #[derive(
            Debug, Clone, PartialEq,
            rt::serde::Serialize, rt::serde::Deserialize, rt::Record,
        )]
        #[serde(crate = "::beds_runtime::support::serde")]
        #[beds(
            domain = #domain, template = #name, table = #table,
            id = #id_kind, id_column = #id_column, version_column = #version_column,
            page_default = #page_default, page_max = #page_max,
            create = #create_ty, patch = #patch_ty,
        )]
        #(#uniques)*
        pub struct #ty {
            /// The record's key, generated by the server.
            pub id: #id_ty,
            /// Incremented by every update.
            pub version: i64,
            #(#record_fields)*
        }

        #[doc = #create_doc]
        #[derive(Debug, Clone, PartialEq, rt::serde::Serialize)]
        #[serde(crate = "::beds_runtime::support::serde")]
        pub struct #create_ty {
            #(#create_fields)*
        }

        #[doc = #patch_doc]
        #[derive(Debug, Clone, PartialEq, Default, rt::serde::Serialize)]
        #[serde(crate = "::beds_runtime::support::serde")]
        pub struct #patch_ty {
            #(#patch_fields)*
        }

        pub static #routes: rt::Routes = rt::Routes::of::<#ty>();
    }
}

/// The `#[beds(...)]` attribute that tells the `Record` derive what a field is.
fn field_attr(f: &Field) -> TokenStream {
    let mut parts: Vec<TokenStream> = Vec::new();
    match &f.ty {
        FieldType::String { min, max } => {
            parts.push(quote!(string));
            if let Some(min) = min {
                parts.push(quote!(min = #min));
            }
            parts.push(quote!(max = #max));
        }
        FieldType::Integer { min, max } => {
            parts.push(quote!(integer));
            if let Some(min) = min {
                parts.push(quote!(min = #min));
            }
            if let Some(max) = max {
                parts.push(quote!(max = #max));
            }
        }
        FieldType::Bool => parts.push(quote!(bool)),
        FieldType::Timestamp => parts.push(quote!(timestamp)),
        FieldType::Uuid => parts.push(quote!(uuid)),
        FieldType::Ref {
            template,
            on_delete,
        } => {
            let od = on_delete.name();
            parts.push(quote!(reference = #template, on_delete = #od));
        }
    }
    if f.optional {
        parts.push(quote!(optional));
    }
    match f.set {
        Some(SetOn::Create) => parts.push(quote!(set = "on_create")),
        Some(SetOn::Update) => parts.push(quote!(set = "on_update")),
        None => {}
    }
    let column = &f.column;
    if *column != f.name {
        parts.push(quote!(column = #column));
    }
    quote!(#[beds(#(#parts),*)])
}

fn rust_type(f: &Field) -> TokenStream {
    let base = match &f.ty {
        FieldType::String { .. } => quote!(::std::string::String),
        FieldType::Integer { .. } => quote!(i64),
        FieldType::Bool => quote!(bool),
        FieldType::Timestamp => quote!(rt::Timestamp),
        FieldType::Uuid => quote!(rt::Uuid),
        FieldType::Ref { template, .. } => {
            let id = format_ident!("{}Id", type_ident(template));
            quote!(#id)
        }
    };
    if f.optional {
        quote!(::core::option::Option<#base>)
    } else {
        base
    }
}

fn field_doc(f: &Field) -> String {
    let what = match &f.ty {
        FieldType::String { min, max } => match min {
            Some(min) => format!("String of {min} to {max} characters."),
            None => format!("String of at most {max} characters."),
        },
        FieldType::Integer { .. } => "Integer.".into(),
        FieldType::Bool => "Bool.".into(),
        FieldType::Timestamp => "Timestamp (UTC).".into(),
        FieldType::Uuid => "UUID.".into(),
        FieldType::Ref {
            template,
            on_delete,
        } => format!(
            "Reference to a `{template}`; {}.",
            match on_delete {
                OnDelete::Restrict => "the target cannot be deleted while referenced",
                OnDelete::Cascade => "deleted with its target",
                OnDelete::SetNull => "cleared when its target is deleted",
            }
        ),
    };
    let set = match f.set {
        Some(SetOn::Create) => " Set by the server on create.",
        Some(SetOn::Update) => " Set by the server on create and update.",
        None => "",
    };
    format!(" {what}{set}")
}

fn routes_ident(t: &Template) -> Ident {
    format_ident!("{}_ROUTES", t.name.to_uppercase())
}

fn ident(name: &str) -> Ident {
    Ident::new(name, Span::call_site())
}

fn type_ident(name: &str) -> Ident {
    Ident::new(&crate::model::camel(name), Span::call_site())
}
