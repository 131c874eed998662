//! `fanout`: one execution of `width` independent no-op nodes followed by one fan-in node.
//! Reports trivial nodes completed per second, from the first fan-out node's start to the last
//! one's completion.

use std::time::Duration;

use serde_json::{Map, Value, json};

use crate::{Client, LoadError, millis, time};

/// What one fan-out run measured.
#[derive(Debug, Clone, PartialEq)]
pub struct FanoutResult {
    pub width: usize,
    pub fanout_ms: f64,
    pub nodes_per_second: f64,
    pub makespan_ms: f64,
}

impl FanoutResult {
    pub fn to_json(&self) -> Value {
        json!({
            "scenario": "fanout", "width": self.width, "fanout_ms": self.fanout_ms,
            "nodes_per_second": self.nodes_per_second, "makespan_ms": self.makespan_ms,
        })
    }
}

/// `width` `noop` nodes `f00000..`, then `join` depending on all of them.
pub fn dag(dag_id: &str, width: usize) -> Value {
    let mut nodes: Map<String, Value> = (0..width).map(|i| (format!("f{i:05}"), json!({"agent_id": "noop"}))).collect();
    let all: Vec<String> = nodes.keys().cloned().collect();
    nodes.insert("join".into(), json!({"agent_id": "noop", "depends_on": all}));
    json!({"dag_id": dag_id, "name": format!("loadtest fan-out of {width}"), "max_parallel_nodes": 500, "nodes": nodes})
}

pub async fn run(client: &Client, width: usize, within: Duration) -> Result<FanoutResult, LoadError> {
    let dag_id = format!("loadtest-fanout-{width}");
    client.ensure_dag(&dag(&dag_id, width)).await?;
    let id = client.execute(&dag_id, &json!({})).await?;
    let execution = client.wait_finished(&id, within).await?;
    if execution["status"] != "completed" {
        return Err(LoadError::Api(format!("the fan-out did not complete: {execution}")));
    }
    let (_, trace) = client.call(reqwest::Method::GET, &format!("/executions/{id}/trace"), None).await?;
    let nodes = trace["nodes"].as_array().cloned().unwrap_or_default();
    let spans: Vec<_> = nodes
        .iter()
        .filter(|n| n["node_id"] != "join")
        .filter_map(|n| Some((time(&n["started_at"])?, time(&n["completed_at"])?)))
        .collect();
    let (Some(first), Some(last)) = (spans.iter().map(|s| s.0).min(), spans.iter().map(|s| s.1).max()) else {
        return Err(LoadError::Api("no node timings".into()));
    };
    let fanout_ms = millis(first, last).max(0.001);
    let makespan_ms = match (time(&execution["started_at"]), time(&execution["completed_at"])) {
        (Some(s), Some(e)) => millis(s, e),
        _ => 0.0,
    };
    Ok(FanoutResult { width, fanout_ms, nodes_per_second: width as f64 / (fanout_ms / 1000.0), makespan_ms })
}
