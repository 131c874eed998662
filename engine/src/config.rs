//! Typed, validated configuration: built-in defaults, then an optional YAML file
//! (`GL_ORCHESTRATOR_CONFIG_FILE`, keys without the prefix, lower case), then
//! `GL_ORCHESTRATOR_*` environment variables. Every problem names the variable; an unknown
//! `GL_ORCHESTRATOR_*` variable is an error too, so a typo cannot silently fall back to a default.
//!
//! Parsing is pure: callers pass the environment and the file text in.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Prefix of every variable.
pub const PREFIX: &str = "GL_ORCHESTRATOR_";

/// How long a process's exit waits for its buffered spans to be exported (the exit reserve of
/// [`Settings::component_grace`] is built on it).
pub const FLUSH_WITHIN: std::time::Duration = std::time::Duration::from_secs(2);

/// Every setting, as the suffix of its variable, with its default (`None`: no default).
pub const SETTINGS: &[(&str, Option<&str>)] = &[
    ("CONFIG_FILE", None),
    ("DATABASE_URL", Some("postgres://postgres@127.0.0.1:5432/postgres")),
    ("AMQP_URL", Some("amqp://guest:guest@127.0.0.1:5672/%2f")),
    ("REDIS_URL", Some("redis://127.0.0.1:6379")),
    ("HTTP_ADDR", Some("127.0.0.1:8080")),
    ("WORKER_METRICS_ADDR", Some("127.0.0.1:9091")),
    ("QUEUE_PREFIX", Some("gl.orchestrator")),
    ("REDIS_PREFIX", Some("gl:orchestrator:")),
    ("WORKER_QUEUES", Some("default")),
    ("WORKER_CONCURRENCY", Some("4")),
    ("WORKER_ID", None),
    ("AGENTS_FILE", None),
    ("MAX_PARALLEL_NODES", Some("10")),
    ("MAX_DAG_NODES", Some("10000")),
    ("MAX_CONCURRENT_EXECUTIONS", Some("50")),
    ("ACCEPT_NEW_EXECUTIONS", Some("true")),
    ("MAX_BODY_BYTES", Some("1048576")),
    ("MAX_NODE_OUTPUT_BYTES", Some("1048576")),
    ("MAX_JSON_DEPTH", Some("64")),
    ("MAX_TASK_INPUT_BYTES", Some("16777216")),
    ("DB_POOL_SIZE", Some("10")),
    ("DB_POOL_MAX_OVERFLOW", Some("5")),
    ("LEASE_TTL_SECONDS", Some("15")),
    ("ATTEMPT_GRACE_SECONDS", Some("600")),
    ("DELIVERY_LIMIT", Some("5")),
    ("SHUTDOWN_GRACE_SECONDS", Some("30")),
    ("AMQP_TIMEOUT_SECONDS", Some("10")),
    ("DB_STATEMENT_TIMEOUT_SECONDS", Some("10")),
    ("DB_CALL_TIMEOUT_SECONDS", Some("15")),
    ("REDIS_TIMEOUT_MS", Some("300")),
    ("HTTP_REQUEST_TIMEOUT_SECONDS", Some("30")),
    ("AGENT_CONNECT_TIMEOUT_SECONDS", Some("10")),
    ("STALL_SECONDS", Some("30")),
    ("CHECKPOINT_RETENTION_HOURS", Some("720")),
    ("AUTH", Some("enabled")),
    ("JWT_SECRET", None),
    ("RESULT_KEYS", None),
    ("JWT_PUBLIC_KEY", None),
    ("JWT_ALGORITHM", Some("HS256")),
    ("JWT_ISSUER", None),
    ("JWT_AUDIENCE", None),
    ("LOG_LEVEL", Some("info")),
];

/// A value that must never be printed: `Debug` and `Display` show `[redacted]`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Whether the API checks bearer tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    Enabled,
    Disabled,
}

