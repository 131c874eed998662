//! The PostgreSQL store: executions, their node rows, attempts, checkpoints and provenance records, resume and
//! cancel requests, and the figures read from them (the `ExecutionStore` role).

// The adapter's imports and helpers (time and id formats, row readers) are shared by its role files.
use super::*;
use crate::store::{Backlog, ExecutionStore, Idempotency, NodeCounts};

#[async_trait::async_trait]
impl ExecutionStore for PgStore {
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

    async fn create_execution(&self, new: NewExecution<'_>) -> Result<Created, StoreError> {
        let mut tx = self.begin().await?;
        if let Some(Idempotency { key, request_hash }) = new.idempotency {
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
        .bind(new.idempotency.map(|i| i.key))
        .bind(new.idempotency.map(|i| i.request_hash))
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
        Ok(row.as_ref().map(read::execution).transpose()?)
    }

    async fn nodes(&self, id: Uuid) -> Result<Vec<NodeRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT n.node_id, n.agent_id, n.status, n.attempt, n.attempt_base, n.level_index, n.retry_at_ms, n.deadline_ms,
                    n.skip_reason,
                    n.error_type, n.error, n.input_hash, n.output_hash, n.compensation, n.started_at,
                    n.completed_at, n.duration_ms, n.worker_id, n.trace_id, c.outputs
             FROM node_traces n LEFT JOIN dag_checkpoints c USING (execution_id, node_id)
             WHERE n.execution_id = $1 ORDER BY n.level_index, n.node_id",
        )
        .bind(id)
        .fetch_all(&mut *self.conn().await?)
        .await?;
        rows.iter().map(read::node).collect::<Result<_, sqlx::Error>>().map_err(StoreError::from)
    }

    async fn attempts(&self, id: Uuid) -> Result<HashMap<String, Vec<ResultMessage>>, StoreError> {
        let rows: Vec<(String, Value)> = sqlx::query_as(
            "SELECT node_id, result FROM node_attempts WHERE execution_id = $1 ORDER BY node_id, kind DESC, attempt",
        )
        .bind(id)
        .fetch_all(&mut *self.conn().await?)
        .await?;
        read::attempts_by_node(rows)
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
        rows.iter().map(read::record).collect()
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

    async fn resume(
        &self,
        execution: &ExecutionRow,
        remaining: &[String],
        counts: NodeCounts,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        let updated = sqlx::query(
            "UPDATE dag_executions SET status = 'pending', halt = NULL, cancel_requested = false, completed_at = NULL,
                 error = NULL, provenance_chain_hash = NULL, lease_owner = NULL, lease_expires_at = NULL,
                 completed_nodes = $3, failed_nodes = $4, skipped_nodes = $5, updated_at = now()
             WHERE execution_id = $1 AND status = $2 AND lease_epoch = $6",
        )
        .bind(execution.execution_id)
        .bind(text(&execution.status))
        .bind(counts.completed)
        .bind(counts.failed)
        .bind(counts.skipped)
        .bind(execution.lease_epoch)
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() != 1 {
            tx.rollback().await?;
            return Ok(false);
        }
        sqlx::query(
            "UPDATE node_traces SET status = 'pending', attempt_base = attempt, retry_at_ms = NULL, deadline_ms = NULL,
                 skip_reason = NULL,
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

    async fn checkpoints(&self, id: Uuid) -> Result<Vec<CheckpointRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT node_id, status, outputs, output_hash, attempt_count, created_at
             FROM dag_checkpoints WHERE execution_id = $1 ORDER BY node_id",
        )
        .bind(id)
        .fetch_all(&mut *self.conn().await?)
        .await?;
        Ok(rows.iter().map(read::checkpoint).collect::<Result<_, _>>()?)
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
            .bind(filter.status.as_ref().map(text))
            .bind(filter.since)
            .bind(filter.after.map(|a| a.0))
            .bind(filter.after.map(|a| a.1))
            .bind(filter.limit)
            .fetch_all(&mut *self.conn().await?)
            .await?;
        Ok(rows.iter().map(read::execution).collect::<Result<_, _>>()?)
    }

    async fn backlog(&self) -> Result<Backlog, StoreError> {
        let (queued_executions, unconfirmed_messages) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM dag_executions WHERE status = 'queued'), (SELECT count(*) FROM outbox)",
        )
        .fetch_one(&mut *self.conn().await?)
        .await?;
        Ok(Backlog { queued_executions, unconfirmed_messages })
    }

    async fn status_counts(&self) -> Result<HashMap<String, i64>, StoreError> {
        let rows: Vec<(String, i64)> = sqlx::query_as("SELECT status, count(*) FROM dag_executions GROUP BY status")
            .fetch_all(&mut *self.conn().await?)
            .await?;
        Ok(rows.into_iter().collect())
    }
}
