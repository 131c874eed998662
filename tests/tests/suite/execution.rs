//! Execution end to end, on both backends: each behaviour runs once distributed (real PostgreSQL
//! and RabbitMQ, one coordinator, two workers, its own database and queue prefix) and once
//! embedded (`coordinator dev`'s SQLite store, embedded queue and in-process workers), so the
//! embedded twins cannot drift from the real adapters.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Value, json};
use tests::{Backend, Stack, StackOptions, example};
use worker::agents::{External, Registry};

const WITHIN: Duration = Duration::from_secs(30);

fn node(agent: &str) -> Value {
    json!({"agent_id": agent})
}

async fn run(stack: &Stack, dag: Value, input: Value) -> (Value, std::collections::BTreeMap<String, Value>) {
    let dag_id = dag["dag_id"].as_str().expect("tests name their DAGs").to_owned();
    stack.create_dag(dag).await;
    let id = stack.execute(&dag_id, input).await;
    let execution = stack.wait_finished(&id, WITHIN).await;
    let nodes = stack.nodes(&id).await;
    (execution, nodes)
}

fn statuses(nodes: &std::collections::BTreeMap<String, Value>) -> Vec<(String, String)> {
    nodes.iter().map(|(k, n)| (k.clone(), n["status"].as_str().unwrap_or("?").to_owned())).collect()
}

async fn the_three_seed_dags_complete_with_verified_provenance(backend: Backend) {
    let stack = Stack::start(StackOptions { backend, ..StackOptions::default() }).await;
    for (file, nodes) in [("linear-3.yaml", 3), ("diamond-4.yaml", 4), ("complex-6.yaml", 6)] {
        let dag = example(file);
        let dag_id = dag["dag_id"].as_str().expect("id").to_owned();
        stack.create_dag(dag).await;
        let id = stack.execute(&dag_id, json!({"year": 2025})).await;
        let e = stack.wait_finished(&id, WITHIN).await;
        assert_eq!(e["status"], "completed", "{file}: {e}");
        assert_eq!(e["completed_nodes"], nodes);
        let trace = stack.nodes(&id).await;
        assert!(trace.values().all(|n| n["status"] == "completed" && n["attempt_count"] == 1), "{trace:?}");
        let provenance = stack.provenance(&id).await;
        assert_eq!(provenance["chain_valid"], true, "{provenance}");
        assert_eq!(provenance["provenance_chain_hash"], e["provenance_chain_hash"]);
    }
    stack.shutdown().await;
}

async fn two_workers_share_the_work(backend: Backend) {
    let stack = Stack::start(StackOptions { backend, worker_concurrency: 2, ..StackOptions::default() }).await;
    let nodes: serde_json::Map<String, Value> =
        (0..8).map(|i| (format!("n{i}"), json!({"agent_id": "sleep", "params": {"ms": 150}}))).collect();
    let (e, trace) =
        run(&stack, json!({"dag_id": "wide", "name": "wide", "max_parallel_nodes": 8, "nodes": nodes}), json!({}))
            .await;
    assert_eq!(e["status"], "completed");
    let workers: BTreeSet<&str> = trace.values().filter_map(|n| n["worker_id"].as_str()).collect();
    assert_eq!(workers, BTreeSet::from(["w1", "w2"]), "each worker takes at most 2 at a time, so both must work");
    stack.shutdown().await;
}

async fn a_flaky_node_succeeds_on_its_third_attempt(backend: Backend) {
    let stack = Stack::start(StackOptions { backend, ..StackOptions::default() }).await;
    let dag = json!({"dag_id": "flaky", "name": "flaky", "nodes": {
        "f": {"agent_id": "flaky", "params": {"failures": 2},
              "retry_policy": {"max_retries": 3, "base_delay": 0.05, "max_delay": 0.2}},
        "after": {"agent_id": "echo", "depends_on": ["f"]}}});
    let (e, trace) = run(&stack, dag, json!({})).await;
    assert_eq!(e["status"], "completed", "{e}");
    assert_eq!(trace["f"]["attempt_count"], 3);
    let history: Vec<(i64, &str)> = trace["f"]["attempts"]
        .as_array()
        .expect("attempts")
        .iter()
        .map(|a| (a["attempt"].as_i64().unwrap_or(0), a["outcome"].as_str().unwrap_or("?")))
        .collect();
    assert_eq!(history, [(1, "failed"), (2, "failed"), (3, "succeeded")], "every attempt is in the trace");
    assert_eq!(trace["f"]["attempts"][0]["error_type"], "TransientError");
    assert_eq!(trace["f"]["outputs"], json!({"attempt": 3}));
    assert_eq!(trace["after"]["outputs"]["f"], json!({"attempt": 3}), "the dependent sees the final outputs");
    the_reports_fit_their_documented_schemas(&stack, e["execution_id"].as_str().expect("id")).await;
    stack.shutdown().await;
}

