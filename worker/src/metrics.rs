//! The worker's own Prometheus metrics, served with a health endpoint on
//! `GL_ORCHESTRATOR_WORKER_METRICS_ADDR`. Labels are fixed lists (no agent or node ids), so the
//! cardinality is constant.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use prometheus::{Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};

#[derive(Debug, Clone)]
pub struct WorkerMetrics {
    registry: Registry,
    /// Attempts finished, by outcome (`succeeded`, `failed`, `timeout`, `cancelled`).
    pub attempts: IntCounterVec,
    pub attempt_duration: Histogram,
    pub in_flight: IntGauge,
    /// Tasks received that the broker had delivered before (a worker died holding them).
    pub redeliveries: IntCounter,
}

impl Default for WorkerMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl WorkerMetrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let attempts = IntCounterVec::new(
            Opts::new("gl_orchestrator_worker_attempts_total", "Attempts finished by this worker, by outcome"),
            &["outcome"],
        )
        .unwrap_or_else(|e| invalid(e));
        let attempt_duration = Histogram::with_opts(
            HistogramOpts::new(
                "gl_orchestrator_worker_attempt_duration_seconds",
                "Duration of attempts on this worker",
            )
            .buckets(vec![0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]),
        )
        .unwrap_or_else(|e| invalid(e));
        let in_flight = IntGauge::new("gl_orchestrator_worker_in_flight", "Attempts running on this worker now")
            .unwrap_or_else(|e| invalid(e));
        let redeliveries =
            IntCounter::new("gl_orchestrator_worker_redeliveries_total", "Tasks received again after a worker died")
                .unwrap_or_else(|e| invalid(e));
        for m in [
            Box::new(attempts.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(attempt_duration.clone()),
            Box::new(in_flight.clone()),
            Box::new(redeliveries.clone()),
        ] {
            let _ = registry.register(m);
        }
        Self { registry, attempts, attempt_duration, in_flight, redeliveries }
    }

    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buffer);
        String::from_utf8_lossy(&buffer).into_owned()
    }

    /// Serves `/metrics` and `/health` on `addr` until the process ends. `/health` answers 503,
    /// naming them, while consumers are stalled (see [`runtime::liveness`]).
    pub async fn serve(self: Arc<Self>, addr: SocketAddr, health: HealthView) -> std::io::Result<SocketAddr> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let bound = listener.local_addr()?;
        let metrics = self.clone();
        let app = Router::new()
            .route("/metrics", get(move || async move { metrics.render() }))
            .route("/health", get(move || async move { health.answer() }));
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "the metrics server stopped");
            }
        });
        Ok(bound)
    }
}

/// What the worker's `/health` reports: its consumers' progress.
#[derive(Debug, Clone)]
pub struct HealthView {
    pub liveness: Arc<runtime::liveness::Liveness>,
    pub stall_after: std::time::Duration,
}

impl HealthView {
    fn answer(&self) -> (axum::http::StatusCode, String) {
        let stalled = self.liveness.stalled(self.stall_after);
        if stalled.is_empty() {
            (axum::http::StatusCode::OK, "ok".to_owned())
        } else {
            (axum::http::StatusCode::SERVICE_UNAVAILABLE, format!("stalled: {}", stalled.join(", ")))
        }
    }
}

/// The metric definitions above are constants; an invalid one is a programming error.
fn invalid(e: prometheus::Error) -> ! {
    panic!("a worker metric is defined wrongly: {e}")
}
