//! The embedded (SQLite) [`Store`] of `coordinator dev`: the twin of [`super::postgres`], with the
//! same answers to the same calls (compare-and-set on leases and epochs, idempotency, ordering,
//! pagination, counters, errors). Every SQL statement of the embedded mode's store lives here.
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
use engine::canonical::ContentHash;
use engine::dag::Dag;
use engine::messages::ResultMessage;
use engine::provenance::Record;
use serde_json::{Value, json};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqliteLockingMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{Row, SqlitePool};
use tokio::sync::broadcast;
use uuid::Uuid;
use uuid::fmt::Hyphenated;

use super::{
    CheckpointRow, Created, DagRow, DagSummary, ExecutionFilter, ExecutionRow, Lease, NewExecution, NodeRow,
    NodeUpdate, OutboxRow, Processed, StepWrite, Store, StoreError, Subscription, Topic, UpdateOutcome, text,
};

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

/// `SELECT <every execution column> FROM dag_executions <tail>`, as a literal (no dynamic SQL).
macro_rules! select_execution {
    ($tail:literal) => {
        concat!(
            "SELECT execution_id, dag_id, dag_hash, status, halt, input_data, input_hash, clock, cancel_requested, \
             submitted_at, started_at, completed_at, error, provenance_chain_hash, last_record_hash, total_nodes, \
             completed_nodes, failed_nodes, skipped_nodes, lease_owner, lease_epoch FROM dag_executions ",
            $tail
        )
    };
}

