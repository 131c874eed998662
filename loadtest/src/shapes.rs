//! `shapes`: replays a real scientific workflow (task graph and runtimes from a wfcommons
//! instance, see `loadtest/shapes/`) with its runtimes scaled down, as `sleep` nodes, and compares
//! the makespan with two references on the same number of worker slots:
//!
//! - a zero-overhead simulation of the same dispatch policy (a node starts the moment its last
//!   parent completes and a slot is free; among ready nodes, canonical order first), so the ratio
//!   is what the orchestrator itself costs;
//! - the lower bound max(critical path, total work / slots), which no policy can beat.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

use engine::dag::{DagSpec, Limits, compile};
use serde_json::{Map, Value, json};

use crate::{Client, LoadError, millis, time};

/// One task of an instance file.
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    pub id: String,
    pub runtime_s: f64,
    pub parents: Vec<String>,
}

/// A workflow instance: `{"name", "tasks": [{"id", "runtime_s", "parents"}]}`.
#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    pub name: String,
    pub tasks: Vec<Task>,
}

impl Instance {
    pub fn parse(text: &str) -> Result<Self, LoadError> {
        let bad = |what: &str| LoadError::Api(format!("instance file: {what}"));
        let value: Value = serde_json::from_str(text).map_err(|e| bad(&e.to_string()))?;
        let name = value["name"].as_str().ok_or_else(|| bad("no name"))?.to_owned();
        let tasks = value["tasks"].as_array().ok_or_else(|| bad("no tasks"))?;
        let tasks = tasks
            .iter()
            .map(|t| {
                let id = t["id"].as_str().ok_or_else(|| bad("a task without id"))?.to_owned();
                let runtime_s = t["runtime_s"].as_f64().filter(|r| *r >= 0.0).ok_or_else(|| bad("a bad runtime"))?;
                let parents = t["parents"].as_array().map(|p| p.iter().filter_map(Value::as_str).map(str::to_owned));
                Ok(Task { id, runtime_s, parents: parents.map(Iterator::collect).unwrap_or_default() })
            })
            .collect::<Result<Vec<_>, LoadError>>()?;
        Ok(Self { name, tasks })
    }

    /// The DAG document: one `sleep` node per task (`durations_ms` by task position).
    pub fn dag(&self, dag_id: &str, durations_ms: &[u64], slots: usize) -> Value {
        let nodes: Map<String, Value> = self
            .tasks
            .iter()
            .zip(durations_ms)
            .map(|(t, ms)| (t.id.clone(), json!({"agent_id": "sleep", "params": {"ms": ms}, "depends_on": t.parents})))
            .collect();
        json!({"dag_id": dag_id, "name": format!("loadtest shape {}", self.name), "max_parallel_nodes": slots,
               "nodes": nodes})
    }
}

/// The graph by task position: parents, and each task's position in the DAG's canonical order
/// (computed by the core, as the coordinator does).
#[derive(Debug, Clone)]
pub struct Graph {
    pub parents: Vec<Vec<usize>>,
    pub rank: Vec<usize>,
}

impl Graph {
    pub fn of(instance: &Instance, dag: &Value) -> Result<Self, LoadError> {
        let spec = DagSpec::parse(&dag.to_string()).map_err(|e| LoadError::Api(e.to_string()))?;
        let limits = Limits { max_nodes: instance.tasks.len().max(1) };
        let compiled = compile(spec, &limits).map_err(|r| LoadError::Api(format!("invalid shape: {}", json!(r))))?;
        let position = |id: &str| instance.tasks.iter().position(|t| t.id == id);
        let mut rank = vec![0; instance.tasks.len()];
        for (r, id) in compiled.order_ids().into_iter().enumerate() {
            let p = position(id).ok_or_else(|| LoadError::Api(format!("unknown node {id}")))?;
            rank[p] = r;
        }
        let parents = instance.tasks.iter().map(|t| t.parents.iter().filter_map(|p| position(p)).collect()).collect();
        Ok(Self { parents, rank })
    }

