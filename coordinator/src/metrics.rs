//! Prometheus metrics of a coordinator, served as text at `GET /metrics`.
//!
//! The twelve metrics of the earlier implementation keep their names, types and buckets; the
//! coordinator records every result, so its `/metrics` alone shows all twelve. Counts are
//! cluster-true when summed over replicas: `gl_orchestrator_active_executions` is the number of
//! running executions whose lease *this* replica holds, so `sum()` over replicas never counts one
//! twice. Gauges read from the database (`queued_executions`, `outbox_backlog`) are the cluster's
//! value on every replica: aggregate them with `max()`.
//!
//! Cardinality: `dag_id` and `node_id` labels only ever take values from stored DAG definitions
//! (bounded by the number of DAGs times `GL_ORCHESTRATOR_MAX_DAG_NODES`); `status`,
//! `operation`, `error_type` and `result` take values from fixed lists in this code.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Every metric, registered in a registry of its own (so several coordinators can live in one
/// test process).
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    pub dag_executions: IntCounterVec,
    pub dag_execution_duration: HistogramVec,
    pub node_executions: IntCounterVec,
    pub node_execution_duration: HistogramVec,
    pub node_retries: IntCounterVec,
    pub node_timeouts: IntCounterVec,
    pub active_executions: IntGauge,
    pub checkpoint_operations: IntCounterVec,
    pub checkpoint_size: HistogramVec,
    pub provenance_chain_length: HistogramVec,
    pub parallel_nodes_per_level: HistogramVec,
    pub dag_validation_errors: IntCounterVec,
    pub provenance_verifications: IntCounterVec,
    /// Results the inbox could not apply as sent (`reason`: unaddressable, invalid_result,
    /// unappliable; unsigned, bad_mac, unknown_key when results must be signed; see `inbox`).
    pub invalid_messages: IntCounterVec,
    pub queued_executions: IntGauge,
    pub outbox_backlog: IntGauge,
    pub queue_depth: IntGaugeVec,
    pub lock_backend: IntGaugeVec,
    pub db_pool_active: IntGaugeVec,
    pub db_pool_idle: IntGaugeVec,
    pub db_pool_pending: IntGaugeVec,
    /// 1 while a loop (relay, inbox, scheduler) has made no progress for `STALL_SECONDS`.
    pub component_stalled: IntGaugeVec,
    /// Seconds since each loop last made progress.
    pub component_silent: IntGaugeVec,
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let metric = IntCounterVec::new(Opts::new(name, help), labels).unwrap_or_else(|e| unreachable_metric(name, e));
    let _ = registry.register(Box::new(metric.clone()));
    metric
}

fn histogram(registry: &Registry, name: &str, help: &str, labels: &[&str], buckets: &[f64]) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
    let metric = HistogramVec::new(opts, labels).unwrap_or_else(|e| unreachable_metric(name, e));
    let _ = registry.register(Box::new(metric.clone()));
    metric
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let metric = IntGaugeVec::new(Opts::new(name, help), labels).unwrap_or_else(|e| unreachable_metric(name, e));
    let _ = registry.register(Box::new(metric.clone()));
    metric
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let metric = IntGauge::new(name, help).unwrap_or_else(|e| unreachable_metric(name, e));
    let _ = registry.register(Box::new(metric.clone()));
    metric
}

