//! Behaviour of the state machine: each failure semantic on small DAGs. The model-based property
//! test is in `model_tests.rs`.

use serde_json::{Value, json};

use super::*;
use crate::dag::{DagSpec, Limits, compile};

pub(super) fn dag(doc: Value) -> Arc<Dag> {
    Arc::new(compile(DagSpec::from_value(doc).expect("document"), &Limits::default()).expect("valid DAG"))
}

pub(super) fn ok(outputs: Value) -> Outcome {
    Outcome::Succeeded { outputs }
}

pub(super) fn err(kind: &str) -> Outcome {
    Outcome::Failed { error: NodeError::new(kind, "boom"), retryable: true }
}

pub(super) fn dispatched(effects: &[Effect]) -> Vec<(NodeIndex, u32)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Dispatch(t) => Some((t.node, t.attempt)),
            _ => None,
        })
        .collect()
}

fn finished(effects: &[Effect]) -> Option<ExecutionStatus> {
    effects.iter().find_map(|e| match e {
        Effect::Finished(s) => Some(*s),
        _ => None,
    })
}

fn id(dag: &Dag, name: &str) -> NodeIndex {
    dag.index_of(name).unwrap_or_else(|| panic!("no node {name}"))
}

fn status(exec: &Execution, name: &str) -> NodeStatus {
    exec.node_state(id(exec.dag(), name)).status
}

fn no_retry() -> Value {
    json!({"max_retries": 0})
}

#[test]
fn linear_chain_runs_in_order_and_passes_outputs() {
    let d = dag(json!({"name": "t", "nodes": {
        "a": {"agent_id": "x"}, "b": {"agent_id": "x", "depends_on": ["a"]},
        "c": {"agent_id": "x", "depends_on": ["b"], "input_mapping": {"v": "results.a.v", "y": "input.year"}}}}));
    let mut e = Execution::new(d.clone(), "e1", json!({"year": 2025}));
    let fx = e.start(0);
    assert_eq!(dispatched(&fx), vec![(id(&d, "a"), 1)]);
    let fx = e.record(id(&d, "a"), 1, ok(json!({"v": 7})), 1).expect("current");
    let Some(Effect::Dispatch(task)) = fx.first() else { panic!("b dispatched: {fx:?}") };
    assert_eq!(task.input, json!({"_input": {"year": 2025}, "a": {"v": 7}}));
    let fx = e.record(id(&d, "b"), 1, ok(json!({})), 2).expect("current");
    let Some(Effect::Dispatch(task)) = fx.first() else { panic!("c dispatched") };
    assert_eq!(task.input, json!({"v": 7, "y": 2025}));
    let fx = e.record(id(&d, "c"), 1, ok(json!({})), 3).expect("current");
    assert_eq!(finished(&fx), Some(ExecutionStatus::Completed));
}

#[test]
fn parallelism_is_bounded_and_follows_canonical_order() {
    let d = dag(json!({"name": "t", "max_parallel_nodes": 2, "nodes": {
        "d": {"agent_id": "x"}, "c": {"agent_id": "x"}, "b": {"agent_id": "x"}, "a": {"agent_id": "x", "priority": -1}}}));
    let mut e = Execution::new(d.clone(), "e", json!({}));
    assert_eq!(dispatched(&e.start(0)), vec![(id(&d, "b"), 1), (id(&d, "c"), 1)]);
    assert_eq!(dispatched(&e.record(id(&d, "c"), 1, ok(json!({})), 1).expect("ok")), vec![(id(&d, "d"), 1)]);
    assert_eq!(dispatched(&e.record(id(&d, "b"), 1, ok(json!({})), 1).expect("ok")), vec![(id(&d, "a"), 1)]);
}

