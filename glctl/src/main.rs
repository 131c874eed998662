//! `glctl`: thin; everything is in the library.

fn main() -> std::process::ExitCode {
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
        eprintln!("error: cannot start the runtime");
        return std::process::ExitCode::from(glctl::EXIT_USAGE);
    };
    let args = std::env::args_os().collect();
    let code = runtime.block_on(glctl::run(args, &mut std::io::stdout(), &mut std::io::stderr()));
    std::process::ExitCode::from(code)
}
