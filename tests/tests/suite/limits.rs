//! The concurrency limit holds across coordinator replicas: executions over it wait as `queued`
//! and are granted slots in submission order.

use serde_json::json;
use tests::{RunningPeak, assert_limited_run_ends_well, limited_stack};

#[tokio::test]
async fn two_hundred_executions_never_exceed_ten_running_and_start_in_order() {
    let stack = limited_stack(Vec::new()).await;
    let db = stack.database().await;
    let sampler = RunningPeak::start(db.clone());
    let mut ids = Vec::new();
    for _ in 0..200 {
        ids.push(stack.execute("limited", json!({})).await);
    }
    let (_, body) = stack.call(reqwest::Method::GET, "/executions?status=queued&limit=1", None).await;
    assert_eq!(body["count"], 1, "executions over the limit wait as queued");
    assert_limited_run_ends_well(&stack, &ids, sampler).await;
    stack.shutdown().await;
}
