//! Validation and planning: [`compile`] turns a [`DagSpec`] into a [`Dag`] or a report of every
//! problem found.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

use serde_json::Number;

use super::graph;
use super::id_index::IdIndex;
use super::policy::{RetryPolicy, TimeoutPolicy};
use super::report::{ErrorType, Findings, ValidationReport, WarningType};
use super::spec::{DagFailurePolicy, DagSpec, NodeFailurePolicy, NodeSpec};
use super::{DEFAULT_MAX_PARALLEL_NODES, DEFAULT_QUEUE, Dag, MAX_PARALLEL_NODES, Node, NodeIndex};
use crate::canonical::{ContentHash, content_hash};
use crate::condition::{Condition, ValuePath};
use crate::ids::{DagId, check_id};

/// Limits that depend on configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most nodes a DAG may have (`GL_ORCHESTRATOR_MAX_DAG_NODES`).
    pub max_nodes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_nodes: 10_000 }
    }
}

/// Longest accepted DAG `name` and `version`, as in the earlier schema.
/// Most characters in a DAG's `name`.
pub const MAX_NAME_LEN: usize = 256;
/// Most bytes in a DAG's `version`.
pub const MAX_VERSION_LEN: usize = 32;
/// Largest accepted per-DAG `max_concurrent_executions`.
const MAX_CONCURRENT_EXECUTIONS: u64 = 100_000;

/// Validates `spec` and, when it is valid, plans it.
///
/// Nodes are indexed by their position in the document, so every pass walks memory in order;
/// ids only matter for ordering, through each node's rank in id order.
pub fn compile(mut spec: DagSpec, limits: &Limits) -> Result<Dag, ValidationReport> {
    let mut f = Findings::default();
    let dag_level = check_dag_fields(&spec, &mut f);
    check_size(spec.nodes.0.len(), limits, &mut f);
    let entries = &spec.nodes.0;
    let ids = IdIndex::new(entries, &mut f);
    let position = |id: &str| ids.position.get(id).copied();
    let uses_compensation = spec.on_failure == DagFailurePolicy::Compensate
        || entries.iter().any(|(_, n)| n.on_failure == NodeFailurePolicy::Compensate);

    let mut nodes = Vec::with_capacity(entries.len());
    for (pos, (id, node)) in (0..).zip(entries) {
        // A repeated id was reported; its later occurrences only hold their place.
        let first = ids.by_rank.get(ids.rank[pos as usize] as usize) == Some(&pos);
        if first {
            check_node_fields(id, node, uses_compensation, &mut f);
        }
        let deps = if first { dependencies(id, node, &position, &ids.rank, &mut f) } else { Vec::new() };
        nodes.push(resolve_node(id, node, deps, &dag_level, &mut f));
    }
    let children = children_of(&nodes, &ids.rank);
    let in_degree: Vec<u32> = nodes.iter().map(|n| n.deps.len() as u32).collect();
    let priority: Vec<i32> = nodes.iter().map(|n| n.priority).collect();
    let order = graph::canonical_order(&children, &in_degree, &priority, &ids.rank);
    if order.is_none() {
        report_cycles(&children, &ids.rank, entries, &mut f);
    }
    let is_node = |id: &str| ids.position.contains_key(id);
    let mut reach = Reach::new(nodes.len());
    for (me, (id, spec_node)) in (0..).zip(entries) {
        if spec_node.condition.is_none() && spec_node.input_mapping.is_empty() {
            continue;
        }
        let condition = parse_condition(id, spec_node, &is_node, &mut f);
        let mapping = parse_mapping(id, spec_node, &is_node, &mut f);
        check_ancestry(me, id, condition.as_ref(), &mapping, &nodes, &position, &mut reach, &mut f);
        let node = &mut nodes[me as usize];
        node.condition = condition;
        node.input_mapping = mapping;
    }
    let IdIndex { by_rank, .. } = ids;
    match order {
        Some(order) if f.errors.is_empty() => {
            for entry in &mut spec.nodes.0 {
                normalise_node(&mut entry.1);
            }
            finish(spec, by_rank, nodes, children, order, dag_level, f)
        }
        _ => Err(ValidationReport::new(f.errors, f.warnings)),
    }
}

