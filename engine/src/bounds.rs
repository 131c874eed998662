//! What a result may carry, decided where it is decoded (and again by the worker before it
//! publishes), so that nothing a worker sends, nor anyone else who can publish to the results
//! queue, can wedge a node, an execution or the inbox:
//!
//! - a result whose *address* (execution, node, attempt, kind) is unusable cannot end any attempt:
//!   [`decode_result`] names why, and the inbox counts it and drops it;
//! - a result with a usable address but a body that cannot be applied as sent (not decodable, a
//!   time that is not RFC 3339, an over-long worker id) ends its attempt as a failed attempt of
//!   type `invalid_result`, not retryable, so the node moves on instead of waiting for ever;
//! - outputs over [`Bounds::max_output_bytes`] or nested deeper than [`Bounds::max_json_depth`]
//!   fail the attempt as `output_too_large`, and a NUL character (which PostgreSQL cannot store)
//!   as `invalid_output`, each naming its limit; error texts are cut to [`MAX_ERROR_TEXT_BYTES`].
//!
//! Pure: the caller passes the bytes, the limits and the time to stamp on an invalid result.

use serde::Deserialize;
use serde_json::Value;

use crate::canonical::compact_len;
use crate::ids::check_id;
use crate::messages::{Message, ResultMessage, WIRE_VERSION};
use crate::state::{NodeError, Outcome, TaskKind};

/// Default of `GL_ORCHESTRATOR_MAX_NODE_OUTPUT_BYTES`: a node's outputs, as compact JSON.
pub const DEFAULT_MAX_OUTPUT_BYTES: usize = 1024 * 1024;

/// Default of `GL_ORCHESTRATOR_MAX_JSON_DEPTH`: nesting of a node's outputs. The dependents'
/// input nests them one level deeper, and every decoder on the way (serde_json's default
/// included) accepts 128, so a value that passes here can always be delivered.
pub const DEFAULT_MAX_JSON_DEPTH: usize = 64;

/// Longest worker id a result may name (the ids' own limit).
pub const MAX_WORKER_ID_LEN: usize = crate::ids::MAX_ID_LEN;

/// Longest error type or message kept from a failed attempt; the rest is cut.
pub const MAX_ERROR_TEXT_BYTES: usize = 16 * 1024;

/// The limits a result is held to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    pub max_output_bytes: usize,
    pub max_json_depth: usize,
}

impl Default for Bounds {
    fn default() -> Self {
        Self { max_output_bytes: DEFAULT_MAX_OUTPUT_BYTES, max_json_depth: DEFAULT_MAX_JSON_DEPTH }
    }
}

/// A result that names no attempt it could end, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unaddressable(pub String);

/// What a message from the results queue becomes.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    /// The result as sent, its outcome held to the bounds.
    AsSent(ResultMessage),
    /// An `invalid_result` failure standing for a result that could not be applied as sent, and why.
    Invalid { result: ResultMessage, problem: String },
}

impl Decoded {
    pub fn into_result(self) -> ResultMessage {
        match self {
            Decoded::AsSent(result) | Decoded::Invalid { result, .. } => result,
        }
    }
}

/// The fields that say which attempt a result ends, read on their own so that a result whose
/// body cannot be decoded still ends its attempt.
#[derive(Debug, Deserialize)]
struct Address {
    #[serde(rename = "type")]
    message_type: String,
    execution_id: String,
    node_id: String,
    attempt: u32,
    kind: TaskKind,
    #[serde(default)]
    worker_id: Option<String>,
}

/// Decodes a message from the results queue into the result to record: as sent, bounded, or
/// replaced by an `invalid_result` failure stamped `now` (RFC 3339).
pub fn decode_result(bytes: &[u8], bounds: &Bounds, now: &str) -> Result<Decoded, Unaddressable> {
    match Message::from_bytes(bytes) {
        Ok(Message::Result(result)) => {
            check_address(&result.execution_id, &result.node_id, result.attempt)?;
            Ok(match body_problem(&result) {
                Some(problem) => Decoded::Invalid {
                    result: invalid(&result.execution_id, &result.node_id, result.attempt, result.kind, &problem, now),
                    problem,
                },
                None => Decoded::AsSent(bounded(result, bounds)),
            })
        }
        Ok(other) => Err(Unaddressable(format!("a {} message on the results queue", other.type_name()))),
        Err(undecodable) => {
            let address: Address = serde_json::from_slice(bytes).map_err(|_| Unaddressable(undecodable.clone()))?;
            if address.message_type != "result" {
                return Err(Unaddressable(undecodable));
            }
            check_address(&address.execution_id, &address.node_id, address.attempt)?;
            let mut result =
                invalid(&address.execution_id, &address.node_id, address.attempt, address.kind, &undecodable, now);
            if let Some(worker) = address.worker_id.filter(|w| worker_id_problem(w).is_none()) {
                result.worker_id = worker;
            }
            Ok(Decoded::Invalid { result, problem: undecodable })
        }
    }
}

/// The result with its outcome held to `bounds` (what the worker publishes, and what the
/// coordinator records).
pub fn bounded(mut result: ResultMessage, bounds: &Bounds) -> ResultMessage {
    result.outcome = bound_outcome(result.outcome, bounds);
    result
}

/// An outcome held to `bounds`: outputs over a limit fail the attempt, error texts are cut.
pub fn bound_outcome(outcome: Outcome, bounds: &Bounds) -> Outcome {
    match outcome {
        Outcome::Succeeded { outputs } => match output_problem(&outputs, bounds) {
            Some(error) => Outcome::Failed { error, retryable: false },
            None => Outcome::Succeeded { outputs },
        },
        Outcome::Failed { mut error, retryable } => {
            error.error_type = storable_text(error.error_type);
            error.message = storable_text(error.message);
            Outcome::Failed { error, retryable }
        }
    }
}

