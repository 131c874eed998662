//! The PostgreSQL [`Store`]: every SQL statement of the coordinator lives in this folder, one
//! file per role of the port (`dags`, `executions`, `leases`, `messages`); this file holds the
//! pool, the row readers and the backend's upkeep (migrate, ping, pool usage).
//!
//! Compare-and-set on the lease is checked against the database clock (`now()`), so replicas
//! with skewed clocks agree on expiry. Notifications use `LISTEN`/`NOTIFY`.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use engine::admission::{Candidate, InUse, Slots};
use engine::config::Settings;
use engine::dag::Dag;
use engine::messages::ResultMessage;
use engine::provenance::Record;
use serde_json::Value;
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgPool, Row};
use uuid::Uuid;

use super::{
    CheckpointRow, Created, DagRow, DagSummary, ExecutionFilter, ExecutionRow, Lease, NewExecution, NodeRow,
    NodeUpdate, OutboxRow, StepWrite, Store, StoreError, Subscription, Topic, UpdateOutcome, text,
};
use crate::store::rows::{self as read, select_execution};

/// Migrations embedded from the workspace's `migrations/` folder.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// The PostgreSQL store: a connection pool.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
    options: sqlx::postgres::PgConnectOptions,
    /// Callers waiting for a connection right now (`gl_db_pool_pending_connections`).
    pending: std::sync::Arc<std::sync::atomic::AtomicI64>,
}

/// Counts one caller as waiting for a connection until dropped (also when the wait is abandoned).
struct Waiting<'a>(&'a std::sync::atomic::AtomicI64);

impl<'a> Waiting<'a> {
    fn new(counter: &'a std::sync::atomic::AtomicI64) -> Self {
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Self(counter)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Advisory-lock key that serialises the decision of which waiting executions start.
const SLOT_LOCK: i64 = 0x676c_736c_6f74; // "glslot"
/// Serialises execution inserts so `submit_seq` follows commit order.
const SUBMIT_LOCK: i64 = 0x676c_7375_626d; // "glsubm"

/// Notification channel: an attempt result arrived (payload: execution id).
const INBOX_CHANNEL: &str = "gl_orchestrator_inbox";
/// Notification channel: outbox rows were written.
const OUTBOX_CHANNEL: &str = "gl_orchestrator_outbox";

impl PgStore {
    pub async fn connect(settings: &Settings) -> Result<Self, StoreError> {
        // Our transactions last milliseconds. A process paused or hung inside one (SIGSTOP, a
        // stalled node) would otherwise hold its row locks for ever and block the replica that
        // takes its leases over: the server ends such a session after a few seconds instead.
        let options = sqlx::postgres::PgConnectOptions::from_str(settings.database_url.expose())?
            .options([
                ("idle_in_transaction_session_timeout", "3000".to_owned()),
                ("statement_timeout", format!("{}s", settings.db_statement_timeout_seconds)),
            ])
            .application_name("greenlang-orchestrator");
        let pool = PgPoolOptions::new()
            .max_connections(settings.db_max_connections())
            .min_connections(0)
            .acquire_timeout(Duration::from_secs(3))
            .connect_with(options.clone())
            .await?;
        Ok(Self { pool, options, pending: Default::default() })
    }

    /// The pool itself, for tests that need one particular connection.
    pub fn pool(&self) -> &sqlx::PgPool {
        &self.pool
    }

    /// A `LISTEN` on `channel` over a connection of its own: a listener holds its connection for
    /// ever, so taking it from the pool would shrink what `DB_POOL_SIZE` promises to requests.
    async fn listen(&self, channel: &str) -> Result<sqlx::postgres::PgListener, StoreError> {
        let own = PgPoolOptions::new().max_connections(1).connect_with(self.options.clone()).await?;
        let mut listener = sqlx::postgres::PgListener::connect_with(&own).await?;
        listener.listen(channel).await?;
        Ok(listener)
    }

    /// A connection from the pool; the wait is counted as pending.
    async fn conn(&self) -> Result<sqlx::pool::PoolConnection<sqlx::Postgres>, sqlx::Error> {
        let _waiting = Waiting::new(&self.pending);
        self.pool.acquire().await
    }

    /// A transaction on a pooled connection; the wait is counted as pending.
    async fn begin(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
        let _waiting = Waiting::new(&self.pending);
        self.pool.begin().await
    }

    async fn execution_by_id(&self, id: Uuid) -> Result<Option<ExecutionRow>, StoreError> {
        let sql = select_execution!("WHERE execution_id = $1");
        let row = sqlx::query(sql).bind(id).fetch_optional(&mut *self.conn().await?).await?;
        Ok(row.as_ref().map(read::execution).transpose()?)
    }
}

#[async_trait::async_trait]
impl Store for PgStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&mut *self.conn().await?).await?;
        Ok(())
    }

    fn pool_usage(&self) -> (u32, u32, i64) {
        let pending = self.pending.load(std::sync::atomic::Ordering::Relaxed);
        (self.pool.size(), u32::try_from(self.pool.num_idle()).unwrap_or(u32::MAX), pending)
    }
}

#[async_trait::async_trait]
impl Subscription for sqlx::postgres::PgListener {
    async fn next(&mut self) -> Result<String, StoreError> {
        Ok(self.recv().await?.payload().to_owned())
    }
}

mod dags;
mod executions;
mod leases;
mod messages;
