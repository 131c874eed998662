//! The result consumer: moves attempt results from the queue into the `node_attempts` inbox.
//!
//! A result is acknowledged only after the transaction that records it commits; a duplicate
//! hits the primary key and is dropped. Tasks dead-lettered after too many deliveries (a poison
//! task that kills every worker) are recorded as failed attempts with error type `poison`.
//!
//! Every result is held to the core's bounds ([`engine::bounds`]) as it is decoded: one that names
//! no attempt is counted and dropped; one that cannot be applied as sent is recorded as an
//! `invalid_result` failure; one the store refuses even then is counted and acknowledged. Nothing
//! on the queue is retried for ever, and no attempt waits for a result that was already refused.

use std::sync::Arc;
use std::time::Duration;

use engine::bounds::{Bounds, Decoded};
use engine::messages::{Message, ResultMessage, WIRE_VERSION};
use engine::signing::{Keyring, MAC_HEADER};
use engine::state::{NodeError, Outcome};
use engine::topology::Source;
use futures_util::{FutureExt, StreamExt};
use prometheus::IntCounterVec;
use runtime::liveness::Component;
use runtime::queue::{Connector, Delivery, QueueError};
use tokio::sync::watch;

use crate::store::SharedStore;

const BATCH: usize = 256;

/// What the consumer holds results to, and where it counts what it could not apply
/// (`gl_orchestrator_invalid_messages_total{reason}`).
#[derive(Debug, Clone)]
pub struct Intake {
    pub bounds: Bounds,
    /// When set, a result is applied only if its MAC verifies (`engine::signing`).
    pub keys: Option<Keyring>,
    pub invalid: IntCounterVec,
}

impl Intake {
    pub fn of(settings: &engine::config::Settings, invalid: IntCounterVec) -> Self {
        Self { bounds: settings.bounds(), keys: settings.result_keys.clone(), invalid }
    }

    fn count(&self, reason: &str) {
        self.invalid.with_label_values(&[reason]).inc();
    }
}
/// How often an idle consumer checks that the broker still answers (a paused broker leaves the
/// connection open and silent).
const PROBE: Duration = Duration::from_secs(5);

/// Runs until `stop` turns true, reconnecting to the broker with backoff.
pub async fn run(
    db: SharedStore,
    queue: Arc<dyn Connector>,
    name: String,
    intake: Intake,
    progress: Arc<Component>,
    stop: watch::Receiver<bool>,
) {
    runtime::queue::reconnecting("result consumer", stop.clone(), || {
        let (db, queue, name, mut stop) = (db.clone(), queue.clone(), name.clone(), stop.clone());
        let (progress, intake) = (progress.clone(), intake.clone());
        async move {
            let broker = queue.connect(&format!("{name}-inbox")).await?;
            let outcome = session(&db, broker.as_ref(), &name, &intake, &progress, &mut stop).await;
            broker.close().await;
            outcome
        }
    })
    .await;
}

/// Consumes until stopped or until the connection fails; each batch recorded and each probe
/// answered is a beat of `progress`.
async fn session(
    db: &SharedStore,
    broker: &dyn runtime::queue::Queue,
    name: &str,
    intake: &Intake,
    progress: &Component,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), QueueError> {
    let mut results = broker.consume(&Source::Results, &format!("{name}-results"), 512).await?.deliveries;
    let mut dead = broker.consume(&Source::Dead, &format!("{name}-dead"), 16).await?.deliveries;
    progress.beat();
    // Whether the last batch reached the database: an idle probe is progress only then (a
    // consumer whose results keep going back to the queue has work and is not making progress).
    let mut recording = true;
    let mut probe = tokio::time::interval(PROBE);
    probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.changed() => return Ok(()),
            _ = probe.tick() => {
                broker.depth(&Source::Results).await?;
                if recording {
                    progress.beat();
                }
            }
            first = results.next() => {
                let Some(first) = first else { return Err(QueueError::Closed) };
                let mut batch = vec![first?];
                while batch.len() < BATCH {
                    match results.next().now_or_never() {
                        Some(Some(d)) => batch.push(d?),
                        _ => break,
                    }
                }
                recording = record(db, batch, intake, decode_result).await;
                if recording {
                    progress.beat();
                }
            }
            poisoned = dead.next() => {
                let Some(poisoned) = poisoned else { return Err(QueueError::Closed) };
                recording = record(db, vec![poisoned?], intake, poison_result).await;
                if recording {
                    progress.beat();
                }
            }
        }
    }
}