/// The whole configuration of a coordinator or worker process.
#[derive(Debug, Clone)]
pub struct Settings {
    pub database_url: Secret,
    pub amqp_url: Secret,
    pub redis_url: Secret,
    pub http_addr: SocketAddr,
    pub worker_metrics_addr: SocketAddr,
    /// Namespaces exchanges and queues (`<prefix>.tasks`, ...).
    pub queue_prefix: String,
    pub redis_prefix: String,
    /// The worker pools (node `queue`s) a worker consumes.
    pub worker_queues: Vec<String>,
    pub worker_concurrency: u32,
    pub worker_id: Option<String>,
    pub agents_file: Option<PathBuf>,
    /// Upper bound on any DAG's `max_parallel_nodes`.
    pub max_parallel_nodes: u32,
    pub max_dag_nodes: usize,
    pub max_concurrent_executions: u32,
    pub accept_new_executions: bool,
    pub max_body_bytes: usize,
    /// What a node's outputs may be: compact JSON bytes and nesting (see [`crate::bounds`]).
    pub max_node_output_bytes: usize,
    pub max_json_depth: usize,
    /// A node whose input is larger fails as `input_too_large` without being dispatched.
    pub max_task_input_bytes: usize,
    pub db_pool_size: u32,
    pub db_pool_max_overflow: u32,
    pub lease_ttl_seconds: u32,
    /// How long past its timeout an attempt may go without a result before the coordinator ends
    /// it as `worker_lost` (the time its task waits in the queue counts too).
    pub attempt_grace_seconds: u32,
    /// Deliveries of one task before it is dead-lettered as poison.
    pub delivery_limit: u32,
    pub shutdown_grace_seconds: u32,
    /// Bound on every RabbitMQ operation (connect, declare, publish and confirm, consume set-up).
    pub amqp_timeout_seconds: u32,
    /// PostgreSQL's `statement_timeout` on every connection.
    pub db_statement_timeout_seconds: u32,
    /// Client-side bound on every store call (acquire, statements, commit): a paused server
    /// answers nothing, so only our own timer ends the wait.
    pub db_call_timeout_seconds: u32,
    /// Bound on every Redis call.
    pub redis_timeout_ms: u32,
    /// Bound on reading a request's headers and on serving one request.
    pub http_request_timeout_seconds: u32,
    /// Bound on connecting to an `http` agent (the attempt's timeout bounds the whole call).
    pub agent_connect_timeout_seconds: u32,
    /// A loop silent this long is stalled: readiness fails and names it.
    pub stall_seconds: u32,
    pub checkpoint_retention_hours: u32,
    pub auth: AuthMode,
    pub jwt_secret: Option<Secret>,
    /// Workers sign results with the first key, coordinators accept any (`id:secret,...`); unset:
    /// results are not authenticated (development only).
    pub result_keys: Option<crate::signing::Keyring>,
    pub jwt_public_key: Option<Secret>,
    pub jwt_algorithm: String,
    pub jwt_issuer: Option<String>,
    pub jwt_audience: Option<String>,
    pub log_level: String,
}

/// A setting that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{variable}: {message}")]
pub struct ConfigError {
    pub variable: String,
    pub message: String,
}

fn error(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError { variable: format!("{PREFIX}{key}"), message: message.into() }
}

impl Settings {
    /// Builds settings from `env` (all process variables; only `GL_ORCHESTRATOR_*` are read) and
    /// the text of the configuration file, if one was named.
    pub fn load(env: impl IntoIterator<Item = (String, String)>, file: Option<&str>) -> Result<Self, ConfigError> {
        let mut values: BTreeMap<String, String> = BTreeMap::new();
        for (key, default) in SETTINGS {
            if let Some(d) = default {
                values.insert((*key).to_owned(), (*d).to_owned());
            }
        }
        if let Some(text) = file {
            let parsed: BTreeMap<String, serde_json::Value> = serde_saphyr::from_str(text)
                .map_err(|e| error("CONFIG_FILE", format!("not a YAML map of settings: {e}")))?;
            for (key, value) in parsed {
                let key = key.to_ascii_uppercase();
                known(&key).map_err(|_| error("CONFIG_FILE", format!("unknown setting {key:?}")))?;
                let text = match value {
                    serde_json::Value::String(s) => s,
                    other => other.to_string(),
                };
                values.insert(key, text);
            }
        }
        for (name, value) in env {
            if let Some(key) = name.strip_prefix(PREFIX) {
                known(key)?;
                values.insert(key.to_owned(), value);
            }
        }
        Self::from_values(&values)
    }

