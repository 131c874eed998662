//! RabbitMQ adapter (lapin): the topology, confirmed publishing and consuming.
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

use std::collections::BTreeMap;

use lapin::options::{
    BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, Consumer, ExchangeKind};

/// A broker operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("RabbitMQ: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("RabbitMQ did not route the message to any queue (exchange {exchange}, key {routing_key})")]
    Unroutable { exchange: String, routing_key: String },
    #[error("RabbitMQ refused the message (nack)")]
    Nacked,
}

/// Names of exchanges and queues under one prefix.
#[derive(Debug, Clone)]
pub struct Topology {
    prefix: String,
    delivery_limit: u32,
}

impl Topology {
    pub fn new(prefix: &str, delivery_limit: u32) -> Self {
        Self { prefix: prefix.to_owned(), delivery_limit }
    }

    pub fn tasks_exchange(&self) -> String {
        format!("{}.tasks", self.prefix)
    }

    pub fn task_queue(&self, pool: &str) -> String {
        format!("{}.tasks.{pool}", self.prefix)
    }

    pub fn dead_exchange(&self) -> String {
        format!("{}.dead", self.prefix)
    }

    pub fn dead_queue(&self) -> String {
        format!("{}.dead", self.prefix)
    }

    pub fn results_exchange(&self) -> String {
        format!("{}.results", self.prefix)
    }

    pub fn results_queue(&self) -> String {
        format!("{}.results", self.prefix)
    }

    pub fn cancel_exchange(&self) -> String {
        format!("{}.cancel", self.prefix)
    }

    /// Routing key of result messages.
    pub const RESULT_KEY: &'static str = "result";
}

/// A message to publish.
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

