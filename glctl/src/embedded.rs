//! `run FILE --wait` with no server: the orchestrator started in this process for that one run.
//! Behind the `embedded` feature (on by default): without it, glctl is an API client only and
//! links no database, broker, cache or HTTP-server crate.

use std::io::Write;

use crate::{Failure, Outcome, RunArgs};

#[cfg(feature = "embedded")]
pub(crate) async fn run(args: RunArgs, out: &mut dyn Write, err: &mut dyn Write) -> Outcome {
    let data = embedded::default_file();
    let _ = writeln!(err, "no server at {}; running embedded (state in {})", crate::DEFAULT_SERVER, data.display());
    let embedded = start(data).await.map_err(|e| Failure::usage(format!("embedded mode: {e}")))?;
    let client = crate::Client::new(&format!("http://{}", embedded.coordinator.addr), None);
    let outcome = crate::run_dag(&client, args, out, err).await;
    embedded.shutdown().await;
    outcome
}

/// The embedded orchestrator on a free local port, authentication off; the other settings come
/// from the `GL_ORCHESTRATOR_*` environment as for `coordinator dev`.
#[cfg(feature = "embedded")]
async fn start(data: std::path::PathBuf) -> Result<embedded::Embedded, String> {
    const FORCED: [(&str, &str); 2] =
        [("GL_ORCHESTRATOR_HTTP_ADDR", "127.0.0.1:0"), ("GL_ORCHESTRATOR_AUTH", "disabled")];
    let env = std::env::vars()
        .filter(|(k, _)| !FORCED.iter().any(|(f, _)| f == k))
        .chain(FORCED.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    let settings = engine::config::Settings::load(env, None).map_err(|e| e.to_string())?;
    let registry = embedded::agents(&settings)?;
    let options = embedded::EmbeddedOptions { storage: embedded::Storage::File(data), workers: 2, registry };
    embedded::Embedded::start(settings, options).await.map_err(|e| e.to_string())
}

/// Built without the embedded engine: say so, and what to do instead.
#[cfg(not(feature = "embedded"))]
pub(crate) async fn run(_args: RunArgs, _out: &mut dyn Write, _err: &mut dyn Write) -> Outcome {
    Err(Failure::usage(format!(
        "no server at {}, and this glctl was built without the embedded engine (cargo feature `embedded`); \
         start a server (`coordinator dev`) or give one with --server / GLCTL_SERVER",
        crate::DEFAULT_SERVER
    )))
}
