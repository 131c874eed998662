//! A running stack's own operations: adding coordinators and workers, its API client (every call
//! bounded by [`crate::API_CALL`]), the waits on executions with their failure messages, and the
//! auditor that checks nothing was lost or duplicated.

use crate::{AMQP, API_CALL, BROKER_CALL, POSTGRES};
use coordinator::app::Coordinator;
use engine::topology::{Source, Topology};
use runtime::amqp::AmqpConnector;
use runtime::queue::Queue;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use worker::WorkerOptions;

use super::{RunningWorker, Stack};

impl Stack {
    /// Sends API calls to `base` instead of the first in-process coordinator.
    pub fn use_api(&mut self, base: &str) {
        self.api = Some(base.to_owned());
    }

    /// Waits until the API at the current base answers.
    pub async fn wait_api(&self, within: Duration) {
        let deadline = Instant::now() + within;
        while self.http.get(format!("{}/health", self.base())).send().await.is_err() {
            assert!(Instant::now() < deadline, "the API at {} never answered", self.base());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A connection to this stack's database, for checks and deliberate tampering.
    pub async fn database(&self) -> sqlx::PgPool {
        sqlx::PgPool::connect(&format!("{POSTGRES}/{}", self.database)).await.expect("test database")
    }

    pub async fn add_coordinator(&mut self, name: &str) {
        let c = Coordinator::start(self.settings(), name).await.expect("coordinator starts");
        self.coordinators.push(c);
    }

    pub fn add_worker(&mut self, id: &str) {
        let settings = self.settings();
        let options = WorkerOptions {
            queue: Arc::new(AmqpConnector::new(
                engine::config::Secret::new(AMQP),
                Topology::new(&self.prefix, settings.delivery_limit),
                settings.amqp_timeout(),
            )),
            pools: vec!["default".into()],
            concurrency: self.options.worker_concurrency,
            worker_id: id.into(),
            grace: Duration::from_secs(5),
            bounds: settings.bounds(),
            result_keys: settings.result_keys.clone(),
            registry: self.options.registry.clone(),
            metrics: Default::default(),
            liveness: Default::default(),
        };
        let (stop, rx) = oneshot::channel();
        let task = tokio::spawn(worker::run(options, async move {
            let _ = rx.await;
        }));
        self.workers.push(RunningWorker { stop, task });
    }

    /// `/api/v1/orchestrator` of the first coordinator.
    pub fn base(&self) -> String {
        match &self.api {
            Some(base) => base.clone(),
            None => format!("http://{}/api/v1/orchestrator", self.coordinators[0].addr),
        }
    }

    pub async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.base()));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("the API at {} did not answer {path} within {API_CALL:?}: {e}", self.base()));
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_else(|e| panic!("no body from {path}: {e}"));
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// One API call that may fail (a fault test's probe): the status and body, or why no answer.
    pub async fn try_call(&self, method: reqwest::Method, path: &str) -> Result<(u16, Value), String> {
        let response = self.http.request(method, format!("{}{path}", self.base())).send().await;
        let response = response.map_err(|e| format!("no answer to {path}: {e}"))?;
        let status = response.status().as_u16();
        let text = response.text().await.map_err(|e| format!("no body from {path}: {e}"))?;
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::String(text))))
    }

    /// The Prometheus text of the API at the current base (its `/metrics`, beside the API root).
    pub async fn prometheus(&self) -> Result<String, String> {
        let root = self.base().replace("/api/v1/orchestrator", "");
        let response = self.http.get(format!("{root}/metrics")).send().await.map_err(|e| e.to_string())?;
        response.text().await.map_err(|e| e.to_string())
    }

    /// `gl_orchestrator_invalid_messages_total{reason}` of the first coordinator (-1 when absent).
    pub async fn invalid_messages(&self, reason: &str) -> f64 {
        let text = self.prometheus().await.unwrap_or_default();
        let series = format!("gl_orchestrator_invalid_messages_total{{reason=\"{reason}\"}} ");
        text.lines().find_map(|l| l.strip_prefix(&series)).and_then(|v| v.parse().ok()).unwrap_or(-1.0)
    }

    /// Stores a DAG (JSON form); panics unless created.
    pub async fn create_dag(&self, dag: Value) -> Value {
        let (status, body) = self.call(reqwest::Method::POST, "/dags", Some(dag)).await;
        assert_eq!(status, 201, "create DAG: {body}");
        body
    }

    /// Starts an execution; returns its id.
    pub async fn execute(&self, dag_id: &str, input: Value) -> String {
        let (status, body) = self
            .call(reqwest::Method::POST, &format!("/dags/{dag_id}/execute"), Some(json!({"input_data": input})))
            .await;
        assert_eq!(status, 202, "execute: {body}");
        body["execution_id"].as_str().expect("execution_id").to_owned()
    }

    pub async fn execution(&self, id: &str) -> Value {
        let (status, body) = self.call(reqwest::Method::GET, &format!("/executions/{id}"), None).await;
        assert_eq!(status, 200, "get execution: {body}");
        body["execution"].clone()
    }

    /// Waits until the execution is completed, failed or cancelled.
    pub async fn wait_finished(&self, id: &str, within: Duration) -> Value {
        self.wait_for(id, within, |e| matches!(e["status"].as_str(), Some("completed" | "failed" | "cancelled"))).await
    }

    /// Waits until `done(execution)` holds, or panics at the deadline.
    pub async fn wait_for(&self, id: &str, within: Duration, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + within;
        loop {
            // During a fault the API may answer 503 or time out; that is waited through, and
            // the last answer is what the failure message shows.
            let e = match self.try_call(reqwest::Method::GET, &format!("/executions/{id}")).await {
                Ok((200, body)) => body["execution"].clone(),
                Ok((status, body)) => json!({"unavailable": status, "body": body}),
                Err(e) => json!({"unavailable": e}),
            };
            if e.get("unavailable").is_none() && done(&e) {
                return e;
            }
            if Instant::now() >= deadline {
                let nodes: Vec<String> = self
                    .nodes(id)
                    .await
                    .iter()
                    .map(|(node, t)| format!("{node}={}(attempt {})", t["status"], t["attempt"]))
                    .collect();
                panic!("condition not reached within {within:?}: {e}\nnodes: {}", nodes.join(", "));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Node traces by node id.
    pub async fn nodes(&self, id: &str) -> std::collections::BTreeMap<String, Value> {
        let (status, body) = self.call(reqwest::Method::GET, &format!("/executions/{id}/trace"), None).await;
        assert_eq!(status, 200, "trace: {body}");
        body["nodes"]
            .as_array()
            .expect("nodes")
            .iter()
            .map(|n| (n["node_id"].as_str().unwrap_or("").to_owned(), n.clone()))
            .collect()
    }

    pub async fn provenance(&self, id: &str) -> Value {
        let (status, body) = self.call(reqwest::Method::GET, &format!("/executions/{id}/provenance"), None).await;
        assert_eq!(status, 200, "provenance: {body}");
        body
    }

    /// The reliability auditor, run after a fault: waits until every execution of this stack is
    /// finished, then checks that each completed node has exactly one provenance record, every
    /// completed execution's chain verifies, no outbox row is left, and the task and result
    /// queues are empty. Panics with what is wrong.
    pub async fn audit(&self, within: Duration) {
        let db = self.database().await;
        let deadline = Instant::now() + within;
        let mut broker = None;
        loop {
            let open: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM dag_executions WHERE status NOT IN ('completed', 'failed', 'cancelled')",
            )
            .fetch_one(&db)
            .await
            .expect("count");
            let outbox: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox").fetch_one(&db).await.expect("outbox");
            let queued = self.queue_depths(&mut broker).await;
            if open == 0 && outbox == 0 && queued == 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "audit: {open} executions unfinished, {outbox} outbox rows, {queued} messages queued"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let twice: Vec<(uuid::Uuid, String, i64)> = sqlx::query_as(
            "SELECT execution_id, node_id, count(*) FROM execution_provenance GROUP BY 1, 2 HAVING count(*) <> 1",
        )
        .fetch_all(&db)
        .await
        .expect("records");
        assert!(twice.is_empty(), "audit: nodes recorded other than once: {twice:?}");
        let unrecorded: Vec<(uuid::Uuid, String)> = sqlx::query_as(
            "SELECT t.execution_id, t.node_id FROM node_traces t
             WHERE t.status = 'completed' AND NOT EXISTS (SELECT 1 FROM execution_provenance p
                 WHERE p.execution_id = t.execution_id AND p.node_id = t.node_id)",
        )
        .fetch_all(&db)
        .await
        .expect("unrecorded");
        assert!(unrecorded.is_empty(), "audit: completed nodes without a record: {unrecorded:?}");
        let completed: Vec<uuid::Uuid> =
            sqlx::query_scalar("SELECT execution_id FROM dag_executions WHERE status = 'completed'")
                .fetch_all(&db)
                .await
                .expect("completed");
        for id in completed {
            let provenance = self.provenance(&id.to_string()).await;
            assert_eq!(provenance["chain_valid"], true, "audit: the chain of {id} does not verify: {provenance}");
        }
    }

    /// Messages ready in this stack's task and result queues (`u32::MAX` while the broker cannot
    /// be asked, so that the auditor keeps waiting). `broker` is kept between calls.
    async fn queue_depths(&self, broker: &mut Option<runtime::amqp::Broker>) -> u32 {
        let topology = Topology::new(&self.prefix, 1);
        if broker.as_ref().is_none_or(|b| !b.is_connected()) {
            *broker = runtime::amqp::Broker::connect(AMQP, "auditor", topology.clone(), BROKER_CALL).await.ok();
        }
        let Some(b) = broker.as_ref() else { return u32::MAX };
        let mut total = 0;
        for source in [Source::Pool("default".to_owned()), Source::Results] {
            match b.depth(&source).await {
                Ok(depth) => total += depth,
                Err(_) => return u32::MAX,
            }
        }
        total
    }
}
