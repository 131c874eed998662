//! Starting a node: its condition, its input, its deadline and its dispatch, or the failure
//! that stands for a dispatch that cannot be made (an input over the limit).

use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Map, Value};

use super::{Effect, Execution, NodeError, NodeStatus, SkipReason, Task, TaskKind};
use crate::condition::Scope;
use crate::dag::NodeIndex;

impl Execution {
    pub(super) fn start_node(&mut self, node: NodeIndex, now_ms: u64, effects: &mut Vec<Effect>) {
        let dag = Arc::clone(&self.dag);
        let compiled = dag.node(node);
        let first_attempt = self.nodes[node as usize].attempt == self.nodes[node as usize].attempt_base;
        if let (true, Some(condition)) = (first_attempt, &compiled.condition) {
            let results = self.results_for(condition.referenced_nodes().into_iter());
            match condition.evaluate(&Scope { input: &self.input, results: &results }) {
                Ok(true) => {}
                Ok(false) => {
                    self.nodes[node as usize].skip_reason = Some(SkipReason::Condition);
                    return self.finish_node(node, NodeStatus::Skipped);
                }
                Err(e) => {
                    self.nodes[node as usize].attempt += 1;
                    return self.fail_attempt(node, NodeError::new("condition_error", e.to_string()), false, now_ms);
                }
            }
        }
        let input = self.node_input(node);
        let size = crate::canonical::compact_len(&input);
        if size > self.max_input_bytes {
            self.nodes[node as usize].attempt += 1;
            let message = format!(
                "the input is {size} bytes; the limit is {} (GL_ORCHESTRATOR_MAX_TASK_INPUT_BYTES)",
                self.max_input_bytes
            );
            return self.fail_attempt(node, NodeError::new("input_too_large", message), false, now_ms);
        }
        let timeout_ms = timeout_ms(compiled.timeout.timeout_seconds);
        let deadline = now_ms.saturating_add(timeout_ms).saturating_add(self.attempt_grace_ms);
        let state = &mut self.nodes[node as usize];
        state.attempt += 1;
        state.retry_at_ms = None;
        state.deadline_ms = Some(deadline);
        let attempt = state.attempt;
        self.set_status(node, NodeStatus::Running);
        self.running += 1;
        self.deadlines.push(Reverse((deadline, self.position[node as usize])));
        effects.push(Effect::Dispatch(Task {
            node,
            attempt,
            kind: TaskKind::Run,
            agent_id: self.dag.node_spec(node).agent_id.clone(),
            input,
            timeout_ms,
        }));
    }

    /// The input object an agent receives: the `input_mapping` applied, or, without one,
    /// `{"_input": <execution input>, "<dep id>": <dep outputs or null>, ...}`.
    pub fn node_input(&self, node: NodeIndex) -> Value {
        let compiled = self.dag.node(node);
        if compiled.input_mapping.is_empty() {
            let mut object = Map::new();
            object.insert("_input".to_owned(), self.input.clone());
            for &d in &compiled.deps {
                let outputs = self.nodes[d as usize].outputs.clone().unwrap_or(Value::Null);
                object.insert(self.dag.node_id(d).to_owned(), outputs);
            }
            return Value::Object(object);
        }
        let results = self.results_for(compiled.input_mapping.iter().filter_map(|(_, p)| p.node()));
        let scope = Scope { input: &self.input, results: &results };
        Value::Object(
            compiled.input_mapping.iter().map(|(target, path)| (target.clone(), path.lookup(&scope))).collect(),
        )
    }

    fn results_for<'a>(&self, nodes: impl Iterator<Item = &'a str>) -> BTreeMap<String, Value> {
        nodes
            .filter_map(|id| {
                let v = self.dag.index_of(id)?;
                Some((id.to_owned(), self.nodes[v as usize].outputs.clone()?))
            })
            .collect()
    }
}

pub(super) fn timeout_ms(seconds: f64) -> u64 {
    (seconds * 1000.0).ceil().clamp(1.0, 86_400_000.0) as u64
}
