//! The concurrency limit holds across coordinator replicas: executions over it wait as `queued`
//! and are granted slots in submission order.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use serde_json::json;
use tests::{Stack, StackOptions};

#[tokio::test]
async fn two_hundred_executions_never_exceed_ten_running_and_start_in_order() {
    let stack = Stack::start(StackOptions {
        coordinators: 2,
        workers: 2,
        worker_concurrency: 8,
        settings: vec![("MAX_CONCURRENT_EXECUTIONS", "10".into())],
        ..StackOptions::default()
    })
    .await;
    stack
        .create_dag(json!({"dag_id": "limited", "name": "l", "nodes": {
            "a": {"agent_id": "sleep", "params": {"ms": 20}},
            "b": {"agent_id": "sleep", "params": {"ms": 20}, "depends_on": ["a"]}}}))
        .await;
    let db = stack.database().await;
    let (peak, done) = (Arc::new(AtomicI64::new(0)), Arc::new(AtomicBool::new(false)));
    let sampler = {
        let (db, peak, done) = (db.clone(), peak.clone(), done.clone());
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                let running: i64 = sqlx::query_scalar("SELECT count(*) FROM dag_executions WHERE status = 'running'")
                    .fetch_one(&db)
                    .await
                    .unwrap_or(0);
                peak.fetch_max(running, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let mut ids = Vec::new();
    for _ in 0..200 {
        ids.push(stack.execute("limited", json!({})).await);
    }
    let (_, body) = stack.call(reqwest::Method::GET, "/executions?status=queued&limit=1", None).await;
    assert_eq!(body["count"], 1, "executions over the limit wait as queued");
    for id in &ids {
        let e = stack.wait_finished(id, Duration::from_secs(240)).await;
        assert_eq!(e["status"], "completed", "{e}");
    }
    done.store(true, Ordering::Relaxed);
    sampler.await.expect("sampler");
    let peak = peak.load(Ordering::Relaxed);
    assert!((1..=10).contains(&peak), "at most 10 running at any sampled moment, saw {peak}");
    let order: Vec<(uuid::Uuid, i64)> =
        sqlx::query_as("SELECT execution_id, slot_seq FROM dag_executions ORDER BY submit_seq")
            .fetch_all(&db)
            .await
            .expect("order");
    let slots: Vec<i64> = order.iter().map(|(_, s)| *s).collect();
    assert!(slots.windows(2).all(|w| w[0] < w[1]), "slots are granted in submission order: {slots:?}");
    stack.shutdown().await;
}
