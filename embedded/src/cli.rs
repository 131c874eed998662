//! The `coordinator` command line: `serve` and `migrate` (the distributed coordinator of the
//! `coordinator` crate), `dev` (embedded mode, this crate), `validate`, `plan` and `healthcheck`.
//! It lives here rather than in `coordinator` because `dev` wires the worker in, and the
//! coordinator library does not depend on the worker.
//!
//! Exit codes of `validate` and `plan`: 0 valid, 1 invalid (the report is printed), 2 the file
//! cannot be read or parsed (or the arguments are wrong).

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};
use engine::config::Settings;
use engine::dag::{Dag, DagSpec, Limits, ValidationReport, compile};
use serde_json::json;

use coordinator::app::Coordinator;
use coordinator::store::{PgStore, Store};

use crate::{Embedded, EmbeddedOptions, Storage};

/// Exit code for a valid DAG.
pub const EXIT_VALID: u8 = 0;
/// Exit code for a DAG with validation errors.
pub const EXIT_INVALID: u8 = 1;
/// Exit code when the input cannot be read or parsed.
pub const EXIT_UNREADABLE: u8 = 2;

#[derive(Debug, Parser)]
#[command(name = "coordinator", version, about = "GreenLang Orchestrator coordinator")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the REST API, the scheduler, the outbox relay and the result consumer.
    Serve,
    /// Apply the database migrations and exit.
    Migrate,
    /// Run everything in one process on embedded parts (SQLite, an in-process queue, locks and
    /// workers): no PostgreSQL, RabbitMQ or Redis needed. Authentication is off unless
    /// GL_ORCHESTRATOR_AUTH=enabled is set.
    Dev(DevArgs),
    /// Exit 0 when this host's coordinator answers its health endpoint (for container checks).
    Healthcheck,
    /// Validate a JSON or YAML DAG file and print the report as JSON.
    Validate(FileArgs),
    /// Print the DAG's hash, topological levels and canonical order as JSON.
    Plan(FileArgs),
}

#[derive(Debug, clap::Args)]
struct DevArgs {
    /// The SQLite database file (created with its folder when missing).
    #[arg(long, default_value_os_t = crate::default_file(), conflicts_with = "memory")]
    data: PathBuf,
    /// Keep nothing on disk.
    #[arg(long)]
    memory: bool,
    /// In-process workers (each runs GL_ORCHESTRATOR_WORKER_CONCURRENCY attempts at once).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    workers: u32,
}

#[derive(Debug, clap::Args)]
struct FileArgs {
    /// Path of the DAG document (`.json`, `.yaml` or `.yml`; anything else is detected).
    path: PathBuf,
    /// Most nodes a DAG may have.
    #[arg(long, env = "GL_ORCHESTRATOR_MAX_DAG_NODES", default_value_t = 10_000,
          value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    max_dag_nodes: u32,
}

/// Runs the command line `args` (program name first), writing to `out` and `err`; returns the
/// process exit code.
pub fn run(args: impl IntoIterator<Item = OsString>, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = write!(err, "{}", e.render());
            return if e.use_stderr() { EXIT_UNREADABLE } else { EXIT_VALID };
        }
    };
    let (args, print): (&FileArgs, fn(&Dag) -> serde_json::Value) = match &cli.command {
        Command::Validate(a) => (a, |dag| json!(dag.report())),
        Command::Plan(a) => (a, plan_json),
        Command::Serve => return run_async(serve(), err),
        Command::Migrate => return run_async(migrate(), err),
        Command::Dev(a) => return run_async(dev(a), err),
        Command::Healthcheck => return healthcheck(err),
    };
    let limits = Limits { max_nodes: args.max_dag_nodes as usize };
    let (code, body) = match read_spec(&args.path) {
        Err(message) => {
            let _ = writeln!(err, "error: {message}");
            return EXIT_UNREADABLE;
        }
        Ok(spec) => match compile(spec, &limits) {
            Ok(dag) => (EXIT_VALID, print(&dag)),
            Err(report) => (EXIT_INVALID, report_json(&report)),
        },
    };
    let text = serde_json::to_string_pretty(&body).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    if writeln!(out, "{text}").is_err() {
        return EXIT_UNREADABLE;
    }
    code
}

/// Runs a service command on a fresh runtime; its error, if any, goes to `err` (exit 1).
fn run_async(command: impl std::future::Future<Output = Result<(), String>>, err: &mut dyn Write) -> u8 {
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            let _ = writeln!(err, "error: cannot start the runtime: {e}");
            return 1;
        }
    };
    let code = match runtime.block_on(command) {
        Ok(()) => 0,
        Err(message) => {
            let _ = writeln!(err, "error: {message}");
            1
        }
    };
    // The components were stopped within the grace period; whatever is still blocked (a call on
    // a dead connection) must not hold the exit.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    code
}

