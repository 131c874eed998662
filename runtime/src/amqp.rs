//! The RabbitMQ implementation of the [`crate::queue`] port (lapin): topology, confirmed
//! publishing, consuming.
//!
//! Topology, all names under the configured prefix `P`:
//!
//! | name | kind | purpose |
//! |---|---|---|
//! | `P.tasks` | direct exchange | task messages, routing key = the node's `queue` |
//! | `P.tasks.<queue>` | quorum queue | one per worker pool; `x-delivery-limit`, dead-letters to `P.dead` |
//! | `P.dead` | fanout exchange + quorum queue | tasks that exhausted their deliveries (poison) |
//! | `P.results` | direct exchange + quorum queue `P.results` | attempt results for the coordinators |
//! | `P.cancel` | fanout exchange | cancel requests; each worker binds a private queue |
//!
//! Every publish uses `mandatory` and waits for the publisher confirm: a message counts as sent
//! only when the broker has acknowledged it *and* routed it to a queue.
//!
//! Every operation that waits on the broker (connect, declare, publish and confirm, consumer
//! set-up, depth, settle, close) is bounded by the connector's `timeout`
//! (`GL_ORCHESTRATOR_AMQP_TIMEOUT_SECONDS`). A paused or overloaded broker, or a memory alarm that
//! blocks publishers, otherwise leaves a caller waiting for ever while the connection still
//! reports itself open. On expiry the operation fails with [`QueueError::Timeout`] and the
//! connection is closed, so its unsettled deliveries go back to their queues and the caller's
//! reconnect path runs.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions, BasicRejectOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind};

use engine::topology::{Source, Topology};

use crate::queue::{Acker, Connector, Consumer, Delivery, Outgoing, Queue, QueueError, Settle, StopConsuming};

/// A connection with one confirm-mode channel for publishing.
#[derive(Debug)]
pub struct Broker {
    connection: Connection,
    publisher: Channel,
    topology: Topology,
    timeout: Duration,
}

/// Runs one broker operation within `limit`.
async fn bounded<T, E: Into<QueueError>>(
    operation: &'static str,
    limit: Duration,
    call: impl Future<Output = Result<T, E>>,
) -> Result<T, QueueError> {
    match tokio::time::timeout(limit, call).await {
        Ok(result) => result.map_err(Into::into),
        Err(_) => Err(QueueError::Timeout { operation, after: limit }),
    }
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() }
}

fn quorum(extra: &[(&str, AMQPValue)]) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), AMQPValue::LongString(LongString::from("quorum")));
    for (k, v) in extra {
        args.insert(ShortString::from(*k), v.clone());
    }
    args
}

impl Broker {
    /// Connects and declares the shared part of the topology (idempotent), all within
    /// `timeout`.
    pub async fn connect(
        url: &str,
        connection_name: &str,
        topology: Topology,
        timeout: Duration,
    ) -> Result<Self, QueueError> {
        let properties = ConnectionProperties::default().with_connection_name(connection_name.into());
        let connection = bounded("connect", timeout, Connection::connect(&with_heartbeat(url), properties)).await?;
        let set_up = async {
            let publisher = connection.create_channel().await?;
            publisher.confirm_select(ConfirmSelectOptions::default()).await?;
            Ok::<_, lapin::Error>(publisher)
        };
        let publisher = match bounded("open the publishing channel", timeout, set_up).await {
            Ok(publisher) => publisher,
            Err(e) => {
                abandon(&connection, timeout).await;
                return Err(e);
            }
        };
        let broker = Self { connection, publisher, topology, timeout };
        if let Err(e) = bounded("declare the topology", timeout, broker.declare_common()).await {
            broker.close().await;
            return Err(e);
        }
        Ok(broker)
    }

    /// Fails the operation's caller and drops the connection when the operation failed: a
    /// connection that timed out once is not trusted again.
    async fn guard<T>(
        &self,
        operation: &'static str,
        call: impl Future<Output = Result<T, QueueError>>,
    ) -> Result<T, QueueError> {
        let result = bounded(operation, self.timeout, call).await;
        if matches!(result, Err(QueueError::Timeout { .. })) {
            self.close().await;
        }
        result
    }

    async fn declare_common(&self) -> Result<(), QueueError> {
        let t = &self.topology;
        let ch = &self.publisher;
        let exchange = |name: String, kind: ExchangeKind| async move {
            let options = ExchangeDeclareOptions { durable: true, ..ExchangeDeclareOptions::default() };
            ch.exchange_declare(name.into(), kind, options, FieldTable::default()).await
        };
        exchange(t.tasks_exchange(), ExchangeKind::Direct).await?;
        exchange(t.dead_exchange(), ExchangeKind::Fanout).await?;
        exchange(t.results_exchange(), ExchangeKind::Direct).await?;
        exchange(t.cancel_exchange(), ExchangeKind::Fanout).await?;
        ch.queue_declare(t.dead_queue().into(), durable(), quorum(&[])).await?;
        self.bind(&t.dead_queue(), &t.dead_exchange(), "").await?;
        ch.queue_declare(t.results_queue().into(), durable(), quorum(&[])).await?;
        self.bind(&t.results_queue(), &t.results_exchange(), Topology::RESULT_KEY).await?;
        Ok(())
    }