/// What the trace and the provenance report serve is what the OpenAPI document says they serve
/// (failed attempts included, so the optional fields are exercised with values and with nulls).
async fn the_reports_fit_their_documented_schemas(stack: &Stack, id: &str) {
    let (status, doc) = stack.call(reqwest::Method::GET, "/openapi.json", None).await;
    assert_eq!(status, 200);
    let (status, trace) = stack.call(reqwest::Method::GET, &format!("/executions/{id}/trace"), None).await;
    assert_eq!(status, 200, "{trace}");
    tests::assert_fits(&doc, "Trace", &trace);
    tests::assert_fits(&doc, "ProvenanceReport", &stack.provenance(id).await);
    // A stored DAG with a warning (a compensation handler no failure policy calls), so the
    // findings have an entry.
    stack
        .create_dag(json!({"dag_id": "warned", "name": "warned", "nodes": {
            "a": {"agent_id": "echo", "compensation_handler": "undo"}}}))
        .await;
    let (status, report) = stack.call(reqwest::Method::POST, "/dags/warned/validate", None).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["warnings"][0]["error_type"], "unused_compensation_handler", "{report}");
    tests::assert_fits(&doc, "Validation", &report);
}

async fn a_timeout_stops_the_attempt_and_on_timeout_is_honoured(backend: Backend) {
    let stack = Stack::start(StackOptions { backend, ..StackOptions::default() }).await;
    let slow = |on_timeout: &str| {
        json!({"agent_id": "sleep", "params": {"ms": 5000}, "retry_policy": {"max_retries": 1, "base_delay": 0},
               "timeout_policy": {"timeout_seconds": 0.3, "on_timeout": on_timeout}})
    };
    let dag = json!({"dag_id": "t-fail", "name": "t", "nodes": {"slow": slow("fail")}});
    let (e, trace) = run(&stack, dag, json!({})).await;
    assert_eq!(e["status"], "failed");
    assert_eq!(
        (trace["slow"]["error_type"].as_str(), trace["slow"]["attempt_count"].as_i64()),
        (Some("timeout"), Some(2))
    );
    assert!(
        trace["slow"]["duration_ms"].as_i64().is_some_and(|d| d < 3000),
        "the worker stopped it: {}",
        trace["slow"]
    );

    let dag = json!({"dag_id": "t-skip", "name": "t", "nodes": {"slow": slow("skip"), "after": {"agent_id": "echo", "depends_on": ["slow"]}}});
    let (e, trace) = run(&stack, dag, json!({})).await;
    assert_eq!(e["status"], "completed", "{e}");
    assert_eq!(statuses(&trace), [("after".into(), "completed".into()), ("slow".into(), "skipped".into())]);
    assert_eq!(trace["after"]["outputs"]["slow"], Value::Null);
    stack.shutdown().await;
}

fn branching(policy: &str, id: &str) -> Value {
    json!({"dag_id": id, "name": id, "on_failure": policy, "default_retry_policy": {"max_retries": 0}, "nodes": {
        "root": node("noop"),
        "bad": {"agent_id": "fail", "depends_on": ["root"]},
        "after_bad": {"agent_id": "noop", "depends_on": ["bad"]},
        "good": {"agent_id": "sleep", "params": {"ms": 400}, "depends_on": ["root"]},
        "after_good": {"agent_id": "noop", "depends_on": ["good"]}}})
}

async fn fail_fast_and_continue_differ_on_independent_branches(backend: Backend) {
    let stack = Stack::start(StackOptions { backend, ..StackOptions::default() }).await;
    let (e, trace) = run(&stack, branching("fail_fast", "ff"), json!({})).await;
    assert_eq!(e["status"], "failed");
    assert!(e["error"].as_str().is_some_and(|m| m.contains("bad")), "{e}");
    assert_eq!(
        statuses(&trace),
        [
            ("after_bad".into(), "upstream_failed".into()),
            ("after_good".into(), "cancelled".into()),
            ("bad".into(), "failed".into()),
            ("good".into(), "completed".into()),
            ("root".into(), "completed".into()),
        ],
        "the running node finished and was recorded; nothing new started"
    );
    let (e, trace) = run(&stack, branching("continue", "cont"), json!({})).await;
    assert_eq!(e["status"], "failed");
    assert_eq!(trace["after_good"]["status"], "completed");
    assert_eq!(trace["after_bad"]["status"], "upstream_failed");
    stack.shutdown().await;
}

