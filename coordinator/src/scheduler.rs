//! The scheduler: leases executions and drives each one's state machine against the database.
//!
//! Each coordinator replica runs one scheduler. It claims executions no live lease holds
//! (`FOR UPDATE SKIP LOCKED`, bumping the lease epoch), keeps their state machines in memory as a
//! cache of what the database says, and advances them when results arrive (notification on
//! [`Topic::Inbox`], with a polling fallback), when a retry falls due, or when a cancel is
//! requested. Every step is written by [`Store::commit_step`](crate::store::Store::commit_step), fenced by the lease epoch: a replica
//! that lost its lease (paused, partitioned) writes nothing and forgets the execution.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use engine::canonical::ContentHash;
use engine::dag::{Dag, NodeIndex, compile_stored};
use engine::provenance;
use engine::state::{Execution, ExecutionStatus, NodeError, NodeState, NodeStatus, Snapshot};
use engine::topology::Topology;
use tokio::sync::watch;
use uuid::Uuid;

use crate::locks::{Fence, Locks};
use crate::metrics::Metrics;
use crate::spans::AttemptSpan;
use engine::step::{Held, Observed, advance};

use crate::store::{self as db, ExecutionRow, Lease, SharedStore, StepWrite, StoreError, Subscription, Topic, text};

/// An execution this replica holds the lease of: the core's state and what only the I/O around
/// it needs.
struct Owned {
    lease: Lease,
    dag_id: String,
    /// When this replica first saw the execution running (for the duration metric).
    started: std::time::Instant,
    held: Held,
}

/// How a scheduler is set up.
#[derive(Debug, Clone)]
pub struct SchedulerOptions {
    /// This replica's name, written as the lease owner.
    pub owner: String,
    pub lease_ttl: Duration,
    pub topology: Topology,
    /// `GL_ORCHESTRATOR_MAX_PARALLEL_NODES`: cap on any execution's nodes in flight.
    pub parallel_cap: u32,
    /// `GL_ORCHESTRATOR_ATTEMPT_GRACE_SECONDS`, in ms.
    pub attempt_grace_ms: u64,
    /// `GL_ORCHESTRATOR_MAX_TASK_INPUT_BYTES`.
    pub max_input_bytes: usize,
    /// Most executions one replica drives at once.
    pub max_owned: usize,
    /// `GL_ORCHESTRATOR_MAX_CONCURRENT_EXECUTIONS`: running executions in the whole cluster.
    pub max_concurrent: u32,
    pub metrics: Arc<Metrics>,
    /// The second fence beside the PostgreSQL lease (Redis in production).
    pub locks: Arc<dyn Locks>,
}

/// Runs until `stop` turns true, then hands its leases back.
/// Each claim round that reached the store is a beat of `progress`.
pub async fn run(
    db: SharedStore,
    options: SchedulerOptions,
    progress: Arc<runtime::liveness::Component>,
    mut stop: watch::Receiver<bool>,
) {
    let mut scheduler = Scheduler {
        db: db.clone(),
        options,
        owned: HashMap::new(),
        dags: HashMap::new(),
        renewed_at: std::time::Instant::now(),
        unstepped: HashSet::new(),
        progress,
    };
    let mut listener = None;
    let mut claim = tokio::time::interval(Duration::from_millis(250));
    let mut renew = tokio::time::interval(scheduler.options.lease_ttl / 3);
    let mut poll = tokio::time::interval(Duration::from_secs(1));
    for timer in [&mut claim, &mut renew, &mut poll] {
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    }
    loop {
        if listener.is_none() {
            listener = db.subscribe(Topic::Inbox).await.ok();
        }
        let wake = scheduler.next_wake();
        tokio::select! {
            _ = stop.changed() => break,
            note = next_notification(&mut listener) => match note {
                Some(id) => scheduler.step_if_owned(id).await,
                None => {
                    listener = None;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            },
            _ = claim.tick() => scheduler.claim().await,
            _ = renew.tick() => scheduler.renew().await,
            _ = poll.tick() => scheduler.poll().await,
            () = sleep_until_ms(wake) => scheduler.wake_due().await,
        }
    }
    // Released here rather than in background tasks, which the process might not outlive.
    for (id, owned) in std::mem::take(&mut scheduler.owned) {
        let _ = scheduler.options.locks.release(id, &scheduler.fence(owned.lease)).await;
    }
    match db.release_all(&scheduler.options.owner).await {
        Ok(n) => {
            tracing::info!(owner = %scheduler.options.owner, released = n, "leases handed back")
        }
        Err(e) => tracing::warn!(error = %e, "could not hand leases back; they will expire"),
    }
}

/// The next execution id notified; `None` when the listener broke.
async fn next_notification(listener: &mut Option<Box<dyn Subscription>>) -> Option<Uuid> {
    let Some(l) = listener.as_mut() else {
        return std::future::pending().await;
    };
    loop {
        match l.next().await {
            Ok(n) => {
                if let Ok(id) = Uuid::parse_str(&n) {
                    return Some(id);
                }
            }
            Err(_) => return None,
        }
    }
}

async fn sleep_until_ms(wake: Option<u64>) {
    match wake {
        Some(at) => tokio::time::sleep(Duration::from_millis(at.saturating_sub(now_ms()))).await,
        None => std::future::pending().await,
    }
}

/// Milliseconds since the Unix epoch on this machine (retry timing only).
fn now_ms() -> u64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}

