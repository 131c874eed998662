//! Resume: a failed or cancelled execution goes back in line with the nodes whose checkpoint
//! verifies kept and every other node to run again; an interrupted one (no live lease) is left
//! to the next coordinator that claims it, which resumes it from its checkpoints.

use std::collections::HashMap;

use engine::dag::NodeIndex;
use engine::provenance;
use engine::state::{ExecutionStatus, NodeStatus};
use serde::Serialize;
use uuid::Uuid;

use super::{ServiceError, pinned_dag};
use crate::metrics::Metrics;
use crate::store::{CheckpointRow, ExecutionRow, NodeCounts, NodeRow, Store, text};

/// What a resume did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct Resumed {
    #[schemars(with = "String")]
    pub execution_id: Uuid,
    pub status: String,
    /// Nodes kept: their checkpoint verified (or, when interrupted, they had completed).
    pub nodes_skipped: Vec<String>,
    /// Nodes that run (again).
    pub nodes_remaining: Vec<String>,
    /// Completed nodes whose stored outputs no longer hash to their recorded output hash.
    pub checkpoints_rejected: Vec<String>,
    pub message: String,
}

/// Resumes `execution` (already looked up for its tenant).
pub async fn resume(db: &dyn Store, metrics: &Metrics, execution: &ExecutionRow) -> Result<Resumed, ServiceError> {
    let id = execution.execution_id;
    let rows = db.nodes(id).await?;
    match execution.status {
        ExecutionStatus::Completed => return Err(ServiceError::Conflict(format!("execution {id} already completed"))),
        ExecutionStatus::Failed | ExecutionStatus::Cancelled => {}
        _ if db.lease_live(id).await? => {
            return Err(ServiceError::Conflict(format!("execution {id} is running under a live lease")));
        }
        _ => return Ok(interrupted(execution, &rows)),
    }
    let dag = pinned_dag(db, &execution.dag_hash).await?;
    let checkpoints: HashMap<String, CheckpointRow> =
        db.checkpoints(id).await?.into_iter().map(|c| (c.node_id.clone(), c)).collect();
    let trusted = |v: NodeIndex| {
        checkpoints.get(dag.node_id(v)).is_some_and(|c| provenance::hash_value(&c.outputs).as_str() == c.output_hash)
    };
    let completed =
        |v: NodeIndex| rows.iter().any(|r| r.node_id == dag.node_id(v) && r.status == NodeStatus::Completed);
    let rejected: Vec<String> = (0..dag.len() as NodeIndex)
        .filter(|&v| completed(v) && !trusted(v))
        .map(|v| dag.node_id(v).to_owned())
        .collect();
    for node in &rejected {
        tracing::warn!(execution_id = %id, node_id = node, "checkpoint failed verification; the node runs again");
    }
    let verified = checkpoints.len() as u64 - rejected.len().min(checkpoints.len()) as u64;
    metrics.checkpoint_operations.with_label_values(&["verify", "ok"]).inc_by(verified);
    metrics.checkpoint_operations.with_label_values(&["verify", "failed"]).inc_by(rejected.len() as u64);
    let snapshot = crate::scheduler::snapshot(&dag, execution, rows.clone())?;
    let resumed = engine::state::resume(&dag, &snapshot, trusted);
    let names = |list: &[NodeIndex]| -> Vec<String> { list.iter().map(|&v| dag.node_id(v).to_owned()).collect() };
    let (skipped, remaining) = (names(&resumed.skipped), names(&resumed.remaining));
    let counts = NodeCounts { completed: i32::try_from(skipped.len()).unwrap_or(i32::MAX), ..NodeCounts::default() };
    if !db.resume(execution, &remaining, counts).await? {
        return Err(ServiceError::Conflict(format!("execution {id} changed while resuming; try again")));
    }
    Ok(Resumed {
        execution_id: id,
        status: "pending".into(),
        nodes_skipped: skipped,
        nodes_remaining: remaining,
        checkpoints_rejected: rejected,
        message: "Execution resumed".into(),
    })
}

/// Interrupted: no live owner. Any coordinator takes it over from its checkpoints.
fn interrupted(execution: &ExecutionRow, rows: &[NodeRow]) -> Resumed {
    let listed = |done: bool| {
        rows.iter().filter(move |r| (r.status == NodeStatus::Completed) == done).map(|r| r.node_id.clone())
    };
    Resumed {
        execution_id: execution.execution_id,
        status: text(&execution.status),
        nodes_skipped: listed(true).collect(),
        nodes_remaining: listed(false).collect(),
        checkpoints_rejected: Vec::new(),
        message: "Execution had no live owner; a coordinator resumes it from its checkpoints".into(),
    }
}
