//! # glctl
//!
//! The command line client of the REST API. It reads the server from `--server` or `GLCTL_SERVER`
//! (default `http://127.0.0.1:8080`) and a bearer token from `--token` or `GLCTL_TOKEN`.
//! `run FILE --wait` with no server given and none answering runs the embedded orchestrator in
//! this process for that run (state kept in `.greenlang/orchestrator.db`).
//! (`GLCTL_*`, not `GL_ORCHESTRATOR_*`: the services refuse unknown variables of their own prefix,
//! and the client's must not break them when exported in the same shell.)
//!
//! Exit codes: 0 success; 1 the answer is negative (the API refused, a DAG is invalid, an
//! execution did not complete, provenance does not verify); 2 usage error, unreadable file or
//! unreachable server.

mod client;
mod embedded;
mod render;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Parser, Subcommand};
use engine::dag::{Dag, DagSpec, Limits, compile};
use serde_json::{Value, json};

pub use client::{Client, ClientError};

/// Where the client looks when no server is given.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:8080";

pub const EXIT_OK: u8 = 0;
pub const EXIT_NEGATIVE: u8 = 1;
pub const EXIT_USAGE: u8 = 2;

#[derive(Debug, Parser)]
#[command(name = "glctl", version, about = "Command line client of GreenLang Orchestrator")]
struct Cli {
    /// The server (the API lives under /api/v1/orchestrator) [default: http://127.0.0.1:8080].
    #[arg(long, global = true, env = "GLCTL_SERVER")]
    server: Option<String>,
    /// Bearer token (a JWT); not needed when the server runs with authentication off.
    #[arg(long, global = true, env = "GLCTL_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Stored DAGs.
    #[command(subcommand)]
    Dag(DagCommand),
    /// Start an execution of a stored DAG, or of a DAG file (applied first).
    Run(RunArgs),
    /// Executions.
    #[command(subcommand, alias = "execution")]
    Executions(ExecCommand),
    /// Provenance.
    #[command(subcommand)]
    Provenance(ProvenanceCommand),
}

#[derive(Debug, Subcommand)]
enum DagCommand {
    /// Create the DAG of FILE, or replace it if its id exists.
    Apply(FileArg),
    List,
    Get {
        dag_id: String,
    },
    /// Validate FILE locally (no server needed).
    Validate(FileArg),
    /// The stored DAG as YAML.
    Export {
        dag_id: String,
    },
    /// The DAG as a Mermaid diagram, or as a terminal tree with --tree.
    Graph {
        /// A stored DAG id, or a DAG file.
        dag: String,
        #[arg(long)]
        tree: bool,
    },
}

#[derive(Debug, clap::Args)]
struct FileArg {
    #[arg(short = 'f', long = "file")]
    file: PathBuf,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// A stored DAG id, or a DAG file (`.yaml`, `.yml`, `.json`).
    dag: String,
    /// The execution input: JSON, or @FILE.
    #[arg(long, default_value = "{}")]
    input: String,
    /// Follow the execution to its end with a live progress display.
    #[arg(long)]
    wait: bool,
    /// With --wait: give up after this many seconds (exit 1).
    #[arg(long, default_value_t = 3600)]
    timeout: u64,
}

#[derive(Debug, Subcommand)]
enum ExecCommand {
    List {
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        dag_id: Option<String>,
    },
    Get {
        execution_id: String,
    },
    Cancel {
        execution_id: String,
    },
    Resume {
        execution_id: String,
    },
}

#[derive(Debug, Subcommand)]
enum ProvenanceCommand {
    /// Recompute the whole chain locally from what the API returns; name the node that breaks it.
    Verify { execution_id: String },
}

/// A command ended without success: its exit code and what to print on stderr.
#[derive(Debug)]
struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    fn usage(message: impl Into<String>) -> Self {
        Self { code: EXIT_USAGE, message: message.into() }
    }

    fn negative(message: impl Into<String>) -> Self {
        Self { code: EXIT_NEGATIVE, message: message.into() }
    }
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Unreachable(_) => Failure::usage(e.to_string()),
            ClientError::Refused { .. } => Failure::negative(e.to_string()),
        }
    }
}