    async fn bind(&self, queue: &str, exchange: &str, key: &str) -> Result<(), QueueError> {
        let (options, args) = (QueueBindOptions::default(), FieldTable::default());
        self.publisher.queue_bind(queue.into(), exchange.into(), key.into(), options, args).await?;
        Ok(())
    }

    async fn start_publish(&self, m: &Outgoing) -> Result<lapin::PublisherConfirm, QueueError> {
        let mut table = FieldTable::default();
        for (k, v) in &m.headers {
            table.insert(ShortString::from(k.as_str()), AMQPValue::LongString(LongString::from(v.as_str())));
        }
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_headers(table);
        let options = BasicPublishOptions { mandatory: m.mandatory, ..BasicPublishOptions::default() };
        let (exchange, key) = (m.exchange.as_str().into(), m.routing_key.as_str().into());
        Ok(self.publisher.basic_publish(exchange, key, options, &m.body, properties).await?)
    }

    /// The queue to consume for `source`: a private, auto-deleted one bound to the cancel fan-out
    /// for cancels.
    async fn queue_for(&self, channel: &Channel, source: &Source) -> Result<String, QueueError> {
        if let Some(queue) = self.topology.queue_of(source) {
            return Ok(queue);
        }
        let options = QueueDeclareOptions { exclusive: true, auto_delete: true, ..QueueDeclareOptions::default() };
        let queue = channel.queue_declare("".into(), options, FieldTable::default()).await?;
        let name = queue.name().as_str().to_owned();
        let (options, args) = (QueueBindOptions::default(), FieldTable::default());
        let exchange = self.topology.cancel_exchange();
        channel.queue_bind(name.as_str().into(), exchange.into(), "".into(), options, args).await?;
        Ok(name)
    }
}

#[async_trait::async_trait]
impl Queue for Broker {
    async fn declare_pool(&self, pool: &str) -> Result<(), QueueError> {
        let t = &self.topology;
        let limit = AMQPValue::LongInt(i32::try_from(t.delivery_limit()).unwrap_or(i32::MAX));
        let dead = AMQPValue::LongString(LongString::from(t.dead_exchange()));
        let args = quorum(&[("x-delivery-limit", limit), ("x-dead-letter-exchange", dead)]);
        self.guard("declare a pool", async {
            self.publisher.queue_declare(t.task_queue(pool).into(), durable(), args).await?;
            self.bind(&t.task_queue(pool), &t.tasks_exchange(), pool).await
        })
        .await
    }

    /// Publishes every message first, then waits for all confirms (one round trip per batch);
    /// the whole batch within the timeout.
    async fn publish(&self, messages: &[Outgoing]) -> Result<(), QueueError> {
        self.guard("publish and confirm", async {
            let mut pending = Vec::with_capacity(messages.len());
            for m in messages {
                pending.push((self.start_publish(m).await?, m));
            }
            for (confirmation, m) in pending {
                confirm(confirmation.await?, &m.exchange, &m.routing_key)?;
            }
            Ok(())
        })
        .await
    }

    /// Consumes on a channel of its own, which lives as long as the consumer.
    async fn consume(&self, source: &Source, consumer_tag: &str, prefetch: u16) -> Result<Consumer, QueueError> {
        let (channel, consumer) = self
            .guard("start consuming", async {
                let channel = self.connection.create_channel().await?;
                channel.basic_qos(prefetch, BasicQosOptions::default()).await?;
                let queue = self.queue_for(&channel, source).await?;
                let options = Default::default();
                let consumer =
                    channel.basic_consume(queue.into(), consumer_tag.into(), options, FieldTable::default()).await?;
                Ok((channel, consumer))
            })
            .await?;
        let timeout = self.timeout;
        let deliveries = consumer
            .map(move |d| {
                let d = d?;
                let (headers, deliveries) = (string_headers(&d.properties), delivery_count(&d.properties));
                Ok(Delivery::new(d.data, headers, deliveries, Box::new(AmqpAcker { acker: d.acker, timeout })))
            })
            .boxed();
        let stopper = Box::new(AmqpStopper { channel, tag: consumer_tag.to_owned(), timeout });
        Ok(Consumer::new(deliveries, stopper))
    }

    /// Declares nothing: the queue must exist (the per-consumer cancel queues have no depth).
    async fn depth(&self, source: &Source) -> Result<u32, QueueError> {
        let Some(queue) = self.topology.queue_of(source) else { return Ok(0) };
        let options = QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() };
        self.guard("read a queue depth", async {
            let channel = self.connection.create_channel().await?;
            let q = channel.queue_declare(queue.into(), options, FieldTable::default()).await?;
            let _ = channel.close(200, "ok".into()).await;
            Ok(q.message_count())
        })
        .await
    }

    fn is_connected(&self) -> bool {
        self.connection.status().connected()
    }

    async fn close(&self) {
        abandon(&self.connection, self.timeout).await;
    }
}

