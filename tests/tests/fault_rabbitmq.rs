//! Fault matrix: RabbitMQ restarted under load, first its application (`rabbitmqctl stop_app` /
//! `start_app`), then the whole node (`rabbitmqctl stop` / `rabbitmq-server -detached`). Every
//! process reconnects by itself; the auditor then finds nothing lost, duplicated or stuck.
//! One test in its own binary: it stops the broker every other test uses.

use std::time::{Duration, Instant};

use tests::{Stack, StackOptions, mixed_workload};

const WITHIN: Duration = Duration::from_secs(180);

fn run(program: &str, args: &[&str]) {
    let status = std::process::Command::new(program).args(args).status().expect("runs");
    assert!(status.success(), "{program} {args:?} failed");
}

fn wait_broker(within: Duration) {
    let deadline = Instant::now() + within;
    while std::process::Command::new("rabbitmqctl")
        .args(["await_startup"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map_or(true, |s| !s.success())
    {
        assert!(Instant::now() < deadline, "RabbitMQ did not come back");
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[tokio::test]
async fn rabbitmq_restarted_mid_run_loses_nothing() {
    let stack = Stack::start(StackOptions::default()).await;
    let first = mixed_workload(&stack, 10).await;
    stack.wait_for(&first[0], WITHIN, |e| e["completed_nodes"].as_i64() >= Some(1)).await;
    run("rabbitmqctl", &["stop_app"]);
    let more = stack.execute("mixed", serde_json::json!({"during": "outage"})).await;
    run("rabbitmqctl", &["start_app"]);
    wait_broker(WITHIN);
    for id in first.iter().chain([&more]) {
        assert_eq!(stack.wait_finished(id, WITHIN).await["status"], "completed", "{id}");
    }
    stack.audit(WITHIN).await;

    let second = mixed_workload(&stack, 10).await;
    run("rabbitmqctl", &["stop"]);
    run("rabbitmq-server", &["-detached"]);
    wait_broker(WITHIN);
    for id in &second {
        assert_eq!(stack.wait_finished(id, WITHIN).await["status"], "completed", "{id}");
    }
    stack.audit(WITHIN).await;
    stack.shutdown().await;
}