#[test]
fn a_flaky_node_is_retried_after_its_delay() {
    let d = dag(json!({"name": "t", "nodes": {"f": {"agent_id": "flaky",
        "retry_policy": {"max_retries": 3, "base_delay": 1, "jitter": false}}}}));
    let f = id(&d, "f");
    let mut e = Execution::new(d.clone(), "e", json!({}));
    e.start(0);
    assert!(dispatched(&e.record(f, 1, err("TransientError"), 100).expect("ok")).is_empty());
    assert_eq!(e.node_state(f).status, NodeStatus::Retrying);
    assert_eq!(e.next_wake_ms(), Some(1100));
    assert!(dispatched(&e.tick(1099)).is_empty(), "not before the delay");
    assert_eq!(dispatched(&e.tick(1100)), vec![(f, 2)]);
    e.record(f, 2, err("TransientError"), 2000).expect("ok");
    assert_eq!(e.next_wake_ms(), Some(4000), "exponential: 2 s before retry 2");
    assert_eq!(dispatched(&e.tick(4000)), vec![(f, 3)]);
    let fx = e.record(f, 3, ok(json!({"attempt": 3})), 4100).expect("ok");
    assert_eq!(finished(&fx), Some(ExecutionStatus::Completed));
    assert_eq!(e.node_state(f).attempt, 3);
}

#[test]
fn stale_and_duplicate_outcomes_are_ignored() {
    let d = dag(json!({"name": "t", "nodes": {"a": {"agent_id": "x", "retry_policy": {"base_delay": 0}}}}));
    let a = id(&d, "a");
    let mut e = Execution::new(d.clone(), "e", json!({}));
    e.start(0);
    e.record(a, 1, err("X"), 0).expect("first outcome");
    e.tick(0);
    assert_eq!(e.record(a, 1, ok(json!({})), 1), Err(Stale { node: a, attempt: 1 }), "late result of attempt 1");
    e.record(a, 2, ok(json!({})), 2).expect("current attempt");
    assert_eq!(e.record(a, 2, ok(json!({})), 3), Err(Stale { node: a, attempt: 2 }), "duplicate");
    assert_eq!(e.status(), ExecutionStatus::Completed);
}

fn branching(policy: &str) -> Arc<Dag> {
    dag(json!({"name": "t", "on_failure": policy, "default_retry_policy": no_retry(), "nodes": {
        "root": {"agent_id": "x"},
        "bad": {"agent_id": "x", "depends_on": ["root"], "compensation_handler": "undo"},
        "after_bad": {"agent_id": "x", "depends_on": ["bad"]},
        "good": {"agent_id": "x", "depends_on": ["root"], "compensation_handler": "undo"},
        "after_good": {"agent_id": "x", "depends_on": ["good"]},
        "join": {"agent_id": "x", "depends_on": ["after_bad", "after_good"]}}}))
}

#[test]
fn fail_fast_stops_dispatch_and_lets_running_nodes_finish() {
    let d = branching("fail_fast");
    let mut e = Execution::new(d.clone(), "e", json!({}));
    e.start(0);
    let fx = e.record(id(&d, "root"), 1, ok(json!({})), 1).expect("ok");
    assert_eq!(dispatched(&fx).len(), 2, "bad and good run in parallel");
    let fx = e.record(id(&d, "bad"), 1, err("AgentError"), 2).expect("ok");
    assert!(dispatched(&fx).is_empty() && finished(&fx).is_none(), "good is still running");
    assert_eq!(status(&e, "after_bad"), NodeStatus::UpstreamFailed);
    assert_eq!(status(&e, "join"), NodeStatus::UpstreamFailed);
    assert_eq!(status(&e, "after_good"), NodeStatus::Cancelled);
    let fx = e.record(id(&d, "good"), 1, ok(json!({})), 3).expect("running node is recorded");
    assert_eq!(finished(&fx), Some(ExecutionStatus::Failed));
    assert_eq!(status(&e, "good"), NodeStatus::Completed);
}

