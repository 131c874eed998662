//! The embedded queue: the [`runtime::queue`] port on a table of the embedded SQLite database, for
//! `coordinator dev`, with RabbitMQ's semantics where the engine relies on them:
//!
//! - publishing commits the messages before it returns (the publisher confirm), and a mandatory
//!   task for a pool nobody declared is refused as unroutable;
//! - a delivery is held by its connection until settled; closing the connection, or a new process
//!   opening the database (the old one was killed), returns what was held to the queue;
//! - a task handed out more than the delivery limit allows is dead-lettered (poison);
//! - cancels fan out to every consumer and are not stored (best effort, as on RabbitMQ).

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use engine::topology::{Source, Topology};
use futures_util::StreamExt;
use runtime::queue::{Acker, Connector, Consumer, Delivery, Outgoing, Queue, QueueError, Settle, StopConsuming};
use sqlx::{Row, SqlitePool};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, broadcast, mpsc};

/// How long a consumer waits for a wake-up before looking again anyway.
const POLL: Duration = Duration::from_millis(500);

/// The embedded broker: opens connections on the shared database.
#[derive(Debug, Clone)]
pub struct EmbeddedQueue {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    pool: SqlitePool,
    topology: Topology,
    /// Pools some consumer or the relay declared (the queues tasks may be routed to).
    pools: Mutex<HashSet<String>>,
    /// Wakes consumers after a publish or a requeue commits.
    wake: Notify,
    cancels: broadcast::Sender<Vec<u8>>,
    connections: AtomicU64,
}

impl EmbeddedQueue {
    /// Takes the queue over in `pool`'s database: messages held by an earlier process return to
    /// their queues (that process is gone; RabbitMQ does the same when a connection drops).
    pub async fn open(pool: SqlitePool, topology: Topology) -> Result<Self, QueueError> {
        sqlx::query("UPDATE queue_messages SET holder = NULL WHERE holder IS NOT NULL")
            .execute(&pool)
            .await
            .map_err(unavailable)?;
        let inner = Inner {
            pool,
            topology,
            pools: Mutex::default(),
            wake: Notify::new(),
            cancels: broadcast::channel(1024).0,
            connections: AtomicU64::new(0),
        };
        Ok(Self { inner: Arc::new(inner) })
    }
}

#[async_trait::async_trait]
impl Connector for EmbeddedQueue {
    async fn connect(&self, name: &str) -> Result<Arc<dyn Queue>, QueueError> {
        let n = self.inner.connections.fetch_add(1, Ordering::Relaxed);
        let id = format!("{name}#{n}");
        Ok(Arc::new(Connection { inner: self.inner.clone(), id, closed: Arc::default() }))
    }

    fn topology(&self) -> &Topology {
        &self.inner.topology
    }
}

/// A message just taken from the table, not yet a [`Delivery`].
struct Taken {
    id: i64,
    body: Vec<u8>,
    headers: BTreeMap<String, String>,
    deliveries: u32,
}

/// One connection: what it holds is tagged with its id.
struct Connection {
    inner: Arc<Inner>,
    id: String,
    closed: Arc<AtomicBool>,
}

/// A database failure seen through the queue port: the broker is unavailable.
fn unavailable(e: sqlx::Error) -> QueueError {
    tracing::warn!(error = %e, "embedded queue: database error");
    QueueError::Closed
}

impl Inner {
    /// The queue a message goes to; `None` for a cancel (fanned out, not stored).
    fn route(&self, m: &Outgoing) -> Result<Option<String>, QueueError> {
        let t = &self.topology;
        let unroutable = || QueueError::Unroutable { exchange: m.exchange.clone(), routing_key: m.routing_key.clone() };
        if m.exchange == t.tasks_exchange() {
            let declared = self.pools.lock().map_err(|_| QueueError::Closed)?.contains(&m.routing_key);
            return if declared { Ok(Some(t.task_queue(&m.routing_key))) } else { Err(unroutable()) };
        }
        if m.exchange == t.results_exchange() {
            return Ok(Some(t.results_queue()));
        }
        if m.exchange == t.dead_exchange() {
            return Ok(Some(t.dead_queue()));
        }
        if m.exchange == t.cancel_exchange() {
            return Ok(None);
        }
        Err(unroutable())
    }

