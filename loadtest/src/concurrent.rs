//! `concurrent`: N executions of a 20-node DAG (5 levels of 4 nodes, each level waiting for the
//! whole previous one; every node sleeps 10 ms) started at once. Reports the time until all are
//! finished, the execution latency (submitted to completed) p50 and p99, and failures.

use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

use crate::{Client, LoadError, millis, percentile, time};

/// What one concurrent run measured.
#[derive(Debug, Clone, PartialEq)]
pub struct ConcurrentResult {
    pub executions: usize,
    pub all_done_ms: f64,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    pub failures: usize,
}

impl ConcurrentResult {
    pub fn to_json(&self) -> Value {
        json!({
            "scenario": "concurrent", "executions": self.executions, "all_done_ms": self.all_done_ms,
            "latency_p50_ms": self.latency_p50_ms, "latency_p99_ms": self.latency_p99_ms,
            "failures": self.failures,
        })
    }
}

/// The 20-node layered DAG.
pub fn dag(dag_id: &str) -> Value {
    let id = |level: usize, i: usize| format!("l{level}n{i}");
    let nodes: Map<String, Value> = (0..5)
        .flat_map(|level| (0..4).map(move |i| (level, i)))
        .map(|(level, i)| {
            let deps: Vec<String> = if level == 0 { vec![] } else { (0..4).map(|j| id(level - 1, j)).collect() };
            (id(level, i), json!({"agent_id": "sleep", "params": {"ms": 10}, "depends_on": deps}))
        })
        .collect();
    json!({"dag_id": dag_id, "name": "loadtest concurrent (20 nodes)", "nodes": nodes})
}

/// Starts `n` executions at once and waits for all of them.
pub async fn run(client: &Client, n: usize, within: Duration) -> Result<ConcurrentResult, LoadError> {
    let dag_id = "loadtest-concurrent-20";
    client.ensure_dag(&dag(dag_id)).await?;
    let started = Instant::now();
    let submissions: Vec<_> = (0..n)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { client.execute(dag_id, &json!({})).await })
        })
        .collect();
    let mut ids = Vec::with_capacity(n);
    for s in submissions {
        ids.push(s.await.map_err(|e| LoadError::Api(e.to_string()))??);
    }
    let mut finished = Vec::with_capacity(n);
    for id in &ids {
        let left = within.saturating_sub(started.elapsed());
        finished.push(client.wait_finished(id, left).await?);
    }
    let all_done_ms = started.elapsed().as_secs_f64() * 1000.0;
    let latencies: Vec<f64> =
        finished.iter().filter_map(|e| Some(millis(time(&e["submitted_at"])?, time(&e["completed_at"])?))).collect();
    Ok(ConcurrentResult {
        executions: n,
        all_done_ms,
        latency_p50_ms: percentile(&latencies, 50.0).unwrap_or(0.0),
        latency_p99_ms: percentile(&latencies, 99.0).unwrap_or(0.0),
        failures: finished.iter().filter(|e| e["status"] != "completed").count(),
    })
}