/// Why a delivery was dropped: the metric's reason and what to log.
type Dropped = (&'static str, String);

/// How a delivery becomes the result to record, or why it cannot.
type Decode = fn(&Delivery, &Intake) -> Result<ResultMessage, Dropped>;

/// Records a batch; acknowledges after commit, or returns everything to the queue on failure.
/// False when the database could not be reached (no progress).
async fn record(db: &SharedStore, deliveries: Vec<Delivery>, intake: &Intake, decode: Decode) -> bool {
    let mut good = Vec::with_capacity(deliveries.len());
    let mut messages = Vec::with_capacity(deliveries.len());
    for d in deliveries {
        match decode(&d, intake) {
            Ok(m) => {
                messages.push(m);
                good.push(d);
            }
            Err((reason, why)) => {
                tracing::error!(size = d.body.len(), reason, why = %why, "a message the inbox cannot apply dropped");
                intake.count(reason);
                d.dead_letter().await;
            }
        }
    }
    match db.record_results(&messages).await {
        Ok(()) => {
            for d in good {
                d.ack().await;
            }
            true
        }
        Err(e) if e.is_unavailable() => {
            tracing::warn!(error = %e, results = messages.len(), "database unavailable; results go back to the queue");
            tokio::time::sleep(Duration::from_millis(200)).await;
            for d in good {
                d.requeue().await;
            }
            false
        }
        // One bad result must not hold the others back: record them one by one.
        Err(_) => {
            for (d, m) in good.into_iter().zip(messages) {
                record_one(db, d, m, intake).await;
            }
            true
        }
    }
}

/// Records one result; a result the database refuses becomes a failed attempt of type
/// `invalid_result`, so its node ends cleanly instead of waiting for ever. One refused even then
/// (its execution does not exist, say) can never be applied: it is counted and acknowledged.
async fn record_one(db: &SharedStore, delivery: Delivery, mut message: ResultMessage, intake: &Intake) {
    let stored = match db.record_results(std::slice::from_ref(&message)).await {
        Ok(()) => Ok(()),
        Err(e) if e.is_unavailable() => Err(e),
        Err(e) => {
            tracing::error!(error = %e, execution_id = %message.execution_id, node_id = %message.node_id,
                attempt = message.attempt, "result refused by the database; recording it as invalid_result");
            intake.count("invalid_result");
            message.outcome = Outcome::Failed {
                error: NodeError::new("invalid_result", "the worker's result could not be stored"),
                retryable: false,
            };
            db.record_results(std::slice::from_ref(&message)).await
        }
    };
    match stored {
        Ok(()) => delivery.ack().await,
        Err(e) if e.is_unavailable() => delivery.requeue().await,
        Err(e) => {
            tracing::error!(error = %e, execution_id = %message.execution_id, node_id = %message.node_id,
                attempt = message.attempt, "a result that can never be applied dropped");
            intake.count("unappliable");
            delivery.ack().await;
        }
    }
}

fn decode_result(d: &Delivery, intake: &Intake) -> Result<ResultMessage, Dropped> {
    if let Some(keys) = &intake.keys {
        let mac = d.headers.get(MAC_HEADER).map(String::as_str);
        keys.verify(&d.body, mac).map_err(|refusal| (refusal.reason(), refusal.to_string()))?;
    }
    let decoded =
        engine::bounds::decode_result(&d.body, &intake.bounds, &now_text()).map_err(|e| ("unaddressable", e.0))?;
    if let Decoded::Invalid { result, problem } = &decoded {
        tracing::warn!(execution_id = %result.execution_id, node_id = %result.node_id, attempt = result.attempt,
            reason = %problem, "a result that cannot be applied as sent ends its attempt as invalid_result");
        intake.count("invalid_result");
    }
    Ok(decoded.into_result())
}

fn now_text() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// A dead-lettered task becomes a failed attempt of type `poison`, never retried.
fn poison_result(d: &Delivery, _: &Intake) -> Result<ResultMessage, Dropped> {
    let task = match Message::from_bytes(&d.body) {
        Ok(Message::Task(task)) => task,
        Ok(other) => return Err(("unaddressable", format!("a dead-lettered {} message", other.type_name()))),
        Err(e) => return Err(("unaddressable", format!("a dead-lettered message: {e}"))),
    };
    let now = now_text();
    Ok(ResultMessage {
        v: WIRE_VERSION,
        execution_id: task.execution_id,
        node_id: task.node_id,
        attempt: task.attempt,
        kind: task.kind,
        worker_id: "dead-letter".to_owned(),
        started_at: now.clone(),
        completed_at: now,
        duration_ms: 0,
        deliveries: d.deliveries,
        outcome: Outcome::Failed {
            error: NodeError::new("poison", "the task crashed or stalled every worker it was delivered to"),
            retryable: false,
        },
    })
}
