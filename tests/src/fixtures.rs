//! Fixtures: the DAGs and workloads tests run (the seed examples, sleep chains, the mixed fault
//! workload) and the limit tests' stack with the checks that end them.

use serde_json::{Value, json};
use std::time::Duration;

use crate::repo_root;
use crate::samplers::RunningPeak;
use crate::stack::{Stack, StackOptions};

/// The fault matrix's workload, `copies` executions of one DAG: a fan-out and fan-in through a
/// flaky node (succeeds on its third attempt), a node that times out and is skipped, and a short
/// sleep. The DAG is stored on the first call.
pub async fn mixed_workload(stack: &Stack, copies: usize) -> Vec<String> {
    let (status, body) = stack
        .call(reqwest::Method::POST, "/dags", Some(json!({"dag_id": "mixed", "name": "mixed", "nodes": {
            "a": {"agent_id": "echo"},
            "flaky": {"agent_id": "flaky", "params": {"failures": 2}, "depends_on": ["a"],
                      "retry_policy": {"max_retries": 3, "base_delay": 0.01}},
            "slow": {"agent_id": "sleep", "params": {"ms": 5000}, "timeout_policy": {"timeout_seconds": 0.2, "on_timeout": "skip"},
                     "depends_on": ["a"]},
            "b": {"agent_id": "sleep", "params": {"ms": 30}, "depends_on": ["a"]},
            "join": {"agent_id": "echo", "depends_on": ["flaky", "slow", "b"]}}})))
        .await;
    assert!(status == 201 || status == 409, "{body}");
    let mut ids = Vec::new();
    for i in 0..copies {
        ids.push(stack.execute("mixed", json!({"copy": i})).await);
    }
    ids
}

/// The limit tests' deployment: two coordinators and two workers of 8 slots, with
/// `MAX_CONCURRENT_EXECUTIONS` at 10, plus `settings`; and their DAG `limited` (two 20 ms steps).
pub async fn limited_stack(settings: Vec<(&'static str, String)>) -> Stack {
    let mut all = vec![("MAX_CONCURRENT_EXECUTIONS", "10".to_owned())];
    all.extend(settings);
    let options =
        StackOptions { coordinators: 2, workers: 2, worker_concurrency: 8, settings: all, ..Default::default() };
    let stack = Stack::start(options).await;
    stack
        .create_dag(json!({"dag_id": "limited", "name": "l", "nodes": {
            "a": {"agent_id": "sleep", "params": {"ms": 20}},
            "b": {"agent_id": "sleep", "params": {"ms": 20}, "depends_on": ["a"]}}}))
        .await;
    stack
}

/// The end of a limit test: every execution completes, the sampled peak never exceeded 10, and
/// slots were granted in submission order.
pub async fn assert_limited_run_ends_well(stack: &Stack, ids: &[String], sampler: RunningPeak) {
    for id in ids {
        let e = stack.wait_finished(id, Duration::from_secs(240)).await;
        assert_eq!(e["status"], "completed", "{e}");
    }
    let peak = sampler.stop().await;
    assert!((1..=10).contains(&peak), "at most 10 running at any sampled moment, saw {peak}");
    let slots: Vec<i64> = sqlx::query_scalar("SELECT slot_seq FROM dag_executions ORDER BY submit_seq")
        .fetch_all(&stack.database().await)
        .await
        .expect("order");
    assert!(slots.windows(2).all(|w| w[0] < w[1]), "slots are granted in submission order: {slots:?}");
}

/// A message for the results exchange as a worker publishes it (or as a forger would): `body`
/// as given, with `headers`.
pub fn onto_results(
    topology: &engine::topology::Topology,
    body: Vec<u8>,
    headers: std::collections::BTreeMap<String, String>,
) -> runtime::queue::Outgoing {
    runtime::queue::Outgoing {
        exchange: topology.results_exchange(),
        routing_key: engine::topology::Topology::RESULT_KEY.to_owned(),
        body,
        headers,
        mandatory: true,
    }
}

/// A DAG document from `examples/`, as JSON.
pub fn example(name: &str) -> Value {
    let text = std::fs::read_to_string(repo_root().join("examples").join(name)).expect("example exists");
    let spec = engine::dag::DagSpec::from_yaml(&text).expect("example parses");
    serde_json::to_value(spec).expect("as JSON")
}

/// A chain `s0 -> s1 -> ...` of `n` `sleep` nodes of `ms` each.
pub fn sleep_chain(id: &str, n: usize, ms: u64) -> Value {
    let nodes: serde_json::Map<String, Value> = (0..n)
        .map(|i| {
            let deps: Vec<String> = if i == 0 { vec![] } else { vec![format!("s{}", i - 1)] };
            (format!("s{i}"), json!({"agent_id": "sleep", "params": {"ms": ms}, "depends_on": deps}))
        })
        .collect();
    json!({"dag_id": id, "name": id, "nodes": nodes})
}
