//! The integration harness.
//!
//! [`Stack::start`] gives a test its own world: a freshly created and migrated PostgreSQL
//! database, a unique RabbitMQ prefix, coordinators on port 0 and in-process workers, all talking
//! to the real services. [`Stack::shutdown`] stops everything and deletes the database and the
//! queues; a stack dropped without it (a failed assertion, a panic) deletes them too. Tests wait on
//! conditions with deadlines, never on fixed sleeps, and every call the harness makes to the API
//! or the broker is bounded, so a failure is a message saying what was awaited, never a hang.
//! `GL_TEST_LOG=debug` (an `EnvFilter` directive) prints the in-process components' logs.

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use coordinator::app::Coordinator;
use engine::config::Settings;
use engine::topology::{Source, Topology};
use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
use runtime::amqp::AmqpConnector;
use runtime::queue::Queue;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use worker::WorkerOptions;
use worker::agents::Registry;

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
    let code = coordinator::cli::run(argv, &mut out, &mut err);
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
fn init_test_log() {
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

/// Which adapters a stack runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// PostgreSQL, RabbitMQ and Redis (a fresh database and queue prefix per stack).
    Distributed,
    /// `coordinator dev`'s parts: SQLite in memory, the embedded queue, in-process locks.
    Embedded,
}

/// How to build a stack.
#[derive(Debug, Clone)]
pub struct StackOptions {
    pub backend: Backend,
    pub coordinators: usize,
    pub workers: usize,
    pub worker_concurrency: u32,
    pub registry: Registry,
    /// Extra `GL_ORCHESTRATOR_*` settings (suffix, value).
    pub settings: Vec<(&'static str, String)>,
    /// Other environment variables of the processes started with `spawn_*` (e.g. `OTEL_*`).
    pub process_env: Vec<(&'static str, String)>,
}

impl Default for StackOptions {
    fn default() -> Self {
        Self {
            backend: Backend::Distributed,
            coordinators: 1,
            workers: 2,
            worker_concurrency: 4,
            registry: Registry::default(),
            settings: Vec::new(),
            process_env: Vec::new(),
        }
    }
}

struct RunningWorker {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

/// One isolated deployment for one test.
pub struct Stack {
    pub database: String,
    pub prefix: String,
    pub coordinators: Vec<Coordinator>,
    workers: Vec<RunningWorker>,
    embedded: Option<coordinator::embedded::Embedded>,
    pub http: reqwest::Client,
    options: StackOptions,
    api: Option<String>,
    /// Set by [`Stack::shutdown`]; until then, dropping the stack deletes its database and queues.
    cleaned: bool,
}

impl std::fmt::Debug for Stack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stack").field("database", &self.database).field("prefix", &self.prefix).finish()
    }
}

impl Stack {
    pub async fn start(options: StackOptions) -> Stack {
        if options.backend == Backend::Embedded {
            return Self::start_embedded(options).await;
        }
        let mut stack = Self::detached(options);
        stack.database = format!("gl_test_{}", &uuid::Uuid::new_v4().simple().to_string()[..16]);
        let admin = sqlx::PgPool::connect(&format!("{POSTGRES}/postgres")).await.expect("PostgreSQL is reachable");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {}", stack.database)))
            .execute(&admin)
            .await
            .expect("create database");
        admin.close().await;
        let settings = stack.settings();
        coordinator::store::Store::migrate(&coordinator::store::PgStore::connect(&settings).await.expect("connect"))
            .await
            .expect("migrate");
        for i in 0..stack.options.coordinators {
            stack.add_coordinator(&format!("coordinator-{i}")).await;
        }
        for i in 0..stack.options.workers {
            stack.add_worker(&format!("w{}", i + 1));
        }
        stack
    }

    /// A stack that starts nothing and creates no database or queues: its API calls go where
    /// [`Stack::use_api`] says (e.g. a [`Stack::dev_process`]).
    pub fn detached(options: StackOptions) -> Stack {
        init_test_log();
        let tag = uuid::Uuid::new_v4().simple().to_string();
        Stack {
            database: String::new(),
            prefix: format!("gltest.{}", &tag[..12]),
            coordinators: Vec::new(),
            workers: Vec::new(),
            embedded: None,
            http: reqwest::Client::builder().timeout(API_CALL).build().expect("an HTTP client"),
            options,
            api: None,
            cleaned: false,
        }
    }

