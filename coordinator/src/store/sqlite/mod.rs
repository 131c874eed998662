//! The embedded (SQLite) [`Store`] of `coordinator dev`: the twin of [`super::postgres`], with the
//! same answers to the same calls (compare-and-set on leases and epochs, idempotency, ordering,
//! pagination, counters, errors). Every SQL statement of the embedded mode's store lives in this
//! folder, one file per role of the port (`dags`, `executions`, `leases`, `messages`).
//!
//! How PostgreSQL's guarantees are kept without its machinery:
//!
//! - **Serialisation.** The pool has exactly one connection (the API, the scheduler, the relay,
//!   the inbox consumer and the embedded queue all share it), so transactions run one after the
//!   other: what `FOR UPDATE SKIP LOCKED`, `FOR SHARE` and the advisory locks of PgStore achieve
//!   between replicas holds trivially. Write transactions still start with `BEGIN IMMEDIATE`,
//!   which takes the database's write lock up front: with one connection a plain `BEGIN` would do,
//!   but another process opening the same file (a second `coordinator dev`, a `sqlite3` shell)
//!   then waits for the busy timeout instead of failing a read-then-write half way.
//! - **Clock.** One process, so the lease clock is the process clock: each method reads
//!   `Utc::now()` once, after it holds the connection (truncated to microseconds, PostgreSQL's
//!   precision), and binds it wherever PgStore says `now()` (also fixed for a whole
//!   transaction). Timestamps are stored as fixed-width UTC text (`YYYY-MM-DDTHH:MM:SS.ffffffZ`),
//!   so comparing two of them as text is comparing the instants, exactly to the microsecond.
//! - **Sequences.** `submit_seq` and `slot_seq` are `MAX + 1` inside the writing transaction:
//!   transactions are serialised, so that is gap-free and follows commit order.
//! - **Notifications.** `LISTEN`/`NOTIFY` become in-process `tokio::sync::broadcast` channels
//!   owned by the store, sent after the transaction commits, wherever PgStore calls `pg_notify`
//!   (PostgreSQL also delivers a notification only at commit).
//! - **Arrays.** PgStore binds arrays and `UNNEST`s them; here a list is bound as one JSON text
//!   and read with `json_each`, so a bulk write stays one statement.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use chrono::{DateTime, SubsecRound, TimeDelta, Utc};
use engine::admission::{Candidate, InUse, Slots};
use engine::dag::Dag;
use engine::messages::ResultMessage;
use engine::provenance::Record;
use serde_json::{Value, json};
use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteLockingMode, SqlitePoolOptions, SqliteSynchronous};
use tokio::sync::broadcast;
use uuid::Uuid;
use uuid::fmt::Hyphenated;

use super::{
    CheckpointRow, Created, DagRow, DagSummary, ExecutionFilter, ExecutionRow, Lease, NewExecution, NodeRow,
    NodeUpdate, OutboxRow, Processed, StepWrite, Store, StoreError, Subscription, Topic, UpdateOutcome, text,
};
use crate::store::rows::{self as read, select_execution};

/// Migrations embedded from `migrations/sqlite/` (the PostgreSQL migrator reads only the files
/// directly in `migrations/`). Runs every file of the folder, the embedded queue's table too.
pub static SQLITE_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");

/// How long a caller waits for the one connection before the store reports itself unavailable.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a statement waits for another process holding the file's write lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Notifications buffered per subscriber before it lags (a lag is reported as a plain wake-up).
const CHANNEL_CAPACITY: usize = 1024;
/// Starts a write transaction holding the write lock (see the module doc).
const BEGIN_WRITE: &str = "BEGIN IMMEDIATE";

/// The SQLite store: one connection, and the notification channels.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// Callers waiting for the connection right now (`gl_db_pool_pending_connections`).
    pending: Arc<AtomicI64>,
    inbox: broadcast::Sender<String>,
    outbox: broadcast::Sender<String>,
}

/// Counts one caller as waiting for the connection until dropped (also when the wait is abandoned).
struct Waiting<'a>(&'a AtomicI64);

