//! Durability and audit with real processes: kill -9 of workers and coordinators, lease
//! takeover, many executions over two replicas, tampering, resume, and the standalone verifier.

use std::time::Duration;

use serde_json::{Value, json};
use tests::{Stack, StackOptions, eventually, example, sleep_chain};

const WITHIN: Duration = Duration::from_secs(60);
const COORDINATOR: &str = env!("CARGO_BIN_EXE_gl-coordinator");
const WORKER: &str = env!("CARGO_BIN_EXE_gl-worker");

/// Every node ran exactly once: one attempt, one result received, one provenance record.
async fn assert_each_node_ran_once(stack: &Stack, id: &str) {
    let nodes = stack.nodes(id).await;
    for (name, n) in &nodes {
        assert_eq!(n["attempt_count"], 1, "{name} was attempted again: {n}");
        assert_eq!(n["attempts"].as_array().map(Vec::len), Some(1), "{name} has other attempt results: {n}");
    }
    let provenance = stack.provenance(id).await;
    assert_eq!(provenance["chain_valid"], true, "{provenance}");
    assert_eq!(provenance["node_count"].as_u64(), Some(nodes.len() as u64), "one record per node");
}

#[tokio::test]
async fn a_worker_killed_mid_node_loses_nothing() {
    let stack = Stack::start(StackOptions { workers: 0, ..StackOptions::default() }).await;
    let mut first = stack.spawn_worker(WORKER, "victim");
    stack.create_dag(sleep_chain("kill-worker", 2, 2500)).await;
    let id = stack.execute("kill-worker", json!({})).await;
    let broker = runtime::amqp::Broker::connect(
        tests::AMQP,
        "probe",
        engine::topology::Topology::new(&stack.prefix, 5),
        tests::BROKER_CALL,
    )
    .await
    .expect("probe connects");
    let queue = engine::topology::Source::Pool("default".to_owned());
    let db = stack.database().await;
    // Published (the outbox is empty), and no longer ready in the queue: the only consumer has it.
    eventually(WITHIN, "the victim holds the task", || async {
        let running = stack.nodes(&id).await["s0"]["status"] == "running";
        let sent =
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM outbox").fetch_one(&db).await.is_ok_and(|n| n == 0);
        running && sent && runtime::queue::Queue::depth(&broker, &queue).await.is_ok_and(|d| d == 0)
    })
    .await;
    first.kill().expect("kill -9 the worker");
    let _ = first.wait();
    let mut second = stack.spawn_worker(WORKER, "survivor");
    let e = stack.wait_finished(&id, WITHIN).await;
    assert_eq!(e["status"], "completed", "{e}");
    let nodes = stack.nodes(&id).await;
    assert_eq!(nodes["s0"]["worker_id"], "survivor");
    assert_eq!(nodes["s0"]["attempts"][0]["deliveries"], 2, "the broker redelivered the same attempt");
    assert_each_node_ran_once(&stack, &id).await;
    runtime::queue::Queue::close(&broker).await;
    second.kill().ok();
    let _ = second.wait();
    stack.shutdown().await;
}

#[tokio::test]
async fn a_coordinator_killed_mid_execution_is_replaced_without_rework() {
    let mut stack = Stack::start(StackOptions { coordinators: 0, ..StackOptions::default() }).await;
    let mut first = stack.coordinator_process(COORDINATOR).await;
    stack.create_dag(sleep_chain("kill-coordinator", 5, 300)).await;
    let id = stack.execute("kill-coordinator", json!({})).await;
    stack.wait_for(&id, WITHIN, |e| e["completed_nodes"].as_i64().is_some_and(|n| n >= 2)).await;
    first.kill().expect("kill -9 the coordinator");
    let _ = first.wait();
    let mut second = stack.coordinator_process(COORDINATOR).await;
    let e = stack.wait_finished(&id, WITHIN).await;
    assert_eq!(e["status"], "completed", "{e}");
    assert_each_node_ran_once(&stack, &id).await;
    second.kill().ok();
    let _ = second.wait();
    stack.shutdown().await;
}

