//! Compiles `domains/*.yaml` into Rust in OUT_DIR; an invalid declaration fails the build
//! with every error listed.

fn main() {
    if let Err(e) = beds_codegen::Builder::new()
        .domains_dir("domains")
        .compile()
    {
        // Cargo shows a failed build script's stderr; one line per problem.
        eprintln!("{e}");
        std::process::exit(1);
    }
}
