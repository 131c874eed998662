//! The fault matrix, part 1 (faults that do not disturb other tests): duplicate and late result
//! messages, and a worker paused past its heartbeat. Each run ends with the auditor
//! (`Stack::audit`). Restarts of the shared RabbitMQ and PostgreSQL are in `fault_rabbitmq.rs`
//! and `fault_postgres.rs`, one test per binary, so that nothing else runs meanwhile.

use std::collections::BTreeMap;
use std::time::Duration;

use engine::messages::Message;
use engine::topology::Topology;
use runtime::amqp::Broker;
use runtime::queue::{Outgoing, Queue};
use serde_json::{Value, json};
use tests::{AMQP, Stack, StackOptions, mixed_workload};

const WITHIN: Duration = Duration::from_secs(90);
const WORKER: &str = env!("CARGO_BIN_EXE_gl-worker");
const COORDINATOR: &str = env!("CARGO_BIN_EXE_gl-coordinator");

/// The stored result messages of an execution, as they arrived.
async fn stored_results(stack: &Stack, id: &str) -> Vec<Value> {
    sqlx::query_scalar("SELECT result FROM node_attempts WHERE execution_id = $1 ORDER BY node_id, attempt")
        .bind(uuid::Uuid::parse_str(id).expect("uuid"))
        .fetch_all(&stack.database().await)
        .await
        .expect("results")
}

#[tokio::test]
async fn duplicate_and_late_results_change_nothing() {
    let stack = Stack::start(StackOptions::default()).await;
    let ids = mixed_workload(&stack, 3).await;
    for id in &ids {
        assert_eq!(stack.wait_finished(id, WITHIN).await["status"], "completed");
    }
    let before: Vec<Value> = futures_of(&stack, &ids).await;
    // Every result again (duplicates), and for the flaky node a "late" success of its first
    // attempt, which had failed: an old attempt's result must not replace what was recorded.
    let topology = Topology::new(&stack.prefix, 5);
    let broker = Broker::connect(AMQP, "fault-injector", topology.clone(), tests::BROKER_CALL).await.expect("broker");
    for id in &ids {
        for stored in stored_results(&stack, id).await {
            let mut result: engine::messages::ResultMessage = serde_json::from_value(stored).expect("a result");
            broker.publish(&[result_message(&topology, &result)]).await.expect("dup");
            if result.node_id == "flaky" && result.attempt == 1 {
                result.outcome = engine::state::Outcome::Succeeded { outputs: json!({"late": true}) };
                broker.publish(&[result_message(&topology, &result)]).await.expect("late");
            }
        }
    }
    broker.close().await;
    stack.audit(WITHIN).await;
    assert_eq!(futures_of(&stack, &ids).await, before, "statuses, outputs and provenance hashes are unchanged");
    stack.shutdown().await;
}

/// What must not change: each execution's status and chain hash, and each node's outputs.
async fn futures_of(stack: &Stack, ids: &[String]) -> Vec<Value> {
    let mut out = Vec::new();
    for id in ids {
        let e = stack.execution(id).await;
        let nodes = stack.nodes(id).await;
        let outputs: BTreeMap<&String, &Value> = nodes.iter().map(|(k, n)| (k, &n["outputs"])).collect();
        out.push(json!({"status": e["status"], "hash": e["provenance_chain_hash"], "outputs": outputs}));
    }
    out
}

