//! The outbox relay: publishes committed messages with publisher confirms, then deletes them.
//!
//! Rows are claimed for a short time (`claimed_until`), published with `mandatory` and confirms,
//! and deleted only after every confirm arrived; no database connection is held while waiting
//! on RabbitMQ. A relay that dies mid-batch leaves its claim to expire, and the rows are sent
//! again: consumers treat duplicates as harmless. Any number of replicas may relay at once.
//!
//! While idle the relay probes the broker every [`PROBE`], so a connection that still reports
//! itself open but no longer answers (a paused broker) is found and replaced before work
//! arrives; every call is bounded by the connector's timeout. Each completed round (a batch
//! confirmed, or an empty claim followed by an idle wait) is a beat of the `relay` component.

use std::collections::HashSet;
use std::time::Duration;

use std::sync::Arc;

use engine::topology::{Source, Topology};
use futures_util::FutureExt;
use runtime::queue::{Connector, Outgoing, Queue, QueueError};
use tokio::sync::watch;

use crate::health::{Health, RELAY};
use crate::store::{OutboxRow, SharedStore, Subscription, Topic};

const BATCH: i64 = 500;
/// How long a relay may hold outbox rows before another one sends them (publishing takes ms).
const CLAIM: Duration = Duration::from_secs(10);
/// How often an idle relay checks that the broker still answers.
const PROBE: Duration = Duration::from_secs(5);

/// Runs until `stop` turns true, reconnecting to RabbitMQ with backoff.
pub async fn run(
    db: SharedStore,
    queue: Arc<dyn Connector>,
    name: String,
    health: Arc<Health>,
    stop: watch::Receiver<bool>,
) {
    runtime::queue::reconnecting("outbox relay", stop.clone(), || {
        let (db, queue, name) = (db.clone(), queue.clone(), name.clone());
        let (health, mut stop) = (health.clone(), stop.clone());
        async move {
            let result = session(&db, queue.as_ref(), &name, &health, &mut stop).await;
            health.set_broker_connected(false);
            result
        }
    })
    .await;
}

/// One connection's life: relays until `stop` or a broker error, then closes the connection.
async fn session(
    db: &SharedStore,
    connector: &dyn Connector,
    name: &str,
    health: &Health,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), QueueError> {
    let broker = connector.connect(&format!("{name}-relay")).await?;
    health.set_broker_connected(true);
    let result = relay(db, broker.as_ref(), connector.topology(), health, stop).await;
    broker.close().await;
    result
}

/// Claims, publishes and deletes outbox rows in rounds; returns on `stop` or a broker error.
async fn relay(
    db: &SharedStore,
    broker: &dyn Queue,
    topology: &Topology,
    health: &Health,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), QueueError> {
    let progress = health.component(RELAY);
    progress.beat();
    let mut pools: HashSet<String> = HashSet::new();
    let mut listener = None;
    let mut probed = std::time::Instant::now();
    while !*stop.borrow() {
        if probed.elapsed() >= PROBE {
            // No beat: an answering broker is not progress while the database may not answer.
            broker.depth(&Source::Results).await?;
            probed = std::time::Instant::now();
        }
        if listener.is_none() {
            listener = db.subscribe(Topic::Outbox).await.ok();
        }
        let rows = match db.claim_outbox(BATCH, CLAIM).await {
            Ok(rows) => rows,
            Err(e) => {
                // No beat: a relay that cannot reach the database is making no progress.
                tracing::warn!(error = %e, "claiming outbox rows failed");
                wait(&mut listener, stop).await;
                continue;
            }
        };
        if rows.is_empty() {
            wait(&mut listener, stop).await;
            progress.beat();
            continue;
        }
        publish(broker, topology, &mut pools, &rows).await?;
        let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
        match db.delete_outbox(&ids).await {
            Ok(()) => progress.beat(),
            // The messages went out; they will go out again when the claim expires (harmless).
            Err(e) => tracing::warn!(error = %e, "deleting sent outbox rows failed"),
        }
    }
    Ok(())
}

/// Publishes claimed rows with confirms. A task for a pool no worker has declared yet would be
/// unroutable, so each pool is declared before its first task; cancels fan out to whoever
/// listens, so only they go without `mandatory`.
async fn publish(
    broker: &dyn Queue,
    topology: &Topology,
    pools: &mut HashSet<String>,
    rows: &[OutboxRow],
) -> Result<(), QueueError> {
    for row in rows.iter().filter(|r| r.exchange == topology.tasks_exchange()) {
        if pools.insert(row.routing_key.clone()) {
            broker.declare_pool(&row.routing_key).await?;
        }
    }
    let batch: Vec<Outgoing> = rows
        .iter()
        .map(|r| Outgoing {
            exchange: r.exchange.clone(),
            routing_key: r.routing_key.clone(),
            body: r.body.clone(),
            headers: r.headers.clone(),
            mandatory: r.exchange != topology.cancel_exchange(),
        })
        .collect();
    broker.publish(&batch).await
}

/// Waits for a notification, a stop, or a short poll interval; drains queued notifications.
async fn wait(listener: &mut Option<Box<dyn Subscription>>, stop: &mut watch::Receiver<bool>) {
    let poll = tokio::time::sleep(Duration::from_millis(500));
    match listener.as_mut() {
        Some(l) => {
            tokio::select! {
                note = l.next() => {
                    if note.is_err() {
                        *listener = None;
                    } else if let Some(l) = listener.as_mut() {
                        while let Some(Ok(_)) = l.next().now_or_never() {}
                    }
                }
                _ = stop.changed() => {}
                () = poll => {}
            }
        }
        None => {
            tokio::select! {
                _ = stop.changed() => {}
                () = poll => {}
            }
        }
    }
}
