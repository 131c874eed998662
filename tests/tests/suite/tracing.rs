//! Traces across processes: a coordinator process and a worker process export OTLP/HTTP (JSON)
//! to a receiver inside this test; one execution of a 3-node DAG must give one trace in which
//! each worker `node.execute` span descends from the coordinator's spans.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::routing::post;
use engine::messages::TraceContext;
use serde_json::{Value, json};
use tests::{Stack, StackOptions, eventually, example};

const COORDINATOR: &str = env!("CARGO_BIN_EXE_gl-coordinator");
const WORKER: &str = env!("CARGO_BIN_EXE_gl-worker");

/// One exported span: its service, name, ids.
#[derive(Debug, Clone)]
struct Span {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent: String,
}

/// An OTLP/HTTP receiver: `POST /v1/traces` bodies, flattened into spans.
async fn receiver() -> (String, Arc<Mutex<Vec<Span>>>) {
    let spans: Arc<Mutex<Vec<Span>>> = Arc::default();
    let sink = spans.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        post(move |body: axum::body::Bytes| {
            let sink = sink.clone();
            async move {
                let doc: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                sink.lock().expect("lock").extend(flatten(&doc));
                axum::Json(json!({}))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), spans)
}

fn flatten(doc: &Value) -> Vec<Span> {
    let mut out = Vec::new();
    for resource in doc["resourceSpans"].as_array().into_iter().flatten() {
        let service = resource["resource"]["attributes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|a| a["key"] == "service.name")
            .and_then(|a| a["value"]["stringValue"].as_str())
            .unwrap_or("")
            .to_owned();
        for scope in resource["scopeSpans"].as_array().into_iter().flatten() {
            for span in scope["spans"].as_array().into_iter().flatten() {
                let text = |k: &str| span[k].as_str().unwrap_or("").to_lowercase();
                out.push(Span {
                    service: service.clone(),
                    name: text("name"),
                    trace_id: text("traceId"),
                    span_id: text("spanId"),
                    parent: text("parentSpanId"),
                });
            }
        }
    }
    out
}

#[tokio::test]
async fn one_execution_is_one_trace_from_submission_through_the_worker_and_back() {
    let (endpoint, spans) = receiver().await;
    let otel = vec![("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint), ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned())];
    let mut stack =
        Stack::start(StackOptions { coordinators: 0, workers: 0, process_env: otel, ..StackOptions::default() }).await;
    let mut coordinator = stack.coordinator_process(COORDINATOR).await;
    let mut worker = stack.spawn_worker(WORKER, "traced");
    stack.create_dag(example("linear-3.yaml")).await;
    let id = stack.execute("dag-linear-3-node", json!({"x": 1})).await;
    assert_eq!(stack.wait_finished(&id, Duration::from_secs(60)).await["status"], "completed");

    let trace = TraceContext::for_execution(&id);
    let in_trace = || -> Vec<Span> {
        spans.lock().expect("lock").iter().filter(|s| s.trace_id == trace.trace_id).cloned().collect()
    };
    eventually(Duration::from_secs(30), "the worker's three node spans are exported", || async {
        in_trace().iter().filter(|s| s.name == "node.execute").count() == 3
    })
    .await;
    eventually(Duration::from_secs(30), "the root span is exported", || async {
        in_trace().iter().any(|s| s.name == "execution")
    })
    .await;
    let spans = in_trace();
    let by_id: HashMap<&str, &Span> = spans.iter().map(|s| (s.span_id.as_str(), s)).collect();
    let root = spans.iter().find(|s| s.name == "execution").expect("root");
    assert_eq!((root.span_id.as_str(), root.parent.as_str()), (trace.span_id.as_str(), ""), "{root:?}");
    assert!(root.service.contains("coordinator"), "{root:?}");
    let submit = spans.iter().find(|s| s.name == "execution.submit").expect("the API request's span");
    assert_eq!(submit.parent, root.span_id);
    for node in spans.iter().filter(|s| s.name == "node.execute") {
        assert!(node.service.contains("worker"), "{node:?}");
        // Walk up: worker span -> the coordinator's attempt span -> the execution's root.
        let attempt = by_id.get(node.parent.as_str()).unwrap_or_else(|| panic!("no parent of {node:?}"));
        assert_eq!(attempt.name, "node.attempt", "{attempt:?}");
        assert!(attempt.service.contains("coordinator"), "{attempt:?}");
        assert_eq!(attempt.parent, root.span_id, "{attempt:?}");
    }
    for child in [&mut worker, &mut coordinator] {
        child.kill().ok();
        let _ = child.wait();
    }
    stack.shutdown().await;
}
