//! Compile-fail tests: misusing `#[derive(Record)]` gives errors that point at the
//! mistake and say what to write instead; an error inside generated code points at a short
//! line of the formatted file; a template without `locking` has no lease methods.
//! The expected compiler output is in `tests/ui/`.

#[test]
fn derive_misuse_fails_to_compile_with_a_clear_error() {
    trybuild::TestCases::new().compile_fail("tests/ui/*.rs");
}
