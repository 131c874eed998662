//! After a scripted run (a success after a retry, a timeout, a failure, a checkpoint that fails
//! verification, an invalid DAG), one scrape of the coordinator's `/metrics` shows each of the
//! twelve metrics with the expected values.

use std::time::Duration;

use serde_json::json;
use tests::{Stack, StackOptions};

const WITHIN: Duration = Duration::from_secs(30);

/// The value of the sample `name` whose labels include every pair of `labels`.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
        let wanted = labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
        (metric == name && wanted).then(|| value.parse().ok()).flatten()
    })
}

/// A metric, its labels and the value one scrape must show.
type Expectation<'a> = (&'a str, Vec<(&'a str, &'a str)>, f64);

#[tokio::test]
async fn one_scrape_shows_all_twelve_metrics() {
    let stack = Stack::start(StackOptions::default()).await;
    create_a_dag_for_each_metric(&stack).await;
    let flaky = run_flaky_timed_out_and_tampered_executions(&stack).await;
    one_scrape_shows_the_expected_values(&stack).await;
    every_metric_dashboards_and_rules_use_is_emitted(&stack, &flaky).await;
    stack.shutdown().await;
}

/// A retried node, a timed-out node, a node that fails after a checkpoint, and an invalid DAG.
async fn create_a_dag_for_each_metric(stack: &Stack) {
    stack
        .create_dag(json!({"dag_id": "m-flaky", "name": "m", "nodes": {"f": {"agent_id": "flaky",
            "params": {"failures": 1}, "retry_policy": {"max_retries": 2, "base_delay": 0.05}}}}))
        .await;
    stack
        .create_dag(json!({"dag_id": "m-timeout", "name": "m", "nodes": {"slow": {"agent_id": "sleep",
            "params": {"ms": 3000}, "retry_policy": {"max_retries": 0}, "timeout_policy": {"timeout_seconds": 0.2}}}}))
        .await;
    stack
        .create_dag(json!({"dag_id": "m-resume", "name": "m", "default_retry_policy": {"max_retries": 0}, "nodes": {
            "load": {"agent_id": "echo"}, "boom": {"agent_id": "fail", "depends_on": ["load"]}}}))
        .await;
    let (status, _) = stack
        .call(
            reqwest::Method::POST,
            "/dags",
            Some(json!({"name": "bad", "nodes": {"a": {"agent_id": "x", "depends_on": ["b"]},
                                                  "b": {"agent_id": "x", "depends_on": ["a"]}}})),
        )
        .await;
    assert_eq!(status, 422);
}

/// Runs the three DAGs, tampers with a checkpoint and resumes; returns the flaky execution's id.
async fn run_flaky_timed_out_and_tampered_executions(stack: &Stack) -> String {
    let flaky = stack.execute("m-flaky", json!({})).await;
    let timeout = stack.execute("m-timeout", json!({})).await;
    let resumed = stack.execute("m-resume", json!({})).await;
    assert_eq!(stack.wait_finished(&flaky, WITHIN).await["status"], "completed");
    assert_eq!(stack.wait_finished(&timeout, WITHIN).await["status"], "failed");
    assert_eq!(stack.wait_finished(&resumed, WITHIN).await["status"], "failed");
    let db = stack.database().await;
    sqlx::query("UPDATE dag_checkpoints SET outputs = '{\"forged\": 1}' WHERE execution_id = $1")
        .bind(uuid::Uuid::parse_str(&resumed).expect("uuid"))
        .execute(&db)
        .await
        .expect("tamper");
    let (status, body) = stack.call(reqwest::Method::POST, &format!("/executions/{resumed}/resume"), None).await;
    assert_eq!((status, body["checkpoints_rejected"].clone()), (202, json!(["load"])));
    stack.wait_for(&resumed, WITHIN, |e| e["status"] == "failed" && e["completed_nodes"] == 1).await;
    flaky
}

