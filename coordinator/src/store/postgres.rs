//! The PostgreSQL [`Store`]: every SQL statement of the coordinator lives here.
//!
//! Compare-and-set on the lease is checked against the database clock (`now()`), so replicas
//! with skewed clocks agree on expiry. Notifications use `LISTEN`/`NOTIFY`.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use engine::admission::{Candidate, InUse, Slots};
use engine::canonical::ContentHash;
use engine::config::Settings;
use engine::dag::Dag;
use engine::messages::ResultMessage;
use engine::provenance::Record;
use serde_json::Value;
use sqlx::postgres::{PgPoolOptions, PgRow};
use sqlx::{PgPool, Row};
use uuid::Uuid;

use super::{
    CheckpointRow, Created, DagRow, DagSummary, ExecutionFilter, ExecutionRow, Lease, NewExecution, NodeRow,
    NodeUpdate, OutboxRow, StepWrite, Store, StoreError, Subscription, Topic, UpdateOutcome, text,
};

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

fn execution_row(r: &PgRow) -> Result<ExecutionRow, sqlx::Error> {
    Ok(ExecutionRow {
        execution_id: r.try_get("execution_id")?,
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
        Ok(row.as_ref().map(execution_row).transpose()?)
    }
}

#[async_trait::async_trait]
impl Store for PgStore {
    async fn subscribe(&self, topic: Topic) -> Result<Box<dyn Subscription>, StoreError> {
        let channel = match topic {
            Topic::Inbox => INBOX_CHANNEL,
            Topic::Outbox => OUTBOX_CHANNEL,
        };
        Ok(Box::new(self.listen(channel).await?))
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&mut *self.conn().await?).await?;
        Ok(())
    }

    async fn insert_dag(&self, tenant: &str, dag: &Dag) -> Result<DagRow, StoreError> {
        let definition = serde_json::to_value(dag.definition()).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let mut tx = self.begin().await?;
        sqlx::query("INSERT INTO dag_definitions (dag_hash, definition) VALUES ($1, $2) ON CONFLICT DO NOTHING")
            .bind(dag.hash().as_str())
            .bind(&definition)
            .execute(&mut *tx)
            .await?;
        let spec = dag.definition();
        let inserted = sqlx::query(
            "INSERT INTO dag_workflows (tenant_id, dag_id, name, description, version, dag_hash, node_count)
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING
             RETURNING revision, created_at, updated_at",
        )
        .bind(tenant)
        .bind(dag.id().as_str())
        .bind(&spec.name)
        .bind(&spec.description)
        .bind(&spec.version)
        .bind(dag.hash().as_str())
        .bind(i32::try_from(dag.len()).unwrap_or(i32::MAX))
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = inserted else {
            return Err(StoreError::Conflict(format!("DAG {}", dag.id())));
        };
        tx.commit().await?;
        Ok(DagRow {
            dag_id: dag.id().to_string(),
            dag_hash: dag.hash().to_string(),
            definition,
            revision: row.try_get("revision")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
        })
    }

    async fn get_dag(&self, tenant: &str, dag_id: &str) -> Result<Option<DagRow>, StoreError> {
        let row = sqlx::query(
            "SELECT w.dag_id, w.dag_hash, d.definition, w.revision, w.created_at, w.updated_at
             FROM dag_workflows w JOIN dag_definitions d USING (dag_hash)
             WHERE w.tenant_id = $1 AND w.dag_id = $2",
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
             WHERE tenant_id = $1 AND ($2::text IS NULL OR dag_id > $2) ORDER BY dag_id LIMIT $3",
        )
        .bind(tenant)
        .bind(after)
        .bind(limit)
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
        let definition = serde_json::to_value(dag.definition()).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let mut tx = self.begin().await?;
        sqlx::query("INSERT INTO dag_definitions (dag_hash, definition) VALUES ($1, $2) ON CONFLICT DO NOTHING")
            .bind(dag.hash().as_str())
            .bind(&definition)
            .execute(&mut *tx)
            .await?;
        let spec = dag.definition();
        let updated: Option<(i64, chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
            "UPDATE dag_workflows SET name = $3, description = $4, version = $5, dag_hash = $6, node_count = $7,
                 revision = revision + 1, updated_at = now()
             WHERE tenant_id = $1 AND dag_id = $2 AND ($8::bigint IS NULL OR revision = $8)
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
        .fetch_optional(&mut *tx)
        .await?;
        let Some((revision, created_at, updated_at)) = updated else {
            let current: Option<i64> =
                sqlx::query_scalar("SELECT revision FROM dag_workflows WHERE tenant_id = $1 AND dag_id = $2")
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
        let done = sqlx::query("DELETE FROM dag_workflows WHERE tenant_id = $1 AND dag_id = $2")
            .bind(tenant)
            .bind(dag_id)
            .execute(&mut *self.conn().await?)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn summary(&self, tenant: &str) -> Result<Value, StoreError> {
        let by_status: Vec<(String, i64)> =
            sqlx::query_as("SELECT status, count(*) FROM dag_executions WHERE tenant_id = $1 GROUP BY status")
                .bind(tenant)
                .fetch_all(&mut *self.conn().await?)
                .await?;
        let avg: Option<f64> = sqlx::query_scalar(
            "SELECT (avg(extract(epoch FROM completed_at - started_at)) * 1000)::float8 FROM dag_executions
             WHERE tenant_id = $1 AND completed_at IS NOT NULL AND started_at IS NOT NULL",
        )
        .bind(tenant)
        .fetch_one(&mut *self.conn().await?)
        .await?;
        let p99: Option<f64> = sqlx::query_scalar(
            "SELECT percentile_cont(0.99) WITHIN GROUP (ORDER BY n.duration_ms)::float8
             FROM node_traces n JOIN dag_executions e USING (execution_id)
             WHERE e.tenant_id = $1 AND n.duration_ms IS NOT NULL",
        )
        .bind(tenant)
        .fetch_one(&mut *self.conn().await?)
        .await?;
        let slowest: Vec<(String, String, f64, i64)> = sqlx::query_as(
            "SELECT e.dag_id, n.node_id, avg(n.duration_ms)::float8, count(*) FROM node_traces n
             JOIN dag_executions e USING (execution_id)
             WHERE e.tenant_id = $1 AND n.duration_ms IS NOT NULL
             GROUP BY e.dag_id, n.node_id ORDER BY 3 DESC LIMIT 5",
        )
        .bind(tenant)
        .fetch_all(&mut *self.conn().await?)
        .await?;
        let counts: HashMap<String, i64> = by_status.into_iter().collect();
        let count = |s: &str| counts.get(s).copied().unwrap_or(0);
        Ok(serde_json::json!({
            "active_executions": count("running"),
            "queued_executions": count("queued") + count("pending"),
            "total_executions": counts.values().sum::<i64>(),
            "executions_by_status": counts,
            "avg_execution_duration_ms": avg,
            "p99_node_duration_ms": p99,
            "slowest_nodes": slowest.into_iter().map(|(dag_id, node_id, avg_ms, samples)| serde_json::json!({
                "dag_id": dag_id, "node_id": node_id, "avg_duration_ms": avg_ms, "samples": samples,
            })).collect::<Vec<_>>(),
        }))
    }

    async fn definition(&self, dag_hash: &str) -> Result<Option<Value>, StoreError> {
        Ok(sqlx::query_scalar("SELECT definition FROM dag_definitions WHERE dag_hash = $1")
            .bind(dag_hash)
            .fetch_optional(&mut *self.conn().await?)
            .await?)
    }

    async fn create_execution(&self, new: NewExecution<'_>) -> Result<Created, StoreError> {
        let mut tx = self.begin().await?;
        if let Some((key, request_hash)) = new.idempotency {
            let seen: Option<(Uuid, Option<String>)> = sqlx::query_as(
                "SELECT execution_id, request_hash FROM dag_executions WHERE tenant_id = $1 AND idempotency_key = $2",
            )
            .bind(new.tenant)
            .bind(key)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some((id, hash)) = seen {
                return match hash.as_deref() == Some(request_hash) {
                    true => Ok(Created::Existing(id)),
                    false => Err(StoreError::Conflict(format!("idempotency key {key:?} with another request"))),
                };
            }
        }
        let dag = new.dag;
        // Pin only what the DAG is now; the share lock keeps it so until this commits.
        let current: Option<String> =
            sqlx::query_scalar("SELECT dag_hash FROM dag_workflows WHERE tenant_id = $1 AND dag_id = $2 FOR SHARE")
                .bind(new.tenant)
                .bind(new.dag_id)
                .fetch_optional(&mut *tx)
                .await?;
        if current.as_deref() != Some(dag.hash().as_str()) {
            return Ok(Created::DagChanged);
        }
        let id = Uuid::now_v7();
        // Held until commit: `submit_seq` (drawn by the insert) then follows commit order.
        sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(SUBMIT_LOCK).execute(&mut *tx).await?;
        let inserted = sqlx::query(
            "INSERT INTO dag_executions (execution_id, tenant_id, dag_id, dag_hash, input_data, input_hash, options,
                                         priority, clock, idempotency_key, request_hash, total_nodes)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
             ON CONFLICT DO NOTHING",
        )
        .bind(id)
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
        .execute(&mut *tx)
        .await?;
        if inserted.rows_affected() == 0 {
            // A concurrent request with the same key won the race; ask again.
            return Err(StoreError::Conflict("idempotency key in use by a concurrent request".into()));
        }
        let ids: Vec<String> = (0..dag.len() as u32).map(|v| dag.node_id(v).to_owned()).collect();
        let agents: Vec<String> = (0..dag.len() as u32).map(|v| dag.node_spec(v).agent_id.clone()).collect();
        let levels: Vec<i32> = dag.nodes().iter().map(|n| i32::try_from(n.level).unwrap_or(i32::MAX)).collect();
        sqlx::query(
            "INSERT INTO node_traces (execution_id, node_id, agent_id, level_index)
             SELECT $1, * FROM UNNEST($2::text[], $3::text[], $4::int[])",
        )
        .bind(id)
        .bind(&ids)
        .bind(&agents)
        .bind(&levels)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Created::New(id))
    }

    async fn execution(&self, tenant: &str, id: Uuid) -> Result<Option<ExecutionRow>, StoreError> {
        let sql = select_execution!("WHERE tenant_id = $1 AND execution_id = $2");
        let row = sqlx::query(sql).bind(tenant).bind(id).fetch_optional(&mut *self.conn().await?).await?;
        Ok(row.as_ref().map(execution_row).transpose()?)
    }

    async fn nodes(&self, id: Uuid) -> Result<Vec<NodeRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT n.node_id, n.agent_id, n.status, n.attempt, n.attempt_base, n.level_index, n.retry_at_ms, n.skip_reason,
                    n.error_type, n.error, n.input_hash, n.output_hash, n.compensation, n.started_at,
                    n.completed_at, n.duration_ms, n.worker_id, n.trace_id, c.outputs
             FROM node_traces n LEFT JOIN dag_checkpoints c USING (execution_id, node_id)
             WHERE n.execution_id = $1 ORDER BY n.level_index, n.node_id",
        )
        .bind(id)
        .fetch_all(&mut *self.conn().await?)
        .await?;
        rows.iter()
            .map(|r| {
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
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    async fn attempts(&self, id: Uuid) -> Result<HashMap<String, Vec<Value>>, StoreError> {
        let rows: Vec<(String, Value)> = sqlx::query_as(
            "SELECT node_id, result FROM node_attempts WHERE execution_id = $1 ORDER BY node_id, kind DESC, attempt",
        )
        .bind(id)
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
             FROM execution_provenance WHERE execution_id = $1 ORDER BY seq",
        )
        .bind(id)
        .fetch_all(&mut *self.conn().await?)
        .await?;
        let hash = |r: &PgRow, c: &str| -> Result<ContentHash, StoreError> {
            let text: String = r.try_get(c)?;
            ContentHash::parse(&text).map_err(|_| StoreError::Corrupt(format!("{c} {text:?} is not a hash")))
        };
        rows.iter()
            .map(|r| {
                let parents: Value = r.try_get("parent_hashes")?;
                let parent_hashes = serde_json::from_value(parents).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                let record = Record {
                    node_id: r.try_get("node_id")?,
                    agent_id: r.try_get("agent_id")?,
                    input: r.try_get("input")?,
                    outputs: r.try_get("outputs")?,
                    input_hash: hash(r, "input_hash")?,
                    output_hash: hash(r, "output_hash")?,
                    parent_hashes,
                    chain_hash: hash(r, "chain_hash")?,
                    timing: engine::provenance::Timing {
                        attempt_count: u32::try_from(r.try_get::<i32, _>("attempt_count")?).unwrap_or(0),
                        started_at: r.try_get("started_at")?,
                        completed_at: r.try_get("completed_at")?,
                        duration_ms: u64::try_from(r.try_get::<i64, _>("duration_ms")?).unwrap_or(0),
                        worker_id: r.try_get("worker_id")?,
                    },
                    prev_record_hash: hash(r, "prev_record_hash")?,
                    record_hash: hash(r, "record_hash")?,
                };
                Ok((r.try_get("seq")?, record))
            })
            .collect()
    }

    async fn claim(
        &self,
        owner: &str,
        ttl: Duration,
        room: i64,
        max_concurrent: i64,
    ) -> Result<Vec<Lease>, StoreError> {
        let mut tx = self.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(SLOT_LOCK).execute(&mut *tx).await?;
        let mut leases: Vec<(Uuid, i64)> = sqlx::query_as(
            "UPDATE dag_executions e SET lease_owner = $1, lease_epoch = e.lease_epoch + 1,
                 lease_expires_at = now() + make_interval(secs => $2)
             WHERE e.execution_id IN (
                 SELECT execution_id FROM dag_executions
                 WHERE status = 'running' AND (lease_expires_at IS NULL OR lease_expires_at < now())
                 ORDER BY submitted_at LIMIT $3 FOR UPDATE SKIP LOCKED)
             RETURNING e.execution_id, e.lease_epoch",
        )
        .bind(owner)
        .bind(ttl.as_secs_f64())
        .bind(room)
        .fetch_all(&mut *tx)
        .await?;
        let room = room - leases.len() as i64;
        // Slots in use: started executions, and waiting ones some replica has just claimed.
        let active: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT tenant_id, dag_id, count(*) FROM dag_executions
             WHERE status = 'running' OR (status IN ('pending', 'queued') AND lease_expires_at > now())
             GROUP BY tenant_id, dag_id",
        )
        .fetch_all(&mut *tx)
        .await?;
        let mut slots = Slots::new(
            active.into_iter().map(|(tenant_id, dag_id, executions)| InUse { tenant_id, dag_id, executions }),
            max_concurrent,
        );
        if room > 0 && slots.free() > 0 {
            let waiting: Vec<(Uuid, String, String, Option<i64>)> = sqlx::query_as(
                "SELECT e.execution_id, e.tenant_id, e.dag_id, (d.definition->>'max_concurrent_executions')::bigint
                 FROM dag_executions e JOIN dag_definitions d USING (dag_hash)
                 WHERE e.status IN ('pending', 'queued') AND (e.lease_expires_at IS NULL OR e.lease_expires_at < now())
                 ORDER BY e.submit_seq
                 LIMIT 1000 FOR UPDATE OF e SKIP LOCKED",
            )
            .fetch_all(&mut *tx)
            .await?;
            let chosen = slots.admit(
                waiting.into_iter().map(|(id, tenant_id, dag_id, dag_limit)| Candidate {
                    id,
                    tenant_id,
                    dag_id,
                    dag_limit,
                }),
                room,
            );
            // One at a time, so slot numbers follow the order of the grant.
            for id in chosen {
                let started: (Uuid, i64) = sqlx::query_as(
                    "UPDATE dag_executions SET lease_owner = $1, lease_epoch = lease_epoch + 1,
                         lease_expires_at = now() + make_interval(secs => $2),
                         slot_seq = COALESCE(slot_seq, nextval('dag_executions_slot_seq'))
                     WHERE execution_id = $3 RETURNING execution_id, lease_epoch",
                )
                .bind(owner)
                .bind(ttl.as_secs_f64())
                .bind(id)
                .fetch_one(&mut *tx)
                .await?;
                leases.push(started);
            }
        }
        // Whatever still waits, waits for a slot.
        sqlx::query(
            "UPDATE dag_executions SET status = 'queued', updated_at = now()
             WHERE status = 'pending' AND (lease_expires_at IS NULL OR lease_expires_at < now())",
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(leases.into_iter().map(|(execution_id, epoch)| Lease { execution_id, epoch }).collect())
    }

    async fn renew(&self, owner: &str, leases: &[Lease], ttl: Duration) -> Result<Vec<Lease>, StoreError> {
        let ids: Vec<Uuid> = leases.iter().map(|l| l.execution_id).collect();
        let epochs: Vec<i64> = leases.iter().map(|l| l.epoch).collect();
        let rows: Vec<(Uuid, i64)> = sqlx::query_as(
            "UPDATE dag_executions e SET lease_expires_at = now() + make_interval(secs => $2)
             FROM UNNEST($3::uuid[], $4::bigint[]) AS held(id, epoch)
             WHERE e.execution_id = held.id AND e.lease_epoch = held.epoch AND e.lease_owner = $1
               AND e.lease_expires_at > now()
             RETURNING e.execution_id, e.lease_epoch",
        )
        .bind(owner)
        .bind(ttl.as_secs_f64())
        .bind(&ids)
        .bind(&epochs)
        .fetch_all(&mut *self.conn().await?)
        .await?;
        Ok(rows.into_iter().map(|(execution_id, epoch)| Lease { execution_id, epoch }).collect())
    }

    async fn release_all(&self, owner: &str) -> Result<u64, StoreError> {
        let done =
            sqlx::query("UPDATE dag_executions SET lease_owner = NULL, lease_expires_at = NULL WHERE lease_owner = $1")
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
            "SELECT result FROM node_attempts WHERE execution_id = $1 AND processed_at IS NULL
             ORDER BY received_at, node_id, attempt",
        )
        .bind(id)
        .fetch_all(&mut *self.conn().await?)
        .await?;
        let cancel: Option<bool> =
            sqlx::query_scalar("SELECT cancel_requested FROM dag_executions WHERE execution_id = $1")
                .bind(id)
                .fetch_optional(&mut *self.conn().await?)
                .await?;
        let messages = results.into_iter().filter_map(|v| serde_json::from_value::<ResultMessage>(v).ok()).collect();
        Ok((messages, cancel.unwrap_or(false)))
    }

    async fn record_results(&self, results: &[ResultMessage]) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        for r in results {
            let Ok(id) = Uuid::parse_str(&r.execution_id) else {
                continue;
            };
            let kind = match r.kind {
                engine::state::TaskKind::Run => "run",
                engine::state::TaskKind::Compensate => "compensate",
            };
            let body = serde_json::to_value(r).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            sqlx::query(
                "INSERT INTO node_attempts (execution_id, node_id, attempt, kind, result)
                 SELECT $1, $2, $3, $4, $5 WHERE EXISTS (SELECT 1 FROM dag_executions WHERE execution_id = $1)
                 ON CONFLICT DO NOTHING",
            )
            .bind(id)
            .bind(&r.node_id)
            .bind(i32::try_from(r.attempt).unwrap_or(i32::MAX))
            .bind(kind)
            .bind(&body)
            .execute(&mut *tx)
            .await?;
            sqlx::query("SELECT pg_notify($1, $2)").bind(INBOX_CHANNEL).bind(id.to_string()).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn commit_step(&self, owner: &str, lease: Lease, step: &StepWrite) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        let held = sqlx::query(
            "UPDATE dag_executions SET status = $4, halt = $5,
                 started_at = CASE WHEN $4 <> 'pending' THEN COALESCE(started_at, now()) ELSE started_at END,
                 completed_at = CASE WHEN $6 THEN now() ELSE completed_at END,
                 completed_nodes = $7, failed_nodes = $8, skipped_nodes = $9,
                 provenance_chain_hash = COALESCE($10, provenance_chain_hash),
                 last_record_hash = COALESCE($11, last_record_hash),
                 error = COALESCE($12, error), updated_at = now()
             WHERE execution_id = $1 AND lease_owner = $2 AND lease_epoch = $3 AND lease_expires_at > now()",
        )
        .bind(lease.execution_id)
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
        .execute(&mut *tx)
        .await?;
        if held.rows_affected() != 1 {
            tx.rollback().await?;
            return Ok(false);
        }
        let id = lease.execution_id;
        if !step.nodes.is_empty() {
            update_nodes(&mut tx, id, &step.nodes).await?;
        }
        for checkpoint in &step.checkpoints {
            sqlx::query(
                "INSERT INTO dag_checkpoints (execution_id, node_id, status, outputs, output_hash, attempt_count)
                 VALUES ($1, $2, 'completed', $3, $4, $5)
                 ON CONFLICT (execution_id, node_id) DO UPDATE
                 SET outputs = EXCLUDED.outputs, output_hash = EXCLUDED.output_hash,
                     attempt_count = EXCLUDED.attempt_count, created_at = now()",
            )
            .bind(id)
            .bind(&checkpoint.node_id)
            .bind(&checkpoint.outputs)
            .bind(&checkpoint.output_hash)
            .bind(checkpoint.attempt_count)
            .execute(&mut *tx)
            .await?;
        }
        for r in &step.records {
            insert_record(&mut tx, id, r.seq, &r.record).await?;
        }
        if !step.outbox.is_empty() {
            let exchanges: Vec<&str> = step.outbox.iter().map(|m| m.exchange.as_str()).collect();
            let keys: Vec<&str> = step.outbox.iter().map(|m| m.routing_key.as_str()).collect();
            let bodies: Vec<&[u8]> = step.outbox.iter().map(|m| m.body.as_slice()).collect();
            let headers: Vec<Value> = step.outbox.iter().map(|m| serde_json::json!(m.headers)).collect();
            sqlx::query(
                "INSERT INTO outbox (exchange, routing_key, body, headers)
                 SELECT * FROM UNNEST($1::text[], $2::text[], $3::bytea[], $4::jsonb[])",
            )
            .bind(&exchanges)
            .bind(&keys)
            .bind(&bodies)
            .bind(&headers)
            .execute(&mut *tx)
            .await?;
            sqlx::query("SELECT pg_notify($1, '')").bind(OUTBOX_CHANNEL).execute(&mut *tx).await?;
        }
        if !step.processed.is_empty() {
            let nodes: Vec<&str> = step.processed.iter().map(|p| p.node_id.as_str()).collect();
            let attempts: Vec<i32> = step.processed.iter().map(|p| p.attempt).collect();
            let kinds: Vec<String> = step.processed.iter().map(|p| text(&p.kind)).collect();
            sqlx::query(
                "UPDATE node_attempts a SET processed_at = now()
                 FROM UNNEST($2::text[], $3::int[], $4::text[]) AS p(node_id, attempt, kind)
                 WHERE a.execution_id = $1 AND a.node_id = p.node_id AND a.attempt = p.attempt AND a.kind = p.kind",
            )
            .bind(id)
            .bind(&nodes)
            .bind(&attempts)
            .bind(&kinds)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn request_cancel(&self, tenant: &str, id: Uuid) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        let done = sqlx::query(
            "UPDATE dag_executions SET cancel_requested = true, updated_at = now()
             WHERE tenant_id = $1 AND execution_id = $2 AND status IN ('pending', 'queued', 'running')",
        )
        .bind(tenant)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        sqlx::query("SELECT pg_notify($1, $2)").bind(INBOX_CHANNEL).bind(id.to_string()).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    async fn claim_outbox(&self, limit: i64, claim: Duration) -> Result<Vec<OutboxRow>, StoreError> {
        let rows: Vec<(i64, String, String, Vec<u8>, Value)> = sqlx::query_as(
            "UPDATE outbox SET claimed_until = now() + make_interval(secs => $2)
             WHERE id IN (SELECT id FROM outbox WHERE claimed_until IS NULL OR claimed_until < now()
                          ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED)
             RETURNING id, exchange, routing_key, body, headers",
        )
        .bind(limit)
        .bind(claim.as_secs_f64())
        .fetch_all(&mut *self.conn().await?)
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
        sqlx::query("DELETE FROM outbox WHERE id = ANY($1)").bind(ids).execute(&mut *self.conn().await?).await?;
        Ok(())
    }

    async fn with_pending_inbox(&self, ids: &[Uuid]) -> Result<Vec<Uuid>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT DISTINCT execution_id FROM node_attempts WHERE execution_id = ANY($1) AND processed_at IS NULL
             UNION SELECT execution_id FROM dag_executions WHERE execution_id = ANY($1) AND cancel_requested
                   AND status IN ('pending', 'queued', 'running') AND halt IS DISTINCT FROM 'cancel'",
        )
        .bind(ids)
        .fetch_all(&mut *self.conn().await?)
        .await?)
    }

    async fn resume(
        &self,
        execution: &ExecutionRow,
        remaining: &[String],
        counts: (i32, i32, i32),
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        let updated = sqlx::query(
            "UPDATE dag_executions SET status = 'pending', halt = NULL, cancel_requested = false, completed_at = NULL,
                 error = NULL, provenance_chain_hash = NULL, lease_owner = NULL, lease_expires_at = NULL,
                 completed_nodes = $3, failed_nodes = $4, skipped_nodes = $5, updated_at = now()
             WHERE execution_id = $1 AND status = $2 AND lease_epoch = $6",
        )
        .bind(execution.execution_id)
        .bind(&execution.status)
        .bind(counts.0)
        .bind(counts.1)
        .bind(counts.2)
        .bind(execution.lease_epoch)
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() != 1 {
            tx.rollback().await?;
            return Ok(false);
        }
        sqlx::query(
            "UPDATE node_traces SET status = 'pending', attempt_base = attempt, retry_at_ms = NULL, skip_reason = NULL,
                 error_type = NULL, error = NULL, compensation = 'none', input_hash = NULL, output_hash = NULL,
                 started_at = NULL, completed_at = NULL, duration_ms = NULL, worker_id = NULL
             WHERE execution_id = $1 AND node_id = ANY($2)",
        )
        .bind(execution.execution_id)
        .bind(remaining)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM dag_checkpoints WHERE execution_id = $1 AND node_id = ANY($2)")
            .bind(execution.execution_id)
            .bind(remaining)
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE node_traces SET compensation = 'none' WHERE execution_id = $1")
            .bind(execution.execution_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn lease_live(&self, id: Uuid) -> Result<bool, StoreError> {
        let live: Option<Option<bool>> =
            sqlx::query_scalar("SELECT lease_expires_at > now() FROM dag_executions WHERE execution_id = $1")
                .bind(id)
                .fetch_optional(&mut *self.conn().await?)
                .await?;
        Ok(live.flatten().unwrap_or(false))
    }

    async fn checkpoints(&self, id: Uuid) -> Result<Vec<CheckpointRow>, StoreError> {
        let rows: Vec<(String, String, Value, String, i32, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
            "SELECT node_id, status, outputs, output_hash, attempt_count, created_at
             FROM dag_checkpoints WHERE execution_id = $1 ORDER BY node_id",
        )
        .bind(id)
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
        let status: Option<String> = sqlx::query_scalar(
            "SELECT status FROM dag_executions WHERE tenant_id = $1 AND execution_id = $2 FOR UPDATE",
        )
        .bind(tenant)
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        if matches!(status.as_deref(), Some("pending" | "queued" | "running")) {
            return Ok(None);
        }
        let done =
            sqlx::query("DELETE FROM dag_checkpoints WHERE execution_id = $1").bind(id).execute(&mut *tx).await?;
        // A resume that read these checkpoints before the delete must not go ahead: bumping the
        // epoch makes its compare-and-set fail.
        sqlx::query("UPDATE dag_executions SET lease_epoch = lease_epoch + 1 WHERE execution_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Some(done.rows_affected()))
    }

    async fn list_executions(&self, filter: &ExecutionFilter) -> Result<Vec<ExecutionRow>, StoreError> {
        let sql = select_execution!(
            "WHERE tenant_id = $1 AND ($2::text IS NULL OR dag_id = $2) AND ($3::text IS NULL OR status = $3)
               AND ($4::timestamptz IS NULL OR submitted_at >= $4)
               AND ($5::timestamptz IS NULL OR (submitted_at, execution_id) < ($5, $6))
             ORDER BY submitted_at DESC, execution_id DESC LIMIT $7"
        );
        let rows = sqlx::query(sql)
            .bind(&filter.tenant)
            .bind(&filter.dag_id)
            .bind(&filter.status)
            .bind(filter.since)
            .bind(filter.after.map(|a| a.0))
            .bind(filter.after.map(|a| a.1))
            .bind(filter.limit)
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

    fn pool_usage(&self) -> (u32, u32, i64) {
        let pending = self.pending.load(std::sync::atomic::Ordering::Relaxed);
        (self.pool.size(), u32::try_from(self.pool.num_idle()).unwrap_or(u32::MAX), pending)
    }

    async fn status_counts(&self) -> Result<HashMap<String, i64>, StoreError> {
        let rows: Vec<(String, i64)> = sqlx::query_as("SELECT status, count(*) FROM dag_executions GROUP BY status")
            .fetch_all(&mut *self.conn().await?)
            .await?;
        Ok(rows.into_iter().collect())
    }
}

async fn update_nodes(tx: &mut sqlx::PgConnection, id: Uuid, nodes: &[NodeUpdate]) -> Result<(), StoreError> {
    let col = |f: fn(&NodeUpdate) -> Option<String>| nodes.iter().map(f).collect::<Vec<Option<String>>>();
    let ids: Vec<&str> = nodes.iter().map(|n| n.node_id.as_str()).collect();
    let statuses: Vec<String> = nodes.iter().map(|n| text(&n.status)).collect();
    let attempts: Vec<i32> = nodes.iter().map(|n| n.attempt).collect();
    let bases: Vec<i32> = nodes.iter().map(|n| n.attempt_base).collect();
    let retry_at: Vec<Option<i64>> = nodes.iter().map(|n| n.retry_at_ms).collect();
    let compensation: Vec<String> = nodes.iter().map(|n| text(&n.compensation)).collect();
    let dispatched: Vec<bool> = nodes.iter().map(|n| n.dispatched).collect();
    let durations: Vec<Option<i64>> = nodes.iter().map(|n| n.duration_ms).collect();
    sqlx::query(
        "UPDATE node_traces t SET status = u.status, attempt = u.attempt, attempt_base = u.attempt_base,
             retry_at_ms = u.retry_at_ms,
             skip_reason = u.skip_reason, error_type = u.error_type, error = u.error, compensation = u.compensation,
             started_at = CASE WHEN u.dispatched THEN now()
                               ELSE COALESCE(u.started_at::timestamptz, t.started_at) END,
             completed_at = CASE WHEN u.dispatched THEN NULL
                                 ELSE COALESCE(u.completed_at::timestamptz, t.completed_at) END,
             duration_ms = CASE WHEN u.dispatched THEN NULL ELSE COALESCE(u.duration_ms, t.duration_ms) END,
             worker_id = COALESCE(u.worker_id, t.worker_id),
             input_hash = COALESCE(u.input_hash, t.input_hash),
             output_hash = COALESCE(u.output_hash, t.output_hash),
             trace_id = COALESCE(u.trace_id, t.trace_id)
         FROM UNNEST($2::text[], $3::text[], $4::int[], $5::bigint[], $6::text[], $7::text[], $8::text[], $9::text[],
                     $10::bool[], $11::text[], $12::text[], $13::bigint[], $14::text[], $15::text[], $16::text[],
                     $17::int[], $18::text[])
              AS u(node_id, status, attempt, retry_at_ms, skip_reason, error_type, error, compensation,
                   dispatched, started_at, completed_at, duration_ms, worker_id, input_hash, output_hash,
                   attempt_base, trace_id)
         WHERE t.execution_id = $1 AND t.node_id = u.node_id",
    )
    .bind(id)
    .bind(&ids)
    .bind(&statuses)
    .bind(&attempts)
    .bind(&retry_at)
    .bind(col(|n| n.skip_reason.as_ref().map(text)))
    .bind(col(|n| n.error_type.clone()))
    .bind(col(|n| n.error.clone()))
    .bind(&compensation)
    .bind(&dispatched)
    .bind(col(|n| n.started_at.clone()))
    .bind(col(|n| n.completed_at.clone()))
    .bind(&durations)
    .bind(col(|n| n.worker_id.clone()))
    .bind(col(|n| n.input_hash.clone()))
    .bind(col(|n| n.output_hash.clone()))
    .bind(&bases)
    .bind(col(|n| n.trace_id.clone()))
    .execute(&mut *tx)
    .await?;
    Ok(())
}

async fn insert_record(tx: &mut sqlx::PgConnection, id: Uuid, seq: i32, r: &Record) -> Result<(), StoreError> {
    let parents = serde_json::to_value(&r.parent_hashes).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    sqlx::query(
        "INSERT INTO execution_provenance (execution_id, seq, node_id, agent_id, input, outputs, input_hash,
             output_hash, parent_hashes, chain_hash, attempt_count, started_at, completed_at, duration_ms,
             worker_id, prev_record_hash, record_hash)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)",
    )
    .bind(id)
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

#[async_trait::async_trait]
impl Subscription for sqlx::postgres::PgListener {
    async fn next(&mut self) -> Result<String, StoreError> {
        Ok(self.recv().await?.payload().to_owned())
    }
}