    /// Starts `gl-coordinator dev --data DATA` (path `exe`) as a separate process on a free
    /// port, sends API calls to it from now on and waits until it answers.
    pub async fn dev_process(&mut self, exe: &str, data: &std::path::Path) -> std::process::Child {
        let port = free_port();
        let child = std::process::Command::new(exe)
            .arg("dev")
            .arg("--data")
            .arg(data)
            .envs(self.env())
            .env("GL_ORCHESTRATOR_HTTP_ADDR", format!("127.0.0.1:{port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start gl-coordinator dev");
        self.use_api(&format!("http://127.0.0.1:{port}/api/v1/orchestrator"));
        self.wait_api(Duration::from_secs(60)).await;
        child
    }

    /// One embedded orchestrator (in memory) with `options.workers` in-process workers; the
    /// stack's PostgreSQL database, queues and Redis keys are never created.
    async fn start_embedded(options: StackOptions) -> Stack {
        let mut stack = Self::detached(options);
        let mut settings = stack.settings();
        settings.worker_concurrency = stack.options.worker_concurrency;
        let embedded_options = coordinator::embedded::EmbeddedOptions {
            storage: coordinator::embedded::Storage::Memory,
            workers: u32::try_from(stack.options.workers).unwrap_or(1),
            registry: stack.options.registry.clone(),
        };
        let embedded =
            coordinator::embedded::Embedded::start(settings, embedded_options).await.expect("embedded starts");
        stack.use_api(&format!("http://{}/api/v1/orchestrator", embedded.coordinator.addr));
        stack.embedded = Some(embedded);
        stack
    }

    /// This stack's Redis key prefix (every key it writes carries a TTL).
    pub fn redis_prefix(&self) -> String {
        format!("{}:", self.prefix.replace('.', ":"))
    }

    /// Settings for this stack's processes.
    pub fn settings(&self) -> Settings {
        Settings::load(self.env(), None).expect("test settings are valid")
    }

    /// The `GL_ORCHESTRATOR_*` environment of this stack's processes.
    pub fn env(&self) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = vec![
            ("DATABASE_URL".into(), format!("{POSTGRES}/{}", self.database)),
            ("AMQP_URL".into(), AMQP.into()),
            ("QUEUE_PREFIX".into(), self.prefix.clone()),
            ("REDIS_URL".into(), REDIS.into()),
            ("REDIS_PREFIX".into(), self.redis_prefix()),
            ("HTTP_ADDR".into(), "127.0.0.1:0".into()),
            ("AUTH".into(), "disabled".into()),
            ("LEASE_TTL_SECONDS".into(), "5".into()),
            ("DB_POOL_SIZE".into(), "5".into()),
        ];
        env.extend(self.options.settings.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
        env.into_iter().map(|(k, v)| (format!("GL_ORCHESTRATOR_{k}"), v)).collect()
    }

    /// Starts `gl-coordinator serve` (path `exe`: `env!("CARGO_BIN_EXE_gl-coordinator")` in a
    /// test) as a separate process on a free port, sends API calls to it from now on and waits
    /// until it answers. (A process to run under libfaketime gets `LD_PRELOAD` and `FAKETIME`
    /// through `StackOptions::process_env`, never a wrapper process, which a kill would orphan.)
    pub async fn coordinator_process(&mut self, exe: &str) -> std::process::Child {
        let (child, base) = self.spawn_coordinator(exe);
        self.use_api(&base);
        self.wait_api(Duration::from_secs(60)).await;
        child
    }

    /// Starts `gl-coordinator serve` as a separate process on a free port, without sending API
    /// calls to it: the process and its API base.
    pub fn spawn_coordinator(&self, exe: &str) -> (std::process::Child, String) {
        let port = free_port();
        let child = std::process::Command::new(exe)
            .arg("serve")
            .envs(self.env())
            .envs(self.options.process_env.iter().map(|(k, v)| (*k, v)))
            .env("GL_ORCHESTRATOR_HTTP_ADDR", format!("127.0.0.1:{port}"))
            .env("HOSTNAME", format!("proc{port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start gl-coordinator");
        (child, format!("http://127.0.0.1:{port}/api/v1/orchestrator"))
    }

    /// Starts `gl-worker` (path `exe`) as a separate process.
    pub fn spawn_worker(&self, exe: &str, id: &str) -> std::process::Child {
        std::process::Command::new(exe)
            .envs(self.env())
            .envs(self.options.process_env.iter().map(|(k, v)| (*k, v)))
            .env("GL_ORCHESTRATOR_WORKER_ID", id)
            .env("GL_ORCHESTRATOR_WORKER_CONCURRENCY", self.options.worker_concurrency.to_string())
            .env("GL_ORCHESTRATOR_WORKER_METRICS_ADDR", "127.0.0.1:0")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start gl-worker")
    }

    /// Sends API calls to `base` instead of the first in-process coordinator.
    pub fn use_api(&mut self, base: &str) {
        self.api = Some(base.to_owned());
    }

    /// Waits until the API at the current base answers.
    pub async fn wait_api(&self, within: Duration) {
        let deadline = Instant::now() + within;
        while self.http.get(format!("{}/health", self.base())).send().await.is_err() {
            assert!(Instant::now() < deadline, "the API at {} never answered", self.base());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A connection to this stack's database, for checks and deliberate tampering.
    pub async fn database(&self) -> sqlx::PgPool {
        sqlx::PgPool::connect(&format!("{POSTGRES}/{}", self.database)).await.expect("test database")
    }

    pub async fn add_coordinator(&mut self, name: &str) {
        let c = Coordinator::start(self.settings(), name).await.expect("coordinator starts");
        self.coordinators.push(c);
    }

    pub fn add_worker(&mut self, id: &str) {
        let settings = self.settings();
        let options = WorkerOptions {
            queue: Arc::new(AmqpConnector::new(
                engine::config::Secret::new(AMQP),
                Topology::new(&self.prefix, settings.delivery_limit),
                settings.amqp_timeout(),
            )),
            pools: vec!["default".into()],
            concurrency: self.options.worker_concurrency,
            worker_id: id.into(),
            grace: Duration::from_secs(5),
            registry: self.options.registry.clone(),
            metrics: Default::default(),
            liveness: Default::default(),
        };
        let (stop, rx) = oneshot::channel();
        let task = tokio::spawn(worker::run(options, async move {
            let _ = rx.await;
        }));
        self.workers.push(RunningWorker { stop, task });
    }

    /// `/api/v1/orchestrator` of the first coordinator.
    pub fn base(&self) -> String {
        match &self.api {
            Some(base) => base.clone(),
            None => format!("http://{}/api/v1/orchestrator", self.coordinators[0].addr),
        }
    }

    pub async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.base()));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("the API at {} did not answer {path} within {API_CALL:?}: {e}", self.base()));
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_else(|e| panic!("no body from {path}: {e}"));
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// One API call that may fail (a fault test's probe): the status and body, or why no answer.
    pub async fn try_call(&self, method: reqwest::Method, path: &str) -> Result<(u16, Value), String> {
        let response = self.http.request(method, format!("{}{path}", self.base())).send().await;
        let response = response.map_err(|e| format!("no answer to {path}: {e}"))?;
        let status = response.status().as_u16();
        let text = response.text().await.map_err(|e| format!("no body from {path}: {e}"))?;
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::String(text))))
    }

    /// The Prometheus text of the API at the current base (its `/metrics`, beside the API root).
    pub async fn prometheus(&self) -> Result<String, String> {
        let root = self.base().replace("/api/v1/orchestrator", "");
        let response = self.http.get(format!("{root}/metrics")).send().await.map_err(|e| e.to_string())?;
        response.text().await.map_err(|e| e.to_string())
    }

    /// Stores a DAG (JSON form); panics unless created.
    pub async fn create_dag(&self, dag: Value) -> Value {
        let (status, body) = self.call(reqwest::Method::POST, "/dags", Some(dag)).await;
        assert_eq!(status, 201, "create DAG: {body}");
        body
    }

    /// Starts an execution; returns its id.
    pub async fn execute(&self, dag_id: &str, input: Value) -> String {
        let (status, body) = self
            .call(reqwest::Method::POST, &format!("/dags/{dag_id}/execute"), Some(json!({"input_data": input})))
            .await;
        assert_eq!(status, 202, "execute: {body}");
        body["execution_id"].as_str().expect("execution_id").to_owned()
    }

    pub async fn execution(&self, id: &str) -> Value {
        let (status, body) = self.call(reqwest::Method::GET, &format!("/executions/{id}"), None).await;
        assert_eq!(status, 200, "get execution: {body}");
        body["execution"].clone()
    }

    /// Waits until the execution is completed, failed or cancelled.
    pub async fn wait_finished(&self, id: &str, within: Duration) -> Value {
        self.wait_for(id, within, |e| matches!(e["status"].as_str(), Some("completed" | "failed" | "cancelled"))).await
    }

    /// Waits until `done(execution)` holds, or panics at the deadline.
    pub async fn wait_for(&self, id: &str, within: Duration, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + within;
        loop {
            // During a fault the API may answer 503 or time out; that is waited through, and
            // the last answer is what the failure message shows.
            let e = match self.try_call(reqwest::Method::GET, &format!("/executions/{id}")).await {
                Ok((200, body)) => body["execution"].clone(),
                Ok((status, body)) => json!({"unavailable": status, "body": body}),
                Err(e) => json!({"unavailable": e}),
            };
            if e.get("unavailable").is_none() && done(&e) {
                return e;
            }
            if Instant::now() >= deadline {
                let nodes: Vec<String> = self
                    .nodes(id)
                    .await
                    .iter()
                    .map(|(node, t)| format!("{node}={}(attempt {})", t["status"], t["attempt"]))
                    .collect();
                panic!("condition not reached within {within:?}: {e}\nnodes: {}", nodes.join(", "));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Node traces by node id.
    pub async fn nodes(&self, id: &str) -> std::collections::BTreeMap<String, Value> {
        let (status, body) = self.call(reqwest::Method::GET, &format!("/executions/{id}/trace"), None).await;
        assert_eq!(status, 200, "trace: {body}");
        body["nodes"]
            .as_array()
            .expect("nodes")
            .iter()
            .map(|n| (n["node_id"].as_str().unwrap_or("").to_owned(), n.clone()))
            .collect()
    }

    pub async fn provenance(&self, id: &str) -> Value {
        let (status, body) = self.call(reqwest::Method::GET, &format!("/executions/{id}/provenance"), None).await;
        assert_eq!(status, 200, "provenance: {body}");
        body
    }

    /// The reliability auditor, run after a fault: waits until every execution of this stack is
    /// finished, then checks that each completed node has exactly one provenance record, every
    /// completed execution's chain verifies, no outbox row is left, and the task and result
    /// queues are empty. Panics with what is wrong.
    pub async fn audit(&self, within: Duration) {
        let db = self.database().await;
        let deadline = Instant::now() + within;
        let mut broker = None;
        loop {
            let open: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM dag_executions WHERE status NOT IN ('completed', 'failed', 'cancelled')",
            )
            .fetch_one(&db)
            .await
            .expect("count");
            let outbox: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox").fetch_one(&db).await.expect("outbox");
            let queued = self.queue_depths(&mut broker).await;
            if open == 0 && outbox == 0 && queued == 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "audit: {open} executions unfinished, {outbox} outbox rows, {queued} messages queued"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let twice: Vec<(uuid::Uuid, String, i64)> = sqlx::query_as(
            "SELECT execution_id, node_id, count(*) FROM execution_provenance GROUP BY 1, 2 HAVING count(*) <> 1",
        )
        .fetch_all(&db)
        .await
        .expect("records");
        assert!(twice.is_empty(), "audit: nodes recorded other than once: {twice:?}");
        let unrecorded: Vec<(uuid::Uuid, String)> = sqlx::query_as(
            "SELECT t.execution_id, t.node_id FROM node_traces t
             WHERE t.status = 'completed' AND NOT EXISTS (SELECT 1 FROM execution_provenance p
                 WHERE p.execution_id = t.execution_id AND p.node_id = t.node_id)",
        )
        .fetch_all(&db)
        .await
        .expect("unrecorded");
        assert!(unrecorded.is_empty(), "audit: completed nodes without a record: {unrecorded:?}");
        let completed: Vec<uuid::Uuid> =
            sqlx::query_scalar("SELECT execution_id FROM dag_executions WHERE status = 'completed'")
                .fetch_all(&db)
                .await
                .expect("completed");
        for id in completed {
            let provenance = self.provenance(&id.to_string()).await;
            assert_eq!(provenance["chain_valid"], true, "audit: the chain of {id} does not verify: {provenance}");
        }
    }

    /// Messages ready in this stack's task and result queues (`u32::MAX` while the broker cannot
    /// be asked, so that the auditor keeps waiting). `broker` is kept between calls.
    async fn queue_depths(&self, broker: &mut Option<runtime::amqp::Broker>) -> u32 {
        let topology = Topology::new(&self.prefix, 1);
        if broker.as_ref().is_none_or(|b| !b.is_connected()) {
            *broker = runtime::amqp::Broker::connect(AMQP, "auditor", topology.clone(), BROKER_CALL).await.ok();
        }
        let Some(b) = broker.as_ref() else { return u32::MAX };
        let mut total = 0;
        for source in [Source::Pool("default".to_owned()), Source::Results] {
            match b.depth(&source).await {
                Ok(depth) => total += depth,
                Err(_) => return u32::MAX,
            }
        }
        total
    }

    /// Stops every process, then deletes the database and the queues.
    pub async fn shutdown(mut self) {
        self.cleaned = true;
        if let Some(embedded) = self.embedded.take() {
            embedded.shutdown().await;
            return;
        }
        for w in std::mem::take(&mut self.workers) {
            let _ = w.stop.send(());
            let _ = w.task.await;
        }
        for c in std::mem::take(&mut self.coordinators) {
            c.shutdown().await;
        }
        remove_leftovers(&self.database, &self.prefix).await;
    }
}

impl Drop for Stack {
    /// A stack that was not shut down (its test failed) still deletes its database and queues.
    /// Its in-process components belong to the test's runtime, which is ending, so the cleanup
    /// runs on a runtime of its own in a thread of its own, bounded like every other call.
    fn drop(&mut self) {
        if self.cleaned || self.embedded.is_some() {
            return;
        }
        for c in std::mem::take(&mut self.coordinators) {
            c.abort();
        }
        for w in std::mem::take(&mut self.workers) {
            w.task.abort();
        }
        let (database, prefix) = (self.database.clone(), self.prefix.clone());
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
            runtime.block_on(async {
                let _ = tokio::time::timeout(API_CALL, remove_leftovers(&database, &prefix)).await;
            });
        });
        let _ = cleanup.join();
    }
}

