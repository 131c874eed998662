//! The worker binary, built inside the test crate for process-level tests. Same code path as
//! `worker`.

fn main() -> std::process::ExitCode {
    worker::cli::main()
}
