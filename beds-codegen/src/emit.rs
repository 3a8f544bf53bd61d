//! Emits the Rust for compiled domains.
//!
//! Generated code names the runtime only through `::beds_runtime::support` (as `rt`),
//! the way prost's output names only `::prost`, so the runtime can reorganise freely.

use proc_macro2::{Ident, Span, TokenStream};
use quote::{format_ident, quote};

use crate::lower::condition;
use crate::model::{
    Domain, Field, FieldType, IdKind, Literal, OnDelete, ParamTarget, Query, SetOn, Template,
    WithWhat, camel, enum_type, key_type,
};

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
        let tarms = d.templates.iter().filter(|t| !t.internal).map(|t| {
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
    let doc = docs(
        None,
        &format!("Domain `{}`, compiled from `{}`.", d.name, d.file),
    );
    let templates = d.templates.iter().map(|t| template(d, t));
    let metas = d.templates.iter().map(|t| {
        let ty = type_ident(&t.name);
        quote!(<#ty as rt::Record>::META)
    });
    let queries = d.queries.iter().map(|q| query(d, q));
    let query_metas = d.queries.iter().map(|q| {
        let ty = Ident::new(&camel(&q.name), Span::call_site());
        quote!(<#ty as rt::Query>::META)
    });
    let query_accessors = d.queries.iter().map(|q| {
        let ty = Ident::new(&camel(&q.name), Span::call_site());
        let f = ident(&q.name);
        let doc = docs(
            None,
            &format!("Named query `{}` over `{}`.", q.name, q.from),
        );
        quote! {
            #doc
            pub fn #f(&self) -> rt::QueryClient<'a, #ty> {
                self.0.query::<#ty>()
            }
        }
    });
    let accessors = d.templates.iter().map(|t| {
        let ty = type_ident(&t.name);
        let f = ident(&t.name);
        let doc = docs(None, &format!("Typed requests for `{}`.", t.name));
        quote! {
            #doc
            pub fn #f(&self) -> rt::TemplateClient<'a, #ty> {
                self.0.template::<#ty>()
            }
        }
    });
    quote! {
        #doc
        pub mod #m {
            #![allow(clippy::all)]
            use ::beds_runtime::support as rt;

            pub static DOMAIN: rt::DomainMeta = rt::DomainMeta {
                name: #name,
                version: #version,
                templates: &[#(#metas),*],
                queries: &[#(#query_metas),*],
            };

            /// This domain's templates, reached from a [`rt::Client`].
            #[derive(Debug, Clone, Copy)]
            pub struct Templates<'a>(pub &'a rt::Client);

            impl<'a> Templates<'a> {
                #(#accessors)*
                #(#query_accessors)*
            }

            /// This domain's typed requests over `client`.
            pub fn client(client: &rt::Client) -> Templates<'_> {
                Templates(client)
            }

            #(#templates)*
            #(#queries)*
        }
    }
}

