//! One step of an execution, decided without I/O: given the state machine a replica holds, the
//! results read from the inbox, whether a cancel was requested, and the time, [`advance`]
//! returns everything the step writes (node rows, checkpoints, provenance records, outbox
//! messages, the execution's counters) as one [`StepWrite`], for a store to commit fenced by the
//! lease. The coordinator's scheduler around it reads the clock and the database; this module
//! does neither, so a step is tested from its inputs alone.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::Value;

use crate::canonical::ContentHash;
use crate::dag::{Dag, NodeIndex};
use crate::messages::{CancelMessage, Message, ResultMessage, TaskMessage, TraceContext, WIRE_VERSION};
use crate::provenance::{self, Record, Timing};
use crate::state::{Compensation, Effect, Execution, ExecutionStatus, Halt, NodeStatus, Outcome, SkipReason, TaskKind};
use crate::topology::Topology;

/// The part of an execution a replica holds in memory while it owns the lease: the state
/// machine and where the provenance chain stands. Rebuilt from the store after any failed write.
pub struct Held {
    pub execution_id: String,
    pub exec: Execution,
    /// The execution's logical clock (RFC 3339), handed to agents instead of the wall clock.
    pub clock: String,
    pub input_hash: ContentHash,
    /// Chain hash of each completed node, by node id.
    pub chain: HashMap<String, ContentHash>,
    pub last_record: ContentHash,
    /// Sequence number of the last provenance record.
    pub seq: i32,
}

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Held")
            .field("execution_id", &self.execution_id)
            .field("status", &self.exec.status())
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

/// Everything one step of an execution writes, atomically.
#[derive(Debug, Default)]
pub struct StepWrite {
    pub status: ExecutionStatus,
    pub halt: Option<Halt>,
    pub finished: bool,
    pub completed_nodes: i32,
    pub failed_nodes: i32,
    pub skipped_nodes: i32,
    pub provenance_chain_hash: Option<String>,
    pub last_record_hash: Option<String>,
    pub error: Option<String>,
    pub nodes: Vec<NodeUpdate>,
    pub checkpoints: Vec<Checkpoint>,
    pub records: Vec<SequencedRecord>,
    pub outbox: Vec<OutboxMessage>,
    /// Inbox entries this step consumed.
    pub processed: Vec<Processed>,
}

/// One node's new state, written by a step.
#[derive(Debug, Clone, Default)]
pub struct NodeUpdate {
    pub node_id: String,
    pub status: NodeStatus,
    pub attempt: i32,
    pub attempt_base: i32,
    pub retry_at_ms: Option<i64>,
    /// While running: when the coordinator ends the attempt without a result.
    pub deadline_ms: Option<i64>,
    pub skip_reason: Option<SkipReason>,
    pub error_type: Option<String>,
    pub error: Option<String>,
    pub compensation: Compensation,
    /// Set `started_at` to the database's now (the node was just dispatched).
    pub dispatched: bool,
    /// Timing reported by the worker, RFC 3339.
    pub started_at: Option<String>,
    pub completed_at: Option<String>,
    pub duration_ms: Option<i64>,
    pub worker_id: Option<String>,
    pub input_hash: Option<String>,
    pub output_hash: Option<String>,
    /// W3C trace id of the execution (set when the node is dispatched).
    pub trace_id: Option<String>,
}

/// The outputs of a node that just completed, to resume from.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    pub node_id: String,
    pub outputs: Value,
    pub output_hash: String,
    pub attempt_count: i32,
}

/// A provenance record and its place in the execution's chain (1 is the first).
#[derive(Debug, Clone)]
pub struct SequencedRecord {
    pub seq: i32,
    pub record: Record,
}

/// A message to publish once the step is committed (the outbox row).
#[derive(Debug, Clone)]
pub struct OutboxMessage {
    pub exchange: String,
    pub routing_key: String,
    pub body: Vec<u8>,
    /// AMQP headers (W3C `traceparent`).
    pub headers: BTreeMap<String, String>,
}

/// An inbox entry, named by what identifies a result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Processed {
    pub node_id: String,
    pub attempt: i32,
    pub kind: TaskKind,
}

/// What a step did, for the metrics; recorded only once the step is committed.
#[derive(Debug, Default)]
pub struct Observed {
    pub started: bool,
    pub finished: bool,
    pub attempts: Vec<Attempted>,
    pub retries: Vec<NodeIndex>,
    /// Nodes that reached a final status through a result.
    pub settled: Vec<(NodeIndex, NodeStatus)>,
}

/// An attempt whose result this step applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempted {
    pub node: NodeIndex,
    pub duration_ms: u64,
    pub timed_out: bool,
}

