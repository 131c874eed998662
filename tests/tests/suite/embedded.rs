//! Embedded mode as a user runs it: `coordinator dev` as a real process on a SQLite file, killed
//! with SIGKILL in the middle of an execution and started again on the same file; and the same
//! pipeline giving the same provenance on both backends.

use std::time::Duration;

use serde_json::{Value, json};
use tests::{Backend, Stack, StackOptions, eventually, example, sleep_chain};

const WITHIN: Duration = Duration::from_secs(60);
const COORDINATOR: &str = env!("CARGO_BIN_EXE_gl-coordinator");

#[tokio::test]
async fn a_killed_dev_process_resumes_from_its_checkpoints() {
    let dir = std::env::temp_dir().join(format!("gl-embedded-{}", uuid::Uuid::new_v4().simple()));
    let data = dir.join("orchestrator.db");
    let mut stack =
        Stack::detached(StackOptions { settings: vec![("LEASE_TTL_SECONDS", "3".into())], ..StackOptions::default() });
    let mut first = stack.dev_process(COORDINATOR, &data).await;
    stack.create_dag(sleep_chain("kill-dev", 4, 1500)).await;
    let id = stack.execute("kill-dev", json!({})).await;
    // Killed while s1 runs: s0 is checkpointed, s1's task is held by the dead process's worker.
    // "running" is written when s1 is dispatched; its 1.5 s sleep has surely begun once it has
    // been running for a third of that (publishing and taking a task take milliseconds).
    eventually(WITHIN, "s0 completed and s1 running for 500 ms", || async {
        let nodes = stack.nodes(&id).await;
        let started = loadtest::time(&nodes["s1"]["started_at"]);
        let running_for = started.map(|t| chrono::Utc::now() - t);
        nodes["s0"]["status"] == "completed"
            && nodes["s1"]["status"] == "running"
            && running_for.is_some_and(|d| d > chrono::TimeDelta::milliseconds(500))
    })
    .await;
    let before = stack.nodes(&id).await;
    first.kill().expect("kill -9 the dev process");
    let _ = first.wait();

    let mut second = stack.dev_process(COORDINATOR, &data).await;
    let e = stack.wait_finished(&id, WITHIN).await;
    assert_eq!(e["status"], "completed", "{e}");
    let nodes = stack.nodes(&id).await;
    assert_eq!(nodes["s0"]["attempt_count"], 1, "the checkpointed node did not run again: {}", nodes["s0"]);
    assert_eq!(
        nodes["s0"]["completed_at"], before["s0"]["completed_at"],
        "s0's record is the one from before the kill"
    );
    assert_eq!(nodes["s1"]["attempts"][0]["deliveries"], 2, "s1's task came back from the queue: {}", nodes["s1"]);
    for n in ["s2", "s3"] {
        assert_eq!(nodes[n]["status"], "completed", "{n}: {}", nodes[n]);
        assert_eq!(nodes[n]["attempt_count"], 1, "{n}: {}", nodes[n]);
    }
    let provenance = stack.provenance(&id).await;
    assert_eq!(provenance["chain_valid"], true, "{provenance}");
    assert_eq!(provenance["node_count"], 4, "one record per node: {provenance}");

    second.kill().ok();
    let _ = second.wait();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn both_backends_give_the_same_provenance_for_the_same_pipeline() {
    let input: Value = serde_json::from_str(
        &std::fs::read_to_string(tests::repo_root().join("examples/inputs/emissions.json")).expect("input"),
    )
    .expect("JSON input");
    let mut hashes = Vec::new();
    for backend in [Backend::Distributed, Backend::Embedded] {
        let stack = Stack::start(StackOptions { backend, ..StackOptions::default() }).await;
        stack.create_dag(example("emissions-pipeline.yaml")).await;
        let id = stack.execute("emissions-pipeline", input.clone()).await;
        let e = stack.wait_finished(&id, WITHIN).await;
        assert_eq!(e["status"], "completed", "{backend:?}: {e}");
        let hash = e["provenance_chain_hash"].as_str().expect("a completed execution has a hash").to_owned();
        assert_eq!(hash.len(), 64, "{hash}");
        hashes.push(hash);
        stack.shutdown().await;
    }
    assert_eq!(hashes[0], hashes[1], "distributed and embedded runs of the same DAG and input");
}

#[tokio::test]
async fn a_second_dev_process_on_the_same_file_refuses_to_start() {
    let dir = std::env::temp_dir().join(format!("gl-embedded-{}", uuid::Uuid::new_v4().simple()));
    let data = dir.join("orchestrator.db");
    let mut stack = Stack::detached(StackOptions::default());
    let mut first = stack.dev_process(COORDINATOR, &data).await;
    // The second would hand back the messages the first holds; it must stop at start instead.
    let second = std::process::Command::new(COORDINATOR)
        .args(["dev", "--data"])
        .arg(&data)
        .env("GL_ORCHESTRATOR_HTTP_ADDR", format!("127.0.0.1:{}", tests::free_port()))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the second process");
    let output = tokio::task::spawn_blocking(move || second.wait_with_output()).await.expect("join").expect("wait");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("locked by another process"), "names the cause: {stderr}");
    // The first is unharmed.
    let (status, _) = stack.call(reqwest::Method::GET, "/health", None).await;
    assert_eq!(status, 200);
    first.kill().ok();
    let _ = first.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
