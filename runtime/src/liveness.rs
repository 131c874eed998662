//! Liveness that tells the truth: each long-running loop (the outbox relay, the result consumer,
//! the scheduler, each worker's consumer) owns a [`Component`] and calls [`Component::beat`]
//! whenever it completes an iteration that reached its dependencies. Every such loop wakes at
//! least every few seconds even when it has nothing to do (a poll, a probe of the broker), so a
//! component that has not beaten for the stall interval is stuck: waiting on a paused broker or
//! database, reconnecting in vain, or wedged. Readiness fails while any component is stalled and
//! names it; a gauge per component says the same to Prometheus.
//!
//! A process that merely lost its broker connection is caught the same way: its loops stop
//! beating while they reconnect.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The components of one process.
#[derive(Debug)]
pub struct Liveness {
    origin: Instant,
    components: Mutex<BTreeMap<String, Arc<Component>>>,
}

impl Default for Liveness {
    fn default() -> Self {
        Self { origin: Instant::now(), components: Mutex::default() }
    }
}

/// One loop's progress: milliseconds after the process's origin at its last beat.
#[derive(Debug)]
pub struct Component {
    origin: Instant,
    last_beat_ms: AtomicU64,
}

impl Component {
    /// The loop made progress just now.
    pub fn beat(&self) {
        let now = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_beat_ms.store(now, Ordering::Relaxed);
    }

    /// Time since the last beat.
    pub fn silent_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_beat_ms.load(Ordering::Relaxed));
        self.origin.elapsed().saturating_sub(last)
    }
}

/// How long each component has been silent, and whether that is a stall.
#[derive(Debug, Clone, PartialEq)]
pub struct ComponentState {
    pub name: String,
    pub silent_for: Duration,
    pub stalled: bool,
}

impl Liveness {
    /// The component called `name`, registered (as if it had just beaten) on first use.
    pub fn component(&self, name: &str) -> Arc<Component> {
        let mut components = self.components.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        components
            .entry(name.to_owned())
            .or_insert_with(|| {
                let component = Component { origin: self.origin, last_beat_ms: AtomicU64::new(0) };
                component.beat();
                Arc::new(component)
            })
            .clone()
    }

    /// Every component, by name, judged against `stall_after`.
    pub fn states(&self, stall_after: Duration) -> Vec<ComponentState> {
        let components = self.components.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        components
            .iter()
            .map(|(name, c)| {
                let silent_for = c.silent_for();
                ComponentState { name: name.clone(), silent_for, stalled: silent_for > stall_after }
            })
            .collect()
    }

    /// Names of the components silent for longer than `stall_after`.
    pub fn stalled(&self, stall_after: Duration) -> Vec<String> {
        self.states(stall_after).into_iter().filter(|s| s.stalled).map(|s| s.name).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_component_that_stops_beating_is_stalled_and_named() {
        let liveness = Liveness::default();
        let relay = liveness.component("relay");
        let inbox = liveness.component("inbox");
        assert!(liveness.stalled(Duration::from_secs(60)).is_empty());
        std::thread::sleep(Duration::from_millis(30));
        inbox.beat();
        assert_eq!(liveness.stalled(Duration::from_millis(20)), vec!["relay".to_owned()]);
        relay.beat();
        assert!(liveness.stalled(Duration::from_millis(20)).is_empty());
        assert!(Arc::ptr_eq(&relay, &liveness.component("relay")), "one component per name");
    }
}