struct Scheduler {
    db: SharedStore,
    options: SchedulerOptions,
    owned: HashMap<Uuid, Owned>,
    /// Compiled pinned definitions, by `dag_hash` (immutable, so safe to cache).
    dags: HashMap<String, Arc<Dag>>,
    /// When leases were last renewed.
    renewed_at: std::time::Instant,
    /// Owned executions whose last step did not reach the database (it was down, or a call timed
    /// out). Nothing else would step them again: no result comes for work never dispatched, and
    /// their leases go on being renewed, so without this they would wait for ever. The poll tick
    /// steps them again.
    unstepped: HashSet<Uuid>,
    progress: Arc<runtime::liveness::Component>,
}

impl Scheduler {
    fn next_wake(&self) -> Option<u64> {
        self.owned.values().filter_map(|o| o.held.exec.next_wake_ms()).min()
    }

    async fn claim(&mut self) {
        let room = self.options.max_owned.saturating_sub(self.owned.len());
        if room == 0 {
            self.progress.beat();
            return;
        }
        let max = i64::from(self.options.max_concurrent);
        let leases = match self.db.claim(&self.options.owner, self.options.lease_ttl, room as i64, max).await {
            Ok(leases) => leases,
            Err(e) => return tracing::warn!(error = %e, "claiming executions failed"),
        };
        self.progress.beat();
        for lease in leases {
            if !self.lock(lease).await {
                continue;
            }
            match self.load(lease).await {
                Ok(owned) => {
                    tracing::info!(execution_id = %lease.execution_id, epoch = lease.epoch, "execution leased");
                    self.owned.insert(lease.execution_id, owned);
                    self.step(lease.execution_id).await;
                }
                Err(e) => {
                    tracing::error!(execution_id = %lease.execution_id, error = %e, "cannot load execution")
                }
            }
        }
    }

    /// Renews now if a third of the TTL has passed: called between steps too, because a busy
    /// replica can spend longer than a lease stepping executions before its renew tick is served.
    async fn renew_if_due(&mut self) {
        if self.renewed_at.elapsed() >= self.options.lease_ttl / 3 {
            self.renew().await;
        }
    }

    async fn renew(&mut self) {
        self.renewed_at = std::time::Instant::now();
        if self.owned.is_empty() {
            // Nothing to renew: still find out whether the lock backend answers, for the gauge.
            let answered = self.options.locks.holder(Uuid::nil()).await.is_ok();
            self.backend_answered(answered);
            return;
        }
        let leases: Vec<Lease> = self.owned.values().map(|o| o.lease).collect();
        let held = match self.db.renew(&self.options.owner, &leases, self.options.lease_ttl).await {
            Ok(held) => held,
            Err(e) => return tracing::warn!(error = %e, "renewing leases failed"),
        };
        let live: HashSet<Uuid> = held.iter().map(|l| l.execution_id).collect();
        for lease in leases {
            if !live.contains(&lease.execution_id) {
                tracing::warn!(execution_id = %lease.execution_id, "lease lost; forgetting the execution");
                self.forget(lease.execution_id);
            } else if !self.lock(lease).await {
                self.forget(lease.execution_id);
            }
        }
    }

    fn fence(&self, lease: Lease) -> Fence {
        Fence { epoch: lease.epoch, owner: self.options.owner.clone() }
    }

    /// Takes or renews the execution's lock for this lease. `false` only when a newer lease holds
    /// it; when the lock backend is unreachable the PostgreSQL lease alone fences the work.
    async fn lock(&self, lease: Lease) -> bool {
        let fence = self.fence(lease);
        match self.options.locks.hold(lease.execution_id, &fence, self.options.lease_ttl).await {
            Ok(taken) => {
                self.backend_answered(true);
                if !taken {
                    tracing::warn!(execution_id = %lease.execution_id, "a newer lease holds the lock; not driving it");
                }
                taken
            }
            Err(e) => {
                self.backend_answered(false);
                tracing::debug!(error = %e, "lock backend unavailable; the PostgreSQL lease alone fences the work");
                true
            }
        }
    }

