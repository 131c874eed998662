//! A deadline on every store call: [`Deadline`] wraps a store and fails any call that has not
//! finished in time with [`StoreError::Unavailable`].
//!
//! PostgreSQL's `statement_timeout` bounds a statement only while the server is running it. A
//! server that is paused (SIGSTOP), partitioned away or swapping answers nothing at all: the
//! kernel still acknowledges the TCP traffic, so the client would wait for ever on a socket read.
//! Only a timer on our side ends that wait. When it fires, the future holding the connection is
//! dropped, which closes the connection (sqlx never returns a connection to the pool mid-query),
//! and the caller's normal "database unavailable" path runs: requests answer 503, the scheduler
//! and relay retry on their next tick, the inbox hands results back to the queue.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use engine::dag::Dag;
use engine::messages::ResultMessage;
use engine::provenance::Record;
use serde_json::Value;
use uuid::Uuid;

use super::{
    Backlog, CheckpointRow, Created, DagRow, DagStore, DagSummary, ExecutionFilter, ExecutionRow, ExecutionStore,
    Lease, LeaseStore, MessageStore, NewExecution, NodeCounts, NodeRow, OutboxRow, SharedStore, StepWrite, Store,
    StoreError, Subscription, Topic, UpdateOutcome,
};

/// A store whose every call ends within `limit`.
#[derive(Debug)]
pub struct Deadline {
    inner: SharedStore,
    limit: Duration,
}

impl Deadline {
    pub fn new(inner: SharedStore, limit: Duration) -> Self {
        Self { inner, limit }
    }

    async fn run<T>(
        &self,
        operation: &'static str,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.limit, call).await {
            Ok(result) => result,
            Err(_) => {
                Err(StoreError::Unavailable(format!("the database did not answer {operation} within {:?}", self.limit)))
            }
        }
    }
}

#[async_trait::async_trait]
impl Store for Deadline {
    fn pool_usage(&self) -> (u32, u32, i64) {
        self.inner.pool_usage()
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        self.run("migrate", self.inner.migrate()).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.run("ping", self.inner.ping()).await
    }
}

#[async_trait::async_trait]
impl DagStore for Deadline {
    async fn insert_dag(&self, tenant: &str, dag: &Dag) -> Result<DagRow, StoreError> {
        self.run("insert_dag", self.inner.insert_dag(tenant, dag)).await
    }

    async fn get_dag(&self, tenant: &str, dag_id: &str) -> Result<Option<DagRow>, StoreError> {
        self.run("get_dag", self.inner.get_dag(tenant, dag_id)).await
    }

    async fn list_dags(&self, tenant: &str, after: Option<&str>, limit: i64) -> Result<Vec<DagSummary>, StoreError> {
        self.run("list_dags", self.inner.list_dags(tenant, after, limit)).await
    }

    async fn update_dag(&self, tenant: &str, dag: &Dag, expected: Option<i64>) -> Result<UpdateOutcome, StoreError> {
        self.run("update_dag", self.inner.update_dag(tenant, dag, expected)).await
    }

    async fn delete_dag(&self, tenant: &str, dag_id: &str) -> Result<bool, StoreError> {
        self.run("delete_dag", self.inner.delete_dag(tenant, dag_id)).await
    }

    async fn definition(&self, dag_hash: &str) -> Result<Option<Value>, StoreError> {
        self.run("definition", self.inner.definition(dag_hash)).await
    }
}

#[async_trait::async_trait]
impl ExecutionStore for Deadline {
    async fn summary(&self, tenant: &str) -> Result<Value, StoreError> {
        self.run("summary", self.inner.summary(tenant)).await
    }

    async fn create_execution(&self, new: NewExecution<'_>) -> Result<Created, StoreError> {
        self.run("create_execution", self.inner.create_execution(new)).await
    }

    async fn execution(&self, tenant: &str, id: Uuid) -> Result<Option<ExecutionRow>, StoreError> {
        self.run("execution", self.inner.execution(tenant, id)).await
    }

    async fn nodes(&self, id: Uuid) -> Result<Vec<NodeRow>, StoreError> {
        self.run("nodes", self.inner.nodes(id)).await
    }

