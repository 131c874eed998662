//! Effective retry and timeout policies, resolved field by field from a node's policy, the DAG
//! default and the built-in default, and checked against the accepted ranges.

use serde::{Deserialize, Serialize};
use serde_json::Number;

use super::spec::{RetryPolicySpec, RetryStrategy, TimeoutAction, TimeoutPolicySpec};

/// Most retries a policy may ask for.
pub const MAX_RETRIES: u64 = 20;
/// Longest timeout, and longest delay, a policy may ask for: 24 hours.
pub const MAX_SECONDS: f64 = 86_400.0;

/// A complete retry policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetryPolicy {
    pub max_retries: u32,
    pub strategy: RetryStrategy,
    pub base_delay: f64,
    pub max_delay: f64,
    pub jitter: bool,
    pub jitter_range: f64,
    /// Error types that may be retried; empty means every error type.
    pub retryable_exceptions: Vec<String>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_retries: 3,
            strategy: RetryStrategy::Exponential,
            base_delay: 1.0,
            max_delay: 60.0,
            jitter: true,
            jitter_range: 0.1,
            retryable_exceptions: Vec::new(),
        }
    }
}

/// A complete timeout policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimeoutPolicy {
    pub timeout_seconds: f64,
    pub on_timeout: TimeoutAction,
}

impl Default for TimeoutPolicy {
    fn default() -> Self {
        Self { timeout_seconds: 60.0, on_timeout: TimeoutAction::Fail }
    }
}

impl RetryPolicy {
    /// Overlays `spec` on `self`; each problem found is pushed to `problems`.
    pub(crate) fn overlay(&self, spec: Option<&RetryPolicySpec>, problems: &mut Vec<String>) -> Self {
        let mut out = self.clone();
        let Some(spec) = spec else { return out };
        if let Some(n) = &spec.max_retries {
            match n.as_u64().filter(|v| *v <= MAX_RETRIES).and_then(|v| u32::try_from(v).ok()) {
                Some(v) => out.max_retries = v,
                None => problems.push(format!("max_retries must be a whole number from 0 to {MAX_RETRIES}, not {n}")),
            }
        }
        if let Some(s) = spec.strategy {
            out.strategy = s;
        }
        if let Some(n) = &spec.base_delay {
            out.base_delay = seconds(n, "base_delay", 0.0, problems).unwrap_or(out.base_delay);
        }
        if let Some(n) = &spec.max_delay {
            out.max_delay = seconds(n, "max_delay", 0.0, problems).unwrap_or(out.max_delay);
        }
        if let Some(j) = spec.jitter {
            out.jitter = j;
        }
        if let Some(n) = &spec.jitter_range {
            match n.as_f64().filter(|v| (0.0..=1.0).contains(v)) {
                Some(v) => out.jitter_range = v,
                None => problems.push(format!("jitter_range must be between 0 and 1, not {n}")),
            }
        }
        if let Some(list) = &spec.retryable_exceptions {
            if list.iter().any(|e| e.is_empty() || e.len() > 128) {
                problems.push("retryable_exceptions entries must be 1 to 128 characters".to_owned());
            }
            out.retryable_exceptions = list.clone();
        }
        out
    }

    /// The policy written out in full, as stored in a normalised definition.
    pub fn to_spec(&self) -> RetryPolicySpec {
        RetryPolicySpec {
            max_retries: Some(self.max_retries.into()),
            strategy: Some(self.strategy),
            base_delay: Number::from_f64(self.base_delay),
            max_delay: Number::from_f64(self.max_delay),
            jitter: Some(self.jitter),
            jitter_range: Number::from_f64(self.jitter_range),
            retryable_exceptions: Some(self.retryable_exceptions.clone()),
        }
    }
}

impl TimeoutPolicy {
    pub(crate) fn overlay(&self, spec: Option<&TimeoutPolicySpec>, problems: &mut Vec<String>) -> Self {
        let mut out = self.clone();
        let Some(spec) = spec else { return out };
        if let Some(n) = &spec.timeout_seconds
            && let Some(v) = seconds(n, "timeout_seconds", f64::MIN_POSITIVE, problems)
        {
            out.timeout_seconds = v;
        }
        if let Some(a) = spec.on_timeout {
            out.on_timeout = a;
        }
        out
    }

    pub fn to_spec(&self) -> TimeoutPolicySpec {
        TimeoutPolicySpec { timeout_seconds: Number::from_f64(self.timeout_seconds), on_timeout: Some(self.on_timeout) }
    }
}

/// A duration in seconds within `[min, 24 h]`.
fn seconds(n: &Number, field: &str, min: f64, problems: &mut Vec<String>) -> Option<f64> {
    let v = n.as_f64().filter(|v| v.is_finite() && *v >= min && *v <= MAX_SECONDS);
    if v.is_none() {
        let lower = if min > 0.0 { "greater than 0" } else { "at least 0" };
        problems.push(format!("{field} must be {lower} and at most {MAX_SECONDS} seconds, not {n}"));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn retry(v: serde_json::Value) -> RetryPolicySpec {
        serde_json::from_value(v).expect("retry spec")
    }

    #[test]
    fn node_policy_overrides_field_by_field() {
        let dag_default =
            RetryPolicy::default().overlay(Some(&retry(json!({"max_retries": 2, "base_delay": 2}))), &mut vec![]);
        let node = dag_default.overlay(Some(&retry(json!({"strategy": "linear"}))), &mut vec![]);
        assert_eq!(node.max_retries, 2, "inherited from the DAG default");
        assert_eq!(node.base_delay, 2.0);
        assert_eq!(node.strategy, RetryStrategy::Linear);
        assert_eq!(node.max_delay, 60.0, "built-in default");
    }

    #[test]
    fn out_of_range_values_are_reported() {
        for bad in [
            json!({"max_retries": -1}),
            json!({"max_retries": 21}),
            json!({"max_retries": 1.5}),
            json!({"max_retries": 1e300}),
            json!({"base_delay": -0.1}),
            json!({"max_delay": 86401}),
            json!({"jitter_range": 2}),
            json!({"retryable_exceptions": [""]}),
        ] {
            let mut problems = vec![];
            RetryPolicy::default().overlay(Some(&retry(bad.clone())), &mut problems);
            assert_eq!(problems.len(), 1, "{bad}: {problems:?}");
        }
        for bad in [json!({"timeout_seconds": 0}), json!({"timeout_seconds": -5}), json!({"timeout_seconds": 86400.5})]
        {
            let spec: TimeoutPolicySpec = serde_json::from_value(bad.clone()).expect("timeout spec");
            let mut problems = vec![];
            TimeoutPolicy::default().overlay(Some(&spec), &mut problems);
            assert_eq!(problems.len(), 1, "{bad}");
        }
    }

    #[test]
    fn boundaries_are_accepted() {
        let mut problems = vec![];
        let p = RetryPolicy::default()
            .overlay(Some(&retry(json!({"max_retries": 20, "base_delay": 0, "max_delay": 86400}))), &mut problems);
        let spec: TimeoutPolicySpec = serde_json::from_value(json!({"timeout_seconds": 86400})).expect("spec");
        let t = TimeoutPolicy::default().overlay(Some(&spec), &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!((p.max_retries, t.timeout_seconds), (20, 86400.0));
    }
}
