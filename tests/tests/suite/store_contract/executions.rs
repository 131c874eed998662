//! The contract of `ExecutionStore`: idempotent submission, cancel and resume, checkpoints,
//! listing, the summary figures.

// The contract's fixtures and imports.
use super::*;

pub(super) async fn idempotent_submissions(db: &dyn Store) {
    let d = chain("keyed", "noop");
    db.insert_dag(TENANT, &d).await.expect("insert");
    let Created::New(id) = submit(db, "keyed", &d, Some(("key-1", "body-a"))).await.expect("create") else {
        panic!("the first submission is new")
    };
    assert_eq!(submit(db, "keyed", &d, Some(("key-1", "body-a"))).await.expect("again"), Created::Existing(id));
    match submit(db, "keyed", &d, Some(("key-1", "body-b"))).await {
        Err(StoreError::Conflict(what)) => assert!(what.contains("key-1"), "{what}"),
        other => panic!("another body under the same key is a conflict, got {other:?}"),
    }
    let other = submit_new(db, "keyed", &d).await;
    assert_ne!(other, id, "without a key every submission is new");
    assert_eq!(db.status_counts().await.expect("counts"), HashMap::from([("pending".to_owned(), 2)]));

    let row = db.execution(TENANT, id).await.expect("read").expect("exists");
    assert_eq!((row.dag_id.as_str(), row.dag_hash.clone()), ("keyed", d.hash().to_string()));
    assert_eq!(
        (row.input_data.clone(), row.input_hash.as_str(), row.clock.as_str()),
        (json!({"n": 1}), "input-hash", "2026-01-01T00:00:00Z")
    );
    assert_eq!((row.total_nodes, row.completed_nodes, row.lease_epoch, row.cancel_requested), (2, 0, 0, false));
    assert_eq!((row.lease_owner, row.started_at, row.completed_at, row.halt), (None, None, None, None));
    assert!(db.execution("tenant-2", id).await.expect("read").is_none(), "executions are per tenant");

    let nodes = db.nodes(id).await.expect("nodes");
    let summary: Vec<_> =
        nodes.iter().map(|n| (n.node_id.as_str(), n.level_index, text(&n.status), n.attempt)).collect();
    assert_eq!(summary, [("a", 0, "pending".to_owned(), 0), ("b", 1, "pending".to_owned(), 0)]);
    assert_eq!((nodes[1].agent_id.as_str(), nodes[1].outputs.clone()), ("noop", None));
}

pub(super) async fn cancel_requests(db: &dyn Store) {
    let id = chain_execution(db, "cancelled").await;
    assert!(db.request_cancel(TENANT, id).await.expect("cancel"));
    assert!(db.request_cancel(TENANT, id).await.expect("cancel"), "asking twice still finds it live");
    assert!(!db.request_cancel("tenant-2", id).await.expect("cancel"), "another tenant's execution");
    assert!(!db.request_cancel(TENANT, Uuid::now_v7()).await.expect("cancel"), "unknown");
    assert_eq!(db.inbox(id).await.expect("inbox"), (vec![], true));
    assert!(db.execution(TENANT, id).await.expect("read").expect("exists").cancel_requested);
    assert_eq!(db.with_pending_inbox(&[id]).await.expect("pending"), [id], "a cancel to apply");

    let lease = claim_one(db, "replica-a", TTL, id).await;
    let halting = StepWrite { status: ExecutionStatus::Running, halt: Some(Halt::Cancel), ..StepWrite::default() };
    assert!(db.commit_step("replica-a", lease, &halting).await.expect("step"));
    assert!(db.with_pending_inbox(&[id]).await.expect("pending").is_empty(), "the cancel is being applied");
    let done = StepWrite { status: ExecutionStatus::Cancelled, finished: true, ..StepWrite::default() };
    assert!(db.commit_step("replica-a", lease, &done).await.expect("step"));
    assert!(!db.request_cancel(TENANT, id).await.expect("cancel"), "a finished execution is not cancelled");
}