/// A DAG has at least one node and at most the limit.
fn check_size(count: usize, limits: &Limits, f: &mut Findings) {
    if count == 0 {
        f.error(ErrorType::EmptyDag, &[], "the DAG has no nodes".into());
    }
    if count > limits.max_nodes {
        let msg = format!("the DAG has {count} nodes; the limit is {}", limits.max_nodes);
        f.error(ErrorType::TooManyNodes, &[], msg);
    }
}

/// One error per cycle, naming its nodes in order and closing the loop (`a -> b -> a`).
fn report_cycles(children: &[Vec<u32>], rank: &[u32], entries: &[(String, NodeSpec)], f: &mut Findings) {
    for cycle in graph::cycles(children, rank) {
        let names: Vec<&str> = cycle.iter().map(|&i| entries[i as usize].0.as_str()).collect();
        let path = names.iter().chain(names.first()).copied().collect::<Vec<_>>().join(" -> ");
        f.error(ErrorType::Cycle, &names, format!("dependency cycle: {path}"));
    }
}

/// DAG-wide settings after validation.
struct DagLevel {
    retry: RetryPolicy,
    timeout: TimeoutPolicy,
    max_parallel_nodes: u32,
}

fn check_dag_fields(spec: &DagSpec, f: &mut Findings) -> DagLevel {
    if spec.name.trim().is_empty() || spec.name.chars().count() > MAX_NAME_LEN {
        f.error(ErrorType::InvalidField, &[], format!("name must be 1 to {MAX_NAME_LEN} characters"));
    }
    if spec.version.is_empty() || spec.version.len() > MAX_VERSION_LEN || spec.version.contains('\0') {
        f.error(ErrorType::InvalidField, &[], format!("version must be 1 to {MAX_VERSION_LEN} characters"));
    }
    if let Some(id) = &spec.dag_id
        && let Err(e) = check_id(id)
    {
        f.error(ErrorType::InvalidField, &[], format!("dag_id {}", e));
    }
    let mut problems = Vec::new();
    let retry = RetryPolicy::default().overlay(spec.default_retry_policy.as_ref(), &mut problems);
    let timeout = TimeoutPolicy::default().overlay(spec.default_timeout_policy.as_ref(), &mut problems);
    for p in problems {
        f.error(ErrorType::InvalidPolicy, &[], format!("default policy: {p}"));
    }
    let max_parallel_nodes = match &spec.max_parallel_nodes {
        None => DEFAULT_MAX_PARALLEL_NODES,
        Some(n) => whole_in(n, 1, u64::from(MAX_PARALLEL_NODES)).unwrap_or_else(|| {
            let msg = format!("max_parallel_nodes must be a whole number from 1 to {MAX_PARALLEL_NODES}, not {n}");
            f.error(ErrorType::InvalidPolicy, &[], msg);
            DEFAULT_MAX_PARALLEL_NODES
        }),
    };
    if let Some(n) = &spec.max_concurrent_executions
        && whole_in(n, 1, MAX_CONCURRENT_EXECUTIONS).is_none()
    {
        let msg =
            format!("max_concurrent_executions must be a whole number from 1 to {MAX_CONCURRENT_EXECUTIONS}, not {n}");
        f.error(ErrorType::InvalidPolicy, &[], msg);
    }
    for (field, present) in [
        ("hash", spec.legacy_hash.is_some()),
        ("created_at", spec.legacy_created_at.is_some()),
        ("updated_at", spec.legacy_updated_at.is_some()),
        ("topology_levels", spec.legacy_topology_levels.is_some()),
    ] {
        if present {
            let msg = format!("{field} is computed by the orchestrator; the value given is ignored");
            f.warning(WarningType::LegacyFieldIgnored, &[], msg);
        }
    }
    DagLevel { retry, timeout, max_parallel_nodes }
}