/// Deletes a stack's database (if it has one) and its exchanges and queues.
async fn remove_leftovers(database: &str, prefix: &str) {
    if !database.is_empty()
        && let Ok(admin) = sqlx::PgPool::connect(&format!("{POSTGRES}/postgres")).await
    {
        let drop = format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)");
        let _ = sqlx::query(sqlx::AssertSqlSafe(drop)).execute(&admin).await;
        admin.close().await;
    }
    delete_topology(prefix).await;
}

/// A `redis-server` of a test's own on a free port, so that the test can stop and restart it
/// without touching the machine's shared Redis. Killed when dropped.
#[derive(Debug)]
pub struct OwnRedis {
    pub port: u16,
    child: Option<KillOnDrop>,
}

impl OwnRedis {
    pub fn start() -> Self {
        let mut redis = Self { port: free_port(), child: None };
        redis.restart();
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The server's process id (while it runs).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Starts the server (again) on the same port, and waits until it answers.
    pub fn restart(&mut self) {
        let child = std::process::Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string(), "--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server is installed");
        self.child = Some(KillOnDrop(child));
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `redis-cli shutdown nosave`, as the runbook's outage drill does.
    pub fn shutdown(&mut self) {
        let status = std::process::Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "shutdown", "nosave"])
            .stdout(std::process::Stdio::null())
            .status()
            .expect("redis-cli is installed");
        let _ = status;
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
    }
}