/// Applies inbox results, a cancel request and due retries at `now` (ms since the epoch); returns
/// what to write (none when nothing changed) and what happened, for the metrics.
pub fn advance(
    held: &mut Held,
    results: Vec<ResultMessage>,
    cancel: bool,
    topology: &Topology,
    now: u64,
) -> (Option<StepWrite>, Observed) {
    let waiting = matches!(held.exec.status(), ExecutionStatus::Pending | ExecutionStatus::Queued);
    // A cancel that arrives before the start wins: nothing is dispatched at all.
    let started = waiting && !cancel;
    let mut observed = Observed { started, ..Observed::default() };
    let mut effects = if started { held.exec.start(now) } else { Vec::new() };
    let processed: Vec<Processed> = results.iter().map(processed).collect();
    let timing = apply_results(held, results, now, &mut effects, &mut observed);
    if cancel && held.exec.halt() != Some(Halt::Cancel) && !held.exec.status().is_terminal() {
        effects.extend(held.exec.cancel(now));
    }
    effects.extend(held.exec.tick(now));
    let changed = held.exec.take_changed();
    if !waiting && changed.is_empty() && effects.is_empty() && processed.is_empty() {
        return (None, observed);
    }
    for &v in &changed {
        let status = held.exec.node_state(v).status;
        if status == NodeStatus::Retrying {
            observed.retries.push(v);
        } else if status.is_terminal() && timing.contains_key(&v) {
            observed.settled.push((v, status));
        }
    }
    let mut write = StepWrite { processed, ..StepWrite::default() };
    let dispatched = outbox(held, &effects, topology, &mut write);
    for v in changed {
        let update = node_update(held, v, dispatched.contains(&v), timing.get(&v), &mut write);
        write.nodes.push(update);
    }
    summarise(held, &mut write);
    observed.finished = held.exec.status().is_terminal();
    (Some(write), observed)
}

fn processed(r: &ResultMessage) -> Processed {
    Processed { node_id: r.node_id.clone(), attempt: i32::try_from(r.attempt).unwrap_or(i32::MAX), kind: r.kind }
}

/// Feeds each result to the state machine; returns the applied results of runs by node, whose
/// timing the node rows and provenance records carry.
fn apply_results(
    held: &mut Held,
    results: Vec<ResultMessage>,
    now: u64,
    effects: &mut Vec<Effect>,
    observed: &mut Observed,
) -> HashMap<NodeIndex, ResultMessage> {
    let mut timing = HashMap::new();
    for r in results {
        let Some(v) = held.exec.dag().index_of(&r.node_id) else {
            continue;
        };
        let applied = match r.kind {
            TaskKind::Run => held.exec.record(v, r.attempt, r.outcome.clone(), now),
            TaskKind::Compensate => held.exec.record_compensation(v, r.attempt, r.outcome.clone(), now),
        };
        let Ok(fx) = applied else { continue };
        effects.extend(fx);
        if r.kind == TaskKind::Run {
            let timed_out = matches!(&r.outcome, Outcome::Failed { error, .. } if error.error_type == "timeout");
            observed.attempts.push(Attempted { node: v, duration_ms: r.duration_ms, timed_out });
            timing.insert(v, r);
        }
    }
    timing
}

/// Turns the effects into outbox messages; returns the nodes whose run was dispatched.
fn outbox(held: &Held, effects: &[Effect], topology: &Topology, write: &mut StepWrite) -> HashSet<NodeIndex> {
    let dag = held.exec.dag();
    let execution_id = held.execution_id.as_str();
    let mut dispatched = HashSet::new();
    for effect in effects {
        match effect {
            Effect::Dispatch(task) => {
                if task.kind == TaskKind::Run {
                    dispatched.insert(task.node);
                }
                let message = Message::Task(TaskMessage {
                    v: WIRE_VERSION,
                    execution_id: execution_id.to_owned(),
                    node_id: dag.node_id(task.node).to_owned(),
                    attempt: task.attempt,
                    kind: task.kind,
                    agent_id: task.agent_id.clone(),
                    params: dag.node_spec(task.node).params.clone(),
                    input: task.input.clone(),
                    timeout_ms: task.timeout_ms,
                    clock: held.clock.clone(),
                });
                let trace = TraceContext::for_attempt(execution_id, dag.node_id(task.node), task.attempt, task.kind);
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
                    execution_id: execution_id.to_owned(),
                    node_id: dag.node_id(*node).to_owned(),
                    attempt: *attempt,
                });
                write.outbox.push(OutboxMessage {
                    exchange: topology.cancel_exchange(),
                    routing_key: String::new(),
                    body: message.to_bytes(),
                    headers: BTreeMap::new(),
                });
            }
            Effect::Finished(_) => write.finished = true,
        }
    }
    dispatched
}