/// Closes a connection, waiting at most `timeout` for the broker to agree. Past that the
/// connection is left to die with its socket: the broker returns its unsettled deliveries when
/// the socket closes or heartbeats stop.
async fn abandon(connection: &Connection, timeout: Duration) {
    if tokio::time::timeout(timeout, connection.close(200, "bye".into())).await.is_err() {
        tracing::warn!(after = ?timeout, "the broker did not answer the close of a connection; abandoning it");
    }
}

struct AmqpAcker {
    acker: lapin::Acker,
    timeout: Duration,
}

#[async_trait::async_trait]
impl Acker for AmqpAcker {
    /// A failed or timed-out settle needs no handling: an unsettled delivery returns to its
    /// queue when the channel closes.
    async fn settle(self: Box<Self>, how: Settle) {
        let acker = &self.acker;
        let settle = async move {
            match how {
                Settle::Ack => acker.ack(BasicAckOptions::default()).await,
                Settle::Requeue => acker.nack(BasicNackOptions { requeue: true, ..Default::default() }).await,
                Settle::DeadLetter => acker.reject(BasicRejectOptions { requeue: false }).await,
            }
        };
        let _ = tokio::time::timeout(self.timeout, settle).await;
    }
}

/// Keeps the consumer's channel open (closing it would requeue what is in hand at once).
struct AmqpStopper {
    channel: Channel,
    tag: String,
    timeout: Duration,
}

#[async_trait::async_trait]
impl StopConsuming for AmqpStopper {
    async fn stop(&self) {
        let cancel = self.channel.basic_cancel(self.tag.as_str().into(), BasicCancelOptions::default());
        let _ = tokio::time::timeout(self.timeout, cancel).await;
    }
}

/// Connects to RabbitMQ at one URL.
#[derive(Debug, Clone)]
pub struct AmqpConnector {
    url: engine::config::Secret,
    topology: Topology,
    timeout: Duration,
}

impl AmqpConnector {
    /// `timeout` bounds every operation on the connections it opens.
    pub fn new(url: engine::config::Secret, topology: Topology, timeout: Duration) -> Self {
        Self { url, topology, timeout }
    }
}

#[async_trait::async_trait]
impl Connector for AmqpConnector {
    async fn connect(&self, name: &str) -> Result<Arc<dyn Queue>, QueueError> {
        Ok(Arc::new(Broker::connect(self.url.expose(), name, self.topology.clone(), self.timeout).await?))
    }

    fn topology(&self) -> &Topology {
        &self.topology
    }
}

/// Seconds between AMQP heartbeats unless the URL sets its own. The broker gives up on a peer
/// after two missed heartbeats and returns its unacknowledged messages to the queue, so this
/// bounds how long a paused or hung process can sit on messages (the broker default is 60 s).
const HEARTBEAT_SECONDS: u32 = 5;

fn with_heartbeat(url: &str) -> String {
    if url.contains("heartbeat=") {
        return url.to_owned();
    }
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}heartbeat={HEARTBEAT_SECONDS}")
}

fn confirm(confirmation: Confirmation, exchange: &str, routing_key: &str) -> Result<(), QueueError> {
    match confirmation {
        Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
        Confirmation::Ack(Some(_)) => {
            Err(QueueError::Unroutable { exchange: exchange.to_owned(), routing_key: routing_key.to_owned() })
        }
        Confirmation::Nack(_) => Err(QueueError::Nacked),
    }
}

/// The string headers of a delivery (trace context and the like).
fn string_headers(properties: &BasicProperties) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    if let Some(table) = properties.headers() {
        for (k, v) in table.inner() {
            if let AMQPValue::LongString(s) = v {
                out.insert(k.as_str().to_owned(), String::from_utf8_lossy(s.as_bytes()).into_owned());
            }
        }
    }
    out
}

/// How many times the broker has delivered this message (quorum queues count redeliveries in
/// `x-delivery-count`; the first delivery has none).
fn delivery_count(properties: &BasicProperties) -> u32 {
    let count = properties.headers().as_ref().and_then(|t| t.inner().get("x-delivery-count").cloned());
    let previous = match count {
        Some(AMQPValue::LongLongInt(n)) => u32::try_from(n).unwrap_or(u32::MAX),
        Some(AMQPValue::LongInt(n)) => u32::try_from(n).unwrap_or(u32::MAX),
        Some(AMQPValue::LongUInt(n)) => n,
        Some(AMQPValue::ShortInt(n)) => u32::try_from(n).unwrap_or(0),
        _ => 0,
    };
    previous.saturating_add(1)
}
