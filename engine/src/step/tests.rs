//! The step plan, tested from its inputs alone.

use std::sync::Arc;

use serde_json::json;

use crate::dag::{DagSpec, Limits, compile};

use super::*;

const NOW: u64 = 1_767_225_600_000;

const EXECUTION_ID: &str = "00000000-0000-0000-0000-000000000007";

fn owned() -> Held {
    let spec = DagSpec::from_yaml(include_str!("../../../examples/linear-3.yaml")).expect("parses");
    let dag = Arc::new(compile(spec, &Limits::default()).expect("valid"));
    let input = json!({"a": 1});
    Held {
        execution_id: EXECUTION_ID.into(),
        exec: Execution::new(dag, EXECUTION_ID, input.clone()),
        clock: "2026-01-01T00:00:00Z".into(),
        input_hash: provenance::hash_value(&input),
        chain: HashMap::new(),
        last_record: provenance::genesis_record_hash(EXECUTION_ID),
        seq: 0,
    }
}

fn topology() -> Topology {
    Topology::new("gl.unit", 5)
}

fn succeeded(node: &str, attempt: u32, outputs: serde_json::Value) -> ResultMessage {
    ResultMessage {
        v: WIRE_VERSION,
        execution_id: EXECUTION_ID.into(),
        node_id: node.into(),
        attempt,
        kind: TaskKind::Run,
        worker_id: "w1".into(),
        started_at: "2026-01-01T00:00:01.000000Z".into(),
        completed_at: "2026-01-01T00:00:02.000000Z".into(),
        duration_ms: 1000,
        deliveries: 1,
        outcome: Outcome::Succeeded { outputs },
    }
}

#[test]
fn the_first_step_starts_the_execution_and_dispatches_the_root() {
    let mut o = owned();
    let (write, observed) = advance(&mut o, vec![], false, &topology(), NOW);
    let write = write.expect("starting is a change");
    assert!(observed.started && !observed.finished);
    assert_eq!(write.status, ExecutionStatus::Running);
    assert_eq!(write.outbox.len(), 1, "only the root is ready");
    let task = match Message::from_bytes(&write.outbox[0].body).expect("a wire message") {
        Message::Task(t) => t,
        other => panic!("expected a task, got {other:?}"),
    };
    assert_eq!((task.node_id.as_str(), task.attempt, task.clock.as_str()), ("intake", 1, "2026-01-01T00:00:00Z"));
    assert_eq!(write.outbox[0].exchange, topology().tasks_exchange());
    assert!(write.outbox[0].headers.contains_key("traceparent"));
    let intake = write.nodes.iter().find(|n| n.node_id == "intake").expect("intake changed");
    assert!(intake.dispatched && intake.trace_id.is_some());
    assert!(write.records.is_empty() && write.checkpoints.is_empty());
}

#[test]
fn nothing_new_writes_nothing() {
    let mut o = owned();
    let _ = advance(&mut o, vec![], false, &topology(), NOW);
    let (write, _) = advance(&mut o, vec![], false, &topology(), NOW + 1);
    assert!(write.is_none(), "no result, no cancel, no retry due: nothing to write");
}

#[test]
fn a_result_checkpoints_the_node_chains_a_record_and_dispatches_the_next() {
    let mut o = owned();
    let _ = advance(&mut o, vec![], false, &topology(), NOW);
    let (write, observed) = advance(&mut o, vec![succeeded("intake", 1, json!({"x": 2}))], false, &topology(), NOW + 5);
    let write = write.expect("a result is a change");
    assert_eq!(write.processed, vec![Processed { node_id: "intake".into(), attempt: 1, kind: TaskKind::Run }]);
    assert_eq!(write.completed_nodes, 1);
    assert_eq!(write.checkpoints.len(), 1);
    assert_eq!(write.checkpoints[0].node_id, "intake");
    assert_eq!(write.records.len(), 1);
    assert_eq!(write.records[0].seq, 1, "the first record of the chain");
    assert_eq!(write.last_record_hash.as_deref(), Some(o.last_record.as_str()));
    assert_eq!(observed.attempts.len(), 1);
    let next: Vec<String> = write
        .outbox
        .iter()
        .map(|m| match Message::from_bytes(&m.body) {
            Ok(Message::Task(t)) => t.node_id,
            other => panic!("expected a task, got {other:?}"),
        })
        .collect();
    assert_eq!(next, vec!["validate"]);
}

#[test]
fn the_same_inputs_give_the_same_write_whatever_the_time() {
    // Time never enters a content hash: a step taken later writes the same records.
    let run = |now: u64| {
        let mut o = owned();
        let _ = advance(&mut o, vec![], false, &topology(), now);
        let (write, _) = advance(&mut o, vec![succeeded("intake", 1, json!({"x": 2}))], false, &topology(), now);
        let write = write.expect("a change");
        (
            write.records[0].record.record_hash.clone(),
            write.checkpoints[0].output_hash.clone(),
            write.outbox[0].body.clone(),
        )
    };
    assert_eq!(run(NOW), run(NOW + 86_400_000));
}

