//! Fault matrix: RabbitMQ restarted under load, first its application (`rabbitmqctl stop_app` /
//! `start_app`), then the whole node (`rabbitmqctl stop` / `rabbitmq-server -detached`), with 200
//! unrelated quorum queues on the broker (a production broker holds hundreds, and they make a
//! restart slow: the case that once hung this test, issue 25). Every process reconnects by
//! itself; the auditor then finds nothing lost, duplicated or stuck.
//! One test in its own binary: it stops the broker every other test uses.

use std::time::{Duration, Instant};

use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable};
use tests::{AMQP, Stack, StackOptions, mixed_workload};

const WITHIN: Duration = Duration::from_secs(180);
const UNRELATED_QUEUES: usize = 200;

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
        assert!(Instant::now() < deadline, "RabbitMQ did not come back within {within:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Durable quorum queues that belong to nobody, deleted again when dropped (even if the test
/// fails; a `scripts/sweep-test-leftovers.sh` run catches a killed test's).
struct UnrelatedQueues(Vec<String>);

impl UnrelatedQueues {
    async fn declare(n: usize) -> Self {
        let tag = &uuid::Uuid::new_v4().simple().to_string()[..12];
        let names: Vec<String> = (0..n).map(|i| format!("gltest.{tag}.unrelated.{i}")).collect();
        let declared = tokio::time::timeout(WITHIN, async {
            let conn = lapin::Connection::connect(AMQP, lapin::ConnectionProperties::default()).await?;
            let channel = conn.create_channel().await?;
            let mut args = FieldTable::default();
            args.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
            for name in &names {
                let options = QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() };
                channel.queue_declare(name.as_str().into(), options, args.clone()).await?;
            }
            conn.close(200, "declared".into()).await
        })
        .await;
        assert!(matches!(declared, Ok(Ok(()))), "declaring {n} quorum queues: {declared:?}");
        Self(names)
    }
}

impl Drop for UnrelatedQueues {
    fn drop(&mut self) {
        let names = std::mem::take(&mut self.0);
        let deleting = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            runtime.block_on(async {
                let _ = tokio::time::timeout(WITHIN, async {
                    let conn = lapin::Connection::connect(AMQP, lapin::ConnectionProperties::default()).await?;
                    let channel = conn.create_channel().await?;
                    for name in &names {
                        channel.queue_delete(name.as_str().into(), QueueDeleteOptions::default()).await?;
                    }
                    conn.close(200, "deleted".into()).await
                })
                .await;
            });
        });
        let _ = deleting.join();
    }
}

#[tokio::test]
async fn rabbitmq_restarted_mid_run_loses_nothing() {
    let started = Instant::now();
    let unrelated = UnrelatedQueues::declare(UNRELATED_QUEUES).await;
    eprintln!("{UNRELATED_QUEUES} unrelated quorum queues declared in {:?}", started.elapsed());
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
    let restart = Instant::now();
    run("rabbitmqctl", &["stop"]);
    run("rabbitmq-server", &["-detached"]);
    wait_broker(WITHIN);
    eprintln!("full broker restart took {:?}", restart.elapsed());
    for id in &second {
        assert_eq!(stack.wait_finished(id, WITHIN).await["status"], "completed", "{id}");
    }
    stack.audit(WITHIN).await;
    stack.shutdown().await;
    drop(unrelated);
    eprintln!("whole test {:?}", started.elapsed());
}