/// An execution that failed at node `a` (with a checkpoint of `b`), its lease still held.
pub(super) async fn failed_execution(db: &dyn Store, dag_id: &str) -> Uuid {
    let id = chain_execution(db, dag_id).await;
    let lease = claim_one(db, "replica-a", TTL, id).await;
    let failed = NodeUpdate {
        status: NodeStatus::Failed,
        dispatched: false,
        error_type: Some("Boom".into()),
        error: Some("it broke".into()),
        ..running("a", 2)
    };
    let step = StepWrite {
        status: ExecutionStatus::Failed,
        finished: true,
        failed_nodes: 1,
        error: Some("node a failed".into()),
        provenance_chain_hash: Some("chain".into()),
        nodes: vec![failed],
        checkpoints: vec![checkpoint("b", json!({"x": 1}), "hash-b", 1)],
        ..StepWrite::default()
    };
    assert!(db.commit_step("replica-a", lease, &step).await.expect("step"));
    id
}

pub(super) async fn resume_is_a_compare_and_set(db: &dyn Store) {
    let id = failed_execution(db, "resumed").await;
    let other = failed_execution(db, "raced").await;
    let row = db.execution(TENANT, id).await.expect("read").expect("exists");
    assert_eq!((text(&row.status).as_str(), row.failed_nodes, row.lease_epoch), ("failed", 1, 1));
    assert!(db.resume(&row, &["a".into(), "b".into()], NodeCounts::default()).await.expect("resume"));
    let after = db.execution(TENANT, id).await.expect("read").expect("exists");
    assert_eq!((text(&after.status).as_str(), after.failed_nodes, after.lease_owner.clone()), ("pending", 0, None));
    assert_eq!((after.completed_at, after.error.clone(), after.provenance_chain_hash.clone()), (None, None, None));
    assert!(!db.lease_live(id).await.expect("live"));
    let a = db.nodes(id).await.expect("nodes").remove(0);
    assert_eq!(
        (text(&a.status).as_str(), a.attempt, a.attempt_base, a.error.clone(), a.started_at),
        ("pending", 2, 2, None, None)
    );
    assert!(db.checkpoints(id).await.expect("checkpoints").is_empty(), "re-run nodes lose their checkpoints");
    assert!(!db.resume(&row, &["a".into()], NodeCounts::default()).await.expect("resume"), "the row changed meanwhile");

    // A checkpoint deletion bumps the epoch, so a resume that read the row before it fails.
    let read = db.execution(TENANT, other).await.expect("read").expect("exists");
    assert_eq!(db.delete_checkpoints(TENANT, other).await.expect("delete"), Some(1));
    assert!(!db.resume(&read, &["a".into()], NodeCounts::default()).await.expect("resume"));
    assert_eq!(status_of(db.execution(TENANT, other).await.expect("read")), "failed");
}

