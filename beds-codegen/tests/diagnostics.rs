//! Bad declarations fail with every error listed, each naming the file, the place, the
//! key path and a fix.

use beds_codegen::{Builder, Error, compile_source};

fn errors(source: &str) -> Vec<String> {
    compile_source("domains/bad.yaml", source)
        .expect_err("the declaration is invalid")
        .0
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[test]
fn unknown_field_type_names_file_field_and_fix() {
    let e = errors(
        "domain: d\ntemplates:\n  account:\n    fields:\n      email: { type: strng, max: 5 }\n",
    );
    assert_eq!(
        e,
        [
            "domains/bad.yaml:5:22: error at `templates.account.fields.email.type`: unknown field type `strng`\n  hint: did you mean `string`?"
        ]
    );
}

#[test]
fn every_error_is_reported_at_once() {
    let e = errors(
        "domain: d\n\
         templates:\n  \
           account:\n    \
             colour: red\n    \
             fields:\n      \
               id: { type: uuid }\n      \
               name: { type: string }\n      \
               age: { type: integer, min: 9, max: 1 }\n  \
           post:\n    \
             fields:\n      \
               by: { ref: acount }\n",
    );
    let joined = e.join("\n");
    for expected in [
        "4:5: error at `templates.account.colour`: unknown key `colour`",
        "6:7: error at `templates.account.fields.id`: `id` is reserved",
        "error at `templates.account.fields.name.max`: a string field needs `max`",
        "error at `templates.account.fields.age.min`: `min` is greater than `max`",
        "11:18: error at `templates.post.fields.by.ref`: `acount` is not a template of this domain\n  hint: did you mean `account`?",
    ] {
        assert!(
            joined.contains(expected),
            "missing {expected:?} in:\n{joined}"
        );
    }
    assert_eq!(e.len(), 5, "{joined}");
}

#[test]
fn yaml_syntax_errors_have_a_position() {
    let e = errors("domain: d\ntemplates: [a, b\n");
    assert_eq!(e.len(), 1);
    assert!(
        e[0].starts_with("domains/bad.yaml:") && e[0].contains("invalid YAML"),
        "{}",
        e[0]
    );
}

#[test]
fn generated_type_names_must_not_clash() {
    let e = errors(
        "domain: d\ntemplates:\n  account:\n    fields: { a: { type: bool } }\n  account_id:\n    fields: { a: { type: bool } }\n",
    );
    assert!(
        e[0].contains("would generate type `AccountId`, already defined by account"),
        "{e:?}"
    );
}

#[test]
fn the_builder_fails_the_build_naming_the_file_and_field() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("shop.yaml"),
        "domain: shop\ntemplates:\n  item:\n    fields:\n      price: { type: money }\n",
    )
    .unwrap();
    let out = dir.path().join("out.rs");
    let err = Builder::new()
        .domains_dir(dir.path())
        .out_file(&out)
        .cargo_directives(false)
        .compile()
        .unwrap_err();
    let Error::Invalid(diags) = &err else {
        panic!("expected invalid declarations, got {err}");
    };
    let text = err.to_string();
    assert!(
        text.contains("shop.yaml:5:") && text.contains("templates.item.fields.price.type"),
        "{text}"
    );
    assert!(text.contains("unknown field type `money`"), "{text}");
    assert_eq!(diags.0.len(), 1);
    assert!(
        !out.exists(),
        "nothing is generated from an invalid declaration"
    );
}
