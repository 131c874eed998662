//! # worker
//!
//! A stateless worker: it consumes task messages from its pools' queues, runs each attempt's
//! agent under the attempt's timeout, publishes the result with a publisher confirm, and only
//! then acknowledges the task. A worker that dies holding a task leaves it unacknowledged, so the
//! broker redelivers it; a task that keeps killing workers exceeds the queue's delivery limit and
//! is dead-lettered, which the coordinator records as a `poison` failure.
//!
//! - [`agents`]: the agent registry (built-in, `http`, `command`).
//! - [`run`]: the consume → run → report loop, with reconnects and graceful shutdown.

pub mod agents;
pub mod cli;
pub mod metrics;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{SecondsFormat, Utc};
use engine::bounds::{Bounds, bound_outcome};
use engine::messages::{Message, ResultMessage, TaskMessage, TraceContext, WIRE_VERSION};
use engine::state::{NodeError, Outcome};
use engine::topology::{Source, Topology};
use futures_util::StreamExt;
use runtime::queue::{Connector, Consumer, Delivery, Outgoing, Queue, QueueError};
use tokio::sync::{Notify, Semaphore, watch};

use agents::{Call, Registry};

/// How a worker is set up.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// The broker (RabbitMQ in production, in-process when embedded).
    pub queue: Arc<dyn Connector>,
    /// The node `queue`s (worker pools) to consume.
    pub pools: Vec<String>,
    pub concurrency: u32,
    pub worker_id: String,
    /// How long in-flight attempts may run after a shutdown request.
    pub grace: Duration,
    /// What a result may carry: outputs over a limit fail the attempt here, before they are
    /// published (the coordinator holds every result to the same bounds again).
    pub bounds: Bounds,
    /// When set, every result is signed (`engine::signing`, the `gl-mac` header).
    pub result_keys: Option<engine::signing::Keyring>,
    pub registry: Registry,
    pub metrics: Arc<metrics::WorkerMetrics>,
    /// Each pool's consumer beats here (`consumer:<pool>`); `/health` reads it.
    pub liveness: Arc<runtime::liveness::Liveness>,
}

type AttemptKey = (String, String, u32);

/// Attempts running now (so a cancel message can stop one), and attempts cancelled before they
/// arrived here (so they never start).
#[derive(Debug, Default)]
struct Attempts {
    running: HashMap<AttemptKey, Arc<Notify>>,
    cancelled_early: std::collections::HashSet<AttemptKey>,
}

type Running = Arc<Mutex<Attempts>>;

/// Most early cancels remembered; older ones are forgotten (their tasks long gone).
const EARLY_CANCELS: usize = 10_000;

/// How often an idle worker checks that the broker still answers (a paused broker leaves the
/// connection open and silent, holding the worker's prefetched tasks).
const PROBE: Duration = Duration::from_secs(5);

/// Runs until `shutdown` resolves, reconnecting (with backoff) whenever the broker goes away.
/// After `shutdown`, returns within the grace period whatever the broker does: attempts in
/// flight get what is left of it, and a connection that does not close in time is dropped (the
/// broker then returns its unacknowledged tasks to their queues).
pub async fn run(options: WorkerOptions, shutdown: impl Future<Output = ()>) {
    let (stop_tx, stop_rx) = watch::channel(false);
    let grace = options.grace;
    let options = Arc::new(options);
    let session_loop =
        runtime::queue::reconnecting("worker", stop_rx.clone(), || session(options.clone(), stop_rx.clone()));
    tokio::pin!(session_loop);
    tokio::select! {
        () = &mut session_loop => {}
        () = shutdown => {
            let _ = stop_tx.send(true);
            if tokio::time::timeout(grace, session_loop).await.is_err() {
                tracing::warn!(?grace, "the worker did not stop within its grace period; leaving anyway");
            }
        }
    }
}