pub(super) async fn checkpoints_are_kept_while_running(db: &dyn Store) {
    let id = chain_execution(db, "checkpointed").await;
    assert_eq!(db.delete_checkpoints(TENANT, id).await.expect("delete"), None, "pending");
    let lease = claim_one(db, "replica-a", TTL, id).await;
    let step = StepWrite {
        status: ExecutionStatus::Running,
        checkpoints: vec![
            checkpoint("b", json!({"v": [1, 2]}), "hash-b", 2),
            checkpoint("a", json!("text"), "hash-a", 1),
        ],
        ..StepWrite::default()
    };
    assert!(db.commit_step("replica-a", lease, &step).await.expect("step"));
    let rows = db.checkpoints(id).await.expect("checkpoints");
    let summary: Vec<_> = rows
        .iter()
        .map(|c| (c.node_id.as_str(), c.status, c.outputs.clone(), c.output_hash.as_str(), c.attempt_count))
        .collect();
    assert_eq!(
        summary,
        [
            ("a", NodeStatus::Completed, json!("text"), "hash-a", 1),
            ("b", NodeStatus::Completed, json!({"v": [1, 2]}), "hash-b", 2),
        ]
    );
    assert_eq!(db.nodes(id).await.expect("nodes")[1].outputs, Some(json!({"v": [1, 2]})));
    assert_eq!(db.delete_checkpoints(TENANT, id).await.expect("delete"), None, "running");
    assert_eq!(db.checkpoints(id).await.expect("checkpoints").len(), 2);

    let done =
        StepWrite { status: ExecutionStatus::Completed, finished: true, completed_nodes: 2, ..StepWrite::default() };
    assert!(db.commit_step("replica-a", lease, &done).await.expect("step"));
    assert_eq!(db.delete_checkpoints(TENANT, id).await.expect("delete"), Some(2));
    assert!(db.checkpoints(id).await.expect("checkpoints").is_empty());
    let row = db.execution(TENANT, id).await.expect("read").expect("exists");
    assert_eq!(row.lease_epoch, lease.epoch + 1, "the deletion bumped the epoch");
    assert!(!db.commit_step("replica-a", lease, &done).await.expect("step"), "which fences the old lease");
    assert_eq!(db.delete_checkpoints(TENANT, id).await.expect("delete"), Some(0));
}

