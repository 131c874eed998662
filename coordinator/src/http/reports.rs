//! The two reports an execution gives, as serde types (their OpenAPI schemas generated from
//! them, like [`super::answers`]): the per-node trace, with every attempt's result, and the
//! provenance report, with the verifier's verdict on each record. The agents' own values
//! (inputs, outputs) and the pinned definition stay JSON values: they are what was stored.

use chrono::{DateTime, Utc};
use engine::dag::Dag;
use engine::messages::ResultMessage;
use engine::provenance::{NodeVerdict, Record, Verification};
use engine::state::Outcome;
use schemars::JsonSchema;
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use crate::store::{ExecutionRow, NodeRow, text};

/// An execution's nodes in level order, each with its attempts.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Trace {
    #[schemars(with = "String")]
    pub execution_id: Uuid,
    pub status: String,
    pub nodes: Vec<NodeTrace>,
}

/// One node as it stands, and the results of its attempts (tasks first, then compensations).
#[derive(Debug, Serialize, JsonSchema)]
pub struct NodeTrace {
    pub node_id: String,
    pub agent_id: String,
    pub status: String,
    pub level_index: i32,
    pub attempt_count: i32,
    pub input_hash: Option<String>,
    pub output_hash: Option<String>,
    pub error_type: Option<String>,
    pub error: Option<String>,
    pub skip_reason: Option<String>,
    pub compensation: String,
    #[schemars(with = "Option<String>")]
    pub started_at: Option<DateTime<Utc>>,
    #[schemars(with = "Option<String>")]
    pub completed_at: Option<DateTime<Utc>>,
    pub duration_ms: Option<i64>,
    pub worker_id: Option<String>,
    pub trace_id: Option<String>,
    pub outputs: Option<Value>,
    pub attempts: Vec<AttemptTrace>,
}

/// One attempt's result without its outputs (the checkpoint holds those).
#[derive(Debug, Serialize, JsonSchema)]
pub struct AttemptTrace {
    pub attempt: u32,
    pub kind: String,
    pub outcome: String,
    pub error_type: Option<String>,
    pub error: Option<String>,
    pub retryable: Option<bool>,
    pub worker_id: String,
    pub started_at: String,
    pub completed_at: String,
    pub duration_ms: u64,
    pub deliveries: u32,
}

impl NodeTrace {
    pub fn of(n: NodeRow, attempts: Vec<ResultMessage>) -> Self {
        Self {
            status: text(&n.status),
            skip_reason: n.skip_reason.as_ref().map(text),
            compensation: text(&n.compensation),
            attempts: attempts.into_iter().map(AttemptTrace::from).collect(),
            node_id: n.node_id,
            agent_id: n.agent_id,
            level_index: n.level_index,
            attempt_count: n.attempt,
            input_hash: n.input_hash,
            output_hash: n.output_hash,
            error_type: n.error_type,
            error: n.error,
            started_at: n.started_at,
            completed_at: n.completed_at,
            duration_ms: n.duration_ms,
            worker_id: n.worker_id,
            trace_id: n.trace_id,
            outputs: n.outputs,
        }
    }
}

impl From<ResultMessage> for AttemptTrace {
    fn from(r: ResultMessage) -> Self {
        let (outcome, error, retryable) = match r.outcome {
            Outcome::Succeeded { .. } => ("succeeded", None, None),
            Outcome::Failed { error, retryable } => ("failed", Some(error), Some(retryable)),
        };
        let (error_type, error) = error.map(|e| (e.error_type, e.message)).unzip();
        Self {
            attempt: r.attempt,
            kind: text(&r.kind),
            outcome: outcome.to_owned(),
            error_type,
            error,
            retryable,
            worker_id: r.worker_id,
            started_at: r.started_at,
            completed_at: r.completed_at,
            duration_ms: r.duration_ms,
            deliveries: r.deliveries,
        }
    }
}

/// The provenance chain of an execution and the verifier's verdict, with what an auditor needs
/// to check it again outside our systems: the pinned definition, its canonical order and input.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ProvenanceReport {
    #[schemars(with = "String")]
    pub execution_id: Uuid,
    pub dag_hash: String,
    pub input_hash: String,
    pub provenance_chain_hash: Option<String>,
    pub recomputed_chain_hash: String,
    pub chain_valid: bool,
    pub problems: Vec<String>,
    pub node_count: usize,
    pub canonical_order: Vec<String>,
    pub definition: Value,
    pub nodes: Vec<ProvenanceNode>,
}

/// One stored record (every hashed field and its timing), its verdict and its dependencies.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ProvenanceNode {
    pub node_id: String,
    pub agent_id: String,
    pub input: Value,
    pub outputs: Value,
    pub input_hash: String,
    pub output_hash: String,
    pub parent_hashes: Vec<String>,
    pub chain_hash: String,
    pub attempt_count: u32,
    pub started_at: String,
    pub completed_at: String,
    pub duration_ms: u64,
    pub worker_id: String,
    pub prev_record_hash: String,
    pub record_hash: String,
    pub valid: bool,
    pub problems: Vec<String>,
    pub expected_parent_hashes: Vec<String>,
    pub depends_on: Vec<String>,
}

impl ProvenanceReport {
    /// The report on `records` (in commit order) as `verdict` judged them. A completed execution
    /// without a stored chain hash is not valid, whatever its records say.
    pub fn of(e: &ExecutionRow, dag: &Dag, records: Vec<Record>, verdict: Verification) -> Self {
        let chain_valid = verdict.chain_valid
            && (e.provenance_chain_hash.is_some() || e.status != engine::state::ExecutionStatus::Completed);
        Self {
            execution_id: e.execution_id,
            dag_hash: e.dag_hash.clone(),
            input_hash: e.input_hash.clone(),
            provenance_chain_hash: e.provenance_chain_hash.clone(),
            recomputed_chain_hash: verdict.recomputed_chain_hash.to_string(),
            chain_valid,
            problems: verdict.problems,
            node_count: records.len(),
            canonical_order: dag.order_ids().into_iter().map(str::to_owned).collect(),
            definition: serde_json::to_value(dag.definition()).unwrap_or_default(),
            nodes: records.into_iter().zip(verdict.nodes).map(|(r, v)| ProvenanceNode::of(dag, r, v)).collect(),
        }
    }
}

impl ProvenanceNode {
    fn of(dag: &Dag, r: Record, v: NodeVerdict) -> Self {
        let depends_on = dag
            .index_of(&r.node_id)
            .map(|i| dag.node(i).deps.iter().map(|&d| dag.node_id(d).to_owned()).collect())
            .unwrap_or_default();
        let hashes = |hs: Vec<engine::canonical::ContentHash>| hs.iter().map(ToString::to_string).collect();
        Self {
            input_hash: r.input_hash.to_string(),
            output_hash: r.output_hash.to_string(),
            parent_hashes: hashes(r.parent_hashes),
            chain_hash: r.chain_hash.to_string(),
            attempt_count: r.timing.attempt_count,
            started_at: r.timing.started_at,
            completed_at: r.timing.completed_at,
            duration_ms: r.timing.duration_ms,
            worker_id: r.timing.worker_id,
            prev_record_hash: r.prev_record_hash.to_string(),
            record_hash: r.record_hash.to_string(),
            valid: v.valid,
            problems: v.problems,
            expected_parent_hashes: hashes(v.expected_parent_hashes),
            depends_on,
            node_id: r.node_id,
            agent_id: r.agent_id,
            input: r.input,
            outputs: r.outputs,
        }
    }
}
