//! The queue port's contract, checked against both implementations: RabbitMQ (real broker, a
//! unique prefix per test) and the embedded queue (an in-memory SQLite database). What the engine
//! relies on: confirmed publishing, unroutable mandatory tasks refused, deliveries held until
//! settled and counted when handed out again, dead-lettering, the delivery limit, and cancels
//! fanned out to every consumer.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ::embedded::EmbeddedQueue;
use coordinator::store::{SqliteStore, Store};
use engine::topology::{Source, Topology};
use futures_util::StreamExt;
use runtime::amqp::AmqpConnector;
use runtime::queue::{Connector, Consumer, Delivery, Outgoing, Queue, QueueError};

const WITHIN: Duration = Duration::from_secs(10);
/// Deliveries before a task is dead-lettered, in these tests.
const LIMIT: u32 = 2;

async fn rabbitmq() -> (Arc<dyn Connector>, String) {
    let prefix = format!("glqc.{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let topology = Topology::new(&prefix, LIMIT);
    (Arc::new(AmqpConnector::new(engine::config::Secret::new(tests::AMQP), topology, tests::BROKER_CALL)), prefix)
}

async fn embedded() -> Arc<dyn Connector> {
    let store = SqliteStore::open(None).await.expect("in-memory SQLite");
    store.migrate().await.expect("migrate");
    let topology = Topology::new("glqc", LIMIT);
    Arc::new(EmbeddedQueue::open(store.pool().clone(), topology).await.expect("embedded queue"))
}

fn task(topology: &Topology, pool: &str, body: &str) -> Outgoing {
    Outgoing {
        exchange: topology.tasks_exchange(),
        routing_key: pool.to_owned(),
        body: body.as_bytes().to_vec(),
        headers: BTreeMap::from([("traceparent".to_owned(), format!("tp-{body}"))]),
        mandatory: true,
    }
}

async fn next(consumer: &mut Consumer) -> Delivery {
    match tokio::time::timeout(WITHIN, consumer.deliveries.next()).await {
        Ok(Some(Ok(d))) => d,
        other => panic!("expected a delivery, got {other:?}"),
    }
}

/// Depth of `source` once it reaches `want` (depth is eventually consistent on RabbitMQ).
async fn depth_reaches(connector: &dyn Connector, source: &Source, want: u32) {
    let queue = connector.connect("depth").await.expect("connect");
    tests::eventually(WITHIN, &format!("{source:?} holds {want} ready"), || {
        let queue = queue.clone();
        async move { queue.depth(source).await.is_ok_and(|d| d == want) }
    })
    .await;
    queue.close().await;
}

async fn contract(connector: Arc<dyn Connector>) {
    let topology = connector.topology().clone();
    let queue = connector.connect("contract").await.expect("connect");
    let consumer = ordered_and_settled(&topology, connector.as_ref(), queue.as_ref()).await;
    let other = connector.connect("other").await.expect("connect");
    let (second, d) = a_closed_connection_returns_what_it_held(&topology, queue, consumer, other.as_ref()).await;
    poison_is_dead_lettered(other.as_ref(), second, d).await;
    cancels_reach_every_consumer(&topology, other.as_ref()).await;
    other.close().await;
}

/// Unroutable tasks refused; published in order, handed out in order; ack, requeue and dead-letter.
/// Returns the pool's consumer, drained.
async fn ordered_and_settled(topology: &Topology, connector: &dyn Connector, queue: &dyn Queue) -> Consumer {
    // A task for a pool nobody declared has nowhere to go: refused, not lost silently.
    let refused = queue.publish(&[task(topology, "nobody", "x")]).await;
    assert!(matches!(refused, Err(QueueError::Unroutable { .. })), "{refused:?}");

    // Published in order, handed out in order, headers intact, first delivery counted as 1.
    queue.declare_pool("p").await.expect("declare");
    let batch: Vec<Outgoing> = ["a", "b", "c"].iter().map(|b| task(topology, "p", b)).collect();
    queue.publish(&batch).await.expect("confirmed");
    depth_reaches(connector, &Source::Pool("p".into()), 3).await;
    let mut consumer = queue.consume(&Source::Pool("p".into()), "c1", 10).await.expect("consume");
    let a = next(&mut consumer).await;
    assert_eq!((a.body.as_slice(), a.deliveries), (b"a".as_slice(), 1));
    assert_eq!(a.headers.get("traceparent").map(String::as_str), Some("tp-a"));
    let b = next(&mut consumer).await;
    let c = next(&mut consumer).await;
    assert_eq!((b.body.as_slice(), c.body.as_slice()), (b"b".as_slice(), b"c".as_slice()));

    // Acknowledged is gone; requeued comes back counted; dead-lettered goes to the dead queue.
    a.ack().await;
    b.requeue().await;
    let again = next(&mut consumer).await;
    assert_eq!((again.body.as_slice(), again.deliveries), (b"b".as_slice(), 2));
    again.ack().await;
    c.dead_letter().await;
    let mut dead = queue.consume(&Source::Dead, "dead", 10).await.expect("consume dead");
    let buried = next(&mut dead).await;
    assert_eq!(buried.body, b"c");
    buried.ack().await;
    consumer
}

/// What a closed connection held returns to the queue for another consumer (counted as handed
/// out twice); returns that consumer and the delivery.
async fn a_closed_connection_returns_what_it_held(
    topology: &Topology,
    queue: Arc<dyn Queue>,
    mut consumer: Consumer,
    other: &dyn Queue,
) -> (Consumer, Delivery) {
    queue.publish(&[task(topology, "p", "d")]).await.expect("confirmed");
    let held = next(&mut consumer).await;
    assert_eq!(held.body, b"d");
    drop(held);
    consumer.stop().await;
    drop(consumer);
    queue.close().await;
    let mut second = other.consume(&Source::Pool("p".into()), "c2", 10).await.expect("consume");
    let d = next(&mut second).await;
    assert_eq!((d.body.as_slice(), d.deliveries), (b"d".as_slice(), 2));
    (second, d)
}

/// A task handed out more often than the limit allows is dead-lettered (poison).
async fn poison_is_dead_lettered(other: &dyn Queue, mut second: Consumer, d: Delivery) {
    let mut dead = other.consume(&Source::Dead, "dead2", 10).await.expect("consume dead");
    d.requeue().await;
    let mut deliveries = 2;
    let poisoned = loop {
        tokio::select! {
            d = second.deliveries.next() => {
                let d = d.expect("stream").expect("delivery");
                deliveries = d.deliveries;
                assert!(deliveries <= LIMIT + 1, "handed out {deliveries} times, limit {LIMIT}");
                d.requeue().await;
            }
            p = dead.deliveries.next() => break p.expect("stream").expect("delivery"),
        }
    };
    assert_eq!(poisoned.body, b"d");
    assert_eq!(deliveries, LIMIT + 1, "dead-lettered only after the limit");
    poisoned.ack().await;
}

async fn cancels_reach_every_consumer(topology: &Topology, other: &dyn Queue) {
    let mut first = other.consume(&Source::Cancels, "k1", 10).await.expect("cancels");
    let mut second_cancels = other.consume(&Source::Cancels, "k2", 10).await.expect("cancels");
    let cancel = Outgoing {
        exchange: topology.cancel_exchange(),
        routing_key: String::new(),
        body: b"stop".to_vec(),
        headers: BTreeMap::new(),
        mandatory: false,
    };
    other.publish(&[cancel]).await.expect("confirmed");
    assert_eq!(next(&mut first).await.body, b"stop");
    assert_eq!(next(&mut second_cancels).await.body, b"stop");
}

#[tokio::test]
async fn rabbitmq_keeps_the_queue_contract() {
    let (connector, prefix) = rabbitmq().await;
    contract(connector).await;
    tests::delete_topology_with_pools(&prefix, &["p"]).await;
}

#[tokio::test]
async fn the_embedded_queue_keeps_the_queue_contract() {
    contract(embedded().await).await;
}
