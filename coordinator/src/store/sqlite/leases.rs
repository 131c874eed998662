//! The SQLite store: leases (claim with admission, renew, release) and the fenced commit of a step (the
//! `LeaseStore` role).

// The adapter's imports and helpers (time and id formats, row readers) are shared by its role files.
use super::*;
use crate::store::LeaseStore;

#[async_trait::async_trait]
impl LeaseStore for SqliteStore {
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
        "retry_at_ms": n.retry_at_ms, "deadline_ms": n.deadline_ms, "skip_reason": n.skip_reason, "error_type": n.error_type,
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
             retry_at_ms = u.u_retry_at_ms, deadline_ms = u.u_deadline_ms, skip_reason = u.u_skip_reason, error_type = u.u_error_type,
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
                      value ->> 'retry_at_ms' AS u_retry_at_ms, value ->> 'deadline_ms' AS u_deadline_ms,
                      value ->> 'skip_reason' AS u_skip_reason,
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
