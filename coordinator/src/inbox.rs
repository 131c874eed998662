//! The result consumer: moves attempt results from RabbitMQ into the `node_attempts` inbox.
//!
//! A result is acknowledged only after the transaction that records it commits; a duplicate
//! hits the primary key and is dropped. Tasks dead-lettered after too many deliveries (a poison
//! task that kills every worker) are recorded as failed attempts with error type `poison`.

use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions, BasicRejectOptions};
use shared::amqp::{Broker, BrokerError, Topology, delivery_count};
use shared::messages::{Message, ResultMessage, WIRE_VERSION};
use shared::state::{NodeError, Outcome};
use tokio::sync::watch;

use crate::db::Db;

const BATCH: usize = 256;

/// Runs until `stop` turns true, reconnecting to RabbitMQ with backoff.
pub async fn run(db: Db, amqp_url: String, topology: Topology, name: String, stop: watch::Receiver<bool>) {
    shared::amqp::reconnecting("result consumer", stop.clone(), || {
        let (db, url, topology, name, mut stop) =
            (db.clone(), amqp_url.clone(), topology.clone(), name.clone(), stop.clone());
        async move { session(&db, &url, &topology, &name, &mut stop).await }
    })
    .await;
}

async fn session(
    db: &Db,
    url: &str,
    topology: &Topology,
    name: &str,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), BrokerError> {
    let broker = Broker::connect(url, &format!("{name}-inbox"), topology.clone()).await?;
    let (_results_channel, mut results) =
        broker.consume(&topology.results_queue(), &format!("{name}-results"), 512).await?;
    let (_dead_channel, mut dead) = broker.consume(&topology.dead_queue(), &format!("{name}-dead"), 16).await?;
    loop {
        tokio::select! {
            _ = stop.changed() => {
                broker.close().await;
                return Ok(());
            }
            first = results.next() => {
                let Some(first) = first else { return Err(closed()) };
                let mut batch = vec![first?];
                while batch.len() < BATCH {
                    match results.next().now_or_never() {
                        Some(Some(d)) => batch.push(d?),
                        _ => break,
                    }
                }
                record(db, batch, decode_result).await;
            }
            poisoned = dead.next() => {
                let Some(poisoned) = poisoned else { return Err(closed()) };
                record(db, vec![poisoned?], poison_result).await;
            }
        }
    }
}

fn closed() -> BrokerError {
    BrokerError::Amqp(lapin::Error::from(lapin::ErrorKind::InvalidConnectionState(lapin::ConnectionState::Closed)))
}

/// Records a batch; acknowledges after commit, or returns everything to the queue on failure.
async fn record(db: &Db, deliveries: Vec<Delivery>, decode: fn(&Delivery) -> Option<ResultMessage>) {
    let mut good = Vec::with_capacity(deliveries.len());
    let mut messages = Vec::with_capacity(deliveries.len());
    for d in deliveries {
        match decode(&d) {
            Some(m) => {
                messages.push(m);
                good.push(d);
            }
            None => {
                tracing::error!(size = d.data.len(), "undecodable result message dropped");
                let _ = d.acker.reject(BasicRejectOptions { requeue: false }).await;
            }
        }
    }
    match db.record_results(&messages).await {
        Ok(()) => {
            for d in good {
                let _ = d.acker.ack(BasicAckOptions::default()).await;
            }
        }
        Err(e) if e.is_unavailable() => {
            tracing::warn!(error = %e, results = messages.len(), "database unavailable; results go back to the queue");
            tokio::time::sleep(Duration::from_millis(200)).await;
            for d in good {
                let _ = d.acker.nack(BasicNackOptions { requeue: true, ..Default::default() }).await;
            }
        }
        // One bad result must not hold the others back: record them one by one.
        Err(_) => {
            for (d, m) in good.into_iter().zip(messages) {
                record_one(db, d, m).await;
            }
        }
    }
}

/// Records one result; a result the database refuses becomes a failed attempt of type
/// `invalid_result`, so its node ends cleanly instead of waiting for ever.
async fn record_one(db: &Db, delivery: Delivery, mut message: ResultMessage) {
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
        Ok(()) => {
            let _ = delivery.acker.ack(BasicAckOptions::default()).await;
        }
        Err(_) => {
            let _ = delivery.acker.nack(BasicNackOptions { requeue: true, ..Default::default() }).await;
        }
    }
}

fn decode_result(d: &Delivery) -> Option<ResultMessage> {
    match Message::from_bytes(&d.data) {
        Ok(Message::Result(r)) => Some(r),
        _ => None,
    }
}

/// A dead-lettered task becomes a failed attempt of type `poison`, never retried.
fn poison_result(d: &Delivery) -> Option<ResultMessage> {
    let Ok(Message::Task(task)) = Message::from_bytes(&d.data) else {
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
        deliveries: delivery_count(&d.properties),
        outcome: Outcome::Failed {
            error: NodeError::new("poison", "the task crashed or stalled every worker it was delivered to"),
            retryable: false,
        },
    })
}
