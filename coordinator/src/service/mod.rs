//! Use cases: what the API does, apart from how it is asked. Each takes typed input and the
//! store port and returns a typed outcome or a [`ServiceError`]; none touches axum, headers or
//! status codes, so the HTTP adapter (`crate::http`) only parses, calls and renders, and a
//! second adapter (the HTTP worker transport, a CLI) calls the same functions.
//!
//! - [`resume`]: put a failed, cancelled or interrupted execution back in line, re-running
//!   every node whose checkpoint does not verify.

pub mod resume;

use engine::dag::{Dag, compile_stored};

use crate::store::{DagStore, StoreError};

/// Why a use case refused or failed. The HTTP adapter maps each kind to one problem type.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
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
