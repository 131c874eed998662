//! Synthetic DAG shapes for tests, benchmarks and the load generator. Deterministic: the same
//! arguments give the same document.

use serde_json::{Map, Value, json};

use super::spec::{DagSpec, NodeEntries, NodeSpec};

/// A node running `agent_id` after `deps`.
pub fn node(agent_id: &str, deps: &[String]) -> NodeSpec {
    NodeSpec { agent_id: agent_id.to_owned(), depends_on: deps.to_vec(), ..NodeSpec::default() }
}

/// A DAG named `name` with the given nodes and defaults elsewhere.
pub fn dag(name: &str, nodes: Vec<(String, NodeSpec)>) -> DagSpec {
    DagSpec {
        dag_id: None,
        name: name.to_owned(),
        description: String::new(),
        version: "1.0.0".to_owned(),
        nodes: NodeEntries(nodes),
        default_retry_policy: None,
        default_timeout_policy: None,
        on_failure: Default::default(),
        max_parallel_nodes: None,
        max_concurrent_executions: None,
        scheduling: Default::default(),
        metadata: Map::new(),
        legacy_hash: None,
        legacy_created_at: None,
        legacy_updated_at: None,
        legacy_topology_levels: None,
    }
}

/// `n` nodes in a line: `n0000 -> n0001 -> ...`.
pub fn chain(n: usize, agent_id: &str) -> DagSpec {
    let ids: Vec<String> = (0..n).map(|i| format!("n{i:06}")).collect();
    let nodes = (0..n).map(|i| (ids[i].clone(), node(agent_id, if i == 0 { &[] } else { &ids[i - 1..i] }))).collect();
    dag(&format!("chain-{n}"), nodes)
}

/// `width` independent nodes followed by one node that depends on all of them.
pub fn fan_out_in(width: usize, agent_id: &str) -> DagSpec {
    let ids: Vec<String> = (0..width).map(|i| format!("n{i:06}")).collect();
    let mut nodes: Vec<(String, NodeSpec)> = ids.iter().map(|id| (id.clone(), node(agent_id, &[]))).collect();
    nodes.push(("sink".to_owned(), node(agent_id, &ids)));
    dag(&format!("fanout-{width}"), nodes)
}

/// A random DAG with `n` nodes and about `edges` edges, from `seed`. Node names are shuffled
/// against the generation order, so the canonical order is not simply the name order.
pub fn random(n: usize, edges: usize, seed: u64) -> DagSpec {
    let mut rng = SplitMix(seed);
    let mut names: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        names.swap(i, rng.below(i + 1));
    }
    let ids: Vec<String> = names.iter().map(|k| format!("n{k:07}")).collect();
    let per_node = if n > 1 { edges as f64 / (n - 1) as f64 } else { 0.0 };
    let mut carry = 0.0;
    let nodes = (0..n)
        .map(|i| {
            carry += if i == 0 { 0.0 } else { per_node };
            let mut deps: Vec<String> = Vec::new();
            while carry >= 1.0 {
                carry -= 1.0;
                deps.push(ids[rng.below(i)].clone());
            }
            (ids[i].clone(), node("noop", &deps))
        })
        .collect();
    dag(&format!("random-{n}-{edges}-{seed}"), nodes)
}

/// As JSON, the form the API and the CLI read.
pub fn to_json(spec: &DagSpec) -> Value {
    serde_json::to_value(spec).unwrap_or_else(|e| json!({"error": e.to_string()}))
}

/// A tiny deterministic generator (SplitMix64); no dependency needed for test shapes.
#[derive(Debug)]
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound.max(1) as u64) as usize
    }
}
