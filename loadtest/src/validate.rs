//! `validate`: a random DAG of N nodes and 2N edges through the API: the time to store it
//! (parse, validate, plan, hash, write) and, five times, to validate and plan it again as stored
//! (`POST /dags/{id}/validate`); the median of those is the figure. Client-side times, so they
//! include HTTP and moving the document.

use std::time::Instant;

use engine::dag::synth;
use serde_json::{Value, json};

use crate::{Client, LoadError, percentile};

#[derive(Debug, Clone, PartialEq)]
pub struct ValidateResult {
    pub nodes: usize,
    pub create_ms: f64,
    pub validate_median_ms: f64,
}

impl ValidateResult {
    pub fn to_json(&self) -> Value {
        json!({"scenario": "validate", "nodes": self.nodes, "create_ms": self.create_ms,
               "validate_median_ms": self.validate_median_ms})
    }
}

pub async fn run(client: &Client, nodes: usize) -> Result<ValidateResult, LoadError> {
    let dag_id = format!("loadtest-validate-{nodes}-{}", std::process::id());
    let mut doc =
        serde_json::to_value(synth::random(nodes, nodes * 2, 42)).map_err(|e| LoadError::Api(e.to_string()))?;
    doc["dag_id"] = json!(dag_id);
    let started = Instant::now();
    let (status, body) = client.call(reqwest::Method::POST, "/dags", Some(&doc)).await?;
    let create_ms = started.elapsed().as_secs_f64() * 1000.0;
    if status != 201 {
        return Err(LoadError::Api(format!("creating the DAG answered {status}: {body:.300}")));
    }
    let mut times = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        let (status, body) = client.call(reqwest::Method::POST, &format!("/dags/{dag_id}/validate"), None).await?;
        if status != 200 || body["valid"] != true {
            return Err(LoadError::Api(format!("validate answered {status}: {body:.300}")));
        }
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    client.call(reqwest::Method::DELETE, &format!("/dags/{dag_id}"), None).await?;
    Ok(ValidateResult { nodes, create_ms, validate_median_ms: percentile(&times, 50.0).unwrap_or(0.0) })
}
