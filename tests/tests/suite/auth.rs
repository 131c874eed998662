//! Bearer JWT authentication, scopes and tenancy; the OpenAPI document.

use jsonwebtoken::{EncodingKey, Header, encode};
use reqwest::Method;
use serde_json::{Value, json};
use tests::{Stack, StackOptions, example};

const SECRET: &str = "test-secret-for-hs256";

fn token(scope: &str, tenant: &str, expires_in: i64) -> String {
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() as i64
        + expires_in;
    let claims = json!({"sub": "tester", "scope": scope, "tenant": tenant, "exp": exp});
    encode(&Header::default(), &claims, &EncodingKey::from_secret(SECRET.as_bytes())).expect("token")
}

async fn call(
    stack: &Stack,
    method: reqwest::Method,
    path: &str,
    bearer: Option<&str>,
    body: Option<Value>,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut request = stack.http.request(method, format!("{}{path}", stack.base()));
    if let Some(t) = bearer {
        request = request.bearer_auth(t);
    }
    if let Some(b) = body {
        request = request.json(&b);
    }
    let response = request.send().await.expect("answers");
    let (status, headers) = (response.status().as_u16(), response.headers().clone());
    let text = response.text().await.unwrap_or_default();
    (status, headers, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

#[tokio::test]
async fn tokens_scopes_and_tenants() {
    let stack = Stack::start(StackOptions {
        workers: 0,
        settings: vec![("AUTH", "enabled".into()), ("JWT_SECRET", SECRET.into())],
        ..StackOptions::default()
    })
    .await;
    bad_or_missing_tokens_are_refused(&stack).await;
    scopes_and_tenants(&stack).await;
    stack.shutdown().await;
}

/// Probes and the document are open; no token, a forged, expired or malformed one is 401.
async fn bad_or_missing_tokens_are_refused(stack: &Stack) {
    for open in ["/health", "/ready", "/openapi.json"] {
        let (status, _, _) = call(stack, Method::GET, open, None, None).await;
        assert!(status == 200 || status == 503, "{open} is open: {status}");
    }
    assert_eq!(call(stack, Method::HEAD, "/dags", None, None).await.0, 401, "HEAD is a GET for authorisation");
    let (status, headers, body) = call(stack, Method::GET, "/dags", None, None).await;
    assert_eq!(status, 401);
    assert!(headers.get("www-authenticate").is_some_and(|v| v.to_str().unwrap_or("").starts_with("Bearer")));
    assert_eq!(body["type"], "urn:greenlang:orchestrator:problem:unauthorized");
    let forged = encode(
        &Header::default(),
        &json!({"scope": "orchestrator:admin", "exp": 4_000_000_000u64}),
        &EncodingKey::from_secret(b"wrong"),
    )
    .expect("t");
    assert_eq!(call(stack, Method::GET, "/dags", Some(&forged), None).await.0, 401);
    assert_eq!(
        call(stack, Method::GET, "/dags", Some(&token("orchestrator:dags:read", "a", -3600)), None).await.0,
        401,
        "expired"
    );
    assert_eq!(call(stack, Method::GET, "/dags", Some("not.a.jwt"), None).await.0, 401);
}

/// Each route needs its scope; another tenant's DAGs and executions are not found.
async fn scopes_and_tenants(stack: &Stack) {
    let reader_a = token("orchestrator:dags:read", "tenant-a", 3600);
    let writer_a =
        token("orchestrator:dags:write orchestrator:executions:write orchestrator:executions:read", "tenant-a", 3600);
    let admin_b = token("orchestrator:admin", "tenant-b", 3600);
    let (status, _, body) = call(stack, Method::POST, "/dags", Some(&reader_a), Some(example("linear-3.yaml"))).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["type"], "urn:greenlang:orchestrator:problem:forbidden");
    let (status, _, _) = call(stack, Method::POST, "/dags", Some(&writer_a), Some(example("linear-3.yaml"))).await;
    assert_eq!(status, 201);
    assert_eq!(call(stack, Method::GET, "/dags/dag-linear-3-node", Some(&reader_a), None).await.0, 200);
    assert_eq!(
        call(stack, Method::GET, "/dags/dag-linear-3-node", Some(&admin_b), None).await.0,
        404,
        "another tenant's DAG is not found"
    );
    let (status, _, body) = call(stack, Method::POST, "/dags", Some(&admin_b), Some(example("linear-3.yaml"))).await;
    assert_eq!(status, 201, "the same id is free in another tenant: {body}");
    let (status, _, body) =
        call(stack, Method::POST, "/dags/dag-linear-3-node/execute", Some(&writer_a), Some(json!({}))).await;
    assert_eq!(status, 202);
    let id = body["execution_id"].as_str().expect("id").to_owned();
    assert_eq!(call(stack, Method::GET, &format!("/executions/{id}"), Some(&writer_a), None).await.0, 200);
    assert_eq!(call(stack, Method::GET, &format!("/executions/{id}"), Some(&admin_b), None).await.0, 404);
    assert_eq!(
        call(stack, Method::POST, &format!("/executions/{id}/cancel"), Some(&writer_a), None).await.0,
        403,
        "cancel needs its own scope"
    );
}

#[tokio::test]
async fn the_openapi_document_lists_every_operation_and_its_errors() {
    let stack = Stack::start(StackOptions { workers: 0, ..StackOptions::default() }).await;
    let (status, doc) = stack.call(reqwest::Method::GET, "/openapi.json", None).await;
    assert_eq!(status, 200);
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().expect("paths");
    let operations: usize = paths.values().map(|p| p.as_object().map_or(0, |o| o.len())).sum();
    assert_eq!(operations, coordinator::endpoints::ENDPOINTS.len());
    let put = &doc["paths"]["/api/v1/orchestrator/dags/{dag_id}"]["put"];
    for status in ["200", "400", "401", "403", "404", "412", "422"] {
        assert!(put["responses"][status].is_object(), "PUT /dags/{{dag_id}} documents {status}");
    }
    assert_eq!(
        put["responses"]["412"]["content"]["application/problem+json"]["schema"]["$ref"],
        "#/components/schemas/Problem"
    );
    assert_eq!(put["security"][0]["bearerAuth"][0], "orchestrator:dags:write");
    every_ref_resolves_and_answers_are_typed(&doc);
    stack.shutdown().await;
}

/// Every `$ref` names a schema the document holds, and the typed answers carry their fields (the
/// response schemas are generated from the handlers' own types; schemathesis checks the answers
/// against them in `scripts/schemathesis.sh`).
fn every_ref_resolves_and_answers_are_typed(doc: &Value) {
    let schemas = doc["components"]["schemas"].as_object().expect("schemas");
    let mut stack = vec![doc];
    let mut refs = 0;
    while let Some(v) = stack.pop() {
        match v {
            Value::Object(map) => {
                if let Some(Value::String(r)) = map.get("$ref") {
                    let name = r.strip_prefix("#/components/schemas/").unwrap_or_else(|| panic!("a local ref: {r}"));
                    assert!(schemas.contains_key(name), "{r} resolves");
                    refs += 1;
                }
                stack.extend(map.values());
            }
            Value::Array(items) => stack.extend(items),
            _ => {}
        }
    }
    assert!(refs > 40, "only {refs} refs");
    let answer = |path: &str, method: &str, status: &str| {
        let op = &doc["paths"][format!("/api/v1/orchestrator{path}")][method];
        let r = op["responses"][status]["content"]["application/json"]["schema"]["$ref"].as_str().unwrap_or("");
        schemas[r.trim_start_matches("#/components/schemas/")].clone()
    };
    let page = answer("/executions", "get", "200");
    let required = page["required"].as_array().expect("required fields");
    for field in ["count", "items"] {
        assert!(required.contains(&json!(field)), "{field} in {page}");
    }
    assert!(page["properties"]["items"]["items"]["properties"]["provenance_chain_hash"].is_object(), "{page}");
    let accepted = answer("/dags/{dag_id}/execute", "post", "202");
    assert!(accepted["properties"]["execution_id"].is_object(), "{accepted}");
    let resumed = answer("/executions/{execution_id}/resume", "post", "202");
    assert!(resumed["properties"]["checkpoints_rejected"].is_object(), "{resumed}");
    let trace = answer("/executions/{execution_id}/trace", "get", "200");
    assert!(
        trace["properties"]["nodes"]["items"]["properties"]["attempts"]["items"]["properties"]["outcome"].is_object()
    );
    let provenance = answer("/executions/{execution_id}/provenance", "get", "200");
    for field in ["chain_valid", "provenance_chain_hash", "nodes"] {
        assert!(provenance["properties"][field].is_object(), "{field} in {provenance}");
    }
}

/// A test-only Ed25519 key pair (generated with `openssl genpkey -algorithm ed25519`).
const ED_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIL0T6U7ffUF2Ce36GPKaB3Hg/6CCaHAJi7puEueYuJri\n-----END PRIVATE KEY-----\n";
const ED_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAg4/RSieZPg7k+IqD6YSpXibSXrdXbxVXaDlMqfgwpu0=\n-----END PUBLIC KEY-----\n";

#[tokio::test]
async fn eddsa_tokens_with_issuer_and_audience() {
    let stack = Stack::start(StackOptions {
        workers: 0,
        settings: vec![
            ("AUTH", "enabled".into()),
            ("JWT_ALGORITHM", "EdDSA".into()),
            ("JWT_PUBLIC_KEY", ED_PUBLIC.into()),
            ("JWT_ISSUER", "https://id.greenlang.example".into()),
            ("JWT_AUDIENCE", "orchestrator".into()),
        ],
        ..StackOptions::default()
    })
    .await;
    let key = EncodingKey::from_ed_pem(ED_PRIVATE.as_bytes()).expect("key");
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() + 600;
    let sign = |claims: Value| encode(&Header::new(jsonwebtoken::Algorithm::EdDSA), &claims, &key).expect("sign");
    let good = sign(
        json!({"scope": "orchestrator:dags:read", "iss": "https://id.greenlang.example", "aud": "orchestrator", "exp": exp}),
    );
    let wrong_aud = sign(
        json!({"scope": "orchestrator:dags:read", "iss": "https://id.greenlang.example", "aud": "other", "exp": exp}),
    );
    let no_exp =
        sign(json!({"scope": "orchestrator:dags:read", "iss": "https://id.greenlang.example", "aud": "orchestrator"}));
    let hs256 = token("orchestrator:admin", "default", 600);
    assert_eq!(call(&stack, reqwest::Method::GET, "/dags", Some(&good), None).await.0, 200);
    assert_eq!(call(&stack, reqwest::Method::GET, "/dags", Some(&wrong_aud), None).await.0, 401);
    assert_eq!(call(&stack, reqwest::Method::GET, "/dags", Some(&no_exp), None).await.0, 401, "exp is required");
    assert_eq!(call(&stack, reqwest::Method::GET, "/dags", Some(&hs256), None).await.0, 401, "the algorithm is pinned");
    stack.shutdown().await;
}
