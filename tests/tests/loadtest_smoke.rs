//! A short run of each load scenario that exists, so the tool never rots (no thresholds here:
//! figures belong in BENCHMARKS.md).

use tests::{Stack, StackOptions};

#[tokio::test]
async fn the_chain_scenario_measures_a_short_chain() {
    let stack = Stack::start(StackOptions::default()).await;
    let client = loadtest::Client::new(&stack.base(), None);
    let result = loadtest::chain::run(&client, 5).await.expect("the scenario runs");
    assert_eq!(result.steps, 5);
    assert!(result.makespan_ms >= result.node_time_ms, "{result:?}");
    assert!(result.dependency_to_start_p99_ms >= result.dependency_to_start_p50_ms, "{result:?}");
    stack.shutdown().await;
}
