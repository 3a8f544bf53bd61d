//! The one `beds` binary; its role comes from configuration.

fn main() -> std::process::ExitCode {
    beds_runtime::cli::main(&beds::CATALOG)
}
