//! The state machine's vocabulary: execution and node statuses, outcomes and errors, the
//! effects a step asks for, and the snapshot an execution is stored and restored as.

use crate::dag::NodeIndex;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Status of an execution.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExecutionStatus {
    #[default]
    Pending,
    /// Accepted, waiting for a concurrency slot.
    Queued,
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl ExecutionStatus {
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }
}

/// Status of a node within an execution.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeStatus {
    #[default]
    Pending,
    Running,
    /// A failed attempt that will be retried at `retry_at_ms`.
    Retrying,
    Completed,
    Failed,
    Skipped,
    UpstreamFailed,
    Cancelled,
}

impl NodeStatus {
    pub fn is_terminal(self) -> bool {
        !matches!(self, Self::Pending | Self::Running | Self::Retrying)
    }
}

/// Why a node was skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    /// Its own condition was false.
    Condition,
    /// Every dependency was skipped by a false condition.
    Pruned,
    /// It failed, and its `on_failure` (or `on_timeout`) said skip.
    Policy,
}

/// Why an execution stopped dispatching.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Halt {
    FailFast,
    Compensate,
    Cancel,
}

/// An error as reported for a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeError {
    pub error_type: String,
    pub message: String,
}

impl NodeError {
    pub fn new(error_type: &str, message: impl Into<String>) -> Self {
        Self { error_type: error_type.to_owned(), message: message.into() }
    }
}

/// How one attempt ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    Succeeded { outputs: Value },
    Failed { error: NodeError, retryable: bool },
}

/// Progress of a completed node's compensation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Compensation {
    #[default]
    None,
    Running,
    Completed,
    Failed,
}

/// Everything persisted about one node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeState {
    pub status: NodeStatus,
    /// Attempts dispatched so far; while running, the number of the current one. Attempt
    /// numbers never repeat within an execution, across resumes too.
    pub attempt: u32,
    /// Attempts made before the latest resume: the retry budget counts from here.
    pub attempt_base: u32,
    pub retry_at_ms: Option<u64>,
    /// While running: when the coordinator ends the attempt if no result has come (dispatch +
    /// timeout + grace). Absent in snapshots from before it existed: no deadline then.
    #[serde(default)]
    pub deadline_ms: Option<u64>,
    pub skip_reason: Option<SkipReason>,
    pub error: Option<NodeError>,
    pub outputs: Option<Value>,
    pub compensation: Compensation,
}

impl Default for NodeState {
    fn default() -> Self {
        Self {
            status: NodeStatus::Pending,
            attempt: 0,
            attempt_base: 0,
            retry_at_ms: None,
            deadline_ms: None,
            skip_reason: None,
            error: None,
            outputs: None,
            compensation: Compensation::None,
        }
    }
}

/// What a task asks a worker to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    Run,
    Compensate,
}

/// One attempt of one node, to be sent to a worker.
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    pub node: NodeIndex,
    pub attempt: u32,
    pub kind: TaskKind,
    pub agent_id: String,
    pub input: Value,
    pub timeout_ms: u64,
}

/// Something the coordinator must do after a step.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    Dispatch(Task),
    /// Ask the worker running this attempt to stop.
    CancelRunning {
        node: NodeIndex,
        attempt: u32,
    },
    Finished(ExecutionStatus),
}

/// An outcome that does not apply to the current state (a duplicate, a late result of an older
/// attempt, or a result for a node that is not running). It is acknowledged and ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("outcome of node {node} attempt {attempt} does not match the current state")]
pub struct Stale {
    pub node: NodeIndex,
    pub attempt: u32,
}

/// The persisted part of an execution, enough to rebuild an [`Execution`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub status: ExecutionStatus,
    pub halt: Option<Halt>,
    pub nodes: Vec<NodeState>,
}