fn execution_row(r: &SqliteRow) -> Result<ExecutionRow, sqlx::Error> {
    Ok(ExecutionRow {
        execution_id: r.try_get::<Hyphenated, _>("execution_id")?.into_uuid(),
        dag_id: r.try_get("dag_id")?,
        dag_hash: r.try_get("dag_hash")?,
        status: r.try_get("status")?,
        halt: r.try_get("halt")?,
        input_data: r.try_get("input_data")?,
        input_hash: r.try_get("input_hash")?,
        clock: r.try_get("clock")?,
        cancel_requested: r.try_get("cancel_requested")?,
        submitted_at: r.try_get("submitted_at")?,
        started_at: r.try_get("started_at")?,
        completed_at: r.try_get("completed_at")?,
        error: r.try_get("error")?,
        provenance_chain_hash: r.try_get("provenance_chain_hash")?,
        last_record_hash: r.try_get("last_record_hash")?,
        total_nodes: r.try_get("total_nodes")?,
        completed_nodes: r.try_get("completed_nodes")?,
        failed_nodes: r.try_get("failed_nodes")?,
        skipped_nodes: r.try_get("skipped_nodes")?,
        lease_owner: r.try_get("lease_owner")?,
        lease_epoch: r.try_get("lease_epoch")?,
    })
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
            Err(broadcast::error::RecvError::Closed) => Err(StoreError::Sql(sqlx::Error::PoolClosed)),
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
        Ok(row.as_ref().map(execution_row).transpose()?)
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
    async fn subscribe(&self, topic: Topic) -> Result<Box<dyn Subscription>, StoreError> {
        let channel = match topic {
            Topic::Inbox => &self.inbox,
            Topic::Outbox => &self.outbox,
        };
        Ok(Box::new(Wakeups(channel.subscribe())))
    }

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

    async fn insert_dag(&self, tenant: &str, dag: &Dag) -> Result<DagRow, StoreError> {
        let definition = serde_json::to_value(dag.definition()).map_err(corrupt)?;
        let mut tx = self.begin().await?;
        let at = ts(now());
        insert_definition(&mut tx, dag, &definition, &at).await?;
        let spec = dag.definition();
        let inserted: Option<(i64, DateTime<Utc>, DateTime<Utc>)> = sqlx::query_as(
            "INSERT INTO dag_workflows (tenant_id, dag_id, name, description, version, dag_hash, node_count,
                                        created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8) ON CONFLICT DO NOTHING
             RETURNING revision, created_at, updated_at",
        )
        .bind(tenant)
        .bind(dag.id().as_str())
        .bind(&spec.name)
        .bind(&spec.description)
        .bind(&spec.version)
        .bind(dag.hash().as_str())
        .bind(i32::try_from(dag.len()).unwrap_or(i32::MAX))
        .bind(&at)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((revision, created_at, updated_at)) = inserted else {
            return Err(StoreError::Conflict(format!("DAG {}", dag.id())));
        };
        tx.commit().await?;
        Ok(DagRow {
            dag_id: dag.id().to_string(),
            dag_hash: dag.hash().to_string(),
            definition,
            revision,
            created_at,
            updated_at,
        })
    }

    async fn get_dag(&self, tenant: &str, dag_id: &str) -> Result<Option<DagRow>, StoreError> {
        let row = sqlx::query(
            "SELECT w.dag_id, w.dag_hash, d.definition, w.revision, w.created_at, w.updated_at
             FROM dag_workflows w JOIN dag_definitions d USING (dag_hash)
             WHERE w.tenant_id = ?1 AND w.dag_id = ?2",
        )
        .bind(tenant)
        .bind(dag_id)
        .fetch_optional(&mut *self.conn().await?)
        .await?;
        row.map(|r| {
            Ok(DagRow {
                dag_id: r.try_get("dag_id")?,
                dag_hash: r.try_get("dag_hash")?,
                definition: r.try_get("definition")?,
                revision: r.try_get("revision")?,
                created_at: r.try_get("created_at")?,
                updated_at: r.try_get("updated_at")?,
            })
        })
        .transpose()
    }

    async fn list_dags(&self, tenant: &str, after: Option<&str>, limit: i64) -> Result<Vec<DagSummary>, StoreError> {
        let rows = sqlx::query(
            "SELECT dag_id, name, version, dag_hash, revision, node_count, created_at, updated_at FROM dag_workflows
             WHERE tenant_id = ?1 AND (?2 IS NULL OR dag_id > ?2) ORDER BY dag_id LIMIT ?3",
        )
        .bind(tenant)
        .bind(after)
        .bind(row_limit(limit))
        .fetch_all(&mut *self.conn().await?)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(DagSummary {
                    dag_id: r.try_get("dag_id")?,
                    name: r.try_get("name")?,
                    version: r.try_get("version")?,
                    dag_hash: r.try_get("dag_hash")?,
                    revision: r.try_get("revision")?,
                    node_count: r.try_get("node_count")?,
                    created_at: r.try_get("created_at")?,
                    updated_at: r.try_get("updated_at")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    async fn update_dag(&self, tenant: &str, dag: &Dag, expected: Option<i64>) -> Result<UpdateOutcome, StoreError> {
        let definition = serde_json::to_value(dag.definition()).map_err(corrupt)?;
        let mut tx = self.begin().await?;
        let at = ts(now());
        insert_definition(&mut tx, dag, &definition, &at).await?;
        let spec = dag.definition();
        let updated: Option<(i64, DateTime<Utc>, DateTime<Utc>)> = sqlx::query_as(
            "UPDATE dag_workflows SET name = ?3, description = ?4, version = ?5, dag_hash = ?6, node_count = ?7,
                 revision = revision + 1, updated_at = ?9
             WHERE tenant_id = ?1 AND dag_id = ?2 AND (?8 IS NULL OR revision = ?8)
             RETURNING revision, created_at, updated_at",
        )
        .bind(tenant)
        .bind(dag.id().as_str())
        .bind(&spec.name)
        .bind(&spec.description)
        .bind(&spec.version)
        .bind(dag.hash().as_str())
        .bind(i32::try_from(dag.len()).unwrap_or(i32::MAX))
        .bind(expected)
        .bind(&at)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((revision, created_at, updated_at)) = updated else {
            let current: Option<i64> =
                sqlx::query_scalar("SELECT revision FROM dag_workflows WHERE tenant_id = ?1 AND dag_id = ?2")
                    .bind(tenant)
                    .bind(dag.id().as_str())
                    .fetch_optional(&mut *tx)
                    .await?;
            return Ok(current.map_or(UpdateOutcome::NotFound, UpdateOutcome::RevisionMismatch));
        };
        tx.commit().await?;
        Ok(UpdateOutcome::Updated(DagRow {
            dag_id: dag.id().to_string(),
            dag_hash: dag.hash().to_string(),
            definition,
            revision,
            created_at,
            updated_at,
        }))
    }

    async fn delete_dag(&self, tenant: &str, dag_id: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM dag_workflows WHERE tenant_id = ?1 AND dag_id = ?2")
            .bind(tenant)
            .bind(dag_id)
            .execute(&mut *self.conn().await?)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn summary(&self, tenant: &str) -> Result<Value, StoreError> {
        let by_status: Vec<(String, i64)> =
            sqlx::query_as("SELECT status, count(*) FROM dag_executions WHERE tenant_id = ?1 GROUP BY status")
                .bind(tenant)
                .fetch_all(&mut *self.conn().await?)
                .await?;
        let avg = self.avg_execution_ms(tenant).await?;
        let p99 = self.p99_node_ms(tenant).await?;
        let slowest: Vec<(String, String, f64, i64)> = sqlx::query_as(
            "SELECT e.dag_id, n.node_id, avg(n.duration_ms), count(*) FROM node_traces n
             JOIN dag_executions e USING (execution_id)
             WHERE e.tenant_id = ?1 AND n.duration_ms IS NOT NULL
             GROUP BY e.dag_id, n.node_id ORDER BY 3 DESC LIMIT 5",
        )
        .bind(tenant)
        .fetch_all(&mut *self.conn().await?)
        .await?;
        let counts: HashMap<String, i64> = by_status.into_iter().collect();
        let count = |s: &str| counts.get(s).copied().unwrap_or(0);
        Ok(json!({
            "active_executions": count("running"),
            "queued_executions": count("queued") + count("pending"),
            "total_executions": counts.values().sum::<i64>(),
            "executions_by_status": counts,
            "avg_execution_duration_ms": avg,
            "p99_node_duration_ms": p99,
            "slowest_nodes": slowest.into_iter().map(|(dag_id, node_id, avg_ms, samples)| json!({
                "dag_id": dag_id, "node_id": node_id, "avg_duration_ms": avg_ms, "samples": samples,
            })).collect::<Vec<_>>(),
        }))
    }

    async fn definition(&self, dag_hash: &str) -> Result<Option<Value>, StoreError> {
        Ok(sqlx::query_scalar("SELECT definition FROM dag_definitions WHERE dag_hash = ?1")
            .bind(dag_hash)
            .fetch_optional(&mut *self.conn().await?)
            .await?)
    }

    async fn create_execution(&self, new: NewExecution<'_>) -> Result<Created, StoreError> {
        let mut tx = self.begin().await?;
        let at = ts(now());
        if let Some((key, request_hash)) = new.idempotency {
            let seen: Option<(Hyphenated, Option<String>)> = sqlx::query_as(
                "SELECT execution_id, request_hash FROM dag_executions WHERE tenant_id = ?1 AND idempotency_key = ?2",
            )
            .bind(new.tenant)
            .bind(key)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some((id, hash)) = seen {
                return match hash.as_deref() == Some(request_hash) {
                    true => Ok(Created::Existing(id.into_uuid())),
                    false => Err(StoreError::Conflict(format!("idempotency key {key:?} with another request"))),
                };
            }
        }
        let dag = new.dag;
        // Pin only what the DAG is now; the write transaction keeps it so until this commits.
        let current: Option<String> =
            sqlx::query_scalar("SELECT dag_hash FROM dag_workflows WHERE tenant_id = ?1 AND dag_id = ?2")
                .bind(new.tenant)
                .bind(new.dag_id)
                .fetch_optional(&mut *tx)
                .await?;
        if current.as_deref() != Some(dag.hash().as_str()) {
            return Ok(Created::DagChanged);
        }
        let id = Uuid::now_v7();
        // `submit_seq` = MAX + 1 in a serialised transaction: gap-free, in commit order.
        let inserted = sqlx::query(
            "INSERT INTO dag_executions (execution_id, tenant_id, dag_id, dag_hash, input_data, input_hash, options,
                                         priority, clock, idempotency_key, request_hash, total_nodes,
                                         submitted_at, updated_at, submit_seq)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?13,
                     (SELECT COALESCE(MAX(submit_seq), 0) + 1 FROM dag_executions))
             ON CONFLICT DO NOTHING",
        )
        .bind(uid(id))
        .bind(new.tenant)
        .bind(new.dag_id)
        .bind(dag.hash().as_str())
        .bind(new.input)
        .bind(new.input_hash)
        .bind(new.options)
        .bind(new.priority)
        .bind(new.clock)
        .bind(new.idempotency.map(|(k, _)| k))
        .bind(new.idempotency.map(|(_, h)| h))
        .bind(i32::try_from(dag.len()).unwrap_or(i32::MAX))
        .bind(&at)
        .execute(&mut *tx)
        .await?;
        if inserted.rows_affected() == 0 {
            return Err(StoreError::Conflict("idempotency key in use by a concurrent request".into()));
        }
        insert_nodes(&mut tx, id, dag).await?;
        tx.commit().await?;
        Ok(Created::New(id))
    }

    async fn execution(&self, tenant: &str, id: Uuid) -> Result<Option<ExecutionRow>, StoreError> {
        let sql = select_execution!("WHERE tenant_id = ?1 AND execution_id = ?2");
        let row = sqlx::query(sql).bind(tenant).bind(uid(id)).fetch_optional(&mut *self.conn().await?).await?;
        Ok(row.as_ref().map(execution_row).transpose()?)
    }

    async fn nodes(&self, id: Uuid) -> Result<Vec<NodeRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT n.node_id, n.agent_id, n.status, n.attempt, n.attempt_base, n.level_index, n.retry_at_ms,
                    n.skip_reason, n.error_type, n.error, n.input_hash, n.output_hash, n.compensation, n.started_at,
                    n.completed_at, n.duration_ms, n.worker_id, n.trace_id, c.outputs
             FROM node_traces n LEFT JOIN dag_checkpoints c USING (execution_id, node_id)
             WHERE n.execution_id = ?1 ORDER BY n.level_index, n.node_id",
        )
        .bind(uid(id))
        .fetch_all(&mut *self.conn().await?)
        .await?;
        rows.iter().map(node_row).collect::<Result<_, sqlx::Error>>().map_err(StoreError::from)
    }

    async fn attempts(&self, id: Uuid) -> Result<HashMap<String, Vec<Value>>, StoreError> {
        let rows: Vec<(String, Value)> = sqlx::query_as(
            "SELECT node_id, result FROM node_attempts WHERE execution_id = ?1 ORDER BY node_id, kind DESC, attempt",
        )
        .bind(uid(id))
        .fetch_all(&mut *self.conn().await?)
        .await?;
        let mut by_node: HashMap<String, Vec<Value>> = HashMap::new();
        for (node, result) in rows {
            by_node.entry(node).or_default().push(result);
        }
        Ok(by_node)
    }

    async fn records(&self, id: Uuid) -> Result<Vec<(i32, Record)>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, node_id, agent_id, input, outputs, input_hash, output_hash, parent_hashes, chain_hash,
                    attempt_count, started_at, completed_at, duration_ms, worker_id, prev_record_hash, record_hash
             FROM execution_provenance WHERE execution_id = ?1 ORDER BY seq",
        )
        .bind(uid(id))
        .fetch_all(&mut *self.conn().await?)
        .await?;
        rows.iter().map(record_row).collect()
    }

    async fn claim(
        &self,
        owner: &str,
        ttl: Duration,
        room: i64,
        max_concurrent: i64,
    ) -> Result<Vec<Lease>, StoreError> {
        // The write transaction serialises slot decisions (PgStore: an advisory lock).
        let mut tx = self.begin().await?;
        let at = now();
        let (now_text, expires) = (ts(at), after(at, ttl)?);
        let taken: Vec<(Hyphenated, i64)> = sqlx::query_as(
            "UPDATE dag_executions SET lease_owner = ?1, lease_epoch = lease_epoch + 1, lease_expires_at = ?2
             WHERE execution_id IN (
                 SELECT execution_id FROM dag_executions
                 WHERE status = 'running' AND (lease_expires_at IS NULL OR lease_expires_at < ?3)
                 ORDER BY submitted_at LIMIT ?4)
             RETURNING execution_id, lease_epoch",
        )
        .bind(owner)
        .bind(&expires)
        .bind(&now_text)
        .bind(row_limit(room))
        .fetch_all(&mut *tx)
        .await?;
        let mut leases: Vec<Lease> = taken.into_iter().map(lease).collect();
        let room = room - leases.len() as i64;
        let mut slots = slots_in_use(&mut tx, &now_text, max_concurrent).await?;
        if room > 0 && slots.free() > 0 {
            let chosen = slots.admit(waiting_line(&mut tx, &now_text).await?, room);
            // One at a time, so slot numbers follow the order of the grant.
            for id in chosen {
                let started: (Hyphenated, i64) = sqlx::query_as(
                    "UPDATE dag_executions SET lease_owner = ?1, lease_epoch = lease_epoch + 1, lease_expires_at = ?2,
                         slot_seq = COALESCE(slot_seq, (SELECT COALESCE(MAX(slot_seq), 0) + 1 FROM dag_executions))
                     WHERE execution_id = ?3 RETURNING execution_id, lease_epoch",
                )
                .bind(owner)
                .bind(&expires)
                .bind(uid(id))
                .fetch_one(&mut *tx)
                .await?;
                leases.push(lease(started));
            }
        }
        // Whatever still waits, waits for a slot.
        sqlx::query(
            "UPDATE dag_executions SET status = 'queued', updated_at = ?1
             WHERE status = 'pending' AND (lease_expires_at IS NULL OR lease_expires_at < ?1)",
        )
        .bind(&now_text)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(leases)
    }

    /// One primary-key update per lease (see `update_nodes` for why not one UPDATE ... FROM).
    async fn renew(&self, owner: &str, leases: &[Lease], ttl: Duration) -> Result<Vec<Lease>, StoreError> {
        let mut conn = self.conn().await?;
        let at = now();
        let until = after(at, ttl)?;
        let mut renewed = Vec::with_capacity(leases.len());
        for l in leases {
            let done = sqlx::query(
                "UPDATE dag_executions SET lease_expires_at = ?2
                 WHERE execution_id = ?3 AND lease_epoch = ?4 AND lease_owner = ?1 AND lease_expires_at > ?5",
            )
            .bind(owner)
            .bind(&until)
            .bind(uid(l.execution_id))
            .bind(l.epoch)
            .bind(ts(at))
            .execute(&mut *conn)
            .await?;
            if done.rows_affected() == 1 {
                renewed.push(*l);
            }
        }
        Ok(renewed)
    }

    async fn release_all(&self, owner: &str) -> Result<u64, StoreError> {
        let done =
            sqlx::query("UPDATE dag_executions SET lease_owner = NULL, lease_expires_at = NULL WHERE lease_owner = ?1")
                .bind(owner)
                .execute(&mut *self.conn().await?)
                .await?;
        Ok(done.rows_affected())
    }

    async fn leased_execution(&self, lease: Lease) -> Result<Option<ExecutionRow>, StoreError> {
        Ok(self.execution_by_id(lease.execution_id).await?.filter(|e| e.lease_epoch == lease.epoch))
    }

    async fn inbox(&self, id: Uuid) -> Result<(Vec<ResultMessage>, bool), StoreError> {
        let results: Vec<Value> = sqlx::query_scalar(
            "SELECT result FROM node_attempts WHERE execution_id = ?1 AND processed_at IS NULL
             ORDER BY received_at, node_id, attempt",
        )
        .bind(uid(id))
        .fetch_all(&mut *self.conn().await?)
        .await?;
        let cancel: Option<bool> =
            sqlx::query_scalar("SELECT cancel_requested FROM dag_executions WHERE execution_id = ?1")
                .bind(uid(id))
                .fetch_optional(&mut *self.conn().await?)
                .await?;
        let messages = results.into_iter().filter_map(|v| serde_json::from_value::<ResultMessage>(v).ok()).collect();
        Ok((messages, cancel.unwrap_or(false)))
    }

    async fn record_results(&self, results: &[ResultMessage]) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        // One time for the whole batch, as PostgreSQL's `now()` is fixed for a transaction.
        let at = ts(now());
        let mut woken: Vec<Uuid> = Vec::new();
        for r in results {
            let Ok(id) = Uuid::parse_str(&r.execution_id) else {
                continue;
            };
            let kind = match r.kind {
                engine::state::TaskKind::Run => "run",
                engine::state::TaskKind::Compensate => "compensate",
            };
            let body = serde_json::to_value(r).map_err(corrupt)?;
            // The WHERE also keeps SQLite from reading `ON CONFLICT` as a join constraint.
            sqlx::query(
                "INSERT INTO node_attempts (execution_id, node_id, attempt, kind, result, received_at)
                 SELECT ?1, ?2, ?3, ?4, ?5, ?6 WHERE EXISTS (SELECT 1 FROM dag_executions WHERE execution_id = ?1)
                 ON CONFLICT DO NOTHING",
            )
            .bind(uid(id))
            .bind(&r.node_id)
            .bind(i32::try_from(r.attempt).unwrap_or(i32::MAX))
            .bind(kind)
            .bind(&body)
            .bind(&at)
            .execute(&mut *tx)
            .await?;
            // PostgreSQL folds identical notifications of one transaction into one.
            if !woken.contains(&id) {
                woken.push(id);
            }
        }
        tx.commit().await?;
        for id in woken {
            self.notify_inbox(id);
        }
        Ok(())
    }

    async fn commit_step(&self, owner: &str, lease: Lease, step: &StepWrite) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        // Read after the connection is ours: a wait for it must not make an expired lease look live.
        let at = ts(now());
        let held = sqlx::query(
            "UPDATE dag_executions SET status = ?4, halt = ?5,
                 started_at = CASE WHEN ?4 <> 'pending' THEN COALESCE(started_at, ?13) ELSE started_at END,
                 completed_at = CASE WHEN ?6 THEN ?13 ELSE completed_at END,
                 completed_nodes = ?7, failed_nodes = ?8, skipped_nodes = ?9,
                 provenance_chain_hash = COALESCE(?10, provenance_chain_hash),
                 last_record_hash = COALESCE(?11, last_record_hash),
                 error = COALESCE(?12, error), updated_at = ?13
             WHERE execution_id = ?1 AND lease_owner = ?2 AND lease_epoch = ?3 AND lease_expires_at > ?13",
        )
        .bind(uid(lease.execution_id))
        .bind(owner)
        .bind(lease.epoch)
        .bind(text(&step.status))
        .bind(step.halt.as_ref().map(text))
        .bind(step.finished)
        .bind(step.completed_nodes)
        .bind(step.failed_nodes)
        .bind(step.skipped_nodes)
        .bind(&step.provenance_chain_hash)
        .bind(&step.last_record_hash)
        .bind(&step.error)
        .bind(&at)
        .execute(&mut *tx)
        .await?;
        if held.rows_affected() != 1 {
            tx.rollback().await?;
            return Ok(false);
        }
        write_step(&mut tx, lease.execution_id, step, &at).await?;
        tx.commit().await?;
        if !step.outbox.is_empty() {
            self.notify_outbox();
        }
        Ok(true)
    }

    async fn request_cancel(&self, tenant: &str, id: Uuid) -> Result<bool, StoreError> {
        let mut conn = self.conn().await?;
        let done = sqlx::query(
            "UPDATE dag_executions SET cancel_requested = 1, updated_at = ?3
             WHERE tenant_id = ?1 AND execution_id = ?2 AND status IN ('pending', 'queued', 'running')",
        )
        .bind(tenant)
        .bind(uid(id))
        .bind(ts(now()))
        .execute(&mut *conn)
        .await?;
        drop(conn);
        // As PgStore: the driver is woken whether or not anything changed.
        self.notify_inbox(id);
        Ok(done.rows_affected() == 1)
    }

    async fn claim_outbox(&self, limit: i64, claim: Duration) -> Result<Vec<OutboxRow>, StoreError> {
        let mut conn = self.conn().await?;
        let at = now();
        let rows: Vec<(i64, String, String, Vec<u8>, Value)> = sqlx::query_as(
            "UPDATE outbox SET claimed_until = ?2
             WHERE id IN (SELECT id FROM outbox WHERE claimed_until IS NULL OR claimed_until < ?3
                          ORDER BY id LIMIT ?1)
             RETURNING id, exchange, routing_key, body, headers",
        )
        .bind(row_limit(limit))
        .bind(after(at, claim)?)
        .bind(ts(at))
        .fetch_all(&mut *conn)
        .await?;
        let mut rows: Vec<OutboxRow> = rows
            .into_iter()
            .map(|(id, exchange, routing_key, body, headers)| OutboxRow {
                id,
                exchange,
                routing_key,
                body,
                headers: serde_json::from_value(headers).unwrap_or_default(),
            })
            .collect();
        rows.sort_by_key(|r| r.id);
        Ok(rows)
    }

    async fn delete_outbox(&self, ids: &[i64]) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM outbox WHERE id IN (SELECT value FROM json_each(?1))")
            .bind(json_list(ids.iter().map(|id| json!(id)).collect()))
            .execute(&mut *self.conn().await?)
            .await?;
        Ok(())
    }

    async fn with_pending_inbox(&self, ids: &[Uuid]) -> Result<Vec<Uuid>, StoreError> {
        let rows: Vec<Hyphenated> = sqlx::query_scalar(
            "SELECT DISTINCT execution_id FROM node_attempts
             WHERE execution_id IN (SELECT value FROM json_each(?1)) AND processed_at IS NULL
             UNION SELECT execution_id FROM dag_executions
             WHERE execution_id IN (SELECT value FROM json_each(?1)) AND cancel_requested
               AND status IN ('pending', 'queued', 'running') AND halt IS NOT 'cancel'",
        )
        .bind(json_list(ids.iter().map(|id| json!(id)).collect()))
        .fetch_all(&mut *self.conn().await?)
        .await?;
        Ok(rows.into_iter().map(Hyphenated::into_uuid).collect())
    }

    async fn resume(
        &self,
        execution: &ExecutionRow,
        remaining: &[String],
        counts: (i32, i32, i32),
    ) -> Result<bool, StoreError> {
        let id = uid(execution.execution_id);
        let mut tx = self.begin().await?;
        let updated = sqlx::query(
            "UPDATE dag_executions SET status = 'pending', halt = NULL, cancel_requested = 0, completed_at = NULL,
                 error = NULL, provenance_chain_hash = NULL, lease_owner = NULL, lease_expires_at = NULL,
                 completed_nodes = ?3, failed_nodes = ?4, skipped_nodes = ?5, updated_at = ?7
             WHERE execution_id = ?1 AND status = ?2 AND lease_epoch = ?6",
        )
        .bind(id)
        .bind(&execution.status)
        .bind(counts.0)
        .bind(counts.1)
        .bind(counts.2)
        .bind(execution.lease_epoch)
        .bind(ts(now()))
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() != 1 {
            tx.rollback().await?;
            return Ok(false);
        }
        let remaining = json_list(remaining.iter().map(|n| json!(n)).collect());
        sqlx::query(
            "UPDATE node_traces SET status = 'pending', attempt_base = attempt, retry_at_ms = NULL, skip_reason = NULL,
                 error_type = NULL, error = NULL, compensation = 'none', input_hash = NULL, output_hash = NULL,
                 started_at = NULL, completed_at = NULL, duration_ms = NULL, worker_id = NULL
             WHERE execution_id = ?1 AND node_id IN (SELECT value FROM json_each(?2))",
        )
        .bind(id)
        .bind(&remaining)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "DELETE FROM dag_checkpoints WHERE execution_id = ?1 AND node_id IN (SELECT value FROM json_each(?2))",
        )
        .bind(id)
        .bind(&remaining)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE node_traces SET compensation = 'none' WHERE execution_id = ?1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn lease_live(&self, id: Uuid) -> Result<bool, StoreError> {
        let mut conn = self.conn().await?;
        let live: Option<Option<bool>> =
            sqlx::query_scalar("SELECT lease_expires_at > ?2 FROM dag_executions WHERE execution_id = ?1")
                .bind(uid(id))
                .bind(ts(now()))
                .fetch_optional(&mut *conn)
                .await?;
        Ok(live.flatten().unwrap_or(false))
    }

    async fn checkpoints(&self, id: Uuid) -> Result<Vec<CheckpointRow>, StoreError> {
        let rows: Vec<(String, String, Value, String, i32, DateTime<Utc>)> = sqlx::query_as(
            "SELECT node_id, status, outputs, output_hash, attempt_count, created_at
             FROM dag_checkpoints WHERE execution_id = ?1 ORDER BY node_id",
        )
        .bind(uid(id))
        .fetch_all(&mut *self.conn().await?)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(node_id, status, outputs, output_hash, attempt_count, created_at)| CheckpointRow {
                node_id,
                status,
                outputs,
                output_hash,
                attempt_count,
                created_at,
            })
            .collect())
    }

    async fn delete_checkpoints(&self, tenant: &str, id: Uuid) -> Result<Option<u64>, StoreError> {
        let mut tx = self.begin().await?;
        let status: Option<String> =
            sqlx::query_scalar("SELECT status FROM dag_executions WHERE tenant_id = ?1 AND execution_id = ?2")
                .bind(tenant)
                .bind(uid(id))
                .fetch_optional(&mut *tx)
                .await?;
        if matches!(status.as_deref(), Some("pending" | "queued" | "running")) {
            return Ok(None);
        }
        let done =
            sqlx::query("DELETE FROM dag_checkpoints WHERE execution_id = ?1").bind(uid(id)).execute(&mut *tx).await?;
        // A resume that read these checkpoints before the delete must not go ahead: bumping the
        // epoch makes its compare-and-set fail.
        sqlx::query("UPDATE dag_executions SET lease_epoch = lease_epoch + 1 WHERE execution_id = ?1")
            .bind(uid(id))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Some(done.rows_affected()))
    }

    async fn list_executions(&self, filter: &ExecutionFilter) -> Result<Vec<ExecutionRow>, StoreError> {
        let sql = select_execution!(
            "WHERE tenant_id = ?1 AND (?2 IS NULL OR dag_id = ?2) AND (?3 IS NULL OR status = ?3)
               AND (?4 IS NULL OR submitted_at >= ?4)
               AND (?5 IS NULL OR (submitted_at, execution_id) < (?5, ?6))
             ORDER BY submitted_at DESC, execution_id DESC LIMIT ?7"
        );
        let rows = sqlx::query(sql)
            .bind(&filter.tenant)
            .bind(&filter.dag_id)
            .bind(&filter.status)
            .bind(filter.since.map(ts))
            .bind(filter.after.map(|a| ts(a.0)))
            .bind(filter.after.map(|a| uid(a.1)))
            .bind(row_limit(filter.limit))
            .fetch_all(&mut *self.conn().await?)
            .await?;
        Ok(rows.iter().map(execution_row).collect::<Result<_, _>>()?)
    }

    async fn backlog(&self) -> Result<(i64, i64), StoreError> {
        Ok(sqlx::query_as(
            "SELECT (SELECT count(*) FROM dag_executions WHERE status = 'queued'), (SELECT count(*) FROM outbox)",
        )
        .fetch_one(&mut *self.conn().await?)
        .await?)
    }

    async fn status_counts(&self) -> Result<HashMap<String, i64>, StoreError> {
        let rows: Vec<(String, i64)> = sqlx::query_as("SELECT status, count(*) FROM dag_executions GROUP BY status")
            .fetch_all(&mut *self.conn().await?)
            .await?;
        Ok(rows.into_iter().collect())
    }
}

