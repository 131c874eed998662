//! What the probes report: whether the outbox relay holds a live broker connection, and the
//! progress of every long-running loop ([`runtime::liveness`]). A leaf module: the components
//! write it, the API reads it, and neither knows the other.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use runtime::liveness::{Component, ComponentState, Liveness};

/// The loops of a coordinator that report progress.
pub const RELAY: &str = "relay";
pub const INBOX: &str = "inbox";
pub const SCHEDULER: &str = "scheduler";

/// Liveness of the dependencies that background tasks observe.
#[derive(Debug)]
pub struct Health {
    /// The outbox relay holds a live RabbitMQ connection.
    pub broker: AtomicBool,
    liveness: Liveness,
    stall_after: Duration,
}

impl Default for Health {
    fn default() -> Self {
        Self::new(Duration::from_secs(30))
    }
}

impl Health {
    /// A component silent for longer than `stall_after` is stalled.
    pub fn new(stall_after: Duration) -> Self {
        Self { broker: AtomicBool::new(false), liveness: Liveness::default(), stall_after }
    }

    pub fn component(&self, name: &str) -> Arc<Component> {
        self.liveness.component(name)
    }

    pub fn broker_connected(&self) -> bool {
        self.broker.load(Ordering::Relaxed)
    }

    pub fn set_broker_connected(&self, connected: bool) {
        self.broker.store(connected, Ordering::Relaxed);
    }

    pub fn components(&self) -> Vec<ComponentState> {
        self.liveness.states(self.stall_after)
    }

    /// Names of the stalled components (empty when every loop is making progress).
    pub fn stalled(&self) -> Vec<String> {
        self.liveness.stalled(self.stall_after)
    }
}
