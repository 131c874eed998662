//! Persistence: the [`Store`] trait the coordinator keeps all its state behind, and the types it
//! reads and writes. [`postgres`] is the production implementation (every SQL statement lives
//! there); [`sqlite`] is the embedded one (`coordinator dev`), behind the same trait.
//!
//! What is stored durably, and why: DAG definitions by content and by name; each execution with
//! its pinned `dag_hash`, input, lease and counters; the state of every node; every attempt result
//! received (also the inbox of the coordinator driving the execution); checkpoints; append-only
//! provenance records; and the outbox of messages not yet confirmed by the queue. Nothing else: a
//! coordinator's memory only caches what the store says.
//!
//! Every state change of an execution goes through [`Store::commit_step`], which first performs a
//! compare-and-set on the execution's lease (owner, epoch, not expired, by the store's clock) and
//! writes nothing when it fails.

pub mod deadline;
pub mod postgres;
mod rows;
mod sql;
pub mod sqlite;

use std::collections::HashMap;
use std::time::Duration;

use engine::dag::Dag;
use engine::messages::ResultMessage;
use engine::provenance::Record;
use engine::state::{Compensation, ExecutionStatus, Halt, NodeStatus, SkipReason};
use serde::de::DeserializeOwned;
use serde_json::Value;
use uuid::Uuid;

pub use deadline::Deadline;
/// What a step writes is planned by the core; the store commits it as given.
pub use engine::step::{Checkpoint, NodeUpdate, OutboxMessage, Processed, SequencedRecord, StepWrite};
pub use postgres::PgStore;
pub use sqlite::SqliteStore;

/// The store every coordinator component shares.
pub type SharedStore = std::sync::Arc<dyn Store>;

/// A store operation failed, classified by what the caller can do about it. The port names no
/// driver: each adapter maps its own driver's errors into these four (`sql.rs` for the
/// two SQL adapters).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot serve now, for reasons of its own state and not of the request
    /// (unreachable, restarting, out of connections, busy, too slow): worth retrying later.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    /// What the request would create exists already.
    #[error("{0} already exists")]
    Conflict(String),
    /// What is stored cannot be what we wrote (an unknown status, a definition that no longer
    /// hashes to its id).
    #[error("{0}")]
    Corrupt(String),
    /// The database refused the request for any other reason: a bug or a schema out of step.
    #[error("database: {0}")]
    Backend(String),
}

impl StoreError {
    /// Worth retrying later (see [`StoreError::Unavailable`]); anything else is a refusal of
    /// this request.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

/// What a subscription wakes up for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topic {
    /// An attempt result arrived (payload: the execution id).
    Inbox,
    /// Outbox rows were written.
    Outbox,
}

/// Notifications of one [`Topic`]. A wake-up only says "look again": what changed is always read
/// back from the store, so a missed notification costs a poll interval, never correctness.
#[async_trait::async_trait]
pub trait Subscription: Send {
    /// The next notification's payload; an error means the subscription is broken.
    async fn next(&mut self) -> Result<String, StoreError>;
}

/// Everything the coordinator stores: the four roles below, plus the backend's own upkeep.
/// Implementations must keep the compare-and-set semantics documented on each method;
/// `tests/tests/suite/leases.rs` and `tests/tests/suite/store_contract.rs` check them on both stores.
#[async_trait::async_trait]
pub trait Store: DagStore + ExecutionStore + LeaseStore + MessageStore + Send + Sync + std::fmt::Debug {
    /// (connections open, idle, callers waiting for one).
    fn pool_usage(&self) -> (u32, u32, i64);

    /// Brings the schema up to date (idempotent).
    async fn migrate(&self) -> Result<(), StoreError>;

    /// One round trip (readiness).
    async fn ping(&self) -> Result<(), StoreError>;
}

/// DAG definitions: by name per tenant, and pinned by content hash.
#[async_trait::async_trait]
pub trait DagStore: Send + Sync {
    /// Stores a new DAG; `Conflict` when the id is taken.
    async fn insert_dag(&self, tenant: &str, dag: &Dag) -> Result<DagRow, StoreError>;

