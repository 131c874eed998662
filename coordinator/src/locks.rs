//! Execution locks: the small trait the scheduler holds its per-execution lock through, and the
//! in-process twin used by unit tests and (later) the embedded mode. The Redis implementation is
//! in [`crate::redis`].
//!
//! A lock mirrors the PostgreSQL lease: its value is the lease's fence (epoch and owner), and it
//! expires with the lease TTL unless renewed. PostgreSQL stays the authority (every write is
//! fenced by the epoch there); the lock adds a second, independent fence and makes ownership
//! visible under `gl:orchestrator:lock:<execution_id>`. A higher epoch always wins, so the newest
//! lease holder takes the lock at once and a stale holder learns that it lost.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use uuid::Uuid;

/// Who holds an execution: the lease epoch (PostgreSQL's fencing token) and the replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub epoch: i64,
    pub owner: String,
}

impl Fence {
    /// The stored form, `<epoch>:<owner>`.
    pub fn value(&self) -> String {
        format!("{}:{}", self.epoch, self.owner)
    }

    /// The epoch of a stored value (`None` when it is not one).
    pub fn epoch_of(value: &str) -> Option<i64> {
        value.split_once(':')?.0.parse().ok()
    }
}

/// The lock backend could not answer (down, slow, misconfigured).
#[derive(Debug, thiserror::Error)]
#[error("lock backend unavailable: {0}")]
pub struct LockError(pub String);

/// Per-execution locks with a TTL.
#[async_trait::async_trait]
pub trait Locks: Send + Sync + std::fmt::Debug {
    /// Takes or renews the lock of `execution` for `fence`. `Ok(false)`: a higher epoch holds it.
    async fn hold(&self, execution: Uuid, fence: &Fence, ttl: Duration) -> Result<bool, LockError>;
    /// Releases the lock if `fence` still holds it.
    async fn release(&self, execution: Uuid, fence: &Fence) -> Result<(), LockError>;
    /// The fence holding `execution`'s lock, if any (for operators and tests).
    async fn holder(&self, execution: Uuid) -> Result<Option<String>, LockError>;
    /// The name reported by the `gl_orchestrator_lock_backend` gauge.
    fn backend(&self) -> &'static str;
}

/// Locks in this process's memory (unit tests, embedded mode).
#[derive(Debug, Default)]
pub struct MemoryLocks {
    held: Mutex<HashMap<Uuid, (Fence, Instant)>>,
}

#[async_trait::async_trait]
impl Locks for MemoryLocks {
    async fn hold(&self, execution: Uuid, fence: &Fence, ttl: Duration) -> Result<bool, LockError> {
        let mut held = self.held.lock().map_err(|_| LockError("poisoned".into()))?;
        let now = Instant::now();
        if let Some((current, expires)) = held.get(&execution)
            && *expires > now
            && current.epoch > fence.epoch
        {
            return Ok(false);
        }
        held.insert(execution, (fence.clone(), now + ttl));
        Ok(true)
    }

    async fn release(&self, execution: Uuid, fence: &Fence) -> Result<(), LockError> {
        let mut held = self.held.lock().map_err(|_| LockError("poisoned".into()))?;
        if held.get(&execution).is_some_and(|(current, _)| current == fence) {
            held.remove(&execution);
        }
        Ok(())
    }

    async fn holder(&self, execution: Uuid) -> Result<Option<String>, LockError> {
        let held = self.held.lock().map_err(|_| LockError("poisoned".into()))?;
        Ok(held.get(&execution).filter(|(_, expires)| *expires > Instant::now()).map(|(f, _)| f.value()))
    }

    fn backend(&self) -> &'static str {
        "memory"
    }
}

/// The behaviour every [`Locks`] implementation must show; run against the in-memory twin here
/// and against real Redis in `tests/tests/suite/redis.rs`.
pub async fn check_contract(locks: &dyn Locks) {
    let id = Uuid::new_v4();
    let ttl = Duration::from_secs(30);
    let (a1, b2) = (Fence { epoch: 1, owner: "a".into() }, Fence { epoch: 2, owner: "b".into() });
    assert_eq!(locks.holder(id).await.ok(), Some(None), "a new execution has no holder");
    assert!(locks.hold(id, &a1, ttl).await.expect("hold"), "a free lock is taken");
    assert!(locks.hold(id, &a1, ttl).await.expect("renew"), "the holder renews");
    assert!(locks.hold(id, &b2, ttl).await.expect("take over"), "a higher epoch takes over at once");
    assert!(!locks.hold(id, &a1, ttl).await.expect("stale"), "a stale epoch cannot take it back");
    assert_eq!(locks.holder(id).await.expect("holder").as_deref(), Some("2:b"));
    locks.release(id, &a1).await.expect("release by a stale fence");
    assert_eq!(locks.holder(id).await.expect("holder").as_deref(), Some("2:b"), "a stale fence cannot release");
    locks.release(id, &b2).await.expect("release");
    assert_eq!(locks.holder(id).await.expect("holder"), None, "released");
    let short = Duration::from_millis(50);
    assert!(locks.hold(id, &b2, short).await.expect("hold"));
    let deadline = Instant::now() + Duration::from_secs(5);
    while locks.holder(id).await.expect("holder").is_some() {
        assert!(Instant::now() < deadline, "the lock never expired");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(locks.hold(id, &a1, ttl).await.expect("hold"), "an expired lock is free, whatever its epoch was");
    locks.release(id, &a1).await.expect("release");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_locks_keep_the_contract() {
        check_contract(&MemoryLocks::default()).await;
    }

    #[test]
    fn a_fence_value_carries_its_epoch() {
        let f = Fence { epoch: 42, owner: "coordinator-0:pod".into() };
        assert_eq!(Fence::epoch_of(&f.value()), Some(42));
        assert_eq!(Fence::epoch_of("garbage"), None);
    }
}
