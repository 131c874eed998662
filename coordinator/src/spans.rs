//! The coordinator's spans of an execution's trace, written with deterministic ids once what they
//! describe is committed: the submission, one span per attempt (the worker's `node.execute`
//! span is its child through the task's `traceparent`), and the execution itself as the root.
//! Any replica may write any of them; the ids make them one tree. No-ops when tracing is off.

use std::time::{Duration, SystemTime};

use engine::messages::{ResultMessage, TraceContext};
use engine::state::Outcome;
use opentelemetry::KeyValue;

/// What an attempt span needs from a result, kept until its step is committed.
#[derive(Debug, Clone)]
pub struct AttemptSpan {
    context: TraceContext,
    execution_id: String,
    node_id: String,
    attempt: u32,
    outcome: &'static str,
    worker_id: String,
    started: SystemTime,
}

impl AttemptSpan {
    /// `None` when this process exports no spans: nothing is prepared per result then.
    pub fn of(result: &ResultMessage) -> Option<Self> {
        runtime::telemetry::exporting().then(|| Self {
            context: TraceContext::for_attempt(&result.execution_id, &result.node_id, result.attempt, result.kind),
            execution_id: result.execution_id.clone(),
            node_id: result.node_id.clone(),
            attempt: result.attempt,
            outcome: match result.outcome {
                Outcome::Succeeded { .. } => "succeeded",
                Outcome::Failed { .. } => "failed",
            },
            worker_id: result.worker_id.clone(),
            started: system_time(&result.started_at),
        })
    }

    /// Writes the span: from the attempt's start until its result was recorded.
    pub fn record(&self) {
        let root = TraceContext::for_execution(&self.execution_id);
        let attributes = vec![
            KeyValue::new("execution_id", self.execution_id.clone()),
            KeyValue::new("node_id", self.node_id.clone()),
            KeyValue::new("attempt", i64::from(self.attempt)),
            KeyValue::new("outcome", self.outcome),
            KeyValue::new("worker_id", self.worker_id.clone()),
        ];
        let times = (self.started, SystemTime::now());
        runtime::telemetry::record_span("node.attempt", &self.context, Some(&root.span_id), times, attributes);
    }
}

/// The root span: the execution from when this replica began driving it until it ended.
pub fn execution(execution_id: &str, dag_id: &str, status: &str, driven_for: Duration) {
    if !runtime::telemetry::exporting() {
        return;
    }
    let now = SystemTime::now();
    let attributes = vec![
        KeyValue::new("execution_id", execution_id.to_owned()),
        KeyValue::new("dag_id", dag_id.to_owned()),
        KeyValue::new("status", status.to_owned()),
    ];
    let root = TraceContext::for_execution(execution_id);
    runtime::telemetry::record_span("execution", &root, None, (now - driven_for, now), attributes);
}

/// The API request that created the execution.
pub fn submitted(execution_id: &str, dag_id: &str, request_started: SystemTime) {
    if !runtime::telemetry::exporting() {
        return;
    }
    let root = TraceContext::for_execution(execution_id);
    let own = TraceContext::for_submission(execution_id);
    let attributes =
        vec![KeyValue::new("execution_id", execution_id.to_owned()), KeyValue::new("dag_id", dag_id.to_owned())];
    let times = (request_started, SystemTime::now());
    runtime::telemetry::record_span("execution.submit", &own, Some(&root.span_id), times, attributes);
}

/// An RFC 3339 time from a worker (its clock); now when unreadable.
fn system_time(text: &str) -> SystemTime {
    chrono::DateTime::parse_from_rfc3339(text).map_or_else(|_| SystemTime::now(), SystemTime::from)
}
