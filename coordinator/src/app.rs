//! Startup: builds every component of a coordinator from its settings and runs them until a
//! shutdown signal. Tests use the same entry point with port 0.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use engine::config::Settings;
use engine::topology::{Source, Topology};
use runtime::amqp::AmqpConnector;
use runtime::queue::{Connector, Queue};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::health::{Health, INBOX, SCHEDULER};
use crate::http::{self, AppState};
use crate::locks::Locks;
use crate::metrics::Metrics;
use crate::scheduler::{self, SchedulerOptions};
use crate::store::{Deadline, PgStore, SharedStore, StoreError};
use crate::{inbox, relay};

/// A coordinator could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Db(#[from] StoreError),
    #[error("authentication: {0}")]
    Auth(String),
    #[error(transparent)]
    Redis(#[from] crate::locks::LockError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("queue: {0}")]
    Queue(runtime::queue::QueueError),
    #[error("{} is locked by another process (another `coordinator dev` on the same file?)", .0.display())]
    InUse(std::path::PathBuf),
}

/// The adapters a coordinator runs on: PostgreSQL, RabbitMQ and Redis in production
/// ([`Backends::production`]), their embedded twins in `coordinator dev`.
#[derive(Debug, Clone)]
pub struct Backends {
    pub store: SharedStore,
    pub queue: Arc<dyn Connector>,
    pub locks: Arc<dyn Locks>,
    /// The DAG cache; `None` when there is no Redis (every read goes to the store).
    pub redis: Option<Arc<crate::redis::Redis>>,
}

impl Backends {
    /// Connects to PostgreSQL; RabbitMQ and Redis are connected lazily (with retries).
    pub async fn production(settings: &Settings) -> Result<Self, StartError> {
        let call_limit = Duration::from_secs(u64::from(settings.db_call_timeout_seconds));
        let postgres: SharedStore = Arc::new(PgStore::connect(settings).await?);
        let store: SharedStore = Arc::new(Deadline::new(postgres, call_limit));
        let topology = Topology::new(&settings.queue_prefix, settings.delivery_limit);
        let queue = Arc::new(AmqpConnector::new(settings.amqp_url.clone(), topology, settings.amqp_timeout()));
        let redis_limit = Duration::from_millis(u64::from(settings.redis_timeout_ms));
        let redis =
            crate::redis::Redis::connect_with_timeout(settings.redis_url.expose(), &settings.redis_prefix, redis_limit);
        let redis = Arc::new(redis?);
        Ok(Self { store, queue, locks: redis.clone(), redis: Some(redis) })
    }
}

/// A running coordinator.
#[derive(Debug)]
pub struct Coordinator {
    /// The address the API actually listens on (useful with port 0).
    pub addr: SocketAddr,
    pub name: String,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    /// How long [`Coordinator::shutdown`] waits for the components before it stops them.
    grace: Duration,
}

impl Coordinator {
    /// Connects to PostgreSQL, binds the API and starts the scheduler, the outbox relay and the
    /// result consumer. RabbitMQ is connected in the background (with retries), so the API
    /// answers even while the broker is down.
    pub async fn start(settings: Settings, name: &str) -> Result<Self, StartError> {
        let backends = Backends::production(&settings).await?;
        Self::start_with(settings, name, backends).await
    }