/// One connection's life: consume until stopped or until the connection fails.
async fn session(options: Arc<WorkerOptions>, mut stop: watch::Receiver<bool>) -> Result<(), QueueError> {
    let queue = options.queue.connect(&options.worker_id).await?;
    let permits = Arc::new(Semaphore::new(options.concurrency as usize));
    let running: Running = Arc::default();
    let (mut consumers, mut cancels) = subscribe(queue.as_ref(), &options).await?;
    let mut streams = futures_util::stream::select_all(consumers.iter_mut().map(|c| &mut c.deliveries));
    let progress: Vec<_> = options
        .pools
        .iter()
        .map(|pool| (pool.clone(), options.liveness.component(&format!("consumer:{pool}"))))
        .collect();
    progress.iter().for_each(|(_, p)| p.beat());
    let mut probe = tokio::time::interval(PROBE);
    probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tracing::info!(worker_id = %options.worker_id, pools = ?options.pools, "worker consuming");
    let outcome = loop {
        tokio::select! {
            _ = stop.changed() => break Ok(()),
            _ = probe.tick() => {
                if let Err(e) = probe_pools(queue.as_ref(), &progress).await {
                    break Err(e);
                }
            }
            next = streams.next() => match next {
                Some(Ok(delivery)) => {
                    progress.iter().for_each(|(_, p)| p.beat());
                    // The permit is taken inside the task, so this loop keeps serving cancels and
                    // the stop signal while every slot is busy (prefetch bounds what piles up).
                    let (queue, options, running, permits) = (queue.clone(), options.clone(), running.clone(), permits.clone());
                    tokio::spawn(async move {
                        let permit = permits.acquire_owned().await;
                        handle(queue.as_ref(), &options, &running, delivery).await;
                        drop(permit);
                    });
                }
                Some(Err(e)) => break Err(e),
                None => break Err(QueueError::Closed),
            },
            cancel = cancels.deliveries.next() => match cancel {
                Some(Ok(delivery)) => {
                    if let Ok(Message::Cancel(c)) = Message::from_bytes(&delivery.body) {
                        cancel_attempt(&running, (c.execution_id, c.node_id, c.attempt));
                    }
                    delivery.ack().await;
                }
                // A cancel stream that ended would otherwise be polled again at once, for ever.
                Some(Err(e)) => break Err(e),
                None => break Err(QueueError::Closed),
            },
        }
    };
    drop(streams);
    drain(&options, &mut consumers, &permits).await;
    queue.close().await;
    outcome
}

/// Declares the worker's pools and consumes them (prefetch = concurrency), and the cancels.
async fn subscribe(queue: &dyn Queue, options: &WorkerOptions) -> Result<(Vec<Consumer>, Consumer), QueueError> {
    let prefetch = u16::try_from(options.concurrency).unwrap_or(u16::MAX);
    let mut consumers = Vec::new();
    for pool in &options.pools {
        queue.declare_pool(pool).await?;
        let tag = format!("{}-{pool}", options.worker_id);
        consumers.push(queue.consume(&Source::Pool(pool.clone()), &tag, prefetch).await?);
    }
    let cancels = queue.consume(&Source::Cancels, &format!("{}-cancel", options.worker_id), 64).await?;
    Ok((consumers, cancels))
}

/// Stops taking work, but keeps the connection open: closing it would hand the unacknowledged
/// tasks back to the queue at once and another worker would run them again. In-flight attempts
/// finish within the grace period (counted from here, so that a broker that does not answer the
/// consumer cancels cannot stretch it); whatever is still unacknowledged when the connection
/// closes goes back to the queue.
async fn drain(options: &WorkerOptions, consumers: &mut [Consumer], permits: &Semaphore) {
    let drained = tokio::time::Instant::now() + options.grace;
    for consumer in consumers {
        let _ = tokio::time::timeout_at(drained, consumer.stop()).await;
    }
    let _ = tokio::time::timeout_at(drained, permits.acquire_many(options.concurrency)).await;
}

/// Reads each pool's depth (a round trip to the broker); each answer is a beat of that pool's
/// consumer.
async fn probe_pools(
    queue: &dyn Queue,
    progress: &[(String, Arc<runtime::liveness::Component>)],
) -> Result<(), QueueError> {
    for (pool, component) in progress {
        queue.depth(&Source::Pool(pool.clone())).await?;
        component.beat();
    }
    Ok(())
}

/// Stops the attempt if it runs here, or remembers that it must never start.
fn cancel_attempt(running: &Running, key: AttemptKey) {
    let Ok(mut attempts) = running.lock() else { return };
    match attempts.running.get(&key) {
        Some(notify) => notify.notify_one(),
        None => {
            if attempts.cancelled_early.len() >= EARLY_CANCELS {
                attempts.cancelled_early.clear();
            }
            attempts.cancelled_early.insert(key);
        }
    }
}

