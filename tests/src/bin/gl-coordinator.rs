//! The coordinator binary, built inside the test crate so process-level tests (kill -9, restart)
//! can find it through `CARGO_BIN_EXE_gl-coordinator`. Same code path as `coordinator`.

fn main() -> std::process::ExitCode {
    let code = embedded::cli::run(std::env::args_os(), &mut std::io::stdout(), &mut std::io::stderr());
    std::process::ExitCode::from(code)
}
