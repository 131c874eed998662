//! Retry decisions and delay math.
//!
//! `max_retries` counts *retries*: a node runs at most `1 + max_retries` times. The delay before
//! retry `k` (k = 1, 2, ...) is
//!
//! | strategy      | delay before retry k         |
//! |---------------|------------------------------|
//! | `exponential` | `base_delay * 2^(k-1)`       |
//! | `linear`      | `base_delay * k`             |
//! | `constant`    | `base_delay`                 |
//! | `fibonacci`   | `base_delay * fib(k)`, fib = 1, 1, 2, 3, 5, ... |
//!
//! capped at `max_delay`, then moved by up to `± jitter_range * delay`. The jitter is not random:
//! it is derived from SHA-256 of (execution id, node id, attempt), so a replay of the same
//! execution waits exactly as long. All arithmetic is in saturating `f64` and the result is
//! clamped, so no accepted policy can overflow or panic.

use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::dag::{RetryPolicy, RetryStrategy};

/// Longest delay ever returned, whatever the policy says.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(48 * 3600);

/// Error types that are never retried, whatever `retryable_exceptions` says: the same input
/// would fail the same way again.
pub const NEVER_RETRIED: &[&str] = &["condition_error", "poison", "cancelled"];

/// Whether a node that just failed its `attempt`-th run (1-based) with `error_type` runs again.
/// `retryable` is the worker's verdict (for example false for an HTTP 4xx).
pub fn should_retry(policy: &RetryPolicy, attempt: u32, error_type: &str, retryable: bool) -> bool {
    let attempts_allowed = policy.max_retries.saturating_add(1);
    let listed = policy.retryable_exceptions.is_empty()
        || policy.retryable_exceptions.iter().any(|e| e == error_type || e == "Exception" || e == "*");
    retryable && listed && attempt < attempts_allowed && !NEVER_RETRIED.contains(&error_type)
}

/// The delay before retry `k` (1-based), without jitter.
pub fn base_delay_secs(policy: &RetryPolicy, k: u32) -> f64 {
    let k = k.max(1);
    let factor = match policy.strategy {
        RetryStrategy::Exponential => 2f64.powi(i32::try_from(k - 1).unwrap_or(i32::MAX).min(1100)),
        RetryStrategy::Linear => f64::from(k),
        RetryStrategy::Constant => 1.0,
        RetryStrategy::Fibonacci => fibonacci(k),
    };
    let delay = policy.base_delay * factor;
    if delay.is_nan() { 0.0 } else { delay.min(policy.max_delay).max(0.0) }
}

/// The delay before retry `k` (1-based) of `node_id` in `execution_id`, jitter included.
pub fn retry_delay(policy: &RetryPolicy, k: u32, execution_id: &str, node_id: &str) -> Duration {
    let delay = base_delay_secs(policy, k);
    let jittered = if policy.jitter && policy.jitter_range > 0.0 {
        let unit = jitter_unit(execution_id, node_id, k);
        delay + delay * policy.jitter_range * unit
    } else {
        delay
    };
    Duration::try_from_secs_f64(jittered.max(0.0)).unwrap_or(MAX_RETRY_DELAY).min(MAX_RETRY_DELAY)
}

/// fib(k) with fib(1) = fib(2) = 1; saturates to infinity long before any cap matters.
fn fibonacci(k: u32) -> f64 {
    let (mut a, mut b) = (1.0_f64, 1.0_f64);
    for _ in 2..k.min(2000) {
        (a, b) = (b, a + b);
    }
    if k <= 2 { 1.0 } else { b }
}

