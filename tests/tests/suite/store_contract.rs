//! The `Store` contract, through the trait only, against both implementations: `PgStore` on a
//! fresh PostgreSQL database and `SqliteStore` in memory. Each behaviour is one generic body run
//! as `postgres::<name>` and `sqlite::<name>`, so the two stores must give the same answers.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::LazyLock;
use std::time::Duration;

use coordinator::store::{
    Checkpoint, Created, ExecutionFilter, ExecutionStore, Lease, LeaseStore, NewExecution, NodeUpdate, OutboxMessage,
    Processed, SqliteStore, StepWrite, Store, StoreError, Subscription, Topic, UpdateOutcome,
};
use engine::dag::{Dag, DagSpec, Limits, compile};
use engine::messages::ResultMessage;
use engine::state::{Compensation, ExecutionStatus, Halt, NodeStatus, Outcome, TaskKind};
use serde_json::{Value, json};
use uuid::Uuid;

tests::on_each_store!(
    dags_round_trip,
    dag_updates_compare_revisions,
    idempotent_submissions,
    a_changed_dag_is_not_pinned,
    claims_respect_room_and_limits,
    started_executions_are_taken_over_first,
    steps_are_fenced,
    results_are_recorded_once,
    outbox_claims_expire,
    cancel_requests,
    resume_is_a_compare_and_set,
    checkpoints_are_kept_while_running,
    executions_are_listed_newest_first,
    subscriptions_wake_after_commit,
    summary_figures,
    concurrent_claims_keep_the_limit,
);

const TENANT: &str = "default";
const TTL: Duration = Duration::from_secs(30);
static OPTIONS: LazyLock<Value> = LazyLock::new(|| json!({}));
static INPUT: LazyLock<Value> = LazyLock::new(|| json!({"n": 1}));

/// Compiles a DAG document with the core, as the API does.
fn dag(doc: Value) -> Dag {
    compile(DagSpec::from_value(doc).expect("spec"), &Limits::default()).expect("valid DAG")
}

/// A chain `a -> b` (two levels).
fn chain(dag_id: &str, agent: &str) -> Dag {
    dag(json!({
        "dag_id": dag_id, "name": format!("{dag_id} name"), "version": "2.1.0",
        "nodes": {"a": {"agent_id": agent}, "b": {"agent_id": agent, "depends_on": ["a"]}}
    }))
}

async fn submit(db: &dyn Store, dag_id: &str, dag: &Dag, key: Option<(&str, &str)>) -> Result<Created, StoreError> {
    db.create_execution(NewExecution {
        tenant: TENANT,
        dag_id,
        dag,
        input: &INPUT,
        input_hash: "input-hash",
        options: &OPTIONS,
        priority: 0,
        clock: "2026-01-01T00:00:00Z",
        idempotency: key,
    })
    .await
}

/// Submits one execution that must be new.
async fn submit_new(db: &dyn Store, dag_id: &str, dag: &Dag) -> Uuid {
    match submit(db, dag_id, dag, None).await.expect("create") {
        Created::New(id) => id,
        other => panic!("a new execution expected, got {other:?}"),
    }
}

/// A stored chain DAG and one execution of it.
async fn chain_execution(db: &dyn Store, dag_id: &str) -> Uuid {
    let d = chain(dag_id, "noop");
    db.insert_dag(TENANT, &d).await.expect("store DAG");
    submit_new(db, dag_id, &d).await
}

/// Claims exactly the lease of `id` for `owner`.
async fn claim_one(db: &dyn Store, owner: &str, ttl: Duration, id: Uuid) -> Lease {
    let leases = db.claim(owner, ttl, 10, 100).await.expect("claim");
    assert_eq!(leases.iter().map(|l| l.execution_id).collect::<Vec<_>>(), vec![id], "exactly {id} is claimed");
    leases[0]
}

fn status_of(db_row: Option<coordinator::store::ExecutionRow>) -> String {
    db_row.expect("the execution exists").status
}