    /// Binds the API and starts every component on `backends`.
    pub async fn start_with(settings: Settings, name: &str, backends: Backends) -> Result<Self, StartError> {
        let Backends { store: db, queue, locks, redis } = backends;
        let listener = tokio::net::TcpListener::bind(settings.http_addr)
            .await
            .map_err(|source| StartError::Bind { addr: settings.http_addr, source })?;
        let addr = listener.local_addr().map_err(|source| StartError::Bind { addr: settings.http_addr, source })?;
        let (stop, stop_rx) = watch::channel(false);
        let metrics = Arc::new(Metrics::new());
        let intake = inbox::Intake::of(&settings, metrics.invalid_messages.clone());
        // Until the lock backend first answers, the store's lease alone fences the work.
        metrics.lock_backend.with_label_values(&["postgres"]).set(1);
        metrics.lock_backend.with_label_values(&[locks.backend()]).set(0);
        let options = SchedulerOptions {
            owner: name.to_owned(),
            lease_ttl: Duration::from_secs(u64::from(settings.lease_ttl_seconds)),
            topology: queue.topology().clone(),
            parallel_cap: settings.max_parallel_nodes,
            attempt_grace_ms: settings.attempt_grace_ms(),
            max_input_bytes: settings.max_task_input_bytes,
            max_owned: settings.max_concurrent_executions as usize,
            max_concurrent: settings.max_concurrent_executions,
            metrics: metrics.clone(),
            locks,
        };
        let health = Arc::new(Health::new(settings.stall_after()));
        let grace = settings.component_grace();
        let request_timeout = Duration::from_secs(u64::from(settings.http_request_timeout_seconds));
        let verifier = crate::auth::Verifier::from_settings(&settings).map_err(StartError::Auth)?;
        let state = AppState {
            db: db.clone(),
            settings: Arc::new(settings),
            metrics: metrics.clone(),
            health: health.clone(),
            verifier,
            redis,
        };
        let app = http::router(state);
        let mut http_stop = stop_rx.clone();
        let tasks = vec![
            tokio::spawn(scheduler::run(db.clone(), options, health.component(SCHEDULER), stop_rx.clone())),
            tokio::spawn(relay::run(db.clone(), queue.clone(), name.to_owned(), health.clone(), stop_rx.clone())),
            tokio::spawn(inbox::run(
                db.clone(),
                queue.clone(),
                name.to_owned(),
                intake,
                health.component(INBOX),
                stop_rx.clone(),
            )),
            tokio::spawn(gauges(db.clone(), queue, metrics, health, stop_rx.clone())),
            tokio::spawn(async move {
                let shutdown = async move {
                    let _ = http_stop.changed().await;
                };
                crate::serve::serve(listener, app, request_timeout, shutdown).await;
            }),
        ];
        tracing::info!(%addr, name, "coordinator started");
        Ok(Self { addr, name: name.to_owned(), stop, tasks, grace })
    }

    /// Stops accepting work, hands leases back and waits for every component, for at most the
    /// shutdown grace (`GL_ORCHESTRATOR_SHUTDOWN_GRACE_SECONDS`): past it, whatever has not
    /// finished (a call to a paused broker or database) is stopped where it stands. Nothing is
    /// lost by that: leases expire and are taken over, unsettled messages return to their queues.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let mut tasks = self.tasks;
        let all = futures_util::future::join_all(tasks.iter_mut());
        if tokio::time::timeout(self.grace, all).await.is_err() {
            tracing::warn!(grace = ?self.grace, "components still running at the end of the grace period; stopping them");
            for task in &tasks {
                task.abort();
            }
        }
    }

    /// Stops every component at once without handing leases back (a crash, for tests).
    pub fn abort(self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Refreshes the gauges read from the database and the broker every few seconds.
async fn gauges(
    db: SharedStore,
    connector: Arc<dyn Connector>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    mut stop: watch::Receiver<bool>,
) {
    let topology = connector.topology().clone();
    let mut broker: Option<Arc<dyn Queue>> = None;
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = tick.tick() => {}
        }
        metrics.set_components(&health.components());
        if let Ok(backlog) = db.backlog().await {
            metrics.queued_executions.set(backlog.queued_executions);
            metrics.outbox_backlog.set(backlog.unconfirmed_messages);
        }
        metrics.set_pool(db.pool_usage());
        if broker.as_ref().is_none_or(|b| !b.is_connected()) {
            broker = connector.connect("gauges").await.ok();
            if let Some(b) = &broker {
                // Declared here too, so its depth can be read before any worker or task exists.
                let _ = b.declare_pool("default").await;
            }
        }
        if let Some(b) = &broker {
            for source in [Source::Pool("default".to_owned()), Source::Results, Source::Dead] {
                if let (Ok(depth), Some(queue)) = (b.depth(&source).await, topology.queue_of(&source)) {
                    metrics.queue_depth.with_label_values(&[&queue]).set(i64::from(depth));
                }
            }
        }
    }
    if let Some(b) = broker {
        b.close().await;
    }
}