/// The fault matrix's workload, `copies` executions of one DAG: a fan-out and fan-in through a
/// flaky node (succeeds on its third attempt), a node that times out and is skipped, and a short
/// sleep. The DAG is stored on the first call.
pub async fn mixed_workload(stack: &Stack, copies: usize) -> Vec<String> {
    let (status, body) = stack
        .call(reqwest::Method::POST, "/dags", Some(json!({"dag_id": "mixed", "name": "mixed", "nodes": {
            "a": {"agent_id": "echo"},
            "flaky": {"agent_id": "flaky", "params": {"failures": 2}, "depends_on": ["a"],
                      "retry_policy": {"max_retries": 3, "base_delay": 0.01}},
            "slow": {"agent_id": "sleep", "params": {"ms": 5000}, "timeout_policy": {"timeout_seconds": 0.2, "on_timeout": "skip"},
                     "depends_on": ["a"]},
            "b": {"agent_id": "sleep", "params": {"ms": 30}, "depends_on": ["a"]},
            "join": {"agent_id": "echo", "depends_on": ["flaky", "slow", "b"]}}})))
        .await;
    assert!(status == 201 || status == 409, "{body}");
    let mut ids = Vec::new();
    for i in 0..copies {
        ids.push(stack.execute("mixed", json!({"copy": i})).await);
    }
    ids
}

