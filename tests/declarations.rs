//! The corpus of bad declarations: each file must fail to compile, and its complete
//! diagnostic output (file, line, column, key path, message, hint) is pinned by a snapshot
//! in `tests/snapshots/`. A changed message shows up as a snapshot diff in review.

use std::path::Path;

#[test]
fn every_bad_declaration_fails_with_its_snapshot_message() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/declarations/bad");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("the corpus directory")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 25,
        "the corpus holds {} files; it must hold at least 25",
        files.len()
    );
    for path in files {
        let name = path.file_stem().unwrap().to_str().unwrap().to_string();
        let shown = format!("tests/declarations/bad/{name}.yaml");
        let source = std::fs::read_to_string(&path).unwrap();
        let diagnostics = match beds_codegen::compile_source(&shown, &source) {
            Ok(_) => panic!("{shown} compiled, but every file of the corpus must be rejected"),
            Err(d) => d,
        };
        for d in &diagnostics.0 {
            assert_eq!(d.file, shown, "every diagnostic names its file");
            assert!(d.pos.line >= 1, "{shown}: every diagnostic has a line: {d}");
            assert!(
                d.hint.is_some(),
                "{shown}: every diagnostic suggests a fix: {d}"
            );
        }
        insta::assert_snapshot!(name, diagnostics.to_string());
    }
}