pub(super) async fn executions_are_listed_newest_first(db: &dyn Store) {
    let one = chain("one", "noop");
    let two = chain("two", "noop");
    db.insert_dag(TENANT, &one).await.expect("insert");
    db.insert_dag(TENANT, &two).await.expect("insert");
    let mut ids = Vec::new();
    for (dag_id, d) in [("one", &one), ("two", &two), ("one", &one), ("one", &one), ("two", &two)] {
        ids.push(submit_new(db, dag_id, d).await);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let [e1, e2, e3, e4, e5] = ids[..] else { panic!("five executions") };
    let first = db.claim("replica-a", TTL, 1, 100).await.expect("claim");
    assert_eq!(first.iter().map(|l| l.execution_id).collect::<Vec<_>>(), [e1]);
    let list = |dag_id: Option<&str>, status: Option<&str>, since, after, limit| ExecutionFilter {
        tenant: TENANT.into(),
        dag_id: dag_id.map(str::to_owned),
        status: status.map(|s| from_text(s).expect("a status name")),
        since,
        after,
        limit,
    };
    let ids_of =
        |rows: Vec<coordinator::store::ExecutionRow>| rows.into_iter().map(|r| r.execution_id).collect::<Vec<_>>();

    let all = db.list_executions(&list(None, None, None, None, 50)).await.expect("list");
    assert_eq!(ids_of(all.clone()), [e5, e4, e3, e2, e1]);
    let at = |id: Uuid| all.iter().find(|r| r.execution_id == id).map(|r| r.submitted_at).expect("listed");
    assert_eq!(ids_of(db.list_executions(&list(Some("one"), None, None, None, 50)).await.expect("list")), [e4, e3, e1]);
    assert_eq!(ids_of(db.list_executions(&list(None, Some("pending"), None, None, 50)).await.expect("list")), [e1]);
    assert_eq!(
        ids_of(db.list_executions(&list(Some("two"), Some("queued"), None, None, 50)).await.expect("list")),
        [e5, e2]
    );
    assert_eq!(
        ids_of(db.list_executions(&list(None, None, Some(at(e3)), None, 50)).await.expect("list")),
        [e5, e4, e3]
    );

    let mut pages = Vec::new();
    let mut after = None;
    loop {
        let page = db.list_executions(&list(None, None, None, after, 2)).await.expect("list");
        let Some(last) = page.last() else { break };
        after = Some((last.submitted_at, last.execution_id));
        pages.push(ids_of(page));
    }
    assert_eq!(pages, [vec![e5, e4], vec![e3, e2], vec![e1]], "keyset pages cover everything once");
    let other_tenant = ExecutionFilter { tenant: "tenant-2".into(), ..list(None, None, None, None, 50) };
    assert!(db.list_executions(&other_tenant).await.expect("list").is_empty());
    assert_eq!(db.status_counts().await.expect("counts"), HashMap::from([("pending".into(), 1), ("queued".into(), 4)]));

    let summary = db.summary(TENANT).await.expect("summary");
    assert_eq!((summary["total_executions"].clone(), summary["queued_executions"].clone()), (json!(5), json!(5)));
    assert_eq!(
        (summary["active_executions"].clone(), summary["avg_execution_duration_ms"].clone()),
        (json!(0), Value::Null)
    );
}

/// Finishes execution `id` of the `timed` DAG through two steps, with node durations in ms.
pub(super) async fn timed_run(db: &dyn Store, id: Uuid, durations: &[(&str, i64)]) {
    let lease = claim_one(db, "replica-a", TTL, id).await;
    let start = StepWrite { status: ExecutionStatus::Running, nodes: vec![running("a", 1)], ..StepWrite::default() };
    assert!(db.commit_step("replica-a", lease, &start).await.expect("step"));
    tokio::time::sleep(Duration::from_millis(20)).await;
    let nodes = durations
        .iter()
        .map(|(node, ms)| NodeUpdate {
            status: NodeStatus::Completed,
            dispatched: false,
            duration_ms: Some(*ms),
            ..running(node, 1)
        })
        .collect();
    let done = StepWrite {
        status: ExecutionStatus::Completed,
        finished: true,
        completed_nodes: 2,
        nodes,
        ..StepWrite::default()
    };
    assert!(db.commit_step("replica-a", lease, &done).await.expect("step"));
}

pub(super) async fn summary_figures(db: &dyn Store) {
    let d = chain("timed", "noop");
    db.insert_dag(TENANT, &d).await.expect("insert");
    let first = submit_new(db, "timed", &d).await;
    timed_run(db, first, &[("a", 100), ("b", 200)]).await;
    let second = submit_new(db, "timed", &d).await;
    timed_run(db, second, &[("a", 1000)]).await;
    submit_new(db, "timed", &d).await;

    let mut total_ms = 0.0;
    for id in [first, second] {
        let row = db.execution(TENANT, id).await.expect("read").expect("exists");
        let took = row.completed_at.expect("finished") - row.started_at.expect("started");
        total_ms += took.num_microseconds().expect("short") as f64 / 1000.0;
    }
    let summary = db.summary(TENANT).await.expect("summary");
    assert_eq!(summary["executions_by_status"], json!({"completed": 2, "pending": 1}));
    assert_eq!((summary["total_executions"].clone(), summary["queued_executions"].clone()), (json!(3), json!(1)));
    let avg = summary["avg_execution_duration_ms"].as_f64().expect("an average");
    assert!(avg >= 20.0, "each run took two steps 20 ms apart: {avg}");
    assert!((avg - total_ms / 2.0).abs() < 1e-6, "to the microsecond: {avg} vs {}", total_ms / 2.0);
    // percentile_cont(0.99) over [100, 200, 1000]: 200 + 0.98 × 800.
    let p99 = summary["p99_node_duration_ms"].as_f64().expect("a percentile");
    assert!((p99 - 984.0).abs() < 1e-9, "{p99}");
    assert_eq!(
        summary["slowest_nodes"],
        json!([
            {"dag_id": "timed", "node_id": "a", "avg_duration_ms": 550.0, "samples": 2},
            {"dag_id": "timed", "node_id": "b", "avg_duration_ms": 200.0, "samples": 1},
        ])
    );
    let empty = db.summary("tenant-2").await.expect("summary");
    assert_eq!((empty["p99_node_duration_ms"].clone(), empty["slowest_nodes"].clone()), (Value::Null, json!([])));
}
