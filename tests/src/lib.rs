//! The integration harness, by role: [`Stack`] (one test's world), `processes` (signals, bounded
//! termination, child processes), `services` (the machine's PostgreSQL, RabbitMQ and Redis as a test
//! meets them), `fixtures` (the DAGs and workloads tests run) and `samplers` (what a test measures
//! while the system runs).
//!
//! [`Stack::start`] gives a test its own world: a freshly created and migrated PostgreSQL
//! database, a unique RabbitMQ prefix, coordinators on port 0 and in-process workers, all talking
//! to the real services. [`Stack::shutdown`] stops everything and deletes the database and the
//! queues; a stack dropped without it (a failed assertion, a panic) deletes them too. Tests wait on
//! conditions with deadlines, never on fixed sleeps, and every call the harness makes to the API
//! or the broker is bounded, so a failure is a message saying what was awaited, never a hang.
//! `GL_TEST_LOG=debug` (an `EnvFilter` directive) prints the in-process components' logs.

mod fixtures;
mod processes;
mod samplers;
mod schema;
mod services;
mod stack;

use serde_json::Value;
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub use fixtures::{assert_limited_run_ends_well, example, limited_stack, mixed_workload, onto_results, sleep_chain};
pub use processes::{KillOnDrop, free_port, pgrep, signal, terminate_within};
pub use samplers::{DRILL_GRACE_SECONDS, DRILL_PAUSE, DrillFigures, PauseDrill, RunningPeak, pause_drill};
pub use schema::assert_fits;
pub use services::{OwnRedis, Paused, broker_pids, delete_topology, delete_topology_with_pools, postgres_pids};
pub use stack::{Backend, Stack, StackOptions, StoreUnderTest};

/// The repository root (this crate lives in `tests/`).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// What one run of the coordinator's command line produced.
#[derive(Debug)]
pub struct CliRun {
    pub code: u8,
    pub stdout: String,
    pub stderr: String,
}

impl CliRun {
    /// Stdout parsed as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", self.stdout))
    }
}

/// Runs `coordinator <args>` in-process, exactly as the binary does.
pub fn coordinator(args: &[&str]) -> CliRun {
    let argv = std::iter::once("coordinator").chain(args.iter().copied()).map(OsString::from);
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = embedded::cli::run(argv, &mut out, &mut err);
    CliRun {
        code,
        stdout: String::from_utf8_lossy(&out).into_owned(),
        stderr: String::from_utf8_lossy(&err).into_owned(),
    }
}

/// The server URLs every test uses (the services the machine runs).
pub const POSTGRES: &str = "postgres://postgres@127.0.0.1:5432";

pub const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

pub const REDIS: &str = "redis://127.0.0.1:6379";

/// Bound on each broker call the harness makes itself (auditor, probes).
pub const BROKER_CALL: Duration = Duration::from_secs(10);

/// Bound on each API call the harness makes (a request that takes longer is a failure).
pub const API_CALL: Duration = Duration::from_secs(30);

/// Logs of the in-process components on stderr when `GL_TEST_LOG` is set (once per binary).
pub(crate) fn init_test_log() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if let Ok(filter) = std::env::var("GL_TEST_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_test_writer()
                .try_init();
        }
    });
}

/// Waits until `check` returns true, or panics with `what` at the deadline.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "not reached within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs each behaviour `async fn name(backend: Backend)` of a suite as two tests,
/// `distributed::name` and `embedded::name`, so the embedded twins cannot drift from the real adapters.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod distributed {
            $(#[tokio::test]
            async fn $name() {
                super::$name(tests::Backend::Distributed).await;
            })*
        }
        mod embedded {
            $(#[tokio::test]
            async fn $name() {
                super::$name(tests::Backend::Embedded).await;
            })*
        }
    };
}

/// Runs each behaviour `async fn name(store: &dyn Store)` of a suite as two tests,
/// `postgres::name` and `sqlite::name`, so the two stores must give the same answers.
#[macro_export]
macro_rules! on_each_store {
    ($($behaviour:ident),* $(,)?) => {
        mod postgres {
            $(#[tokio::test]
            async fn $behaviour() {
                let under = tests::StoreUnderTest::postgres().await;
                super::$behaviour(&*under.store).await;
                under.finish().await;
            })*
        }
        mod sqlite {
            $(#[tokio::test]
            async fn $behaviour() {
                let under = tests::StoreUnderTest::sqlite().await;
                super::$behaviour(&*under.store).await;
                under.finish().await;
            })*
        }
    };
}
