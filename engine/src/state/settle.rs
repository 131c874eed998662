//! How a node's attempt ends: a failed attempt retried or given up (by its failure policy), the
//! execution halted, a node finished and its dependants settled (skipped when they can no longer
//! run).

use crate::dag::{DagFailurePolicy, NodeFailurePolicy, NodeIndex, TimeoutAction};
use crate::retry;
use std::cmp::Reverse;
use std::sync::Arc;

use super::{Effect, Execution, Halt, NodeError, NodeState, NodeStatus, SkipReason};

impl Execution {
    /// Ends every running attempt past its deadline as if its worker had reported `worker_lost`
    /// (retryable, so the node's retry policy decides), and asks whichever worker may still hold
    /// it to stop. A result of that attempt arriving later is stale and changes nothing.
    pub(super) fn end_lapsed_attempts(&mut self, now_ms: u64, effects: &mut Vec<Effect>) {
        while let Some(&Reverse((at, p))) = self.deadlines.peek() {
            if at > now_ms {
                break;
            }
            self.deadlines.pop();
            let v = self.dag.order()[p as usize];
            let state = &self.nodes[v as usize];
            if state.status != NodeStatus::Running || state.deadline_ms != Some(at) {
                continue;
            }
            effects.push(Effect::CancelRunning { node: v, attempt: state.attempt });
            self.running -= 1;
            let message = format!(
                "no result within the attempt's timeout plus {} s of grace (GL_ORCHESTRATOR_ATTEMPT_GRACE_SECONDS); \
                 the coordinator ended the attempt",
                self.attempt_grace_ms / 1000
            );
            self.fail_attempt(v, NodeError::new("worker_lost", message), true, now_ms);
        }
    }

    pub(super) fn fail_attempt(&mut self, node: NodeIndex, error: NodeError, retryable: bool, now_ms: u64) {
        let compiled = self.dag.node(node);
        let state = &self.nodes[node as usize];
        // Retries count from the latest resume.
        let attempt = state.attempt.saturating_sub(state.attempt_base);
        if self.halt.is_none() && retry::should_retry(&compiled.retry, attempt, &error.error_type, retryable) {
            let delay = retry::retry_delay(&compiled.retry, attempt, &self.execution_id, self.dag.node_id(node));
            let at = now_ms.saturating_add(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX));
            let state = &mut self.nodes[node as usize];
            state.status = NodeStatus::Retrying;
            state.retry_at_ms = Some(at);
            state.error = Some(error);
            self.changed.insert(node);
            self.retries.push(Reverse((at, self.position[node as usize])));
            return;
        }
        let timed_out = error.error_type == "timeout";
        self.nodes[node as usize].error = Some(error);
        if self.halt == Some(Halt::Cancel) {
            return self.finish_node(node, NodeStatus::Cancelled);
        }
        let on_timeout = if timed_out { compiled.timeout.on_timeout } else { TimeoutAction::Fail };
        let policy = self.dag.node_spec(node).on_failure;
        if on_timeout == TimeoutAction::Skip || (on_timeout == TimeoutAction::Fail && policy == NodeFailurePolicy::Skip)
        {
            self.nodes[node as usize].skip_reason = Some(SkipReason::Policy);
            return self.finish_node(node, NodeStatus::Skipped);
        }
        self.finish_node(node, NodeStatus::Failed);
        let compensate = on_timeout == TimeoutAction::Compensate
            || policy == NodeFailurePolicy::Compensate
            || self.dag.on_failure() == DagFailurePolicy::Compensate;
        if compensate {
            self.halt_with(Halt::Compensate, Some(node));
        } else if self.dag.on_failure() == DagFailurePolicy::FailFast {
            self.halt_with(Halt::FailFast, Some(node));
        }
    }

    /// Stops dispatching. Dependents of `failed` become `upstream_failed` (through `settle`);
    /// every other node that has not started becomes `cancelled`.
    pub(super) fn halt_with(&mut self, halt: Halt, failed: Option<NodeIndex>) {
        if self.halt.is_none() || halt == Halt::Cancel {
            self.halt = Some(halt);
        }
        self.ready.clear();
        self.retries.clear();
        let dag = Arc::clone(&self.dag);
        let mut seen = vec![false; dag.len()];
        let mut work: Vec<NodeIndex> = failed.into_iter().collect();
        while let Some(v) = work.pop() {
            for &c in &dag.node(v).children {
                if !std::mem::replace(&mut seen[c as usize], true) {
                    if self.nodes[c as usize].status == NodeStatus::Pending {
                        self.set_status(c, NodeStatus::UpstreamFailed);
                    }
                    work.push(c);
                }
            }
        }
        for v in 0..self.dag.len() as NodeIndex {
            if matches!(self.nodes[v as usize].status, NodeStatus::Pending | NodeStatus::Retrying) {
                self.nodes[v as usize].retry_at_ms = None;
                self.set_status(v, NodeStatus::Cancelled);
            }
        }
    }

    /// Marks `node` terminal and settles every dependent that no longer waits on anything.
    pub(super) fn finish_node(&mut self, node: NodeIndex, status: NodeStatus) {
        self.set_status(node, status);
        let dag = Arc::clone(&self.dag);
        let mut work = vec![node];
        while let Some(v) = work.pop() {
            for &c in &dag.node(v).children {
                let waiting = &mut self.waiting_on[c as usize];
                *waiting = waiting.saturating_sub(1);
                if *waiting == 0 && self.nodes[c as usize].status == NodeStatus::Pending {
                    if let Some(terminal) = self.settled_status(c) {
                        if terminal == NodeStatus::Skipped {
                            self.nodes[c as usize].skip_reason = Some(SkipReason::Pruned);
                        }
                        self.set_status(c, terminal);
                        work.push(c);
                    } else {
                        self.push_ready(c);
                    }
                }
            }
        }
    }

    /// A pending node whose dependencies are all terminal: either it is decided without running
    /// (returned), or it is ready.
    pub(super) fn settle(&mut self, node: NodeIndex) {
        match self.settled_status(node) {
            Some(terminal) => {
                if terminal == NodeStatus::Skipped {
                    self.nodes[node as usize].skip_reason = Some(SkipReason::Pruned);
                }
                self.finish_node(node, terminal);
            }
            None => self.push_ready(node),
        }
    }

    pub(super) fn settled_status(&self, node: NodeIndex) -> Option<NodeStatus> {
        let deps = &self.dag.node(node).deps;
        let dep_state = |d: &NodeIndex| &self.nodes[*d as usize];
        if self.halt.is_some() {
            return Some(NodeStatus::Cancelled);
        }
        if deps
            .iter()
            .map(dep_state)
            .any(|s| matches!(s.status, NodeStatus::Failed | NodeStatus::UpstreamFailed | NodeStatus::Cancelled))
        {
            return Some(NodeStatus::UpstreamFailed);
        }
        let pruned = |s: &NodeState| {
            s.status == NodeStatus::Skipped && matches!(s.skip_reason, Some(SkipReason::Condition | SkipReason::Pruned))
        };
        if !deps.is_empty() && deps.iter().map(dep_state).all(pruned) {
            return Some(NodeStatus::Skipped);
        }
        None
    }

    pub(super) fn set_status(&mut self, node: NodeIndex, status: NodeStatus) {
        let state = &mut self.nodes[node as usize];
        let was_terminal = state.status.is_terminal();
        state.status = status;
        if status.is_terminal() && !was_terminal {
            self.unfinished_per_level[self.dag.node(node).level as usize] -= 1;
        }
        self.changed.insert(node);
    }
}
