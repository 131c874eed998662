//! The OpenAPI 3.1 document, generated from [`crate::endpoints::ENDPOINTS`], the request body
//! types of [`super::bodies`] and the response body types of [`super::answers`], and served at
//! `GET /api/v1/orchestrator/openapi.json`.
//!
//! Every limit in it is the constant the code enforces (the core's for DAGs and ids, the API's
//! for pages), never a number written again.

use engine::dag::{MAX_NAME_LEN, MAX_PARALLEL_NODES, MAX_RETRIES, MAX_SECONDS, MAX_VERSION_LEN};
use engine::ids::MAX_ID_LEN;
use serde_json::{Map, Value, json};

use super::answers::{
    CancelRequested, CheckpointList, CheckpointsDeleted, DagDeleted, DagExport, DagGraph, DagListItem, DagSaved,
    DagView, ExecutionAccepted, ExecutionSummary, ExecutionView, Page, Validation,
};
use super::bodies::{ExecuteRequest, ImportRequest, body_schema};
use super::reports::{ProvenanceReport, Trace};
use crate::endpoints::{ENDPOINTS, MAX_PAGE_LIMIT};
use crate::service::resume::Resumed;

/// What `engine::ids` accepts as an id.
fn id_pattern() -> String {
    format!("^[A-Za-z0-9_.:-]{{1,{MAX_ID_LEN}}}$")
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        400 => "Malformed request",
        401 => "Missing or invalid bearer token",
        403 => "The token lacks the required scope",
        404 => "Not found (or another tenant's)",
        409 => "Conflicts with the current state",
        412 => "If-Match names an older revision",
        413 => "Body larger than GL_ORCHESTRATOR_MAX_BODY_BYTES",
        415 => "Body is not application/json",
        422 => "Well-formed but invalid DAG",
        503 => "A dependency is down or new executions are switched off",
        _ => "Response",
    }
}

fn parameters(path: &str) -> Vec<Value> {
    let mut out: Vec<Value> = path
        .split('/')
        .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
        .collect();
    let query = |name: &str, schema: Value| json!({"name": name, "in": "query", "required": false, "schema": schema});
    match path {
        "/executions" => {
            out.push(query("dag_id", json!({"type": "string", "pattern": id_pattern()})));
            out.push(query(
                "status",
                json!({"type": "string", "enum": ["pending", "queued", "running", "completed", "failed", "cancelled"]}),
            ));
            out.push(query(
                "since",
                json!({"type": "string", "description": "24h-style duration or RFC 3339",
                       "pattern": "^([0-9]{1,7}[smhd]|[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.]+(Z|[+-][0-9]{2}:[0-9]{2}))$"}),
            ));
            out.push(query("limit", json!({"type": "integer", "minimum": 1, "maximum": MAX_PAGE_LIMIT})));
            out.push(query("cursor", json!({"type": "string", "pattern": "^[0-9a-f]+$"})));
        }
        "/dags" => {
            out.push(query("limit", json!({"type": "integer", "minimum": 1, "maximum": MAX_PAGE_LIMIT})));
            out.push(query("cursor", json!({"type": "string", "pattern": "^[0-9a-f]+$"})));
        }
        _ => {}
    }
    out
}

/// The whole document.
pub fn document() -> Value {
    let mut paths: Map<String, Value> = Map::new();
    for e in ENDPOINTS {
        let mut responses = Map::new();
        let schema = match e.answer {
            Some(name) => json!({"$ref": format!("#/components/schemas/{name}")}),
            None => json!({"type": "object"}),
        };
        responses.insert(
            e.success.to_string(),
            json!({"description": reason(e.success), "content": {"application/json": {"schema": schema}}}),
        );
        let mut errors: Vec<u16> = e.errors.to_vec();
        if e.scope.is_some() {
            errors.extend([401, 403]);
        }
        errors.extend([405]);
        errors.sort_unstable();
        errors.dedup();
        for status in errors {
            responses.insert(
                status.to_string(),
                json!({"description": reason(status),
                       "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}}),
            );
        }
        let mut operation = json!({
            "summary": e.summary,
            "operationId": format!("{}{}", e.method, e.path.replace(['/', '{', '}', '.'], "_")),
            "tags": ["orchestrator"],
            "parameters": parameters(e.path),
            "responses": responses,
        });
        if let Some(schema) = e.body {
            operation["requestBody"] = json!({"required": true, "content": {"application/json": {
                "schema": {"$ref": format!("#/components/schemas/{schema}")}}}});
        }
        operation["security"] = match e.scope {
            Some(scope) => json!([{"bearerAuth": [scope]}]),
            None => json!([]),
        };
        let entry = paths.entry(format!("/api/v1/orchestrator{}", e.path)).or_insert_with(|| json!({}));
        entry[e.method] = operation;
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "GreenLang Orchestrator", "version": env!("CARGO_PKG_VERSION"),
                 "description": "DAG execution engine with verifiable provenance."},
        "paths": paths,
        "components": {
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
            "schemas": schemas(),
        },
    })
}