async fn skip_and_false_conditions_do_not_fail_the_execution(backend: Backend) {
    let stack = Stack::start(StackOptions { backend, ..StackOptions::default() }).await;
    let dag = json!({"dag_id": "skips", "name": "s", "default_retry_policy": {"max_retries": 0}, "nodes": {
        "optional": {"agent_id": "fail", "on_failure": "skip"},
        "uses_optional": {"agent_id": "echo", "depends_on": ["optional"]},
        "gate": {"agent_id": "noop", "condition": "input.run_extra == true"},
        "extra": {"agent_id": "noop", "depends_on": ["gate"]},
        "always": {"agent_id": "noop"}}});
    let (e, trace) = run(&stack, dag, json!({"run_extra": false})).await;
    assert_eq!(e["status"], "completed", "{e}");
    assert_eq!(trace["optional"]["status"], "skipped");
    assert_eq!(trace["optional"]["error_type"], "AgentError", "the error is kept");
    assert_eq!(trace["uses_optional"]["status"], "completed");
    assert_eq!(
        (trace["gate"]["status"].as_str(), trace["gate"]["skip_reason"].as_str()),
        (Some("skipped"), Some("condition"))
    );
    assert_eq!(
        (trace["extra"]["status"].as_str(), trace["extra"]["skip_reason"].as_str()),
        (Some("skipped"), Some("pruned"))
    );
    assert_eq!(e["skipped_nodes"], 3);
    stack.shutdown().await;
}

async fn compensation_runs_handlers_of_completed_nodes(backend: Backend) {
    let stack = Stack::start(StackOptions { backend, ..StackOptions::default() }).await;
    let dag = json!({"dag_id": "comp", "name": "c", "on_failure": "compensate", "default_retry_policy": {"max_retries": 0},
        "nodes": {
            "reserve": {"agent_id": "noop", "compensation_handler": "echo"},
            "charge": {"agent_id": "noop", "depends_on": ["reserve"], "compensation_handler": "echo"},
            "ship": {"agent_id": "fail", "depends_on": ["charge"]}}});
    let (e, trace) = run(&stack, dag, json!({})).await;
    assert_eq!(e["status"], "failed");
    assert_eq!(trace["reserve"]["compensation"], "completed", "{trace:?}");
    assert_eq!(trace["charge"]["compensation"], "completed");
    assert_eq!(trace["ship"]["status"], "failed");
    stack.shutdown().await;
}