    /// A stored DAG of `tenant`.
    async fn get_dag(&self, tenant: &str, dag_id: &str) -> Result<Option<DagRow>, StoreError>;

    /// Stored DAGs by id, after `after`.
    async fn list_dags(&self, tenant: &str, after: Option<&str>, limit: i64) -> Result<Vec<DagSummary>, StoreError>;

    /// Replaces a DAG's definition if its revision is still `expected` (when given).
    async fn update_dag(&self, tenant: &str, dag: &Dag, expected: Option<i64>) -> Result<UpdateOutcome, StoreError>;

    /// Deletes a DAG; its executions keep their pinned definitions.
    async fn delete_dag(&self, tenant: &str, dag_id: &str) -> Result<bool, StoreError>;

    /// A pinned definition by its hash.
    async fn definition(&self, dag_hash: &str) -> Result<Option<Value>, StoreError>;
}

/// Executions and what they recorded: node rows, attempts, checkpoints, provenance records;
/// resume and cancel requests; the figures of the summary and the health checks.
#[async_trait::async_trait]
pub trait ExecutionStore: Send + Sync {
    /// The figures of the JSON `/metrics` summary.
    async fn summary(&self, tenant: &str) -> Result<Value, StoreError>;

    /// Creates an execution and its node rows; with an idempotency key seen before, returns the
    /// earlier execution (same body) or `Conflict` (another body).
    async fn create_execution(&self, new: NewExecution<'_>) -> Result<Created, StoreError>;

    /// An execution of `tenant`.
    async fn execution(&self, tenant: &str, id: Uuid) -> Result<Option<ExecutionRow>, StoreError>;

    /// Node rows with their checkpointed outputs.
    async fn nodes(&self, id: Uuid) -> Result<Vec<NodeRow>, StoreError>;

    /// Every attempt result received for an execution, by node, in attempt order.
    async fn attempts(&self, id: Uuid) -> Result<HashMap<String, Vec<ResultMessage>>, StoreError>;

    /// Provenance records of an execution, in commit order.
    async fn records(&self, id: Uuid) -> Result<Vec<(i32, Record)>, StoreError>;

    /// Marks an execution for cancellation and wakes its driver; false when it is already
    /// finished or unknown.
    async fn request_cancel(&self, tenant: &str, id: Uuid) -> Result<bool, StoreError>;

    /// Puts a resumed execution back in line: `remaining` nodes return to `pending` with a fresh
    /// retry budget, their checkpoints go, and the execution becomes `pending` with no lease.
    /// A compare-and-set on (status, lease epoch): false when the execution changed meanwhile.
    async fn resume(
        &self,
        execution: &ExecutionRow,
        remaining: &[String],
        counts: NodeCounts,
    ) -> Result<bool, StoreError>;

    /// Checkpoints of an execution: (node id, status, outputs, output hash, attempts, created).
    async fn checkpoints(&self, id: Uuid) -> Result<Vec<CheckpointRow>, StoreError>;

    /// Deletes an execution's checkpoints unless it is running; `None` when it is.
    async fn delete_checkpoints(&self, tenant: &str, id: Uuid) -> Result<Option<u64>, StoreError>;

    /// Executions, newest first, filtered; keyset pagination after `(submitted_at, id)`.
    async fn list_executions(&self, filter: &ExecutionFilter) -> Result<Vec<ExecutionRow>, StoreError>;

    /// Executions waiting for a slot, and outbox rows not yet confirmed (cluster-wide).
    async fn backlog(&self) -> Result<Backlog, StoreError>;

    /// Per-status counts (for health and tests).
    async fn status_counts(&self) -> Result<HashMap<String, i64>, StoreError>;
}

/// Leases and steps: claiming executions (with admission), renewing and releasing leases, and
/// the fenced commit of a step. Every write here is a compare-and-set on (owner, epoch, expiry).
#[async_trait::async_trait]
pub trait LeaseStore: Send + Sync {
    /// Takes over up to `room` executions that no live lease holds, bumping each lease epoch
    /// (the fencing token that makes the previous holder's writes fail).
    ///
    /// Executions already started are taken over first: they hold a slot already. Waiting ones
    /// start in submission order (`submit_seq`, which follows commit order) only while the cluster-wide limit
    /// (`max_concurrent`) and their DAG's own `max_concurrent_executions` leave a slot free; the
    /// rest are marked `queued`. Slot decisions are serialised (PostgreSQL: a transaction-scoped
    /// advisory lock), so replicas deciding at once cannot exceed the limit.
    async fn claim(&self, owner: &str, ttl: Duration, room: i64, max_concurrent: i64)
    -> Result<Vec<Lease>, StoreError>;

