//! A short run of each load scenario (chain, fanout, concurrent, memory, validate, soak, shapes), so
//! the tool never rots (no thresholds here: figures belong in BENCHMARKS.md).

use tests::{Backend, Stack, StackOptions};

async fn the_chain_scenario_measures_a_short_chain(backend: Backend) {
    let stack = Stack::start(StackOptions { backend, ..StackOptions::default() }).await;
    let client = loadtest::Client::new(&stack.base(), None);
    let result = loadtest::chain::run(&client, 5).await.expect("the scenario runs");
    assert_eq!(result.steps, 5);
    assert!(result.makespan_ms >= result.node_time_ms, "{result:?}");
    assert!(result.dependency_to_start_p99_ms >= result.dependency_to_start_p50_ms, "{result:?}");
    stack.shutdown().await;
}

async fn the_fanout_scenario_measures_a_small_fan_out(backend: Backend) {
    let stack = Stack::start(StackOptions { backend, ..StackOptions::default() }).await;
    let client = loadtest::Client::new(&stack.base(), None);
    let result = loadtest::fanout::run(&client, 20, std::time::Duration::from_secs(120)).await.expect("runs");
    assert_eq!(result.width, 20);
    assert!(result.nodes_per_second > 0.0 && result.makespan_ms >= result.fanout_ms, "{result:?}");
    stack.shutdown().await;
}

async fn the_concurrent_scenario_runs_executions_at_once_without_failures(backend: Backend) {
    let stack = Stack::start(StackOptions { backend, ..StackOptions::default() }).await;
    let client = loadtest::Client::new(&stack.base(), None);
    let result = loadtest::concurrent::run(&client, 5, std::time::Duration::from_secs(120)).await.expect("runs");
    assert_eq!((result.executions, result.failures), (5, 0), "{result:?}");
    assert!(result.latency_p99_ms >= result.latency_p50_ms && result.latency_p50_ms > 0.0, "{result:?}");
    stack.shutdown().await;
}

#[tokio::test]
async fn the_soak_scenario_samples_memory_and_queues() {
    let stack = Stack::start(StackOptions::default()).await;
    let client = loadtest::Client::new(&stack.base(), None);
    let metrics = format!("http://{}/metrics", stack.coordinators[0].addr);
    let every = std::time::Duration::from_millis(50);
    let result = loadtest::soak::run(&client, &metrics, 20, 5, &[std::process::id()], every).await.expect("runs");
    assert_eq!((result.executions, result.failures), (20, 0), "{result:?}");
    let last = result.samples.last().expect("sampled");
    assert_eq!(last.completed, 20);
    assert!(last.rss_kib[0] > 0, "{last:?}");
    assert!(loadtest::soak::memory_svg(&result, &["tests"]).contains("<polyline"));
    stack.shutdown().await;
}

#[tokio::test]
async fn the_memory_scenario_holds_executions_and_cancels_them() {
    let stack = Stack::start(StackOptions::default()).await;
    let client = loadtest::Client::new(&stack.base(), None);
    let metrics = format!("http://{}/metrics", stack.coordinators[0].addr);
    let within = std::time::Duration::from_secs(60);
    // The coordinator runs inside this test process.
    let result = loadtest::memory::run(&client, &metrics, std::process::id(), 5, within).await.expect("runs");
    assert_eq!(result.executions, 5);
    assert!(result.baseline_kib > 0 && result.active_kib > 0, "{result:?}");
    tests::eventually(within, "all five are cancelled", || async {
        let (_, body) = stack.call(reqwest::Method::GET, "/executions?status=cancelled", None).await;
        body["count"] == 5
    })
    .await;
    stack.shutdown().await;
}

async fn the_validate_scenario_stores_and_revalidates_a_random_dag(backend: Backend) {
    let stack = Stack::start(StackOptions { backend, workers: 0, ..StackOptions::default() }).await;
    let client = loadtest::Client::new(&stack.base(), None);
    let result = loadtest::validate::run(&client, 200).await.expect("runs");
    assert_eq!(result.nodes, 200);
    assert!(result.create_ms > 0.0 && result.validate_median_ms > 0.0, "{result:?}");
    let (_, dags) = stack.call(reqwest::Method::GET, "/dags", None).await;
    assert_eq!(dags["count"], 0, "the scenario deletes its DAG");
    stack.shutdown().await;
}

async fn the_shapes_scenario_replays_a_small_workflow(backend: Backend) {
    let stack = Stack::start(StackOptions { backend, ..StackOptions::default() }).await;
    let client = loadtest::Client::new(&stack.base(), None);
    let text = r#"{"name": "tiny", "tasks": [
        {"id": "split", "runtime_s": 2, "parents": []},
        {"id": "w1", "runtime_s": 5, "parents": ["split"]},
        {"id": "w2", "runtime_s": 3, "parents": ["split"]},
        {"id": "w3", "runtime_s": 4, "parents": ["split"]},
        {"id": "merge", "runtime_s": 1, "parents": ["w1", "w2", "w3"]}]}"#;
    let instance = loadtest::shapes::Instance::parse(text).expect("parses");
    let result = loadtest::shapes::run(&client, &instance, 2, 400).await.expect("runs");
    assert_eq!((result.tasks, result.edges, result.slots), (5, 6, 2), "{result:?}");
    assert!(result.lower_bound_ms <= result.simulated_ms as f64, "no policy beats the bound: {result:?}");
    assert!(result.makespan_ms >= result.critical_path_ms as f64, "nothing beats the critical path: {result:?}");
    stack.shutdown().await;
}

tests::on_both_backends!(
    the_shapes_scenario_replays_a_small_workflow,
    the_chain_scenario_measures_a_short_chain,
    the_fanout_scenario_measures_a_small_fan_out,
    the_concurrent_scenario_runs_executions_at_once_without_failures,
    the_validate_scenario_stores_and_revalidates_a_random_dag,
);
