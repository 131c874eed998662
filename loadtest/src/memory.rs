//! `memory`: the coordinator's resident memory per active execution. Starts N executions whose
//! first node sleeps long, waits until the coordinator drives all N (`gl_orchestrator_active_executions`),
//! and compares its resident memory with the baseline before; then cancels them all.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::soak::{metric_sum, rss_kib};
use crate::{Client, LoadError};

#[derive(Debug, Clone, PartialEq)]
pub struct MemoryResult {
    pub executions: usize,
    pub baseline_kib: u64,
    pub active_kib: u64,
    pub per_execution_kib: f64,
}

impl MemoryResult {
    pub fn to_json(&self) -> Value {
        json!({"scenario": "memory", "executions": self.executions, "baseline_kib": self.baseline_kib,
               "active_kib": self.active_kib, "per_execution_kib": self.per_execution_kib})
    }
}

/// A 5-node DAG whose first node holds its execution open for `hold_ms`.
pub fn dag(dag_id: &str, hold_ms: u64) -> Value {
    json!({"dag_id": dag_id, "name": "loadtest memory", "nodes": {
        "hold": {"agent_id": "sleep", "params": {"ms": hold_ms}, "timeout_policy": {"timeout_seconds": 3600}},
        "b": {"agent_id": "noop", "depends_on": ["hold"]}, "c": {"agent_id": "noop", "depends_on": ["hold"]},
        "d": {"agent_id": "noop", "depends_on": ["hold"]}, "e": {"agent_id": "noop", "depends_on": ["b", "c", "d"]}}})
}

pub async fn run(
    client: &Client,
    metrics_url: &str,
    pid: u32,
    executions: usize,
    within: Duration,
) -> Result<MemoryResult, LoadError> {
    let dag_id = "loadtest-memory";
    client.ensure_dag(&dag(dag_id, 600_000)).await?;
    let baseline_kib = rss_kib(pid);
    let mut ids = Vec::with_capacity(executions);
    for _ in 0..executions {
        ids.push(client.execute(dag_id, &json!({})).await?);
    }
    let http = reqwest::Client::new();
    let deadline = Instant::now() + within;
    loop {
        let text = http.get(metrics_url).send().await?.text().await?;
        if metric_sum(&text, "gl_orchestrator_active_executions") >= executions as f64 {
            break;
        }
        if Instant::now() > deadline {
            return Err(LoadError::Api(format!("{executions} executions never became active together")));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let active_kib = rss_kib(pid);
    for id in &ids {
        client.call(reqwest::Method::POST, &format!("/executions/{id}/cancel"), None).await?;
    }
    let grown = active_kib.saturating_sub(baseline_kib) as f64;
    Ok(MemoryResult { executions, baseline_kib, active_kib, per_execution_kib: grown / executions.max(1) as f64 })
}