type Outcome = Result<u8, Failure>;

/// Runs the command line `args` (program name first); returns the exit code.
pub async fn run(args: Vec<std::ffi::OsString>, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = write!(err, "{}", e.render());
            return if e.use_stderr() { EXIT_USAGE } else { EXIT_OK };
        }
    };
    let client = Client::new(cli.server.as_deref().unwrap_or(DEFAULT_SERVER), cli.token.clone());
    let outcome = match cli.command {
        Command::Dag(c) => dag(&client, c, out).await,
        Command::Run(a) if cli.server.is_none() && a.wait && is_file(&a.dag) && !client.reachable().await => {
            embedded::run(a, out, err).await
        }
        Command::Run(a) => run_dag(&client, a, out, err).await,
        Command::Executions(c) => executions(&client, c, out).await,
        Command::Provenance(ProvenanceCommand::Verify { execution_id }) => verify(&client, &execution_id, out).await,
    };
    match outcome {
        Ok(code) => code,
        Err(f) => {
            let _ = writeln!(err, "error: {}", f.message);
            f.code
        }
    }
}

fn print(out: &mut dyn Write, value: &Value) -> Outcome {
    let text = serde_json::to_string_pretty(value).unwrap_or_default();
    writeln!(out, "{text}").map_err(|e| Failure::usage(format!("cannot write: {e}")))?;
    Ok(EXIT_OK)
}

fn write_text(out: &mut dyn Write, text: &str) -> Outcome {
    write!(out, "{text}").map_err(|e| Failure::usage(format!("cannot write: {e}")))?;
    Ok(EXIT_OK)
}

fn read_spec(path: &Path) -> Result<DagSpec, Failure> {
    let text = std::fs::read_to_string(path).map_err(|e| Failure::usage(format!("{}: {e}", path.display())))?;
    DagSpec::parse(&text).map_err(|e| Failure::usage(format!("{}: {e}", path.display())))
}

/// A DAG file compiled locally; an invalid one is reported (exit 1).
fn compile_file(path: &Path) -> Result<Dag, Failure> {
    compile(read_spec(path)?, &Limits::default()).map_err(|report| {
        let text = serde_json::to_string_pretty(&json!(report)).unwrap_or_default();
        Failure::negative(format!("{} is not a valid DAG:\n{text}", path.display()))
    })
}

/// `true` when `arg` names a file rather than a stored DAG id.
fn is_file(arg: &str) -> bool {
    Path::new(arg).is_file()
}

async fn dag(client: &Client, command: DagCommand, out: &mut dyn Write) -> Outcome {
    match command {
        DagCommand::Apply(f) => {
            let applied = apply(client, &f.file).await?;
            print(out, &applied)
        }
        DagCommand::List => print(out, &client.get("/dags?limit=500").await?),
        DagCommand::Get { dag_id } => print(out, &client.get(&format!("/dags/{dag_id}")).await?),
        DagCommand::Validate(f) => {
            let dag = compile_file(&f.file)?;
            print(out, &json!(dag.report()))
        }
        DagCommand::Export { dag_id } => {
            let exported = client.get(&format!("/dags/{dag_id}/export")).await?;
            write_text(out, exported["yaml"].as_str().unwrap_or_default())
        }
        DagCommand::Graph { dag, tree } => {
            let compiled = if is_file(&dag) { compile_file(Path::new(&dag))? } else { stored(client, &dag).await? };
            let text = if tree { render::tree(&compiled) } else { compiled.to_mermaid() };
            write_text(out, &text)
        }
    }
}

/// A stored DAG, compiled locally from its definition.
async fn stored(client: &Client, dag_id: &str) -> Result<Dag, Failure> {
    let body = client.get(&format!("/dags/{dag_id}")).await?;
    let mut definition = body["dag"].clone();
    let hash = definition["dag_hash"].as_str().map(str::to_owned);
    if let Some(doc) = definition.as_object_mut() {
        for computed in ["dag_hash", "revision", "created_at", "updated_at"] {
            doc.remove(computed);
        }
    }
    engine::dag::compile_stored(definition, hash.as_deref()).map_err(Failure::negative)
}

