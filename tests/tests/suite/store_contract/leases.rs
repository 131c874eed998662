//! The contract of `LeaseStore`: claims within room and limits, takeover order, fenced steps.

// The contract's fixtures and imports.
use super::*;

pub(super) async fn claims_respect_room_and_limits(db: &dyn Store) {
    let capped = dag(json!({"dag_id": "capped", "name": "c", "max_concurrent_executions": 1,
                            "nodes": {"a": {"agent_id": "noop"}}}));
    let free = chain("free", "noop");
    db.insert_dag(TENANT, &capped).await.expect("insert");
    db.insert_dag(TENANT, &free).await.expect("insert");
    let c1 = submit_new(db, "capped", &capped).await;
    let c2 = submit_new(db, "capped", &capped).await;
    let f1 = submit_new(db, "free", &free).await;
    let f2 = submit_new(db, "free", &free).await;
    let f3 = submit_new(db, "free", &free).await;
    let status = move |id: Uuid| async move { status_of(db.execution(TENANT, id).await.expect("read")) };

    // Three slots: c1 (the DAG's only one), c2 skipped, f1 and f2; f3 finds no slot.
    let a = db.claim("replica-a", TTL, 10, 3).await.expect("claim");
    assert_eq!(a.iter().map(|l| (l.execution_id, l.epoch)).collect::<Vec<_>>(), [(c1, 1), (f1, 1), (f2, 1)]);
    for (id, expected) in [(c1, "pending"), (c2, "queued"), (f1, "pending"), (f2, "pending"), (f3, "queued")] {
        assert_eq!(status(id).await, expected);
    }
    assert_eq!(backlog_of(db).await, (2, 0));
    assert!(db.claim("replica-b", TTL, 10, 3).await.expect("claim").is_empty(), "claimed slots count as used");

    // Handed back: `room` bounds a claim, in submission order.
    assert_eq!(db.release_all("replica-a").await.expect("release"), 3);
    let b = db.claim("replica-b", TTL, 1, 10).await.expect("claim");
    assert_eq!(b, [Lease { execution_id: c1, epoch: 2 }]);
    assert_eq!((status(f1).await, status(f2).await), ("queued".to_owned(), "queued".to_owned()));
    let b = db.claim("replica-b", TTL, 10, 10).await.expect("claim");
    assert_eq!(b.iter().map(|l| l.execution_id).collect::<Vec<_>>(), [f1, f2, f3], "c2 still waits for c1");
    // A claim starts nothing by itself: the granted ones keep their status until their first step.
    assert_eq!(db.status_counts().await.expect("counts"), HashMap::from([("pending".into(), 1), ("queued".into(), 4)]));
    assert!(db.claim("replica-c", TTL, 10, 100).await.expect("claim").is_empty());
}

pub(super) async fn started_executions_are_taken_over_first(db: &dyn Store) {
    let first = chain_execution(db, "started").await;
    let lease = claim_one(db, "replica-a", Duration::from_millis(200), first).await;
    let step = StepWrite { status: ExecutionStatus::Running, nodes: vec![running("a", 1)], ..StepWrite::default() };
    assert!(db.commit_step("replica-a", lease, &step).await.expect("step"));
    let waiting = submit_new(db, "started", &chain("started", "noop")).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(!db.lease_live(first).await.expect("live"), "the lease expired");
    // No slot is free, yet a started execution is taken over: it holds its slot already.
    let taken = db.claim("replica-b", TTL, 10, 1).await.expect("claim");
    assert_eq!(taken, [Lease { execution_id: first, epoch: 2 }]);
    assert_eq!(status_of(db.execution(TENANT, waiting).await.expect("read")), "queued");
    assert_eq!(
        db.execution(TENANT, first).await.expect("read").expect("exists").lease_owner.as_deref(),
        Some("replica-b")
    );
}

