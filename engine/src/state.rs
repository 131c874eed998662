//! The execution state machine: outcomes go in, state changes and effects come out.
//!
//! [`Execution`] holds one execution's node states and decides, purely, what happens next: which
//! nodes to dispatch (in canonical order, within `max_parallel_nodes`, honouring level barriers),
//! when a failed attempt is retried, how failure, skip, conditions, compensation and cancellation
//! propagate, and when the execution is finished. The coordinator persists what changed
//! ([`Execution::take_changed`]) and carries out the [`Effect`]s; the clock is an argument.
//!
//! Failure semantics:
//! - a node that fails with `on_failure: stop` under DAG `fail_fast` halts the execution: nothing
//!   new is dispatched, running nodes finish and are recorded, the failed node's dependents become
//!   `upstream_failed` and every other node that had not started becomes `cancelled`;
//! - under `continue`, only the dependents become `upstream_failed`; independent branches go on;
//! - under `compensate` (or a node's `on_failure: compensate`, or `on_timeout: compensate`), the
//!   execution halts as under `fail_fast`, then the `compensation_handler` of every completed node
//!   runs, one at a time, in reverse canonical order;
//! - `on_failure: skip` (and `on_timeout: skip`) ends the node `skipped` with its error kept; its
//!   dependents run and see `null` for it; the execution does not fail because of it;
//! - a false `condition` skips the node; a node all of whose dependencies were skipped by a false
//!   condition (or pruned that way) is skipped too, so a false condition prunes its branch;
//! - an unevaluable condition fails the node with `condition_error` (never retried);
//! - cancelling dispatches nothing new, asks running nodes to stop, and ends the rest `cancelled`.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap};
use std::sync::Arc;

use serde_json::Value;

use crate::dag::{Dag, NodeIndex, Scheduling};

mod dispatch;
mod settle;

use dispatch::timeout_ms;
mod types;

pub use types::{
    Compensation, Effect, ExecutionStatus, Halt, NodeError, NodeState, NodeStatus, Outcome, SkipReason, Snapshot,
    Stale, Task, TaskKind,
};

/// One execution of a DAG.
#[derive(Debug, Clone)]
pub struct Execution {
    dag: Arc<Dag>,
    execution_id: String,
    input: Value,
    status: ExecutionStatus,
    halt: Option<Halt>,
    nodes: Vec<NodeState>,
    // Derived from the above; rebuilt by `restore`.
    position: Vec<u32>,
    waiting_on: Vec<u32>,
    /// Ready nodes by (level under level barriers else 0, canonical position).
    ready: BinaryHeap<Reverse<(u32, u32)>>,
    retries: BinaryHeap<Reverse<(u64, u32)>>,
    /// Running attempts by (deadline, canonical position); an entry whose node has moved on is
    /// skipped when it comes up.
    deadlines: BinaryHeap<Reverse<(u64, u32)>>,
    /// How long past its timeout an attempt may go without a result before the coordinator ends it
    /// (`GL_ORCHESTRATOR_ATTEMPT_GRACE_SECONDS`): it also covers the time the task waits in its queue.
    attempt_grace_ms: u64,
    /// A node whose input (as compact JSON) is larger fails as `input_too_large`, undispatched.
    max_input_bytes: usize,
    running: u32,
    /// Operator cap on nodes in flight (`GL_ORCHESTRATOR_MAX_PARALLEL_NODES`), over the DAG's own.
    parallel_cap: u32,
    /// When cancel signals go out again (in memory only: after a restore they go out at once).
    cancel_again_ms: Option<u64>,
    unfinished_per_level: Vec<u32>,
    changed: BTreeSet<NodeIndex>,
}

impl Execution {
    /// A fresh execution: every node pending, status `pending`.
    pub fn new(dag: Arc<Dag>, execution_id: &str, input: Value) -> Self {
        let snapshot =
            Snapshot { status: ExecutionStatus::Pending, halt: None, nodes: vec![NodeState::default(); dag.len()] };
        Self::restore(dag, execution_id, input, snapshot)
    }