/// Metric definitions are constants of this file; an invalid one is a programming error caught
/// by the first test that builds a coordinator.
fn unreachable_metric(name: &str, e: prometheus::Error) -> ! {
    panic!("metric {name} is defined wrongly: {e}")
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let r = Registry::new();
        let dag = &["dag_id"];
        let node = &["dag_id", "node_id"];
        Self {
            dag_executions: counter(
                &r,
                "gl_orchestrator_dag_executions_total",
                "Finished DAG executions",
                &["dag_id", "status"],
            ),
            dag_execution_duration: histogram(
                &r,
                "gl_orchestrator_dag_execution_duration_seconds",
                "Wall time from start to finish of an execution",
                dag,
                &[0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0],
            ),
            node_executions: counter(
                &r,
                "gl_orchestrator_node_executions_total",
                "Nodes that reached a final status through a result",
                &["dag_id", "node_id", "status"],
            ),
            node_execution_duration: histogram(
                &r,
                "gl_orchestrator_node_execution_duration_seconds",
                "Duration of node attempts as reported by workers",
                node,
                &[0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0],
            ),
            node_retries: counter(&r, "gl_orchestrator_node_retries_total", "Retries scheduled", node),
            node_timeouts: counter(&r, "gl_orchestrator_node_timeouts_total", "Attempts that ran out of time", node),
            active_executions: gauge(
                &r,
                "gl_orchestrator_active_executions",
                "Running executions whose lease this replica holds (sum over replicas)",
            ),
            checkpoint_operations: counter(
                &r,
                "gl_orchestrator_checkpoint_operations_total",
                "Checkpoint operations by operation (save, load, verify, delete) and status (ok, failed, error)",
                &["operation", "status"],
            ),
            checkpoint_size: histogram(
                &r,
                "gl_orchestrator_checkpoint_size_bytes",
                "Size of the JSON outputs saved in a checkpoint",
                &[],
                &[100.0, 500.0, 1e3, 5e3, 1e4, 5e4, 1e5, 5e5, 1e6],
            ),
            provenance_chain_length: histogram(
                &r,
                "gl_orchestrator_provenance_chain_length",
                "Provenance records of a finished execution",
                dag,
                &[1.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0],
            ),
            parallel_nodes_per_level: histogram(
                &r,
                "gl_orchestrator_parallel_nodes_per_level",
                "Nodes per topological level of started executions",
                dag,
                &[1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 50.0, 100.0],
            ),
            dag_validation_errors: counter(
                &r,
                "gl_orchestrator_dag_validation_errors_total",
                "Validation errors found in submitted DAGs",
                &["error_type"],
            ),
            provenance_verifications: counter(
                &r,
                "gl_orchestrator_provenance_verifications_total",
                "Provenance chain verifications by result (valid, invalid)",
                &["result"],
            ),
            invalid_messages: counter(
                &r,
                "gl_orchestrator_invalid_messages_total",
                "Messages on the results queue that could not be applied as sent, by reason",
                &["reason"],
            ),
            queued_executions: gauge(
                &r,
                "gl_orchestrator_queued_executions",
                "Executions accepted and waiting to start, cluster-wide (aggregate with max)",
            ),
            outbox_backlog: gauge(
                &r,
                "gl_orchestrator_outbox_backlog",
                "Messages written but not yet confirmed by RabbitMQ, cluster-wide (aggregate with max)",
            ),
            queue_depth: gauge_vec(&r, "gl_orchestrator_queue_depth", "Ready messages per RabbitMQ queue", &["queue"]),
            lock_backend: gauge_vec(
                &r,
                "gl_orchestrator_lock_backend",
                "Which concurrency-limit backend is in use (1 for the active one)",
                &["backend"],
            ),
            db_pool_active: gauge_vec(&r, "gl_db_pool_active_connections", "Database connections in use", &["service"]),
            db_pool_idle: gauge_vec(
                &r,
                "gl_db_pool_idle_connections",
                "Database connections open and idle",
                &["service"],
            ),
            db_pool_pending: gauge_vec(
                &r,
                "gl_db_pool_pending_connections",
                "Callers waiting for a database connection",
                &["service"],
            ),
            component_stalled: gauge_vec(
                &r,
                "gl_orchestrator_component_stalled",
                "1 while a background loop has made no progress for STALL_SECONDS (readiness fails)",
                &["component"],
            ),
            component_silent: gauge_vec(
                &r,
                "gl_orchestrator_component_silent_seconds",
                "Seconds since a background loop last made progress",
                &["component"],
            ),
            registry: r,
        }
        .with_zero_failure_series()
    }

    /// The pool gauges, as the pool is now (called on every scrape, so a stuck pool shows).
    pub fn set_pool(&self, (size, idle, pending): (u32, u32, i64)) {
        let service = ["orchestrator-service"];
        self.db_pool_active.with_label_values(&service).set(i64::from(size.saturating_sub(idle)));
        self.db_pool_idle.with_label_values(&service).set(i64::from(idle));
        self.db_pool_pending.with_label_values(&service).set(pending);
    }

    /// The liveness gauges, as the components are now (called on scrape and by `/ready`).
    pub fn set_components(&self, components: &[runtime::liveness::ComponentState]) {
        for c in components {
            self.component_stalled.with_label_values(&[&c.name]).set(i64::from(c.stalled));
            let silent = i64::try_from(c.silent_for.as_secs()).unwrap_or(i64::MAX);
            self.component_silent.with_label_values(&[&c.name]).set(silent);
        }
    }

    /// Creates the failure series at zero, so an alert's `increase()` sees the very first failure
    /// after a restart (a labelled counter otherwise appears only at its first increment).
    fn with_zero_failure_series(self) -> Self {
        for (operation, status) in
            [("save", "error"), ("verify", "failed"), ("verify", "ok"), ("load", "ok"), ("save", "ok")]
        {
            self.checkpoint_operations.with_label_values(&[operation, status]);
        }
        for result in ["valid", "invalid"] {
            self.provenance_verifications.with_label_values(&[result]);
        }
        for reason in ["unaddressable", "invalid_result", "unappliable", "unsigned", "bad_mac", "unknown_key"] {
            self.invalid_messages.with_label_values(&[reason]);
        }
        self
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buffer);
        String::from_utf8_lossy(&buffer).into_owned()
    }
}
