//! Bounded results: outputs over a limit fail their node fast (the amplification DAG of issue 17,
//! and a chain that nests one level deeper per hop), an input over its limit is never dispatched,
//! and malformed results published straight
//! onto the broker wedge neither the inbox nor the execution they name.

use std::collections::BTreeMap;
use std::time::Duration;

use engine::topology::Topology;
use runtime::amqp::Broker;
use runtime::queue::Queue;
use serde_json::{Value, json};
use tests::{AMQP, Backend, Stack, StackOptions, eventually, onto_results};

const WITHIN: Duration = Duration::from_secs(90);

/// `width` echo nodes per layer, each depending on every node of the layer before: each layer's
/// outputs hold all of the previous layer's, so they double per layer.
fn all_to_all_echo(dag_id: &str, width: usize, layers: usize) -> Value {
    let mut nodes = serde_json::Map::new();
    for layer in 0..layers {
        for i in 0..width {
            let deps: Vec<String> =
                if layer == 0 { vec![] } else { (0..width).map(|j| format!("l{}n{j}", layer - 1)).collect() };
            nodes.insert(format!("l{layer}n{i}"), json!({"agent_id": "echo", "depends_on": deps}));
        }
    }
    json!({"dag_id": dag_id, "name": dag_id, "max_parallel_nodes": width, "nodes": nodes})
}

fn failures(trace: &BTreeMap<String, Value>) -> Vec<(&str, &str, &str)> {
    trace
        .iter()
        .filter(|(_, n)| n["status"] == "failed")
        .map(|(id, n)| (id.as_str(), n["error_type"].as_str().unwrap_or("?"), n["error"].as_str().unwrap_or("?")))
        .collect()
}

async fn an_amplifying_dag_fails_fast_with_output_too_large(backend: Backend) {
    let stack = Stack::start(StackOptions { backend, ..StackOptions::default() }).await;
    stack.create_dag(all_to_all_echo("amplify", 2, 20)).await;
    let id = stack.execute("amplify", json!({"blob": "x".repeat(1024)})).await;
    let e = stack.wait_finished(&id, WITHIN).await;
    assert_eq!(e["status"], "failed", "{e}");
    let trace = stack.nodes(&id).await;
    let failed = failures(&trace);
    assert!(!failed.is_empty(), "{trace:?}");
    for (node, error_type, message) in &failed {
        assert_eq!(*error_type, "output_too_large", "{node}: {message}");
        assert!(message.contains("the limit is 1048576 (GL_ORCHESTRATOR_MAX_NODE_OUTPUT_BYTES)"), "{message}");
        // Layer k's outputs are about 1 KiB times 2^(k+1) - 1: layer 9 is the first over 1 MiB.
        assert!(node.starts_with("l9n"), "{node}");
    }
    let ran_after =
        trace.iter().filter(|(id, n)| id.starts_with("l1") && id.len() > 4 && n["attempt_count"] != 0).count();
    assert_eq!(ran_after, 0, "no node after the failing layer was dispatched: {trace:?}");
    stack.shutdown().await;
}

async fn a_chain_that_nests_deeper_per_hop_stops_at_the_depth_limit(backend: Backend) {
    let settings = vec![("MAX_JSON_DEPTH", "8".to_owned())];
    let stack = Stack::start(StackOptions { backend, settings, ..StackOptions::default() }).await;
    stack.create_dag(all_to_all_echo("nest", 1, 12)).await;
    let id = stack.execute("nest", json!({})).await;
    assert_eq!(stack.wait_finished(&id, WITHIN).await["status"], "failed");
    let trace = stack.nodes(&id).await;
    let failed = failures(&trace);
    assert_eq!(failed.len(), 1, "{failed:?}");
    let (node, error_type, message) = failed[0];
    assert_eq!(error_type, "output_too_large");
    assert!(message.contains("levels deep; the limit is 8 (GL_ORCHESTRATOR_MAX_JSON_DEPTH)"), "{message}");
    // l0's outputs {"_input": {}} nest 2 deep and each hop adds one: l7 is the first over 8.
    assert_eq!(node, "l7n0");
    assert_eq!(trace["l6n0"]["status"], "completed");
    stack.shutdown().await;
}

