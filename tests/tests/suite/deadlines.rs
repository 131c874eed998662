//! The coordinator's own deadline on every attempt (dispatch + timeout +
//! `GL_ORCHESTRATOR_ATTEMPT_GRACE_SECONDS`): with no worker to take its task, a node does not stay
//! `running` for ever; each attempt is ended as `worker_lost`, retried per its policy, and the
//! execution fails when the retries are spent.

use std::time::Duration;

use serde_json::json;
use tests::{Backend, Stack, StackOptions};

async fn an_attempt_no_worker_takes_is_ended_and_retried_by_the_coordinator(backend: Backend) {
    let settings = vec![("ATTEMPT_GRACE_SECONDS", "1".to_owned())];
    let stack = Stack::start(StackOptions { backend, workers: 0, settings, ..StackOptions::default() }).await;
    stack
        .create_dag(json!({"dag_id": "orphan", "name": "orphan", "nodes": {"a": {"agent_id": "echo",
            "timeout_policy": {"timeout_seconds": 1}, "retry_policy": {"max_retries": 1, "base_delay": 0}}}}))
        .await;
    let id = stack.execute("orphan", json!({})).await;
    let e = stack.wait_finished(&id, Duration::from_secs(60)).await;
    assert_eq!(e["status"], "failed", "{e}");
    let a = &stack.nodes(&id).await["a"];
    assert_eq!(a["status"], "failed", "{a}");
    assert_eq!(a["attempt_count"], 2, "the attempt the coordinator ended was retried once: {a}");
    assert_eq!(a["error_type"], "worker_lost", "{a}");
    assert!(a["error"].as_str().unwrap_or("").contains("GL_ORCHESTRATOR_ATTEMPT_GRACE_SECONDS"), "{a}");
    stack.shutdown().await;
}

tests::on_both_backends!(an_attempt_no_worker_takes_is_ended_and_retried_by_the_coordinator);
