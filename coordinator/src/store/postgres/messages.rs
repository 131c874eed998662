//! The PostgreSQL store: the inbox of results, the outbox of messages, and their wake-ups (the `MessageStore`
//! role).

// The adapter's imports and helpers (time and id formats, row readers) are shared by its role files.
use super::*;
use crate::store::MessageStore;

#[async_trait::async_trait]
impl MessageStore for PgStore {
    async fn subscribe(&self, topic: Topic) -> Result<Box<dyn Subscription>, StoreError> {
        let channel = match topic {
            Topic::Inbox => INBOX_CHANNEL,
            Topic::Outbox => OUTBOX_CHANNEL,
        };
        Ok(Box::new(self.listen(channel).await?))
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
                 SELECT $1, $2, $3, $4, $5 WHERE EXISTS
                     (SELECT 1 FROM node_traces WHERE execution_id = $1 AND node_id = $2 AND attempt >= $3)
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

    async fn claim_outbox(&self, limit: i64, claim: Duration) -> Result<Vec<OutboxRow>, StoreError> {
        let rows = sqlx::query(
            "UPDATE outbox SET claimed_until = now() + make_interval(secs => $2)
             WHERE id IN (SELECT id FROM outbox WHERE claimed_until IS NULL OR claimed_until < now()
                          ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED)
             RETURNING id, exchange, routing_key, body, headers",
        )
        .bind(limit)
        .bind(claim.as_secs_f64())
        .fetch_all(&mut *self.conn().await?)
        .await?;
        let mut rows: Vec<OutboxRow> = rows.iter().map(read::outbox).collect::<Result<_, _>>()?;
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
}