pub(super) async fn steps_are_fenced(db: &dyn Store) {
    let id = chain_execution(db, "fenced").await;
    let lease = claim_one(db, "replica-a", TTL, id).await;
    let step = StepWrite {
        status: ExecutionStatus::Running,
        completed_nodes: 1,
        nodes: vec![NodeUpdate { deadline_ms: Some(1_796_400_000_123), ..running("b", 1) }],
        outbox: vec![message(1)],
        ..StepWrite::default()
    };
    let stale = Lease { execution_id: id, epoch: lease.epoch + 1 };
    assert!(!db.commit_step("replica-a", stale, &step).await.expect("step"), "another epoch writes nothing");
    assert!(!db.commit_step("replica-b", lease, &step).await.expect("step"), "another owner writes nothing");
    let row = db.execution(TENANT, id).await.expect("read").expect("exists");
    assert_eq!((text(&row.status).as_str(), row.completed_nodes, row.started_at), ("pending", 0, None));
    assert!(db.nodes(id).await.expect("nodes").iter().all(|n| n.status == NodeStatus::Pending));
    assert_eq!(backlog_of(db).await, (0, 0), "no outbox row");

    assert!(db.commit_step("replica-a", lease, &step).await.expect("step"), "the holder writes");
    let row = db.execution(TENANT, id).await.expect("read").expect("exists");
    assert_eq!((text(&row.status).as_str(), row.completed_nodes, row.completed_at), ("running", 1, None));
    let started = row.started_at.expect("started now");
    let nodes = db.nodes(id).await.expect("nodes");
    let b = &nodes[1];
    assert_eq!((b.node_id.as_str(), text(&b.status).as_str(), b.attempt), ("b", "running", 1));
    assert_eq!(b.deadline_ms, Some(1_796_400_000_123), "the running attempt's deadline is kept");
    assert_eq!(
        (b.started_at, b.completed_at, b.trace_id.as_deref()),
        (Some(started), None, Some("0af7651916cd43dd8448eb211c80319c"))
    );
    assert_eq!(backlog_of(db).await, (0, 1));
    worker_timing_is_stored_as_given(db, id, lease, started).await;
    an_expired_lease_writes_nothing(db, &step).await;
}

/// Worker timing is stored as the instant it names; `finished` sets completed_at.
async fn worker_timing_is_stored_as_given(
    db: &dyn Store,
    id: Uuid,
    lease: Lease,
    started: chrono::DateTime<chrono::Utc>,
) {
    let done = NodeUpdate {
        status: NodeStatus::Completed,
        dispatched: false,
        started_at: Some("2026-01-01T10:00:00.123456+02:00".into()),
        completed_at: Some("2026-01-01T08:00:01.5Z".into()),
        duration_ms: Some(1377),
        worker_id: Some("w7".into()),
        output_hash: Some("out".into()),
        trace_id: None,
        deadline_ms: None,
        ..running("b", 1)
    };
    let last = StepWrite {
        status: ExecutionStatus::Completed,
        finished: true,
        completed_nodes: 2,
        error: Some("kept".into()),
        nodes: vec![done],
        ..StepWrite::default()
    };
    assert!(db.commit_step("replica-a", lease, &last).await.expect("step"));
    let row = db.execution(TENANT, id).await.expect("read").expect("exists");
    assert_eq!(
        (text(&row.status).as_str(), row.started_at, row.error.as_deref()),
        ("completed", Some(started), Some("kept"))
    );
    assert!(row.completed_at.expect("finished") >= started);
    let b = db.nodes(id).await.expect("nodes").remove(1);
    let at = |s: &str| chrono::DateTime::parse_from_rfc3339(s).expect("time").with_timezone(&chrono::Utc);
    assert_eq!(
        (b.started_at, b.completed_at),
        (Some(at("2026-01-01T08:00:00.123456Z")), Some(at("2026-01-01T08:00:01.5Z")))
    );
    assert_eq!(
        (b.duration_ms, b.worker_id.as_deref(), b.output_hash.as_deref()),
        (Some(1377), Some("w7"), Some("out"))
    );
    assert_eq!(b.trace_id.as_deref(), Some("0af7651916cd43dd8448eb211c80319c"), "a missing value keeps the old one");
    assert_eq!(b.deadline_ms, None, "a node no longer running has no deadline");
}

/// An expired lease writes nothing, even with the right owner and epoch.
async fn an_expired_lease_writes_nothing(db: &dyn Store, step: &StepWrite) {
    let other = submit_new(db, "fenced", &chain("fenced", "noop")).await;
    let short = claim_one(db, "replica-a", Duration::from_millis(50), other).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!db.commit_step("replica-a", short, step).await.expect("step"), "the lease expired");
    assert_eq!(status_of(db.execution(TENANT, other).await.expect("read")), "pending");
    assert_eq!(backlog_of(db).await, (0, 1), "still only the first step's message");
}

pub(super) async fn concurrent_claims_keep_the_limit(db: &dyn Store) {
    let d = chain("crowded", "noop");
    db.insert_dag(TENANT, &d).await.expect("insert");
    let mut ids = Vec::new();
    for _ in 0..12 {
        ids.push(submit_new(db, "crowded", &d).await);
    }
    // Six replicas at once, room for three each, five slots in all.
    let claims = (0..6).map(|i| async move { db.claim(&format!("replica-{i}"), TTL, 3, 5).await.expect("claim") });
    let leases: Vec<Lease> = futures_util::future::join_all(claims).await.into_iter().flatten().collect();
    let granted: HashSet<Uuid> = leases.iter().map(|l| l.execution_id).collect();
    assert_eq!((leases.len(), granted.len()), (5, 5), "five distinct grants: {leases:?}");
    assert_eq!(granted, ids[..5].iter().copied().collect::<HashSet<_>>(), "the first five submitted");
    // The first claim queues everything it does not start; later grants keep `queued` until
    // their first step, so 7 waiting + 2 granted.
    assert_eq!(backlog_of(db).await, (9, 0));
}