#[test]
fn continue_runs_independent_branches_to_the_end() {
    let d = branching("continue");
    let mut e = Execution::new(d.clone(), "e", json!({}));
    e.start(0);
    e.record(id(&d, "root"), 1, ok(json!({})), 1).expect("ok");
    e.record(id(&d, "bad"), 1, err("AgentError"), 2).expect("ok");
    let fx = e.record(id(&d, "good"), 1, ok(json!({})), 3).expect("ok");
    assert_eq!(dispatched(&fx), vec![(id(&d, "after_good"), 1)]);
    let fx = e.record(id(&d, "after_good"), 1, ok(json!({})), 4).expect("ok");
    assert_eq!(finished(&fx), Some(ExecutionStatus::Failed));
    assert_eq!(status(&e, "after_bad"), NodeStatus::UpstreamFailed);
    assert_eq!(status(&e, "join"), NodeStatus::UpstreamFailed);
}

#[test]
fn compensate_runs_handlers_in_reverse_canonical_order() {
    let d = dag(json!({"name": "t", "on_failure": "compensate", "default_retry_policy": no_retry(), "nodes": {
        "a": {"agent_id": "x", "compensation_handler": "undo_a"},
        "b": {"agent_id": "x", "depends_on": ["a"], "compensation_handler": "undo_b"},
        "c": {"agent_id": "x", "depends_on": ["b"]},
        "d": {"agent_id": "x", "depends_on": ["c"]}}}));
    let mut e = Execution::new(d.clone(), "e", json!({}));
    e.start(0);
    e.record(id(&d, "a"), 1, ok(json!({"a": 1})), 1).expect("ok");
    e.record(id(&d, "b"), 1, ok(json!({"b": 1})), 2).expect("ok");
    let fx = e.record(id(&d, "c"), 1, err("AgentError"), 3).expect("ok");
    let Some(Effect::Dispatch(first)) = fx.first() else { panic!("compensation starts: {fx:?}") };
    assert_eq!((first.node, first.kind, first.agent_id.as_str()), (id(&d, "b"), TaskKind::Compensate, "undo_b"));
    assert_eq!(first.input, json!({"node_id": "b", "outputs": {"b": 1}, "failed_node": "c"}));
    assert_eq!(first.attempt, 1, "the compensation carries the attempt it undoes");
    let fx = e.record_compensation(id(&d, "b"), 1, ok(json!({})), 4).expect("ok");
    let Some(Effect::Dispatch(second)) = fx.first() else { panic!("then a") };
    assert_eq!(second.agent_id, "undo_a");
    let fx = e.record_compensation(id(&d, "a"), 1, ok(json!({})), 5).expect("ok");
    assert_eq!(finished(&fx), Some(ExecutionStatus::Failed));
    assert_eq!(e.node_state(id(&d, "a")).compensation, Compensation::Completed);
    assert_eq!(status(&e, "d"), NodeStatus::UpstreamFailed);
}

#[test]
fn skip_policy_keeps_the_error_and_lets_dependents_run() {
    let d = dag(json!({"name": "t", "default_retry_policy": no_retry(), "nodes": {
        "s": {"agent_id": "x", "on_failure": "skip"}, "after": {"agent_id": "x", "depends_on": ["s"]}}}));
    let mut e = Execution::new(d.clone(), "e", json!({}));
    e.start(0);
    let fx = e.record(id(&d, "s"), 1, err("AgentError"), 1).expect("ok");
    let Some(Effect::Dispatch(task)) = fx.first() else { panic!("dependent runs") };
    assert_eq!(task.input["s"], Value::Null);
    let state = e.node_state(id(&d, "s"));
    assert_eq!((state.status, state.skip_reason), (NodeStatus::Skipped, Some(SkipReason::Policy)));
    assert_eq!(state.error.as_ref().map(|x| x.error_type.as_str()), Some("AgentError"));
    let fx = e.record(id(&d, "after"), 1, ok(json!({})), 2).expect("ok");
    assert_eq!(finished(&fx), Some(ExecutionStatus::Completed));
}

