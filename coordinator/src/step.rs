//! One step of an execution, decided without I/O: given the state machine this replica holds,
//! the results read from the inbox, whether a cancel was requested, and the time, [`advance`]
//! returns everything the step writes (node rows, checkpoints, provenance records, outbox
//! messages, the execution's counters) as one [`StepWrite`], for the store to commit fenced by
//! the lease. The scheduler around it reads the clock and the database; this module does neither,
//! so a step is tested here from its inputs alone.

use std::collections::{HashMap, HashSet};

use serde::Serialize;
use shared::canonical::ContentHash;
use shared::dag::{Dag, NodeIndex};
use shared::messages::{CancelMessage, Message, ResultMessage, TaskMessage, TraceContext, WIRE_VERSION};
use shared::provenance::{self, Timing};
use shared::state::{Effect, Execution, ExecutionStatus, Halt, NodeStatus, TaskKind};
use shared::topology::Topology;

use crate::store::{Lease, NodeUpdate, OutboxMessage, StepWrite};

/// An execution this replica holds the lease of.
pub(crate) struct Owned {
    pub(crate) lease: Lease,
    pub(crate) dag_id: String,
    /// When this replica first saw the execution running (for the duration metric).
    pub(crate) started: std::time::Instant,
    pub(crate) exec: Execution,
    pub(crate) clock: String,
    pub(crate) input_hash: ContentHash,
    /// Chain hash of each completed node, by node id.
    pub(crate) chain: HashMap<String, ContentHash>,
    pub(crate) last_record: ContentHash,
    pub(crate) seq: i32,
}

/// What a step did, for the metrics; recorded only once the step is committed.
#[derive(Debug, Default)]
pub(crate) struct Observed {
    pub(crate) started: bool,
    pub(crate) finished: bool,
    /// (node, duration ms, timed out)
    pub(crate) attempts: Vec<(NodeIndex, u64, bool)>,
    pub(crate) retries: Vec<NodeIndex>,
    /// Nodes that reached a final status through a result.
    pub(crate) settled: Vec<(NodeIndex, NodeStatus)>,
}