fn result(id: Uuid, node: &str, attempt: u32) -> ResultMessage {
    ResultMessage {
        v: 1,
        execution_id: id.to_string(),
        node_id: node.into(),
        attempt,
        kind: TaskKind::Run,
        worker_id: "w1".into(),
        started_at: "2026-01-01T00:00:00.000001Z".into(),
        completed_at: "2026-01-01T00:00:00.250001Z".into(),
        duration_ms: 250,
        deliveries: 1,
        outcome: Outcome::Succeeded { outputs: json!({"node": node, "attempt": attempt}) },
    }
}

fn message(n: u8) -> OutboxMessage {
    OutboxMessage {
        exchange: "tasks".into(),
        routing_key: format!("pool-{n}"),
        body: vec![n, 0, 255, n],
        headers: BTreeMap::from([("traceparent".to_owned(), format!("00-{n}"))]),
    }
}

fn processed(node: &str, attempt: i32) -> Processed {
    Processed { node_id: node.into(), attempt, kind: TaskKind::Run }
}

fn checkpoint(node: &str, outputs: Value, output_hash: &str, attempt_count: i32) -> Checkpoint {
    Checkpoint { node_id: node.into(), outputs, output_hash: output_hash.into(), attempt_count }
}

fn running(node: &str, attempt: i32) -> NodeUpdate {
    NodeUpdate {
        node_id: node.into(),
        status: NodeStatus::Running,
        attempt,
        compensation: Compensation::None,
        dispatched: true,
        trace_id: Some("0af7651916cd43dd8448eb211c80319c".into()),
        ..NodeUpdate::default()
    }
}

async fn dags_round_trip(db: &dyn Store) {
    let alpha = chain("alpha", "noop");
    let row = db.insert_dag(TENANT, &alpha).await.expect("insert");
    assert_eq!((row.dag_id.as_str(), row.revision), ("alpha", 1));
    assert_eq!(row.dag_hash, alpha.hash().to_string());
    assert_eq!(row.created_at, row.updated_at, "a new DAG was updated when it was created");
    match db.insert_dag(TENANT, &alpha).await {
        Err(StoreError::Conflict(what)) => assert_eq!(what, "DAG alpha"),
        other => panic!("a duplicate id is a conflict, got {other:?}"),
    }
    db.insert_dag("tenant-2", &alpha).await.expect("the same id in another tenant is free");

    let got = db.get_dag(TENANT, "alpha").await.expect("get").expect("stored");
    assert_eq!(got.definition, row.definition);
    assert_eq!(got.definition["nodes"]["b"]["depends_on"], json!(["a"]));
    assert_eq!((got.revision, got.created_at, got.updated_at), (1, row.created_at, row.updated_at));
    assert!(db.get_dag(TENANT, "missing").await.expect("get").is_none());
    assert!(db.get_dag("tenant-3", "alpha").await.expect("get").is_none(), "DAGs are per tenant");
    assert_eq!(db.definition(alpha.hash().as_str()).await.expect("definition"), Some(row.definition.clone()));

    for id in ["gamma", "beta", "Zeta", "delta-1"] {
        db.insert_dag(TENANT, &chain(id, "noop")).await.expect("insert");
    }
    let ids = |rows: Vec<coordinator::store::DagSummary>| rows.into_iter().map(|r| r.dag_id).collect::<Vec<_>>();
    let first = db.list_dags(TENANT, None, 3).await.expect("list");
    assert_eq!((first[0].name.as_str(), first[0].version.as_str(), first[0].node_count), ("Zeta name", "2.1.0", 2));
    assert_eq!(ids(first), ["Zeta", "alpha", "beta"], "by id, byte order");
    assert_eq!(ids(db.list_dags(TENANT, Some("beta"), 3).await.expect("list")), ["delta-1", "gamma"]);
    assert!(db.list_dags(TENANT, Some("gamma"), 3).await.expect("list").is_empty());

    assert!(db.delete_dag(TENANT, "alpha").await.expect("delete"));
    assert!(!db.delete_dag(TENANT, "alpha").await.expect("delete"), "already gone");
    assert!(db.get_dag(TENANT, "alpha").await.expect("get").is_none());
    assert!(db.get_dag("tenant-2", "alpha").await.expect("get").is_some(), "another tenant's DAG stays");
    assert!(db.definition(alpha.hash().as_str()).await.expect("definition").is_some(), "definitions stay");
}