fn whole_in(n: &Number, min: u64, max: u64) -> Option<u32> {
    n.as_u64().filter(|v| (min..=max).contains(v)).and_then(|v| u32::try_from(v).ok())
}

fn check_node_fields(id: &str, node: &NodeSpec, uses_compensation: bool, f: &mut Findings) {
    if let Err(e) = check_id(id) {
        f.error(ErrorType::InvalidNodeId, &[id], format!("node id {id:?} {e}"));
    }
    if let Some(legacy) = node.legacy_node_id.as_deref().filter(|l| *l != id) {
        let msg = format!("node {id:?} says its node_id is {legacy:?}; they must match");
        f.error(ErrorType::InvalidNodeId, &[id], msg);
    }
    let optional_ids = [
        ("agent_id", Some(node.agent_id.as_str())),
        ("queue", node.queue.as_deref()),
        ("compensation_handler", node.compensation_handler.as_deref()),
    ];
    for (field, value) in optional_ids {
        if let Some(Err(e)) = value.map(check_id) {
            f.error(ErrorType::InvalidField, &[id], format!("node {id:?}: {field} {e}"));
        }
    }
    if let Some(p) = &node.priority
        && p.as_i64().and_then(|v| i32::try_from(v).ok()).is_none()
    {
        let msg = format!("node {id:?}: priority must be a whole number in the 32-bit range, not {p}");
        f.error(ErrorType::InvalidField, &[id], msg);
    }
    if node.compensation_handler.is_some() && !uses_compensation {
        let msg = format!("node {id:?} has a compensation_handler, but no failure policy of this DAG compensates");
        f.warning(WarningType::UnusedCompensationHandler, &[id], msg);
    }
}

/// Dependency positions, in ascending id order; self-dependencies and missing ones are reported.
fn dependencies(
    id: &str,
    node: &NodeSpec,
    position: &dyn Fn(&str) -> Option<NodeIndex>,
    rank: &[u32],
    f: &mut Findings,
) -> Vec<NodeIndex> {
    let mut deps = Vec::with_capacity(node.depends_on.len());
    let mut self_reported = false;
    for dep in &node.depends_on {
        if dep == id {
            if !std::mem::replace(&mut self_reported, true) {
                f.error(ErrorType::SelfDependency, &[id], format!("node {id:?} depends on itself"));
            }
        } else if let Some(i) = position(dep) {
            deps.push(i);
        } else {
            let msg = format!("node {id:?} depends on {dep:?}, which is not a node of this DAG");
            f.error(ErrorType::MissingDependency, &[id, dep], msg);
        }
    }
    deps.sort_unstable_by_key(|&d| rank[d as usize]);
    let before = deps.len();
    deps.dedup();
    if deps.len() != before {
        let msg = format!("node {id:?} lists a dependency more than once");
        f.warning(WarningType::DuplicateDependency, &[id], msg);
    }
    deps
}

fn resolve_node(id: &str, node: &NodeSpec, deps: Vec<NodeIndex>, dag: &DagLevel, f: &mut Findings) -> Node {
    let mut problems = Vec::new();
    let retry = dag.retry.overlay(node.retry_policy.as_ref(), &mut problems);
    let timeout = dag.timeout.overlay(node.timeout_policy.as_ref(), &mut problems);
    for p in problems {
        f.error(ErrorType::InvalidPolicy, &[id], format!("node {id:?}: {p}"));
    }
    Node {
        deps,
        children: Vec::new(),
        retry,
        timeout,
        condition: None,
        input_mapping: Vec::new(),
        priority: node.priority.as_ref().and_then(Number::as_i64).and_then(|v| i32::try_from(v).ok()).unwrap_or(0),
        level: 0,
    }
}

