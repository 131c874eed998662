//! The integration harness.
//!
//! [`Stack::start`] gives a test its own world: a freshly created and migrated PostgreSQL
//! database, a unique RabbitMQ prefix, coordinators on port 0 and in-process workers, all talking
//! to the real services. [`Stack::shutdown`] stops everything and deletes the database and the
//! queues. Tests wait on conditions with deadlines, never on fixed sleeps.

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use coordinator::app::Coordinator;
use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
use serde_json::{Value, json};
use shared::amqp::AmqpConnector;
use shared::config::Settings;
use shared::queue::{Queue, Source, Topology};
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
        let tag = uuid::Uuid::new_v4().simple().to_string();
        Stack {
            database: String::new(),
            prefix: format!("gltest.{}", &tag[..12]),
            coordinators: Vec::new(),
            workers: Vec::new(),
            embedded: None,
            http: reqwest::Client::new(),
            options,
            api: None,
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
    /// test) as a separate process on a free port, through `wrapper` if not empty (e.g.
    /// `faketime -f +1h`), sends API calls to it from now on and waits until it answers.
    pub async fn coordinator_process(&mut self, wrapper: &[&str], exe: &str) -> std::process::Child {
        let (child, base) = self.spawn_coordinator(wrapper, exe);
        self.use_api(&base);
        self.wait_api(Duration::from_secs(60)).await;
        child
    }

    fn spawn_coordinator(&self, wrapper: &[&str], exe: &str) -> (std::process::Child, String) {
        let port = free_port();
        let (program, args) = match wrapper.split_first() {
            Some((program, rest)) => (*program, rest.iter().copied().chain([exe]).collect::<Vec<_>>()),
            None => (exe, Vec::new()),
        };
        let child = std::process::Command::new(program)
            .args(args)
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
                shared::config::Secret::new(AMQP),
                Topology::new(&self.prefix, settings.delivery_limit),
            )),
            pools: vec!["default".into()],
            concurrency: self.options.worker_concurrency,
            worker_id: id.into(),
            grace: Duration::from_secs(5),
            registry: self.options.registry.clone(),
            metrics: Default::default(),
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
        let response = request.send().await.expect("the API answers");
        let status = response.status().as_u16();
        let text = response.text().await.expect("a body");
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
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
            let e = self.execution(id).await;
            if done(&e) {
                return e;
            }
            assert!(Instant::now() < deadline, "condition not reached within {within:?}: {e}");
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
    async fn queue_depths(&self, broker: &mut Option<shared::amqp::Broker>) -> u32 {
        let topology = Topology::new(&self.prefix, 1);
        if broker.as_ref().is_none_or(|b| !b.is_connected()) {
            *broker = shared::amqp::Broker::connect(AMQP, "auditor", topology.clone()).await.ok();
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
    pub async fn shutdown(self) {
        if let Some(embedded) = self.embedded {
            embedded.shutdown().await;
            return;
        }
        for w in self.workers {
            let _ = w.stop.send(());
            let _ = w.task.await;
        }
        for c in self.coordinators {
            c.shutdown().await;
        }
        if self.database.is_empty() {
            return;
        }
        if let Ok(admin) = sqlx::PgPool::connect(&format!("{POSTGRES}/postgres")).await {
            let drop = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.database);
            let _ = sqlx::query(sqlx::AssertSqlSafe(drop)).execute(&admin).await;
            admin.close().await;
        }
        delete_topology(&self.prefix).await;
    }
}

/// A `redis-server` of a test's own on a free port, so that the test can stop and restart it
/// without touching the machine's shared Redis. Killed when dropped.
#[derive(Debug)]
pub struct OwnRedis {
    pub port: u16,
    child: Option<std::process::Child>,
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

    /// Starts the server (again) on the same port, and waits until it answers.
    pub fn restart(&mut self) {
        let child = std::process::Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string(), "--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server is installed");
        self.child = Some(child);
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

impl Drop for OwnRedis {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
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

/// Best-effort removal of a test's exchanges and queues.
pub async fn delete_topology(prefix: &str) {
    let Ok(conn) = lapin::Connection::connect(AMQP, lapin::ConnectionProperties::default()).await else {
        return;
    };
    let Ok(channel) = conn.create_channel().await else {
        return;
    };
    let t = Topology::new(prefix, 1);
    for queue in [t.task_queue("default"), t.dead_queue(), t.results_queue()] {
        let _ = channel.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await;
    }
    for exchange in [t.tasks_exchange(), t.dead_exchange(), t.results_exchange(), t.cancel_exchange()] {
        let _ = channel.exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default()).await;
    }
    let _ = conn.close(200, "bye".into()).await;
}

/// A DAG document from `examples/`, as JSON.
pub fn example(name: &str) -> Value {
    let text = std::fs::read_to_string(repo_root().join("examples").join(name)).expect("example exists");
    let spec = shared::dag::DagSpec::from_yaml(&text).expect("example parses");
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
