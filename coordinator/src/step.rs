//! One step of an execution, decided without I/O: given the state machine this replica holds,
//! the results read from the inbox, whether a cancel was requested, and the time, [`advance`]
//! returns everything the step writes (node rows, checkpoints, provenance records, outbox
//! messages, the execution's counters) as one [`StepWrite`], for the store to commit fenced by
//! the lease. The scheduler around it reads the clock and the database; this module does neither,
//! so a step is tested here from its inputs alone.

use std::collections::{HashMap, HashSet};

use engine::canonical::ContentHash;
use engine::dag::{Dag, NodeIndex};
use engine::messages::{CancelMessage, Message, ResultMessage, TaskMessage, TraceContext, WIRE_VERSION};
use engine::provenance::{self, Timing};
use engine::state::{Effect, Execution, ExecutionStatus, Halt, NodeStatus, TaskKind};
use engine::topology::Topology;
use serde::Serialize;

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
                    matches!(&r.outcome, engine::state::Outcome::Failed { error, .. } if error.error_type == "timeout");
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
mod tests;