/// Creates the DAG of `path`, or replaces it when its id exists. Returns the API's answer.
async fn apply(client: &Client, path: &Path) -> Result<Value, Failure> {
    let dag = compile_file(path)?;
    let document = serde_json::to_value(dag.definition()).map_err(|e| Failure::usage(e.to_string()))?;
    match client.send(reqwest::Method::POST, "/dags", Some(&document)).await {
        Err(ClientError::Refused { status: 409, .. }) => {
            Ok(client.send(reqwest::Method::PUT, &format!("/dags/{}", dag.id()), Some(&document)).await?)
        }
        other => Ok(other?),
    }
}

fn parse_input(input: &str) -> Result<Value, Failure> {
    let text = match input.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path).map_err(|e| Failure::usage(format!("{path}: {e}")))?,
        None => input.to_owned(),
    };
    let value: Value = serde_json::from_str(&text).map_err(|e| Failure::usage(format!("--input: {e}")))?;
    if !value.is_object() {
        return Err(Failure::usage("--input must be a JSON object"));
    }
    Ok(value)
}

async fn run_dag(client: &Client, args: RunArgs, out: &mut dyn Write, err: &mut dyn Write) -> Outcome {
    let input = parse_input(&args.input)?;
    let dag_id = if is_file(&args.dag) {
        let applied = apply(client, Path::new(&args.dag)).await?;
        applied["dag"]["dag_id"].as_str().unwrap_or_default().to_owned()
    } else {
        args.dag.clone()
    };
    let body = json!({"input_data": input});
    let accepted = client.send(reqwest::Method::POST, &format!("/dags/{dag_id}/execute"), Some(&body)).await?;
    let id = accepted["execution_id"].as_str().unwrap_or_default().to_owned();
    if !args.wait {
        return print(out, &accepted);
    }
    let _ = writeln!(err, "execution {id} of {dag_id}");
    let (finished, trace) = render::follow(client, &id, Duration::from_secs(args.timeout)).await?;
    write_text(out, &render::summary(&finished, &trace))?;
    match finished["status"].as_str() {
        Some("completed") => Ok(EXIT_OK),
        other => Ok({
            let _ = writeln!(err, "execution {id} ended {}", other.unwrap_or("unknown"));
            EXIT_NEGATIVE
        }),
    }
}

async fn executions(client: &Client, command: ExecCommand, out: &mut dyn Write) -> Outcome {
    let answer = match command {
        ExecCommand::List { status, dag_id } => {
            let mut query = vec!["limit=100".to_owned()];
            query.extend(status.map(|s| format!("status={s}")));
            query.extend(dag_id.map(|d| format!("dag_id={d}")));
            client.get(&format!("/executions?{}", query.join("&"))).await?
        }
        ExecCommand::Get { execution_id } => client.get(&format!("/executions/{execution_id}")).await?,
        ExecCommand::Cancel { execution_id } => {
            client.send(reqwest::Method::POST, &format!("/executions/{execution_id}/cancel"), None).await?
        }
        ExecCommand::Resume { execution_id } => {
            client.send(reqwest::Method::POST, &format!("/executions/{execution_id}/resume"), None).await?
        }
    };
    print(out, &answer)
}

/// Recomputes the provenance of an execution here, from the API's output alone: the pinned
/// definition must hash to `dag_hash`, then every record, link and the execution hash are
/// recomputed with the same rules as the server (`docs/provenance.md`).
async fn verify(client: &Client, execution_id: &str, out: &mut dyn Write) -> Outcome {
    let prov = client.get(&format!("/executions/{execution_id}/provenance")).await?;
    let execution = client.get(&format!("/executions/{execution_id}")).await?;
    let verdict = render::verify_locally(&prov, &execution["execution"]).map_err(Failure::negative)?;
    write_text(out, &verdict.report)?;
    Ok(if verdict.valid { EXIT_OK } else { EXIT_NEGATIVE })
}
