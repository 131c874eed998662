//! Leases are fencing tokens: once another replica has taken an execution over, a write carrying
//! the old epoch matches nothing and changes nothing. Every behaviour runs against both stores:
//! `PgStore` on a fresh PostgreSQL database and `SqliteStore` in memory.

use std::sync::Mutex;
use std::time::Duration;

use coordinator::store::{Created, NewExecution, StepWrite, Store, text};
use engine::dag::{DagSpec, Limits, compile};
use engine::state::ExecutionStatus;
use serde_json::json;
use tests::eventually;

tests::on_each_store!(a_stale_epoch_cannot_write, a_live_lease_is_renewed_only_by_its_holder);

/// Stores a one-node DAG `dag_id` and submits one execution of it.
async fn one_execution(db: &dyn Store, dag_id: &str) -> uuid::Uuid {
    let spec = DagSpec::from_value(json!({"dag_id": dag_id, "name": "f", "nodes": {"a": {"agent_id": "noop"}}}));
    let dag = compile(spec.expect("spec"), &Limits::default()).expect("valid");
    db.insert_dag("default", &dag).await.expect("store DAG");
    let input = json!({});
    let created = db
        .create_execution(NewExecution {
            tenant: "default",
            dag_id,
            dag: &dag,
            input: &input,
            input_hash: engine::provenance::hash_value(&input).as_str(),
            options: &json!({}),
            priority: 0,
            clock: "2026-01-01T00:00:00Z",
            idempotency: None,
        })
        .await
        .expect("create");
    let Created::New(id) = created else { panic!("new execution expected, got {created:?}") };
    id
}

async fn a_stale_epoch_cannot_write(db: &dyn Store) {
    let id = one_execution(db, "fenced").await;

    let first = db.claim("replica-a", Duration::from_millis(300), 10, 50).await.expect("claim");
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].execution_id, id);
    assert!(
        db.claim("replica-b", Duration::from_secs(30), 10, 50).await.expect("claim").is_empty(),
        "a live lease is not taken"
    );

    let taken = &Mutex::new(Vec::new());
    eventually(Duration::from_secs(10), "replica-b takes the expired lease", move || async move {
        let got = db.claim("replica-b", Duration::from_secs(30), 10, 50).await.expect("claim");
        let done = !got.is_empty();
        taken.lock().expect("lock").extend(got);
        done
    })
    .await;
    let second = taken.lock().expect("lock").clone();
    assert_eq!(second[0].execution_id, id);
    assert_eq!(second[0].epoch, first[0].epoch + 1, "each claim bumps the fencing epoch");

    let step = StepWrite { status: engine::state::ExecutionStatus::Running, ..StepWrite::default() };
    assert!(!db.commit_step("replica-a", first[0], &step).await.expect("write"), "the stale epoch writes nothing");
    let row = db.execution("default", id).await.expect("read").expect("exists");
    assert_eq!(row.status, ExecutionStatus::Pending, "the refused step changed nothing");
    assert!(db.renew("replica-a", &first, Duration::from_secs(30)).await.expect("renew").is_empty());
    assert!(db.commit_step("replica-b", second[0], &step).await.expect("write"), "the current holder writes");
    let row = db.execution("default", id).await.expect("read").expect("exists");
    assert_eq!((text(&row.status).as_str(), row.lease_owner.as_deref()), ("running", Some("replica-b")));
}

async fn a_live_lease_is_renewed_only_by_its_holder(db: &dyn Store) {
    let id = one_execution(db, "renewed").await;
    let held = db.claim("replica-a", Duration::from_secs(30), 10, 50).await.expect("claim");
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].epoch, 1, "the first claim of an execution is epoch 1");

    let ttl = Duration::from_secs(30);
    assert_eq!(db.renew("replica-a", &held, ttl).await.expect("renew"), held, "the holder renews");
    assert!(db.renew("replica-b", &held, ttl).await.expect("renew").is_empty(), "another owner does not");
    let wrong_epoch = [coordinator::store::Lease { execution_id: id, epoch: held[0].epoch + 1 }];
    assert!(db.renew("replica-a", &wrong_epoch, ttl).await.expect("renew").is_empty(), "nor another epoch");
    assert!(db.lease_live(id).await.expect("live"));

    assert_eq!(db.release_all("replica-a").await.expect("release"), 1);
    assert!(!db.lease_live(id).await.expect("live"), "a released lease is not live");
    assert!(db.renew("replica-a", &held, ttl).await.expect("renew").is_empty(), "a released lease is not renewed");
    assert_eq!(db.release_all("replica-a").await.expect("release"), 0, "nothing left to release");
    let next = db.claim("replica-b", ttl, 10, 50).await.expect("claim");
    assert_eq!(next, vec![coordinator::store::Lease { execution_id: id, epoch: 2 }], "taken over at once");

    // An expired lease is not renewed either, even by its holder.
    let short = db.claim("replica-c", Duration::from_millis(1), 10, 50).await.expect("claim");
    assert!(short.is_empty(), "replica-b's lease is live");
    db.release_all("replica-b").await.expect("release");
    let short = db.claim("replica-c", Duration::from_millis(20), 10, 50).await.expect("claim");
    assert_eq!(short.len(), 1);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(db.renew("replica-c", &short, ttl).await.expect("renew").is_empty(), "an expired lease stays expired");
    assert!(!db.lease_live(id).await.expect("live"));
}