    /// Rebuilds an execution from what was persisted.
    pub fn restore(dag: Arc<Dag>, execution_id: &str, input: Value, snapshot: Snapshot) -> Self {
        let mut position = vec![0u32; dag.len()];
        for (p, &v) in (0..).zip(dag.order()) {
            position[v as usize] = p;
        }
        let levels = dag.levels().len();
        let len = dag.len();
        let mut exec = Self {
            dag,
            execution_id: execution_id.to_owned(),
            input,
            status: snapshot.status,
            halt: snapshot.halt,
            nodes: snapshot.nodes,
            position,
            waiting_on: vec![0; len],
            ready: BinaryHeap::new(),
            retries: BinaryHeap::new(),
            deadlines: BinaryHeap::new(),
            attempt_grace_ms: DEFAULT_ATTEMPT_GRACE_MS,
            max_input_bytes: DEFAULT_MAX_INPUT_BYTES,
            running: 0,
            parallel_cap: u32::MAX,
            cancel_again_ms: None,
            unfinished_per_level: vec![0; levels],
            changed: BTreeSet::new(),
        };
        exec.nodes.resize_with(len, NodeState::default);
        exec.rebuild();
        exec
    }

    fn rebuild(&mut self) {
        let mut settle_now = Vec::new();
        for v in 0..self.dag.len() as NodeIndex {
            let node = self.dag.node(v);
            let state = &self.nodes[v as usize];
            if !state.status.is_terminal() {
                self.unfinished_per_level[node.level as usize] += 1;
            }
            if state.compensation == Compensation::Running {
                self.running += 1;
            }
            match state.status {
                NodeStatus::Running => {
                    self.running += 1;
                    if let Some(at) = state.deadline_ms {
                        self.deadlines.push(Reverse((at, self.position[v as usize])));
                    }
                }
                NodeStatus::Retrying => {
                    self.retries.push(Reverse((state.retry_at_ms.unwrap_or(0), self.position[v as usize])))
                }
                NodeStatus::Pending => {
                    let waiting = node.deps.iter().filter(|&&d| !self.nodes[d as usize].status.is_terminal()).count();
                    self.waiting_on[v as usize] = waiting as u32;
                    if waiting == 0 {
                        settle_now.push(v);
                    }
                }
                _ => {}
            }
        }
        if self.status == ExecutionStatus::Running {
            for v in settle_now {
                self.settle(v);
            }
        }
    }

    /// Caps nodes in flight below the DAG's `max_parallel_nodes`.
    pub fn set_attempt_grace_ms(&mut self, grace_ms: u64) {
        self.attempt_grace_ms = grace_ms;
    }

    pub fn set_max_input_bytes(&mut self, bytes: usize) {
        self.max_input_bytes = bytes;
    }

    pub fn set_parallel_cap(&mut self, cap: u32) {
        self.parallel_cap = cap.max(1);
    }

    pub fn dag(&self) -> &Arc<Dag> {
        &self.dag
    }

    pub fn input(&self) -> &Value {
        &self.input
    }

    pub fn status(&self) -> ExecutionStatus {
        self.status
    }

    pub fn halt(&self) -> Option<Halt> {
        self.halt
    }

    pub fn node_state(&self, node: NodeIndex) -> &NodeState {
        &self.nodes[node as usize]
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot { status: self.status, halt: self.halt, nodes: self.nodes.clone() }
    }

    /// Nodes whose state changed since the last call.
    pub fn take_changed(&mut self) -> BTreeSet<NodeIndex> {
        std::mem::take(&mut self.changed)
    }

    /// When the next retry is due, if one is waiting.
    pub fn next_wake_ms(&self) -> Option<u64> {
        let retry = self.retries.peek().map(|Reverse((at, _))| *at);
        let deadline = self.deadlines.peek().map(|Reverse((at, _))| *at);
        let cancel = self.cancel_again_ms.filter(|_| self.running > 0);
        retry.into_iter().chain(deadline).chain(cancel).min()
    }

    /// Cancel signals are best effort (a worker may not have received the task yet, or may have
    /// been disconnected), so they are sent again every 2 s until the attempts have ended.
    fn cancel_signals(&mut self, now_ms: u64) -> Vec<Effect> {
        self.cancel_again_ms = Some(now_ms.saturating_add(CANCEL_RESEND_MS));
        (0..self.dag.len() as NodeIndex)
            .filter(|&v| self.nodes[v as usize].status == NodeStatus::Running)
            .map(|v| Effect::CancelRunning { node: v, attempt: self.nodes[v as usize].attempt })
            .collect()
    }

