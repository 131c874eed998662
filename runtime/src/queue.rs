//! The message-queue port: what coordinators and workers need from a broker, and nothing more.
//!
//! [`crate::amqp`] implements it on RabbitMQ (the production path); an embedded, in-process
//! implementation plugs in behind the same traits. The semantics every implementation keeps:
//!
//! - [`Queue::publish`] returns only when every message is durably accepted and, when
//!   `mandatory`, routed to a queue; otherwise it fails and the caller publishes again later
//!   (duplicates are expected and harmless downstream).
//! - A [`Delivery`] is settled exactly once: acknowledged after what it caused is committed,
//!   requeued when that failed, dead-lettered when it can never succeed. A delivery dropped
//!   unsettled returns to its queue when its consumer's connection goes away.
//! - [`Delivery::deliveries`] counts how often the message was handed out (1 the first time);
//!   task queues dead-letter a message handed out more often than the configured limit.

use std::collections::BTreeMap;
use std::sync::Arc;

use engine::topology::{Source, Topology};
use futures_util::stream::BoxStream;

/// A queue operation failed.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("RabbitMQ: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("the broker did not route the message to any queue (exchange {exchange}, key {routing_key})")]
    Unroutable { exchange: String, routing_key: String },
    #[error("the broker refused the message (nack)")]
    Nacked,
    #[error("the connection to the broker is closed")]
    Closed,
    /// The broker did not answer in time (paused, overloaded, or blocking publishers).
    #[error("the broker did not {operation} within {after:?}")]
    Timeout { operation: &'static str, after: std::time::Duration },
}

/// A message to publish. `exchange` and `routing_key` are addresses from [`Topology`].
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub exchange: String,
    pub routing_key: String,
    pub body: Vec<u8>,
    pub headers: BTreeMap<String, String>,
    /// Refuse to count the message as sent unless a queue received it (tasks and results). A
    /// cancel is a best-effort signal: with no worker connected nothing needs it.
    pub mandatory: bool,
}

/// How a delivery is settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    Ack,
    /// Back to the queue, to be delivered again (counts as a delivery).
    Requeue,
    /// Never deliver again: to the dead-letter queue where there is one, else dropped.
    DeadLetter,
}

/// Settles one delivery (implemented by each adapter).
#[async_trait::async_trait]
pub trait Acker: Send + Sync {
    async fn settle(self: Box<Self>, how: Settle);
}

/// A message taken from a queue.
pub struct Delivery {
    pub body: Vec<u8>,
    pub headers: BTreeMap<String, String>,
    /// How many times this message has been handed out, this time included.
    pub deliveries: u32,
    acker: Box<dyn Acker>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery").field("size", &self.body.len()).field("deliveries", &self.deliveries).finish()
    }
}

impl Delivery {
    pub fn new(body: Vec<u8>, headers: BTreeMap<String, String>, deliveries: u32, acker: Box<dyn Acker>) -> Self {
        Self { body, headers, deliveries, acker }
    }

    pub async fn ack(self) {
        self.acker.settle(Settle::Ack).await;
    }

    pub async fn requeue(self) {
        self.acker.settle(Settle::Requeue).await;
    }

    pub async fn dead_letter(self) {
        self.acker.settle(Settle::DeadLetter).await;
    }
}

/// Stops a consumer taking new deliveries (implemented by each adapter).
#[async_trait::async_trait]
pub trait StopConsuming: Send + Sync {
    async fn stop(&self);
}

/// A stream of deliveries. Deliveries already taken can still be settled after [`Consumer::stop`].
pub struct Consumer {
    pub deliveries: BoxStream<'static, Result<Delivery, QueueError>>,
    stopper: Box<dyn StopConsuming>,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer").finish_non_exhaustive()
    }
}

impl Consumer {
    pub fn new(deliveries: BoxStream<'static, Result<Delivery, QueueError>>, stopper: Box<dyn StopConsuming>) -> Self {
        Self { deliveries, stopper }
    }

    /// Takes no more deliveries; those in hand stay unsettled until settled or disconnected.
    pub async fn stop(&mut self) {
        self.stopper.stop().await;
    }
}

/// One connection to the broker.
#[async_trait::async_trait]
pub trait Queue: Send + Sync {
    /// Declares the task queue of a worker pool (idempotent), so tasks for it are routable.
    async fn declare_pool(&self, pool: &str) -> Result<(), QueueError>;

    /// Publishes `messages` and waits until each is confirmed (see the module doc).
    async fn publish(&self, messages: &[Outgoing]) -> Result<(), QueueError>;

    /// Starts consuming `source` with at most `prefetch` deliveries unsettled at once.
    async fn consume(&self, source: &Source, consumer_tag: &str, prefetch: u16) -> Result<Consumer, QueueError>;

    /// Messages ready (not yet handed out) in `source`.
    async fn depth(&self, source: &Source) -> Result<u32, QueueError>;

    fn is_connected(&self) -> bool;

    /// Closes the connection; unsettled deliveries go back to their queues.
    async fn close(&self);
}

/// Opens connections (one per component, named for the broker's connection list).
#[async_trait::async_trait]
pub trait Connector: Send + Sync + std::fmt::Debug {
    async fn connect(&self, name: &str) -> Result<Arc<dyn Queue>, QueueError>;

    /// The addresses messages are published to.
    fn topology(&self) -> &Topology;
}

/// Runs `session` until it ends cleanly or `stop` turns true. After a failure it waits, with capped
/// exponential backoff and jitter (so a fleet does not reconnect in lockstep), and runs it again.
pub async fn reconnecting<F, Fut>(what: &str, mut stop: tokio::sync::watch::Receiver<bool>, mut session: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), QueueError>>,
{
    let mut delay = std::time::Duration::from_millis(100);
    while !*stop.borrow() {
        match session().await {
            Ok(()) => return,
            Err(e) => tracing::warn!(error = %e, "{what} lost the broker; reconnecting"),
        }
        // Jitter from the clock's nanoseconds: between half and all of the delay.
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().subsec_nanos();
        let pause = delay.mul_f64(0.5 + f64::from(nanos % 1000) / 2000.0);
        tokio::select! {
            _ = stop.changed() => return,
            () = tokio::time::sleep(pause) => {}
        }
        delay = (delay * 2).min(std::time::Duration::from_secs(5));
    }
}