async fn dag_updates_compare_revisions(db: &dyn Store) {
    let v1 = chain("edited", "noop");
    let v2 = chain("edited", "sleep");
    let v3 = chain("edited", "echo");
    db.insert_dag(TENANT, &v1).await.expect("insert");
    let UpdateOutcome::Updated(row) = db.update_dag(TENANT, &v2, Some(1)).await.expect("update") else {
        panic!("revision 1 is current")
    };
    assert_eq!((row.revision, row.dag_hash.clone()), (2, v2.hash().to_string()));
    assert!(row.updated_at >= row.created_at);
    assert!(matches!(db.update_dag(TENANT, &v3, Some(1)).await.expect("update"), UpdateOutcome::RevisionMismatch(2)));
    assert_eq!(db.get_dag(TENANT, "edited").await.expect("get").expect("stored").dag_hash, v2.hash().to_string());
    let UpdateOutcome::Updated(row) = db.update_dag(TENANT, &v3, None).await.expect("update") else {
        panic!("no expected revision: unconditional")
    };
    assert_eq!(row.revision, 3);
    let stored = db.get_dag(TENANT, "edited").await.expect("get").expect("stored");
    assert_eq!((stored.revision, stored.dag_hash), (3, v3.hash().to_string()));
    assert_eq!(stored.definition["nodes"]["a"]["agent_id"], "echo");

    let unknown = chain("never-stored", "noop");
    assert!(matches!(db.update_dag(TENANT, &unknown, None).await.expect("update"), UpdateOutcome::NotFound));
    assert!(matches!(db.update_dag(TENANT, &unknown, Some(1)).await.expect("update"), UpdateOutcome::NotFound));
    assert!(db.get_dag(TENANT, "never-stored").await.expect("get").is_none(), "an update creates nothing");
}

async fn idempotent_submissions(db: &dyn Store) {
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
        nodes.iter().map(|n| (n.node_id.as_str(), n.level_index, n.status.as_str(), n.attempt)).collect();
    assert_eq!(summary, [("a", 0, "pending", 0), ("b", 1, "pending", 0)]);
    assert_eq!((nodes[1].agent_id.as_str(), nodes[1].outputs.clone()), ("noop", None));
}

async fn a_changed_dag_is_not_pinned(db: &dyn Store) {
    let v1 = chain("moving", "noop");
    let v2 = chain("moving", "echo");
    db.insert_dag(TENANT, &v1).await.expect("insert");
    db.update_dag(TENANT, &v2, None).await.expect("update");
    assert_eq!(submit(db, "moving", &v1, Some(("k", "b"))).await.expect("create"), Created::DagChanged);
    assert!(db.status_counts().await.expect("counts").is_empty(), "nothing was written");
    let Created::New(id) = submit(db, "moving", &v2, Some(("k", "b"))).await.expect("create") else {
        panic!("the current definition is pinned")
    };
    assert_eq!(db.execution(TENANT, id).await.expect("read").expect("exists").dag_hash, v2.hash().to_string());
    db.delete_dag(TENANT, "moving").await.expect("delete");
    assert_eq!(submit(db, "moving", &v2, None).await.expect("create"), Created::DagChanged, "deleted meanwhile");
    let pinned = db.definition(v2.hash().as_str()).await.expect("definition").expect("kept");
    assert_eq!(pinned["name"], "moving name", "the pinned definition outlives the DAG");
}