    /// Starts a pending or queued execution.
    pub fn start(&mut self, now_ms: u64) -> Vec<Effect> {
        if matches!(self.status, ExecutionStatus::Pending | ExecutionStatus::Queued) {
            self.status = ExecutionStatus::Running;
            let roots: Vec<NodeIndex> = (0..self.dag.len() as NodeIndex)
                .filter(|&v| self.nodes[v as usize].status == NodeStatus::Pending && self.waiting_on[v as usize] == 0)
                .collect();
            for v in roots {
                self.settle(v);
            }
        }
        self.advance(now_ms)
    }

    /// Dispatches retries that are due; call it at [`Execution::next_wake_ms`].
    pub fn tick(&mut self, now_ms: u64) -> Vec<Effect> {
        self.advance(now_ms)
    }

    /// Applies how attempt `attempt` of `node` ended.
    pub fn record(
        &mut self,
        node: NodeIndex,
        attempt: u32,
        outcome: Outcome,
        now_ms: u64,
    ) -> Result<Vec<Effect>, Stale> {
        let state = self.nodes.get(node as usize).ok_or(Stale { node, attempt })?;
        if state.status != NodeStatus::Running || state.attempt != attempt || self.status != ExecutionStatus::Running {
            return Err(Stale { node, attempt });
        }
        self.running -= 1;
        match outcome {
            Outcome::Succeeded { outputs } => {
                let state = &mut self.nodes[node as usize];
                state.outputs = Some(outputs);
                state.error = None;
                self.finish_node(node, NodeStatus::Completed);
            }
            Outcome::Failed { error, retryable } => self.fail_attempt(node, error, retryable, now_ms),
        }
        Ok(self.advance(now_ms))
    }

    /// Applies how the compensation of `node` ended. A compensation carries the attempt number of
    /// the run it undoes, so a compensation after a resume never collides with an earlier one.
    pub fn record_compensation(
        &mut self,
        node: NodeIndex,
        attempt: u32,
        outcome: Outcome,
        now_ms: u64,
    ) -> Result<Vec<Effect>, Stale> {
        let state = self.nodes.get_mut(node as usize).ok_or(Stale { node, attempt })?;
        if state.compensation != Compensation::Running || state.attempt != attempt {
            return Err(Stale { node, attempt });
        }
        state.compensation = match outcome {
            Outcome::Succeeded { .. } => Compensation::Completed,
            Outcome::Failed { .. } => Compensation::Failed,
        };
        self.changed.insert(node);
        self.running -= 1;
        Ok(self.advance(now_ms))
    }

    /// Cancels the execution: nothing new starts, running attempts are asked to stop.
    pub fn cancel(&mut self, now_ms: u64) -> Vec<Effect> {
        if self.status.is_terminal() {
            return Vec::new();
        }
        // A pending or queued execution is cancelled through the same path: it "runs" with
        // nothing to dispatch and finishes at once.
        self.status = ExecutionStatus::Running;
        let mut effects = self.cancel_signals(now_ms);
        self.halt_with(Halt::Cancel, None);
        effects.extend(self.advance(now_ms));
        effects
    }

    fn advance(&mut self, now_ms: u64) -> Vec<Effect> {
        let mut effects = Vec::new();
        if self.status != ExecutionStatus::Running {
            return effects;
        }
        self.end_lapsed_attempts(now_ms, &mut effects);
        while let Some(&Reverse((at, p))) = self.retries.peek() {
            if at > now_ms {
                break;
            }
            self.retries.pop();
            let v = self.dag.order()[p as usize];
            self.push_ready(v);
        }
        if self.halt == Some(Halt::Cancel) && self.running > 0 && self.cancel_again_ms.is_none_or(|at| at <= now_ms) {
            effects.extend(self.cancel_signals(now_ms));
        }
        let limit = self.dag.max_parallel_nodes().min(self.parallel_cap);
        while self.halt.is_none() && self.running < limit {
            let Some(&Reverse((_, p))) = self.ready.peek() else {
                break;
            };
            let v = self.dag.order()[p as usize];
            if self.dag.scheduling() == Scheduling::LevelBarrier && !self.level_open(v) {
                break;
            }
            self.ready.pop();
            self.start_node(v, now_ms, &mut effects);
        }
        if self.running == 0 && self.ready.is_empty() && self.retries.is_empty() {
            self.finish_or_compensate(&mut effects);
        }
        effects
    }

    /// Queues a ready node. Under level barriers the lowest level comes first, so a node of an
    /// open level is never stuck behind one of a level still closed.
    fn push_ready(&mut self, node: NodeIndex) {
        let level = match self.dag.scheduling() {
            Scheduling::LevelBarrier => self.dag.node(node).level,
            Scheduling::Dependency => 0,
        };
        self.ready.push(Reverse((level, self.position[node as usize])));
    }

