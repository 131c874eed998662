//! Leases are fencing tokens: once another replica has taken an execution over, a write carrying
//! the old epoch matches nothing and changes nothing.

use std::time::Duration;

use coordinator::store::{Created, NewExecution, PgStore, StepWrite, Store};
use serde_json::json;
use shared::dag::{DagSpec, Limits, compile};
use tests::{Stack, StackOptions, eventually};

#[tokio::test]
async fn a_stale_epoch_cannot_write() {
    let stack = Stack::start(StackOptions { coordinators: 0, workers: 0, ..StackOptions::default() }).await;
    let db = PgStore::connect(&stack.settings()).await.expect("connect");
    let spec = DagSpec::from_value(json!({"dag_id": "fenced", "name": "f", "nodes": {"a": {"agent_id": "noop"}}}));
    let dag = compile(spec.expect("spec"), &Limits::default()).expect("valid");
    db.insert_dag("default", &dag).await.expect("store DAG");
    let input = json!({});
    let created = db
        .create_execution(NewExecution {
            tenant: "default",
            dag_id: "fenced",
            dag: &dag,
            input: &input,
            input_hash: shared::provenance::hash_value(&input).as_str(),
            options: &json!({}),
            priority: 0,
            clock: "2026-01-01T00:00:00Z",
            idempotency: None,
        })
        .await
        .expect("create");
    let Created::New(id) = created else { panic!("new execution expected") };

    let first = db.claim("replica-a", Duration::from_millis(300), 10, 50).await.expect("claim");
    assert_eq!(first.len(), 1);
    assert!(
        db.claim("replica-b", Duration::from_secs(30), 10, 50).await.expect("claim").is_empty(),
        "a live lease is not taken"
    );

    let taken = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    eventually(Duration::from_secs(10), "replica-b takes the expired lease", || {
        let (db, taken) = (db.clone(), taken.clone());
        async move {
            let got = db.claim("replica-b", Duration::from_secs(30), 10, 50).await.expect("claim");
            let done = !got.is_empty();
            taken.lock().expect("lock").extend(got);
            done
        }
    })
    .await;
    let second = taken.lock().expect("lock").clone();
    assert_eq!(second[0].execution_id, id);
    assert_eq!(second[0].epoch, first[0].epoch + 1, "each claim bumps the fencing epoch");

    let step = StepWrite { status: "running".into(), ..StepWrite::default() };
    assert!(!db.commit_step("replica-a", first[0], &step).await.expect("write"), "the stale epoch writes nothing");
    assert!(db.renew("replica-a", &first, Duration::from_secs(30)).await.expect("renew").is_empty());
    assert!(db.commit_step("replica-b", second[0], &step).await.expect("write"), "the current holder writes");
    stack.shutdown().await;
}