    fn from_values(v: &BTreeMap<String, String>) -> Result<Self, ConfigError> {
        let get = |key: &str| v.get(key).map(String::as_str).filter(|s| !s.is_empty());
        let required = |key: &str| get(key).ok_or_else(|| error(key, "must be set"));
        let number = |key: &str, min: u32, max: u32| ranged(required(key)?, key, min, max);
        let settings = Self {
            database_url: Secret::new(url(required("DATABASE_URL")?, "DATABASE_URL", &["postgres", "postgresql"])?),
            amqp_url: Secret::new(url(required("AMQP_URL")?, "AMQP_URL", &["amqp", "amqps"])?),
            redis_url: Secret::new(url(required("REDIS_URL")?, "REDIS_URL", &["redis", "rediss"])?),
            http_addr: parse(required("HTTP_ADDR")?, "HTTP_ADDR", "an address such as 127.0.0.1:8080")?,
            worker_metrics_addr: parse(required("WORKER_METRICS_ADDR")?, "WORKER_METRICS_ADDR", "an address")?,
            queue_prefix: name(required("QUEUE_PREFIX")?, "QUEUE_PREFIX")?,
            redis_prefix: required("REDIS_PREFIX")?.to_owned(),
            worker_queues: required("WORKER_QUEUES")?
                .split(',')
                .map(|q| name(q.trim(), "WORKER_QUEUES"))
                .collect::<Result<_, _>>()?,
            worker_concurrency: number("WORKER_CONCURRENCY", 1, 1024)?,
            worker_id: get("WORKER_ID").map(|w| name(w, "WORKER_ID")).transpose()?,
            agents_file: get("AGENTS_FILE").map(PathBuf::from),
            max_parallel_nodes: number("MAX_PARALLEL_NODES", 1, 500)?,
            max_dag_nodes: number("MAX_DAG_NODES", 1, 10_000_000)? as usize,
            max_concurrent_executions: number("MAX_CONCURRENT_EXECUTIONS", 1, 1_000_000)?,
            accept_new_executions: boolean(required("ACCEPT_NEW_EXECUTIONS")?, "ACCEPT_NEW_EXECUTIONS")?,
            max_body_bytes: number("MAX_BODY_BYTES", 1024, 1 << 30)? as usize,
            max_node_output_bytes: number("MAX_NODE_OUTPUT_BYTES", 1024, 1 << 30)? as usize,
            // Past 100 a dependent's input (one level deeper) nears the decoders' own limit, 128.
            max_json_depth: number("MAX_JSON_DEPTH", 2, 100)? as usize,
            max_task_input_bytes: number("MAX_TASK_INPUT_BYTES", 1024, 1 << 30)? as usize,
            db_pool_size: number("DB_POOL_SIZE", 1, 1000)?,
            db_pool_max_overflow: number("DB_POOL_MAX_OVERFLOW", 0, 1000)?,
            lease_ttl_seconds: number("LEASE_TTL_SECONDS", 1, 3600)?,
            attempt_grace_seconds: number("ATTEMPT_GRACE_SECONDS", 1, 7 * 86_400)?,
            delivery_limit: number("DELIVERY_LIMIT", 1, 1000)?,
            shutdown_grace_seconds: number("SHUTDOWN_GRACE_SECONDS", 0, 86_400)?,
            amqp_timeout_seconds: number("AMQP_TIMEOUT_SECONDS", 1, 3600)?,
            db_statement_timeout_seconds: number("DB_STATEMENT_TIMEOUT_SECONDS", 1, 3600)?,
            db_call_timeout_seconds: number("DB_CALL_TIMEOUT_SECONDS", 1, 3600)?,
            redis_timeout_ms: number("REDIS_TIMEOUT_MS", 10, 60_000)?,
            http_request_timeout_seconds: number("HTTP_REQUEST_TIMEOUT_SECONDS", 1, 3600)?,
            agent_connect_timeout_seconds: number("AGENT_CONNECT_TIMEOUT_SECONDS", 1, 3600)?,
            stall_seconds: number("STALL_SECONDS", 1, 86_400)?,
            checkpoint_retention_hours: number("CHECKPOINT_RETENTION_HOURS", 1, 1_000_000)?,
            auth: match one_of(required("AUTH")?, "AUTH", &["enabled", "disabled"])? {
                "enabled" => AuthMode::Enabled,
                _ => AuthMode::Disabled,
            },
            jwt_secret: get("JWT_SECRET").map(Secret::new),
            result_keys: get("RESULT_KEYS")
                .map(|keys| crate::signing::Keyring::parse(keys).map_err(|e| error("RESULT_KEYS", e)))
                .transpose()?,
            jwt_public_key: get("JWT_PUBLIC_KEY").map(Secret::new),
            jwt_algorithm: one_of(required("JWT_ALGORITHM")?, "JWT_ALGORITHM", &["HS256", "RS256", "EdDSA"])?
                .to_owned(),
            jwt_issuer: get("JWT_ISSUER").map(str::to_owned),
            jwt_audience: get("JWT_AUDIENCE").map(str::to_owned),
            log_level: one_of(
                &required("LOG_LEVEL")?.to_ascii_lowercase(),
                "LOG_LEVEL",
                &["trace", "debug", "info", "warn", "error"],
            )?
            .to_owned(),
        };
        Ok(settings)
    }

