//! # loadtest
//!
//! Load scenarios that drive a running orchestrator (embedded or distributed) through its REST
//! API only: [`chain`] (per-step overhead of a line of no-op nodes), [`fanout`] (trivial nodes
//! per second), [`concurrent`] (many executions at once), [`memory`] (coordinator memory per
//! active execution) and [`soak`] (many executions with bounded concurrency, memory and queues
//! sampled), [`validate`] (a 100,000-node DAG through the API) and [`shapes`] (real workflow
//! shapes against a zero-overhead simulation). The Celery peer lives in `loadtest/peers/celery`.

pub mod amplify;
pub mod chain;
pub mod concurrent;
pub mod fanout;
pub mod memory;
pub mod shapes;
pub mod soak;
pub mod validate;

use std::time::{Duration, Instant};

use serde_json::Value;

/// A scenario could not run.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("HTTP: {0}")]
    Http(#[from] reqwest::Error),
    #[error("{0}")]
    Api(String),
}

/// A small client of the orchestrator API.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    http: reqwest::Client,
    token: Option<String>,
}

impl Client {
    /// `base` is the API root, for example `http://127.0.0.1:8080/api/v1/orchestrator`.
    pub fn new(base: &str, token: Option<String>) -> Self {
        Self { base: base.trim_end_matches('/').to_owned(), http: reqwest::Client::new(), token }
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value), LoadError> {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        let text = response.text().await?;
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::String(text))))
    }

    /// Stores `dag` unless a DAG with its id exists.
    pub async fn ensure_dag(&self, dag: &Value) -> Result<(), LoadError> {
        let (status, body) = self.call(reqwest::Method::POST, "/dags", Some(dag)).await?;
        match status {
            201 | 409 => Ok(()),
            _ => Err(LoadError::Api(format!("creating the DAG answered {status}: {body}"))),
        }
    }

    /// Starts an execution; returns its id.
    pub async fn execute(&self, dag_id: &str, input: &Value) -> Result<String, LoadError> {
        let body = serde_json::json!({"input_data": input});
        let (status, body) = self.call(reqwest::Method::POST, &format!("/dags/{dag_id}/execute"), Some(&body)).await?;
        match body["execution_id"].as_str() {
            Some(id) if status == 202 => Ok(id.to_owned()),
            _ => Err(LoadError::Api(format!("execute answered {status}: {body}"))),
        }
    }

    /// Waits until the execution is finished, polling every 20 ms with a deadline.
    pub async fn wait_finished(&self, id: &str, within: Duration) -> Result<Value, LoadError> {
        self.wait_finished_polling(id, within, Duration::from_millis(20)).await
    }

    /// Waits until the execution is finished, polling every `every`: many executions waited on
    /// at once must poll slowly, or the polls, not the orchestrator, are what gets measured.
    pub async fn wait_finished_polling(&self, id: &str, within: Duration, every: Duration) -> Result<Value, LoadError> {
        let deadline = Instant::now() + within;
        loop {
            let (_, body) = self.call(reqwest::Method::GET, &format!("/executions/{id}"), None).await?;
            let status = body["execution"]["status"].as_str().unwrap_or("");
            if matches!(status, "completed" | "failed" | "cancelled") {
                return Ok(body["execution"].clone());
            }
            if Instant::now() > deadline {
                return Err(LoadError::Api(format!("execution {id} did not finish within {within:?}")));
            }
            tokio::time::sleep(every).await;
        }
    }
}

/// An RFC 3339 time of an API answer.
pub fn time(value: &Value) -> Option<chrono::DateTime<chrono::Utc>> {
    value.as_str().and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok()).map(|t| t.with_timezone(&chrono::Utc))
}

/// Milliseconds from `from` to `to`.
pub fn millis(from: chrono::DateTime<chrono::Utc>, to: chrono::DateTime<chrono::Utc>) -> f64 {
    (to - from).num_microseconds().unwrap_or(0) as f64 / 1000.0
}

/// The p-th percentile (0..=100) of `values`, by nearest rank; `None` when empty.
pub fn percentile(values: &[f64], p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted.get(rank.min(sorted.len()) - 1).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&v, 100.0), Some(100.0));
        assert_eq!(percentile(&[3.0], 99.0), Some(3.0));
        assert_eq!(percentile(&[], 50.0), None);
    }
}
