//! DAG definitions: the document format, validation, planning and rendering.
//!
//! A [`DagSpec`] is whatever a user wrote. [`compile`] turns it into a [`Dag`], which can only
//! exist valid: ids checked, policies resolved, conditions parsed, no cycles, and the canonical
//! plan computed. When it cannot, it returns a [`ValidationReport`] with *every* problem found.

mod compile;
mod graph;
mod id_index;
mod policy;
mod render;
mod report;
mod spec;
pub mod synth;
#[cfg(test)]
mod tests;

use std::sync::OnceLock;

pub use compile::{Limits, MAX_NAME_LEN, MAX_VERSION_LEN, compile, compile_stored};
pub use policy::{MAX_RETRIES, MAX_SECONDS, RetryPolicy, TimeoutPolicy};
pub use report::{ErrorType, Issue, ValidationError, ValidationReport, ValidationWarning, WarningType};
pub use spec::{
    DagFailurePolicy, DagSpec, NodeEntries, NodeFailurePolicy, NodeSpec, ParseError, RetryPolicySpec, RetryStrategy,
    Scheduling, TimeoutAction, TimeoutPolicySpec,
};

use crate::canonical::ContentHash;
use crate::condition::{Condition, ValuePath};
use crate::ids::DagId;

/// Index of a node inside one [`Dag`]: its position in the definition's `nodes`.
pub type NodeIndex = u32;

/// Default for `max_parallel_nodes`.
pub const DEFAULT_MAX_PARALLEL_NODES: u32 = 10;
/// Largest accepted `max_parallel_nodes`.
pub const MAX_PARALLEL_NODES: u32 = 500;
/// The worker pool a node runs on when it names none.
pub const DEFAULT_QUEUE: &str = "default";

/// What compilation adds to a node of a valid DAG: resolved indices, policies and expressions.
/// The node's own fields (`agent_id`, `params`, ...) are read from [`Dag::node_spec`].
#[derive(Debug, Clone)]
pub struct Node {
    /// Dependencies, in ascending id order.
    pub deps: Vec<NodeIndex>,
    /// Dependents, in ascending id order.
    pub children: Vec<NodeIndex>,
    pub retry: RetryPolicy,
    pub timeout: TimeoutPolicy,
    pub condition: Option<Condition>,
    /// Target key and source path, by target key.
    pub input_mapping: Vec<(String, ValuePath)>,
    pub priority: i32,
    /// Topological level (roots are 0).
    pub level: u32,
}

/// A valid DAG and its plan. Build one with [`compile`].
#[derive(Debug, Clone)]
pub struct Dag {
    id: DagId,
    /// Computed on first use: hashing a 100,000-node definition costs more than planning it.
    hash: OnceLock<ContentHash>,
    definition: DagSpec,
    /// Node indices in ascending id order.
    by_rank: Vec<NodeIndex>,
    nodes: Vec<Node>,
    order: Vec<NodeIndex>,
    levels: Vec<Vec<NodeIndex>>,
    max_parallel_nodes: u32,
    warnings: Vec<ValidationWarning>,
}

impl Dag {
    pub fn id(&self) -> &DagId {
        &self.id
    }

    /// `dag_hash`: SHA-256 of the RFC 8785 canonical JSON of [`Dag::definition`].
    pub fn hash(&self) -> &ContentHash {
        self.hash.get_or_init(|| compile::definition_hash(&self.definition))
    }

    /// The normalised definition: ids filled in, DAG-level defaults written out, node-level
    /// defaults left out, dependencies sorted, legacy fields dropped; nodes stay in the order the
    /// author wrote them (canonical JSON sorts them for the hash). This is what is stored,
    /// exported and hashed.
    pub fn definition(&self) -> &DagSpec {
        &self.definition
    }

    /// Compiled nodes, by index.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    pub fn node(&self, index: NodeIndex) -> &Node {
        &self.nodes[index as usize]
    }

    pub fn node_id(&self, index: NodeIndex) -> &str {
        &self.definition.nodes.0[index as usize].0
    }

    /// The node as written (normalised).
    pub fn node_spec(&self, index: NodeIndex) -> &NodeSpec {
        &self.definition.nodes.0[index as usize].1
    }

    /// Node indices in ascending id order.
    pub fn by_id(&self) -> &[NodeIndex] {
        &self.by_rank
    }

    /// The worker pool that runs the node.
    pub fn queue(&self, index: NodeIndex) -> &str {
        self.node_spec(index).queue.as_deref().unwrap_or(DEFAULT_QUEUE)
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn index_of(&self, id: &str) -> Option<NodeIndex> {
        let entries = &self.definition.nodes.0;
        let rank = self.by_rank.binary_search_by(|&p| entries[p as usize].0.as_str().cmp(id)).ok()?;
        Some(self.by_rank[rank])
    }

    /// The canonical order: the lexicographically smallest topological order by
    /// (priority descending, id ascending).
    pub fn order(&self) -> &[NodeIndex] {
        &self.order
    }

    /// Topological levels, each in canonical order.
    pub fn levels(&self) -> &[Vec<NodeIndex>] {
        &self.levels
    }

    pub fn max_parallel_nodes(&self) -> u32 {
        self.max_parallel_nodes
    }

    pub fn on_failure(&self) -> DagFailurePolicy {
        self.definition.on_failure
    }

    pub fn scheduling(&self) -> Scheduling {
        self.definition.scheduling
    }

    pub fn warnings(&self) -> &[ValidationWarning] {
        &self.warnings
    }

    /// The report of a DAG that compiled: valid, with its warnings.
    pub fn report(&self) -> ValidationReport {
        ValidationReport::new(Vec::new(), self.warnings.clone())
    }

    /// Node ids in canonical order.
    pub fn order_ids(&self) -> Vec<&str> {
        self.order.iter().map(|&i| self.node_id(i)).collect()
    }

    /// Node ids level by level.
    pub fn level_ids(&self) -> Vec<Vec<&str>> {
        self.levels.iter().map(|l| l.iter().map(|&i| self.node_id(i)).collect()).collect()
    }
}