/// Dependents of each node, in ascending id order.
fn children_of(nodes: &[Node], rank: &[u32]) -> Vec<Vec<NodeIndex>> {
    let mut children = vec![Vec::new(); nodes.len()];
    for (i, node) in (0..).zip(nodes) {
        for &d in &node.deps {
            children[d as usize].push(i);
        }
    }
    for kids in &mut children {
        kids.sort_unstable_by_key(|&k| rank[k as usize]);
    }
    children
}

fn parse_condition(id: &str, node: &NodeSpec, is_node: &dyn Fn(&str) -> bool, f: &mut Findings) -> Option<Condition> {
    let source = node.condition.as_deref()?;
    Condition::parse(source, is_node)
        .map_err(|e| f.error(ErrorType::InvalidCondition, &[id], format!("node {id:?}: condition {e}")))
        .ok()
}

fn parse_mapping(
    id: &str,
    node: &NodeSpec,
    is_node: &dyn Fn(&str) -> bool,
    f: &mut Findings,
) -> Vec<(String, ValuePath)> {
    let mut mapping = Vec::with_capacity(node.input_mapping.len());
    for (target, source) in &node.input_mapping {
        match ValuePath::parse(source, is_node) {
            Ok(path) => mapping.push((target.clone(), path)),
            Err(e) => {
                let msg = format!("node {id:?}: input_mapping {target:?}: {e}");
                f.error(ErrorType::InvalidInputMapping, &[id], msg);
            }
        }
    }
    mapping
}

/// Every `results.<node>` a node reads must be one of its ancestors, or the value would not exist
/// when the node runs.
#[allow(clippy::too_many_arguments)]
fn check_ancestry(
    me: NodeIndex,
    id: &str,
    condition: Option<&Condition>,
    mapping: &[(String, ValuePath)],
    nodes: &[Node],
    position: &dyn Fn(&str) -> Option<NodeIndex>,
    reach: &mut Reach,
    f: &mut Findings,
) {
    let in_condition: Vec<&str> = condition.map(Condition::referenced_nodes).unwrap_or_default();
    let in_mapping = mapping.iter().filter_map(|(_, p)| p.node());
    let named: BTreeMap<NodeIndex, &str> =
        in_condition.iter().copied().chain(in_mapping).filter_map(|n| position(n).map(|i| (i, n))).collect();
    for missing in reach.not_ancestors(me, named.keys().copied().collect(), nodes) {
        let Some(&target) = named.get(&missing) else {
            continue;
        };
        let kind =
            if in_condition.contains(&target) { ErrorType::InvalidCondition } else { ErrorType::InvalidInputMapping };
        let msg = format!(
            "node {id:?} reads results.{target}, but {target:?} is not one of its dependencies (direct or transitive)"
        );
        f.error(kind, &[id, target], msg);
    }
}

/// Reverse reachability with a reusable visit stamp.
struct Reach {
    stamp: Vec<u32>,
    current: u32,
}

impl Reach {
    fn new(n: usize) -> Self {
        Self { stamp: vec![0; n], current: 0 }
    }

    /// Those of `wanted` that are not ancestors of `node`.
    fn not_ancestors(
        &mut self,
        node: NodeIndex,
        mut wanted: BTreeSet<NodeIndex>,
        nodes: &[Node],
    ) -> BTreeSet<NodeIndex> {
        if wanted.is_empty() {
            return wanted;
        }
        self.current += 1;
        self.stamp[node as usize] = self.current;
        let mut stack = vec![node];
        while let Some(v) = stack.pop() {
            for &d in &nodes[v as usize].deps {
                if std::mem::replace(&mut self.stamp[d as usize], self.current) != self.current {
                    wanted.remove(&d);
                    stack.push(d);
                }
            }
            if wanted.is_empty() {
                break;
            }
        }
        wanted
    }
}