#[tokio::test]
async fn a_running_replica_takes_over_only_when_the_lease_expires() {
    let mut stack = Stack::start(StackOptions { coordinators: 0, ..StackOptions::default() }).await;
    let mut first = stack.coordinator_process(COORDINATOR).await;
    stack.create_dag(sleep_chain("takeover", 6, 400)).await;
    let id = stack.execute("takeover", json!({})).await;
    stack.wait_for(&id, WITHIN, |e| e["completed_nodes"].as_i64().is_some_and(|n| n >= 1)).await;
    let db = stack.database().await;
    let owner = |db: sqlx::PgPool, id: String| async move {
        let uuid = uuid::Uuid::parse_str(&id).expect("uuid");
        sqlx::query_scalar::<_, Option<String>>("SELECT lease_owner FROM dag_executions WHERE execution_id = $1")
            .bind(uuid)
            .fetch_one(&db)
            .await
            .expect("owner")
    };
    let original = owner(db.clone(), id.clone()).await.expect("leased");
    stack.add_coordinator("second").await;
    tokio::time::sleep(Duration::from_millis(1500)).await; // give the newcomer time to misbehave
    assert_eq!(owner(db.clone(), id.clone()).await.as_deref(), Some(original.as_str()), "a live lease is never stolen");
    first.kill().expect("kill -9 the owner");
    let _ = first.wait();
    stack.use_api(&format!("http://{}/api/v1/orchestrator", stack.coordinators[0].addr));
    let e = stack.wait_finished(&id, WITHIN).await;
    assert_eq!(e["status"], "completed", "{e}");
    assert_eq!(owner(db.clone(), id.clone()).await.as_deref(), Some("second"));
    assert_each_node_ran_once(&stack, &id).await;
    stack.shutdown().await;
}

#[tokio::test]
async fn two_hundred_executions_over_two_coordinators_and_two_workers() {
    let stack = Stack::start(StackOptions { coordinators: 2, workers: 2, ..StackOptions::default() }).await;
    stack.create_dag(example("diamond-4.yaml")).await;
    let bases: Vec<String> =
        stack.coordinators.iter().map(|c| format!("http://{}/api/v1/orchestrator", c.addr)).collect();
    let mut ids = Vec::new();
    for i in 0..200 {
        let url = format!("{}/dags/dag-diamond-4-node/execute", bases[i % 2]);
        let response = stack.http.post(url).json(&json!({"input_data": {"n": i}})).send().await.expect("execute");
        assert_eq!(response.status().as_u16(), 202);
        let body: Value = response.json().await.expect("json");
        ids.push(body["execution_id"].as_str().expect("id").to_owned());
    }
    for id in &ids {
        let e = stack.wait_finished(id, Duration::from_secs(180)).await;
        assert_eq!(e["status"], "completed", "{e}");
    }
    for id in &ids {
        assert_each_node_ran_once(&stack, id).await;
    }
    stack.shutdown().await;
}