/// The limit tests' deployment: two coordinators and two workers of 8 slots, with
/// `MAX_CONCURRENT_EXECUTIONS` at 10, plus `settings`; and their DAG `limited` (two 20 ms steps).
pub async fn limited_stack(settings: Vec<(&'static str, String)>) -> Stack {
    let mut all = vec![("MAX_CONCURRENT_EXECUTIONS", "10".to_owned())];
    all.extend(settings);
    let options =
        StackOptions { coordinators: 2, workers: 2, worker_concurrency: 8, settings: all, ..Default::default() };
    let stack = Stack::start(options).await;
    stack
        .create_dag(json!({"dag_id": "limited", "name": "l", "nodes": {
            "a": {"agent_id": "sleep", "params": {"ms": 20}},
            "b": {"agent_id": "sleep", "params": {"ms": 20}, "depends_on": ["a"]}}}))
        .await;
    stack
}

/// Samples how many executions are running, every 5 ms, until stopped.
#[derive(Debug)]
pub struct RunningPeak {
    done: Arc<AtomicBool>,
    peak: Arc<AtomicI64>,
    task: JoinHandle<()>,
}

impl RunningPeak {
    pub fn start(db: sqlx::PgPool) -> Self {
        let (done, peak) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicI64::new(0)));
        let (stop, most) = (done.clone(), peak.clone());
        let task = tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let running: i64 = sqlx::query_scalar("SELECT count(*) FROM dag_executions WHERE status = 'running'")
                    .fetch_one(&db)
                    .await
                    .unwrap_or(0);
                most.fetch_max(running, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        Self { done, peak, task }
    }

    /// Stops sampling; the most executions seen running at once.
    pub async fn stop(self) -> i64 {
        self.done.store(true, Ordering::Relaxed);
        self.task.await.expect("sampler");
        self.peak.load(Ordering::Relaxed)
    }
}

/// The end of a limit test: every execution completes, the sampled peak never exceeded 10, and
/// slots were granted in submission order.
pub async fn assert_limited_run_ends_well(stack: &Stack, ids: &[String], sampler: RunningPeak) {
    for id in ids {
        let e = stack.wait_finished(id, Duration::from_secs(240)).await;
        assert_eq!(e["status"], "completed", "{e}");
    }
    let peak = sampler.stop().await;
    assert!((1..=10).contains(&peak), "at most 10 running at any sampled moment, saw {peak}");
    let slots: Vec<i64> = sqlx::query_scalar("SELECT slot_seq FROM dag_executions ORDER BY submit_seq")
        .fetch_all(&stack.database().await)
        .await
        .expect("order");
    assert!(slots.windows(2).all(|w| w[0] < w[1]), "slots are granted in submission order: {slots:?}");
}