/// A named query: a unit type implementing `Query`, its typed parameters and metadata,
/// and for a query with `with` its item type.
fn query(d: &Domain, q: &Query) -> TokenStream {
    let ty = Ident::new(&camel(&q.name), Span::call_site());
    let params_ty = format_ident!("{}Params", ty);
    let record = type_ident(&q.from);
    let (domain, name) = (&d.name, &q.name);
    let mut param_fields = Vec::new();
    let mut param_metas = Vec::new();
    for p in &q.params {
        let n = ident(&p.name);
        let pname = &p.name;
        // What the parameter is compared with decides its type.
        let (base, kind) = match &p.target {
            ParamTarget::Field {
                template: tname,
                field,
                index: i,
            } => {
                let t_ty = type_ident(tname);
                let base = rust_type(
                    tname,
                    &Field {
                        optional: false,
                        ..field.clone()
                    },
                );
                (
                    base,
                    quote!(rt::ParamKind::Field(&<#t_ty as rt::Record>::META.fields[#i])),
                )
            }
            ParamTarget::Id { template: tname } => {
                let t_ty = type_ident(tname);
                let id = format_ident!("{}Id", t_ty);
                (
                    quote!(#id),
                    quote!(rt::ParamKind::Id(<#t_ty as rt::Record>::META)),
                )
            }
            ParamTarget::Token {
                template: tname,
                index: i,
                ..
            } => {
                let t_ty = type_ident(tname);
                (
                    quote!(::std::string::String),
                    quote!(rt::ParamKind::Token(&<#t_ty as rt::Record>::META.tokens[#i])),
                )
            }
        };
        let shaped = if p.list {
            quote!(::std::vec::Vec<#base>)
        } else {
            base
        };
        let (optional, list) = (p.optional, p.list);
        if optional {
            param_fields.push(quote! {
                #[serde(skip_serializing_if = "Option::is_none")]
                pub #n: ::core::option::Option<#shaped>,
            });
        } else {
            param_fields.push(quote!(pub #n: #shaped,));
        }
        param_metas.push(quote! {
            rt::ParamMeta { name: #pname, kind: #kind, optional: #optional, list: #list }
        });
    }
    let conditions = q.filter.iter().map(condition);
    let any = q.any.iter().map(|g| {
        let group = g.iter().map(condition);
        quote!(&[#(#group),*])
    });
    let order = q.order.iter().map(|(f, desc)| quote!((#f, #desc)));
    let (page_default, page_max, count) = (q.page.default, q.page.max, q.count);
    let with_metas = q.with.iter().map(|w| {
        let (wname, path) = (&w.name, &w.path);
        let what = match &w.what {
            WithWhat::Count(c) => quote!(rt::WithKind::Count(#c)),
            WithWhat::Field { name, .. } => quote!(rt::WithKind::Field(#name)),
        };
        quote!(rt::WithMeta { name: #wname, path: &[#(#path),*], what: #what })
    });
    let group = &q.group;
    let reads = q.reads(d);
    let access = &q.access;
    let warehouse = q.warehouse;
    let cache_ttl_ms = match q.cache_ttl_ms {
        Some(ms) => {
            let ms = proc_macro2::Literal::u64_unsuffixed(ms);
            quote!(Some(#ms))
        }
        None => quote!(None),
    };
    let doc = docs(
        q.doc.as_deref(),
        &if q.group.is_empty() {
            format!(
                "Named query `{}`: {} `{}` records.",
                q.name,
                if q.count { "counts" } else { "pages through" },
                q.from
            )
        } else {
            format!(
                "Named query `{}`: counts `{}` records per {}.",
                q.name,
                q.from,
                q.group.join(" and ")
            )
        },
    );
    let params_doc = docs(None, &format!("Parameters of `{}`.", q.name));
    let (item, item_defs) = if !q.group.is_empty() {
        group_item(d, q)
    } else if q.with.is_empty() {
        (quote!(#record), quote!())
    } else {
        let item_ty = format_ident!("{}Item", ty);
        let with_ty = format_ident!("{}With", ty);
        let fields = q.with.iter().map(|w| {
            let n = ident(&w.name);
            let rust = match &w.what {
                WithWhat::Count(_) => quote!(i64),
                WithWhat::Field { name, ty, template } => rust_type(
                    // The template at the end of the path names enum types.
                    template,
                    &Field {
                        name: name.clone(),
                        doc: None,
                        column: String::new(),
                        ty: ty.clone(),
                        optional: w.nullable,
                        set: None,
                        default: None,
                    },
                ),
            };
            quote!(pub #n: #rust,)
        });
        let item_doc = docs(
            None,
            &format!("An item of `{}`: the record and its `with` values.", q.name),
        );
        let with_doc = docs(
            None,
            &format!("The `with` values of an item of `{}`.", q.name),
        );
        (
            quote!(#item_ty),
            quote! {
                #item_doc
                #[derive(Debug, Clone, PartialEq, rt::serde::Serialize, rt::serde::Deserialize)]
                #[serde(crate = "::beds_runtime::support::serde")]
                pub struct #item_ty {
                    #[serde(flatten)]
                    pub record: #record,
                    pub with: #with_ty,
                }

                #with_doc
                #[derive(Debug, Clone, PartialEq, rt::serde::Serialize, rt::serde::Deserialize)]
                #[serde(crate = "::beds_runtime::support::serde")]
                pub struct #with_ty {
                    #(#fields)*
                }
            },
        )
    };
    quote! {
        #doc
        #[derive(Debug, Clone, Copy)]
        pub struct #ty;

        #params_doc
        #[derive(Debug, Clone, PartialEq, rt::serde::Serialize)]
        #[serde(crate = "::beds_runtime::support::serde")]
        pub struct #params_ty {
            #(#param_fields)*
        }

        #item_defs

        impl rt::Query for #ty {
            type Params = #params_ty;
            type Item = #item;
            const META: &'static rt::QueryMeta = &rt::QueryMeta {
                domain: #domain,
                name: #name,
                from: <#record as rt::Record>::META,
                params: &[#(#param_metas),*],
                filter: &[#(#conditions),*],
                any: &[#(#any),*],
                order: &[#(#order),*],
                page: rt::PageMeta { default: #page_default, max: #page_max },
                count: #count,
                with: &[#(#with_metas),*],
                group: &[#(#group),*],
                cache_ttl_ms: #cache_ttl_ms,
                reads: &[#(#reads),*],
                access: &[#(#access),*],
                warehouse: #warehouse,
            };
        }
    }
}

/// A grouped query's row type: its group keys, typed as the fields, and the count.
fn group_item(d: &Domain, q: &Query) -> (TokenStream, TokenStream) {
    let ty = Ident::new(&q.group_type(), Span::call_site());
    let from = d
        .templates
        .iter()
        .find(|t| t.name == q.from)
        .expect("checked at build time");
    let fields = q.group.iter().filter_map(|g| from.field(g)).map(|f| {
        let n = ident(&f.name);
        let rust = rust_type(&from.name, f);
        let doc = docs(None, &format!("The group's `{}`.", f.name));
        quote! {
            #doc
            pub #n: #rust,
        }
    });
    let doc = docs(
        None,
        &format!(
            "A row of `{}`: one {} and how many `{}` records have it.",
            q.name,
            q.group.join(" and "),
            q.from
        ),
    );
    (
        quote!(#ty),
        quote! {
            #doc
            #[derive(Debug, Clone, PartialEq, rt::serde::Serialize, rt::serde::Deserialize)]
            #[serde(crate = "::beds_runtime::support::serde")]
            pub struct #ty {
                #(#fields)*
                /// The number of records in the group (at least 1).
                pub count: i64,
            }
        },
    )
}

fn template(d: &Domain, t: &Template) -> TokenStream {
    let domain = &d.name;
    let ty = type_ident(&t.name);
    let id_ty = format_ident!("{}Id", ty);
    let create_ty = format_ident!("{}Create", ty);
    let patch_ty = format_ident!("{}Patch", ty);
    let routes = routes_ident(t);
    let record_impl = crate::lower::record_impl(
        domain,
        t,
        &quote!(#ty),
        &quote!(#id_ty),
        &quote!(#create_ty),
        &quote!(#patch_ty),
    );
    let id_inner = match t.id {
        IdKind::Uuid7 => quote!(rt::Uuid),
        IdKind::Sequence => quote!(i64),
    };
    let enums = t.fields.iter().filter_map(|f| enum_def(&t.name, f));
    let keys = t.unique.iter().map(|u| {
        let ty = Ident::new(&key_type(&t.name, &u.fields), Span::call_site());
        let doc = docs(
            None,
            &format!(
                "Names one `{}` by its unique {}.",
                t.name,
                u.fields.join(" and ")
            ),
        );
        let fields = u.fields.iter().filter_map(|name| t.field(name)).map(|f| {
            let n = ident(&f.name);
            let ty = rust_type(
                &t.name,
                &Field {
                    optional: false,
                    ..f.clone()
                },
            );
            quote!(pub #n: #ty,)
        });
        quote! {
            #doc
            #[derive(Debug, Clone, PartialEq, rt::serde::Serialize)]
            #[serde(crate = "::beds_runtime::support::serde")]
            pub struct #ty {
                #(#fields)*
            }
        }
    });
    let record_fields = t.fields.iter().map(|f| {
        let n = ident(&f.name);
        let ty = rust_type(&t.name, f);
        let doc = docs(f.doc.as_deref(), &field_doc(f));
        quote! {
            #doc
            pub #n: #ty,
        }
    });
    let input_fields: Vec<&Field> = t.fields.iter().filter(|f| f.set.is_none()).collect();
    let create_fields = input_fields.iter().map(|f| {
        let n = ident(&f.name);
        // A defaulted field may be left out too: `None` lets the declared default apply.
        let omittable = f.optional || f.default.is_some();
        let ty = rust_type(
            &t.name,
            &Field {
                optional: omittable,
                ..(*f).clone()
            },
        );
        let doc = docs(f.doc.as_deref(), &field_doc(f));
        let skip = omittable.then(|| quote!(#[serde(skip_serializing_if = "Option::is_none")]));
        quote! {
            #doc
            #skip
            pub #n: #ty,
        }
    });
    let patch_fields = input_fields.iter().map(|f| {
        let n = ident(&f.name);
        let inner = rust_type(&t.name, f);
        let doc = docs(
            f.doc.as_deref(),
            &format!(
                "{} Leave `None` to keep it{}.",
                field_doc(f),
                if f.optional {
                    "; `Some(None)` clears it"
                } else {
                    ""
                }
            ),
        );
        quote! {
            #doc
            #[serde(skip_serializing_if = "Option::is_none")]
            pub #n: Option<#inner>,
        }
    });
    let record_doc = docs(
        t.doc.as_deref(),
        &format!(
            "A `{}` record of domain `{}`, stored in table `{}`.",
            t.name, d.name, t.table
        ),
    );
    let id_doc = docs(None, &format!("The key of a `{}` record.", t.name));
    let create_doc = docs(
        None,
        &format!("The fields a caller supplies to create a `{}`.", t.name),
    );
    let patch_doc = docs(
        None,
        &format!(
            "A partial update of a `{}`: only `Some` fields change.",
            t.name
        ),
    );
    quote! {
        #id_doc
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord,
            rt::serde::Serialize, rt::serde::Deserialize,
        )]
        #[serde(crate = "::beds_runtime::support::serde", transparent)]
        pub struct #id_ty(pub #id_inner);

        impl rt::Key for #id_ty {}

        impl ::core::fmt::Display for #id_ty {
            fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                ::core::fmt::Display::fmt(&self.0, f)
            }
        }

        #record_doc
        #[derive(
            Debug, Clone, PartialEq,
            rt::serde::Serialize, rt::serde::Deserialize,
        )]
        #[serde(crate = "::beds_runtime::support::serde")]
        pub struct #ty {
            /// The record's key, generated by the server.
            pub id: #id_ty,
            /// Incremented by every update.
            pub version: i64,
            #(#record_fields)*
        }

        #create_doc
        #[derive(Debug, Clone, PartialEq, rt::serde::Serialize)]
        #[serde(crate = "::beds_runtime::support::serde")]
        pub struct #create_ty {
            #(#create_fields)*
        }

        #patch_doc
        #[derive(Debug, Clone, PartialEq, Default, rt::serde::Serialize)]
        #[serde(crate = "::beds_runtime::support::serde")]
        pub struct #patch_ty {
            #(#patch_fields)*
        }

        #record_impl

        #(#enums)*
        #(#keys)*

        pub static #routes: rt::Routes = rt::Routes::of::<#ty>();
    }
}

fn rust_type(template: &str, f: &Field) -> TokenStream {
    let base = match &f.ty {
        FieldType::String { .. } | FieldType::Text { .. } => quote!(::std::string::String),
        FieldType::Integer { .. } => quote!(i32),
        FieldType::BigInt { .. } => quote!(i64),
        FieldType::Float { .. } => quote!(f64),
        FieldType::Bool => quote!(bool),
        FieldType::Timestamp => quote!(rt::Timestamp),
        FieldType::Date => quote!(rt::Date),
        FieldType::Uuid => quote!(rt::Uuid),
        FieldType::Json => quote!(rt::Json),
        FieldType::Enum { .. } => {
            let ty = Ident::new(&enum_type(template, &f.name), Span::call_site());
            quote!(#ty)
        }
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

/// The Rust enum of an enum field; variants serialize as the declared values.
fn enum_def(template: &str, f: &Field) -> Option<TokenStream> {
    let FieldType::Enum { values } = &f.ty else {
        return None;
    };
    let ty = Ident::new(&enum_type(template, &f.name), Span::call_site());
    let doc = docs(None, &format!("The values of `{template}.{}`.", f.name));
    let variants = values.iter().map(|v| {
        let variant = Ident::new(&camel(v), Span::call_site());
        quote! {
            #[serde(rename = #v)]
            #variant,
        }
    });
    Some(quote! {
        #doc
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, Hash,
            rt::serde::Serialize, rt::serde::Deserialize,
        )]
        #[serde(crate = "::beds_runtime::support::serde")]
        pub enum #ty {
            #(#variants)*
        }
    })
}

fn field_doc(f: &Field) -> String {
    let bounds = |min: String, max: String| match (min.is_empty(), max.is_empty()) {
        (true, true) => String::new(),
        (false, true) => format!(", at least {min}"),
        (true, false) => format!(", at most {max}"),
        (false, false) => format!(", {min} to {max}"),
    };
    let opt = |v: &Option<i64>| v.map(|v| v.to_string()).unwrap_or_default();
    let what = match &f.ty {
        FieldType::String { min, max, pattern } => format!(
            "String of {}{max} characters{}.",
            min.map(|m| format!("{m} to "))
                .unwrap_or_else(|| "at most ".into()),
            pattern
                .as_ref()
                .map(|p| format!(" matching `{p}`"))
                .unwrap_or_default()
        ),
        FieldType::Text { max } => match max {
            Some(m) => format!("Text of at most {m} characters."),
            None => "Text.".into(),
        },
        FieldType::Integer { min, max } => format!("32-bit integer{}.", bounds(opt(min), opt(max))),
        FieldType::BigInt { min, max } => format!("64-bit integer{}.", bounds(opt(min), opt(max))),
        FieldType::Float { min, max } => format!(
            "Float{}.",
            bounds(
                min.map(|v| v.to_string()).unwrap_or_default(),
                max.map(|v| v.to_string()).unwrap_or_default()
            )
        ),
        FieldType::Bool => "Bool.".into(),
        FieldType::Timestamp => "Timestamp (UTC).".into(),
        FieldType::Date => "Calendar date.".into(),
        FieldType::Uuid => "UUID.".into(),
        FieldType::Enum { values } => format!("One of: {}.", values.join(", ")),
        FieldType::Json => "Any JSON value.".into(),
        FieldType::Ref {
            template,
            on_delete,
            ..
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
    let default = match &f.default {
        Some(Literal::Bool(b)) => format!(" Default `{b}`."),
        Some(Literal::Int(i)) => format!(" Default `{i}`."),
        Some(Literal::Float(x)) => format!(" Default `{x}`."),
        Some(Literal::Text(t)) => format!(" Default `{t:?}`."),
        None => String::new(),
    };
    format!("{what}{set}{default}")
}

/// Doc attributes: the declaration's own `doc:` text when it has one, then what the
/// compiler knows (type, constraints, storage), so every generated item is documented.
fn docs(declared: Option<&str>, generated: &str) -> TokenStream {
    let mut lines: Vec<String> = Vec::new();
    if let Some(text) = declared {
        lines.extend(text.lines().map(|l| format!(" {}", l.trim_end())));
        lines.push(String::new());
    }
    lines.push(format!(" {generated}"));
    quote!(#(#[doc = #lines])*)
}

fn routes_ident(t: &Template) -> Ident {
    format_ident!("{}_ROUTES", t.name.to_uppercase())
}

fn ident(name: &str) -> Ident {
    Ident::new(name, Span::call_site())
}

fn type_ident(name: &str) -> Ident {
    Ident::new(&camel(name), Span::call_site())
}
