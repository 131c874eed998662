//! Agents: what a node's `agent_id` runs.
//!
//! An agent receives `{"execution_id", "node_id", "attempt", "kind", "idempotency_key", "clock",
//! "params", "input"}` and returns an outputs object, or an error with a type (matched by
//! `retryable_exceptions`) and whether retrying can help. Calls are at least once (RELIABILITY.md
//! lists when the same attempt runs again): `idempotency_key` is `execution:node:attempt:kind`,
//! the same for every delivery of one attempt and different for its compensation, so an agent with
//! side effects can recognise a repeat. Three kinds:
//!
//! - built-in: `noop`, `echo`, `sleep`, `fail`, `flaky`, and the emissions agents
//!   `activity_intake`, `emission_factor`, `sum`;
//! - `http`: POST the call as JSON to a URL with the key as the `Idempotency-Key` header; a 2xx
//!   JSON object is the outputs, 4xx is not retryable, 5xx, connection errors and timeouts are;
//!   redirects are not followed (a 3xx fails the attempt, not retryable: the registry names the
//!   real URL);
//! - `command`: run a program with the call as JSON on stdin; a JSON object on stdout is the
//!   outputs; a non-zero exit is a failure. The child gets a cleared environment (only
//!   [`COMMAND_ENV`] and the entry's own `pass_env` names pass, so the worker's broker credentials
//!   never do), runs in a process group of its own, and the whole group is killed when the attempt
//!   ends, times out or is cancelled. Its stdout is read up to the output limit and its stderr up
//!   to [`STDERR_CAP`]; more fails the attempt as `output_too_large` (the rest is drained, not kept).
//!
//! The registry file (`GL_ORCHESTRATOR_AGENTS_FILE`, YAML) names the `http` and `command` agents:
//!
//! ```yaml
//! agents:
//!   geocoder: {type: http, url: "http://geo.internal/run"}
//!   legacy_calc: {type: command, program: /usr/bin/python3, args: [calc.py], pass_env: [PYTHONPATH]}
//! ```

use std::collections::BTreeMap;

use engine::messages::TaskMessage;
use engine::state::TaskKind;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

mod command;

/// The environment variables a `command` child keeps from the worker's (if set).
pub const COMMAND_ENV: &[&str] = &["PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR"];

/// How much of a `command` child's stderr is kept (for the error message).
pub const STDERR_CAP: usize = 64 * 1024;

/// What an agent is called with.
#[derive(Debug, Clone, Serialize)]
pub struct Call {
    pub execution_id: String,
    pub node_id: String,
    pub attempt: u32,
    pub kind: TaskKind,
    /// `execution:node:attempt:kind`: the same for every delivery of one attempt.
    pub idempotency_key: String,
    pub clock: String,
    pub params: Map<String, Value>,
    pub input: Value,
}

impl Call {
    pub fn of(task: &TaskMessage) -> Self {
        let kind = match task.kind {
            TaskKind::Run => "run",
            TaskKind::Compensate => "compensate",
        };
        Self {
            execution_id: task.execution_id.clone(),
            node_id: task.node_id.clone(),
            attempt: task.attempt,
            kind: task.kind,
            idempotency_key: format!("{}:{}:{}:{kind}", task.execution_id, task.node_id, task.attempt),
            clock: task.clock.clone(),
            params: task.params.clone(),
            input: task.input.clone(),
        }
    }
}

/// Why an agent failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentError {
    pub error_type: String,
    pub message: String,
    pub retryable: bool,
}

impl AgentError {
    fn new(error_type: &str, message: impl Into<String>, retryable: bool) -> Self {
        Self { error_type: error_type.to_owned(), message: message.into(), retryable }
    }
}

