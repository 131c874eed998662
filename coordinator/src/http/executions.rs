//! Executions: submit (idempotency keys), read, trace, cancel, resume, provenance, checkpoints
//! and the filtered, paginated list.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use engine::provenance;
use serde_json::Value;
use uuid::Uuid;

use super::answers::{
    CancelRequested, Checkpoint, CheckpointList, CheckpointsDeleted, ExecutionAccepted, ExecutionSummary,
    ExecutionView, Page,
};
use super::bodies::{ExecuteRequest, read};
use super::dags::catalog;
use super::pagination::{decode_cursor, encode_cursor, page_limit, parse_since};
use super::reports::{NodeTrace, ProvenanceReport, Trace};
use super::{ApiResult, AppState, json_body, parse_uuid};
use crate::auth::Tenant;
use crate::problem::ApiError;
use crate::service::executions::{self as service, Intake, Submission};
use crate::service::reject_nul;
use crate::store::{ExecutionFilter, ExecutionRow, from_text, text};
use engine::state::ExecutionStatus;

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
    let intake = if state.settings.accept_new_executions { Intake::Open } else { Intake::Closed };
    // Refused before the body is read, as a load shedder would.
    service::check_intake(intake)?;
    let submission = submission(&headers, &body)?;
    let accepted = service::execute(&catalog(&state), state.db.as_ref(), intake, &tenant, &dag_id, &submission).await?;
    let message = if accepted.already_accepted {
        "Execution already accepted for this Idempotency-Key"
    } else {
        "Execution accepted"
    };
    let body = ExecutionAccepted {
        execution_id: accepted.execution_id,
        dag_id,
        status: "pending".into(),
        message: message.into(),
    };
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

/// The tenant's execution `id` (a UUID in the path), or 404: another tenant's is not found either.
async fn tenant_execution(state: &AppState, tenant: &str, id: &str) -> ApiResult<(Uuid, ExecutionRow)> {
    let id = parse_uuid(id)?;
    Ok((id, service::tenant_execution(state.db.as_ref(), tenant, id).await?))
}

pub(super) async fn get_execution(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> ApiResult<Json<ExecutionView>> {
    let (_, e) = tenant_execution(&state, &tenant, &id).await?;
    Ok(Json(ExecutionView { execution: (&e).into() }))
}

pub(super) async fn trace(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> ApiResult<Json<Trace>> {
    let (id, e) = tenant_execution(&state, &tenant, &id).await?;
    let mut attempts = state.db.attempts(id).await?;
    let nodes = state.db.nodes(id).await?.into_iter().map(|n| {
        let history = attempts.remove(&n.node_id).unwrap_or_default();
        NodeTrace::of(n, history)
    });
    Ok(Json(Trace { execution_id: id, status: text(&e.status), nodes: nodes.collect() }))
}

pub(super) async fn cancel(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let (id, e) = tenant_execution(&state, &tenant, &id).await?;
    service::cancel(state.db.as_ref(), &tenant, &e).await?;
    let body = CancelRequested {
        execution_id: id,
        status: text(&e.status),
        message: "Execution cancellation requested".into(),
    };
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

pub(super) async fn provenance_of(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> ApiResult<Json<ProvenanceReport>> {
    let (id, e) = tenant_execution(&state, &tenant, &id).await?;
    let dag = crate::service::pinned_dag(state.db.as_ref(), &e.dag_hash).await?;
    let records: Vec<provenance::Record> = state.db.records(id).await?.into_iter().map(|(_, r)| r).collect();
    let stored = e.provenance_chain_hash.as_deref().and_then(|h| engine::canonical::ContentHash::parse(h).ok());
    let verdict = provenance::verify(&dag, &id.to_string(), &e.input_data, &records, stored.as_ref());
    let result = if verdict.chain_valid { "valid" } else { "invalid" };
    state.metrics.provenance_verifications.with_label_values(&[result]).inc();
    if !verdict.chain_valid {
        tracing::error!(execution_id = %id, problems = ?verdict.problems, "provenance chain verification failed");
    }
    Ok(Json(ProvenanceReport::of(&e, &dag, records, verdict)))
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
) -> ApiResult<Json<CheckpointList>> {
    let (id, _) = tenant_execution(&state, &tenant, &id).await?;
    let items: Vec<Checkpoint> = state.db.checkpoints(id).await?.into_iter().map(|c| Checkpoint::of(id, c)).collect();
    Ok(Json(CheckpointList { count: items.len(), items }))
}

pub(super) async fn delete_checkpoints(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> ApiResult<Json<CheckpointsDeleted>> {
    let (id, _) = tenant_execution(&state, &tenant, &id).await?;
    let deleted = service::delete_checkpoints(state.db.as_ref(), &state.metrics, &tenant, id).await?;
    Ok(Json(CheckpointsDeleted { deleted, message: "Checkpoints deleted".into() }))
}

pub(super) const STATUSES: [&str; 6] = ["pending", "queued", "running", "completed", "failed", "cancelled"];

pub(super) async fn list_executions(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Query(query): Query<std::collections::HashMap<String, String>>,
) -> ApiResult<Json<Page<ExecutionSummary>>> {
    if let Some(dag_id) = query.get("dag_id") {
        engine::ids::check_id(dag_id).map_err(|e| ApiError::BadRequest(format!("dag_id {e}")))?;
    }
    let unknown = || ApiError::BadRequest(format!("status must be one of {}", STATUSES.join(", ")));
    let status = query.get("status").map(|s| from_text::<ExecutionStatus>(s).ok_or_else(unknown)).transpose()?;
    let limit = page_limit(&query)?;
    let since = query.get("since").map(|s| parse_since(s)).transpose()?;
    let after = query.get("cursor").map(|c| decode_cursor(c)).transpose()?;
    let filter =
        ExecutionFilter { tenant: tenant.clone(), dag_id: query.get("dag_id").cloned(), status, since, after, limit };
    let rows = state.db.list_executions(&filter).await?;
    let next_cursor = (rows.len() as i64 == limit)
        .then(|| rows.last().map(|r| encode_cursor(r.submitted_at, r.execution_id)))
        .flatten();
    Ok(Json(Page::new(rows.iter().map(ExecutionSummary::from).collect(), next_cursor)))
}