    /// Takes the oldest ready message of `queue` for `holder`, dead-lettering on the way any task
    /// already handed out more often than the delivery limit allows.
    async fn take(&self, queue: &str, holder: &str) -> Result<Option<Taken>, QueueError> {
        let is_task_queue = self.is_task_queue(queue);
        loop {
            let row = sqlx::query(
                "UPDATE queue_messages SET holder = ?1, deliveries = deliveries + 1
                 WHERE id = (SELECT id FROM queue_messages WHERE queue = ?2 AND holder IS NULL ORDER BY id LIMIT 1)
                 RETURNING id, body, headers, deliveries",
            )
            .bind(holder)
            .bind(queue)
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?;
            let Some(row) = row else { return Ok(None) };
            let id: i64 = row.get("id");
            let deliveries = u32::try_from(row.get::<i64, _>("deliveries")).unwrap_or(u32::MAX);
            if is_task_queue && deliveries > self.topology.delivery_limit().saturating_add(1) {
                self.move_to_dead(id).await?;
                continue;
            }
            let headers = serde_json::from_str(row.get::<&str, _>("headers")).unwrap_or_default();
            return Ok(Some(Taken { id, body: row.get("body"), headers, deliveries }));
        }
    }

    /// Settles message `id` if `holder` still holds it. A failed ack is left alone: what the
    /// message caused is already committed, and it only comes back (a harmless duplicate) when
    /// its connection closes or the process restarts. A failed requeue or dead-letter is retried
    /// until it succeeds, since the message would otherwise wait for that.
    async fn settle(&self, id: i64, holder: &str, how: Settle, to_dead_queue: bool) {
        let mut pause = Duration::from_millis(50);
        loop {
            let query = match how {
                Settle::Ack => sqlx::query("DELETE FROM queue_messages WHERE id = ?1 AND holder = ?2"),
                Settle::Requeue => sqlx::query("UPDATE queue_messages SET holder = NULL WHERE id = ?1 AND holder = ?2"),
                Settle::DeadLetter if to_dead_queue => sqlx::query(
                    "UPDATE queue_messages SET holder = NULL, deliveries = 0, queue = ?3 WHERE id = ?1 AND holder = ?2",
                ),
                Settle::DeadLetter => sqlx::query("DELETE FROM queue_messages WHERE id = ?1 AND holder = ?2"),
            };
            let mut query = query.bind(id).bind(holder);
            if how == Settle::DeadLetter && to_dead_queue {
                query = query.bind(self.topology.dead_queue());
            }
            match query.execute(&self.pool).await {
                Ok(_) => break,
                Err(e) if how == Settle::Ack => {
                    tracing::warn!(error = %e, "embedded queue: an ack failed; the message comes back when its connection closes");
                    break;
                }
                Err(e) => tracing::warn!(error = %e, "embedded queue: settling a delivery failed; retrying"),
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(2));
        }
        if how != Settle::Ack {
            self.wake.notify_waiters();
        }
    }

    /// Returns everything `holder` holds to its queue. Retried until it succeeds: the database
    /// being busy must not strand messages with a holder that is gone.
    async fn release_holder(&self, holder: &str) {
        let mut pause = Duration::from_millis(50);
        loop {
            let released = sqlx::query("UPDATE queue_messages SET holder = NULL WHERE holder = ?1")
                .bind(holder)
                .execute(&self.pool)
                .await;
            match released {
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(error = %e, holder, "embedded queue: releasing held messages failed; retrying")
                }
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(2));
        }
        self.wake.notify_waiters();
    }

    /// Task queues dead-letter to the dead queue; the results and dead queues drop instead.
    fn is_task_queue(&self, queue: &str) -> bool {
        queue != self.topology.results_queue() && queue != self.topology.dead_queue()
    }

    async fn move_to_dead(&self, id: i64) -> Result<(), QueueError> {
        sqlx::query("UPDATE queue_messages SET queue = ?1, holder = NULL, deliveries = 0 WHERE id = ?2")
            .bind(self.topology.dead_queue())
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        self.wake.notify_waiters();
        Ok(())
    }
}