async fn claims_respect_room_and_limits(db: &dyn Store) {
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
    assert_eq!(db.backlog().await.expect("backlog"), (2, 0));
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

async fn started_executions_are_taken_over_first(db: &dyn Store) {
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

async fn steps_are_fenced(db: &dyn Store) {
    let id = chain_execution(db, "fenced").await;
    let lease = claim_one(db, "replica-a", TTL, id).await;
    let step = StepWrite {
        status: ExecutionStatus::Running,
        completed_nodes: 1,
        nodes: vec![running("b", 1)],
        outbox: vec![message(1)],
        ..StepWrite::default()
    };
    let stale = Lease { execution_id: id, epoch: lease.epoch + 1 };
    assert!(!db.commit_step("replica-a", stale, &step).await.expect("step"), "another epoch writes nothing");
    assert!(!db.commit_step("replica-b", lease, &step).await.expect("step"), "another owner writes nothing");
    let row = db.execution(TENANT, id).await.expect("read").expect("exists");
    assert_eq!((row.status.as_str(), row.completed_nodes, row.started_at), ("pending", 0, None));
    assert!(db.nodes(id).await.expect("nodes").iter().all(|n| n.status == "pending"));
    assert_eq!(db.backlog().await.expect("backlog"), (0, 0), "no outbox row");

    assert!(db.commit_step("replica-a", lease, &step).await.expect("step"), "the holder writes");
    let row = db.execution(TENANT, id).await.expect("read").expect("exists");
    assert_eq!((row.status.as_str(), row.completed_nodes, row.completed_at), ("running", 1, None));
    let started = row.started_at.expect("started now");
    let nodes = db.nodes(id).await.expect("nodes");
    let b = &nodes[1];
    assert_eq!((b.node_id.as_str(), b.status.as_str(), b.attempt), ("b", "running", 1));
    assert_eq!(
        (b.started_at, b.completed_at, b.trace_id.as_deref()),
        (Some(started), None, Some("0af7651916cd43dd8448eb211c80319c"))
    );
    assert_eq!(db.backlog().await.expect("backlog"), (0, 1));

    // Worker timing is stored as the instant it names; `finished` sets completed_at.
    let done = NodeUpdate {
        status: NodeStatus::Completed,
        dispatched: false,
        started_at: Some("2026-01-01T10:00:00.123456+02:00".into()),
        completed_at: Some("2026-01-01T08:00:01.5Z".into()),
        duration_ms: Some(1377),
        worker_id: Some("w7".into()),
        output_hash: Some("out".into()),
        trace_id: None,
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
    assert_eq!((row.status.as_str(), row.started_at, row.error.as_deref()), ("completed", Some(started), Some("kept")));
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

    // An expired lease writes nothing, even with the right owner and epoch.
    let other = submit_new(db, "fenced", &chain("fenced", "noop")).await;
    let short = claim_one(db, "replica-a", Duration::from_millis(50), other).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!db.commit_step("replica-a", short, &step).await.expect("step"), "the lease expired");
    assert_eq!(status_of(db.execution(TENANT, other).await.expect("read")), "pending");
    assert_eq!(db.backlog().await.expect("backlog"), (0, 1), "still only the first step's message");
}

async fn results_are_recorded_once(db: &dyn Store) {
    let id = chain_execution(db, "inbox").await;
    assert_eq!(db.inbox(id).await.expect("inbox"), (vec![], false));
    // One batch shares its arrival time: within it, results come by node and attempt.
    db.record_results(&[result(id, "b", 2), result(id, "a", 1)]).await.expect("record");
    let unknown = result(Uuid::now_v7(), "a", 1);
    let mut garbled = result(id, "a", 9);
    garbled.execution_id = "not-a-uuid".into();
    db.record_results(&[result(id, "a", 1), unknown, garbled, result(id, "a", 3)]).await.expect("record again");
    let (inbox, cancel) = db.inbox(id).await.expect("inbox");
    assert!(!cancel);
    assert_eq!(inbox, [result(id, "a", 1), result(id, "b", 2), result(id, "a", 3)], "duplicates and strays dropped");
    let attempts = db.attempts(id).await.expect("attempts");
    assert_eq!(attempts.len(), 2);
    assert_eq!(attempts["a"].iter().map(|r| r["attempt"].clone()).collect::<Vec<_>>(), [json!(1), json!(3)]);
    assert_eq!(attempts["b"][0]["outcome"], "succeeded");

    let idle = chain_execution(db, "idle").await;
    assert_eq!(db.with_pending_inbox(&[id, idle]).await.expect("pending"), [id]);
    let leases = db.claim("replica-a", TTL, 10, 100).await.expect("claim");
    assert_eq!(leases, [Lease { execution_id: id, epoch: 1 }, Lease { execution_id: idle, epoch: 1 }]);
    let held = db.leased_execution(leases[1]).await.expect("read").expect("ours");
    assert_eq!(held.execution_id, idle);
    assert!(db.leased_execution(Lease { execution_id: idle, epoch: 7 }).await.expect("read").is_none());

    let owned = leases[0];
    let step = StepWrite {
        status: ExecutionStatus::Running,
        processed: vec![processed("a", 1), processed("b", 2)],
        ..StepWrite::default()
    };
    assert!(db.commit_step("replica-a", owned, &step).await.expect("step"));
    assert_eq!(db.inbox(id).await.expect("inbox").0, [result(id, "a", 3)], "processed entries leave the inbox");
    assert_eq!(db.attempts(id).await.expect("attempts")["a"].len(), 2, "the history keeps them");
    let step =
        StepWrite { status: ExecutionStatus::Running, processed: vec![processed("a", 3)], ..StepWrite::default() };
    assert!(db.commit_step("replica-a", owned, &step).await.expect("step"));
    assert!(db.with_pending_inbox(&[id, idle]).await.expect("pending").is_empty());
}

async fn outbox_claims_expire(db: &dyn Store) {
    let id = chain_execution(db, "relay").await;
    let lease = claim_one(db, "replica-a", TTL, id).await;
    let step = StepWrite {
        status: ExecutionStatus::Running,
        outbox: vec![message(1), message(2), message(3)],
        ..StepWrite::default()
    };
    assert!(db.commit_step("replica-a", lease, &step).await.expect("step"));

    let first = db.claim_outbox(2, Duration::from_millis(150)).await.expect("claim");
    let sent = |rows: &[coordinator::store::OutboxRow]| {
        rows.iter()
            .map(|r| (r.exchange.clone(), r.routing_key.clone(), r.body.clone(), r.headers.clone()))
            .collect::<Vec<_>>()
    };
    let expected = |ns: &[u8]| {
        ns.iter().map(|&n| message(n)).map(|m| (m.exchange, m.routing_key, m.body, m.headers)).collect::<Vec<_>>()
    };
    assert_eq!(sent(&first), expected(&[1, 2]), "in id order, as written");
    assert!(first[0].id < first[1].id);
    let second = db.claim_outbox(10, TTL).await.expect("claim");
    assert_eq!(sent(&second), expected(&[3]), "claimed rows are not handed out twice");
    assert!(db.claim_outbox(10, TTL).await.expect("claim").is_empty());

    tokio::time::sleep(Duration::from_millis(400)).await;
    let again = db.claim_outbox(10, TTL).await.expect("claim");
    assert_eq!(
        again.iter().map(|r| r.id).collect::<Vec<_>>(),
        first.iter().map(|r| r.id).collect::<Vec<_>>(),
        "expired claims return"
    );
    db.delete_outbox(&[first[0].id]).await.expect("delete");
    assert_eq!(db.backlog().await.expect("backlog").1, 2);
    db.delete_outbox(&[first[1].id, second[0].id, 999_999]).await.expect("delete");
    assert_eq!(db.backlog().await.expect("backlog").1, 0);
    db.delete_outbox(&[]).await.expect("deleting nothing is fine");
}

async fn cancel_requests(db: &dyn Store) {
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
async fn failed_execution(db: &dyn Store, dag_id: &str) -> Uuid {
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

async fn resume_is_a_compare_and_set(db: &dyn Store) {
    let id = failed_execution(db, "resumed").await;
    let other = failed_execution(db, "raced").await;
    let row = db.execution(TENANT, id).await.expect("read").expect("exists");
    assert_eq!((row.status.as_str(), row.failed_nodes, row.lease_epoch), ("failed", 1, 1));
    assert!(db.resume(&row, &["a".into(), "b".into()], (0, 0, 0)).await.expect("resume"));
    let after = db.execution(TENANT, id).await.expect("read").expect("exists");
    assert_eq!((after.status.as_str(), after.failed_nodes, after.lease_owner.clone()), ("pending", 0, None));
    assert_eq!((after.completed_at, after.error.clone(), after.provenance_chain_hash.clone()), (None, None, None));
    assert!(!db.lease_live(id).await.expect("live"));
    let a = db.nodes(id).await.expect("nodes").remove(0);
    assert_eq!(
        (a.status.as_str(), a.attempt, a.attempt_base, a.error.clone(), a.started_at),
        ("pending", 2, 2, None, None)
    );
    assert!(db.checkpoints(id).await.expect("checkpoints").is_empty(), "re-run nodes lose their checkpoints");
    assert!(!db.resume(&row, &["a".into()], (0, 0, 0)).await.expect("resume"), "the row changed meanwhile");

    // A checkpoint deletion bumps the epoch, so a resume that read the row before it fails.
    let read = db.execution(TENANT, other).await.expect("read").expect("exists");
    assert_eq!(db.delete_checkpoints(TENANT, other).await.expect("delete"), Some(1));
    assert!(!db.resume(&read, &["a".into()], (0, 0, 0)).await.expect("resume"));
    assert_eq!(status_of(db.execution(TENANT, other).await.expect("read")), "failed");
}

async fn checkpoints_are_kept_while_running(db: &dyn Store) {
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
        .map(|c| (c.node_id.as_str(), c.status.as_str(), c.outputs.clone(), c.output_hash.as_str(), c.attempt_count))
        .collect();
    assert_eq!(
        summary,
        [("a", "completed", json!("text"), "hash-a", 1), ("b", "completed", json!({"v": [1, 2]}), "hash-b", 2)]
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

async fn executions_are_listed_newest_first(db: &dyn Store) {
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
        status: status.map(str::to_owned),
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

/// The next wake-up's payload, within 5 s.
async fn wake(s: &mut Box<dyn Subscription>) -> String {
    tokio::time::timeout(Duration::from_secs(5), s.next()).await.expect("woken in time").expect("payload")
}

async fn subscriptions_wake_after_commit(db: &dyn Store) {
    let mut inbox = db.subscribe(Topic::Inbox).await.expect("subscribe");
    let mut outbox = db.subscribe(Topic::Outbox).await.expect("subscribe");
    let id = chain_execution(db, "woken").await;
    db.record_results(&[result(id, "a", 1)]).await.expect("record");
    assert_eq!(wake(&mut inbox).await, id.to_string());
    db.request_cancel(TENANT, id).await.expect("cancel");
    assert_eq!(wake(&mut inbox).await, id.to_string());

    let lease = claim_one(db, "replica-a", TTL, id).await;
    let quiet = StepWrite { status: ExecutionStatus::Running, ..StepWrite::default() };
    assert!(db.commit_step("replica-a", lease, &quiet).await.expect("step"));
    let loud = StepWrite { status: ExecutionStatus::Running, outbox: vec![message(1)], ..StepWrite::default() };
    assert!(db.commit_step("replica-a", lease, &loud).await.expect("step"));
    assert_eq!(wake(&mut outbox).await, "", "an outbox wake-up carries no payload");
    let nothing = tokio::time::timeout(Duration::from_millis(300), outbox.next()).await;
    assert!(nothing.is_err(), "one wake-up per step that wrote messages, none for the quiet one");
    let ids: HashSet<Uuid> = db.with_pending_inbox(&[id]).await.expect("pending").into_iter().collect();
    assert_eq!(ids, HashSet::from([id]));
}

/// Finishes execution `id` of the `timed` DAG through two steps, with node durations in ms.
async fn timed_run(db: &dyn Store, id: Uuid, durations: &[(&str, i64)]) {
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

async fn summary_figures(db: &dyn Store) {
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

async fn concurrent_claims_keep_the_limit(db: &dyn Store) {
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
    assert_eq!(db.backlog().await.expect("backlog"), (9, 0));
}

/// A session the server ended (an administrator's `pg_terminate_backend`, as in the fault matrix)
/// is "unavailable", not a refusal: the inbox then returns the result to the queue instead of
/// recording it as an `invalid_result` failure of its node.
#[tokio::test]
async fn postgres_a_terminated_session_is_unavailable_not_a_refusal() {
    let stack = tests::Stack::start(tests::StackOptions { coordinators: 0, workers: 0, ..Default::default() }).await;
    let store = coordinator::store::PgStore::connect(&stack.settings()).await.expect("connect");
    let mut session = store.pool().acquire().await.expect("a connection");
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&mut *session).await.expect("pid");
    let admin = sqlx::PgPool::connect(&format!("{}/postgres", tests::POSTGRES)).await.expect("admin");
    let ended: bool =
        sqlx::query_scalar("SELECT pg_terminate_backend($1)").bind(pid).fetch_one(&admin).await.expect("terminate");
    assert!(ended, "the session was ended");
    admin.close().await;
    let error = sqlx::query("SELECT 1").execute(&mut *session).await.expect_err("the session is gone");
    let error = StoreError::from(error);
    assert!(error.is_unavailable(), "{error:?} must count as unavailable");
    drop(session);
    store.pool().close().await;
    stack.shutdown().await;
}

/// The file mode: created with its folder, WAL, `synchronous = NORMAL`, foreign keys, and
/// everything (leases too) still there after the store is closed and opened again.
#[tokio::test]
async fn sqlite_file_survives_a_reopen() {
    let dir = std::env::temp_dir().join(format!("gl-store-{}", Uuid::new_v4().simple()));
    let path = dir.join("nested").join("orchestrator.db");
    let store = SqliteStore::open(Some(&path)).await.expect("open");
    store.migrate().await.expect("migrate");
    let journal: String = sqlx::query_scalar("PRAGMA journal_mode").fetch_one(store.pool()).await.expect("pragma");
    let synchronous: i64 = sqlx::query_scalar("PRAGMA synchronous").fetch_one(store.pool()).await.expect("pragma");
    let foreign_keys: i64 = sqlx::query_scalar("PRAGMA foreign_keys").fetch_one(store.pool()).await.expect("pragma");
    assert_eq!((journal.as_str(), synchronous, foreign_keys), ("wal", 1, 1), "WAL, NORMAL, enforced");
    // A released connection goes back to the pool in the background.
    tests::eventually(Duration::from_secs(2), "one connection, idle, nobody waiting", || async {
        store.pool_usage() == (1, 1, 0)
    })
    .await;
    let id = chain_execution(&store, "kept").await;
    let lease = claim_one(&store, "replica-a", TTL, id).await;
    store.pool().close().await;
    drop(store);

    let again = SqliteStore::open(Some(&path)).await.expect("reopen");
    again.migrate().await.expect("migrating again changes nothing");
    let row = again.execution(TENANT, id).await.expect("read").expect("kept");
    assert_eq!((row.lease_owner.as_deref(), row.lease_epoch), (Some("replica-a"), lease.epoch));
    assert!(again.lease_live(id).await.expect("live"), "the lease is still held");
    assert_eq!(again.nodes(id).await.expect("nodes").len(), 2);
    again.pool().close().await;

    let memory = SqliteStore::open(None).await.expect("open");
    memory.migrate().await.expect("migrate");
    assert!(memory.execution(TENANT, id).await.expect("read").is_none(), "each in-memory store is its own");
    let _ = std::fs::remove_dir_all(&dir);
}
