//! [`Stack`]: one test's world (a fresh database, a queue prefix, coordinators and workers in
//! process or as real processes), its teardown, and [`StoreUnderTest`] for the store contract.

use coordinator::app::Coordinator;
use engine::config::Settings;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use worker::agents::Registry;

use crate::processes::free_port;
use crate::services::remove_leftovers;
use crate::{AMQP, API_CALL, POSTGRES, REDIS, init_test_log};
mod client;

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

pub(crate) struct RunningWorker {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

/// One isolated deployment for one test.
pub struct Stack {
    pub database: String,
    pub prefix: String,
    pub coordinators: Vec<Coordinator>,
    workers: Vec<RunningWorker>,
    embedded: Option<embedded::Embedded>,
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
        let embedded_options = embedded::EmbeddedOptions {
            storage: embedded::Storage::Memory,
            workers: u32::try_from(stack.options.workers).unwrap_or(1),
            registry: stack.options.registry.clone(),
        };
        let embedded = embedded::Embedded::start(settings, embedded_options).await.expect("embedded starts");
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
