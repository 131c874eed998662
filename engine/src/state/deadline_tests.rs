//! The coordinator's own deadline on an attempt: dispatch + timeout + grace, after which an
//! attempt that sent no result is ended as `worker_lost` and retried per its policy.

use serde_json::json;

use super::tests::{dag, dispatched, ok};
use super::*;

fn cancels(effects: &[Effect]) -> Vec<(NodeIndex, u32)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::CancelRunning { node, attempt } => Some((*node, *attempt)),
            _ => None,
        })
        .collect()
}

/// One node with a 2 s timeout and one retry; the grace is 3 s, so the deadline is at 5,000 ms.
fn one_node() -> Execution {
    let d = dag(json!({"name": "t", "nodes": {"a": {"agent_id": "x",
        "timeout_policy": {"timeout_seconds": 2}, "retry_policy": {"max_retries": 1, "base_delay": 0}}}}));
    let mut e = Execution::new(d, "e1", json!({}));
    e.set_attempt_grace_ms(3_000);
    e
}

#[test]
fn an_attempt_without_a_result_is_ended_at_its_deadline_and_retried() {
    let mut e = one_node();
    assert_eq!(dispatched(&e.start(0)), vec![(0, 1)]);
    assert_eq!(e.node_state(0).deadline_ms, Some(5_000));
    assert_eq!(e.next_wake_ms(), Some(5_000), "the scheduler wakes for the deadline");
    assert!(e.tick(4_999).is_empty(), "not before the deadline");
    let fx = e.tick(5_000);
    assert_eq!(cancels(&fx), vec![(0, 1)], "whichever worker still holds attempt 1 is told to stop");
    assert_eq!(dispatched(&fx), vec![(0, 2)], "retried at once (base_delay 0)");
    let error = e.node_state(0).error.clone().expect("the error is kept");
    assert_eq!(error.error_type, "worker_lost");
    assert!(error.message.contains("3 s of grace (GL_ORCHESTRATOR_ATTEMPT_GRACE_SECONDS)"), "{}", error.message);
    assert_eq!(e.node_state(0).deadline_ms, Some(10_000), "attempt 2 has its own deadline");
    assert!(e.record(0, 1, ok(json!({"late": true})), 5_001).is_err(), "a late result of attempt 1 is stale");
    e.record(0, 2, ok(json!({"v": 1})), 6_000).expect("attempt 2 is current");
    assert_eq!(e.status(), ExecutionStatus::Completed);
    assert!(e.tick(10_000).is_empty(), "a finished attempt's deadline does nothing");
}

#[test]
fn the_last_attempt_past_its_deadline_fails_the_node() {
    let mut e = one_node();
    e.start(0);
    e.tick(5_000);
    let fx = e.tick(10_000);
    assert_eq!(cancels(&fx), vec![(0, 2)]);
    assert_eq!(e.node_state(0).status, NodeStatus::Failed);
    assert_eq!(e.status(), ExecutionStatus::Failed, "no node stays running for ever");
}

#[test]
fn a_restored_execution_keeps_the_deadline_of_its_running_attempt() {
    let mut e = one_node();
    e.start(0);
    let d = e.dag().clone();
    let mut restored = Execution::restore(d, "e1", json!({}), e.snapshot());
    restored.set_attempt_grace_ms(3_000);
    assert_eq!(restored.next_wake_ms(), Some(5_000));
    assert_eq!(cancels(&restored.tick(5_000)), vec![(0, 1)]);
    let mut old = e.snapshot();
    old.nodes[0].deadline_ms = None;
    let mut from_before = Execution::restore(e.dag().clone(), "e1", json!({}), old);
    assert!(from_before.tick(u64::MAX / 2).is_empty(), "an attempt dispatched before deadlines existed has none");
}

#[test]
fn a_cancelled_execution_whose_worker_is_gone_still_ends() {
    let mut e = one_node();
    e.start(0);
    e.cancel(100);
    assert_eq!(e.status(), ExecutionStatus::Running, "waiting for the running attempt to stop");
    e.tick(5_000);
    assert_eq!(e.node_state(0).status, NodeStatus::Cancelled);
    assert_eq!(e.status(), ExecutionStatus::Cancelled);
}