    /// Under level barriers a node may start only once every lower level has finished.
    fn level_open(&self, node: NodeIndex) -> bool {
        let level = self.dag.node(node).level as usize;
        self.unfinished_per_level[..level].iter().all(|&n| n == 0)
    }

    fn finish_or_compensate(&mut self, effects: &mut Vec<Effect>) {
        if self.halt == Some(Halt::Compensate)
            && let Some(task) = self.next_compensation()
        {
            self.running += 1;
            effects.push(Effect::Dispatch(task));
            return;
        }
        let any_failed = self.nodes.iter().any(|s| s.status == NodeStatus::Failed);
        self.status = match self.halt {
            Some(Halt::Cancel) => ExecutionStatus::Cancelled,
            _ if any_failed => ExecutionStatus::Failed,
            _ => ExecutionStatus::Completed,
        };
        effects.push(Effect::Finished(self.status));
    }

    /// The next completed node, in reverse canonical order, whose handler has not run.
    fn next_compensation(&mut self) -> Option<Task> {
        let failed = self
            .dag
            .order()
            .iter()
            .find(|&&v| self.nodes[v as usize].status == NodeStatus::Failed)
            .map(|&v| self.dag.node_id(v).to_owned());
        let node = self.dag.order().iter().rev().copied().find(|&v| {
            let s = &self.nodes[v as usize];
            s.status == NodeStatus::Completed
                && s.compensation == Compensation::None
                && self.dag.node_spec(v).compensation_handler.is_some()
        })?;
        let handler = self.dag.node_spec(node).compensation_handler.clone()?;
        self.nodes[node as usize].compensation = Compensation::Running;
        self.changed.insert(node);
        let input = serde_json::json!({
            "node_id": self.dag.node_id(node),
            "outputs": self.nodes[node as usize].outputs,
            "failed_node": failed,
        });
        Some(Task {
            node,
            attempt: self.nodes[node as usize].attempt,
            kind: TaskKind::Compensate,
            agent_id: handler,
            input,
            timeout_ms: timeout_ms(self.dag.node(node).timeout.timeout_seconds),
        })
    }
}

/// What a resume keeps and what it runs again.
#[derive(Debug, Clone, PartialEq)]
pub struct Resumed {
    pub snapshot: Snapshot,
    /// Completed nodes whose checkpoint is trusted: not run again.
    pub skipped: Vec<NodeIndex>,
    /// Everything else, in canonical order.
    pub remaining: Vec<NodeIndex>,
}

/// Prepares a failed, cancelled or interrupted execution to run again: completed nodes whose
/// checkpoint `trusted` says is intact keep their outputs; every other node goes back to
/// `pending` with a fresh retry budget (attempt numbers carry on, so none repeats).
pub fn resume(dag: &Dag, snapshot: &Snapshot, trusted: impl Fn(NodeIndex) -> bool) -> Resumed {
    let mut nodes = snapshot.nodes.clone();
    let (mut skipped, mut remaining) = (Vec::new(), Vec::new());
    for &v in dag.order() {
        let state = &mut nodes[v as usize];
        // A node whose effects a compensation handler undid must run again.
        let undone = state.compensation != Compensation::None;
        if state.status == NodeStatus::Completed && state.outputs.is_some() && !undone && trusted(v) {
            skipped.push(v);
            continue;
        }
        *state = NodeState { attempt: state.attempt, attempt_base: state.attempt, ..NodeState::default() };
        remaining.push(v);
    }
    Resumed { snapshot: Snapshot { status: ExecutionStatus::Pending, halt: None, nodes }, skipped, remaining }
}

/// Interval between repeated cancel signals.
const CANCEL_RESEND_MS: u64 = 2_000;

/// Default of `GL_ORCHESTRATOR_ATTEMPT_GRACE_SECONDS`, in ms.
pub const DEFAULT_ATTEMPT_GRACE_MS: u64 = 600_000;

/// Default of `GL_ORCHESTRATOR_MAX_TASK_INPUT_BYTES`: sixteen dependencies at the output limit.
pub const DEFAULT_MAX_INPUT_BYTES: usize = 16 * 1024 * 1024;

#[cfg(test)]
mod deadline_tests;
#[cfg(test)]
mod model_tests;
#[cfg(test)]
mod tests;