    /// The limits every result is held to, by the worker that sends it and the coordinator that
    /// records it.
    pub fn bounds(&self) -> crate::bounds::Bounds {
        crate::bounds::Bounds { max_output_bytes: self.max_node_output_bytes, max_json_depth: self.max_json_depth }
    }

    /// Connections the database pool may open: `DB_POOL_SIZE + DB_POOL_MAX_OVERFLOW`.
    pub fn db_max_connections(&self) -> u32 {
        self.db_pool_size.saturating_add(self.db_pool_max_overflow)
    }

    pub fn attempt_grace_ms(&self) -> u64 {
        u64::from(self.attempt_grace_seconds) * 1000
    }

    pub fn amqp_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(u64::from(self.amqp_timeout_seconds))
    }

    pub fn stall_after(&self) -> std::time::Duration {
        std::time::Duration::from_secs(u64::from(self.stall_seconds))
    }

    pub fn shutdown_grace(&self) -> std::time::Duration {
        std::time::Duration::from_secs(u64::from(self.shutdown_grace_seconds))
    }

    /// How long a process's components may take to stop, so that the process itself exits
    /// within the grace: the grace less what exiting needs after them (the final span flush and
    /// the runtime's own shutdown), never more than half of it.
    pub fn component_grace(&self) -> std::time::Duration {
        let grace = self.shutdown_grace();
        let exiting = FLUSH_WITHIN + std::time::Duration::from_millis(500);
        grace.saturating_sub(exiting.min(grace / 2))
    }

    /// Checks what serving the API needs beyond the common settings.
    pub fn check_auth(&self) -> Result<(), ConfigError> {
        if self.auth == AuthMode::Disabled {
            return Ok(());
        }
        match (self.jwt_algorithm.as_str(), &self.jwt_secret, &self.jwt_public_key) {
            ("HS256", Some(_), _) => Ok(()),
            ("HS256", None, _) => Err(error("JWT_SECRET", "must be set when AUTH is enabled with HS256")),
            (_, _, Some(_)) => Ok(()),
            _ => Err(error("JWT_PUBLIC_KEY", "must be set when AUTH is enabled with RS256 or EdDSA")),
        }
    }
}

fn known(key: &str) -> Result<(), ConfigError> {
    if SETTINGS.iter().any(|(k, _)| *k == key) {
        Ok(())
    } else {
        Err(error(key, "is not a setting of this service (check the spelling)"))
    }
}

fn parse<T: std::str::FromStr>(text: &str, key: &str, what: &str) -> Result<T, ConfigError> {
    text.trim().parse().map_err(|_| error(key, format!("must be {what}, not {text:?}")))
}

fn ranged(text: &str, key: &str, min: u32, max: u32) -> Result<u32, ConfigError> {
    let value: u64 = parse(text, key, "a whole number")?;
    u32::try_from(value)
        .ok()
        .filter(|v| (min..=max).contains(v))
        .ok_or_else(|| error(key, format!("must be from {min} to {max}, not {value}")))
}

/// `text` if it is one of `allowed` (the message lists them: "a, b or c").
fn one_of<'a>(text: &'a str, key: &str, allowed: &[&str]) -> Result<&'a str, ConfigError> {
    if allowed.contains(&text) {
        return Ok(text);
    }
    let listed = match allowed.split_last() {
        Some((last, [])) => (*last).to_owned(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    };
    Err(error(key, format!("must be {listed}, not {text:?}")))
}

fn boolean(text: &str, key: &str) -> Result<bool, ConfigError> {
    match text.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(error(key, format!("must be true or false, not {text:?}"))),
    }
}

