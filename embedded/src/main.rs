//! The `coordinator` binary: everything lives in the library so tests drive the same code.

use std::process::ExitCode;

fn main() -> ExitCode {
    let code = embedded::cli::run(std::env::args_os(), &mut std::io::stdout(), &mut std::io::stderr());
    ExitCode::from(code)
}