fn settings() -> Result<Settings, String> {
    let file = std::env::var("GL_ORCHESTRATOR_CONFIG_FILE").ok();
    let text = file
        .map(|f| std::fs::read_to_string(&f).map_err(|e| format!("GL_ORCHESTRATOR_CONFIG_FILE: {f}: {e}")))
        .transpose()?;
    Settings::load(std::env::vars(), text.as_deref()).map_err(|e| e.to_string())
}

async fn serve() -> Result<(), String> {
    let settings = settings()?;
    let telemetry = runtime::telemetry::init(&settings.log_level, "greenlang-orchestrator-coordinator");
    if settings.auth == engine::config::AuthMode::Enabled {
        settings.check_auth().map_err(|e| e.to_string())?;
    }
    let name = format!("coordinator-{}-{}", hostname(), std::process::id());
    let coordinator = Coordinator::start(settings, &name).await.map_err(|e| e.to_string())?;
    runtime::telemetry::shutdown_signal().await;
    tracing::info!("shutting down");
    coordinator.shutdown().await;
    telemetry.shutdown_within(engine::config::FLUSH_WITHIN);
    Ok(())
}

async fn dev(args: &DevArgs) -> Result<(), String> {
    let mut settings = settings()?;
    let telemetry = runtime::telemetry::init(&settings.log_level, "greenlang-orchestrator-dev");
    let auth_asked = std::env::var("GL_ORCHESTRATOR_AUTH").is_ok_and(|v| v == "enabled");
    if auth_asked {
        settings.check_auth().map_err(|e| e.to_string())?;
    } else {
        settings.auth = engine::config::AuthMode::Disabled;
        tracing::warn!("authentication is off (embedded mode); set GL_ORCHESTRATOR_AUTH=enabled to require tokens");
    }
    let storage = if args.memory { Storage::Memory } else { Storage::File(args.data.clone()) };
    let registry = crate::agents(&settings)?;
    let options = EmbeddedOptions { storage: storage.clone(), workers: args.workers, registry };
    let embedded = Embedded::start(settings, options).await.map_err(|e| e.to_string())?;
    let where_ = match &storage {
        Storage::File(path) => path.display().to_string(),
        Storage::Memory => "memory".to_owned(),
    };
    tracing::info!(addr = %embedded.coordinator.addr, storage = %where_, "embedded orchestrator ready");
    runtime::telemetry::shutdown_signal().await;
    tracing::info!("shutting down");
    embedded.shutdown().await;
    telemetry.shutdown_within(engine::config::FLUSH_WITHIN);
    Ok(())
}

async fn migrate() -> Result<(), String> {
    let settings = settings()?;
    runtime::telemetry::init_logging(&settings.log_level);
    let db = PgStore::connect(&settings).await.map_err(|e| e.to_string())?;
    db.migrate().await.map_err(|e| e.to_string())?;
    tracing::info!("migrations applied");
    Ok(())
}

fn healthcheck(err: &mut dyn Write) -> u8 {
    let result = settings().and_then(|s| {
        let port = s.http_addr.port();
        runtime::telemetry::http_ok(&format!("127.0.0.1:{port}"), "/api/v1/orchestrator/health")
    });
    match result {
        Ok(()) => 0,
        Err(message) => {
            let _ = writeln!(err, "unhealthy: {message}");
            1
        }
    }
}

fn hostname() -> String {
    std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()).unwrap_or_else(|| "local".to_owned())
}

fn read_spec(path: &Path) -> Result<DagSpec, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let text = String::from_utf8(bytes).map_err(|_| format!("{} is not UTF-8 text", path.display()))?;
    let extension = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    let parsed = match extension.as_deref() {
        Some("json") => DagSpec::from_json(&text),
        Some("yaml" | "yml") => DagSpec::from_yaml(&text),
        _ => DagSpec::parse(&text),
    };
    parsed.map_err(|e| format!("{}: {e}", path.display()))
}

fn report_json(report: &ValidationReport) -> serde_json::Value {
    json!(report)
}

fn plan_json(dag: &Dag) -> serde_json::Value {
    json!({
        "dag_id": dag.id(),
        "dag_hash": dag.hash(),
        "topology_levels": dag.level_ids(),
        "order": dag.order_ids(),
    })
}
