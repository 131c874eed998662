//! The names of RabbitMQ's exchanges and queues, and where deliveries come from: pure data, so
//! that the step decision (which names an outbox row addresses) needs no broker adapter. The
//! queue port and its adapters are in the `runtime` crate.

/// Where deliveries come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The task queue of a worker pool (a node's `queue`).
    Pool(String),
    /// Attempt results, for the coordinators.
    Results,
    /// Tasks that exhausted their deliveries (poison).
    Dead,
    /// Cancel requests: every consumer gets every one (fan-out).
    Cancels,
}

/// Names of exchanges and queues under one prefix (which namespaces tests and tenants).
#[derive(Debug, Clone)]
pub struct Topology {
    prefix: String,
    delivery_limit: u32,
}

impl Topology {
    pub fn new(prefix: &str, delivery_limit: u32) -> Self {
        Self { prefix: prefix.to_owned(), delivery_limit }
    }

    /// Deliveries of a task before it is dead-lettered.
    pub fn delivery_limit(&self) -> u32 {
        self.delivery_limit
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

    /// The queue name behind a source (`None` for the per-consumer cancel queues).
    pub fn queue_of(&self, source: &Source) -> Option<String> {
        match source {
            Source::Pool(pool) => Some(self.task_queue(pool)),
            Source::Results => Some(self.results_queue()),
            Source::Dead => Some(self.dead_queue()),
            Source::Cancels => None,
        }
    }

    /// Routing key of result messages.
    pub const RESULT_KEY: &'static str = "result";
}