#[test]
fn a_false_condition_prunes_its_branch_only() {
    let d = dag(json!({"name": "t", "nodes": {
        "gate": {"agent_id": "x", "condition": "input.run == true"},
        "under": {"agent_id": "x", "depends_on": ["gate"]},
        "deeper": {"agent_id": "x", "depends_on": ["under"]},
        "other": {"agent_id": "x"},
        "mixed": {"agent_id": "x", "depends_on": ["gate", "other"]}}}));
    let mut e = Execution::new(d.clone(), "e", json!({"run": false}));
    let fx = e.start(0);
    assert_eq!(dispatched(&fx), vec![(id(&d, "other"), 1)]);
    assert_eq!(status(&e, "gate"), NodeStatus::Skipped);
    assert_eq!(e.node_state(id(&d, "deeper")).skip_reason, Some(SkipReason::Pruned));
    let fx = e.record(id(&d, "other"), 1, ok(json!({})), 1).expect("ok");
    assert_eq!(dispatched(&fx), vec![(id(&d, "mixed"), 1)], "one live dependency is enough");
    let fx = e.record(id(&d, "mixed"), 1, ok(json!({})), 2).expect("ok");
    assert_eq!(finished(&fx), Some(ExecutionStatus::Completed));
}

#[test]
fn an_unevaluable_condition_fails_closed() {
    let d = dag(json!({"name": "t", "nodes": {"a": {"agent_id": "x", "condition": "input.name > 3"}}}));
    let mut e = Execution::new(d.clone(), "e", json!({"name": "text"}));
    let fx = e.start(0);
    assert_eq!(finished(&fx), Some(ExecutionStatus::Failed));
    let state = e.node_state(0);
    assert_eq!(state.error.as_ref().map(|x| x.error_type.as_str()), Some("condition_error"));
    assert_eq!(state.attempt, 1, "counted as one attempt, never retried");
}

#[test]
fn on_timeout_is_honoured() {
    let d = dag(json!({"name": "t", "default_retry_policy": no_retry(), "nodes": {
        "slow": {"agent_id": "x", "timeout_policy": {"timeout_seconds": 1, "on_timeout": "skip"}},
        "after": {"agent_id": "x", "depends_on": ["slow"]}}}));
    let mut e = Execution::new(d.clone(), "e", json!({}));
    let fx = e.start(0);
    let Some(Effect::Dispatch(task)) = fx.first() else { panic!() };
    assert_eq!(task.timeout_ms, 1000);
    let fx = e.record(id(&d, "slow"), 1, err("timeout"), 1000).expect("ok");
    assert_eq!(status(&e, "slow"), NodeStatus::Skipped);
    assert_eq!(dispatched(&fx), vec![(id(&d, "after"), 1)]);
}

#[test]
fn cancel_stops_running_nodes_and_cancels_the_rest() {
    let d = dag(json!({"name": "t", "nodes": {
        "a": {"agent_id": "x"}, "b": {"agent_id": "x"}, "c": {"agent_id": "x", "depends_on": ["a"]}}}));
    let mut e = Execution::new(d.clone(), "e", json!({}));
    e.start(0);
    let fx = e.cancel(1);
    assert_eq!(fx.iter().filter(|x| matches!(x, Effect::CancelRunning { .. })).count(), 2);
    assert_eq!(status(&e, "c"), NodeStatus::Cancelled);
    assert_eq!(e.next_wake_ms(), Some(2001), "signals go out again until the attempts end");
    let again = e.tick(2001);
    assert_eq!(again.iter().filter(|x| matches!(x, Effect::CancelRunning { .. })).count(), 2);
    e.record(id(&d, "a"), 1, err("cancelled"), 2).expect("ok");
    assert_eq!(status(&e, "a"), NodeStatus::Cancelled);
    let fx = e.record(id(&d, "b"), 1, ok(json!({})), 3).expect("a finished node stays finished");
    assert_eq!(finished(&fx), Some(ExecutionStatus::Cancelled));
    assert_eq!(status(&e, "b"), NodeStatus::Completed);
    assert!(e.cancel(4).is_empty(), "cancelling a finished execution does nothing");
}