/// A `LIMIT` bound: SQLite reads a negative limit as "no limit", PostgreSQL refuses it; no caller
/// passes one (the API checks 1 to 500), so it is read as 0, the safe side.
fn row_limit(limit: i64) -> i64 {
    limit.max(0)
}

/// Stores a definition by content (a no-op when it is already there).
async fn insert_definition(
    tx: &mut sqlx::SqliteConnection,
    dag: &Dag,
    definition: &Value,
    at: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO dag_definitions (dag_hash, definition, created_at) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
    )
    .bind(dag.hash().as_str())
    .bind(definition)
    .bind(at)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// The node rows of a new execution, in one statement.
async fn insert_nodes(tx: &mut sqlx::SqliteConnection, id: Uuid, dag: &Dag) -> Result<(), StoreError> {
    let nodes = (0..dag.len() as u32)
        .zip(dag.nodes())
        .map(|(v, n)| json!({"node_id": dag.node_id(v), "agent_id": dag.node_spec(v).agent_id, "level": n.level}))
        .collect();
    sqlx::query(
        "INSERT INTO node_traces (execution_id, node_id, agent_id, level_index)
         SELECT ?1, value ->> 'node_id', value ->> 'agent_id', value ->> 'level' FROM json_each(?2)",
    )
    .bind(uid(id))
    .bind(json_list(nodes))
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Slots in use: started executions, and waiting ones some replica has just claimed.
async fn slots_in_use(tx: &mut sqlx::SqliteConnection, now: &str, max_concurrent: i64) -> Result<Slots, StoreError> {
    let active: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT tenant_id, dag_id, count(*) FROM dag_executions
         WHERE status = 'running' OR (status IN ('pending', 'queued') AND lease_expires_at > ?1)
         GROUP BY tenant_id, dag_id",
    )
    .bind(now)
    .fetch_all(&mut *tx)
    .await?;
    let in_use = active.into_iter().map(|(tenant_id, dag_id, executions)| InUse { tenant_id, dag_id, executions });
    Ok(Slots::new(in_use, max_concurrent))
}