async fn cancelling_a_running_execution_stops_its_nodes(backend: Backend) {
    let stack = Stack::start(StackOptions { backend, ..StackOptions::default() }).await;
    let dag = json!({"dag_id": "long", "name": "l", "nodes": {
        "long": {"agent_id": "sleep", "params": {"ms": 20000}, "timeout_policy": {"timeout_seconds": 60}},
        "next": {"agent_id": "noop", "depends_on": ["long"]}}});
    stack.create_dag(dag).await;
    let id = stack.execute("long", json!({})).await;
    let deadline = std::time::Instant::now() + WITHIN;
    while stack.nodes(&id).await["long"]["status"] != "running" {
        assert!(std::time::Instant::now() < deadline, "the node never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, body) = stack.call(reqwest::Method::POST, &format!("/executions/{id}/cancel"), None).await;
    assert_eq!(status, 202, "{body}");
    let e = stack.wait_finished(&id, Duration::from_secs(10)).await;
    assert_eq!(e["status"], "cancelled");
    let trace = stack.nodes(&id).await;
    assert_eq!(trace["long"]["status"], "cancelled");
    assert!(trace["long"]["duration_ms"].as_i64().is_some_and(|d| d < 15000), "the worker stopped the agent");
    assert_eq!(trace["next"]["status"], "cancelled");
    let (status, _) = stack.call(reqwest::Method::POST, &format!("/executions/{id}/cancel"), None).await;
    assert_eq!(status, 409, "a finished execution cannot be cancelled");
    stack.shutdown().await;
}

async fn http_and_command_agents_run(backend: Backend) {
    let app = axum::Router::new()
        .route(
            "/score",
            axum::routing::post(|headers: axum::http::HeaderMap, axum::Json(call): axum::Json<Value>| async move {
                let rows = call["input"]["_input"]["rows"].as_i64().unwrap_or(0);
                let key = headers.get("idempotency-key").and_then(|k| k.to_str().ok()).unwrap_or("none").to_owned();
                axum::Json(json!({"score": rows * 2, "node": call["node_id"], "key": key}))
            }),
        )
        .route("/moved", axum::routing::post(|| async { (axum::http::StatusCode::FOUND, [("location", "/score")]) }))
        .route("/nul", axum::routing::post(|| async { axum::Json(json!({"text": "a\u{0}b"})) }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let registry = Registry::default()
        .with("scorer", External::Http { url: format!("http://{addr}/score") })
        .with("missing", External::Http { url: format!("http://{addr}/nope") })
        .with("nul", External::Http { url: format!("http://{addr}/nul") })
        .with("moved", External::Http { url: format!("http://{addr}/moved") })
        .with(
            "cat",
            External::Command { program: "/bin/sh".into(), args: vec!["-c".into(), "cat".into()], pass_env: vec![] },
        );
    let stack = Stack::start(StackOptions { backend, registry, ..StackOptions::default() }).await;
    let dag = json!({"dag_id": "ext", "name": "e", "nodes": {
        "score": node("scorer"),
        "shell": {"agent_id": "cat", "depends_on": ["score"], "params": {"mode": "audit"}}}});
    let (e, trace) = run(&stack, dag, json!({"rows": 21})).await;
    assert_eq!(e["status"], "completed", "{e}");
    let key = format!("{}:score:1:run", e["execution_id"].as_str().expect("id"));
    assert_eq!(
        trace["score"]["outputs"],
        json!({"score": 42, "node": "score", "key": key}),
        "the Idempotency-Key header"
    );
    let shell_key = format!("{}:shell:1:run", e["execution_id"].as_str().expect("id"));
    assert_eq!(trace["shell"]["outputs"]["idempotency_key"], json!(shell_key));
    assert_eq!(trace["shell"]["outputs"]["kind"], "run");
    assert_eq!(trace["shell"]["outputs"]["params"], json!({"mode": "audit"}));
    assert_eq!(trace["shell"]["outputs"]["input"]["score"]["score"], 42);
    failing_http_agents_end_their_node_cleanly(&stack).await;
    stack.shutdown().await;
    server.abort();
}

/// A 4xx (not retried, and no URL in the error), a redirect (not followed), outputs PostgreSQL
/// cannot store.
async fn failing_http_agents_end_their_node_cleanly(stack: &Stack) {
    let dag = json!({"dag_id": "ext404", "name": "e", "nodes": {"x": node("missing")}});
    let (e, trace) = run(stack, dag, json!({})).await;
    assert_eq!(e["status"], "failed");
    assert_eq!(trace["x"]["error_type"], "HttpClientError");
    assert_eq!(trace["x"]["attempt_count"], 1, "a 4xx is not retried");
    assert!(!trace["x"]["error"].as_str().unwrap_or("").contains("127.0.0.1"), "errors never show agent URLs");

    let dag = json!({"dag_id": "extmoved", "name": "e", "nodes": {"x": node("moved")}});
    let (e, trace) = run(stack, dag, json!({})).await;
    assert_eq!(e["status"], "failed");
    assert_eq!(
        (&trace["x"]["error_type"], &trace["x"]["attempt_count"]),
        (&json!("HttpRedirect"), &json!(1)),
        "{trace:?}"
    );

    let dag = json!({"dag_id": "extnul", "name": "e", "nodes": {"x": node("nul")}});
    let (e, trace) = run(stack, dag, json!({})).await;
    assert_eq!(e["status"], "failed", "outputs PostgreSQL cannot store fail the node cleanly");
    assert_eq!(trace["x"]["error_type"], "invalid_output");
}

async fn the_same_input_gives_the_same_provenance_hash(backend: Backend) {
    let stack = Stack::start(StackOptions { backend, ..StackOptions::default() }).await;
    let dag = example("emissions-pipeline.yaml");
    let input: Value = serde_json::from_str(
        &std::fs::read_to_string(tests::repo_root().join("examples/inputs/emissions.json")).expect("input"),
    )
    .expect("json");
    stack.create_dag(dag).await;
    let first = stack.execute("emissions-pipeline", input.clone()).await;
    let second = stack.execute("emissions-pipeline", input).await;
    let a = stack.wait_finished(&first, WITHIN).await;
    let b = stack.wait_finished(&second, WITHIN).await;
    assert_eq!((a["status"].as_str(), b["status"].as_str()), (Some("completed"), Some("completed")));
    assert_eq!(a["provenance_chain_hash"], b["provenance_chain_hash"]);
    let report = stack.nodes(&first).await;
    let total = report["aggregate"]["outputs"]["total"].as_f64().expect("total");
    assert!((total - 1333.79).abs() < 1e-6, "scope 1 + 2 + 3 = {total}");
    stack.shutdown().await;
}

tests::on_both_backends!(
    the_three_seed_dags_complete_with_verified_provenance,
    two_workers_share_the_work,
    a_flaky_node_succeeds_on_its_third_attempt,
    a_timeout_stops_the_attempt_and_on_timeout_is_honoured,
    fail_fast_and_continue_differ_on_independent_branches,
    skip_and_false_conditions_do_not_fail_the_execution,
    compensation_runs_handlers_of_completed_nodes,
    cancelling_a_running_execution_stops_its_nodes,
    http_and_command_agents_run,
    the_same_input_gives_the_same_provenance_hash,
);
