//! A model-based property test of the state machine over random DAGs, outcomes, duplicates,
//! reordering, cancels, crash-restore and attempts that outlive their deadline (their worker
//! lost: the coordinator ends them, and their results, should they still come, are stale).

use proptest::prelude::*;
use serde_json::json;

use super::tests::{dag, err, ok};
use super::*;

#[derive(Debug, Clone)]
enum Step {
    /// Deliver the outcome of the oldest in-flight attempt (index into in-flight list).
    Deliver(usize, bool),
    /// Deliver an outcome twice.
    Duplicate(usize, bool),
    /// Crash: rebuild from the snapshot and lose nothing.
    Restore,
    /// Let time pass so retries fall due.
    Tick,
    Cancel,
    /// Two days pass: every running attempt is past its deadline.
    Lapse,
}

fn arb_steps() -> impl Strategy<Value = Vec<Step>> {
    proptest::collection::vec(
        prop_oneof![
            6 => (0usize..8, any::<bool>()).prop_map(|(i, ok)| Step::Deliver(i, ok)),
            1 => (0usize..8, any::<bool>()).prop_map(|(i, ok)| Step::Duplicate(i, ok)),
            1 => Just(Step::Restore),
            2 => Just(Step::Tick),
            1 => Just(Step::Cancel),
            1 => Just(Step::Lapse),
        ],
        0..200,
    )
}

fn random_dag(n: usize, edges: &[(usize, usize)], policy: usize, parallel: u32) -> Arc<Dag> {
    let policies = ["fail_fast", "continue", "compensate"];
    let nodes: serde_json::Map<String, Value> = (0..n)
        .map(|i| {
            let deps: Vec<String> = edges.iter().filter(|(_, to)| *to == i).map(|(f, _)| format!("n{f}")).collect();
            let on_failure = if i % 4 == 3 { "skip" } else { "stop" };
            (
                format!("n{i}"),
                json!({"agent_id": "x", "depends_on": deps, "on_failure": on_failure,
                                     "compensation_handler": "undo",
                                     "retry_policy": {"max_retries": i % 3, "base_delay": 0.01, "jitter": false}}),
            )
        })
        .collect();
    dag(json!({"name": "p", "on_failure": policies[policy], "max_parallel_nodes": parallel, "nodes": nodes}))
}

/// A model run of one execution: the tasks in flight and every attempt dispatched and recorded,
/// checked after each step against what the state machine promises.
struct Simulation {
    d: Arc<Dag>,
    e: Execution,
    parallel: u32,
    now: u64,
    in_flight: Vec<Task>,
    recorded: std::collections::HashSet<(NodeIndex, u32, TaskKind)>,
    sent: std::collections::HashSet<(NodeIndex, u32, TaskKind)>,
}

impl Simulation {
    fn start(d: Arc<Dag>, parallel: u32) -> Self {
        let e = Execution::new(d.clone(), "prop", json!({}));
        let mut sim = Self {
            d,
            e,
            parallel,
            now: 0,
            in_flight: Vec::new(),
            recorded: Default::default(),
            sent: Default::default(),
        };
        let fx = sim.e.start(sim.now);
        sim.absorb(fx);
        sim
    }

    /// Takes in the dispatches: never the same attempt twice, never before its dependencies, and
    /// never more running than the DAG allows.
    fn absorb(&mut self, fx: Vec<Effect>) {
        for effect in fx {
            if let Effect::Dispatch(task) = effect {
                assert!(self.sent.insert((task.node, task.attempt, task.kind)), "attempt dispatched twice: {task:?}");
                // Every dispatched node has all dependencies completed or skipped.
                for &dep in &self.d.node(task.node).deps {
                    let s = self.e.node_state(dep).status;
                    assert!(matches!(s, NodeStatus::Completed | NodeStatus::Skipped), "dep {dep} is {s:?}");
                }
                self.in_flight.push(task);
            }
        }
        let running =
            (0..self.d.len() as NodeIndex).filter(|&v| self.e.node_state(v).status == NodeStatus::Running).count();
        assert!(running as u32 <= self.parallel, "{running} running with max {}", self.parallel);
    }