impl<'a> Waiting<'a> {
    fn new(counter: &'a AtomicI64) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Self(counter)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The one text format of every stored timestamp: fixed width, so text order is time order.
const TS_FORMAT: &str = "%Y-%m-%dT%H:%M:%S%.6fZ";

fn ts(t: DateTime<Utc>) -> String {
    t.format(TS_FORMAT).to_string()
}

/// The store's clock, at PostgreSQL's precision (microseconds).
fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// `at + d`, with `d` rounded to microseconds as `make_interval(secs => ...)` does.
fn after(at: DateTime<Utc>, d: Duration) -> Result<String, StoreError> {
    let micros = i64::try_from(d.as_nanos().saturating_add(500) / 1000).ok();
    micros
        .and_then(|m| at.checked_add_signed(TimeDelta::microseconds(m)))
        .map(ts)
        .ok_or_else(|| StoreError::Corrupt(format!("interval {d:?} out of range")))
}

/// A worker-reported RFC 3339 time in the stored format; PostgreSQL refuses an unparsable
/// `::timestamptz` too, failing the whole step.
fn stored_time(text: &str) -> Result<String, StoreError> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| ts(t.with_timezone(&Utc).round_subsecs(6)))
        .map_err(|e| StoreError::Corrupt(format!("timestamp {text:?}: {e}")))
}

/// Ids are stored as lowercase hyphenated text (sqlx would bind a `Uuid` as a blob).
fn uid(id: Uuid) -> Hyphenated {
    id.hyphenated()
}

fn corrupt(e: serde_json::Error) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

/// A list bound as one JSON text, read back with `json_each`.
fn json_list(items: Vec<Value>) -> String {
    Value::Array(items).to_string()
}

fn lease((id, epoch): (Hyphenated, i64)) -> Lease {
    Lease { execution_id: id.into_uuid(), epoch }
}

/// Notifications of one topic: a receiver of the store's broadcast channel.
#[derive(Debug)]
struct Wakeups(broadcast::Receiver<String>);

#[async_trait::async_trait]
impl Subscription for Wakeups {
    async fn next(&mut self) -> Result<String, StoreError> {
        match self.0.recv().await {
            Ok(payload) => Ok(payload),
            // Notifications were missed: a wake-up with no payload says "look again", and readers
            // poll what changed anyway (an unparsable inbox payload is ignored).
            Err(broadcast::error::RecvError::Lagged(_)) => Ok(String::new()),
            // Every handle on the store is gone: nothing will ever be sent again.
            Err(broadcast::error::RecvError::Closed) => Err(StoreError::Unavailable("the store is closed".into())),
        }
    }
}

impl SqliteStore {
    /// Opens the database: `Some(path)` is a file (created with its folder when missing), `None`
    /// a database in memory that lives as long as the store. Does not migrate: call
    /// [`Store::migrate`].
    pub async fn open(path: Option<&Path>) -> Result<Self, StoreError> {
        let options = match path {
            Some(path) => file_options(path).await?,
            // `:memory:` (the default file name): a private database of the one connection.
            None => SqliteConnectOptions::new().in_memory(true),
        };
        let options = options.foreign_keys(true).busy_timeout(BUSY_TIMEOUT);
        // One connection that never closes: it serialises every transaction (module doc), and an
        // in-memory database would vanish with it. No test before acquire: it is in-process.
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .test_before_acquire(false)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await?;
        Ok(Self {
            pool,
            pending: Arc::default(),
            inbox: broadcast::channel(CHANNEL_CAPACITY).0,
            outbox: broadcast::channel(CHANNEL_CAPACITY).0,
        })
    }

    /// The pool, for components keeping their own tables in the same database (the embedded
    /// queue). It has one connection: never hold it while calling the store.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// The connection; the wait is counted as pending.
    async fn conn(&self) -> Result<sqlx::pool::PoolConnection<sqlx::Sqlite>, sqlx::Error> {
        let _waiting = Waiting::new(&self.pending);
        self.pool.acquire().await
    }