/// A connection with one confirm-mode channel for publishing.
#[derive(Debug)]
pub struct Broker {
    connection: Connection,
    publisher: Channel,
    topology: Topology,
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
    /// Connects and declares the shared part of the topology (idempotent).
    pub async fn connect(url: &str, connection_name: &str, topology: Topology) -> Result<Self, BrokerError> {
        let properties = ConnectionProperties::default().with_connection_name(connection_name.into());
        let connection = Connection::connect(&with_heartbeat(url), properties).await?;
        let publisher = connection.create_channel().await?;
        publisher.confirm_select(ConfirmSelectOptions::default()).await?;
        let broker = Self { connection, publisher, topology };
        broker.declare_common().await?;
        Ok(broker)
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    pub fn is_connected(&self) -> bool {
        self.connection.status().connected()
    }

    async fn declare_common(&self) -> Result<(), BrokerError> {
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
        ch.queue_bind(
            t.dead_queue().into(),
            t.dead_exchange().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
        ch.queue_declare(t.results_queue().into(), durable(), quorum(&[])).await?;
        ch.queue_bind(
            t.results_queue().into(),
            t.results_exchange().into(),
            Topology::RESULT_KEY.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
        Ok(())
    }

    /// Declares the task queue of a worker pool (idempotent).
    pub async fn declare_pool(&self, pool: &str) -> Result<(), BrokerError> {
        let t = &self.topology;
        let limit = AMQPValue::LongInt(i32::try_from(t.delivery_limit).unwrap_or(i32::MAX));
        let dead = AMQPValue::LongString(LongString::from(t.dead_exchange()));
        let args = quorum(&[("x-delivery-limit", limit), ("x-dead-letter-exchange", dead)]);
        self.publisher.queue_declare(t.task_queue(pool).into(), durable(), args).await?;
        self.publisher
            .queue_bind(
                t.task_queue(pool).into(),
                t.tasks_exchange().into(),
                pool.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(())
    }

    /// Publishes one persistent message and waits until the broker confirms it was routed.
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        headers: &BTreeMap<String, String>,
    ) -> Result<(), BrokerError> {
        let pending = self.start_publish(exchange, routing_key, body, headers, true).await?;
        confirm(pending.await?, exchange, routing_key)
    }

    /// Publishes many messages, then waits for all confirms; fails if any was refused, or, when
    /// `mandatory`, not routed.
    pub async fn publish_batch(&self, messages: &[Outgoing]) -> Result<(), BrokerError> {
        let mut pending = Vec::with_capacity(messages.len());
        for m in messages {
            let confirmation =
                self.start_publish(&m.exchange, &m.routing_key, &m.body, &m.headers, m.mandatory).await?;
            pending.push((confirmation, m));
        }
        for (confirmation, m) in pending {
            confirm(confirmation.await?, &m.exchange, &m.routing_key)?;
        }
        Ok(())
    }

    async fn start_publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        headers: &BTreeMap<String, String>,
        mandatory: bool,
    ) -> Result<lapin::PublisherConfirm, BrokerError> {
        let mut table = FieldTable::default();
        for (k, v) in headers {
            table.insert(ShortString::from(k.as_str()), AMQPValue::LongString(LongString::from(v.as_str())));
        }
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_headers(table);
        let options = BasicPublishOptions { mandatory, ..BasicPublishOptions::default() };
        Ok(self.publisher.basic_publish(exchange.into(), routing_key.into(), options, body, properties).await?)
    }

    /// Starts consuming `queue` on a channel of its own with `prefetch` unacknowledged messages.
    pub async fn consume(
        &self,
        queue: &str,
        consumer_tag: &str,
        prefetch: u16,
    ) -> Result<(Channel, Consumer), BrokerError> {
        let channel = self.connection.create_channel().await?;
        channel.basic_qos(prefetch, BasicQosOptions::default()).await?;
        let consumer =
            channel.basic_consume(queue.into(), consumer_tag.into(), Default::default(), FieldTable::default()).await?;
        Ok((channel, consumer))
    }

    /// A private, auto-deleted queue bound to the cancel fan-out, consumed at once.
    pub async fn consume_cancels(&self, consumer_tag: &str) -> Result<(Channel, Consumer), BrokerError> {
        let channel = self.connection.create_channel().await?;
        let options = QueueDeclareOptions { exclusive: true, auto_delete: true, ..QueueDeclareOptions::default() };
        let queue = channel.queue_declare("".into(), options, FieldTable::default()).await?;
        let name = queue.name().clone();
        channel
            .queue_bind(
                name.clone(),
                self.topology.cancel_exchange().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let consumer =
            channel.basic_consume(name, consumer_tag.into(), Default::default(), FieldTable::default()).await?;
        Ok((channel, consumer))
    }

    /// Number of messages ready in `queue` (declares nothing; the queue must exist).
    pub async fn queue_depth(&self, queue: &str) -> Result<u32, BrokerError> {
        let options = QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() };
        let channel = self.connection.create_channel().await?;
        let q = channel.queue_declare(queue.into(), options, FieldTable::default()).await?;
        let _ = channel.close(200, "ok".into()).await;
        Ok(q.message_count())
    }

    pub async fn close(&self) {
        let _ = self.connection.close(200, "bye".into()).await;
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

fn confirm(confirmation: Confirmation, exchange: &str, routing_key: &str) -> Result<(), BrokerError> {
    match confirmation {
        Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
        Confirmation::Ack(Some(_)) => {
            Err(BrokerError::Unroutable { exchange: exchange.to_owned(), routing_key: routing_key.to_owned() })
        }
        Confirmation::Nack(_) => Err(BrokerError::Nacked),
    }
}

/// Runs `session` until it ends cleanly or `stop` turns true. After a failure it waits, with capped
/// exponential backoff and jitter (so a fleet does not reconnect in lockstep), and runs it again.
pub async fn reconnecting<F, Fut>(what: &str, mut stop: tokio::sync::watch::Receiver<bool>, mut session: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), BrokerError>>,
{
    let mut delay = std::time::Duration::from_millis(100);
    while !*stop.borrow() {
        match session().await {
            Ok(()) => return,
            Err(e) => tracing::warn!(error = %e, "{what} lost RabbitMQ; reconnecting"),
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

/// The string headers of a delivery (trace context and the like).
pub fn string_headers(properties: &BasicProperties) -> BTreeMap<String, String> {
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
pub fn delivery_count(properties: &BasicProperties) -> u32 {
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
