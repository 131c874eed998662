//! `amplify`: issue 17's amplification DAG, WIDTH `echo` nodes per layer, each depending on every
//! node of the layer before, so each layer's outputs hold all of the previous layer's and double.
//! Samples the coordinator's resident memory while the execution runs; with the default output
//! bound (1 MiB) it must fail fast with `output_too_large` instead of holding hundreds of MiB.

use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

use crate::soak::rss_kib;
use crate::{Client, LoadError};

#[derive(Debug, Clone, PartialEq)]
pub struct AmplifyResult {
    pub width: usize,
    pub layers: usize,
    pub input_bytes: usize,
    pub status: String,
    /// Each failed node with its error type.
    pub failed: Vec<(String, String)>,
    pub elapsed_ms: f64,
    pub baseline_kib: u64,
    pub peak_kib: u64,
}

impl AmplifyResult {
    pub fn to_json(&self) -> Value {
        json!({"scenario": "amplify", "width": self.width, "layers": self.layers, "input_bytes": self.input_bytes,
               "status": self.status, "failed": self.failed, "elapsed_ms": self.elapsed_ms,
               "coordinator_baseline_kib": self.baseline_kib, "coordinator_peak_kib": self.peak_kib})
    }
}

pub fn dag(dag_id: &str, width: usize, layers: usize) -> Value {
    let mut nodes = Map::new();
    for layer in 0..layers {
        for i in 0..width {
            let deps: Vec<String> =
                if layer == 0 { vec![] } else { (0..width).map(|j| format!("l{}n{j}", layer - 1)).collect() };
            nodes.insert(format!("l{layer}n{i}"), json!({"agent_id": "echo", "depends_on": deps}));
        }
    }
    json!({"dag_id": dag_id, "name": "loadtest amplify", "max_parallel_nodes": width, "nodes": nodes})
}

pub async fn run(
    client: &Client,
    pid: u32,
    width: usize,
    layers: usize,
    input_bytes: usize,
    within: Duration,
) -> Result<AmplifyResult, LoadError> {
    let dag_id = format!("loadtest-amplify-{width}x{layers}");
    client.ensure_dag(&dag(&dag_id, width, layers)).await?;
    let baseline_kib = rss_kib(pid);
    let started = Instant::now();
    let id = client.execute(&dag_id, &json!({"blob": "x".repeat(input_bytes)})).await?;
    let mut peak_kib = baseline_kib;
    let execution = loop {
        peak_kib = peak_kib.max(rss_kib(pid));
        let (_, body) = client.call(reqwest::Method::GET, &format!("/executions/{id}"), None).await?;
        let e = body["execution"].clone();
        if matches!(e["status"].as_str(), Some("completed" | "failed" | "cancelled")) {
            break e;
        }
        if started.elapsed() > within {
            return Err(LoadError::Api(format!("execution {id} did not finish within {within:?}")));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
    peak_kib = peak_kib.max(rss_kib(pid));
    let (_, trace) = client.call(reqwest::Method::GET, &format!("/executions/{id}/trace"), None).await?;
    let failed = trace["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|n| n["status"] == "failed")
        .map(|n| (n["node_id"].as_str().unwrap_or("?").to_owned(), n["error_type"].as_str().unwrap_or("?").to_owned()))
        .collect();
    let status = execution["status"].as_str().unwrap_or("?").to_owned();
    Ok(AmplifyResult { width, layers, input_bytes, status, failed, elapsed_ms, baseline_kib, peak_kib })
}