fn output_problem(outputs: &Value, bounds: &Bounds) -> Option<NodeError> {
    let size = compact_len(outputs);
    if size > bounds.max_output_bytes {
        let message = format!(
            "the outputs are {size} bytes; the limit is {} (GL_ORCHESTRATOR_MAX_NODE_OUTPUT_BYTES)",
            bounds.max_output_bytes
        );
        return Some(NodeError::new("output_too_large", message));
    }
    let Shape { depth, has_nul } = shape(outputs);
    if depth > bounds.max_json_depth {
        let message = format!(
            "the outputs nest {depth} levels deep; the limit is {} (GL_ORCHESTRATOR_MAX_JSON_DEPTH)",
            bounds.max_json_depth
        );
        return Some(NodeError::new("output_too_large", message));
    }
    has_nul.then(|| NodeError::new("invalid_output", "the outputs contain a NUL character (U+0000)"))
}

/// Why a result's address names no attempt: the execution id must be a UUID (the stores key on
/// one), the node id an id, the attempt a positive number that fits the stores' integer.
fn check_address(execution_id: &str, node_id: &str, attempt: u32) -> Result<(), Unaddressable> {
    if !is_uuid(execution_id) {
        return Err(Unaddressable(format!("execution_id {:?} is not a UUID", cut(execution_id, 64))));
    }
    if let Err(e) = check_id(node_id) {
        return Err(Unaddressable(format!("node_id {e}")));
    }
    if attempt == 0 || attempt > i32::MAX as u32 {
        return Err(Unaddressable(format!("attempt {attempt} is not between 1 and {}", i32::MAX)));
    }
    Ok(())
}

/// What in an addressable result cannot be stored as sent.
fn body_problem(result: &ResultMessage) -> Option<String> {
    for (field, value) in [("started_at", &result.started_at), ("completed_at", &result.completed_at)] {
        if !is_rfc3339(value) {
            return Some(format!("{field} {:?} is not an RFC 3339 time", cut(value, 64)));
        }
    }
    if let Some(problem) = worker_id_problem(&result.worker_id) {
        return Some(problem);
    }
    if result.duration_ms > i64::MAX as u64 {
        return Some(format!("duration_ms {} does not fit a signed 64-bit integer", result.duration_ms));
    }
    None
}

fn worker_id_problem(worker_id: &str) -> Option<String> {
    let printable = worker_id.chars().all(|c| !c.is_control());
    (worker_id.is_empty() || worker_id.len() > MAX_WORKER_ID_LEN || !printable)
        .then(|| format!("worker_id must be 1 to {MAX_WORKER_ID_LEN} printable bytes"))
}

/// The failed attempt that stands for a result that could not be applied as sent.
fn invalid(execution_id: &str, node_id: &str, attempt: u32, kind: TaskKind, problem: &str, now: &str) -> ResultMessage {
    ResultMessage {
        v: WIRE_VERSION,
        execution_id: execution_id.to_owned(),
        node_id: node_id.to_owned(),
        attempt,
        kind,
        worker_id: "unknown".to_owned(),
        started_at: now.to_owned(),
        completed_at: now.to_owned(),
        duration_ms: 0,
        deliveries: 1,
        outcome: Outcome::Failed {
            error: NodeError::new(
                "invalid_result",
                storable_text(format!("the result could not be applied: {problem}")),
            ),
            retryable: false,
        },
    }
}

/// A text PostgreSQL can store, of bounded length: NUL removed, cut at a character boundary.
fn storable_text(mut text: String) -> String {
    text.retain(|c| c != '\0');
    let end = cut(&text, MAX_ERROR_TEXT_BYTES).len();
    text.truncate(end);
    text
}

fn cut(text: &str, max: usize) -> &str {
    let end = (0..=max.min(text.len())).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
    &text[..end]
}

/// What one walk over a value finds: its nesting depth (a scalar is 0, `[]` and `{}` are 1,
/// `[[1]]` is 2) and whether a string or key holds a NUL character.
#[derive(Debug, PartialEq, Eq)]
struct Shape {
    depth: usize,
    has_nul: bool,
}

fn shape(value: &Value) -> Shape {
    let mut found = Shape { depth: 0, has_nul: false };
    let mut stack = vec![(value, 0)];
    while let Some((v, level)) = stack.pop() {
        match v {
            Value::String(s) => found.has_nul |= s.contains('\0'),
            Value::Array(items) => stack.extend(items.iter().map(|c| (c, level + 1))),
            Value::Object(map) => {
                found.has_nul |= map.keys().any(|k| k.contains('\0'));
                stack.extend(map.values().map(|c| (c, level + 1)));
            }
            _ => continue,
        }
        if v.is_array() || v.is_object() {
            found.depth = found.depth.max(level + 1);
        }
    }
    found
}

/// `8-4-4-4-12` hexadecimal digits.
fn is_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    let lengths = [8, 4, 4, 4, 12];
    groups.len() == 5
        && groups.iter().zip(lengths).all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// An RFC 3339 date-time that both stores accept: a real calendar date from year 1970 on, a
/// time of day (a leap second refused), an optional fraction and an offset.
fn is_rfc3339(s: &str) -> bool {
    chrono::DateTime::parse_from_rfc3339(s).is_ok_and(|t| {
        use chrono::{Datelike, Timelike};
        t.year() >= 1970 && t.nanosecond() < 1_000_000_000
    })
}

#[cfg(test)]
mod tests;