async fn a_node_whose_input_is_over_the_limit_fails_without_being_dispatched(backend: Backend) {
    let settings = vec![("MAX_TASK_INPUT_BYTES", "1024".to_owned())];
    let stack = Stack::start(StackOptions { backend, settings, ..StackOptions::default() }).await;
    stack.create_dag(json!({"dag_id": "wide-in", "name": "wide-in", "nodes": {"a": {"agent_id": "echo"}}})).await;
    let id = stack.execute("wide-in", json!({"blob": "x".repeat(2000)})).await;
    assert_eq!(stack.wait_finished(&id, WITHIN).await["status"], "failed");
    let a = &stack.nodes(&id).await["a"];
    assert_eq!((&a["error_type"], &a["attempt_count"]), (&json!("input_too_large"), &json!(1)), "{a}");
    assert!(a["error"].as_str().unwrap_or("").contains("the limit is 1024 (GL_ORCHESTRATOR_MAX_TASK_INPUT_BYTES)"));
    assert_eq!(a["worker_id"], Value::Null, "no worker saw it");
    stack.shutdown().await;
}

tests::on_both_backends!(
    an_amplifying_dag_fails_fast_with_output_too_large,
    a_chain_that_nests_deeper_per_hop_stops_at_the_depth_limit,
    a_node_whose_input_is_over_the_limit_fails_without_being_dispatched,
);

fn result_json(execution_id: &str, node_id: &str, attempt: u32) -> Value {
    json!({"type": "result", "v": 1, "execution_id": execution_id, "node_id": node_id, "attempt": attempt,
           "kind": "run", "worker_id": "forger", "started_at": "2026-12-04T00:00:00.000000Z",
           "completed_at": "2026-12-04T00:00:01.000000Z", "duration_ms": 1000, "deliveries": 1,
           "outcome": "succeeded", "outputs": {"forged": true}})
}

/// Junk on the results queue (not JSON, attempt 0) is counted and dropped, never requeued for ever;
/// a result for an execution that does not exist is ignored by the store (nothing to change); a result with an unparsable time for the
/// running attempt ends that attempt as `invalid_result`, so its execution ends instead of
/// failing every step's commit; and the inbox goes on recording what comes next.
#[tokio::test]
async fn malformed_results_wedge_neither_the_inbox_nor_an_execution() {
    let stack = Stack::start(StackOptions::default()).await;
    stack
        .create_dag(json!({"dag_id": "held", "name": "held", "nodes": {
            "wait": {"agent_id": "sleep", "params": {"ms": 3000}},
            "after": {"agent_id": "echo", "depends_on": ["wait"]}}}))
        .await;
    let id = stack.execute("held", json!({})).await;
    eventually(WITHIN, "node wait is running", || async { stack.nodes(&id).await["wait"]["status"] == "running" })
        .await;
    let topology = Topology::new(&stack.prefix, 5);
    let broker = Broker::connect(AMQP, "forger", topology.clone(), tests::BROKER_CALL).await.expect("broker");
    let mut bad_time = result_json(&id, "wait", 1);
    bad_time["started_at"] = json!("yesterday");
    let junk = [
        b"not json at all".to_vec(),
        result_json(&id, "wait", 0).to_string().into_bytes(),
        result_json(&uuid::Uuid::now_v7().to_string(), "wait", 1).to_string().into_bytes(),
        bad_time.to_string().into_bytes(),
    ];
    broker.publish(&junk.map(|body| onto_results(&topology, body, BTreeMap::new()))).await.expect("publish");
    broker.close().await;
    let e = stack.wait_finished(&id, WITHIN).await;
    assert_eq!(e["status"], "failed", "{e}");
    let wait = &stack.nodes(&id).await["wait"];
    assert_eq!(wait["error_type"], "invalid_result", "{wait}");
    assert!(
        wait["error"].as_str().unwrap_or("").contains("started_at \"yesterday\" is not an RFC 3339 time"),
        "{wait}"
    );
    eventually(WITHIN, "the junk is counted", || async {
        stack.invalid_messages("unaddressable").await == 2.0
            && stack.invalid_messages("invalid_result").await == 1.0
            && stack.invalid_messages("unappliable").await == 0.0
    })
    .await;
    stack.create_dag(json!({"dag_id": "next", "name": "next", "nodes": {"a": {"agent_id": "echo"}}})).await;
    let next = stack.execute("next", json!({})).await;
    assert_eq!(stack.wait_finished(&next, WITHIN).await["status"], "completed", "the inbox still records results");
    stack.shutdown().await;
}