    /// Extends the leases still held (same owner and epoch, not expired); returns those.
    async fn renew(&self, owner: &str, leases: &[Lease], ttl: Duration) -> Result<Vec<Lease>, StoreError>;

    /// Hands every lease of `owner` back (graceful shutdown), so another replica takes over at
    /// once instead of after the lease expires.
    async fn release_all(&self, owner: &str) -> Result<u64, StoreError>;

    /// The execution row behind a lease, if the lease is still ours.
    async fn leased_execution(&self, lease: Lease) -> Result<Option<ExecutionRow>, StoreError>;

    /// Writes one step of an execution if `lease` is still held; returns false (and writes
    /// nothing) when it is not.
    async fn commit_step(&self, owner: &str, lease: Lease, step: &StepWrite) -> Result<bool, StoreError>;

    /// Whether the execution's lease is held by a live owner right now (database clock).
    async fn lease_live(&self, id: Uuid) -> Result<bool, StoreError>;
}

/// The inbox of results, the outbox of messages to publish, and wake-ups on both.
#[async_trait::async_trait]
pub trait MessageStore: Send + Sync {
    /// Wake-ups for `topic`, on a connection of their own (never one a request could use).
    async fn subscribe(&self, topic: Topic) -> Result<Box<dyn Subscription>, StoreError>;

    /// Unprocessed attempt results of an execution, in arrival order, and whether a cancel was
    /// requested.
    async fn inbox(&self, id: Uuid) -> Result<(Vec<ResultMessage>, bool), StoreError>;

    /// Records attempt results (duplicates are ignored by the primary key) and wakes the
    /// coordinators; results for unknown executions, and for attempts never dispatched (a
    /// number above the node's current attempt), are dropped: such a result must not take the
    /// inbox key that the real result of that attempt will need.
    async fn record_results(&self, results: &[ResultMessage]) -> Result<(), StoreError>;

    /// Claims up to `limit` unsent outbox rows for `claim` (a relay that dies leaves them to be
    /// claimed again when the claim expires).
    async fn claim_outbox(&self, limit: i64, claim: Duration) -> Result<Vec<OutboxRow>, StoreError>;

    /// Deletes outbox rows whose publish was confirmed.
    async fn delete_outbox(&self, ids: &[i64]) -> Result<(), StoreError>;