    fn children(&self) -> Vec<Vec<usize>> {
        let mut children = vec![Vec::new(); self.parents.len()];
        for (child, parents) in self.parents.iter().enumerate() {
            for &p in parents {
                children[p].push(child);
            }
        }
        children
    }

    /// Makespan of dependency-driven dispatch on `slots` slots with no overhead at all: when a
    /// slot is free, the ready task first in canonical order starts.
    pub fn simulate(&self, durations_ms: &[u64], slots: usize) -> u64 {
        let children = self.children();
        let mut waiting: Vec<usize> = self.parents.iter().map(Vec::len).collect();
        let mut ready: BinaryHeap<Reverse<(usize, usize)>> =
            (0..waiting.len()).filter(|&i| waiting[i] == 0).map(|i| Reverse((self.rank[i], i))).collect();
        let mut running: BinaryHeap<Reverse<(u64, usize)>> = BinaryHeap::new();
        let mut now = 0;
        loop {
            while running.len() < slots.max(1) {
                let Some(Reverse((_, task))) = ready.pop() else { break };
                running.push(Reverse((now + durations_ms[task], task)));
            }
            let Some(Reverse((end, task))) = running.pop() else { return now };
            now = end;
            for &child in &children[task] {
                waiting[child] -= 1;
                if waiting[child] == 0 {
                    ready.push(Reverse((self.rank[child], child)));
                }
            }
        }
    }

    /// The longest duration-weighted path.
    pub fn critical_path(&self, durations_ms: &[u64]) -> u64 {
        let mut order: Vec<usize> = (0..self.rank.len()).collect();
        order.sort_by_key(|&i| self.rank[i]);
        let mut finish = vec![0u64; order.len()];
        for &i in &order {
            let start = self.parents[i].iter().map(|&p| finish[p]).max().unwrap_or(0);
            finish[i] = start + durations_ms[i];
        }
        finish.into_iter().max().unwrap_or(0)
    }
}

/// What one replay measured.
#[derive(Debug, Clone, PartialEq)]
pub struct ShapeResult {
    pub instance: String,
    pub tasks: usize,
    pub edges: usize,
    pub slots: usize,
    pub scale: f64,
    pub makespan_ms: f64,
    pub simulated_ms: u64,
    pub critical_path_ms: u64,
    pub work_ms: u64,
    pub lower_bound_ms: f64,
}

impl ShapeResult {
    pub fn to_json(&self) -> Value {
        json!({
            "scenario": "shapes", "instance": self.instance, "tasks": self.tasks, "edges": self.edges,
            "slots": self.slots, "scale": self.scale, "makespan_ms": self.makespan_ms,
            "simulated_ms": self.simulated_ms, "critical_path_ms": self.critical_path_ms,
            "work_ms": self.work_ms, "lower_bound_ms": self.lower_bound_ms,
            "ratio_to_simulation": self.makespan_ms / (self.simulated_ms.max(1) as f64),
            "ratio_to_lower_bound": self.makespan_ms / self.lower_bound_ms.max(1.0),
        })
    }
}

/// Runtimes scaled so that the zero-overhead makespan is about `target_ms`; every task gets at
/// least 1 ms (a `sleep` of 0 ms would measure nothing but overhead). Returns (scale, durations).
pub fn scaled(instance: &Instance, graph: &Graph, slots: usize, target_ms: u64) -> (f64, Vec<u64>) {
    let to_ms = |scale: f64| -> Vec<u64> {
        instance.tasks.iter().map(|t| ((t.runtime_s * 1000.0 * scale).round() as u64).max(1)).collect()
    };
    let unscaled = graph.simulate(&to_ms(1.0), slots).max(1);
    let scale = target_ms as f64 / unscaled as f64;
    (scale, to_ms(scale))
}

