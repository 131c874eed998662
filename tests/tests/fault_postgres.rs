//! Fault matrix: PostgreSQL under load, first this test's backends terminated
//! (`pg_terminate_backend`), then the whole server restarted in immediate mode (crash recovery).
//! Pools reconnect by themselves; the auditor then finds nothing lost, duplicated or stuck.
//! One test in its own binary: the restart cuts every other test's connections too.

use std::time::Duration;

use tests::{Stack, StackOptions, mixed_workload};

const WITHIN: Duration = Duration::from_secs(180);

#[tokio::test]
async fn postgres_backends_terminated_and_server_restarted_mid_run_lose_nothing() {
    let stack = Stack::start(StackOptions::default()).await;
    let first = mixed_workload(&stack, 10).await;
    stack.wait_for(&first[0], WITHIN, |e| e["completed_nodes"].as_i64() >= Some(1)).await;
    let admin = sqlx::PgPool::connect(&format!("{}/postgres", tests::POSTGRES)).await.expect("admin");
    let killed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
    )
    .bind(&stack.database)
    .fetch_all(&admin)
    .await
    .expect("terminate");
    assert!(!killed.is_empty(), "the coordinator had connections to cut");
    admin.close().await;
    for id in &first {
        assert_eq!(stack.wait_finished(id, WITHIN).await["status"], "completed", "{id}");
    }
    stack.audit(WITHIN).await;

    let second = mixed_workload(&stack, 10).await;
    let version = std::fs::read_dir("/etc/postgresql")
        .expect("Debian PostgreSQL layout")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .next()
        .expect("a cluster");
    let status = std::process::Command::new("pg_ctlcluster")
        .args(["--skip-systemctl-redirect", &version, "main", "restart", "-m", "immediate"])
        .status()
        .expect("pg_ctlcluster runs");
    assert!(status.success(), "restart failed");
    tests::eventually(WITHIN, "PostgreSQL accepts connections again", || async {
        sqlx::PgPool::connect(&format!("{}/postgres", tests::POSTGRES)).await.is_ok()
    })
    .await;
    for id in &second {
        assert_eq!(stack.wait_finished(id, WITHIN).await["status"], "completed", "{id}");
    }
    stack.audit(WITHIN).await;
    stack.shutdown().await;
}