#[async_trait::async_trait]
impl Queue for Connection {
    async fn declare_pool(&self, pool: &str) -> Result<(), QueueError> {
        self.inner.pools.lock().map_err(|_| QueueError::Closed)?.insert(pool.to_owned());
        Ok(())
    }

    /// All messages in one transaction: either every one is stored or none is.
    async fn publish(&self, messages: &[Outgoing]) -> Result<(), QueueError> {
        let mut stored = Vec::with_capacity(messages.len());
        let mut cancels = Vec::new();
        for m in messages {
            match self.inner.route(m) {
                Ok(Some(queue)) => stored.push((queue, m)),
                Ok(None) => cancels.push(m.body.clone()),
                Err(e) if m.mandatory => return Err(e),
                Err(_) => {}
            }
        }
        let mut tx = self.inner.pool.begin().await.map_err(unavailable)?;
        for (queue, m) in &stored {
            let headers = serde_json::to_string(&m.headers).unwrap_or_else(|_| "{}".to_owned());
            sqlx::query("INSERT INTO queue_messages (queue, body, headers) VALUES (?1, ?2, ?3)")
                .bind(queue)
                .bind(&m.body)
                .bind(headers)
                .execute(&mut *tx)
                .await
                .map_err(unavailable)?;
        }
        tx.commit().await.map_err(unavailable)?;
        for body in cancels {
            // No receiver means no worker is connected: nothing runs that could be cancelled.
            let _ = self.inner.cancels.send(body);
        }
        self.inner.wake.notify_waiters();
        Ok(())
    }

    async fn consume(&self, source: &Source, consumer_tag: &str, prefetch: u16) -> Result<Consumer, QueueError> {
        let stopped = Arc::new(AtomicBool::new(false));
        let stopper = Box::new(Stopper(stopped.clone()));
        let Some(queue) = self.inner.topology.queue_of(source) else {
            return Ok(Consumer::new(self.cancel_stream(stopped), stopper));
        };
        tracing::debug!(queue, consumer_tag, "embedded queue: consuming");
        let state = Taking {
            inner: self.inner.clone(),
            queue,
            holder: self.id.clone(),
            permits: Arc::new(Semaphore::new(usize::from(prefetch.max(1)))),
            stopped,
            closed: self.closed.clone(),
        };
        // Taken by a task of its own: a take in progress holds the database's one connection, so
        // it must finish even while the consumer is busy elsewhere and not polling the stream
        // (the result consumer records a batch between polls, which needs that connection).
        let (sender, mut receiver) = mpsc::channel(1);
        tokio::spawn(state.feed(sender));
        let deliveries = futures_util::stream::poll_fn(move |cx| receiver.poll_recv(cx));
        Ok(Consumer::new(deliveries.boxed(), stopper))
    }

    async fn depth(&self, source: &Source) -> Result<u32, QueueError> {
        let Some(queue) = self.inner.topology.queue_of(source) else { return Ok(0) };
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM queue_messages WHERE queue = ?1 AND holder IS NULL")
            .bind(queue)
            .fetch_one(&self.inner.pool)
            .await
            .map_err(unavailable)?;
        Ok(u32::try_from(n).unwrap_or(u32::MAX))
    }

    fn is_connected(&self) -> bool {
        !self.closed.load(Ordering::Relaxed)
    }

    /// Everything this connection still holds goes back to its queue.
    async fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.inner.release_holder(&self.id).await;
    }
}

/// Dropped without `close` (a session that ended on an error): what it held still goes back, as
/// when RabbitMQ sees a connection drop.
impl Drop for Connection {
    fn drop(&mut self) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        let (inner, id) = (self.inner.clone(), self.id.clone());
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { inner.release_holder(&id).await });
        }
    }
}