async fn one_scrape_shows_the_expected_values(stack: &Stack) {
    let url = format!("http://{}/metrics", stack.coordinators[0].addr);
    let text = stack.http.get(url).send().await.expect("scrape").text().await.expect("text");
    let get = |name: &str, labels: &[(&str, &str)]| sample(&text, name, labels);
    let flaky_dag = [("dag_id", "m-flaky")];
    let flaky_node = [("dag_id", "m-flaky"), ("node_id", "f")];
    let timeout_node = [("dag_id", "m-timeout"), ("node_id", "slow")];
    let expectations: Vec<Expectation> = vec![
        ("gl_orchestrator_dag_executions_total", vec![("dag_id", "m-flaky"), ("status", "completed")], 1.0),
        ("gl_orchestrator_dag_executions_total", vec![("dag_id", "m-timeout"), ("status", "failed")], 1.0),
        ("gl_orchestrator_dag_executions_total", vec![("dag_id", "m-resume"), ("status", "failed")], 2.0),
        ("gl_orchestrator_dag_execution_duration_seconds_count", flaky_dag.to_vec(), 1.0),
        ("gl_orchestrator_node_executions_total", vec![("node_id", "f"), ("status", "completed")], 1.0),
        ("gl_orchestrator_node_executions_total", vec![("node_id", "slow"), ("status", "failed")], 1.0),
        ("gl_orchestrator_node_execution_duration_seconds_count", flaky_node.to_vec(), 2.0),
        ("gl_orchestrator_node_retries_total", flaky_node.to_vec(), 1.0),
        ("gl_orchestrator_node_timeouts_total", timeout_node.to_vec(), 1.0),
        ("gl_orchestrator_active_executions", vec![], 0.0),
        ("gl_orchestrator_checkpoint_operations_total", vec![("operation", "save"), ("status", "ok")], 3.0),
        ("gl_orchestrator_checkpoint_operations_total", vec![("operation", "verify"), ("status", "failed")], 1.0),
        ("gl_orchestrator_checkpoint_size_bytes_count", vec![], 3.0),
        ("gl_orchestrator_provenance_chain_length_count", flaky_dag.to_vec(), 1.0),
        ("gl_orchestrator_provenance_chain_length_sum", flaky_dag.to_vec(), 1.0),
        ("gl_orchestrator_parallel_nodes_per_level_count", vec![("dag_id", "m-resume")], 4.0),
        ("gl_orchestrator_dag_validation_errors_total", vec![("error_type", "cycle")], 1.0),
    ];
    for (name, labels, want) in expectations {
        assert_eq!(get(name, &labels), Some(want), "{name} {labels:?}\n{text}");
    }
}

/// Every metric the dashboards and alert rules use appears on the live endpoint.
async fn every_metric_dashboards_and_rules_use_is_emitted(stack: &Stack, flaky: &str) {
    let url = format!("http://{}/metrics", stack.coordinators[0].addr);
    tests::eventually(WITHIN, "the gauges have been refreshed", || async {
        let text = stack.http.get(&url).send().await.expect("scrape").text().await.unwrap_or_default();
        text.contains("gl_orchestrator_queue_depth{") && text.contains("gl_db_pool_active_connections{")
    })
    .await;
    let (status, _) = stack.call(reqwest::Method::GET, &format!("/executions/{flaky}/provenance"), None).await;
    assert_eq!(status, 200);
    let scrape = stack.http.get(&url).send().await.expect("scrape").text().await.expect("text");
    let file = std::env::temp_dir().join(format!("gl-scrape-{}.txt", std::process::id()));
    std::fs::write(&file, &scrape).expect("save the scrape");
    let check = tokio::process::Command::new("python3")
        .arg(tests::repo_root().join("deploy/monitoring/tests/metric_names.py"))
        .arg("--check-against")
        .arg(&file)
        .output()
        .await
        .expect("python3 runs");
    let missing = String::from_utf8_lossy(&check.stdout);
    assert_eq!(check.status.code(), Some(0), "used by dashboards or rules but not emitted: {missing}");
}