fn url<'a>(text: &'a str, key: &str, schemes: &[&str]) -> Result<&'a str, ConfigError> {
    let scheme = text.split("://").next().unwrap_or_default();
    if text.contains("://") && schemes.contains(&scheme) {
        Ok(text)
    } else {
        // The value may hold a password: never echo it.
        Err(error(key, format!("must be a {} URL", schemes.join(" or "))))
    }
}

fn name(text: &str, key: &str) -> Result<String, ConfigError> {
    crate::ids::check_id(text).map_err(|e| error(key, format!("{text:?} {e}")))?;
    Ok(text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (format!("{PREFIX}{k}"), (*v).to_owned())).collect()
    }

    #[test]
    fn defaults_load() {
        let s = Settings::load(Vec::new(), None).expect("defaults are valid");
        assert_eq!(s.http_addr.to_string(), "127.0.0.1:8080");
        assert_eq!((s.max_concurrent_executions, s.db_max_connections()), (50, 15));
        assert!(s.accept_new_executions);
        assert_eq!(s.worker_queues, vec!["default"]);
    }

    #[test]
    fn environment_overrides_file_overrides_defaults() {
        let file = "max_parallel_nodes: 5\nworker_concurrency: 8\n";
        let s = Settings::load(env(&[("MAX_PARALLEL_NODES", "3")]), Some(file)).expect("valid");
        assert_eq!((s.max_parallel_nodes, s.worker_concurrency), (3, 8));
    }

    #[test]
    fn errors_name_the_variable_and_hide_secrets() {
        let cases = [
            ("MAX_PARALLEL_NODES", "0"),
            ("MAX_PARALLEL_NODES", "ten"),
            ("HTTP_ADDR", "localhost"),
            ("ACCEPT_NEW_EXECUTIONS", "maybe"),
            ("QUEUE_PREFIX", "a b"),
            ("AUTH", "off"),
            ("DATABASE_URL", "mysql://root:hunter2@db/x"),
            ("MAX_CONCURRNT_EXECUTIONS", "5"),
        ];
        for (key, value) in cases {
            let e = Settings::load(env(&[(key, value)]), None).expect_err(key);
            assert_eq!(e.variable, format!("{PREFIX}{key}"), "{e}");
            assert!(!e.to_string().contains("hunter2"), "{e}");
        }
        let e = Settings::load(Vec::new(), Some("bogus: 1\n")).expect_err("unknown key in file");
        assert_eq!(e.variable, "GL_ORCHESTRATOR_CONFIG_FILE");
    }

    #[test]
    fn a_choice_lists_what_it_accepts() {
        let cases = [
            ("AUTH", "off", "must be enabled or disabled, not \"off\""),
            ("JWT_ALGORITHM", "none", "must be HS256, RS256 or EdDSA, not \"none\""),
            ("LOG_LEVEL", "LOUD", "must be trace, debug, info, warn or error, not \"loud\""),
        ];
        for (key, value, message) in cases {
            let e = Settings::load(env(&[(key, value)]), None).expect_err(key);
            assert_eq!((e.variable.as_str(), e.message.as_str()), (format!("{PREFIX}{key}").as_str(), message));
        }
        let s = Settings::load(env(&[("LOG_LEVEL", "WARN"), ("JWT_ALGORITHM", "EdDSA")]), None).expect("valid");
        assert_eq!((s.log_level.as_str(), s.jwt_algorithm.as_str(), s.auth), ("warn", "EdDSA", AuthMode::Enabled));
    }

    #[test]
    fn secrets_are_redacted() {
        let s = Settings::load(env(&[("DATABASE_URL", "postgres://u:hunter2@h/db")]), None).expect("valid");
        assert!(!format!("{s:?}").contains("hunter2"));
        assert_eq!(s.database_url.expose(), "postgres://u:hunter2@h/db");
    }

    #[test]
    fn auth_needs_a_key() {
        let s = Settings::load(Vec::new(), None).expect("valid");
        assert_eq!(s.check_auth().map_err(|e| e.variable), Err("GL_ORCHESTRATOR_JWT_SECRET".to_owned()));
        let off = Settings::load(env(&[("AUTH", "disabled")]), None).expect("valid");
        assert!(off.check_auth().is_ok());
    }
}