/// A node as stored: dependencies sorted and unique, node-level defaults left out.
fn normalise_node(n: &mut NodeSpec) {
    n.depends_on.sort_unstable();
    n.depends_on.dedup();
    n.legacy_node_id = None;
    if n.queue.as_deref() == Some(DEFAULT_QUEUE) {
        n.queue = None;
    }
    if n.priority.as_ref().and_then(Number::as_i64) == Some(0) {
        n.priority = None;
    }
    if n.retry_policy.as_ref().is_some_and(|p| *p == Default::default()) {
        n.retry_policy = None;
    }
    if n.timeout_policy.as_ref().is_some_and(|p| *p == Default::default()) {
        n.timeout_policy = None;
    }
}

fn finish(
    mut spec: DagSpec,
    by_rank: Vec<u32>,
    mut nodes: Vec<Node>,
    children: Vec<Vec<NodeIndex>>,
    order: Vec<NodeIndex>,
    dag_level: DagLevel,
    mut f: Findings,
) -> Result<Dag, ValidationReport> {
    let (level_of, levels) = graph::levels(&order, &nodes);
    for ((node, kids), level) in nodes.iter_mut().zip(children).zip(level_of) {
        node.children = kids;
        node.level = level;
    }
    spec.default_retry_policy = Some(dag_level.retry.to_spec());
    spec.default_timeout_policy = Some(dag_level.timeout.to_spec());
    spec.max_parallel_nodes = Some(dag_level.max_parallel_nodes.into());
    spec.legacy_hash = None;
    spec.legacy_created_at = None;
    spec.legacy_updated_at = None;
    spec.legacy_topology_levels = None;
    if spec.dag_id.is_none() {
        // Derived from the content, so the same document always gets the same id.
        let anonymous = definition_hash(&spec);
        spec.dag_id = Some(format!("dag_{}", &anonymous.as_str()[..16]));
    }
    let id = match DagId::parse(spec.dag_id.as_deref().unwrap_or_default()) {
        Ok(id) => id,
        Err(e) => {
            f.error(ErrorType::InvalidField, &[], format!("dag_id {e}"));
            return Err(ValidationReport::new(f.errors, f.warnings));
        }
    };
    Ok(Dag {
        id,
        hash: OnceLock::new(),
        definition: spec,
        by_rank,
        nodes,
        order,
        levels,
        max_parallel_nodes: dag_level.max_parallel_nodes,
        warnings: f.warnings,
    })
}

/// Compiles a definition this system stored itself (a pinned one, or a stored DAG's): no node
/// limit applies (it passed the limit when it was stored), and when `expected_hash` is given the
/// result must hash to it, or the stored copy was altered.
pub fn compile_stored(definition: serde_json::Value, expected_hash: Option<&str>) -> Result<Dag, String> {
    let spec = DagSpec::from_value(definition).map_err(|e| e.to_string())?;
    let dag = compile(spec, &Limits { max_nodes: usize::MAX })
        .map_err(|r| format!("the stored definition no longer compiles: {:?}", r.errors))?;
    match expected_hash {
        Some(hash) if dag.hash().as_str() != hash => {
            Err(format!("the stored definition {hash} hashes to {}", dag.hash()))
        }
        _ => Ok(dag),
    }
}

/// SHA-256 of the canonical JSON of a definition.
///
/// Turning a `DagSpec` into JSON cannot fail: every map has string keys and every number is a
/// finite `serde_json::Number`. Should that ever change, the hash of the error text is returned,
/// which matches no definition, so any later verification against the stored definition fails
/// loudly instead of passing.
pub(crate) fn definition_hash(spec: &DagSpec) -> ContentHash {
    content_hash(spec).unwrap_or_else(|e| ContentHash::of_bytes(format!("unhashable definition: {e}").as_bytes()))
}
