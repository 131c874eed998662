//! Response bodies as serde types: what a handler answers is one of these, and the OpenAPI
//! document's response schemas are generated from the same declarations (`schemars`), so the
//! document cannot drift from the answers. The trace and the provenance report are in
//! [`super::reports`].

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use crate::store::{CheckpointRow, DagSummary, ExecutionRow, text};

/// A page of a list, with the cursor of the next page when there may be one.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Page<T> {
    pub count: usize,
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

impl<T> Page<T> {
    pub fn new(items: Vec<T>, next_cursor: Option<String>) -> Self {
        Self { count: items.len(), items, next_cursor }
    }
}

/// A DAG as stored: its definition with `dag_hash`, `revision`, `created_at` and `updated_at`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct DagView {
    pub dag: Value,
}

/// A DAG created, imported or updated, with the warnings its validation gave.
#[derive(Debug, Serialize, JsonSchema)]
pub struct DagSaved {
    pub dag: Value,
    pub message: String,
    pub warnings: Vec<Value>,
}

/// One DAG in the list.
#[derive(Debug, Serialize, JsonSchema)]
pub struct DagListItem {
    pub dag_id: String,
    pub name: String,
    pub version: String,
    pub dag_hash: String,
    pub revision: i64,
    pub node_count: i32,
    #[schemars(with = "String")]
    pub created_at: DateTime<Utc>,
    #[schemars(with = "String")]
    pub updated_at: DateTime<Utc>,
}

impl From<&DagSummary> for DagListItem {
    fn from(r: &DagSummary) -> Self {
        Self {
            dag_id: r.dag_id.clone(),
            name: r.name.clone(),
            version: r.version.clone(),
            dag_hash: r.dag_hash.clone(),
            revision: r.revision,
            node_count: r.node_count,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct DagDeleted {
    pub dag_id: String,
    pub message: String,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct DagExport {
    pub dag_id: String,
    pub dag_hash: String,
    pub yaml: String,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct DagGraph {
    pub dag_id: String,
    pub mermaid: String,
}

/// An execution submitted (or the one its idempotency key already named).
#[derive(Debug, Serialize, JsonSchema)]
pub struct ExecutionAccepted {
    #[schemars(with = "String")]
    pub execution_id: Uuid,
    pub dag_id: String,
    pub status: String,
    pub message: String,
}

/// An execution's progress, as the list shows it.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ExecutionSummary {
    #[schemars(with = "String")]
    pub execution_id: Uuid,
    pub dag_id: String,
    pub status: String,
    #[schemars(with = "String")]
    pub submitted_at: DateTime<Utc>,
    #[schemars(with = "Option<String>")]
    pub started_at: Option<DateTime<Utc>>,
    #[schemars(with = "Option<String>")]
    pub completed_at: Option<DateTime<Utc>>,
    pub error: Option<String>,
    pub total_nodes: i32,
    pub completed_nodes: i32,
    pub failed_nodes: i32,
    pub skipped_nodes: i32,
    pub provenance_chain_hash: Option<String>,
}

impl From<&ExecutionRow> for ExecutionSummary {
    fn from(e: &ExecutionRow) -> Self {
        Self {
            execution_id: e.execution_id,
            dag_id: e.dag_id.clone(),
            status: text(&e.status),
            submitted_at: e.submitted_at,
            started_at: e.started_at,
            completed_at: e.completed_at,
            error: e.error.clone(),
            total_nodes: e.total_nodes,
            completed_nodes: e.completed_nodes,
            failed_nodes: e.failed_nodes,
            skipped_nodes: e.skipped_nodes,
            provenance_chain_hash: e.provenance_chain_hash.clone(),
        }
    }
}

/// One execution: its progress, the definition it pinned, its input and its logical clock.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Execution {
    #[serde(flatten)]
    pub summary: ExecutionSummary,
    pub dag_hash: String,
    pub input_data: Value,
    pub input_hash: String,
    pub clock: String,
}

impl From<&ExecutionRow> for Execution {
    fn from(e: &ExecutionRow) -> Self {
        Self {
            summary: e.into(),
            dag_hash: e.dag_hash.clone(),
            input_data: e.input_data.clone(),
            input_hash: e.input_hash.clone(),
            clock: e.clock.clone(),
        }
    }
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ExecutionView {
    pub execution: Execution,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct CancelRequested {
    #[schemars(with = "String")]
    pub execution_id: Uuid,
    pub status: String,
    pub message: String,
}

/// A node's checkpoint, and whether its outputs still hash to the recorded output hash.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Checkpoint {
    #[schemars(with = "String")]
    pub execution_id: Uuid,
    pub node_id: String,
    pub status: String,
    pub outputs: Value,
    pub output_hash: String,
    pub attempt_count: i32,
    #[schemars(with = "String")]
    pub created_at: DateTime<Utc>,
    pub valid: bool,
}

impl Checkpoint {
    pub fn of(execution_id: Uuid, c: CheckpointRow) -> Self {
        let valid = engine::provenance::hash_value(&c.outputs).as_str() == c.output_hash;
        Self {
            execution_id,
            node_id: c.node_id,
            status: text(&c.status),
            outputs: c.outputs,
            output_hash: c.output_hash,
            attempt_count: c.attempt_count,
            created_at: c.created_at,
            valid,
        }
    }
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct CheckpointList {
    pub count: usize,
    pub items: Vec<Checkpoint>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct CheckpointsDeleted {
    pub deleted: u64,
    pub message: String,
}

/// A DAG's validation report (`engine::dag::ValidationReport`), as the API answers it.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Validation {
    pub valid: bool,
    pub errors: Vec<Finding>,
    pub warnings: Vec<Finding>,
    pub error_count: usize,
}

/// One finding: its stable type (an error type for errors, a warning type for warnings), a
/// sentence for people, and the nodes involved.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Finding {
    pub error_type: String,
    pub message: String,
    pub nodes: Vec<String>,
}

impl<T: Serialize> From<engine::dag::Issue<T>> for Finding {
    fn from(issue: engine::dag::Issue<T>) -> Self {
        Self { error_type: text(&issue.error_type), message: issue.message, nodes: issue.nodes }
    }
}

impl From<engine::dag::ValidationReport> for Validation {
    fn from(r: engine::dag::ValidationReport) -> Self {
        Self {
            valid: r.valid,
            error_count: r.error_count,
            errors: r.errors.into_iter().map(Finding::from).collect(),
            warnings: r.warnings.into_iter().map(Finding::from).collect(),
        }
    }
}
