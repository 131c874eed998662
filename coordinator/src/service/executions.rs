//! Executions: submit one (idempotency keys, the kill switch, a definition changed under a stale
//! cache), request a cancel, delete the checkpoints of a finished one.

use std::time::SystemTime;

use engine::provenance;
use serde_json::{Value, json};
use uuid::Uuid;

use super::ServiceError;
use super::dags::{Catalog, compiled};
use crate::metrics::Metrics;
use crate::store::{Created, ExecutionRow, ExecutionStore, Idempotency, NewExecution, StoreError, text};

/// A submission, checked and with its defaults filled in.
#[derive(Debug, Clone)]
pub struct Submission {
    pub input: Value,
    pub options: Value,
    pub priority: i32,
    /// The execution's logical clock (RFC 3339, seconds): given, or now.
    pub clock: String,
    pub idempotency_key: Option<String>,
}

/// An accepted submission: a new execution, or the one the idempotency key already named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    pub execution_id: Uuid,
    pub already_accepted: bool,
}

/// Whether new executions are taken (`GL_ORCHESTRATOR_ACCEPT_NEW_EXECUTIONS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intake {
    Open,
    Closed,
}

/// Refuses every submission while intake is closed (an adapter calls this before reading a body).
pub fn check_intake(intake: Intake) -> Result<(), ServiceError> {
    match intake {
        Intake::Open => Ok(()),
        Intake::Closed => Err(ServiceError::Unavailable(
            "new executions are switched off (GL_ORCHESTRATOR_ACCEPT_NEW_EXECUTIONS=false)".into(),
        )),
    }
}

/// Submits `submission` for the tenant's DAG `dag_id`. The same idempotency key with the same
/// request is the same execution; with another request, a conflict.
pub async fn execute(
    catalog: &Catalog<'_>,
    db: &dyn ExecutionStore,
    intake: Intake,
    tenant: &str,
    dag_id: &str,
    submission: &Submission,
) -> Result<Accepted, ServiceError> {
    let request_started = SystemTime::now();
    check_intake(intake)?;
    let Submission { input, options, priority, clock, idempotency_key: key } = submission;
    let input_hash = provenance::hash_value(input);
    let request_hash =
        provenance::hash_value(&json!({"dag_id": dag_id, "input_data": input, "execution_options": options}));
    // A cached definition may be stale; the database refuses it and the second pass reads it fresh.
    let mut row = catalog.get(tenant, dag_id).await?;
    loop {
        let new = NewExecution {
            tenant,
            dag_id,
            dag: &compiled(&row)?,
            input,
            input_hash: input_hash.as_str(),
            options,
            priority: *priority,
            clock,
            idempotency: key.as_deref().map(|key| Idempotency { key, request_hash: request_hash.as_str() }),
        };
        let created = db.create_execution(new).await.map_err(|e| match e {
            StoreError::Conflict(what) => ServiceError::Conflict(what),
            e => e.into(),
        })?;
        match created {
            Created::New(id) => {
                crate::spans::submitted(&id.to_string(), dag_id, request_started);
                return Ok(Accepted { execution_id: id, already_accepted: false });
            }
            Created::Existing(id) => return Ok(Accepted { execution_id: id, already_accepted: true }),
            Created::DagChanged => {
                catalog.forget(tenant, dag_id).await;
                row = catalog.fresh(tenant, dag_id).await?;
            }
        }
    }
}

/// The tenant's execution `id`; another tenant's is not found either.
pub async fn tenant_execution(db: &dyn ExecutionStore, tenant: &str, id: Uuid) -> Result<ExecutionRow, ServiceError> {
    db.execution(tenant, id).await?.ok_or_else(|| ServiceError::NotFound(format!("no execution {id}")))
}

/// Asks the execution's owner to cancel it; a conflict when it has already finished.
pub async fn cancel(db: &dyn ExecutionStore, tenant: &str, execution: &ExecutionRow) -> Result<(), ServiceError> {
    let id = execution.execution_id;
    if !db.request_cancel(tenant, id).await? {
        return Err(ServiceError::Conflict(format!("execution {id} already finished as {}", text(&execution.status))));
    }
    Ok(())
}

/// Deletes the checkpoints of a finished execution; returns how many. A conflict while it runs.
pub async fn delete_checkpoints(
    db: &dyn ExecutionStore,
    metrics: &Metrics,
    tenant: &str,
    id: Uuid,
) -> Result<u64, ServiceError> {
    match db.delete_checkpoints(tenant, id).await? {
        Some(deleted) => {
            metrics.checkpoint_operations.with_label_values(&["delete", "ok"]).inc_by(deleted);
            Ok(deleted)
        }
        None => Err(ServiceError::Conflict(format!("execution {id} is running; its checkpoints cannot be deleted"))),
    }
}