/// Applies inbox results, a cancel request and due retries at `now` (ms since the epoch); returns
/// what to write (none when nothing changed) and what happened, for the metrics.
pub(crate) fn advance(
    owned: &mut Owned,
    results: Vec<ResultMessage>,
    cancel: bool,
    topology: &Topology,
    now: u64,
) -> (Option<StepWrite>, Observed) {
    let dag = owned.exec.dag().clone();
    let waiting = matches!(owned.exec.status(), ExecutionStatus::Pending | ExecutionStatus::Queued);
    // A cancel that arrives before the start wins: nothing is dispatched at all.
    let started = waiting && !cancel;
    let mut observed = Observed { started, ..Observed::default() };
    let mut effects = if started { owned.exec.start(now) } else { Vec::new() };
    let mut timing: HashMap<NodeIndex, ResultMessage> = HashMap::new();
    let mut processed = Vec::with_capacity(results.len());
    for r in results {
        processed.push((r.node_id.clone(), i32::try_from(r.attempt).unwrap_or(i32::MAX), text(&r.kind)));
        let Some(v) = dag.index_of(&r.node_id) else {
            continue;
        };
        let applied = match r.kind {
            TaskKind::Run => owned.exec.record(v, r.attempt, r.outcome.clone(), now),
            TaskKind::Compensate => owned.exec.record_compensation(v, r.attempt, r.outcome.clone(), now),
        };
        if let Ok(fx) = applied {
            effects.extend(fx);
            if r.kind == TaskKind::Run {
                let timed_out =
                    matches!(&r.outcome, shared::state::Outcome::Failed { error, .. } if error.error_type == "timeout");
                observed.attempts.push((v, r.duration_ms, timed_out));
                timing.insert(v, r);
            }
        }
    }
    if cancel && owned.exec.halt() != Some(Halt::Cancel) && !owned.exec.status().is_terminal() {
        effects.extend(owned.exec.cancel(now));
    }
    effects.extend(owned.exec.tick(now));
    let changed = owned.exec.take_changed();
    if !waiting && changed.is_empty() && effects.is_empty() && processed.is_empty() {
        return (None, observed);
    }
    for &v in &changed {
        let status = owned.exec.node_state(v).status;
        if status == NodeStatus::Retrying {
            observed.retries.push(v);
        } else if status.is_terminal() && timing.contains_key(&v) {
            observed.settled.push((v, status));
        }
    }
    let mut write = StepWrite { processed, ..StepWrite::default() };
    let mut dispatched = HashSet::new();
    let execution_id = owned.lease.execution_id.to_string();
    for effect in &effects {
        match effect {
            Effect::Dispatch(task) => {
                if task.kind == TaskKind::Run {
                    dispatched.insert(task.node);
                }
                let message = Message::Task(TaskMessage {
                    v: WIRE_VERSION,
                    execution_id: execution_id.clone(),
                    node_id: dag.node_id(task.node).to_owned(),
                    attempt: task.attempt,
                    kind: task.kind,
                    agent_id: task.agent_id.clone(),
                    params: dag.node_spec(task.node).params.clone(),
                    input: task.input.clone(),
                    timeout_ms: task.timeout_ms,
                    clock: owned.clock.clone(),
                });
                let trace = TraceContext::for_attempt(&execution_id, dag.node_id(task.node), task.attempt, task.kind);
                write.outbox.push(OutboxMessage {
                    exchange: topology.tasks_exchange(),
                    routing_key: dag.queue(task.node).to_owned(),
                    body: message.to_bytes(),
                    headers: [("traceparent".to_owned(), trace.traceparent())].into(),
                });
            }
            Effect::CancelRunning { node, attempt } => {
                let message = Message::Cancel(CancelMessage {
                    v: WIRE_VERSION,
                    execution_id: execution_id.clone(),
                    node_id: dag.node_id(*node).to_owned(),
                    attempt: *attempt,
                });
                write.outbox.push(OutboxMessage {
                    exchange: topology.cancel_exchange(),
                    routing_key: String::new(),
                    body: message.to_bytes(),
                    headers: Default::default(),
                });
            }
            Effect::Finished(_) => write.finished = true,
        }
    }
    for v in changed {
        write.nodes.push(node_update(
            owned,
            &dag,
            v,
            dispatched.contains(&v),
            timing.get(&v),
            &mut write.checkpoints,
            &mut write.records,
        ));
    }
    let exec = &owned.exec;
    let count = |s: NodeStatus| (0..dag.len() as NodeIndex).filter(|&v| exec.node_state(v).status == s).count() as i32;
    write.completed_nodes = count(NodeStatus::Completed);
    write.failed_nodes = count(NodeStatus::Failed);
    write.skipped_nodes = count(NodeStatus::Skipped);
    write.status = text(&exec.status());
    write.halt = exec.halt().map(|h| text(&h));
    if !write.records.is_empty() {
        write.last_record_hash = Some(owned.last_record.to_string());
    }
    if write.finished {
        let in_order: Vec<ContentHash> =
            dag.order().iter().filter_map(|&v| owned.chain.get(dag.node_id(v)).cloned()).collect();
        write.provenance_chain_hash =
            Some(provenance::execution_chain_hash(dag.hash(), &owned.input_hash, &in_order).to_string());
        write.error = failure_summary(exec, &dag);
    }
    observed.finished = exec.status().is_terminal();
    (Some(write), observed)
}

/// The row update of one changed node; a node that just completed also gets its checkpoint and
/// provenance record.
fn node_update(
    owned: &mut Owned,
    dag: &Dag,
    v: NodeIndex,
    dispatched: bool,
    result: Option<&ResultMessage>,
    checkpoints: &mut Vec<(String, serde_json::Value, String, i32)>,
    records: &mut Vec<(i32, provenance::Record)>,
) -> NodeUpdate {
    let state = owned.exec.node_state(v).clone();
    let node_id = dag.node_id(v).to_owned();
    let mut update = NodeUpdate {
        node_id: node_id.clone(),
        status: text(&state.status),
        attempt: i32::try_from(state.attempt).unwrap_or(i32::MAX),
        attempt_base: i32::try_from(state.attempt_base).unwrap_or(i32::MAX),
        retry_at_ms: state.retry_at_ms.and_then(|t| i64::try_from(t).ok()),
        skip_reason: state.skip_reason.map(|s| text(&s)),
        error_type: state.error.as_ref().map(|e| e.error_type.clone()),
        error: state.error.as_ref().map(|e| e.message.clone()),
        compensation: text(&state.compensation),
        dispatched,
        trace_id: dispatched.then(|| {
            TraceContext::for_attempt(&owned.lease.execution_id.to_string(), &node_id, state.attempt, TaskKind::Run)
                .trace_id
        }),
        ..NodeUpdate::default()
    };
    if let Some(r) = result {
        update.started_at = Some(r.started_at.clone());
        update.completed_at = Some(r.completed_at.clone());
        update.duration_ms = i64::try_from(r.duration_ms).ok();
        update.worker_id = Some(r.worker_id.clone());
    }
    if let (NodeStatus::Completed, Some(outputs), Some(r)) = (state.status, state.outputs.clone(), result) {
        let input = owned.exec.node_input(v);
        let parents: Vec<ContentHash> =
            dag.node(v).deps.iter().filter_map(|&d| owned.chain.get(dag.node_id(d)).cloned()).collect();
        let timing = Timing {
            attempt_count: state.attempt,
            started_at: r.started_at.clone(),
            completed_at: r.completed_at.clone(),
            duration_ms: r.duration_ms,
            worker_id: r.worker_id.clone(),
        };
        let execution_id = owned.lease.execution_id.to_string();
        let agent_id = dag.node_spec(v).agent_id.clone();
        let prev = owned.last_record.clone();
        let record =
            provenance::make_record(&execution_id, &node_id, &agent_id, input, outputs.clone(), parents, timing, prev);
        update.input_hash = Some(record.input_hash.to_string());
        update.output_hash = Some(record.output_hash.to_string());
        checkpoints.push((node_id.clone(), outputs, record.output_hash.to_string(), update.attempt));
        owned.seq += 1;
        owned.chain.insert(node_id, record.chain_hash.clone());
        owned.last_record = record.record_hash.clone();
        records.push((owned.seq, record));
    }
    update
}

