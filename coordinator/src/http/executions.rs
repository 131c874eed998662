//! Executions: submit (idempotency keys), read, trace, cancel, resume, provenance, checkpoints
//! and the filtered, paginated list.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use engine::provenance;
use serde_json::{Value, json};
use uuid::Uuid;

use super::bodies::{ExecuteRequest, read};
use super::dags::{compiled, forget_dag, no_dag, stored_dag};
use super::pagination::{decode_cursor, encode_cursor, page_limit, parse_since};
use super::{ApiResult, AppState, json_body, parse_uuid, reject_nul};
use crate::auth::Tenant;
use crate::problem::ApiError;
use crate::store::{Created, ExecutionFilter, ExecutionRow, NewExecution, SharedStore, StoreError};

/// A submission as the request gave it: checked, with its defaults filled in.
struct Submission {
    input: Value,
    options: Value,
    priority: i32,
    /// The execution's logical clock (RFC 3339, seconds): given, or now.
    clock: String,
    idempotency_key: Option<String>,
}

/// Reads `{input_data, execution_options}` and the `Idempotency-Key` header; a bad request names
/// what is wrong.
fn submission(headers: &HeaderMap, body: &Bytes) -> ApiResult<Submission> {
    let text = json_body(headers, body)?;
    let request: ExecuteRequest =
        if text.trim().is_empty() { ExecuteRequest::default() } else { read(&text, "the execute request")? };
    let ExecuteRequest { input_data: input, execution_options: options } = request;
    if !input.is_object() {
        return Err(ApiError::BadRequest("input_data must be a JSON object".into()));
    }
    reject_nul(&input, "the request")?;
    reject_nul(&options, "the request")?;
    let priority = options.get("priority").and_then(Value::as_i64).and_then(|p| i32::try_from(p).ok()).unwrap_or(0);
    let clock = match options.get("clock") {
        Some(Value::String(c)) => chrono::DateTime::parse_from_rfc3339(c)
            .map_err(|_| ApiError::BadRequest("execution_options.clock must be an RFC 3339 time".into()))?
            .with_timezone(&chrono::Utc)
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        Some(_) => {
            return Err(ApiError::BadRequest("execution_options.clock must be a string".into()));
        }
        None => chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    };
    let key = headers.get("idempotency-key").map(|v| v.to_str().map(str::to_owned));
    let key = key.transpose().map_err(|_| ApiError::BadRequest("Idempotency-Key must be visible ASCII".into()))?;
    if key.as_ref().is_some_and(|k| k.is_empty() || k.len() > 200) {
        return Err(ApiError::BadRequest("Idempotency-Key must be 1 to 200 characters".into()));
    }
    Ok(Submission { input, options, priority, clock, idempotency_key: key })
}