/// The execution's counters and status; at the end, its chain hash and failure summary.
fn summarise(held: &Held, write: &mut StepWrite) {
    let (exec, dag) = (&held.exec, held.exec.dag());
    let count = |s: NodeStatus| (0..dag.len() as NodeIndex).filter(|&v| exec.node_state(v).status == s).count() as i32;
    write.completed_nodes = count(NodeStatus::Completed);
    write.failed_nodes = count(NodeStatus::Failed);
    write.skipped_nodes = count(NodeStatus::Skipped);
    write.status = exec.status();
    write.halt = exec.halt();
    if !write.records.is_empty() {
        write.last_record_hash = Some(held.last_record.to_string());
    }
    if write.finished {
        let in_order: Vec<ContentHash> =
            dag.order().iter().filter_map(|&v| held.chain.get(dag.node_id(v)).cloned()).collect();
        write.provenance_chain_hash =
            Some(provenance::execution_chain_hash(dag.hash(), &held.input_hash, &in_order).to_string());
        write.error = failure_summary(exec, dag);
    }
}

/// The row update of one changed node; a node that just completed also gets its checkpoint and
/// provenance record, and moves the chain on.
fn node_update(
    held: &mut Held,
    v: NodeIndex,
    dispatched: bool,
    result: Option<&ResultMessage>,
    write: &mut StepWrite,
) -> NodeUpdate {
    let state = held.exec.node_state(v).clone();
    let node_id = held.exec.dag().node_id(v).to_owned();
    let mut update = NodeUpdate {
        node_id: node_id.clone(),
        status: state.status,
        attempt: i32::try_from(state.attempt).unwrap_or(i32::MAX),
        attempt_base: i32::try_from(state.attempt_base).unwrap_or(i32::MAX),
        retry_at_ms: state.retry_at_ms.and_then(|t| i64::try_from(t).ok()),
        deadline_ms: state
            .deadline_ms
            .filter(|_| state.status == NodeStatus::Running)
            .and_then(|t| i64::try_from(t).ok()),
        skip_reason: state.skip_reason,
        error_type: state.error.as_ref().map(|e| e.error_type.clone()),
        error: state.error.as_ref().map(|e| e.message.clone()),
        compensation: state.compensation,
        dispatched,
        trace_id: dispatched
            .then(|| TraceContext::for_attempt(&held.execution_id, &node_id, state.attempt, TaskKind::Run).trace_id),
        ..NodeUpdate::default()
    };
    let Some(r) = result else { return update };
    update.started_at = Some(r.started_at.clone());
    update.completed_at = Some(r.completed_at.clone());
    update.duration_ms = i64::try_from(r.duration_ms).ok();
    update.worker_id = Some(r.worker_id.clone());
    if let (NodeStatus::Completed, Some(outputs)) = (state.status, state.outputs) {
        let record = chain_record(held, v, outputs.clone(), state.attempt, r);
        update.input_hash = Some(record.input_hash.to_string());
        update.output_hash = Some(record.output_hash.to_string());
        let output_hash = record.output_hash.to_string();
        write.checkpoints.push(Checkpoint { node_id, outputs, output_hash, attempt_count: update.attempt });
        write.records.push(SequencedRecord { seq: held.seq, record });
    }
    update
}

/// The provenance record of a node that completed, linked to its parents and to the previous
/// record; the chain held moves on to it.
fn chain_record(held: &mut Held, v: NodeIndex, outputs: Value, attempts: u32, r: &ResultMessage) -> Record {
    let dag = held.exec.dag();
    let node_id = dag.node_id(v).to_owned();
    let parents: Vec<ContentHash> =
        dag.node(v).deps.iter().filter_map(|&d| held.chain.get(dag.node_id(d)).cloned()).collect();
    let timing = Timing {
        attempt_count: attempts,
        started_at: r.started_at.clone(),
        completed_at: r.completed_at.clone(),
        duration_ms: r.duration_ms,
        worker_id: r.worker_id.clone(),
    };
    let agent_id = dag.node_spec(v).agent_id.clone();
    let input = held.exec.node_input(v);
    let prev = held.last_record.clone();
    let record =
        provenance::make_record(&held.execution_id, &node_id, &agent_id, input, outputs, parents, timing, prev);
    held.seq += 1;
    held.chain.insert(node_id, record.chain_hash.clone());
    held.last_record = record.record_hash.clone();
    record
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

#[cfg(test)]
mod tests;