/// A number in [-1, 1) fixed by (execution, node, retry).
fn jitter_unit(execution_id: &str, node_id: &str, k: u32) -> f64 {
    let mut h = Sha256::new();
    h.update(execution_id.as_bytes());
    h.update([0]);
    h.update(node_id.as_bytes());
    h.update([0]);
    h.update(k.to_be_bytes());
    let digest = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    // 53 random bits give a uniform double in [0, 1).
    let unit = (u64::from_be_bytes(first) >> 11) as f64 / (1u64 << 53) as f64;
    unit * 2.0 - 1.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(strategy: RetryStrategy) -> RetryPolicy {
        RetryPolicy {
            max_retries: 3,
            strategy,
            base_delay: 1.0,
            max_delay: 60.0,
            jitter: false,
            jitter_range: 0.1,
            retryable_exceptions: vec![],
        }
    }

    fn delays(p: &RetryPolicy, n: u32) -> Vec<f64> {
        (1..=n).map(|k| base_delay_secs(p, k)).collect()
    }

    #[test]
    fn strategies_follow_the_table() {
        assert_eq!(delays(&policy(RetryStrategy::Exponential), 5), [1.0, 2.0, 4.0, 8.0, 16.0]);
        assert_eq!(delays(&policy(RetryStrategy::Linear), 4), [1.0, 2.0, 3.0, 4.0]);
        assert_eq!(delays(&policy(RetryStrategy::Constant), 3), [1.0, 1.0, 1.0]);
        assert_eq!(delays(&policy(RetryStrategy::Fibonacci), 6), [1.0, 1.0, 2.0, 3.0, 5.0, 8.0]);
    }

    #[test]
    fn max_delay_caps_every_strategy() {
        for s in [RetryStrategy::Exponential, RetryStrategy::Linear, RetryStrategy::Fibonacci] {
            let mut p = policy(s);
            p.max_delay = 5.0;
            assert_eq!(base_delay_secs(&p, 100), 5.0, "{s:?}");
            assert_eq!(base_delay_secs(&p, u32::MAX), 5.0, "{s:?} must saturate");
        }
    }

    #[test]
    fn attempts_are_one_plus_max_retries() {
        let p = policy(RetryStrategy::Exponential);
        assert!(should_retry(&p, 1, "AgentError", true));
        assert!(should_retry(&p, 3, "AgentError", true));
        assert!(!should_retry(&p, 4, "AgentError", true), "4 attempts = 1 + 3 retries");
        let mut none = p.clone();
        none.max_retries = 0;
        assert!(!should_retry(&none, 1, "AgentError", true), "max_retries 0 fails at once");
    }

    #[test]
    fn retryable_exceptions_match_error_types() {
        let mut p = policy(RetryStrategy::Constant);
        p.retryable_exceptions = vec!["TransientError".into(), "timeout".into()];
        assert!(should_retry(&p, 1, "TransientError", true));
        assert!(should_retry(&p, 1, "timeout", true));
        assert!(!should_retry(&p, 1, "ValueError", true));
        assert!(!should_retry(&p, 1, "TransientError", false), "the worker said not retryable");
        p.retryable_exceptions = vec!["Exception".into()];
        assert!(should_retry(&p, 1, "Anything", true));
        assert!(!should_retry(&p, 1, "condition_error", true));
        assert!(!should_retry(&p, 1, "poison", true));
    }

    #[test]
    fn jitter_is_bounded_and_replayable() {
        let mut p = policy(RetryStrategy::Exponential);
        p.jitter = true;
        for k in 1..=5 {
            let base = base_delay_secs(&p, k);
            let d = retry_delay(&p, k, "exec-1", "node").as_secs_f64();
            assert!((d - base).abs() <= base * 0.1 + 1e-9, "k={k}: {d} vs {base}");
            assert_eq!(retry_delay(&p, k, "exec-1", "node"), retry_delay(&p, k, "exec-1", "node"));
        }
        let differs = (1..=8).any(|k| retry_delay(&p, k, "exec-1", "n") != retry_delay(&p, k, "exec-2", "n"));
        assert!(differs, "different executions draw different jitter");
    }

    #[test]
    fn extreme_values_never_panic() {
        let p = RetryPolicy {
            max_retries: u32::MAX,
            strategy: RetryStrategy::Exponential,
            base_delay: f64::MAX,
            max_delay: f64::MAX,
            jitter: true,
            jitter_range: 1.0,
            retryable_exceptions: vec![],
        };
        assert!(retry_delay(&p, u32::MAX, "e", "n") <= MAX_RETRY_DELAY);
        assert!(should_retry(&p, u32::MAX - 1, "x", true));
        let zero = RetryPolicy { base_delay: 0.0, ..p };
        assert_eq!(retry_delay(&zero, 7, "e", "n"), Duration::ZERO);
    }
}