    /// `gl_orchestrator_lock_backend`: the lock backend while it answers, `postgres` while not.
    fn backend_answered(&self, answered: bool) {
        let gauge = &self.options.metrics.lock_backend;
        gauge.with_label_values(&[self.options.locks.backend()]).set(i64::from(answered));
        gauge.with_label_values(&["postgres"]).set(i64::from(!answered));
    }

    /// Stops driving an execution and releases its lock in the background.
    fn forget(&mut self, id: Uuid) {
        let Some(owned) = self.owned.remove(&id) else { return };
        let (locks, fence) = (self.options.locks.clone(), self.fence(owned.lease));
        tokio::spawn(async move {
            let _ = locks.release(id, &fence).await;
        });
    }

    async fn poll(&mut self) {
        let ids: Vec<Uuid> = self.owned.keys().copied().collect();
        if ids.is_empty() {
            return;
        }
        let again: Vec<Uuid> =
            std::mem::take(&mut self.unstepped).into_iter().filter(|id| self.owned.contains_key(id)).collect();
        for id in again {
            self.step(id).await;
        }
        match self.db.with_pending_inbox(&ids).await {
            Ok(ready) => {
                for id in ready {
                    self.step(id).await;
                }
            }
            Err(e) => tracing::warn!(error = %e, "polling the inbox failed"),
        }
    }

    async fn wake_due(&mut self) {
        let now = now_ms();
        let due: Vec<Uuid> = self
            .owned
            .iter()
            .filter(|(_, o)| o.held.exec.next_wake_ms().is_some_and(|at| at <= now))
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            self.step(id).await;
        }
    }

    fn count_active(&self) {
        let running = self.owned.values().filter(|o| o.held.exec.status() == ExecutionStatus::Running).count();
        self.options.metrics.active_executions.set(i64::try_from(running).unwrap_or(i64::MAX));
    }

    async fn step_if_owned(&mut self, id: Uuid) {
        if self.owned.contains_key(&id) {
            self.step(id).await;
        }
    }

    async fn load(&mut self, lease: Lease) -> Result<Owned, StoreError> {
        let row = self
            .db
            .leased_execution(lease)
            .await?
            .ok_or_else(|| StoreError::Corrupt("the execution vanished or changed hands".into()))?;
        let dag = self.dag(&row.dag_hash).await?;
        let rows = self.db.nodes(lease.execution_id).await?;
        let records = self.db.records(lease.execution_id).await?;
        let snapshot = snapshot(&dag, &row, rows)?;
        let mut exec = Execution::restore(dag, &row.execution_id.to_string(), row.input_data.clone(), snapshot);
        exec.set_parallel_cap(self.options.parallel_cap);
        exec.set_attempt_grace_ms(self.options.attempt_grace_ms);
        exec.set_max_input_bytes(self.options.max_input_bytes);
        let chain = records.iter().map(|(_, r)| (r.node_id.clone(), r.chain_hash.clone())).collect();
        let last_record = records
            .last()
            .map(|(_, r)| r.record_hash.clone())
            .unwrap_or_else(|| provenance::genesis_record_hash(&row.execution_id.to_string()));
        let input_hash =
            ContentHash::parse(&row.input_hash).map_err(|_| StoreError::Corrupt("bad input_hash".into()))?;
        self.options.metrics.checkpoint_operations.with_label_values(&["load", "ok"]).inc_by(
            (0..exec.dag().len() as NodeIndex).filter(|&v| exec.node_state(v).status == NodeStatus::Completed).count()
                as u64,
        );
        let held = Held {
            execution_id: row.execution_id.to_string(),
            exec,
            clock: row.clock,
            input_hash,
            chain,
            last_record,
            seq: records.last().map_or(0, |(s, _)| *s),
        };
        Ok(Owned { lease, dag_id: row.dag_id.clone(), started: std::time::Instant::now(), held })
    }

    async fn dag(&mut self, hash: &str) -> Result<Arc<Dag>, StoreError> {
        if let Some(dag) = self.dags.get(hash) {
            return Ok(dag.clone());
        }
        let definition =
            self.db.definition(hash).await?.ok_or_else(|| StoreError::Corrupt(format!("definition {hash} missing")))?;
        let dag = Arc::new(compile_stored(definition, Some(hash)).map_err(StoreError::Corrupt)?);
        self.dags.insert(hash.to_owned(), dag.clone());
        Ok(dag)
    }

    /// Applies what happened to one execution and writes it, fenced by the lease.
    async fn step(&mut self, id: Uuid) {
        self.renew_if_due().await;
        let (results, cancel) = match self.db.inbox(id).await {
            Ok(inbox) => inbox,
            Err(e) => {
                if self.owned.contains_key(&id) {
                    self.unstepped.insert(id);
                }
                return tracing::warn!(execution_id = %id, error = %e, "reading the inbox failed; stepping again at the next poll");
            }
        };
        let Some(owned) = self.owned.get_mut(&id) else {
            return;
        };
        let attempt_spans: Vec<AttemptSpan> = results.iter().filter_map(AttemptSpan::of).collect();
        let (write, observed) = advance(&mut owned.held, results, cancel, &self.options.topology, now_ms());
        let Some(write) = write else { return };
        let lease = owned.lease;
        match self.db.commit_step(&self.options.owner, lease, &write).await {
            Ok(true) => {
                record(&observed, &self.options.metrics, owned, &write);
                attempt_spans.iter().for_each(AttemptSpan::record);
                if observed.finished {
                    let status = text(&write.status);
                    crate::spans::execution(&id.to_string(), &owned.dag_id, &status, owned.started.elapsed());
                    tracing::info!(execution_id = %id, %status, "execution finished");
                    self.forget(id);
                }
                self.count_active();
            }
            Ok(false) => {
                tracing::warn!(execution_id = %id, "lease lost before the step was written; forgetting the execution");
                self.forget(id);
            }
            Err(e) => {
                // The in-memory state ran ahead of the database: rebuild it from what was committed.
                tracing::warn!(execution_id = %id, error = %e, "writing a step failed; reloading the execution");
                self.owned.remove(&id);
                if let Ok(owned) = self.load(lease).await {
                    self.owned.insert(id, owned);
                    // What the failed step would have done (dispatch, finish) is still to do.
                    self.unstepped.insert(id);
                }
            }
        }
    }
}

