//! Bad input, table-driven: every case gets its documented 4xx `application/problem+json` with a
//! stable `type` (and, for an invalid DAG, the validation error type), never a 500 or a panic,
//! and what was stored before is byte-for-byte unchanged afterwards.

use reqwest::Method;
use serde_json::{Value, json};
use tests::{Backend, Stack, StackOptions};

/// One bad request and the answer it must get.
struct Case {
    name: &'static str,
    method: Method,
    path: String,
    content_type: &'static str,
    body: Vec<u8>,
    status: u16,
    problem: &'static str,
    /// For 422: the validation error type that must be reported.
    error: Option<&'static str>,
}

fn case(
    name: &'static str,
    method: Method,
    path: &str,
    body: impl Into<Vec<u8>>,
    status: u16,
    problem: &'static str,
) -> Case {
    Case {
        name,
        method,
        path: path.into(),
        content_type: "application/json",
        body: body.into(),
        status,
        problem,
        error: None,
    }
}

fn dag_post(name: &'static str, dag: Value, status: u16, problem: &'static str, error: Option<&'static str>) -> Case {
    Case { error, ..case(name, Method::POST, "/dags", dag.to_string(), status, problem) }
}

fn invalid(name: &'static str, dag: Value, error: &'static str) -> Case {
    dag_post(name, dag, 422, "validation-failed", Some(error))
}

fn nodes(n: usize, deps: impl Fn(usize) -> Vec<String>) -> Value {
    let map: serde_json::Map<String, Value> =
        (0..n).map(|i| (format!("n{i}"), json!({"agent_id": "noop", "depends_on": deps(i)}))).collect();
    Value::Object(map)
}

fn cases() -> Vec<Case> {
    let one = |id: &str| json!({"name": "x", "nodes": {id: {"agent_id": "noop"}}});
    let node_with = |field: &str, value: Value| {
        let mut node = json!({"agent_id": "noop"});
        node[field] = value;
        json!({"name": "x", "nodes": {"a": node}})
    };
    let chain = json!({"name": "chain", "nodes": nodes(100_000, |i| if i == 0 { vec![] } else { vec![format!("n{}", i - 1)] })});
    let cycle = json!({"name": "cycle", "nodes": nodes(1_000, |i| vec![format!("n{}", (i + 1) % 1_000)])});
    let fan = json!({"name": "fan", "nodes": nodes(100_000, |i| if i == 0 { vec![] } else { vec!["n0".into()] })});
    vec![
        case("invalid JSON", Method::POST, "/dags", "{\"name\": ", 400, "bad-request"),
        case("truncated JSON", Method::POST, "/dags", "{\"name\": \"x\", \"nodes\": {\"a\": {\"agent_id\"", 400, "bad-request"),
        case("not UTF-8", Method::POST, "/dags", vec![0x7b, 0xff, 0xfe, 0x7d], 400, "bad-request"),
        case("a JSON array", Method::POST, "/dags", "[1, 2]", 400, "bad-request"),
        case("wrong type of name", Method::POST, "/dags", json!({"name": 5, "nodes": {}}).to_string(), 400, "bad-request"),
        case("unknown field", Method::POST, "/dags", json!({"name": "x", "nodes": {}, "colour": 1}).to_string(), 400, "bad-request"),
        Case { content_type: "text/plain", ..case("wrong content type", Method::POST, "/dags", one("a").to_string(), 415, "unsupported-media-type") },
        case("oversized body", Method::POST, "/dags", vec![b' '; 17 * 1024 * 1024], 413, "payload-too-large"),
        case(
            "NUL byte in a name",
            Method::POST,
            "/dags",
            json!({"name": "a\u{0}b", "nodes": {"a": {"agent_id": "noop"}}}).to_string(),
            400,
            "bad-request",
        ),
        Case {
            error: Some("duplicate_node_id"),
            ..case(
                "duplicate node keys",
                Method::POST,
                "/dags",
                r#"{"name": "x", "nodes": {"a": {"agent_id": "noop"}, "a": {"agent_id": "echo"}}}"#,
                422,
                "validation-failed",
            )
        },
        invalid("empty DAG", json!({"name": "x", "nodes": {}}), "empty_dag"),
        invalid("self-loop", json!({"name": "x", "nodes": {"a": {"agent_id": "noop", "depends_on": ["a"]}}}), "self_dependency"),
        invalid("missing dependency", json!({"name": "x", "nodes": {"a": {"agent_id": "noop", "depends_on": ["ghost"]}}}), "missing_dependency"),
        invalid("a 1,000-node cycle", cycle, "cycle"),
        invalid("a 100,000-node chain (over the node limit)", chain, "too_many_nodes"),
        invalid("a 100,000-node fan-out (over the node limit)", fan, "too_many_nodes"),
        invalid("id with ../", one("../etc"), "invalid_node_id"),
        invalid("id with a slash", one("a/b"), "invalid_node_id"),
        invalid("id with whitespace", one("a b"), "invalid_node_id"),
        invalid("id with a zero-width space", one("a\u{200b}b"), "invalid_node_id"),
        invalid("id with a right-to-left override", one("a\u{202e}b"), "invalid_node_id"),
        invalid("SQL-looking id", one("x'; DROP TABLE dag_workflows; --"), "invalid_node_id"),
        invalid("SQL-looking agent", node_with("agent_id", json!("noop'); DELETE FROM outbox; --")), "invalid_field"),
        invalid("negative timeout", node_with("timeout_policy", json!({"timeout_seconds": -1})), "invalid_policy"),
        invalid("huge timeout", node_with("timeout_policy", json!({"timeout_seconds": 1e300})), "invalid_policy"),
        invalid("negative retries", node_with("retry_policy", json!({"max_retries": -1})), "invalid_policy"),
        invalid("huge retries", node_with("retry_policy", json!({"max_retries": 1_000_000_000_000u64})), "invalid_policy"),
        invalid("huge priority", node_with("priority", json!(1e40)), "invalid_field"),
        invalid("a condition that does not parse", node_with("condition", json!("input.x ==")), "invalid_condition"),
        case("execute an unknown DAG", Method::POST, "/dags/nope/execute", "{}", 404, "not-found"),
        case("execute with input not an object", Method::POST, "/dags/kept/execute", json!({"input_data": [1]}).to_string(), 400, "bad-request"),
        case("execute with an unknown field", Method::POST, "/dags/kept/execute", json!({"inputs": {}}).to_string(), 400, "bad-request"),
        case("execute with a bad clock", Method::POST, "/dags/kept/execute", json!({"execution_options": {"clock": "yesterday"}}).to_string(), 400, "bad-request"),
        case("an execution id that is not a UUID", Method::GET, "/executions/../../etc/passwd", "", 404, "not-found"),
        case("a malformed execution id", Method::GET, "/executions/not-a-uuid", "", 404, "not-found"),
        case("an unknown status filter", Method::GET, "/executions?status=exploded", "", 400, "bad-request"),
        case("a huge limit", Method::GET, "/executions?limit=99999999999999999999", "", 400, "bad-request"),
        case("a foreign cursor", Method::GET, "/executions?cursor=%00%ff", "", 400, "bad-request"),
        case("a DAG id with a NUL", Method::GET, "/dags/a%00b", "", 404, "not-found"),
        case("PUT without a body", Method::PUT, "/dags/kept", "", 400, "bad-request"),
        case("PUT that makes the DAG cyclic", Method::PUT, "/dags/kept",
             json!({"nodes": {"a": {"agent_id": "noop", "depends_on": ["b"]}, "b": {"agent_id": "noop", "depends_on": ["a"]}}}).to_string(),
             422, "validation-failed"),
        case("unsupported method", Method::PATCH, "/dags/kept", "{}", 405, "method-not-allowed"),
        case("unknown route", Method::GET, "/nothing-here", "", 404, "not-found"),
    ]
}

