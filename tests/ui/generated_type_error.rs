// A type error inside generated code is reported at a short line of the formatted file
// (`tests/ui/generated/tiny.rs`, written by beds-codegen from `tiny.yaml`), not at column
// 5452 of a single line. The error is provoked from outside: a local type named `str`
// shadows the primitive that the generated `route` function takes.
#[allow(non_camel_case_types, dead_code)]
mod shadowed {
    struct str;
    include!("generated/tiny.rs");
}

fn main() {}