/// The metrics of a committed step.
fn record(observed: &Observed, m: &Metrics, owned: &Owned, write: &StepWrite) {
    let dag = owned.held.exec.dag();
    let dag_id = owned.dag_id.as_str();
    if observed.started {
        for level in dag.levels() {
            m.parallel_nodes_per_level.with_label_values(&[dag_id]).observe(level.len() as f64);
        }
    }
    for a in &observed.attempts {
        let labels = [dag_id, dag.node_id(a.node)];
        m.node_execution_duration.with_label_values(&labels).observe(a.duration_ms as f64 / 1000.0);
        if a.timed_out {
            m.node_timeouts.with_label_values(&labels).inc();
        }
    }
    for &v in &observed.retries {
        m.node_retries.with_label_values(&[dag_id, dag.node_id(v)]).inc();
    }
    for &(v, status) in &observed.settled {
        m.node_executions.with_label_values(&[dag_id, dag.node_id(v), &text(&status)]).inc();
    }
    for checkpoint in &write.checkpoints {
        m.checkpoint_operations.with_label_values(&["save", "ok"]).inc();
        m.checkpoint_size.with_label_values::<&str>(&[]).observe(checkpoint.outputs.to_string().len() as f64);
    }
    if observed.finished {
        m.dag_executions.with_label_values(&[dag_id, &text(&write.status)]).inc();
        m.dag_execution_duration.with_label_values(&[dag_id]).observe(owned.started.elapsed().as_secs_f64());
        m.provenance_chain_length.with_label_values(&[dag_id]).observe(f64::from(owned.held.seq.max(0)));
    }
}

/// Rebuilds the state machine's snapshot from the stored rows.
pub(crate) fn snapshot(dag: &Dag, row: &ExecutionRow, rows: Vec<db::NodeRow>) -> Result<Snapshot, StoreError> {
    let mut by_id: HashMap<String, db::NodeRow> = rows.into_iter().map(|r| (r.node_id.clone(), r)).collect();
    let mut nodes = Vec::with_capacity(dag.len());
    for v in 0..dag.len() as NodeIndex {
        let r = by_id
            .remove(dag.node_id(v))
            .ok_or_else(|| StoreError::Corrupt(format!("node {} has no row", dag.node_id(v))))?;
        let status = r.status;
        nodes.push(NodeState {
            status,
            attempt: u32::try_from(r.attempt).unwrap_or(0),
            attempt_base: u32::try_from(r.attempt_base).unwrap_or(0),
            retry_at_ms: r.retry_at_ms.and_then(|t| u64::try_from(t).ok()),
            deadline_ms: r.deadline_ms.and_then(|t| u64::try_from(t).ok()),
            skip_reason: r.skip_reason,
            error: r.error_type.map(|t| NodeError::new(&t, r.error.unwrap_or_default())),
            outputs: if status == NodeStatus::Completed { r.outputs } else { None },
            compensation: r.compensation,
        });
    }
    Ok(Snapshot { status: row.status, halt: row.halt, nodes })
}