/// Everything stored, as the API shows it.
async fn snapshot(stack: &Stack) -> Value {
    let (_, dags) = stack.call(Method::GET, "/dags", None).await;
    let (_, dag) = stack.call(Method::GET, "/dags/kept", None).await;
    let (_, executions) = stack.call(Method::GET, "/executions", None).await;
    json!({"dags": dags, "dag": dag, "executions": executions})
}

async fn every_bad_request_gets_its_problem_and_changes_nothing(backend: Backend) {
    // Bodies up to 16 MiB, so that 100,000-node documents reach validation (and its node limit).
    let settings = vec![("MAX_BODY_BYTES", (16 * 1024 * 1024).to_string())];
    let stack = Stack::start(StackOptions { backend, workers: 0, settings, ..StackOptions::default() }).await;
    stack.create_dag(json!({"dag_id": "kept", "name": "kept", "nodes": {"a": {"agent_id": "noop"}}})).await;
    let before = snapshot(&stack).await;
    let mut failures = Vec::new();
    for c in cases() {
        let response = stack
            .http
            .request(c.method.clone(), format!("{}{}", stack.base(), c.path))
            .header("content-type", c.content_type)
            .body(c.body.clone())
            .send()
            .await
            .expect("the API answers");
        let status = response.status().as_u16();
        let content_type =
            response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        let problem = format!("urn:greenlang:orchestrator:problem:{}", c.problem);
        let error_ok =
            c.error.is_none_or(|e| body["errors"].as_array().is_some_and(|es| es.iter().any(|x| x["error_type"] == e)));
        if status != c.status || content_type != "application/problem+json" || body["type"] != problem || !error_ok {
            let text: String = body.to_string().chars().take(300).collect();
            failures.push(format!("{}: got {status} {content_type} {text}", c.name));
        }
    }
    assert!(failures.is_empty(), "{} case(s) answered otherwise:\n{}", failures.len(), failures.join("\n"));
    assert_eq!(snapshot(&stack).await, before, "nothing stored changed");
    stack.shutdown().await;
}

async fn bad_and_expired_tokens_are_refused_with_401(backend: Backend) {
    let stack = Stack::start(StackOptions {
        backend,
        workers: 0,
        settings: vec![("AUTH", "enabled".into()), ("JWT_SECRET", "a-secret-of-at-least-32-bytes-long!!".into())],
        ..StackOptions::default()
    })
    .await;
    let expired = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": "t", "exp": 1_000_000_000, "scope": "orchestrator:admin"}),
        &jsonwebtoken::EncodingKey::from_secret(b"a-secret-of-at-least-32-bytes-long!!"),
    )
    .expect("token");
    let huge = "x".repeat(64 * 1024);
    for token in ["not-a-jwt", "a.b.c", expired.as_str(), huge.as_str()] {
        let response =
            stack.http.get(format!("{}/dags", stack.base())).bearer_auth(token).send().await.expect("answers");
        let status = response.status().as_u16();
        assert!(status == 401 || status == 431, "token {:.20}: {status}", token);
        if status == 401 {
            assert_eq!(response.headers()["content-type"], "application/problem+json");
        }
    }
    stack.shutdown().await;
}

tests::on_both_backends!(
    every_bad_request_gets_its_problem_and_changes_nothing,
    bad_and_expired_tokens_are_refused_with_401,
);