#[tokio::test]
async fn tampering_is_detected_by_the_api_and_by_the_standalone_script() {
    let stack = Stack::start(StackOptions::default()).await;
    stack.create_dag(example("emissions-pipeline.yaml")).await;
    let input: Value = serde_json::from_str(
        &std::fs::read_to_string(tests::repo_root().join("examples/inputs/emissions.json")).expect("input"),
    )
    .expect("json");
    let id = stack.execute("emissions-pipeline", input).await;
    assert_eq!(stack.wait_finished(&id, WITHIN).await["status"], "completed");
    // Asynchronously: the in-process coordinator must keep serving while the script asks it.
    let verify = || async {
        tokio::process::Command::new("python3")
            .arg(tests::repo_root().join("scripts/verify_provenance.py"))
            .arg(&id)
            .arg("--base")
            .arg(stack.base())
            .output()
            .await
            .expect("python3 runs")
    };
    let clean = verify().await;
    let (out, err) = (String::from_utf8_lossy(&clean.stdout), String::from_utf8_lossy(&clean.stderr));
    assert_eq!(clean.status.code(), Some(0), "{out}{err}");

    let db = stack.database().await;
    sqlx::query(
        "UPDATE execution_provenance SET outputs = '{\"tco2e\": 0}' WHERE execution_id = $1 AND node_id = 'scope2'",
    )
    .bind(uuid::Uuid::parse_str(&id).expect("uuid"))
    .execute(&db)
    .await
    .expect("tamper");
    let provenance = stack.provenance(&id).await;
    assert_eq!(provenance["chain_valid"], false);
    let broken: Vec<&str> = provenance["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .filter(|n| n["valid"] == false)
        .filter_map(|n| n["node_id"].as_str())
        .collect();
    assert_eq!(broken, ["scope2"], "the altered node is named, and only it");
    let tampered = verify().await;
    let report = String::from_utf8_lossy(&tampered.stdout);
    assert_eq!(tampered.status.code(), Some(1), "{report}");
    assert!(report.contains("scope2"), "{report}");
    stack.shutdown().await;
}

#[tokio::test]
async fn resume_skips_trusted_checkpoints_and_reruns_tampered_ones() {
    let stack = Stack::start(StackOptions::default()).await;
    stack
        .create_dag(json!({"dag_id": "resumable", "name": "r", "default_retry_policy": {"max_retries": 0}, "nodes": {
            "load": {"agent_id": "echo"},
            "calc": {"agent_id": "echo", "depends_on": ["load"]},
            "flaky": {"agent_id": "flaky", "depends_on": ["calc"], "params": {"failures": 2}}}}))
        .await;
    let id = stack.execute("resumable", json!({"rows": 3})).await;
    assert_eq!(stack.wait_finished(&id, WITHIN).await["status"], "failed");
    let (status, body) = stack.call(reqwest::Method::POST, &format!("/executions/{id}/resume"), None).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(
        (body["nodes_skipped"].clone(), body["nodes_remaining"].clone()),
        (json!(["load", "calc"]), json!(["flaky"]))
    );
    assert_eq!(stack.wait_finished(&id, WITHIN).await["status"], "failed", "flaky fails its second attempt too");

    // Tamper with calc's checkpoint: the next resume must not trust it.
    let db = stack.database().await;
    sqlx::query(
        "UPDATE dag_checkpoints SET outputs = '{\"forged\": true}' WHERE execution_id = $1 AND node_id = 'calc'",
    )
    .bind(uuid::Uuid::parse_str(&id).expect("uuid"))
    .execute(&db)
    .await
    .expect("tamper");
    let (_, checkpoints) = stack.call(reqwest::Method::GET, &format!("/checkpoints/{id}"), None).await;
    let calc = checkpoints["items"].as_array().expect("items").iter().find(|c| c["node_id"] == "calc").cloned();
    assert_eq!(calc.map(|c| c["valid"].clone()), Some(json!(false)));
    let (status, body) = stack.call(reqwest::Method::POST, &format!("/executions/{id}/resume"), None).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["checkpoints_rejected"], json!(["calc"]));
    assert_eq!(body["nodes_skipped"], json!(["load"]));
    let e = stack.wait_finished(&id, WITHIN).await;
    assert_eq!(e["status"], "completed", "{e}");
    let nodes = stack.nodes(&id).await;
    assert_eq!(nodes["load"]["attempt_count"], 1, "a trusted checkpoint is not run again");
    assert_eq!(nodes["calc"]["attempt_count"], 2, "the tampered one is");
    assert_eq!(nodes["flaky"]["attempt_count"], 3);
    assert_eq!(nodes["calc"]["outputs"]["load"]["_input"], json!({"rows": 3}));
    assert_eq!(stack.provenance(&id).await["chain_valid"], true);

    let (status, _) = stack.call(reqwest::Method::POST, &format!("/executions/{id}/resume"), None).await;
    assert_eq!(status, 409, "a completed execution is not resumed");
    let (status, body) = stack.call(reqwest::Method::DELETE, &format!("/checkpoints/{id}"), None).await;
    assert_eq!((status, body["deleted"].clone()), (200, json!(3)));
    stack.shutdown().await;
}

#[tokio::test]
async fn the_runbook_lists_running_executions() {
    let stack = Stack::start(StackOptions::default()).await;
    stack.create_dag(sleep_chain("listed", 1, 3000)).await;
    let id = stack.execute("listed", json!({})).await;
    stack.wait_for(&id, WITHIN, |e| e["status"] == "running").await;
    let (status, body) = stack.call(reqwest::Method::GET, "/executions?status=running", None).await;
    assert_eq!(status, 200);
    let item = body["items"].as_array().expect("items").iter().find(|i| i["execution_id"] == json!(id)).cloned();
    let item = item.expect("the running execution is listed");
    assert!(item["started_at"].is_string() && item["dag_id"] == "listed", "{item}");
    let (_, none) = stack.call(reqwest::Method::GET, "/executions?status=completed&since=24h", None).await;
    assert_eq!(none["count"], 0);
    let (status, _) = stack.call(reqwest::Method::GET, "/executions?status=bogus", None).await;
    assert_eq!(status, 400);
    stack.shutdown().await;
}

