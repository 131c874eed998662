//! The SQLite store: DAG definitions, by content and by name (the `DagStore` role).

// The adapter's imports and helpers (time and id formats, row readers) are shared by its role files.
use super::*;
use crate::store::DagStore;

#[async_trait::async_trait]
impl DagStore for SqliteStore {
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
        Ok(row.as_ref().map(read::dag).transpose()?)
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
        Ok(rows.iter().map(read::dag_summary).collect::<Result<_, _>>()?)
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

    async fn definition(&self, dag_hash: &str) -> Result<Option<Value>, StoreError> {
        Ok(sqlx::query_scalar("SELECT definition FROM dag_definitions WHERE dag_hash = ?1")
            .bind(dag_hash)
            .fetch_optional(&mut *self.conn().await?)
            .await?)
    }
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
