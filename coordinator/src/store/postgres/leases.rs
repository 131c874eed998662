//! The PostgreSQL store: leases (claim with admission, renew, release) and the fenced commit of a step (the
//! `LeaseStore` role).

// The adapter's imports and helpers (time and id formats, row readers) are shared by its role files.
use super::*;
use crate::store::LeaseStore;

#[async_trait::async_trait]
impl LeaseStore for PgStore {
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

    async fn lease_live(&self, id: Uuid) -> Result<bool, StoreError> {
        let live: Option<Option<bool>> =
            sqlx::query_scalar("SELECT lease_expires_at > now() FROM dag_executions WHERE execution_id = $1")
                .bind(id)
                .fetch_optional(&mut *self.conn().await?)
                .await?;
        Ok(live.flatten().unwrap_or(false))
    }
}

async fn update_nodes(tx: &mut sqlx::PgConnection, id: Uuid, nodes: &[NodeUpdate]) -> Result<(), StoreError> {
    let col = |f: fn(&NodeUpdate) -> Option<String>| nodes.iter().map(f).collect::<Vec<Option<String>>>();
    let ids: Vec<&str> = nodes.iter().map(|n| n.node_id.as_str()).collect();
    let statuses: Vec<String> = nodes.iter().map(|n| text(&n.status)).collect();
    let attempts: Vec<i32> = nodes.iter().map(|n| n.attempt).collect();
    let bases: Vec<i32> = nodes.iter().map(|n| n.attempt_base).collect();
    let retry_at: Vec<Option<i64>> = nodes.iter().map(|n| n.retry_at_ms).collect();
    let deadlines: Vec<Option<i64>> = nodes.iter().map(|n| n.deadline_ms).collect();
    let compensation: Vec<String> = nodes.iter().map(|n| text(&n.compensation)).collect();
    let dispatched: Vec<bool> = nodes.iter().map(|n| n.dispatched).collect();
    let durations: Vec<Option<i64>> = nodes.iter().map(|n| n.duration_ms).collect();
    sqlx::query(
        "UPDATE node_traces t SET status = u.status, attempt = u.attempt, attempt_base = u.attempt_base,
             retry_at_ms = u.retry_at_ms, deadline_ms = u.deadline_ms,
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
                     $17::int[], $18::text[], $19::bigint[])
              AS u(node_id, status, attempt, retry_at_ms, skip_reason, error_type, error, compensation,
                   dispatched, started_at, completed_at, duration_ms, worker_id, input_hash, output_hash,
                   attempt_base, trace_id, deadline_ms)
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
    .bind(&deadlines)
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