async fn handle(queue: &dyn Queue, options: &WorkerOptions, running: &Running, delivery: Delivery) {
    let task = match Message::from_bytes(&delivery.body) {
        Ok(Message::Task(task)) => task,
        other => {
            tracing::error!(problem = ?other.err(), "not a task message; dead-lettering it");
            delivery.dead_letter().await;
            return;
        }
    };
    let deliveries = delivery.deliveries;
    if deliveries > 1 {
        options.metrics.redeliveries.inc();
    }
    // The trace context travels on: the result carries the attempt's traceparent back.
    let trace = delivery.headers.get("traceparent").and_then(|h| TraceContext::parse(h));
    let span = tracing::info_span!("node.execute", execution_id = %task.execution_id, node_id = %task.node_id,
        attempt = task.attempt, agent_id = %task.agent_id, trace_id = trace.as_ref().map_or("", |t| t.trace_id.as_str()));
    // Exported as a child of the coordinator's span of this attempt, in the execution's trace.
    if let Some(trace) = &trace {
        runtime::telemetry::set_remote_parent(&span, trace);
    }
    let result = tracing::Instrument::instrument(execute(options, running, &task, deliveries), span).await;
    let forward = delivery.headers.iter().filter(|(k, _)| *k == "traceparent" || *k == "tracestate");
    let mut headers: std::collections::BTreeMap<String, String> =
        forward.map(|(k, v)| (k.clone(), v.clone())).collect();
    let body = Message::Result(result).to_bytes();
    if let Some(keys) = &options.result_keys {
        headers.insert(engine::signing::MAC_HEADER.to_owned(), keys.sign(&body));
    }
    let message = Outgoing {
        exchange: options.queue.topology().results_exchange(),
        routing_key: Topology::RESULT_KEY.to_owned(),
        body,
        headers,
        mandatory: true,
    };
    match queue.publish(std::slice::from_ref(&message)).await {
        Ok(()) => delivery.ack().await,
        Err(e) => {
            tracing::warn!(error = %e, execution_id = %task.execution_id, node_id = %task.node_id, attempt = task.attempt,
                "result not confirmed; returning the task to the queue");
            delivery.requeue().await;
        }
    }
}

/// Runs one attempt under its timeout and cancel signal.
async fn execute(options: &WorkerOptions, running: &Running, task: &TaskMessage, deliveries: u32) -> ResultMessage {
    let key = (task.execution_id.clone(), task.node_id.clone(), task.attempt);
    let cancel = Arc::new(Notify::new());
    let cancelled_early = match running.lock() {
        Ok(mut attempts) => {
            attempts.running.insert(key.clone(), cancel.clone());
            attempts.cancelled_early.remove(&key)
        }
        Err(_) => false,
    };
    if cancelled_early {
        cancel.notify_one();
    }
    let started_at = now_text();
    let clock = Instant::now();
    let call = Call::of(task);
    options.metrics.in_flight.inc();
    tracing::debug!(execution_id = %task.execution_id, node_id = %task.node_id, attempt = task.attempt, "running attempt");
    let outcome = run_bounded(options, task, &call, &cancel).await;
    if let Ok(mut attempts) = running.lock() {
        attempts.running.remove(&key);
    }
    let outcome = bound_outcome(outcome, &options.bounds);
    options.metrics.in_flight.dec();
    options.metrics.attempts.with_label_values(&[outcome_label(&outcome)]).inc();
    options.metrics.attempt_duration.observe(clock.elapsed().as_secs_f64());
    ResultMessage {
        v: WIRE_VERSION,
        execution_id: task.execution_id.clone(),
        node_id: task.node_id.clone(),
        attempt: task.attempt,
        kind: task.kind,
        worker_id: options.worker_id.clone(),
        started_at,
        completed_at: now_text(),
        duration_ms: u64::try_from(clock.elapsed().as_millis()).unwrap_or(u64::MAX),
        deliveries,
        outcome,
    }
}

/// The agent's call, ended by the task's timeout or a cancel. Dropping the agent's future (on
/// timeout or cancel) stops it; a command's process is killed.
async fn run_bounded(options: &WorkerOptions, task: &TaskMessage, call: &Call, cancel: &Notify) -> Outcome {
    tokio::select! {
        result = options.registry.run(&task.agent_id, call) => match result {
            Ok(outputs) => Outcome::Succeeded { outputs: serde_json::Value::Object(outputs) },
            Err(e) => Outcome::Failed { error: NodeError::new(&e.error_type, e.message), retryable: e.retryable },
        },
        () = tokio::time::sleep(Duration::from_millis(task.timeout_ms)) => Outcome::Failed {
            error: NodeError::new("timeout", format!("the attempt ran longer than {} ms", task.timeout_ms)),
            retryable: true,
        },
        () = cancel.notified() => Outcome::Failed {
            error: NodeError::new("cancelled", "the execution was cancelled"),
            retryable: false,
        },
    }
}

/// The `outcome` label of the attempts metric.
fn outcome_label(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Succeeded { .. } => "succeeded",
        Outcome::Failed { error, .. } if error.error_type == "timeout" => "timeout",
        Outcome::Failed { error, .. } if error.error_type == "cancelled" => "cancelled",
        Outcome::Failed { .. } => "failed",
    }
}

/// The wall clock as RFC 3339 UTC with microseconds (timing only; never in a content hash).
pub fn now_text() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true)
}
