//! Use cases: what the API does, apart from how it is asked. Each takes typed input and the
//! store port and returns a typed outcome or a [`ServiceError`]; none touches axum, headers or
//! status codes, so the HTTP adapter (`crate::http`) only parses, calls and renders, and a
//! second adapter (the HTTP worker transport, a CLI) calls the same functions.
//!
//! - [`dags`]: the DAG catalog (create, read through the cache, update with a revision check,
//!   delete, validate); [`merge`]: the pure PUT semantics it applies.
//! - [`executions`]: submit (idempotency keys, the kill switch), cancel, delete checkpoints.
//! - [`resume`]: put a failed, cancelled or interrupted execution back in line, re-running
//!   every node whose checkpoint does not verify.

pub mod dags;
pub mod executions;
pub mod merge;
pub mod resume;

use engine::dag::{Dag, ValidationReport, compile_stored};
use serde_json::Value;

use crate::store::{DagStore, StoreError};

/// Why a use case refused or failed. The HTTP adapter maps each kind to one problem type.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The input is malformed: the caller's mistake, which a retry will not fix.
    #[error("{0}")]
    BadRequest(String),
    /// The DAG document is well-formed but not a valid DAG.
    #[error("the DAG is not valid")]
    Invalid(ValidationReport),
    #[error("{0}")]
    NotFound(String),
    /// The caller's expected revision is not the stored one.
    #[error("{0}")]
    PreconditionFailed(String),
    /// The use case is switched off or a dependency is missing; try later.
    #[error("{0}")]
    Unavailable(String),
    /// The request conflicts with the current state (already completed, still running, changed
    /// meanwhile).
    #[error("{0}")]
    Conflict(String),
    /// What is stored cannot be what we wrote (a pinned definition missing or unreadable).
    #[error("{0}")]
    Corrupt(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The definition an execution was pinned to, compiled (its hash checked against `dag_hash`).
pub async fn pinned_dag(db: &dyn DagStore, dag_hash: &str) -> Result<Dag, ServiceError> {
    let definition =
        db.definition(dag_hash).await?.ok_or_else(|| ServiceError::Corrupt("pinned definition missing".into()))?;
    compile_stored(definition, Some(dag_hash)).map_err(ServiceError::Corrupt)
}

/// PostgreSQL cannot store U+0000 in text or JSONB: refuse it up front, clearly, on both stores.
pub fn reject_nul(value: &Value, what: &str) -> Result<(), ServiceError> {
    let refused = || Err(ServiceError::BadRequest(format!("{what} contains a NUL character (U+0000)")));
    let mut stack = vec![value];
    while let Some(v) = stack.pop() {
        match v {
            Value::String(s) if s.contains('\0') => return refused(),
            Value::Array(items) => stack.extend(items),
            Value::Object(map) => {
                if map.keys().any(|k| k.contains('\0')) {
                    return refused();
                }
                stack.extend(map.values());
            }
            _ => {}
        }
    }
    Ok(())
}
