//! Wire formats between coordinators and workers. Every message is a JSON object with a version
//! `v` and a `type` tag; W3C trace context travels in AMQP headers, not in the body.
//!
//! - [`TaskMessage`] (coordinator → worker, routed by the node's `queue`): one attempt to run.
//! - [`ResultMessage`] (worker → coordinators): how that attempt ended.
//! - [`CancelMessage`] (coordinator → all workers, fan-out): stop an attempt if you hold it.
//!
//! Messages are at-least-once: a consumer must treat a duplicate as harmless. A result is keyed
//! by (execution, node, attempt, kind).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::state::{Outcome, TaskKind};

/// The current wire version. A consumer rejects (dead-letters) any other.
pub const WIRE_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    Task(TaskMessage),
    Result(ResultMessage),
    Cancel(CancelMessage),
}

impl Message {
    pub fn version(&self) -> u32 {
        match self {
            Message::Task(m) => m.v,
            Message::Result(m) => m.v,
            Message::Cancel(m) => m.v,
        }
    }

    /// The `type` tag.
    pub fn type_name(&self) -> &'static str {
        match self {
            Message::Task(_) => "task",
            Message::Result(_) => "result",
            Message::Cancel(_) => "cancel",
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        // Serialising these types cannot fail: string keys only, finite numbers only.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        let message: Message = serde_json::from_slice(bytes).map_err(|e| format!("undecodable message: {e}"))?;
        match message.version() {
            WIRE_VERSION => Ok(message),
            other => Err(format!("unsupported message version {other}")),
        }
    }
}

/// One attempt of one node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskMessage {
    pub v: u32,
    pub execution_id: String,
    pub node_id: String,
    pub attempt: u32,
    pub kind: TaskKind,
    pub agent_id: String,
    /// Static settings from the node definition.
    pub params: Map<String, Value>,
    /// The resolved input object.
    pub input: Value,
    pub timeout_ms: u64,
    /// The execution's deterministic clock value (RFC 3339), handed to agents instead of the
    /// wall clock.
    pub clock: String,
}

/// How one attempt ended, reported by the worker that ran it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultMessage {
    pub v: u32,
    pub execution_id: String,
    pub node_id: String,
    pub attempt: u32,
    pub kind: TaskKind,
    pub worker_id: String,
    /// RFC 3339 UTC with microseconds.
    pub started_at: String,
    pub completed_at: String,
    pub duration_ms: u64,
    /// How many times the broker delivered this task (1 unless a worker died holding it).
    pub deliveries: u32,
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// Ask whichever worker runs this attempt to stop it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelMessage {
    pub v: u32,
    pub execution_id: String,
    pub node_id: String,
    pub attempt: u32,
}

/// W3C trace context of one attempt: every attempt of an execution shares the execution's trace
/// id, and each attempt has its own span id. Derived from the ids, so any process (and a reader
/// of the API) computes the same values without coordination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: String,
    pub span_id: String,
}

impl TraceContext {
    /// The root span of an execution's trace (the execution itself).
    pub fn for_execution(execution_id: &str) -> Self {
        Self::in_execution(execution_id, &format!("root:{execution_id}"))
    }

    /// The span of the API request that submitted the execution.
    pub fn for_submission(execution_id: &str) -> Self {
        Self::in_execution(execution_id, &format!("submit:{execution_id}"))
    }

    pub fn for_attempt(execution_id: &str, node_id: &str, attempt: u32, kind: TaskKind) -> Self {
        Self::in_execution(execution_id, &format!("span:{execution_id}:{node_id}:{attempt}:{kind:?}"))
    }

    /// A span of the execution's trace (trace id from the execution id), its id from `label`.
    fn in_execution(execution_id: &str, label: &str) -> Self {
        let trace = crate::canonical::ContentHash::of_bytes(format!("trace:{execution_id}").as_bytes());
        let span = crate::canonical::ContentHash::of_bytes(label.as_bytes());
        Self { trace_id: trace.as_str()[..32].to_owned(), span_id: span.as_str()[..16].to_owned() }
    }

    /// The `traceparent` header value (version 00, sampled).
    pub fn traceparent(&self) -> String {
        format!("00-{}-{}-01", self.trace_id, self.span_id)
    }

    /// Parses a `traceparent` header.
    pub fn parse(header: &str) -> Option<Self> {
        let mut parts = header.split('-');
        let (version, trace, span, _flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
        (version == "00" && hex(trace, 32) && hex(span, 16))
            .then(|| Self { trace_id: trace.to_owned(), span_id: span.to_owned() })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn trace_context_is_shared_per_execution_and_round_trips() {
        let a = TraceContext::for_attempt("e1", "a", 1, TaskKind::Run);
        let b = TraceContext::for_attempt("e1", "b", 1, TaskKind::Run);
        assert_eq!(a.trace_id, b.trace_id);
        assert_ne!(a.span_id, b.span_id);
        let root = TraceContext::for_execution("e1");
        assert_eq!(root.trace_id, a.trace_id, "the root span is in the execution's trace");
        assert!(root.span_id != a.span_id && root.span_id != b.span_id);
        assert_eq!(TraceContext::parse(&a.traceparent()), Some(a));
        assert_eq!(TraceContext::parse("01-zz-1-01"), None);
    }

    use super::*;
    use crate::state::NodeError;
    use serde_json::json;

    #[test]
    fn messages_round_trip_and_reject_other_versions() {
        let result = Message::Result(ResultMessage {
            v: WIRE_VERSION,
            execution_id: "e".into(),
            node_id: "n".into(),
            attempt: 2,
            kind: TaskKind::Run,
            worker_id: "w1".into(),
            started_at: "2026-11-28T00:00:00.000000Z".into(),
            completed_at: "2026-11-28T00:00:01.000000Z".into(),
            duration_ms: 1000,
            deliveries: 1,
            outcome: Outcome::Failed { error: NodeError::new("timeout", "too slow"), retryable: true },
        });
        let bytes = result.to_bytes();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        assert!(text.contains(r#""type":"result""#) && text.contains(r#""outcome":"failed""#), "{text}");
        assert_eq!(Message::from_bytes(&bytes), Ok(result));
        let mut other: Value = serde_json::from_slice(&bytes).expect("json");
        other["v"] = json!(2);
        assert!(Message::from_bytes(other.to_string().as_bytes()).is_err());
        assert!(Message::from_bytes(b"\xff not json").is_err());
    }
}