    fn apply(&mut self, step: Step) -> Result<(), TestCaseError> {
        self.now += 5;
        let fx = match step {
            Step::Deliver(i, success) | Step::Duplicate(i, success) if !self.in_flight.is_empty() => {
                self.deliver(i, success, matches!(step, Step::Duplicate(..)))?
            }
            Step::Restore => {
                let snap = self.e.snapshot();
                self.e = Execution::restore(self.d.clone(), "prop", json!({}), snap);
                Vec::new()
            }
            Step::Cancel => self.e.cancel(self.now),
            Step::Lapse => {
                self.now += 2 * 86_400_000;
                self.e.tick(self.now)
            }
            _ => {
                self.now += 100;
                self.e.tick(self.now)
            }
        };
        self.absorb(fx);
        if self.in_flight.is_empty() && !self.e.status().is_terminal() {
            self.now = self.now.max(self.e.next_wake_ms().unwrap_or(self.now));
            let fx = self.e.tick(self.now);
            self.absorb(fx);
        }
        Ok(())
    }

    /// Delivers the outcome of one in-flight task (leaving it in flight when `duplicate`): an
    /// attempt is recorded once at most.
    fn deliver(&mut self, i: usize, success: bool, duplicate: bool) -> Result<Vec<Effect>, TestCaseError> {
        let i = i % self.in_flight.len();
        let task = if duplicate { self.in_flight[i].clone() } else { self.in_flight.remove(i) };
        let outcome = if success { ok(json!({"from": task.node})) } else { err("AgentError") };
        let result = match task.kind {
            TaskKind::Run => self.e.record(task.node, task.attempt, outcome, self.now),
            TaskKind::Compensate => self.e.record_compensation(task.node, task.attempt, outcome, self.now),
        };
        match result {
            Ok(fx) => {
                prop_assert!(self.recorded.insert((task.node, task.attempt, task.kind)), "recorded twice");
                Ok(fx)
            }
            Err(_) => Ok(Vec::new()),
        }
    }

    /// The run finished: every node terminal, outputs exactly on completed nodes, and the
    /// execution's status agreeing with its nodes.
    fn check_finished(&self) -> Result<(), TestCaseError> {
        let (d, e) = (&self.d, &self.e);
        prop_assert!(e.status().is_terminal(), "execution did not finish: {:?}", e.snapshot());
        for v in 0..d.len() as NodeIndex {
            let s = e.node_state(v);
            prop_assert!(s.status.is_terminal(), "node {v} left {:?}", s.status);
            prop_assert_eq!(s.status == NodeStatus::Completed, s.outputs.is_some());
        }
        let any_failed = (0..d.len() as NodeIndex).any(|v| e.node_state(v).status == NodeStatus::Failed);
        match e.status() {
            ExecutionStatus::Completed => prop_assert!(!any_failed),
            ExecutionStatus::Failed => prop_assert!(any_failed),
            _ => prop_assert_eq!(e.halt(), Some(Halt::Cancel)),
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]
    #[test]
    fn random_interleavings_never_lose_or_double_record(
        (n, edges) in (1usize..10).prop_flat_map(|n| {
            let edge = (0..n).prop_flat_map(move |to| (0..to.max(1), Just(to)));
            (Just(n), proptest::collection::vec(edge, 0..n * 2))
        }),
        policy in 0usize..3,
        parallel in 1u32..4,
        steps in arb_steps(),
    ) {
        let edges: Vec<(usize, usize)> = edges.into_iter().filter(|(f, t)| f < t).collect();
        let mut sim = Simulation::start(random_dag(n, &edges, policy, parallel), parallel);
        let all_steps = steps.into_iter().chain(std::iter::repeat_n(Step::Deliver(0, true), 400));
        for step in all_steps {
            if sim.e.status().is_terminal() { break; }
            sim.apply(step)?;
        }
        sim.check_finished()?;
    }
}