/// Processes stopped with `SIGSTOP` (a paused broker, database or cache: alive, holding its
/// sockets, answering nothing), continued with `SIGCONT` by [`Paused::resume`] or, should the test
/// fail first, when dropped, so that no failure leaves the machine's services frozen.
#[derive(Debug)]
pub struct Paused {
    what: String,
    pids: Vec<u32>,
}

impl Paused {
    /// Stops every process `find` lists, read now (a database's backends include the
    /// connections the test opened since it started), and again until no new one appears: a
    /// process forked between the listing and the signal is stopped too.
    pub fn pause(what: &str, find: &dyn Fn() -> Vec<u32>) -> Self {
        let mut paused = Self { what: what.to_owned(), pids: Vec::new() };
        for _ in 0..10 {
            let new: Vec<u32> = find().into_iter().filter(|p| !paused.pids.contains(p)).collect();
            if new.is_empty() {
                break;
            }
            // Whatever has exited meanwhile need not be stopped; the rest must be.
            let _ = std::process::Command::new("kill").arg("-STOP").args(new.iter().map(u32::to_string)).status();
            paused.pids.extend(new);
        }
        assert!(!paused.pids.is_empty(), "no process of {what} to pause");
        paused
    }

    pub fn resume(mut self) {
        let pids = std::mem::take(&mut self.pids);
        let _ = std::process::Command::new("kill").arg("-CONT").args(pids.iter().map(u32::to_string)).status();
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        if !self.pids.is_empty() {
            eprintln!("continuing {} (the test ended while it was paused)", self.what);
            let _ = std::process::Command::new("kill").arg("-CONT").args(self.pids.iter().map(u32::to_string)).status();
        }
    }
}

/// Sends `SIGNAL` (a name: `STOP`, `CONT`, `TERM`) to each process.
pub fn signal(pids: &[u32], name: &str) {
    let mut kill = std::process::Command::new("kill");
    kill.arg(format!("-{name}")).args(pids.iter().map(u32::to_string));
    let status = kill.status().expect("kill runs");
    assert!(status.success(), "kill -{name} {pids:?} failed");
}

/// Processes matching `pgrep ARGS`.
pub fn pgrep(args: &[&str]) -> Vec<u32> {
    let out = std::process::Command::new("pgrep").args(args).output().expect("pgrep runs");
    String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| l.trim().parse().ok()).collect()
}

/// The RabbitMQ node's Erlang VM.
pub fn broker_pids() -> Vec<u32> {
    pgrep(&["-f", "beam.smp.*rabbit"])
}

/// Every process of the PostgreSQL cluster: the postmaster and all its backends and workers.
pub fn postgres_pids() -> Vec<u32> {
    pgrep(&["-u", "postgres", "-x", "postgres"])
}