#[test]
fn a_cancel_before_the_start_dispatches_nothing_and_finishes() {
    let mut o = owned();
    let (write, observed) = advance(&mut o, vec![], true, &topology(), NOW);
    let write = write.expect("cancelling is a change");
    assert!(!observed.started);
    assert!(write.outbox.is_empty(), "nothing was dispatched");
    assert!(write.finished && observed.finished);
    assert_eq!(write.status, ExecutionStatus::Cancelled);
}

#[test]
fn the_last_result_finishes_with_the_execution_chain_hash() {
    let mut o = owned();
    let _ = advance(&mut o, vec![], false, &topology(), NOW);
    let mut last = None;
    for node in ["intake", "validate", "report"] {
        let (write, _) = advance(&mut o, vec![succeeded(node, 1, json!({"n": node}))], false, &topology(), NOW);
        last = write;
    }
    let write = last.expect("the last result is a change");
    assert!(write.finished);
    assert_eq!(write.status, ExecutionStatus::Completed);
    assert_eq!(write.completed_nodes, 3);
    assert!(write.provenance_chain_hash.is_some() && write.error.is_none());
}

mod properties {
    use std::collections::HashSet;

    use crate::state::NodeError;
    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    enum Event {
        /// A result for the n-th task dispatched so far (modulo their number): delivered
        /// again and again, it is a duplicate.
        Result {
            task: usize,
            ok: bool,
        },
        Cancel,
        Advance {
            ms: u64,
        },
    }

    fn event() -> impl Strategy<Value = Event> {
        prop_oneof![
            6 => (any::<usize>(), prop::bool::weighted(0.7)).prop_map(|(task, ok)| Event::Result { task, ok }),
            1 => Just(Event::Cancel),
            3 => (0u64..3000).prop_map(|ms| Event::Advance { ms }),
        ]
    }

    fn diamond() -> Held {
        let spec = DagSpec::from_yaml(include_str!("../../../examples/diamond-4.yaml")).expect("parses");
        let mut o = owned();
        let dag = Arc::new(compile(spec, &Limits::default()).expect("valid"));
        o.exec = Execution::new(dag, EXECUTION_ID, json!({"a": 1}));
        o
    }

    fn result(task: &TaskMessage, ok: bool) -> ResultMessage {
        let mut r = succeeded(&task.node_id, task.attempt, json!({"from": task.node_id}));
        if !ok {
            r.outcome = Outcome::Failed { error: NodeError::new("boom", "flaky"), retryable: true };
        }
        r
    }

    proptest! {
        /// Any interleaving of results (successes, retryable failures, duplicates), cancels
        /// and clock advances: no attempt of a node is dispatched twice, nothing is
        /// dispatched once the execution has finished, and a finished execution stays so.
        #[test]
        fn no_attempt_is_dispatched_twice(events in proptest::collection::vec(event(), 1..60)) {
            let mut o = diamond();
            let (mut now, mut cancel) = (NOW, false);
            let mut dispatched: Vec<TaskMessage> = Vec::new();
            let mut seen: HashSet<(String, u32)> = HashSet::new();
            let mut finished = false;
            let mut step = |o: &mut Held, results: Vec<ResultMessage>, cancel: bool, now: u64,
                            dispatched: &mut Vec<TaskMessage>| -> Result<(), TestCaseError> {
                let (write, _) = advance(o, results, cancel, &topology(), now);
                let Some(write) = write else { return Ok(()) };
                for m in &write.outbox {
                    if let Ok(Message::Task(t)) = Message::from_bytes(&m.body) {
                        prop_assert!(!finished, "{} dispatched after the end", t.node_id);
                        if t.kind == TaskKind::Run {
                            prop_assert!(seen.insert((t.node_id.clone(), t.attempt)), "{} attempt {} dispatched twice", t.node_id, t.attempt);
                        }
                        dispatched.push(t);
                    }
                }
                if finished {
                    prop_assert!(o.exec.status().is_terminal(), "a finished execution came back to life");
                }
                finished |= write.finished;
                Ok(())
            };
            step(&mut o, vec![], cancel, now, &mut dispatched)?;
            for e in events {
                match e {
                    Event::Result { task, ok } if !dispatched.is_empty() => {
                        let r = result(&dispatched[task % dispatched.len()], ok);
                        step(&mut o, vec![r], cancel, now, &mut dispatched)?;
                    }
                    Event::Result { .. } => {}
                    Event::Cancel => {
                        cancel = true;
                        step(&mut o, vec![], cancel, now, &mut dispatched)?;
                    }
                    Event::Advance { ms } => {
                        now += ms;
                        step(&mut o, vec![], cancel, now, &mut dispatched)?;
                    }
                }
            }
        }
    }
}
