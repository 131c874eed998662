//! The DAG document: what users write in JSON or YAML, before validation.
//!
//! These types accept anything well-formed so that validation can report every problem at once:
//! numbers are kept as written ([`Number`]) and ranges are checked by [`super::compile`]. Unknown
//! fields are rejected. Fields the earlier implementation wrote into its exports (`hash`,
//! `created_at`, `updated_at`, `topology_levels`, and `node_id` inside a node) are accepted so that
//! its files load unchanged; they are ignored (with a warning) and never written back.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Number, Value};

/// A DAG definition as written by a user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DagSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dag_id: Option<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub name: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub description: String,
    #[serde(default = "default_version", deserialize_with = "null_as_default_version")]
    pub version: String,
    pub nodes: NodeEntries,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_retry_policy: Option<RetryPolicySpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_timeout_policy: Option<TimeoutPolicySpec>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub on_failure: DagFailurePolicy,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_parallel_nodes: Option<Number>,
    /// Cap on this DAG's executions running at once (cluster-wide); none means only the global cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent_executions: Option<Number>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub scheduling: Scheduling,
    #[serde(default, deserialize_with = "null_as_default")]
    pub metadata: Map<String, Value>,
    #[serde(default, rename = "hash", skip_serializing)]
    pub legacy_hash: Option<Value>,
    #[serde(default, rename = "created_at", skip_serializing)]
    pub legacy_created_at: Option<Value>,
    #[serde(default, rename = "updated_at", skip_serializing)]
    pub legacy_updated_at: Option<Value>,
    #[serde(default, rename = "topology_levels", skip_serializing)]
    pub legacy_topology_levels: Option<Value>,
}

/// One node of a [`DagSpec`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    #[serde(default, deserialize_with = "null_as_default")]
    pub agent_id: String,
    #[serde(default, deserialize_with = "null_as_default", skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
    #[serde(default, deserialize_with = "null_as_default", skip_serializing_if = "BTreeMap::is_empty")]
    pub input_mapping: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_policy: Option<RetryPolicySpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_policy: Option<TimeoutPolicySpec>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub on_failure: NodeFailurePolicy,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compensation_handler: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<Number>,
    #[serde(default, deserialize_with = "null_as_default", skip_serializing_if = "Map::is_empty")]
    pub metadata: Map<String, Value>,
    /// Static settings handed to the agent; part of the definition and of its hash.
    #[serde(default, deserialize_with = "null_as_default", skip_serializing_if = "Map::is_empty")]
    pub params: Map<String, Value>,
    /// The worker pool that runs the node (`default` when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    #[serde(default, rename = "node_id", skip_serializing)]
    pub legacy_node_id: Option<String>,
}

/// A retry policy as written: every field optional, so a node policy can override the DAG default
/// field by field.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicySpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<Number>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<RetryStrategy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_delay: Option<Number>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_delay: Option<Number>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter_range: Option<Number>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retryable_exceptions: Option<Vec<String>>,
}

/// A timeout policy as written.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutPolicySpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<Number>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_timeout: Option<TimeoutAction>,
}

/// What a failed node does to the rest of the execution, DAG-wide.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DagFailurePolicy {
    /// Dispatch nothing new; running nodes finish; dependents become `upstream_failed`.
    #[default]
    FailFast,
    /// Independent branches run to the end.
    Continue,
    /// Run the `compensation_handler` of each completed node, in reverse canonical order.
    Compensate,
}

/// What happens to the execution when this node fails.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeFailurePolicy {
    /// Apply the DAG's `on_failure`.
    #[default]
    Stop,
    /// The node ends `skipped` with its error kept; dependents see `null`; the execution goes on.
    Skip,
    /// Compensate as DAG-level `compensate` does, whatever the DAG policy says.
    Compensate,
}

/// What an attempt that ran out of time leads to once no retry is left.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeoutAction {
    #[default]
    Fail,
    Skip,
    Compensate,
}

/// How retry delays grow.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RetryStrategy {
    #[default]
    Exponential,
    Linear,
    Constant,
    Fibonacci,
}

/// When a node may start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scheduling {
    /// As soon as its last dependency completes.
    #[default]
    Dependency,
    /// Only once every node of the previous topological level has finished.
    LevelBarrier,
}

/// The `nodes` map, kept as a list of entries so that a repeated key is seen (serde_json would
/// keep the last value silently) and reported as `duplicate_node_id`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeEntries(pub Vec<(String, NodeSpec)>);

impl Serialize for NodeEntries {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (id, node) in &self.0 {
            map.serialize_entry(id, node)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for NodeEntries {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EntriesVisitor;
        impl<'de> Visitor<'de> for EntriesVisitor {
            type Value = NodeEntries;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of node id to node")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<NodeEntries, A::Error> {
                let mut entries = Vec::with_capacity(access.size_hint().unwrap_or(0).min(4096));
                while let Some(entry) = access.next_entry::<String, NodeSpec>()? {
                    entries.push(entry);
                }
                Ok(NodeEntries(entries))
            }
        }
        deserializer.deserialize_map(EntriesVisitor)
    }
}

fn default_version() -> String {
    "1.0.0".to_owned()
}

/// Lets `null` stand for "absent" on fields that have a default, as the earlier exports wrote.
fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

fn null_as_default_version<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    Ok(Option::<String>::deserialize(deserializer)?.unwrap_or_else(default_version))
}

/// The text is not a DAG document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{format} is not a valid DAG document: {message}")]
pub struct ParseError {
    pub format: &'static str,
    pub message: String,
}

impl DagSpec {
    /// Parses JSON.
    pub fn from_json(text: &str) -> Result<Self, ParseError> {
        serde_json::from_str(text).map_err(|e| ParseError { format: "JSON", message: e.to_string() })
    }

    /// Parses YAML. The text is always YAML content, never a path to read.
    pub fn from_yaml(text: &str) -> Result<Self, ParseError> {
        serde_saphyr::from_str(text).map_err(|e| ParseError { format: "YAML", message: e.to_string() })
    }

    /// Parses JSON when the text starts with `{`, YAML otherwise.
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        if text.trim_start().starts_with('{') { Self::from_json(text) } else { Self::from_yaml(text) }
    }

    /// Builds a spec from a JSON value (as received by the API).
    pub fn from_value(value: Value) -> Result<Self, ParseError> {
        serde_json::from_value(value).map_err(|e| ParseError { format: "JSON", message: e.to_string() })
    }

    pub fn to_yaml(&self) -> Result<String, ParseError> {
        serde_saphyr::to_string(self).map_err(|e| ParseError { format: "YAML", message: e.to_string() })
    }
}