/// Waiting executions without a live claim, in submission order.
async fn waiting_line(tx: &mut sqlx::SqliteConnection, now: &str) -> Result<Vec<Candidate<Uuid>>, StoreError> {
    let waiting: Vec<(Hyphenated, String, String, Option<i64>)> = sqlx::query_as(
        "SELECT e.execution_id, e.tenant_id, e.dag_id, d.definition ->> 'max_concurrent_executions'
         FROM dag_executions e JOIN dag_definitions d USING (dag_hash)
         WHERE e.status IN ('pending', 'queued') AND (e.lease_expires_at IS NULL OR e.lease_expires_at < ?1)
         ORDER BY e.submit_seq
         LIMIT 1000",
    )
    .bind(now)
    .fetch_all(&mut *tx)
    .await?;
    Ok(waiting
        .into_iter()
        .map(|(id, tenant_id, dag_id, dag_limit)| Candidate { id: id.into_uuid(), tenant_id, dag_id, dag_limit })
        .collect())
}

/// Everything of a step after the lease check: nodes, checkpoints, records, outbox, inbox.
async fn write_step(tx: &mut sqlx::SqliteConnection, id: Uuid, step: &StepWrite, at: &str) -> Result<(), StoreError> {
    if !step.nodes.is_empty() {
        update_nodes(tx, id, &step.nodes, at).await?;
    }
    for checkpoint in &step.checkpoints {
        sqlx::query(
            "INSERT INTO dag_checkpoints (execution_id, node_id, status, outputs, output_hash, attempt_count, created_at)
             VALUES (?1, ?2, 'completed', ?3, ?4, ?5, ?6)
             ON CONFLICT (execution_id, node_id) DO UPDATE
             SET outputs = excluded.outputs, output_hash = excluded.output_hash,
                 attempt_count = excluded.attempt_count, created_at = excluded.created_at",
        )
        .bind(uid(id))
        .bind(&checkpoint.node_id)
        .bind(&checkpoint.outputs)
        .bind(&checkpoint.output_hash)
        .bind(checkpoint.attempt_count)
        .bind(at)
        .execute(&mut *tx)
        .await?;
    }
    for r in &step.records {
        insert_record(tx, id, r.seq, &r.record).await?;
    }
    for m in &step.outbox {
        sqlx::query(
            "INSERT INTO outbox (exchange, routing_key, body, headers, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .bind(&m.exchange)
        .bind(&m.routing_key)
        .bind(m.body.as_slice())
        .bind(json!(m.headers))
        .bind(at)
        .execute(&mut *tx)
        .await?;
    }
    if !step.processed.is_empty() {
        mark_processed(tx, id, &step.processed, at).await?;
    }
    Ok(())
}

/// Marks consumed inbox entries processed.
async fn mark_processed(
    tx: &mut sqlx::SqliteConnection,
    id: Uuid,
    processed: &[Processed],
    at: &str,
) -> Result<(), StoreError> {
    // One primary-key update per entry (see `update_nodes` for why not one UPDATE ... FROM).
    for p in processed {
        sqlx::query(
            "UPDATE node_attempts SET processed_at = ?2
             WHERE execution_id = ?1 AND node_id = ?3 AND attempt = ?4 AND kind = ?5",
        )
        .bind(uid(id))
        .bind(at)
        .bind(&p.node_id)
        .bind(p.attempt)
        .bind(text(&p.kind))
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

/// One node update as a JSON object (read with `->>`); worker times already in the stored format.
fn node_update(n: &NodeUpdate) -> Result<Value, StoreError> {
    Ok(json!({
        "node_id": n.node_id, "status": n.status, "attempt": n.attempt, "attempt_base": n.attempt_base,
        "retry_at_ms": n.retry_at_ms, "skip_reason": n.skip_reason, "error_type": n.error_type,
        "error": n.error, "compensation": n.compensation, "dispatched": n.dispatched,
        "started_at": n.started_at.as_deref().map(stored_time).transpose()?,
        "completed_at": n.completed_at.as_deref().map(stored_time).transpose()?,
        "duration_ms": n.duration_ms, "worker_id": n.worker_id, "input_hash": n.input_hash,
        "output_hash": n.output_hash, "trace_id": n.trace_id,
    }))
}

async fn update_nodes(
    tx: &mut sqlx::SqliteConnection,
    id: Uuid,
    nodes: &[NodeUpdate],
    at: &str,
) -> Result<(), StoreError> {
    // One statement per node, each a primary-key lookup: a single UPDATE ... FROM json_each over
    // all of them let SQLite scan every node of the execution once per update (4 s for 500 of a
    // 10,000-node execution). The subquery's columns carry a `u_` prefix: in an UPDATE ... FROM,
    // a bare name must mean the updated row.
    for node in nodes {
        update_node(tx, id, &node_update(node)?, at).await?;
    }
    Ok(())
}

async fn update_node(tx: &mut sqlx::SqliteConnection, id: Uuid, update: &Value, at: &str) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE node_traces SET status = u.u_status, attempt = u.u_attempt, attempt_base = u.u_attempt_base,
             retry_at_ms = u.u_retry_at_ms, skip_reason = u.u_skip_reason, error_type = u.u_error_type,
             error = u.u_error, compensation = u.u_compensation,
             started_at = CASE WHEN u.u_dispatched THEN ?2 ELSE COALESCE(u.u_started_at, started_at) END,
             completed_at = CASE WHEN u.u_dispatched THEN NULL ELSE COALESCE(u.u_completed_at, completed_at) END,
             duration_ms = CASE WHEN u.u_dispatched THEN NULL ELSE COALESCE(u.u_duration_ms, duration_ms) END,
             worker_id = COALESCE(u.u_worker_id, worker_id),
             input_hash = COALESCE(u.u_input_hash, input_hash),
             output_hash = COALESCE(u.u_output_hash, output_hash),
             trace_id = COALESCE(u.u_trace_id, trace_id)
         FROM (SELECT value ->> 'node_id' AS u_node_id, value ->> 'status' AS u_status,
                      value ->> 'attempt' AS u_attempt, value ->> 'attempt_base' AS u_attempt_base,
                      value ->> 'retry_at_ms' AS u_retry_at_ms, value ->> 'skip_reason' AS u_skip_reason,
                      value ->> 'error_type' AS u_error_type, value ->> 'error' AS u_error,
                      value ->> 'compensation' AS u_compensation, value ->> 'dispatched' AS u_dispatched,
                      value ->> 'started_at' AS u_started_at, value ->> 'completed_at' AS u_completed_at,
                      value ->> 'duration_ms' AS u_duration_ms, value ->> 'worker_id' AS u_worker_id,
                      value ->> 'input_hash' AS u_input_hash, value ->> 'output_hash' AS u_output_hash,
                      value ->> 'trace_id' AS u_trace_id
               FROM (SELECT ?3 AS value)) AS u
         WHERE execution_id = ?1 AND node_id = u.u_node_id",
    )
    .bind(uid(id))
    .bind(at)
    .bind(update.to_string())
    .execute(&mut *tx)
    .await?;
    Ok(())
}

async fn insert_record(tx: &mut sqlx::SqliteConnection, id: Uuid, seq: i32, r: &Record) -> Result<(), StoreError> {
    let parents = serde_json::to_value(&r.parent_hashes).map_err(corrupt)?;
    sqlx::query(
        "INSERT INTO execution_provenance (execution_id, seq, node_id, agent_id, input, outputs, input_hash,
             output_hash, parent_hashes, chain_hash, attempt_count, started_at, completed_at, duration_ms,
             worker_id, prev_record_hash, record_hash)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
    )
    .bind(uid(id))
    .bind(seq)
    .bind(&r.node_id)
    .bind(&r.agent_id)
    .bind(&r.input)
    .bind(&r.outputs)
    .bind(r.input_hash.as_str())
    .bind(r.output_hash.as_str())
    .bind(&parents)
    .bind(r.chain_hash.as_str())
    .bind(i32::try_from(r.timing.attempt_count).unwrap_or(i32::MAX))
    .bind(&r.timing.started_at)
    .bind(&r.timing.completed_at)
    .bind(i64::try_from(r.timing.duration_ms).unwrap_or(i64::MAX))
    .bind(&r.timing.worker_id)
    .bind(r.prev_record_hash.as_str())
    .bind(r.record_hash.as_str())
    .execute(&mut *tx)
    .await?;
    Ok(())
}