fn schemas() -> Value {
    let id = json!({"type": "string", "pattern": id_pattern()});
    let retry = json!({"type": "object", "additionalProperties": false, "properties": {
        "max_retries": {"type": "integer", "minimum": 0, "maximum": MAX_RETRIES},
        "strategy": {"type": "string", "enum": ["exponential", "linear", "constant", "fibonacci"]},
        "base_delay": {"type": "number", "minimum": 0, "maximum": MAX_SECONDS},
        "max_delay": {"type": "number", "minimum": 0, "maximum": MAX_SECONDS},
        "jitter": {"type": "boolean"},
        "jitter_range": {"type": "number", "minimum": 0, "maximum": 1},
        "retryable_exceptions": {"type": "array", "items": {"type": "string"}}}});
    let timeout = json!({"type": "object", "additionalProperties": false, "properties": {
        "timeout_seconds": {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_SECONDS},
        "on_timeout": {"type": "string", "enum": ["fail", "skip", "compensate"]}}});
    let node = json!({"type": "object", "additionalProperties": false, "required": ["agent_id"], "properties": {
        "agent_id": id, "depends_on": {"type": "array", "items": id},
        "input_mapping": {"type": "object", "additionalProperties": {"type": "string"}},
        "output_key": {"type": "string"}, "condition": {"type": "string"},
        "retry_policy": retry, "timeout_policy": timeout,
        "on_failure": {"type": "string", "enum": ["stop", "skip", "compensate"]},
        "compensation_handler": id, "priority": {"type": "integer"},
        "metadata": {"type": "object"}, "params": {"type": "object"}, "queue": id}});
    let dag_properties = json!({
        "dag_id": id, "name": {"type": "string", "minLength": 1, "maxLength": MAX_NAME_LEN},
        "description": {"type": "string"}, "version": {"type": "string", "minLength": 1, "maxLength": MAX_VERSION_LEN},
        "nodes": {"type": "object", "additionalProperties": node},
        "default_retry_policy": retry, "default_timeout_policy": timeout,
        "on_failure": {"type": "string", "enum": ["fail_fast", "continue", "compensate"]},
        "max_parallel_nodes": {"type": "integer", "minimum": 1, "maximum": MAX_PARALLEL_NODES},
        "max_concurrent_executions": {"type": "integer", "minimum": 1},
        "scheduling": {"type": "string", "enum": ["dependency", "level_barrier"]},
        "metadata": {"type": "object"}});
    json!({
        "Problem": {"type": "object", "required": ["type", "title", "status"], "properties": {
            "type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"},
            "detail": {"type": "string"}, "errors": {"type": "array"}, "warnings": {"type": "array"}}},
        "Dag": {"type": "object", "additionalProperties": false, "required": ["name", "nodes"], "properties": dag_properties},
        "DagUpdate": {"type": "object", "properties": dag_properties},
        "ExecuteRequest": body_schema::<ExecuteRequest>(),
        "ImportRequest": body_schema::<ImportRequest>(),
        "DagSaved": body_schema::<DagSaved>(),
        "DagView": body_schema::<DagView>(),
        "DagPage": body_schema::<Page<DagListItem>>(),
        "DagDeleted": body_schema::<DagDeleted>(),
        "DagExport": body_schema::<DagExport>(),
        "DagGraph": body_schema::<DagGraph>(),
        "Validation": body_schema::<Validation>(),
        "ExecutionAccepted": body_schema::<ExecutionAccepted>(),
        "ExecutionPage": body_schema::<Page<ExecutionSummary>>(),
        "ExecutionView": body_schema::<ExecutionView>(),
        "CancelRequested": body_schema::<CancelRequested>(),
        "Resumed": body_schema::<Resumed>(),
        "CheckpointList": body_schema::<CheckpointList>(),
        "CheckpointsDeleted": body_schema::<CheckpointsDeleted>(),
        "Trace": body_schema::<Trace>(),
        "ProvenanceReport": body_schema::<ProvenanceReport>(),
    })
}
