//! The validation report: every problem found, errors apart from warnings.

use serde::{Deserialize, Serialize};

/// Stable machine-readable kinds of validation error. Clients may match on these strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorType {
    EmptyDag,
    DuplicateNodeId,
    InvalidNodeId,
    SelfDependency,
    MissingDependency,
    Cycle,
    InvalidPolicy,
    InvalidCondition,
    InvalidInputMapping,
    TooManyNodes,
    /// A DAG or node field outside the graph and policies: `name`, `dag_id`, `version`,
    /// `agent_id`, `queue`, `compensation_handler`, `priority`.
    InvalidField,
}

/// Kinds of warning: the DAG is valid, but something is probably not what the author meant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WarningType {
    /// A node lists the same dependency twice; it counts once.
    DuplicateDependency,
    /// A `compensation_handler` that no failure policy of this DAG will ever call.
    UnusedCompensationHandler,
    /// A field of the earlier implementation's exports (`hash`, `topology_levels`, ...) that is
    /// accepted for compatibility and ignored.
    LegacyFieldIgnored,
}

/// One finding: what kind, a sentence for people, and the nodes involved (in a meaningful order:
/// for a cycle, the order around the cycle).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Issue<T> {
    pub error_type: T,
    pub message: String,
    pub nodes: Vec<String>,
}

pub type ValidationError = Issue<ErrorType>;
pub type ValidationWarning = Issue<WarningType>;

/// The outcome of validating a DAG, in the shape the CLI and the API print.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValidationReport {
    pub valid: bool,
    pub errors: Vec<ValidationError>,
    pub warnings: Vec<ValidationWarning>,
    pub error_count: usize,
}

impl ValidationReport {
    pub fn new(errors: Vec<ValidationError>, warnings: Vec<ValidationWarning>) -> Self {
        Self { valid: errors.is_empty(), error_count: errors.len(), errors, warnings }
    }

    /// Whether any error has this type.
    pub fn has(&self, kind: ErrorType) -> bool {
        self.errors.iter().any(|e| e.error_type == kind)
    }
}

/// Collects findings while validating.
#[derive(Debug, Default)]
pub(crate) struct Findings {
    pub errors: Vec<ValidationError>,
    pub warnings: Vec<ValidationWarning>,
}

impl Findings {
    pub fn error(&mut self, error_type: ErrorType, nodes: &[&str], message: String) {
        let nodes = nodes.iter().map(|n| (*n).to_owned()).collect();
        self.errors.push(Issue { error_type, message, nodes });
    }

    pub fn warning(&mut self, error_type: WarningType, nodes: &[&str], message: String) {
        let nodes = nodes.iter().map(|n| (*n).to_owned()).collect();
        self.warnings.push(Issue { error_type, message, nodes });
    }
}
