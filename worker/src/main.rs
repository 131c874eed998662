//! The `worker` binary; everything lives in the library.

fn main() -> std::process::ExitCode {
    worker::cli::main()
}