#[test]
fn level_barrier_waits_for_the_whole_level() {
    let d = dag(json!({"name": "t", "scheduling": "level_barrier", "nodes": {
        "a": {"agent_id": "x"}, "slow": {"agent_id": "x"}, "b": {"agent_id": "x", "depends_on": ["a"]}}}));
    let mut e = Execution::new(d.clone(), "e", json!({}));
    e.start(0);
    assert!(dispatched(&e.record(id(&d, "a"), 1, ok(json!({})), 1).expect("ok")).is_empty());
    assert_eq!(dispatched(&e.record(id(&d, "slow"), 1, ok(json!({})), 2).expect("ok")), vec![(id(&d, "b"), 1)]);
}

#[test]
fn restore_continues_where_it_stopped() {
    let d = branching("continue");
    let mut e = Execution::new(d.clone(), "e", json!({}));
    e.start(0);
    e.record(id(&d, "root"), 1, ok(json!({})), 1).expect("ok");
    let snapshot = e.snapshot();
    let mut again = Execution::restore(d.clone(), "e", json!({}), snapshot);
    assert_eq!(
        again.record(id(&d, "good"), 1, ok(json!({})), 2).map(|fx| dispatched(&fx)),
        Ok(vec![(id(&d, "after_good"), 1)])
    );
}

#[test]
fn resume_keeps_trusted_checkpoints_and_renews_the_retry_budget() {
    let d = dag(json!({"name": "t", "default_retry_policy": {"max_retries": 1, "base_delay": 0}, "nodes": {
        "a": {"agent_id": "x"}, "b": {"agent_id": "x", "depends_on": ["a"]},
        "c": {"agent_id": "x", "depends_on": ["a"]}, "d": {"agent_id": "x", "depends_on": ["b", "c"]}}}));
    let mut e = Execution::new(d.clone(), "e", json!({}));
    e.start(0);
    e.record(id(&d, "a"), 1, ok(json!({"a": 1})), 1).expect("ok");
    e.record(id(&d, "b"), 1, ok(json!({"b": 1})), 2).expect("ok");
    e.record(id(&d, "c"), 1, err("X"), 3).expect("ok");
    e.tick(3);
    e.record(id(&d, "c"), 2, err("X"), 4).expect("ok");
    assert_eq!(e.status(), ExecutionStatus::Failed);
    let tampered = id(&d, "b");
    let r = resume(&d, &e.snapshot(), |v| v != tampered);
    assert_eq!(r.skipped, vec![id(&d, "a")]);
    assert_eq!(r.remaining, vec![id(&d, "b"), id(&d, "c"), id(&d, "d")]);
    let mut again = Execution::restore(d.clone(), "e", json!({}), r.snapshot);
    let fx = again.start(10);
    assert_eq!(dispatched(&fx), vec![(id(&d, "b"), 2), (id(&d, "c"), 3)], "attempt numbers carry on");
    let Some(Effect::Dispatch(b_task)) = fx.first() else { panic!("b runs") };
    assert_eq!(b_task.input["a"], json!({"a": 1}), "a's checkpointed outputs feed its dependents");
    let fx = again.record(id(&d, "c"), 3, err("X"), 11).expect("ok");
    assert_eq!(dispatched(&fx), vec![(id(&d, "c"), 4)], "a fresh retry budget (zero delay: retried at once)");
    again.record(id(&d, "c"), 4, ok(json!({})), 12).expect("ok");
    let fx = again.record(id(&d, "b"), 2, ok(json!({"b": 1})), 13).expect("ok");
    assert_eq!(dispatched(&fx), vec![(id(&d, "d"), 1)]);
}