fn failure_summary(exec: &Execution, dag: &Dag) -> Option<String> {
    dag.order().iter().find_map(|&v| {
        let s = exec.node_state(v);
        (s.status == NodeStatus::Failed).then(|| {
            let e = s.error.as_ref();
            format!(
                "node {} failed: {}: {}",
                dag.node_id(v),
                e.map_or("unknown", |e| e.error_type.as_str()),
                e.map_or("", |e| e.message.as_str())
            )
        })
    })
}

/// The snake_case name of a status-like enum.
pub(crate) fn text<T: Serialize>(value: &T) -> String {
    serde_json::to_value(value).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;
    use shared::dag::{DagSpec, Limits, compile};
    use shared::state::Outcome;
    use uuid::Uuid;

    use super::*;

    const NOW: u64 = 1_767_225_600_000;

    fn owned() -> Owned {
        let spec = DagSpec::from_yaml(include_str!("../../examples/linear-3.yaml")).expect("parses");
        let dag = Arc::new(compile(spec, &Limits::default()).expect("valid"));
        let execution_id = Uuid::from_u128(7);
        let input = json!({"a": 1});
        Owned {
            lease: Lease { execution_id, epoch: 1 },
            dag_id: "dag-linear-3-node".into(),
            started: std::time::Instant::now(),
            exec: Execution::new(dag, &execution_id.to_string(), input.clone()),
            clock: "2026-01-01T00:00:00Z".into(),
            input_hash: provenance::hash_value(&input),
            chain: HashMap::new(),
            last_record: provenance::genesis_record_hash(&execution_id.to_string()),
            seq: 0,
        }
    }

    fn topology() -> Topology {
        Topology::new("gl.unit", 5)
    }

    fn succeeded(node: &str, attempt: u32, outputs: serde_json::Value) -> ResultMessage {
        ResultMessage {
            v: WIRE_VERSION,
            execution_id: Uuid::from_u128(7).to_string(),
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
        assert_eq!(write.status, "running");
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
        let (write, observed) =
            advance(&mut o, vec![succeeded("intake", 1, json!({"x": 2}))], false, &topology(), NOW + 5);
        let write = write.expect("a result is a change");
        assert_eq!(write.processed, vec![("intake".to_owned(), 1, "run".to_owned())]);
        assert_eq!(write.completed_nodes, 1);
        assert_eq!(write.checkpoints.len(), 1);
        assert_eq!(write.checkpoints[0].0, "intake");
        assert_eq!(write.records.len(), 1);
        assert_eq!(write.records[0].0, 1, "the first record of the chain");
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
            (write.records[0].1.record_hash.clone(), write.checkpoints[0].2.clone(), write.outbox[0].body.clone())
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
        assert_eq!(write.status, "cancelled");
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
        assert_eq!(write.status, "completed");
        assert_eq!(write.completed_nodes, 3);
        assert!(write.provenance_chain_hash.is_some() && write.error.is_none());
    }

    mod properties {
        use std::collections::HashSet;

        use proptest::prelude::*;
        use shared::state::NodeError;

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

        fn diamond() -> Owned {
            let spec = DagSpec::from_yaml(include_str!("../../examples/diamond-4.yaml")).expect("parses");
            let mut o = owned();
            let dag = Arc::new(compile(spec, &Limits::default()).expect("valid"));
            o.exec = Execution::new(dag, &o.lease.execution_id.to_string(), json!({"a": 1}));
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
                let mut step = |o: &mut Owned, results: Vec<ResultMessage>, cancel: bool, now: u64,
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
}
