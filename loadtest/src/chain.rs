//! `chain`: a line of no-op nodes. Measures the orchestrator's own cost per step:
//! per-step overhead = (makespan − Σ node run times) / steps, and the dependency-to-start latency
//! (a node's `started_at` minus its parent's `completed_at`), p50 and p99.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};

use crate::{Client, LoadError, millis, percentile, time};

/// What one chain run measured.
#[derive(Debug, Clone, PartialEq)]
pub struct ChainResult {
    pub steps: usize,
    pub makespan_ms: f64,
    pub node_time_ms: f64,
    pub overhead_per_step_ms: f64,
    pub dependency_to_start_p50_ms: f64,
    pub dependency_to_start_p99_ms: f64,
}

impl ChainResult {
    pub fn to_json(&self) -> Value {
        json!({
            "scenario": "chain", "steps": self.steps, "makespan_ms": self.makespan_ms,
            "node_time_ms": self.node_time_ms, "overhead_per_step_ms": self.overhead_per_step_ms,
            "dependency_to_start_p50_ms": self.dependency_to_start_p50_ms,
            "dependency_to_start_p99_ms": self.dependency_to_start_p99_ms,
        })
    }
}

/// The chain DAG document (`noop` nodes `c0000 -> c0001 -> ...`).
pub fn dag(dag_id: &str, steps: usize) -> Value {
    let nodes: Map<String, Value> = (0..steps)
        .map(|i| {
            let deps: Vec<String> = if i == 0 { vec![] } else { vec![format!("c{:04}", i - 1)] };
            (format!("c{i:04}"), json!({"agent_id": "noop", "depends_on": deps}))
        })
        .collect();
    json!({"dag_id": dag_id, "name": format!("loadtest chain of {steps}"), "max_parallel_nodes": 1, "nodes": nodes})
}

/// Runs one chain of `steps` nodes and measures it.
pub async fn run(client: &Client, steps: usize) -> Result<ChainResult, LoadError> {
    let dag_id = format!("loadtest-chain-{steps}");
    client.ensure_dag(&dag(&dag_id, steps)).await?;
    let id = client.execute(&dag_id, &json!({})).await?;
    let execution = client.wait_finished(&id, Duration::from_secs(300)).await?;
    if execution["status"] != "completed" {
        return Err(LoadError::Api(format!("the chain did not complete: {execution}")));
    }
    let (_, trace) = client.call(reqwest::Method::GET, &format!("/executions/{id}/trace"), None).await?;
    let mut nodes: Vec<&Value> = trace["nodes"].as_array().map(|n| n.iter().collect()).unwrap_or_default();
    nodes.sort_by_key(|n| n["node_id"].as_str().unwrap_or("").to_owned());
    let spans: Vec<(DateTime<Utc>, DateTime<Utc>)> =
        nodes.iter().filter_map(|n| Some((time(&n["started_at"])?, time(&n["completed_at"])?))).collect();
    if spans.len() != steps {
        return Err(LoadError::Api(format!("only {} of {steps} nodes have timings", spans.len())));
    }
    let (first, last) = (spans[0].0, spans[steps - 1].1);
    let makespan_ms = millis(first, last);
    let node_time_ms: f64 = spans.iter().map(|(s, e)| millis(*s, *e)).sum();
    let gaps: Vec<f64> = spans.windows(2).map(|w| millis(w[0].1, w[1].0)).collect();
    Ok(ChainResult {
        steps,
        makespan_ms,
        node_time_ms,
        overhead_per_step_ms: (makespan_ms - node_time_ms) / steps as f64,
        dependency_to_start_p50_ms: percentile(&gaps, 50.0).unwrap_or(0.0),
        dependency_to_start_p99_ms: percentile(&gaps, 99.0).unwrap_or(0.0),
    })
}
