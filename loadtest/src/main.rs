//! The `loadtest` binary: one subcommand per scenario; results as JSON on stdout.

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "loadtest", about = "Load scenarios for GreenLang Orchestrator (through the REST API)")]
struct Cli {
    /// API root of the orchestrator under test.
    #[arg(long, default_value = "http://127.0.0.1:8080/api/v1/orchestrator")]
    base: String,
    /// Bearer token, when the server requires one.
    #[arg(long, env = "GLCTL_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// A chain of no-op nodes: per-step overhead and dependency-to-start latency.
    Chain {
        #[arg(long, default_value_t = 40)]
        steps: usize,
    },
    /// One execution of WIDTH independent no-op nodes and a fan-in: nodes per second. The server
    /// must allow WIDTH + 1 nodes (`GL_ORCHESTRATOR_MAX_DAG_NODES`).
    Fanout {
        #[arg(long, default_value_t = 10_000)]
        width: usize,
    },
    /// N executions of a 20-node DAG (10 ms per node) started at once.
    Concurrent {
        #[arg(long, default_value_t = 50)]
        n: usize,
    },
    /// The coordinator's resident memory per active execution, with N executions held mid-flight.
    Memory {
        #[arg(long, default_value_t = 1_000)]
        executions: usize,
        /// The coordinator's process id.
        #[arg(long)]
        pid: u32,
        #[arg(long, default_value = "http://127.0.0.1:8080/metrics")]
        metrics: String,
    },
    /// Issue 17's amplification DAG (WIDTH echo nodes per layer, all-to-all between layers, an
    /// input of INPUT_BYTES): how it ends and the coordinator's peak resident memory meanwhile.
    Amplify {
        #[arg(long, default_value_t = 2)]
        width: usize,
        #[arg(long, default_value_t = 20)]
        layers: usize,
        #[arg(long, default_value_t = 1024)]
        input_bytes: usize,
        /// The coordinator's process id.
        #[arg(long)]
        pid: u32,
    },
    /// Store, then validate and plan as stored, a random DAG of NODES nodes and 2×NODES edges.
    /// The server must allow it (`GL_ORCHESTRATOR_MAX_DAG_NODES`, `..._MAX_BODY_BYTES`).
    Validate {
        #[arg(long, default_value_t = 100_000)]
        nodes: usize,
    },
    /// Replay a workflow instance (`loadtest/shapes/instances/*.json`) with runtimes scaled so
    /// that a zero-overhead run takes about TARGET_MS on SLOTS worker slots; compare the makespan
    /// with that simulation and with the lower bound.
    Shapes {
        #[arg(long, required = true, num_args = 1..)]
        files: Vec<std::path::PathBuf>,
        /// Worker slots of the deployment (workers × GL_ORCHESTRATOR_WORKER_CONCURRENCY).
        #[arg(long, default_value_t = 16)]
        slots: usize,
        #[arg(long, default_value_t = 10_000)]
        target_ms: u64,
    },
    /// Many executions with a bounded number in flight, sampling memory and queues; writes the
    /// memory curve as SVG to --svg.
    Soak {
        #[arg(long, default_value_t = 10_000)]
        executions: usize,
        #[arg(long, default_value_t = 100)]
        in_flight: usize,
        /// Processes to watch, as NAME=PID (e.g. coordinator=1234).
        #[arg(long, value_delimiter = ',')]
        watch: Vec<String>,
        /// The coordinator's Prometheus endpoint.
        #[arg(long, default_value = "http://127.0.0.1:8080/metrics")]
        metrics: String,
        #[arg(long, default_value = "loadtest/results/soak.svg")]
        svg: std::path::PathBuf,
    },
}

const HOUR: std::time::Duration = std::time::Duration::from_secs(3600);

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let client = loadtest::Client::new(&cli.base, cli.token);
    // On stderr, and only when it is a terminal (indicatif hides it otherwise): stdout is the JSON.
    let progress = indicatif::ProgressBar::new_spinner();
    progress.set_style(
        indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    progress.set_message(format!("{:?}", cli.scenario));
    progress.enable_steady_tick(std::time::Duration::from_millis(100));
    let result = match cli.scenario {
        Scenario::Chain { steps } => loadtest::chain::run(&client, steps.max(2)).await.map(|r| r.to_json()),
        Scenario::Fanout { width } => loadtest::fanout::run(&client, width.max(1), HOUR).await.map(|r| r.to_json()),
        Scenario::Concurrent { n } => loadtest::concurrent::run(&client, n.max(1), HOUR).await.map(|r| r.to_json()),
        Scenario::Memory { executions, pid, metrics } => {
            loadtest::memory::run(&client, &metrics, pid, executions.max(1), HOUR).await.map(|r| r.to_json())
        }
        Scenario::Amplify { width, layers, input_bytes, pid } => {
            let (width, layers) = (width.max(1), layers.max(1));
            loadtest::amplify::run(&client, pid, width, layers, input_bytes, HOUR).await.map(|r| r.to_json())
        }
        Scenario::Validate { nodes } => loadtest::validate::run(&client, nodes.max(2)).await.map(|r| r.to_json()),
        Scenario::Shapes { files, slots, target_ms } => {
            shapes(&client, &files, slots.max(1), target_ms, &progress).await
        }
        Scenario::Soak { executions, in_flight, watch, metrics, svg } => {
            soak(&client, executions, in_flight, &watch, &metrics, &svg).await
        }
    };
    progress.finish_and_clear();
    match result {
        Ok(json) => {
            println!("{json:#}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("loadtest: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Runs `shapes` on each instance file in turn; one JSON array of results.
async fn shapes(
    client: &loadtest::Client,
    files: &[std::path::PathBuf],
    slots: usize,
    target_ms: u64,
    progress: &indicatif::ProgressBar,
) -> Result<serde_json::Value, loadtest::LoadError> {
    let mut results = Vec::new();
    for (done, file) in files.iter().enumerate() {
        let text =
            std::fs::read_to_string(file).map_err(|e| loadtest::LoadError::Api(format!("{}: {e}", file.display())))?;
        let instance = loadtest::shapes::Instance::parse(&text)?;
        progress.set_message(format!(
            "shapes {done}/{}: {} ({} tasks)",
            files.len(),
            instance.name,
            instance.tasks.len()
        ));
        results.push(loadtest::shapes::run(client, &instance, slots, target_ms).await?.to_json());
    }
    Ok(serde_json::Value::Array(results))
}

/// Runs `soak`, watching the NAME=PID processes, and writes the memory curve to `svg`.
async fn soak(
    client: &loadtest::Client,
    executions: usize,
    in_flight: usize,
    watch: &[String],
    metrics: &str,
    svg: &std::path::Path,
) -> Result<serde_json::Value, loadtest::LoadError> {
    let watched: Vec<(&str, u32)> =
        watch.iter().filter_map(|w| w.split_once('=')).filter_map(|(n, p)| Some((n, p.parse().ok()?))).collect();
    let pids: Vec<u32> = watched.iter().map(|(_, p)| *p).collect();
    let every = std::time::Duration::from_secs(2);
    let result = loadtest::soak::run(client, metrics, executions.max(1), in_flight.max(1), &pids, every).await?;
    let names: Vec<&str> = watched.iter().map(|(n, _)| *n).collect();
    if let Err(e) = std::fs::write(svg, loadtest::soak::memory_svg(&result, &names)) {
        eprintln!("loadtest: cannot write {}: {e}", svg.display());
    }
    Ok(result.to_json())
}