#[tokio::test]
async fn a_worker_paused_past_its_heartbeat_loses_nothing() {
    let mut stack = Stack::start(StackOptions { workers: 0, ..StackOptions::default() }).await;
    let mut paused = stack.spawn_worker(WORKER, "paused");
    stack
        .create_dag(json!({"dag_id": "long", "name": "long", "nodes": {
            "first": {"agent_id": "sleep", "params": {"ms": 3000}},
            "second": {"agent_id": "echo", "depends_on": ["first"]}}}))
        .await;
    let id = stack.execute("long", json!({})).await;
    stack.wait_for(&id, WITHIN, |_| true).await;
    tests::eventually(WITHIN, "the paused worker holds the first node", || async {
        stack.nodes(&id).await["first"]["status"] == "running"
    })
    .await;
    let pid = paused.id().to_string();
    let signal = |sig: &str| std::process::Command::new("kill").args([sig, &pid]).status().expect("kill runs");
    assert!(signal("-STOP").success());
    // The broker gives up on the silent connection after missed heartbeats and hands the task
    // to the next worker; the execution completes without the paused one.
    stack.add_worker("healthy");
    let e = stack.wait_finished(&id, WITHIN).await;
    assert_eq!(e["status"], "completed", "{e}");
    assert!(signal("-CONT").success());
    let first = &stack.nodes(&id).await["first"];
    assert_eq!(first["worker_id"], "healthy", "{first}");
    assert!(first["attempts"][0]["deliveries"].as_u64() >= Some(2), "the task was delivered again: {first}");
    stack.audit(WITHIN).await;
    paused.kill().ok();
    let _ = paused.wait();
    stack.shutdown().await;
}

#[tokio::test]
async fn a_coordinator_killed_between_receiving_a_result_and_committing_it_loses_nothing() {
    let mut stack = Stack::start(StackOptions { coordinators: 0, ..StackOptions::default() }).await;
    let mut first = stack.coordinator_process(COORDINATOR).await;
    stack
        .create_dag(json!({"dag_id": "window", "name": "window", "nodes": {
            "first": {"agent_id": "sleep", "params": {"ms": 800}},
            "second": {"agent_id": "echo", "depends_on": ["first"]}}}))
        .await;
    let id = stack.execute("window", json!({})).await;
    tests::eventually(WITHIN, "the first node runs", || async {
        stack.nodes(&id).await["first"]["status"] == "running"
    })
    .await;
    // Hold the inbox table: the result of `first` is received but cannot be committed.
    let db = stack.database().await;
    let mut hold = db.begin().await.expect("begin");
    sqlx::query("LOCK TABLE node_attempts IN ACCESS EXCLUSIVE MODE").execute(&mut *hold).await.expect("lock");
    tests::eventually(WITHIN, "the coordinator is recording the result", || async {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'greenlang-orchestrator'
             AND wait_event_type = 'Lock' AND query ILIKE '%INSERT INTO node_attempts%'",
        )
        .fetch_one(&db)
        .await
        .unwrap_or(0);
        waiting > 0
    })
    .await;
    first.kill().expect("kill -9 the coordinator");
    let _ = first.wait();
    hold.rollback().await.expect("release");
    // The unacknowledged result goes back to the queue; the next coordinator records it.
    let mut second = stack.coordinator_process(COORDINATOR).await;
    let e = stack.wait_finished(&id, WITHIN).await;
    assert_eq!(e["status"], "completed", "{e}");
    let nodes = stack.nodes(&id).await;
    assert_eq!(nodes["first"]["attempt_count"], 1, "the result was not lost, so nothing ran again");
    stack.audit(WITHIN).await;
    second.kill().ok();
    let _ = second.wait();
    stack.shutdown().await;
}

