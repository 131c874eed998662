//! The `Store` contract, through the trait only, against both implementations: `PgStore` on a
//! fresh PostgreSQL database and `SqliteStore` in memory. Each behaviour is one generic body run
//! as `postgres::<name>` and `sqlite::<name>`, so the two stores must give the same answers.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::LazyLock;
use std::time::Duration;

use coordinator::store::{
    Backlog, Checkpoint, Created, ExecutionFilter, ExecutionStore, Idempotency, Lease, LeaseStore, NewExecution,
    NodeCounts, NodeUpdate, OutboxMessage, Processed, SqliteStore, StepWrite, Store, StoreError, Subscription, Topic,
    UpdateOutcome, from_text, text,
};
use engine::dag::{Dag, DagSpec, Limits, compile};
use engine::messages::ResultMessage;
use engine::state::{Compensation, ExecutionStatus, Halt, NodeStatus, Outcome, TaskKind};
use serde_json::{Value, json};
use uuid::Uuid;

mod dags;
mod executions;
mod leases;
mod messages;

use dags::{a_changed_dag_is_not_pinned, dag_updates_compare_revisions, dags_round_trip};
use executions::{
    cancel_requests, checkpoints_are_kept_while_running, executions_are_listed_newest_first, idempotent_submissions,
    resume_is_a_compare_and_set, summary_figures,
};
use leases::{
    claims_respect_room_and_limits, concurrent_claims_keep_the_limit, started_executions_are_taken_over_first,
    steps_are_fenced,
};
use messages::{outbox_claims_expire, results_are_recorded_once, subscriptions_wake_after_commit};

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
    let key = key.map(|(key, request_hash)| Idempotency { key, request_hash });
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
    text(&db_row.expect("the execution exists").status)
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

/// The backlog as (queued executions, unconfirmed outbox rows).
async fn backlog_of(db: &dyn Store) -> (i64, i64) {
    let Backlog { queued_executions, unconfirmed_messages } = db.backlog().await.expect("backlog");
    (queued_executions, unconfirmed_messages)
}