pub(super) async fn execute(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(dag_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let request_started = std::time::SystemTime::now();
    if !state.settings.accept_new_executions {
        return Err(ApiError::Unavailable(
            "new executions are switched off (GL_ORCHESTRATOR_ACCEPT_NEW_EXECUTIONS=false)".into(),
        ));
    }
    let Submission { input, options, priority, clock, idempotency_key: key } = submission(&headers, &body)?;
    let input_hash = provenance::hash_value(&input);
    let request_hash =
        provenance::hash_value(&json!({"dag_id": dag_id, "input_data": input, "execution_options": options}));
    // A cached definition may be stale; the database refuses it and the second pass reads it fresh.
    let mut row = stored_dag(&state, &tenant, &dag_id).await?;
    let (id, message) = loop {
        let created = state
            .db
            .create_execution(NewExecution {
                tenant: &tenant,
                dag_id: &dag_id,
                dag: &compiled(&row)?,
                input: &input,
                input_hash: input_hash.as_str(),
                options: &options,
                priority,
                clock: &clock,
                idempotency: key.as_deref().map(|k| (k, request_hash.as_str())),
            })
            .await
            .map_err(|e| match e {
                StoreError::Conflict(what) => ApiError::Conflict(what),
                e => e.into(),
            })?;
        match created {
            Created::New(id) => {
                crate::spans::submitted(&id.to_string(), &dag_id, request_started);
                break (id, "Execution accepted");
            }
            Created::Existing(id) => break (id, "Execution already accepted for this Idempotency-Key"),
            Created::DagChanged => {
                forget_dag(&state, &tenant, &dag_id).await;
                row = state.db.get_dag(&tenant, &dag_id).await?.ok_or_else(|| no_dag(&dag_id))?;
            }
        }
    };
    let body = json!({"execution_id": id, "dag_id": dag_id, "status": "pending", "message": message});
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

pub(super) fn execution_json(e: &crate::store::ExecutionRow) -> Value {
    json!({
        "execution_id": e.execution_id,
        "dag_id": e.dag_id,
        "dag_hash": e.dag_hash,
        "status": e.status,
        "submitted_at": e.submitted_at,
        "started_at": e.started_at,
        "completed_at": e.completed_at,
        "error": e.error,
        "total_nodes": e.total_nodes,
        "completed_nodes": e.completed_nodes,
        "failed_nodes": e.failed_nodes,
        "skipped_nodes": e.skipped_nodes,
        "provenance_chain_hash": e.provenance_chain_hash,
        "input_data": e.input_data,
        "input_hash": e.input_hash,
        "clock": e.clock,
    })
}

/// The tenant's execution `id` (a UUID in the path), or 404: another tenant's is not found either.
async fn tenant_execution(state: &AppState, tenant: &str, id: &str) -> ApiResult<(Uuid, ExecutionRow)> {
    let id = parse_uuid(id)?;
    let row = state.db.execution(tenant, id).await?.ok_or_else(|| ApiError::NotFound(format!("no execution {id}")))?;
    Ok((id, row))
}

pub(super) async fn get_execution(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let (_, e) = tenant_execution(&state, &tenant, &id).await?;
    Ok(Json(json!({"execution": execution_json(&e)})))
}

pub(super) async fn trace(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let (id, e) = tenant_execution(&state, &tenant, &id).await?;
    let mut attempts = state.db.attempts(id).await?;
    let nodes: Vec<Value> = state
        .db
        .nodes(id)
        .await?
        .into_iter()
        .map(|n| {
            let history: Vec<Value> =
                attempts.remove(&n.node_id).unwrap_or_default().into_iter().map(attempt_json).collect();
            json!({
                "node_id": n.node_id, "agent_id": n.agent_id, "status": n.status, "level_index": n.level_index,
                "attempt_count": n.attempt, "input_hash": n.input_hash, "output_hash": n.output_hash,
                "error_type": n.error_type, "error": n.error, "skip_reason": n.skip_reason,
                "compensation": n.compensation, "started_at": n.started_at, "completed_at": n.completed_at,
                "duration_ms": n.duration_ms, "worker_id": n.worker_id, "trace_id": n.trace_id,
                "outputs": n.outputs, "attempts": history,
            })
        })
        .collect();
    Ok(Json(json!({"execution_id": id, "status": e.status, "nodes": nodes})))
}

/// One attempt as the trace shows it (the result message without the outputs, which the
/// checkpoint holds).
pub(super) fn attempt_json(result: Value) -> Value {
    let error = &result["error"];
    json!({
        "attempt": result["attempt"], "kind": result["kind"], "outcome": result["outcome"],
        "error_type": error["error_type"], "error": error["message"], "retryable": result["retryable"],
        "worker_id": result["worker_id"], "started_at": result["started_at"], "completed_at": result["completed_at"],
        "duration_ms": result["duration_ms"], "deliveries": result["deliveries"],
    })
}

pub(super) async fn cancel(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let (id, e) = tenant_execution(&state, &tenant, &id).await?;
    if !state.db.request_cancel(&tenant, id).await? {
        return Err(ApiError::Conflict(format!("execution {id} already finished as {}", e.status)));
    }
    let body = json!({"execution_id": id, "status": e.status, "message": "Execution cancellation requested"});
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

/// The definition an execution pinned, compiled.
pub(super) async fn pinned_dag(db: &SharedStore, dag_hash: &str) -> ApiResult<engine::dag::Dag> {
    Ok(crate::service::pinned_dag(db.as_ref(), dag_hash).await?)
}

pub(super) async fn provenance_of(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let (id, e) = tenant_execution(&state, &tenant, &id).await?;
    let dag = pinned_dag(&state.db, &e.dag_hash).await?;
    let records: Vec<provenance::Record> = state.db.records(id).await?.into_iter().map(|(_, r)| r).collect();
    let stored = e.provenance_chain_hash.as_deref().and_then(|h| engine::canonical::ContentHash::parse(h).ok());
    let verdict = provenance::verify(&dag, &id.to_string(), &e.input_data, &records, stored.as_ref());
    let result = if verdict.chain_valid { "valid" } else { "invalid" };
    state.metrics.provenance_verifications.with_label_values(&[result]).inc();
    if !verdict.chain_valid {
        tracing::error!(execution_id = %id, problems = ?verdict.problems, "provenance chain verification failed");
    }
    let depends_on = |node_id: &str| -> Vec<&str> {
        dag.index_of(node_id).map(|v| dag.node(v).deps.iter().map(|&d| dag.node_id(d)).collect()).unwrap_or_default()
    };
    let nodes: Vec<Value> = records
        .iter()
        .zip(&verdict.nodes)
        .map(|(r, v)| {
            let mut node = serde_json::to_value(r).unwrap_or_default();
            node["valid"] = json!(v.valid);
            node["problems"] = json!(v.problems);
            node["expected_parent_hashes"] = json!(v.expected_parent_hashes);
            node["depends_on"] = json!(depends_on(&r.node_id));
            node
        })
        .collect();
    Ok(Json(json!({
        "execution_id": id,
        "dag_hash": e.dag_hash,
        "input_hash": e.input_hash,
        "provenance_chain_hash": e.provenance_chain_hash,
        "recomputed_chain_hash": verdict.recomputed_chain_hash,
        "chain_valid": verdict.chain_valid && (e.provenance_chain_hash.is_some() || e.status != "completed"),
        "problems": verdict.problems,
        "node_count": records.len(),
        "canonical_order": dag.order_ids(),
        "definition": dag.definition(),
        "nodes": nodes,
    })))
}

pub(super) async fn resume(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let (_, execution) = tenant_execution(&state, &tenant, &id).await?;
    let resumed = crate::service::resume::resume(state.db.as_ref(), &state.metrics, &execution).await?;
    Ok((StatusCode::ACCEPTED, Json(resumed)).into_response())
}

pub(super) async fn list_checkpoints(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let (id, _) = tenant_execution(&state, &tenant, &id).await?;
    let items: Vec<Value> = state
        .db
        .checkpoints(id)
        .await?
        .into_iter()
        .map(|c| {
            let valid = provenance::hash_value(&c.outputs).as_str() == c.output_hash;
            json!({"execution_id": id, "node_id": c.node_id, "status": c.status, "outputs": c.outputs,
                   "output_hash": c.output_hash, "attempt_count": c.attempt_count, "created_at": c.created_at,
                   "valid": valid})
        })
        .collect();
    Ok(Json(json!({"count": items.len(), "items": items})))
}

pub(super) async fn delete_checkpoints(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let (id, _) = tenant_execution(&state, &tenant, &id).await?;
    match state.db.delete_checkpoints(&tenant, id).await? {
        Some(deleted) => {
            state.metrics.checkpoint_operations.with_label_values(&["delete", "ok"]).inc_by(deleted);
            Ok(Json(json!({"deleted": deleted, "message": "Checkpoints deleted"})))
        }
        None => Err(ApiError::Conflict(format!("execution {id} is running; its checkpoints cannot be deleted"))),
    }
}

pub(super) const STATUSES: [&str; 6] = ["pending", "queued", "running", "completed", "failed", "cancelled"];

pub(super) async fn list_executions(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Query(query): Query<std::collections::HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    if let Some(dag_id) = query.get("dag_id") {
        engine::ids::check_id(dag_id).map_err(|e| ApiError::BadRequest(format!("dag_id {e}")))?;
    }
    let status = query.get("status").cloned();
    if let Some(s) = &status
        && !STATUSES.contains(&s.as_str())
    {
        return Err(ApiError::BadRequest(format!("status must be one of {}", STATUSES.join(", "))));
    }
    let limit = page_limit(&query)?;
    let since = query.get("since").map(|s| parse_since(s)).transpose()?;
    let after = query.get("cursor").map(|c| decode_cursor(c)).transpose()?;
    let filter =
        ExecutionFilter { tenant: tenant.clone(), dag_id: query.get("dag_id").cloned(), status, since, after, limit };
    let rows = state.db.list_executions(&filter).await?;
    let next_cursor = (rows.len() as i64 == limit)
        .then(|| rows.last().map(|r| encode_cursor(r.submitted_at, r.execution_id)))
        .flatten();
    let items: Vec<Value> = rows
        .iter()
        .map(|e| {
            json!({"execution_id": e.execution_id, "dag_id": e.dag_id, "status": e.status, "submitted_at": e.submitted_at,
                   "started_at": e.started_at, "completed_at": e.completed_at, "error": e.error,
                   "total_nodes": e.total_nodes, "completed_nodes": e.completed_nodes, "failed_nodes": e.failed_nodes,
                   "skipped_nodes": e.skipped_nodes, "provenance_chain_hash": e.provenance_chain_hash})
        })
        .collect();
    Ok(Json(json!({"count": items.len(), "items": items, "next_cursor": next_cursor})))
}