/// Sends SIGTERM and waits for the exit: how long the process took, or `None` if it was still
/// running after `within` (then it is killed, so nothing outlives the test).
pub fn terminate_within(child: &mut std::process::Child, within: Duration) -> Option<Duration> {
    let started = Instant::now();
    signal(&[child.id()], "TERM");
    while started.elapsed() < within {
        if child.try_wait().expect("try_wait").is_some() {
            return Some(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// A child process that is killed when dropped, so that a failing assertion (a panic) never leaves
/// a coordinator or worker running after its test; `std::process::Child` does not do this itself.
#[derive(Debug)]
pub struct KillOnDrop(pub std::process::Child);

impl std::ops::Deref for KillOnDrop {
    type Target = std::process::Child;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// A TCP port free right now on 127.0.0.1.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
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

/// Best-effort removal of a test's exchanges and queues, bounded by [`BROKER_CALL`] in all
/// (a broker that does not answer leaves them to `scripts/sweep-test-leftovers.sh`).
pub async fn delete_topology(prefix: &str) {
    delete_topology_with_pools(prefix, &["default"]).await;
}

/// [`delete_topology`] for a test whose tasks went to other pools (their queues) too.
pub async fn delete_topology_with_pools(prefix: &str, pools: &[&str]) {
    let _ = tokio::time::timeout(BROKER_CALL, async {
        let Ok(conn) = lapin::Connection::connect(AMQP, lapin::ConnectionProperties::default()).await else {
            return;
        };
        let Ok(channel) = conn.create_channel().await else {
            return;
        };
        let t = Topology::new(prefix, 1);
        let queues = pools.iter().map(|p| t.task_queue(p)).chain([t.dead_queue(), t.results_queue()]);
        for queue in queues {
            let _ = channel.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await;
        }
        for exchange in [t.tasks_exchange(), t.dead_exchange(), t.results_exchange(), t.cancel_exchange()] {
            let _ = channel.exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default()).await;
        }
        let _ = conn.close(200, "bye".into()).await;
    })
    .await;
}

/// A DAG document from `examples/`, as JSON.
pub fn example(name: &str) -> Value {
    let text = std::fs::read_to_string(repo_root().join("examples").join(name)).expect("example exists");
    let spec = engine::dag::DagSpec::from_yaml(&text).expect("example parses");
    serde_json::to_value(spec).expect("as JSON")
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

/// A chain `s0 -> s1 -> ...` of `n` `sleep` nodes of `ms` each.
pub fn sleep_chain(id: &str, n: usize, ms: u64) -> Value {
    let nodes: serde_json::Map<String, Value> = (0..n)
        .map(|i| {
            let deps: Vec<String> = if i == 0 { vec![] } else { vec![format!("s{}", i - 1)] };
            (format!("s{i}"), json!({"agent_id": "sleep", "params": {"ms": ms}, "depends_on": deps}))
        })
        .collect();
    json!({"dag_id": id, "name": id, "nodes": nodes})
}

/// A store under test, and the stack to tear down after it (PostgreSQL only).
#[derive(Debug)]
pub struct StoreUnderTest {
    pub store: Arc<dyn coordinator::store::Store>,
    stack: Option<Stack>,
}

impl StoreUnderTest {
    /// `PgStore` on a fresh, migrated database of its own.
    pub async fn postgres() -> Self {
        let stack = Stack::start(StackOptions { coordinators: 0, workers: 0, ..StackOptions::default() }).await;
        let db = coordinator::store::PgStore::connect(&stack.settings()).await.expect("connect");
        Self { store: Arc::new(db), stack: Some(stack) }
    }

    /// `SqliteStore` in memory, migrated (twice: migrating is idempotent).
    pub async fn sqlite() -> Self {
        use coordinator::store::Store;
        let db = coordinator::store::SqliteStore::open(None).await.expect("open SQLite in memory");
        db.migrate().await.expect("migrate");
        db.migrate().await.expect("migrate again");
        Self { store: Arc::new(db), stack: None }
    }

    pub async fn finish(self) {
        if let Some(stack) = self.stack {
            stack.shutdown().await;
        }
    }
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

/// A dependency paused under load (`SIGSTOP`: alive, holding its sockets, answering nothing),
/// longer than every deadline, with a coordinator process and a worker process sent SIGTERM
/// during the pause. See [`pause_drill`].
pub struct PauseDrill {
    /// What is paused, for messages ("RabbitMQ").
    pub what: &'static str,
    /// Lists its processes; called when the pause begins.
    pub pids: Box<dyn Fn() -> Vec<u32>>,
    /// Settings of every process beyond the drill's own short deadlines (e.g. `REDIS_URL`).
    pub settings: Vec<(&'static str, String)>,
    /// Whether `/ready` must fail while paused (and name a stalled component), or stay ready.
    pub unready_while_paused: bool,
    /// `env!("CARGO_BIN_EXE_gl-coordinator")` and `env!("CARGO_BIN_EXE_gl-worker")`.
    pub coordinator_exe: &'static str,
    pub worker_exe: &'static str,
}

impl std::fmt::Debug for PauseDrill {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PauseDrill").field("what", &self.what).field("settings", &self.settings).finish_non_exhaustive()
    }
}

/// What a drill measured.
#[derive(Debug)]
pub struct DrillFigures {
    pub coordinator_exit: Duration,
    pub worker_exit: Duration,
    pub unready_after: Option<Duration>,
    pub ready_again_after: Duration,
    pub executions: usize,
}

/// The drill's deadlines: short, so that a pause of [`DRILL_PAUSE`] outlasts all of them.
pub const DRILL_GRACE_SECONDS: u64 = 5;
pub const DRILL_PAUSE: Duration = Duration::from_secs(20);

/// Runs a [`PauseDrill`]: a mixed workload, the pause, `/ready` (and the stalled-component gauge)
/// checked while paused, SIGTERM to a coordinator process and a worker process (each must exit
/// within its grace period), an execution submitted during the pause
/// (accepted, or refused with a problem+json 503, never a hang or a 500), then the resume: ready
/// again, every execution completed, and the auditor satisfied.
pub async fn pause_drill(drill: PauseDrill) -> DrillFigures {
    const WITHIN: Duration = Duration::from_secs(180);
    let grace = Duration::from_secs(DRILL_GRACE_SECONDS);
    let mut settings: Vec<(&'static str, String)> = vec![
        ("SHUTDOWN_GRACE_SECONDS", DRILL_GRACE_SECONDS.to_string()),
        ("STALL_SECONDS", "8".into()),
        ("AMQP_TIMEOUT_SECONDS", "2".into()),
        ("DB_STATEMENT_TIMEOUT_SECONDS", "2".into()),
        ("DB_CALL_TIMEOUT_SECONDS", "3".into()),
        ("REDIS_TIMEOUT_MS", "300".into()),
        ("HTTP_REQUEST_TIMEOUT_SECONDS", "10".into()),
    ];
    settings.extend(drill.settings);
    let stack = Stack::start(StackOptions { settings, ..StackOptions::default() }).await;
    let (coordinator, process_api) = stack.spawn_coordinator(drill.coordinator_exe);
    let mut coordinator = KillOnDrop(coordinator);
    let mut worker = KillOnDrop(stack.spawn_worker(drill.worker_exe, "drill-worker"));
    eventually(Duration::from_secs(60), "the coordinator process answers", || async {
        stack.http.get(format!("{process_api}/health")).send().await.is_ok()
    })
    .await;
    let mut ids = mixed_workload(&stack, 10).await;
    stack.wait_for(&ids[0], WITHIN, |e| e["completed_nodes"].as_i64() >= Some(1)).await;

    let paused = Paused::pause(drill.what, drill.pids.as_ref());
    let paused_at = Instant::now();
    let submitted = stack
        .http
        .post(format!("{}/dags/mixed/execute", stack.base()))
        .json(&json!({"input_data": {"during": "pause"}}))
        .send()
        .await
        .unwrap_or_else(|e| panic!("a submission while {} is paused got no answer: {e}", drill.what));
    match submitted.status().as_u16() {
        202 => ids.push(submitted.json::<Value>().await.expect("JSON")["execution_id"].as_str().expect("id").into()),
        503 => {
            let kind = submitted.headers().get("content-type").map(|v| v.to_str().unwrap_or("").to_owned());
            assert_eq!(kind.as_deref(), Some("application/problem+json"), "a refusal is a problem document");
        }
        other => panic!("a submission while {} is paused answered {other}", drill.what),
    }

    let unready_after = if drill.unready_while_paused {
        let what = format!("/ready fails and names a stalled component while {} is paused", drill.what);
        eventually(WITHIN, &what, || async {
            match stack.try_call(reqwest::Method::GET, "/ready").await {
                Ok((503, body)) => body["detail"].as_str().is_some_and(|d| !d.contains("stalled: none")),
                _ => false,
            }
        })
        .await;
        let unready = paused_at.elapsed();
        let text = stack.prometheus().await.expect("/metrics answers while paused");
        let stalled: Vec<&str> =
            text.lines().filter(|l| l.starts_with("gl_orchestrator_component_stalled{") && l.ends_with(" 1")).collect();
        assert!(!stalled.is_empty(), "a metric names the stalled component:\n{text}");
        eprintln!("while {} is paused: {stalled:?}", drill.what);
        Some(unready)
    } else {
        let completed = || async {
            let db = stack.database().await;
            let done: i64 = sqlx::query_scalar("SELECT count(*) FROM dag_executions WHERE status = 'completed'")
                .fetch_one(&db)
                .await
                .unwrap_or(0);
            db.close().await;
            done
        };
        let at_pause = completed().await;
        eventually(WITHIN, "executions go on completing while paused", || async { completed().await > at_pause }).await;
        let (status, body) = stack.try_call(reqwest::Method::GET, "/ready").await.expect("/ready answers");
        assert_eq!(status, 200, "still ready while {} is paused: {body}", drill.what);
        assert!(paused_at.elapsed() < DRILL_PAUSE, "checked while still paused");
        None
    };

    // The promise is exact: the process is gone within its grace period (Kubernetes kills it
    // at the end of `terminationGracePeriodSeconds`, losing whatever it had not handed back).
    let limit = grace;
    let coordinator_exit = terminate_within(&mut coordinator, limit)
        .unwrap_or_else(|| panic!("the coordinator ignored SIGTERM for {limit:?} while {} was paused", drill.what));
    let worker_exit = terminate_within(&mut worker, limit)
        .unwrap_or_else(|| panic!("the worker ignored SIGTERM for {limit:?} while {} was paused", drill.what));
    // The fault itself lasts a fixed time: long enough that every deadline has fired.
    tokio::time::sleep_until((paused_at + DRILL_PAUSE).into()).await;
    paused.resume();
    let resumed = Instant::now();
    eventually(WITHIN, "/ready succeeds again after the resume", || async {
        matches!(stack.try_call(reqwest::Method::GET, "/ready").await, Ok((200, _)))
    })
    .await;
    let ready_again_after = resumed.elapsed();
    for id in &ids {
        assert_eq!(stack.wait_finished(id, WITHIN).await["status"], "completed", "{id}");
    }
    stack.audit(WITHIN).await;
    stack.shutdown().await;
    let figures =
        DrillFigures { coordinator_exit, worker_exit, unready_after, ready_again_after, executions: ids.len() };
    eprintln!("{} paused for {DRILL_PAUSE:?}: {figures:?}", drill.what);
    figures
}