#[tokio::test]
async fn a_paused_coordinator_cannot_write_under_its_expired_lease() {
    let mut stack = Stack::start(StackOptions { coordinators: 0, ..StackOptions::default() }).await;
    let mut paused = stack.coordinator_process(COORDINATOR).await;
    stack.create_dag(sleep_chain("paused", 4, 400)).await;
    let id = stack.execute("paused", json!({})).await;
    stack.wait_for(&id, WITHIN, |e| e["completed_nodes"].as_i64().is_some_and(|n| n >= 1)).await;
    let pid = paused.id().to_string();
    let signal = |sig: &str| std::process::Command::new("kill").args([sig, &pid]).status().expect("kill runs");
    assert!(signal("-STOP").success());
    // Another replica takes over once the lease expires, and finishes the execution.
    stack.add_coordinator("successor").await;
    stack.use_api(&format!("http://{}/api/v1/orchestrator", stack.coordinators[0].addr));
    let e = stack.wait_finished(&id, WITHIN).await;
    assert_eq!(e["status"], "completed", "{e}");
    // Resumed, the paused replica holds only a stale epoch: nothing it writes lands.
    assert!(signal("-CONT").success());
    tokio::time::sleep(Duration::from_millis(1500)).await; // let it try
    let db = stack.database().await;
    let owner: Option<String> = sqlx::query_scalar("SELECT lease_owner FROM dag_executions WHERE execution_id = $1")
        .bind(uuid::Uuid::parse_str(&id).expect("uuid"))
        .fetch_one(&db)
        .await
        .expect("owner");
    assert_eq!(owner.as_deref(), Some("successor"));
    assert_eq!(stack.execution(&id).await["status"], "completed", "the stale replica changed nothing");
    assert_each_node_ran_once(&stack, &id).await;
    paused.kill().ok();
    let _ = paused.wait();
    stack.shutdown().await;
}

#[tokio::test]
async fn a_task_that_kills_every_worker_it_reaches_fails_as_poison_instead_of_looping() {
    // A command agent that SIGKILLs the worker running it: each delivery kills a worker process
    // while it holds the task unacknowledged, so the broker delivers it again, up to the limit.
    let dir = std::env::temp_dir().join(format!("gl-poison-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let agents = dir.join("agents.yaml");
    std::fs::write(&agents, "agents:\n  crash: {type: command, program: /bin/sh, args: ['-c', 'kill -9 $PPID']}\n")
        .expect("agents file");
    let stack = Stack::start(StackOptions {
        workers: 0,
        // One attempt per worker at a time. A worker that dies returns every task it holds, and
        // each return counts towards the delivery limit: with more slots, a healthy task that
        // keeps landing beside the poison one in dying workers is dead-lettered too (a known
        // limit of per-message delivery counting; RELIABILITY.md, row 8).
        settings: vec![
            ("DELIVERY_LIMIT", "2".into()),
            ("AGENTS_FILE", agents.to_string_lossy().into_owned()),
            ("WORKER_CONCURRENCY", "1".into()),
        ],
        ..StackOptions::default()
    })
    .await;
    stack
        .create_dag(json!({"dag_id": "poison", "name": "poison", "on_failure": "continue", "nodes": {
            "crash": {"agent_id": "crash", "retry_policy": {"max_retries": 3, "base_delay": 0.01}},
            "fine": {"agent_id": "noop"}}}))
        .await;
    let id = stack.execute("poison", json!({})).await;
    let (finished, deaths) = one_worker_at_a_time_until_finished(&stack, &id).await;
    assert_eq!(finished["status"], "failed", "{finished}");
    let nodes = stack.nodes(&id).await;
    let crash = &nodes["crash"];
    assert_eq!((crash["status"].as_str(), crash["error_type"].as_str()), (Some("failed"), Some("poison")), "{crash}");
    assert_eq!(crash["attempt_count"], 1, "poison is never retried, though the policy allows 3 retries: {crash}");
    assert_eq!(nodes["fine"]["status"], "completed", "other work goes on");
    assert!(deaths >= 2, "the task was delivered again after a worker died ({deaths} died)");
    let _ = std::fs::remove_dir_all(&dir);
    stack.shutdown().await;
}

/// Starts one worker process at a time, the next when one dies, until execution `id` ends;
/// returns the finished execution and how many workers died.
async fn one_worker_at_a_time_until_finished(stack: &Stack, id: &str) -> (Value, usize) {
    let (mut deaths, deadline) = (0, std::time::Instant::now() + WITHIN);
    let finished = loop {
        let e = stack.execution(id).await;
        if matches!(e["status"].as_str(), Some("completed" | "failed" | "cancelled")) {
            break e;
        }
        assert!(std::time::Instant::now() < deadline, "never ended; {deaths} workers died: {e}");
        // One worker at a time; when it dies, the next one gets the redelivered task.
        let mut worker = stack.spawn_worker(WORKER, &format!("w{deaths}"));
        loop {
            if worker.try_wait().expect("wait").is_some() {
                deaths += 1;
                break;
            }
            let e = stack.execution(id).await;
            if e["status"] == "failed" || std::time::Instant::now() > deadline {
                worker.kill().ok();
                let _ = worker.wait();
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    (finished, deaths)
}
