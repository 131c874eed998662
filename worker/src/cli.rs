//! The worker process: settings, logging, run until SIGTERM or Ctrl-C.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use engine::config::Settings;
use engine::topology::Topology;
use runtime::amqp::AmqpConnector;

use crate::WorkerOptions;
use crate::agents::Registry;

/// What `main` runs: the worker, or with the argument `healthcheck`, a check of a running
/// worker's health endpoint (exit 0 when it answers).
pub fn main() -> ExitCode {
    let settings = match load() {
        Ok(s) => s,
        Err(message) => {
            eprintln!("worker: {message}");
            return ExitCode::from(2);
        }
    };
    match std::env::args().nth(1).as_deref() {
        None => {}
        Some("healthcheck") => return healthcheck(&settings),
        Some(other) => {
            eprintln!("worker: unknown argument {other:?}; usage: worker [healthcheck]");
            return ExitCode::from(2);
        }
    }
    let telemetry = runtime::telemetry::init(&settings.log_level, "greenlang-orchestrator-worker");
    let registry = match agents(&settings) {
        Ok(r) => r,
        Err(message) => {
            eprintln!("worker: {message}");
            return ExitCode::from(2);
        }
    };
    let options = options(&settings, registry);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("worker: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let metrics_addr = settings.worker_metrics_addr;
    runtime.block_on(async move {
        let health =
            crate::metrics::HealthView { liveness: options.liveness.clone(), stall_after: settings.stall_after() };
        match options.metrics.clone().serve(metrics_addr, health).await {
            Ok(addr) => tracing::info!(%addr, "worker metrics listening"),
            Err(e) => tracing::warn!(error = %e, addr = %metrics_addr, "cannot serve worker metrics"),
        }
        crate::run(options, runtime::telemetry::shutdown_signal()).await;
    });
    telemetry.shutdown_within(engine::config::FLUSH_WITHIN);
    runtime.shutdown_timeout(Duration::from_millis(100));
    ExitCode::SUCCESS
}

/// `worker healthcheck`: exit 0 when the running worker's health endpoint answers.
fn healthcheck(settings: &Settings) -> ExitCode {
    let addr = format!("127.0.0.1:{}", settings.worker_metrics_addr.port());
    match runtime::telemetry::http_ok(&addr, "/health") {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("unhealthy: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The worker as the settings describe it: RabbitMQ, its pools, concurrency, id and grace.
fn options(settings: &Settings, registry: Registry) -> WorkerOptions {
    WorkerOptions {
        queue: Arc::new(AmqpConnector::new(
            settings.amqp_url.clone(),
            Topology::new(&settings.queue_prefix, settings.delivery_limit),
            settings.amqp_timeout(),
        )),
        pools: settings.worker_queues.clone(),
        concurrency: settings.worker_concurrency,
        worker_id: settings.worker_id.clone().unwrap_or_else(|| format!("worker-{}", std::process::id())),
        grace: settings.component_grace(),
        bounds: settings.bounds(),
        result_keys: settings.result_keys.clone(),
        registry,
        metrics: Default::default(),
        liveness: Default::default(),
    }
}

fn load() -> Result<Settings, String> {
    let file = std::env::var("GL_ORCHESTRATOR_CONFIG_FILE").ok();
    let text = file
        .map(|f| std::fs::read_to_string(&f).map_err(|e| format!("GL_ORCHESTRATOR_CONFIG_FILE: {f}: {e}")))
        .transpose()?;
    Settings::load(std::env::vars(), text.as_deref()).map_err(|e| e.to_string())
}

/// The agent registry: the built-in agents plus those of `GL_ORCHESTRATOR_AGENTS_FILE`.
pub fn agents(settings: &Settings) -> Result<Registry, String> {
    let text = match &settings.agents_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| format!("GL_ORCHESTRATOR_AGENTS_FILE: {}: {e}", path.display()))?,
        ),
        None => None,
    };
    let limit = Duration::from_secs(u64::from(settings.agent_connect_timeout_seconds));
    Ok(Registry::from_yaml(text.as_deref())?
        .with_connect_timeout(limit)
        .with_output_cap(settings.max_node_output_bytes))
}