fn node_row(r: &SqliteRow) -> Result<NodeRow, sqlx::Error> {
    Ok(NodeRow {
        node_id: r.try_get("node_id")?,
        agent_id: r.try_get("agent_id")?,
        status: r.try_get("status")?,
        attempt: r.try_get("attempt")?,
        attempt_base: r.try_get("attempt_base")?,
        level_index: r.try_get("level_index")?,
        retry_at_ms: r.try_get("retry_at_ms")?,
        skip_reason: r.try_get("skip_reason")?,
        error_type: r.try_get("error_type")?,
        error: r.try_get("error")?,
        input_hash: r.try_get("input_hash")?,
        output_hash: r.try_get("output_hash")?,
        compensation: r.try_get("compensation")?,
        started_at: r.try_get("started_at")?,
        completed_at: r.try_get("completed_at")?,
        duration_ms: r.try_get("duration_ms")?,
        worker_id: r.try_get("worker_id")?,
        trace_id: r.try_get("trace_id")?,
        outputs: r.try_get("outputs")?,
    })
}

fn record_row(r: &SqliteRow) -> Result<(i32, Record), StoreError> {
    let hash = |c: &str| -> Result<ContentHash, StoreError> {
        let text: String = r.try_get(c)?;
        ContentHash::parse(&text).map_err(|_| StoreError::Corrupt(format!("{c} {text:?} is not a hash")))
    };
    let parents: Value = r.try_get("parent_hashes")?;
    let parent_hashes = serde_json::from_value(parents).map_err(corrupt)?;
    let record = Record {
        node_id: r.try_get("node_id")?,
        agent_id: r.try_get("agent_id")?,
        input: r.try_get("input")?,
        outputs: r.try_get("outputs")?,
        input_hash: hash("input_hash")?,
        output_hash: hash("output_hash")?,
        parent_hashes,
        chain_hash: hash("chain_hash")?,
        timing: engine::provenance::Timing {
            attempt_count: u32::try_from(r.try_get::<i32, _>("attempt_count")?).unwrap_or(0),
            started_at: r.try_get("started_at")?,
            completed_at: r.try_get("completed_at")?,
            duration_ms: u64::try_from(r.try_get::<i64, _>("duration_ms")?).unwrap_or(0),
            worker_id: r.try_get("worker_id")?,
        },
        prev_record_hash: hash("prev_record_hash")?,
        record_hash: hash("record_hash")?,
    };
    Ok((r.try_get("seq")?, record))
}