    /// A write transaction (`BEGIN IMMEDIATE`); the wait is counted as pending.
    async fn begin(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, sqlx::Error> {
        let _waiting = Waiting::new(&self.pending);
        self.pool.begin_with(BEGIN_WRITE).await
    }

    /// Wakes the inbox subscribers (after the commit); nobody listening is fine.
    fn notify_inbox(&self, id: Uuid) {
        let _ = self.inbox.send(id.to_string());
    }

    /// Wakes the outbox subscribers (after the commit); nobody listening is fine.
    fn notify_outbox(&self) {
        let _ = self.outbox.send(String::new());
    }

    async fn execution_by_id(&self, id: Uuid) -> Result<Option<ExecutionRow>, StoreError> {
        let sql = select_execution!("WHERE execution_id = ?1");
        let row = sqlx::query(sql).bind(uid(id)).fetch_optional(&mut *self.conn().await?).await?;
        Ok(row.as_ref().map(read::execution).transpose()?)
    }

    /// Average execution duration of a tenant, in milliseconds, exact to the microsecond.
    async fn avg_execution_ms(&self, tenant: &str) -> Result<Option<f64>, StoreError> {
        // Whole seconds from `unixepoch`, microseconds from the fixed-width fraction (SQLite's
        // date functions keep only milliseconds).
        Ok(sqlx::query_scalar(
            "SELECT avg((unixepoch(completed_at) - unixepoch(started_at)) * 1000.0
                        + (CAST(substr(completed_at, 21, 6) AS INTEGER) - CAST(substr(started_at, 21, 6) AS INTEGER))
                          / 1000.0)
             FROM dag_executions WHERE tenant_id = ?1 AND completed_at IS NOT NULL AND started_at IS NOT NULL",
        )
        .bind(tenant)
        .fetch_one(&mut *self.conn().await?)
        .await?)
    }

    /// `percentile_cont(0.99)` of a tenant's node durations, computed as PostgreSQL does:
    /// interpolated between the two rows around position 0.99 × (n − 1).
    async fn p99_node_ms(&self, tenant: &str) -> Result<Option<f64>, StoreError> {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM node_traces n JOIN dag_executions e USING (execution_id)
             WHERE e.tenant_id = ?1 AND n.duration_ms IS NOT NULL",
        )
        .bind(tenant)
        .fetch_one(&mut *self.conn().await?)
        .await?;
        if n == 0 {
            return Ok(None);
        }
        let position = 0.99 * (n - 1) as f64;
        let (first, second) = (position.floor(), position.ceil());
        let around: Vec<i64> = sqlx::query_scalar(
            "SELECT n.duration_ms FROM node_traces n JOIN dag_executions e USING (execution_id)
             WHERE e.tenant_id = ?1 AND n.duration_ms IS NOT NULL ORDER BY n.duration_ms LIMIT ?2 OFFSET ?3",
        )
        .bind(tenant)
        .bind(second as i64 - first as i64 + 1)
        .bind(first as i64)
        .fetch_all(&mut *self.conn().await?)
        .await?;
        let (Some(&lo), Some(&hi)) = (around.first(), around.last()) else {
            return Ok(None);
        };
        let (lo, hi) = (lo as f64, hi as f64);
        Ok(Some(lo + (hi - lo) * (position - first)))
    }
}

/// Options of a database file: created with its folder when missing; WAL so readers never wait
/// for the writer; `synchronous = NORMAL`: in WAL mode a commit survives the process being killed
/// (kill -9: the WAL is in the operating system's cache), and only a power loss or an OS crash
/// can lose the last commits, never corrupt the file.
async fn file_options(path: &Path) -> Result<SqliteConnectOptions, StoreError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        tokio::fs::create_dir_all(parent).await.map_err(sqlx::Error::Io)?;
    }
    Ok(SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        // One process per file: the embedded queue hands back, at start, every message a
        // previous process held, which is only right when that process is gone. The lock is
        // taken by the first statement and held until the process ends (the OS drops it on
        // kill -9), so a second `coordinator dev` on the same file stops at start instead.
        .locking_mode(SqliteLockingMode::Exclusive))
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    /// One connection: (1, 1 when nobody holds it, callers waiting for it).
    fn pool_usage(&self) -> (u32, u32, i64) {
        let pending = self.pending.load(Ordering::Relaxed);
        (self.pool.size(), u32::try_from(self.pool.num_idle()).unwrap_or(u32::MAX), pending)
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        // Idempotent: sqlx records applied migrations in `_sqlx_migrations`.
        SQLITE_MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&mut *self.conn().await?).await?;
        Ok(())
    }
}

/// A `LIMIT` bound: SQLite reads a negative limit as "no limit", PostgreSQL refuses it; no caller
/// passes one (the API checks 1 to 500), so it is read as 0, the safe side.
fn row_limit(limit: i64) -> i64 {
    limit.max(0)
}

mod dags;
mod executions;
mod leases;
mod messages;