    async fn attempts(&self, id: Uuid) -> Result<HashMap<String, Vec<ResultMessage>>, StoreError> {
        self.run("attempts", self.inner.attempts(id)).await
    }

    async fn records(&self, id: Uuid) -> Result<Vec<(i32, Record)>, StoreError> {
        self.run("records", self.inner.records(id)).await
    }

    async fn request_cancel(&self, tenant: &str, id: Uuid) -> Result<bool, StoreError> {
        self.run("request_cancel", self.inner.request_cancel(tenant, id)).await
    }

    async fn resume(
        &self,
        execution: &ExecutionRow,
        remaining: &[String],
        counts: NodeCounts,
    ) -> Result<bool, StoreError> {
        self.run("resume", self.inner.resume(execution, remaining, counts)).await
    }

    async fn checkpoints(&self, id: Uuid) -> Result<Vec<CheckpointRow>, StoreError> {
        self.run("checkpoints", self.inner.checkpoints(id)).await
    }

    async fn delete_checkpoints(&self, tenant: &str, id: Uuid) -> Result<Option<u64>, StoreError> {
        self.run("delete_checkpoints", self.inner.delete_checkpoints(tenant, id)).await
    }

    async fn list_executions(&self, filter: &ExecutionFilter) -> Result<Vec<ExecutionRow>, StoreError> {
        self.run("list_executions", self.inner.list_executions(filter)).await
    }

    async fn backlog(&self) -> Result<Backlog, StoreError> {
        self.run("backlog", self.inner.backlog()).await
    }

    async fn status_counts(&self) -> Result<HashMap<String, i64>, StoreError> {
        self.run("status_counts", self.inner.status_counts()).await
    }
}

#[async_trait::async_trait]
impl LeaseStore for Deadline {
    async fn claim(
        &self,
        owner: &str,
        ttl: Duration,
        room: i64,
        max_concurrent: i64,
    ) -> Result<Vec<Lease>, StoreError> {
        self.run("claim", self.inner.claim(owner, ttl, room, max_concurrent)).await
    }

    async fn renew(&self, owner: &str, leases: &[Lease], ttl: Duration) -> Result<Vec<Lease>, StoreError> {
        self.run("renew", self.inner.renew(owner, leases, ttl)).await
    }

    async fn release_all(&self, owner: &str) -> Result<u64, StoreError> {
        self.run("release_all", self.inner.release_all(owner)).await
    }

    async fn leased_execution(&self, lease: Lease) -> Result<Option<ExecutionRow>, StoreError> {
        self.run("leased_execution", self.inner.leased_execution(lease)).await
    }

    async fn commit_step(&self, owner: &str, lease: Lease, step: &StepWrite) -> Result<bool, StoreError> {
        self.run("commit_step", self.inner.commit_step(owner, lease, step)).await
    }

    async fn lease_live(&self, id: Uuid) -> Result<bool, StoreError> {
        self.run("lease_live", self.inner.lease_live(id)).await
    }
}

#[async_trait::async_trait]
impl MessageStore for Deadline {
    async fn subscribe(&self, topic: Topic) -> Result<Box<dyn Subscription>, StoreError> {
        // Only opening the subscription is bounded: waiting for the next notification is what a
        // subscription is for, and a silent one costs a poll interval, never correctness.
        self.run("subscribe", self.inner.subscribe(topic)).await
    }

    async fn inbox(&self, id: Uuid) -> Result<(Vec<ResultMessage>, bool), StoreError> {
        self.run("inbox", self.inner.inbox(id)).await
    }

    async fn record_results(&self, results: &[ResultMessage]) -> Result<(), StoreError> {
        self.run("record_results", self.inner.record_results(results)).await
    }

    async fn claim_outbox(&self, limit: i64, claim: Duration) -> Result<Vec<OutboxRow>, StoreError> {
        self.run("claim_outbox", self.inner.claim_outbox(limit, claim)).await
    }

    async fn delete_outbox(&self, ids: &[i64]) -> Result<(), StoreError> {
        self.run("delete_outbox", self.inner.delete_outbox(ids)).await
    }

    async fn with_pending_inbox(&self, ids: &[Uuid]) -> Result<Vec<Uuid>, StoreError> {
        self.run("with_pending_inbox", self.inner.with_pending_inbox(ids)).await
    }
}