#[tokio::test]
async fn a_coordinator_with_a_skewed_clock_breaks_nothing() {
    // One replica an hour ahead, one on time, both driving the same executions. Leases and their
    // expiry come from the database clock, so the skewed one neither steals live leases nor
    // loses its own; its clock only stamps the executions it accepts.
    // libfaketime preloaded into the coordinator itself, not the `faketime` wrapper: killing the
    // wrapper left its child running after the test (an orphan per run, found in CI).
    assert!(
        std::path::Path::new("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1").exists()
            || std::path::Path::new("/usr/lib/faketime/libfaketime.so.1").exists(),
        "libfaketime is not installed (Debian package `faketime`; scripts/services.sh installs it)"
    );
    let process_env =
        vec![("LD_PRELOAD", "/usr/$LIB/faketime/libfaketime.so.1".to_owned()), ("FAKETIME", "+1h".to_owned())];
    let mut stack = Stack::start(StackOptions { coordinators: 1, process_env, ..StackOptions::default() }).await;
    let mut skewed = tests::KillOnDrop(stack.coordinator_process(COORDINATOR).await);
    let ids = mixed_workload(&stack, 20).await;
    for id in &ids {
        assert_eq!(stack.wait_finished(id, WITHIN).await["status"], "completed", "{id}");
    }
    let clock = stack.execution(&ids[0]).await["clock"].as_str().expect("clock").to_owned();
    let stamped = chrono::DateTime::parse_from_rfc3339(&clock).expect("RFC 3339");
    let ahead = stamped.with_timezone(&chrono::Utc) - chrono::Utc::now();
    assert!(ahead > chrono::Duration::minutes(50), "the skewed replica accepted it (clock {clock})");
    for id in &ids {
        for (name, node) in stack.nodes(id).await {
            let attempts = node["attempts"].as_array().map_or(0, Vec::len) as u64;
            assert_eq!(node["attempt_count"].as_u64(), Some(attempts.max(1)), "{id} {name}: {node}");
        }
    }
    stack.audit(WITHIN).await;
    skewed.kill().ok();
    let _ = skewed.wait();
    stack.shutdown().await;
}

/// A result as a worker publishes it.
fn result_message(topology: &Topology, result: &engine::messages::ResultMessage) -> Outgoing {
    tests::onto_results(topology, Message::Result(result.clone()).to_bytes(), BTreeMap::new())
}

/// A step that cannot reach the database must be tried again. Here the scheduler leases a new
/// execution while the inbox table is locked, so its first step (reading the inbox) runs into
/// `statement_timeout` and fails; nothing was dispatched, so no result will ever arrive to wake
/// it, and its lease goes on being renewed. Seen in CI as every execution submitted just before a
/// PostgreSQL restart staying `pending` for good (`fault_postgres`).
#[tokio::test]
async fn an_execution_whose_first_step_failed_is_stepped_again() {
    let settings = vec![("DB_STATEMENT_TIMEOUT_SECONDS", "1".to_owned()), ("DB_CALL_TIMEOUT_SECONDS", "3".to_owned())];
    let stack = Stack::start(StackOptions { settings, ..StackOptions::default() }).await;
    stack.create_dag(json!({"dag_id": "one", "name": "one", "nodes": {"a": {"agent_id": "echo"}}})).await;
    let db = stack.database().await;
    let mut hold = db.begin().await.expect("begin");
    sqlx::query("LOCK TABLE node_attempts IN ACCESS EXCLUSIVE MODE").execute(&mut *hold).await.expect("lock");
    let id = stack.execute("one", json!({})).await;
    let waiting_step = || async {
        sqlx::query_as::<_, (i32, String)>(
            "SELECT pid, query_start::text FROM pg_stat_activity WHERE application_name = 'greenlang-orchestrator'
             AND wait_event_type = 'Lock' AND query ILIKE '%SELECT result FROM node_attempts%'",
        )
        .fetch_optional(&db)
        .await
        .expect("pg_stat_activity")
    };
    let first_step = std::sync::Mutex::new(None);
    tests::eventually(WITHIN, "the scheduler's first step waits on the inbox table", || async {
        let waiting = waiting_step().await;
        let found = waiting.is_some();
        *first_step.lock().expect("lock") = waiting;
        found
    })
    .await;
    tests::eventually(WITHIN, "statement_timeout ends that step", || async {
        let now = waiting_step().await;
        now.is_none() || now != *first_step.lock().expect("lock")
    })
    .await;
    let e = stack.wait_for(&id, WITHIN, |_| true).await;
    assert!(e["started_at"].is_null(), "the failed step started nothing: {e}");
    hold.rollback().await.expect("release");
    let e = stack.wait_finished(&id, WITHIN).await;
    assert_eq!(e["status"], "completed", "{e}");
    stack.audit(WITHIN).await;
    stack.shutdown().await;
}