/// Replays `instance` on `slots` worker slots, scaled to about `target_ms`, and measures it.
pub async fn run(client: &Client, instance: &Instance, slots: usize, target_ms: u64) -> Result<ShapeResult, LoadError> {
    let dag_id = format!("loadtest-shape-{}", instance.name);
    let ones = vec![1; instance.tasks.len()];
    let graph = Graph::of(instance, &instance.dag(&dag_id, &ones, slots))?;
    let (scale, durations) = scaled(instance, &graph, slots, target_ms);
    let document = instance.dag(&dag_id, &durations, slots);
    // Replaced, not kept: the same id may have been stored with other durations.
    let _ = client.call(reqwest::Method::DELETE, &format!("/dags/{dag_id}"), None).await?;
    client.ensure_dag(&document).await?;
    let id = client.execute(&dag_id, &json!({})).await?;
    let execution = client.wait_finished(&id, Duration::from_secs(3600)).await?;
    if execution["status"] != "completed" {
        return Err(LoadError::Api(format!("the shape did not complete: {execution}")));
    }
    let (_, trace) = client.call(reqwest::Method::GET, &format!("/executions/{id}/trace"), None).await?;
    let nodes = trace["nodes"].as_array().cloned().unwrap_or_default();
    let starts = nodes.iter().filter_map(|n| time(&n["started_at"])).min();
    let ends = nodes.iter().filter_map(|n| time(&n["completed_at"])).max();
    let (Some(first), Some(last)) = (starts, ends) else {
        return Err(LoadError::Api("no node timings in the trace".into()));
    };
    let work_ms: u64 = durations.iter().sum();
    let critical_path_ms = graph.critical_path(&durations);
    Ok(ShapeResult {
        instance: instance.name.clone(),
        tasks: instance.tasks.len(),
        edges: graph.parents.iter().map(Vec::len).sum(),
        slots,
        scale,
        makespan_ms: millis(first, last),
        simulated_ms: graph.simulate(&durations, slots),
        critical_path_ms,
        work_ms,
        lower_bound_ms: (critical_path_ms as f64).max(work_ms as f64 / slots.max(1) as f64),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn diamond() -> Instance {
        let task = |id: &str, s: f64, parents: &[&str]| Task {
            id: id.into(),
            runtime_s: s,
            parents: parents.iter().map(|p| (*p).to_owned()).collect(),
        };
        Instance {
            name: "diamond".into(),
            tasks: vec![
                task("a", 1.0, &[]),
                task("b", 2.0, &["a"]),
                task("c", 3.0, &["a"]),
                task("d", 1.0, &["b", "c"]),
            ],
        }
    }

    #[test]
    fn the_simulation_is_list_scheduling_on_the_given_slots() {
        let instance = diamond();
        let graph = Graph::of(&instance, &instance.dag("d", &[1, 1, 1, 1], 2)).expect("valid");
        let ms = [1000, 2000, 3000, 1000];
        // Two slots: b and c run side by side after a, d after the longer of them.
        assert_eq!(graph.simulate(&ms, 2), 5000);
        // One slot: everything in a line.
        assert_eq!(graph.simulate(&ms, 1), 7000);
        assert_eq!(graph.critical_path(&ms), 5000);
    }

    #[test]
    fn scaling_hits_the_target_makespan() {
        let instance = diamond();
        let graph = Graph::of(&instance, &instance.dag("d", &[1, 1, 1, 1], 2)).expect("valid");
        let (scale, ms) = scaled(&instance, &graph, 2, 500);
        assert!((scale - 0.1).abs() < 1e-9, "{scale}");
        assert_eq!(ms, vec![100, 200, 300, 100]);
        assert_eq!(graph.simulate(&ms, 2), 500);
    }

    #[test]
    fn instance_files_parse_and_bad_ones_are_refused() {
        let text = r#"{"name": "x", "tasks": [{"id": "a", "runtime_s": 1.5, "parents": []},
                       {"id": "b", "runtime_s": 0, "parents": ["a"]}]}"#;
        let instance = Instance::parse(text).expect("parses");
        assert_eq!(instance.tasks[1].parents, vec!["a".to_owned()]);
        assert!(Instance::parse(r#"{"name": "x", "tasks": [{"id": "a", "runtime_s": -1}]}"#).is_err());
        assert!(Instance::parse("[]").is_err());
    }
}
