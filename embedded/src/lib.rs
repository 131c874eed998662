//! Embedded mode (`coordinator dev`): the same engine in one process, on embedded twins of its
//! adapters: the SQLite [`SqliteStore`], the [`EmbeddedQueue`] (a table of the same database)
//! and in-process locks, with in-process workers. Same REST API, DAG format, provenance and
//! metrics as the distributed deployment; nothing to install.
//!
//! Durable like the real thing: every state change and every queued message is committed to the
//! database file before it counts, so a killed process resumes where it stopped when started
//! again (the lease it held expires, and the messages it held return to their queues).

pub mod cli;
pub mod queue;

use std::path::PathBuf;
use std::sync::Arc;

use engine::config::Settings;
use engine::topology::Topology;
use runtime::queue::Connector;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use coordinator::app::{Backends, Coordinator, StartError};
use coordinator::locks::MemoryLocks;
use coordinator::store::{SqliteStore, Store, StoreError};
pub use queue::EmbeddedQueue;
pub use worker::agents::Registry;

/// The agents `GL_ORCHESTRATOR_*` settings ask for (the worker's own list), for [`EmbeddedOptions`].
pub fn agents(settings: &Settings) -> Result<Registry, String> {
    worker::cli::agents(settings)
}

/// Where the embedded database lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Storage {
    /// A SQLite file (created with its folder when missing).
    File(PathBuf),
    /// Nothing on disk: everything is gone when the process ends.
    Memory,
}

/// The default database file, under the current directory.
pub fn default_file() -> PathBuf {
    PathBuf::from(".greenlang").join("orchestrator.db")
}

/// How to run embedded.
#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    pub storage: Storage,
    /// In-process workers (`w1`, `w2`, ...), each running `settings.worker_concurrency` attempts.
    pub workers: u32,
    pub registry: Registry,
}

/// A running embedded orchestrator: a coordinator and its workers.
#[derive(Debug)]
pub struct Embedded {
    pub coordinator: Coordinator,
    workers: Vec<(oneshot::Sender<()>, JoinHandle<()>)>,
}

impl Embedded {
    /// Opens (and migrates) the store, then starts the coordinator and the in-process workers.
    pub async fn start(settings: Settings, options: EmbeddedOptions) -> Result<Self, StartError> {
        let path = match &options.storage {
            Storage::File(path) => Some(path.as_path()),
            Storage::Memory => None,
        };
        // A file another process holds (its exclusive lock) makes the first statement time out.
        let in_use = |e: StoreError| match path {
            Some(path) if e.is_unavailable() => StartError::InUse(path.to_owned()),
            _ => StartError::Db(e),
        };
        let store = SqliteStore::open(path).await.map_err(in_use)?;
        store.migrate().await.map_err(in_use)?;
        let topology = Topology::new(&settings.queue_prefix, settings.delivery_limit);
        let queue = EmbeddedQueue::open(store.pool().clone(), topology).await.map_err(StartError::Queue)?;
        let queue: Arc<dyn Connector> = Arc::new(queue);
        let worker_options = |i: u32| worker::WorkerOptions {
            queue: queue.clone(),
            pools: settings.worker_queues.clone(),
            concurrency: settings.worker_concurrency,
            worker_id: format!("w{i}"),
            grace: settings.component_grace(),
            bounds: settings.bounds(),
            result_keys: settings.result_keys.clone(),
            registry: options.registry.clone(),
            metrics: Default::default(),
            liveness: Default::default(),
        };
        let workers = (1..=options.workers)
            .map(|i| {
                let (stop, stopped) = oneshot::channel::<()>();
                let task = tokio::spawn(worker::run(worker_options(i), async move {
                    let _ = stopped.await;
                }));
                (stop, task)
            })
            .collect();
        let backends = Backends { store: Arc::new(store), queue, locks: Arc::new(MemoryLocks::default()), redis: None };
        let name = format!("embedded-{}", std::process::id());
        let coordinator = Coordinator::start_with(settings, &name, backends).await?;
        Ok(Self { coordinator, workers })
    }

    /// Stops the coordinator (leases handed back), then lets the workers finish what they run.
    pub async fn shutdown(self) {
        self.coordinator.shutdown().await;
        for (stop, task) in self.workers {
            let _ = stop.send(());
            let _ = task.await;
        }
    }
}
