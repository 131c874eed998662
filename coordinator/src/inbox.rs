//! The result consumer: moves attempt results from the queue into the `node_attempts` inbox.
//!
//! A result is acknowledged only after the transaction that records it commits; a duplicate
//! hits the primary key and is dropped. Tasks dead-lettered after too many deliveries (a poison
//! task that kills every worker) are recorded as failed attempts with error type `poison`.

use std::sync::Arc;
use std::time::Duration;

use engine::messages::{Message, ResultMessage, WIRE_VERSION};
use engine::state::{NodeError, Outcome};
use engine::topology::Source;
use futures_util::{FutureExt, StreamExt};
use runtime::liveness::Component;
use runtime::queue::{Connector, Delivery, QueueError};
use tokio::sync::watch;

use crate::store::SharedStore;

const BATCH: usize = 256;
/// How often an idle consumer checks that the broker still answers (a paused broker leaves the
/// connection open and silent).
const PROBE: Duration = Duration::from_secs(5);

/// Runs until `stop` turns true, reconnecting to the broker with backoff.
pub async fn run(
    db: SharedStore,
    queue: Arc<dyn Connector>,
    name: String,
    progress: Arc<Component>,
    stop: watch::Receiver<bool>,
) {
    runtime::queue::reconnecting("result consumer", stop.clone(), || {
        let (db, queue, name, mut stop) = (db.clone(), queue.clone(), name.clone(), stop.clone());
        let progress = progress.clone();
        async move {
            let broker = queue.connect(&format!("{name}-inbox")).await?;
            let outcome = session(&db, broker.as_ref(), &name, &progress, &mut stop).await;
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
                recording = record(db, batch, decode_result).await;
                if recording {
                    progress.beat();
                }
            }
            poisoned = dead.next() => {
                let Some(poisoned) = poisoned else { return Err(QueueError::Closed) };
                recording = record(db, vec![poisoned?], poison_result).await;
                if recording {
                    progress.beat();
                }
            }
        }
    }
}

/// Records a batch; acknowledges after commit, or returns everything to the queue on failure.
/// False when the database could not be reached (no progress).
async fn record(db: &SharedStore, deliveries: Vec<Delivery>, decode: fn(&Delivery) -> Option<ResultMessage>) -> bool {
    let mut good = Vec::with_capacity(deliveries.len());
    let mut messages = Vec::with_capacity(deliveries.len());
    for d in deliveries {
        match decode(&d) {
            Some(m) => {
                messages.push(m);
                good.push(d);
            }
            None => {
                tracing::error!(size = d.body.len(), "undecodable result message dropped");
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
                record_one(db, d, m).await;
            }
            true
        }
    }
}

/// Records one result; a result the database refuses becomes a failed attempt of type
/// `invalid_result`, so its node ends cleanly instead of waiting for ever.
async fn record_one(db: &SharedStore, delivery: Delivery, mut message: ResultMessage) {
    let stored = match db.record_results(std::slice::from_ref(&message)).await {
        Ok(()) => Ok(()),
        Err(e) if e.is_unavailable() => Err(e),
        Err(e) => {
            tracing::error!(error = %e, execution_id = %message.execution_id, node_id = %message.node_id,
                attempt = message.attempt, "result refused by the database; recording it as invalid_result");
            message.outcome = Outcome::Failed {
                error: NodeError::new("invalid_result", "the worker's result could not be stored"),
                retryable: false,
            };
            db.record_results(std::slice::from_ref(&message)).await
        }
    };
    match stored {
        Ok(()) => delivery.ack().await,
        Err(_) => delivery.requeue().await,
    }
}

fn decode_result(d: &Delivery) -> Option<ResultMessage> {
    match Message::from_bytes(&d.body) {
        Ok(Message::Result(r)) => Some(r),
        _ => None,
    }
}

/// A dead-lettered task becomes a failed attempt of type `poison`, never retried.
fn poison_result(d: &Delivery) -> Option<ResultMessage> {
    let Ok(Message::Task(task)) = Message::from_bytes(&d.body) else {
        return None;
    };
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    Some(ResultMessage {
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