/// An agent defined in the registry file.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum External {
    Http {
        url: String,
    },
    Command {
        program: String,
        #[serde(default)]
        args: Vec<String>,
        /// Names of the worker's environment variables the child may see, beyond [`COMMAND_ENV`].
        #[serde(default)]
        pass_env: Vec<String>,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegistryFile {
    #[serde(default)]
    agents: BTreeMap<String, External>,
}

/// Resolves `agent_id`s.
#[derive(Debug, Clone)]
pub struct Registry {
    external: BTreeMap<String, External>,
    http: reqwest::Client,
    /// Bytes of a `command` agent's stdout read at most (`GL_ORCHESTRATOR_MAX_NODE_OUTPUT_BYTES`).
    output_cap: usize,
}

/// `GL_ORCHESTRATOR_AGENT_CONNECT_TIMEOUT_SECONDS`'s default.
const DEFAULT_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

fn http_client(connect_timeout: std::time::Duration) -> reqwest::Client {
    // Building fails only when the TLS backend cannot initialise; the plain client then still
    // serves plain-HTTP agents.
    reqwest::Client::builder()
        .connect_timeout(connect_timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap_or_default()
}

impl Default for Registry {
    fn default() -> Self {
        Self {
            external: BTreeMap::new(),
            http: http_client(DEFAULT_CONNECT_TIMEOUT),
            output_cap: engine::bounds::DEFAULT_MAX_OUTPUT_BYTES,
        }
    }
}

const BUILT_IN: &[&str] = &["noop", "echo", "sleep", "fail", "flaky", "activity_intake", "emission_factor", "sum"];

impl Registry {
    /// Built-in agents plus those of the registry file's text.
    pub fn from_yaml(text: Option<&str>) -> Result<Self, String> {
        let external = match text {
            Some(text) => serde_saphyr::from_str::<RegistryFile>(text).map_err(|e| format!("agents file: {e}"))?.agents,
            None => BTreeMap::new(),
        };
        if let Some(clash) = external.keys().find(|k| BUILT_IN.contains(&k.as_str())) {
            return Err(format!("agents file: {clash:?} is a built-in agent"));
        }
        Ok(Self { external, ..Self::default() })
    }

    /// A `command` agent's stdout beyond `bytes` fails its attempt as `output_too_large`.
    pub fn with_output_cap(mut self, bytes: usize) -> Self {
        self.output_cap = bytes;
        self
    }

    /// Connecting to an `http` agent fails after `limit` (the attempt's own timeout bounds the
    /// whole call: its future is dropped when the attempt times out).
    pub fn with_connect_timeout(mut self, limit: std::time::Duration) -> Self {
        self.http = http_client(limit);
        self
    }

    /// Adds or replaces an external agent (tests and embedders).
    pub fn with(mut self, agent_id: &str, agent: External) -> Self {
        self.external.insert(agent_id.to_owned(), agent);
        self
    }

    /// Runs `agent_id`. Dropping the future stops the work (a command's process is killed).
    pub async fn run(&self, agent_id: &str, call: &Call) -> Result<Map<String, Value>, AgentError> {
        let outputs = match agent_id {
            "noop" => Ok(json!({})),
            "echo" => Ok(call.input.clone()),
            "sleep" => sleep(call).await,
            "fail" => Err(fail(call)),
            "flaky" => flaky(call),
            "activity_intake" => activity_intake(call),
            "emission_factor" => emission_factor(call),
            "sum" => sum(call),
            other => match self.external.get(other) {
                Some(External::Http { url }) => self.http(other, url, call).await,
                Some(External::Command { program, args, pass_env }) => {
                    command::run(program, args, pass_env, call, self.output_cap).await
                }
                None => Err(AgentError::new("agent_not_found", format!("no agent named {other:?}"), false)),
            },
        }?;
        match outputs {
            Value::Object(map) => Ok(map),
            other => {
                Err(AgentError::new("invalid_output", format!("outputs must be a JSON object, got {other}"), false))
            }
        }
    }

    /// Errors name the agent, never its URL, which may carry credentials.
    async fn http(&self, agent_id: &str, url: &str, call: &Call) -> Result<Value, AgentError> {
        let response =
            self.http.post(url).header("Idempotency-Key", &call.idempotency_key).json(call).send().await.map_err(
                |e| AgentError::new("ConnectionError", format!("agent {agent_id}: {}", e.without_url()), true),
            )?;
        let status = response.status();
        if status.is_redirection() {
            let message = format!("agent {agent_id} answered {status}; redirects are not followed");
            return Err(AgentError::new("HttpRedirect", message, false));
        }
        let body = response
            .text()
            .await
            .map_err(|e| AgentError::new("ConnectionError", format!("agent {agent_id}: {}", e.without_url()), true))?;
        if status.is_client_error() {
            let message = format!("agent {agent_id} answered {status}: {}", clip(&body));
            return Err(AgentError::new("HttpClientError", message, false));
        }
        if !status.is_success() {
            let message = format!("agent {agent_id} answered {status}: {}", clip(&body));
            return Err(AgentError::new("HttpServerError", message, true));
        }
        serde_json::from_str(&body)
            .map_err(|e| AgentError::new("invalid_output", format!("agent {agent_id}: {e}"), false))
    }
}

fn clip(text: &str) -> String {
    text.chars().take(500).collect()
}

fn param_u64(call: &Call, key: &str) -> Option<u64> {
    call.params.get(key).and_then(Value::as_u64)
}

async fn sleep(call: &Call) -> Result<Value, AgentError> {
    let ms = param_u64(call, "ms").unwrap_or(0);
    tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    Ok(json!({ "slept_ms": ms }))
}

fn fail(call: &Call) -> AgentError {
    let kind = call.params.get("error_type").and_then(Value::as_str).unwrap_or("AgentError");
    let retryable = call.params.get("retryable").and_then(Value::as_bool).unwrap_or(true);
    AgentError::new(kind, "the fail agent always fails", retryable)
}

fn flaky(call: &Call) -> Result<Value, AgentError> {
    let failures = param_u64(call, "failures").unwrap_or(1);
    if u64::from(call.attempt) <= failures {
        return Err(AgentError::new("TransientError", format!("attempt {} of a flaky agent", call.attempt), true));
    }
    Ok(json!({ "attempt": call.attempt }))
}

/// Checks activity records (`{"scope", "activity", "quantity"}`) and passes them on.
fn activity_intake(call: &Call) -> Result<Value, AgentError> {
    let invalid = |m: String| AgentError::new("InvalidActivityData", m, false);
    let activities = call
        .input
        .get("activities")
        .and_then(Value::as_array)
        .ok_or_else(|| invalid("input.activities must be a list".into()))?;
    for (i, a) in activities.iter().enumerate() {
        let scope_ok = a.get("scope").and_then(Value::as_u64).is_some_and(|s| (1..=3).contains(&s));
        let name_ok = a.get("activity").and_then(Value::as_str).is_some();
        let quantity_ok = a.get("quantity").and_then(Value::as_f64).is_some_and(|q| q.is_finite() && q >= 0.0);
        if !(scope_ok && name_ok && quantity_ok) {
            return Err(invalid(format!("activity {i} needs scope 1-3, an activity name and a quantity >= 0")));
        }
    }
    Ok(json!({
        "activities": activities,
        "organisation": call.input.get("organisation").cloned().unwrap_or(Value::Null),
        "records": activities.len(),
    }))
}

/// tCO2e of the activities of one scope: quantity × emission factor (`params.factors`, tCO2e
/// per unit). Sums in input order, so the result is the same on every machine.
fn emission_factor(call: &Call) -> Result<Value, AgentError> {
    let scope =
        param_u64(call, "scope").ok_or_else(|| AgentError::new("InvalidParams", "params.scope is required", false))?;
    let factors = call.params.get("factors").and_then(Value::as_object).ok_or_else(|| {
        AgentError::new("InvalidParams", "params.factors must map activity names to tCO2e per unit", false)
    })?;
    let activities = call.input.get("activities").and_then(Value::as_array).cloned().unwrap_or_default();
    let mut total = 0.0;
    let mut lines = Vec::new();
    for a in activities.iter().filter(|a| a.get("scope").and_then(Value::as_u64) == Some(scope)) {
        let name = a.get("activity").and_then(Value::as_str).unwrap_or_default();
        let quantity = a.get("quantity").and_then(Value::as_f64).unwrap_or(0.0);
        let factor = factors.get(name).and_then(Value::as_f64).ok_or_else(|| {
            AgentError::new("UnknownActivity", format!("no emission factor for {name:?} in scope {scope}"), false)
        })?;
        let tco2e = quantity * factor;
        total += tco2e;
        lines.push(json!({"activity": name, "quantity": quantity, "factor": factor, "tco2e": tco2e}));
    }
    Ok(json!({"scope": scope, "tco2e": total, "lines": lines}))
}

/// Adds `params.field` (default `tco2e`) over every dependency's outputs.
fn sum(call: &Call) -> Result<Value, AgentError> {
    let field = call.params.get("field").and_then(Value::as_str).unwrap_or("tco2e");
    let mut parts = Map::new();
    let mut total = 0.0;
    if let Some(object) = call.input.as_object() {
        for (dep, outputs) in object.iter().filter(|(k, _)| k.as_str() != "_input") {
            if let Some(v) = outputs.get(field).and_then(Value::as_f64) {
                total += v;
                parts.insert(dep.clone(), json!(v));
            }
        }
    }
    Ok(json!({"field": field, "total": total, "parts": parts}))
}

#[cfg(test)]
mod tests;