    /// Ids of executions with unprocessed results among `ids` (the fallback when a
    /// notification was missed).
    async fn with_pending_inbox(&self, ids: &[Uuid]) -> Result<Vec<Uuid>, StoreError>;
}

/// A stored DAG.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct DagRow {
    pub dag_id: String,
    pub dag_hash: String,
    pub definition: Value,
    pub revision: i64,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

/// An execution row.
#[derive(Debug, Clone)]
pub struct ExecutionRow {
    pub execution_id: Uuid,
    pub dag_id: String,
    pub dag_hash: String,
    pub status: ExecutionStatus,
    /// Why a finished execution stopped early (fail-fast, cancel), when it did.
    pub halt: Option<Halt>,
    pub input_data: Value,
    pub input_hash: String,
    pub clock: String,
    pub cancel_requested: bool,
    pub submitted_at: chrono::DateTime<chrono::Utc>,
    pub started_at: Option<chrono::DateTime<chrono::Utc>>,
    pub completed_at: Option<chrono::DateTime<chrono::Utc>>,
    pub error: Option<String>,
    pub provenance_chain_hash: Option<String>,
    pub last_record_hash: Option<String>,
    pub total_nodes: i32,
    pub completed_nodes: i32,
    pub failed_nodes: i32,
    pub skipped_nodes: i32,
    pub lease_owner: Option<String>,
    pub lease_epoch: i64,
}

/// A node's row, as traced.
#[derive(Debug, Clone)]
pub struct NodeRow {
    pub node_id: String,
    pub agent_id: String,
    pub status: NodeStatus,
    pub attempt: i32,
    pub attempt_base: i32,
    pub level_index: i32,
    pub retry_at_ms: Option<i64>,
    pub deadline_ms: Option<i64>,
    pub skip_reason: Option<SkipReason>,
    pub error_type: Option<String>,
    pub error: Option<String>,
    pub input_hash: Option<String>,
    pub output_hash: Option<String>,
    pub compensation: Compensation,
    pub started_at: Option<chrono::DateTime<chrono::Utc>>,
    pub completed_at: Option<chrono::DateTime<chrono::Utc>>,
    pub duration_ms: Option<i64>,
    pub worker_id: Option<String>,
    pub trace_id: Option<String>,
    /// From the checkpoint, when there is one.
    pub outputs: Option<Value>,
}

/// One line of the DAG list.
#[derive(Debug, Clone)]
pub struct DagSummary {
    pub dag_id: String,
    pub name: String,
    pub version: String,
    pub dag_hash: String,
    pub revision: i64,
    pub node_count: i32,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

/// What an update did.
#[derive(Debug, Clone)]
pub enum UpdateOutcome {
    Updated(DagRow),
    NotFound,
    /// The current revision, which the `If-Match` did not name.
    RevisionMismatch(i64),
}

/// A stored checkpoint.
#[derive(Debug, Clone)]
pub struct CheckpointRow {
    pub node_id: String,
    pub status: NodeStatus,
    pub outputs: Value,
    pub output_hash: String,
    pub attempt_count: i32,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

/// Filters of the execution list.
#[derive(Debug, Clone)]
pub struct ExecutionFilter {
    pub tenant: String,
    pub dag_id: Option<String>,
    pub status: Option<ExecutionStatus>,
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// Continue after this (submitted_at, execution_id).
    pub after: Option<(chrono::DateTime<chrono::Utc>, Uuid)>,
    pub limit: i64,
}

/// The lease a coordinator holds on an execution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub execution_id: Uuid,
    pub epoch: i64,
}

/// An unsent outbox row.
#[derive(Debug, Clone)]
pub struct OutboxRow {
    pub id: i64,
    pub exchange: String,
    pub routing_key: String,
    pub body: Vec<u8>,
    pub headers: std::collections::BTreeMap<String, String>,
}

/// What an execute request turned into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    New(Uuid),
    /// The same idempotency key and body were seen before.
    Existing(Uuid),
    /// The DAG is no longer the definition the caller read (it changed or was deleted since,
    /// e.g. a stale cache entry); nothing was written.
    DagChanged,
}

/// A new execution.
#[derive(Debug)]
pub struct NewExecution<'a> {
    pub tenant: &'a str,
    pub dag_id: &'a str,
    pub dag: &'a Dag,
    pub input: &'a Value,
    pub input_hash: &'a str,
    pub options: &'a Value,
    pub priority: i32,
    pub clock: &'a str,
    pub idempotency: Option<Idempotency<'a>>,
}

/// An `Idempotency-Key` and the hash of the request it came with: the same key with another
/// request is a conflict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Idempotency<'a> {
    pub key: &'a str,
    pub request_hash: &'a str,
}

/// An execution's node counts, as a resume sets them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeCounts {
    pub completed: i32,
    pub failed: i32,
    pub skipped: i32,
}

/// Work waiting cluster-wide: executions queued for a slot, outbox rows not yet confirmed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backlog {
    pub queued_executions: i64,
    pub unconfirmed_messages: i64,
}

/// The stored name of a status-like enum of the core: its serde (snake_case) name, the one
/// spelling the API and the database share.
pub fn text<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_value(value).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}

/// The core's enum a stored name spells (the inverse of [`text`]); `None` for a name the core
/// does not know, which each adapter reports as a corrupt row.
pub fn from_text<T: DeserializeOwned>(name: &str) -> Option<T> {
    serde_json::from_value(Value::String(name.to_owned())).ok()
}
