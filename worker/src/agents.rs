//! Agents: what a node's `agent_id` runs.
//!
//! An agent receives `{"execution_id", "node_id", "attempt", "clock", "params", "input"}` and
//! returns an outputs object, or an error with a type (matched by `retryable_exceptions`) and
//! whether retrying can help. Three kinds:
//!
//! - built-in: `noop`, `echo`, `sleep`, `fail`, `flaky`, and the emissions agents
//!   `activity_intake`, `emission_factor`, `sum`;
//! - `http`: POST the call as JSON to a URL; a 2xx JSON object is the outputs, 4xx is not
//!   retryable, 5xx, connection errors and timeouts are;
//! - `command`: run a program with the call as JSON on stdin; a JSON object on stdout is the
//!   outputs; a non-zero exit is a failure. The process is killed when the attempt times out.
//!
//! The registry file (`GL_ORCHESTRATOR_AGENTS_FILE`, YAML) names the `http` and `command` agents:
//!
//! ```yaml
//! agents:
//!   geocoder: {type: http, url: "http://geo.internal/run"}
//!   legacy_calc: {type: command, program: /usr/bin/python3, args: [calc.py]}
//! ```

use std::collections::BTreeMap;
use std::process::Stdio;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tokio::io::AsyncWriteExt;

/// What an agent is called with.
#[derive(Debug, Clone, Serialize)]
pub struct Call {
    pub execution_id: String,
    pub node_id: String,
    pub attempt: u32,
    pub clock: String,
    pub params: Map<String, Value>,
    pub input: Value,
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
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegistryFile {
    #[serde(default)]
    agents: BTreeMap<String, External>,
}

/// Resolves `agent_id`s.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    external: BTreeMap<String, External>,
    http: reqwest::Client,
}

/// `GL_ORCHESTRATOR_AGENT_CONNECT_TIMEOUT_SECONDS`'s default.
const DEFAULT_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

fn http_client(connect_timeout: std::time::Duration) -> reqwest::Client {
    // Building fails only when the TLS backend cannot initialise; the plain client then still
    // serves plain-HTTP agents.
    reqwest::Client::builder().connect_timeout(connect_timeout).build().unwrap_or_default()
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
        Ok(Self { external, http: http_client(DEFAULT_CONNECT_TIMEOUT) })
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
                Some(External::Command { program, args }) => command(program, args, call).await,
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
            self.http.post(url).json(call).send().await.map_err(|e| {
                AgentError::new("ConnectionError", format!("agent {agent_id}: {}", e.without_url()), true)
            })?;
        let status = response.status();
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

async fn command(program: &str, args: &[String], call: &Call) -> Result<Value, AgentError> {
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| AgentError::new("CommandError", format!("cannot start {program}: {e}"), false))?;
    let payload = serde_json::to_vec(call).unwrap_or_default();
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(&payload).await.map_err(|e| AgentError::new("CommandError", e.to_string(), true))?;
    }
    let output = child.wait_with_output().await.map_err(|e| AgentError::new("CommandError", e.to_string(), true))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(AgentError::new(
            "CommandError",
            format!("{program} exited with {}: {}", output.status, clip(&stderr)),
            true,
        ));
    }
    serde_json::from_slice(&output.stdout)
        .map_err(|e| AgentError::new("invalid_output", format!("{program} did not print a JSON object: {e}"), false))
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
mod tests {
    use super::*;

    fn call(params: Value, input: Value, attempt: u32) -> Call {
        Call {
            execution_id: "e".into(),
            node_id: "n".into(),
            attempt,
            clock: "2026-01-01T00:00:00Z".into(),
            params: params.as_object().cloned().unwrap_or_default(),
            input,
        }
    }

    #[tokio::test]
    async fn built_ins_behave_as_documented() {
        let r = Registry::default();
        assert_eq!(r.run("noop", &call(json!({}), json!({}), 1)).await, Ok(Map::new()));
        let echoed = r.run("echo", &call(json!({}), json!({"a": 1}), 1)).await.expect("echo");
        assert_eq!(Value::Object(echoed), json!({"a": 1}));
        let flaky = call(json!({"failures": 2}), json!({}), 2);
        assert_eq!(r.run("flaky", &flaky).await.map_err(|e| e.error_type), Err("TransientError".to_owned()));
        let third = r.run("flaky", &call(json!({"failures": 2}), json!({}), 3)).await.expect("third attempt");
        assert_eq!(third.get("attempt"), Some(&json!(3)));
        let failed = r.run("fail", &call(json!({"error_type": "ValueError"}), json!({}), 1)).await;
        assert_eq!(failed.map_err(|e| e.error_type), Err("ValueError".to_owned()));
        let missing = r.run("nope", &call(json!({}), json!({}), 1)).await.expect_err("unknown agent");
        assert_eq!((missing.error_type.as_str(), missing.retryable), ("agent_not_found", false));
        let not_object = r.run("echo", &call(json!({}), json!([1]), 1)).await.expect_err("array output");
        assert_eq!(not_object.error_type, "invalid_output");
    }

    #[tokio::test]
    async fn emissions_are_quantity_times_factor() {
        let r = Registry::default();
        let activities = json!({"activities": [
            {"scope": 1, "activity": "diesel_l", "quantity": 1000},
            {"scope": 2, "activity": "electricity_kwh", "quantity": 5000},
            {"scope": 1, "activity": "diesel_l", "quantity": 500}]});
        let scope1 = r
            .run("emission_factor", &call(json!({"scope": 1, "factors": {"diesel_l": 0.002}}), activities.clone(), 1))
            .await;
        let scope1 = scope1.expect("scope 1");
        assert_eq!(scope1.get("tco2e"), Some(&json!(3.0)));
        let unknown = r.run("emission_factor", &call(json!({"scope": 2, "factors": {}}), activities, 1)).await;
        assert_eq!(unknown.map_err(|e| e.error_type), Err("UnknownActivity".to_owned()));
        let total = r
            .run("sum", &call(json!({}), json!({"_input": {}, "s1": {"tco2e": 3.0}, "s2": {"tco2e": 1.5}}), 1))
            .await
            .expect("sum");
        assert_eq!(total.get("total"), Some(&json!(4.5)));
    }

    #[tokio::test]
    async fn command_agents_read_stdin_and_write_stdout() {
        let r = Registry::default()
            .with("cat", External::Command { program: "/bin/sh".into(), args: vec!["-c".into(), "cat".into()] })
            .with("boom", External::Command { program: "/bin/sh".into(), args: vec!["-c".into(), "exit 3".into()] });
        let out = r.run("cat", &call(json!({"k": 1}), json!({"x": 2}), 1)).await.expect("cat");
        assert_eq!(out.get("input"), Some(&json!({"x": 2})));
        assert_eq!(
            r.run("boom", &call(json!({}), json!({}), 1)).await.map_err(|e| e.error_type),
            Err("CommandError".to_owned())
        );
    }

    #[test]
    fn registry_file_is_validated() {
        assert!(Registry::from_yaml(Some("agents:\n  g: {type: http, url: 'http://x'}\n")).is_ok());
        assert!(Registry::from_yaml(Some("agents:\n  echo: {type: http, url: 'http://x'}\n")).is_err());
        assert!(Registry::from_yaml(Some("agents:\n  g: {type: ftp}\n")).is_err());
    }
}