#[test]
fn level_barrier_never_stalls_behind_a_closed_level() {
    // Order a, b, slow; b (level 1) must not block slow's retry (level 0) under the barrier.
    let d = dag(json!({"name": "t", "scheduling": "level_barrier",
        "default_retry_policy": {"max_retries": 2, "base_delay": 1, "jitter": false}, "nodes": {
        "a": {"agent_id": "x"}, "slow": {"agent_id": "x"}, "b": {"agent_id": "x", "depends_on": ["a"]}}}));
    let mut e = Execution::new(d.clone(), "e", json!({}));
    e.start(0);
    e.record(id(&d, "slow"), 1, err("X"), 1).expect("ok");
    e.record(id(&d, "a"), 1, ok(json!({})), 2).expect("ok");
    assert_eq!(dispatched(&e.tick(1001)), vec![(id(&d, "slow"), 2)], "the retry of level 0 goes first");
    assert_eq!(dispatched(&e.record(id(&d, "slow"), 2, ok(json!({})), 1002).expect("ok")), vec![(id(&d, "b"), 1)]);
    assert_eq!(finished(&e.record(id(&d, "b"), 1, ok(json!({})), 1003).expect("ok")), Some(ExecutionStatus::Completed));
}

#[test]
fn compensated_nodes_run_again_on_resume_and_compensate_under_a_new_attempt() {
    let d = dag(json!({"name": "t", "on_failure": "compensate", "default_retry_policy": {"max_retries": 0}, "nodes": {
        "a": {"agent_id": "x", "compensation_handler": "undo"}, "b": {"agent_id": "x", "depends_on": ["a"]}}}));
    let mut e = Execution::new(d.clone(), "e", json!({}));
    e.start(0);
    e.record(id(&d, "a"), 1, ok(json!({})), 1).expect("ok");
    e.record(id(&d, "b"), 1, err("X"), 2).expect("ok");
    e.record_compensation(id(&d, "a"), 1, ok(json!({})), 3).expect("compensated");
    let r = resume(&d, &e.snapshot(), |_| true);
    assert!(r.skipped.is_empty(), "a's effects were undone, so its checkpoint is not trusted");
    let mut again = Execution::restore(d.clone(), "e", json!({}), r.snapshot);
    again.start(10);
    again.record(id(&d, "a"), 2, ok(json!({})), 11).expect("ok");
    let fx = again.record(id(&d, "b"), 2, err("X"), 12).expect("ok");
    let Some(Effect::Dispatch(task)) = fx.first() else { panic!("compensation again") };
    assert_eq!((task.kind, task.attempt), (TaskKind::Compensate, 2));
    assert_eq!(
        again.record_compensation(id(&d, "a"), 1, ok(json!({})), 13),
        Err(Stale { node: id(&d, "a"), attempt: 1 })
    );
    assert!(again.record_compensation(id(&d, "a"), 2, ok(json!({})), 13).is_ok());
}

#[test]
fn a_node_whose_input_is_over_the_limit_fails_undispatched() {
    let d = dag(json!({"name": "t", "nodes": {
        "a": {"agent_id": "x"}, "b": {"agent_id": "x", "depends_on": ["a"], "retry_policy": {"max_retries": 3}}}}));
    let mut e = Execution::new(d.clone(), "e1", json!({}));
    e.set_max_input_bytes(100);
    assert_eq!(dispatched(&e.start(0)), vec![(id(&d, "a"), 1)], "a's input is small");
    let fx = e.record(id(&d, "a"), 1, ok(json!({"blob": "x".repeat(200)})), 1).expect("current");
    assert!(dispatched(&fx).is_empty(), "b is never dispatched: {fx:?}");
    let b = e.node_state(id(&d, "b"));
    assert_eq!((b.status, b.attempt), (NodeStatus::Failed, 1), "not retried");
    let error = b.error.clone().expect("error");
    assert_eq!(error.error_type, "input_too_large");
    assert!(error.message.contains("the limit is 100 (GL_ORCHESTRATOR_MAX_TASK_INPUT_BYTES)"), "{}", error.message);
    assert_eq!(finished(&fx), Some(ExecutionStatus::Failed));
}