impl Connection {
    fn cancel_stream(
        &self,
        stopped: Arc<AtomicBool>,
    ) -> futures_util::stream::BoxStream<'static, Result<Delivery, QueueError>> {
        let receiver = self.inner.cancels.subscribe();
        futures_util::stream::unfold((receiver, stopped), |(mut receiver, stopped)| async move {
            loop {
                if stopped.load(Ordering::Relaxed) {
                    return None;
                }
                match receiver.recv().await {
                    Ok(body) => {
                        let delivery = Delivery::new(body, BTreeMap::new(), 1, Box::new(NoAcker));
                        return Some((Ok(delivery), (receiver, stopped)));
                    }
                    // Missed cancels are harmless: the coordinator ignores late results.
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        })
        .boxed()
    }
}

/// What a consumer's feeding task needs.
struct Taking {
    inner: Arc<Inner>,
    queue: String,
    holder: String,
    /// Prefetch: a permit per unsettled delivery.
    permits: Arc<Semaphore>,
    stopped: Arc<AtomicBool>,
    closed: Arc<AtomicBool>,
}

impl Taking {
    /// Hands deliveries to `sender` until the consumer stops, its connection closes, or the
    /// stream is dropped (then the delivery in hand goes back to the queue).
    async fn feed(self, sender: mpsc::Sender<Result<Delivery, QueueError>>) {
        loop {
            let Ok(permit) = self.permits.clone().acquire_owned().await else { return };
            let next = loop {
                if self.ended() || sender.is_closed() {
                    return;
                }
                // Registered before looking, so a publish committed in between still wakes us.
                let woken = self.inner.wake.notified();
                tokio::pin!(woken);
                woken.as_mut().enable();
                match self.inner.take(&self.queue, &self.holder).await {
                    // Stopped or closed while taking: the message must not stay with a holder
                    // that will never settle it.
                    Ok(Some(taken)) if self.ended() => {
                        self.inner.settle(taken.id, &self.holder, Settle::Requeue, false).await;
                        return;
                    }
                    Ok(Some(taken)) => break self.held(taken, permit),
                    Ok(None) => {}
                    // The one database connection was busy for too long: not a lost broker,
                    // so look again after the poll interval instead of ending the consumer.
                    Err(_) => {}
                }
                let _ = tokio::time::timeout(POLL, woken).await;
            };
            if let Err(mpsc::error::SendError(Ok(unsent))) = sender.send(Ok(next)).await {
                unsent.requeue().await;
                return;
            }
        }
    }

    fn ended(&self) -> bool {
        self.stopped.load(Ordering::Acquire) || self.closed.load(Ordering::Acquire)
    }

    fn held(&self, taken: Taken, permit: OwnedSemaphorePermit) -> Delivery {
        let acker = Held {
            inner: self.inner.clone(),
            id: taken.id,
            holder: self.holder.clone(),
            dead_letters_to_dead_queue: self.inner.is_task_queue(&self.queue),
            _permit: permit,
        };
        Delivery::new(taken.body, taken.headers, taken.deliveries, Box::new(acker))
    }
}

/// A delivery held by a connection; settling checks the holder, so a message returned to the
/// queue meanwhile (connection closed) is not settled twice.
struct Held {
    inner: Arc<Inner>,
    id: i64,
    holder: String,
    dead_letters_to_dead_queue: bool,
    _permit: OwnedSemaphorePermit,
}

#[async_trait::async_trait]
impl Acker for Held {
    async fn settle(self: Box<Self>, how: Settle) {
        self.inner.settle(self.id, &self.holder, how, self.dead_letters_to_dead_queue).await;
    }
}

/// Settling a cancel does nothing (cancels are not stored).
struct NoAcker;

#[async_trait::async_trait]
impl Acker for NoAcker {
    async fn settle(self: Box<Self>, _how: Settle) {}
}

struct Stopper(Arc<AtomicBool>);

#[async_trait::async_trait]
impl StopConsuming for Stopper {
    async fn stop(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}
