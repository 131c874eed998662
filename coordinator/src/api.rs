//! The REST API under `/api/v1/orchestrator` (the subset the execution engine needs so far).
//!
//! Every error is an RFC 9457 `application/problem+json` body with a stable `type`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use engine::config::Settings;
use engine::dag::{DagSpec, Limits, ValidationReport, compile};
use engine::provenance;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::auth::Tenant;
use crate::problem::ApiError;
use crate::store::{Created, ExecutionFilter, NewExecution, SharedStore, StoreError};

/// What handlers share.
#[derive(Debug, Clone)]
pub struct AppState {
    pub db: SharedStore,
    pub settings: Arc<Settings>,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub health: Arc<crate::health::Health>,
    pub verifier: crate::auth::Verifier,
    /// The DAG cache: optional (every use falls back to the store), absent in embedded mode.
    pub redis: Option<Arc<crate::redis::Redis>>,
}

const SERVICE: &str = "greenlang-orchestrator";

pub fn router(state: AppState) -> Router {
    let limit = state.settings.max_body_bytes;
    let metrics_state = state.clone();
    let api = Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/dags", post(create_dag).get(list_dags))
        .route("/dags/import", post(import_dag))
        .route("/dags/{dag_id}", get(get_dag).put(update_dag).delete(delete_dag))
        .route("/dags/{dag_id}/validate", post(validate_dag))
        .route("/dags/{dag_id}/export", get(export_dag))
        .route("/dags/{dag_id}/visualize", get(visualize_dag))
        .route("/metrics", get(summary))
        .route("/dags/{dag_id}/execute", post(execute))
        .route("/executions/{execution_id}", get(get_execution))
        .route("/executions/{execution_id}/trace", get(trace))
        .route("/executions/{execution_id}/cancel", post(cancel))
        .route("/executions/{execution_id}/provenance", get(provenance_of))
        .route("/executions/{execution_id}/resume", post(resume))
        .route("/executions", get(list_executions))
        .route("/checkpoints/{execution_id}", get(list_checkpoints).delete(delete_checkpoints))
        .route("/openapi.json", get(openapi))
        .route_layer(axum::middleware::from_fn_with_state(state.verifier.clone(), crate::auth::authenticate))
        .with_state(state);
    Router::new()
        .nest("/api/v1/orchestrator", api)
        .route("/metrics", get(prometheus_text))
        .with_state(metrics_state)
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::map_response(problem_for_framework_errors))
}

type ApiResult<T> = Result<T, ApiError>;

fn json_body(headers: &HeaderMap, body: &Bytes) -> ApiResult<String> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !body.is_empty() && !content_type.starts_with("application/json") {
        return Err(ApiError::UnsupportedMediaType);
    }
    String::from_utf8(body.to_vec()).map_err(|_| ApiError::BadRequest("the body is not UTF-8".into()))
}

fn parse_uuid(id: &str) -> ApiResult<Uuid> {
    Uuid::parse_str(id).map_err(|_| ApiError::NotFound(format!("no execution {id:?}")))
}

async fn prometheus_text(State(state): State<AppState>) -> Response {
    state.metrics.set_pool(state.db.pool_usage());
    state.metrics.set_components(&state.health.components());
    let mut response = state.metrics.render().into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    response
}

/// Counts each validation error by type, then turns the report into a 422.
fn invalid(state: &AppState, report: ValidationReport) -> ApiError {
    count_validation_errors(state, &report);
    ApiError::Invalid(report)
}

fn count_validation_errors(state: &AppState, report: &ValidationReport) {
    for e in &report.errors {
        let kind = serde_json::to_value(e.error_type).ok().and_then(|v| v.as_str().map(str::to_owned));
        state.metrics.dag_validation_errors.with_label_values(&[&kind.unwrap_or_default()]).inc();
    }
}

/// Each dependency's state, every check bounded so the answer comes within 100 ms even when a
/// dependency hangs.
async fn checks(state: &AppState) -> (&'static str, &'static str, &'static str) {
    let bound = std::time::Duration::from_millis(80);
    let redis_url = state.redis.as_ref().map(|_| state.settings.redis_url.expose());
    let (database, redis) = tokio::join!(
        tokio::time::timeout(bound, state.db.ping()),
        tokio::time::timeout(bound, async move {
            match redis_url {
                Some(url) => redis_ping(url).await,
                None => true,
            }
        }),
    );
    let database = if matches!(database, Ok(Ok(()))) { "ok" } else { "unavailable" };
    let queue = if state.health.broker_connected() { "ok" } else { "unavailable" };
    let redis = match (&state.redis, redis) {
        (None, _) => "not_used",
        (Some(_), Ok(true)) => "ok",
        (Some(_), _) => "unavailable",
    };
    (database, queue, redis)
}

/// `PING` over a plain TCP connection to the Redis of `url` (`redis://[user:pass@]host:port/db`).
async fn redis_ping(url: &str) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    let host = host.split('/').next().unwrap_or(host);
    let Ok(mut stream) = tokio::net::TcpStream::connect(host).await else { return false };
    if stream.write_all(b"PING\r\n").await.is_err() {
        return false;
    }
    let mut reply = [0u8; 5];
    stream.read_exact(&mut reply).await.is_ok() && &reply == b"+PONG"
}

async fn health(State(state): State<AppState>) -> Json<Value> {
    let (database, queue, redis) = checks(&state).await;
    let status =
        if [database, queue, redis].iter().all(|c| matches!(*c, "ok" | "not_used")) { "healthy" } else { "degraded" };
    Json(json!({
        "status": status,
        "service": SERVICE,
        "version": env!("CARGO_PKG_VERSION"),
        "checks": {"database": database, "queue": queue, "redis": redis},
    }))
}

/// Ready when PostgreSQL and RabbitMQ answer and no component has stalled (see
/// [`crate::health`]); Redis is optional (the service degrades).
async fn ready(State(state): State<AppState>) -> ApiResult<Json<Value>> {
    let (database, queue, redis) = checks(&state).await;
    let stalled = state.health.stalled();
    state.metrics.set_components(&state.health.components());
    if database != "ok" || queue != "ok" || !stalled.is_empty() {
        let stalled = if stalled.is_empty() { "none".to_owned() } else { stalled.join(", ") };
        return Err(ApiError::Unavailable(format!("database: {database}, queue: {queue}, stalled: {stalled}")));
    }
    Ok(Json(json!({"status": "ready", "checks": {"database": database, "queue": queue, "redis": redis}})))
}

fn dag_json(row: &crate::store::DagRow) -> Value {
    let mut dag = row.definition.clone();
    if let Some(obj) = dag.as_object_mut() {
        obj.insert("dag_hash".into(), json!(row.dag_hash));
        obj.insert("revision".into(), json!(row.revision));
        obj.insert("created_at".into(), json!(row.created_at));
        obj.insert("updated_at".into(), json!(row.updated_at));
    }
    dag
}

async fn create_dag(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let text = json_body(&headers, &body)?;
    let dag = accept_dag(&state, DagSpec::from_json(&text))?;
    store_new(&state, &tenant, dag, "DAG created").await
}

async fn get_dag(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(dag_id): Path<String>,
) -> ApiResult<Response> {
    let row = stored_dag(&state, &tenant, &dag_id).await?;
    Ok(with_etag(StatusCode::OK, json!({"dag": dag_json(&row)}), row.revision))
}

async fn execute(
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
    let text = json_body(&headers, &body)?;
    let request: Value = if text.trim().is_empty() {
        json!({})
    } else {
        serde_json::from_str(&text).map_err(|e| ApiError::BadRequest(format!("invalid JSON: {e}")))?
    };
    let Some(fields) = request.as_object() else {
        return Err(ApiError::BadRequest("the body must be a JSON object".into()));
    };
    if let Some(unknown) = fields.keys().find(|k| !matches!(k.as_str(), "input_data" | "execution_options")) {
        return Err(ApiError::BadRequest(format!("unknown field {unknown:?}")));
    }
    let input = fields.get("input_data").cloned().unwrap_or_else(|| json!({}));
    if !input.is_object() {
        return Err(ApiError::BadRequest("input_data must be a JSON object".into()));
    }
    reject_nul(&request, "the request")?;
    let options = fields.get("execution_options").cloned().unwrap_or_else(|| json!({}));
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
    let input_hash = provenance::hash_value(&input);
    let key = headers.get("idempotency-key").map(|v| v.to_str().map(str::to_owned));
    let key = key.transpose().map_err(|_| ApiError::BadRequest("Idempotency-Key must be visible ASCII".into()))?;
    if key.as_ref().is_some_and(|k| k.is_empty() || k.len() > 200) {
        return Err(ApiError::BadRequest("Idempotency-Key must be 1 to 200 characters".into()));
    }
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

fn execution_json(e: &crate::store::ExecutionRow) -> Value {
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

async fn get_execution(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let id = parse_uuid(&id)?;
    let e = state.db.execution(&tenant, id).await?.ok_or_else(|| ApiError::NotFound(format!("no execution {id}")))?;
    Ok(Json(json!({"execution": execution_json(&e)})))
}

async fn trace(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let id = parse_uuid(&id)?;
    let e = state.db.execution(&tenant, id).await?.ok_or_else(|| ApiError::NotFound(format!("no execution {id}")))?;
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
fn attempt_json(result: Value) -> Value {
    let error = &result["error"];
    json!({
        "attempt": result["attempt"], "kind": result["kind"], "outcome": result["outcome"],
        "error_type": error["error_type"], "error": error["message"], "retryable": result["retryable"],
        "worker_id": result["worker_id"], "started_at": result["started_at"], "completed_at": result["completed_at"],
        "duration_ms": result["duration_ms"], "deliveries": result["deliveries"],
    })
}

async fn cancel(State(state): State<AppState>, Tenant(tenant): Tenant, Path(id): Path<String>) -> ApiResult<Response> {
    let id = parse_uuid(&id)?;
    let e = state.db.execution(&tenant, id).await?.ok_or_else(|| ApiError::NotFound(format!("no execution {id}")))?;
    if !state.db.request_cancel(&tenant, id).await? {
        return Err(ApiError::Conflict(format!("execution {id} already finished as {}", e.status)));
    }
    let body = json!({"execution_id": id, "status": e.status, "message": "Execution cancellation requested"});
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

/// The definition an execution pinned, compiled.
async fn pinned_dag(db: &SharedStore, dag_hash: &str) -> ApiResult<engine::dag::Dag> {
    let definition =
        db.definition(dag_hash).await?.ok_or_else(|| ApiError::Internal("pinned definition missing".into()))?;
    engine::dag::compile_stored(definition, Some(dag_hash)).map_err(ApiError::Internal)
}

async fn provenance_of(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let id = parse_uuid(&id)?;
    let e = state.db.execution(&tenant, id).await?.ok_or_else(|| ApiError::NotFound(format!("no execution {id}")))?;
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

async fn resume(State(state): State<AppState>, Tenant(tenant): Tenant, Path(id): Path<String>) -> ApiResult<Response> {
    let id = parse_uuid(&id)?;
    let e = state.db.execution(&tenant, id).await?.ok_or_else(|| ApiError::NotFound(format!("no execution {id}")))?;
    let rows = state.db.nodes(id).await?;
    let listed = |keep: &dyn Fn(&crate::store::NodeRow) -> bool| -> Vec<String> {
        rows.iter().filter(|r| keep(r)).map(|r| r.node_id.clone()).collect()
    };
    let resumable = match e.status.as_str() {
        "completed" => {
            return Err(ApiError::Conflict(format!("execution {id} already completed")));
        }
        "failed" | "cancelled" => true,
        _ if state.db.lease_live(id).await? => {
            return Err(ApiError::Conflict(format!("execution {id} is running under a live lease")));
        }
        _ => false,
    };
    if !resumable {
        // Interrupted: no live owner. Any coordinator takes it over from its checkpoints.
        let body = json!({
            "execution_id": id, "status": e.status,
            "nodes_skipped": listed(&|r| r.status == "completed"),
            "nodes_remaining": listed(&|r| r.status != "completed"),
            "checkpoints_rejected": [],
            "message": "Execution had no live owner; a coordinator resumes it from its checkpoints",
        });
        return Ok((StatusCode::ACCEPTED, Json(body)).into_response());
    }
    let dag = pinned_dag(&state.db, &e.dag_hash).await?;
    let checkpoints: std::collections::HashMap<String, crate::store::CheckpointRow> =
        state.db.checkpoints(id).await?.into_iter().map(|c| (c.node_id.clone(), c)).collect();
    let trusted = |v: u32| {
        checkpoints.get(dag.node_id(v)).is_some_and(|c| provenance::hash_value(&c.outputs).as_str() == c.output_hash)
    };
    let rejected: Vec<&str> = (0..dag.len() as u32)
        .filter(|&v| rows.iter().any(|r| r.node_id == dag.node_id(v) && r.status == "completed") && !trusted(v))
        .map(|v| dag.node_id(v))
        .collect();
    for node in &rejected {
        tracing::warn!(execution_id = %id, node_id = node, "checkpoint failed verification; the node runs again");
    }
    let verified = checkpoints.len() as u64 - rejected.len().min(checkpoints.len()) as u64;
    state.metrics.checkpoint_operations.with_label_values(&["verify", "ok"]).inc_by(verified);
    state.metrics.checkpoint_operations.with_label_values(&["verify", "failed"]).inc_by(rejected.len() as u64);
    let snapshot =
        crate::scheduler::snapshot(&dag, &e, rows.clone()).map_err(|err| ApiError::Internal(err.to_string()))?;
    let resumed = engine::state::resume(&dag, &snapshot, trusted);
    let names = |list: &[u32]| -> Vec<String> { list.iter().map(|&v| dag.node_id(v).to_owned()).collect() };
    let (skipped, remaining) = (names(&resumed.skipped), names(&resumed.remaining));
    let counts = (i32::try_from(skipped.len()).unwrap_or(i32::MAX), 0, 0);
    if !state.db.resume(&e, &remaining, counts).await? {
        return Err(ApiError::Conflict(format!("execution {id} changed while resuming; try again")));
    }
    let body = json!({
        "execution_id": id, "status": "pending", "nodes_skipped": skipped, "nodes_remaining": remaining,
        "checkpoints_rejected": rejected, "message": "Execution resumed",
    });
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

async fn list_checkpoints(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let id = parse_uuid(&id)?;
    state.db.execution(&tenant, id).await?.ok_or_else(|| ApiError::NotFound(format!("no execution {id}")))?;
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

async fn delete_checkpoints(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let id = parse_uuid(&id)?;
    state.db.execution(&tenant, id).await?.ok_or_else(|| ApiError::NotFound(format!("no execution {id}")))?;
    match state.db.delete_checkpoints(&tenant, id).await? {
        Some(deleted) => {
            state.metrics.checkpoint_operations.with_label_values(&["delete", "ok"]).inc_by(deleted);
            Ok(Json(json!({"deleted": deleted, "message": "Checkpoints deleted"})))
        }
        None => Err(ApiError::Conflict(format!("execution {id} is running; its checkpoints cannot be deleted"))),
    }
}

const STATUSES: [&str; 6] = ["pending", "queued", "running", "completed", "failed", "cancelled"];

async fn list_executions(
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

/// `24h`, `30m`, `7d`, `90s` before now, or an RFC 3339 time.
fn parse_since(text: &str) -> ApiResult<chrono::DateTime<chrono::Utc>> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&chrono::Utc));
    }
    let bad = || {
        ApiError::BadRequest(format!("since must be a duration like 24h, 30m, 7d or an RFC 3339 time, not {text:?}"))
    };
    let unit_at = text.char_indices().last().map_or(0, |(i, _)| i);
    let (number, unit) = text.split_at(unit_at);
    let n: i64 = number.parse().map_err(|_| bad())?;
    let seconds = match unit {
        "s" => n,
        "m" => n.checked_mul(60).ok_or_else(bad)?,
        "h" => n.checked_mul(3600).ok_or_else(bad)?,
        "d" => n.checked_mul(86_400).ok_or_else(bad)?,
        _ => return Err(bad()),
    };
    // Within a century: PostgreSQL cannot hold times much further back.
    let delta =
        chrono::Duration::try_seconds(seconds).filter(|_| (0..=36_500 * 86_400).contains(&seconds)).ok_or_else(bad)?;
    chrono::Utc::now().checked_sub_signed(delta).ok_or_else(bad)
}

/// An opaque cursor: hex of `<microseconds>:<uuid>`.
/// `limit` of a list: 1 to 500, 50 when absent.
fn page_limit(query: &std::collections::HashMap<String, String>) -> ApiResult<i64> {
    match query.get("limit") {
        None => Ok(50),
        Some(l) => l
            .parse::<i64>()
            .ok()
            .filter(|l| (1..=500).contains(l))
            .ok_or_else(|| ApiError::BadRequest("limit must be 1 to 500".into())),
    }
}

/// Cursors are opaque to clients: the hex of a short text only this API writes.
fn encode_text_cursor(text: &str) -> String {
    text.bytes().map(|b| format!("{b:02x}")).collect()
}

fn decode_text(cursor: &str) -> ApiResult<String> {
    let bytes: Option<Vec<u8>> = (0..cursor.len())
        .step_by(2)
        .map(|i| cursor.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect();
    bytes.and_then(|b| String::from_utf8(b).ok()).ok_or_else(bad_cursor)
}

fn bad_cursor() -> ApiError {
    ApiError::BadRequest("cursor is not one this API returned".into())
}

/// The execution list's cursor: `<microseconds>:<uuid>` of the last item.
fn encode_cursor(at: chrono::DateTime<chrono::Utc>, id: Uuid) -> String {
    encode_text_cursor(&format!("{}:{id}", at.timestamp_micros()))
}

fn decode_cursor(cursor: &str) -> ApiResult<(chrono::DateTime<chrono::Utc>, Uuid)> {
    let text = decode_text(cursor)?;
    let (micros, id) = text.split_once(':').ok_or_else(bad_cursor)?;
    let at =
        chrono::DateTime::from_timestamp_micros(micros.parse().map_err(|_| bad_cursor())?).ok_or_else(bad_cursor)?;
    // A cursor this API wrote holds a submission time; anything outside years 1 to 9999 is not one.
    if !(1..=9999).contains(&chrono::Datelike::year(&at)) {
        return Err(bad_cursor());
    }
    Ok((at, Uuid::parse_str(id).map_err(|_| bad_cursor())?))
}

/// Turns the framework's own error responses (unknown route, wrong method, body too large,
/// ...) into problem+json, keeping their headers (`Allow` on a 405).
async fn problem_for_framework_errors(response: Response) -> Response {
    let status = response.status();
    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/problem+json"));
    if !(status.is_client_error() || status.is_server_error()) || is_problem {
        return response;
    }
    let (parts, _) = response.into_parts();
    let (slug, title, detail) = match status {
        StatusCode::NOT_FOUND => ("not-found", "No such resource", "no route matches this path"),
        StatusCode::METHOD_NOT_ALLOWED => ("method-not-allowed", "Method not allowed", "see the Allow header"),
        StatusCode::PAYLOAD_TOO_LARGE => {
            ("payload-too-large", "The body is too large", "the body exceeds GL_ORCHESTRATOR_MAX_BODY_BYTES")
        }
        StatusCode::UNSUPPORTED_MEDIA_TYPE => {
            ("unsupported-media-type", "The body must be application/json", "send the body as application/json")
        }
        s if s.is_server_error() => ("internal", "Internal error", "the server could not complete the request"),
        _ => ("bad-request", "The request is malformed", "the request could not be read"),
    };
    let body = json!({
        "type": format!("urn:greenlang:orchestrator:problem:{slug}"),
        "title": title, "status": status.as_u16(), "detail": detail,
    });
    let mut response = (status, Json(body)).into_response();
    for (name, value) in parts.headers.iter() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            response.headers_mut().insert(name.clone(), value.clone());
        }
    }
    response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/problem+json"));
    response
}

/// PostgreSQL cannot store U+0000 in text or JSONB: refuse it up front, clearly.
fn reject_nul(value: &Value, what: &str) -> ApiResult<()> {
    let mut stack = vec![value];
    while let Some(v) = stack.pop() {
        match v {
            Value::String(s) if s.contains('\0') => {
                return Err(ApiError::BadRequest(format!("{what} contains a NUL character (U+0000)")));
            }
            Value::Array(items) => stack.extend(items),
            Value::Object(map) => {
                if map.keys().any(|k| k.contains('\0')) {
                    return Err(ApiError::BadRequest(format!("{what} contains a NUL character (U+0000)")));
                }
                stack.extend(map.values());
            }
            _ => {}
        }
    }
    Ok(())
}

/// Parses, checks and compiles a DAG document received by the API.
fn accept_dag(state: &AppState, spec: Result<DagSpec, engine::dag::ParseError>) -> ApiResult<engine::dag::Dag> {
    let spec = spec.map_err(|e| ApiError::BadRequest(e.to_string()))?;
    reject_nul(&serde_json::to_value(&spec).unwrap_or_default(), "the DAG")?;
    compile(spec, &Limits { max_nodes: state.settings.max_dag_nodes }).map_err(|r| invalid(state, r))
}

async fn store_new(state: &AppState, tenant: &str, dag: engine::dag::Dag, message: &str) -> ApiResult<Response> {
    let row = state.db.insert_dag(tenant, &dag).await?;
    forget_dag(state, tenant, &row.dag_id).await;
    let body = json!({"dag": dag_json(&row), "message": message, "warnings": dag.warnings()});
    Ok(with_etag(StatusCode::CREATED, body, row.revision))
}

/// A JSON response carrying the DAG revision as its `ETag` (the `If-Match` of the next update).
fn with_etag(status: StatusCode, body: Value, revision: i64) -> Response {
    let mut response = (status, Json(body)).into_response();
    if let Ok(v) = header::HeaderValue::from_str(&format!("\"{revision}\"")) {
        response.headers_mut().insert(header::ETAG, v);
    }
    response
}

fn no_dag(dag_id: &str) -> ApiError {
    ApiError::NotFound(format!("no DAG {dag_id:?}"))
}

/// A stored DAG, from the Redis cache when it has it (and then cached).
async fn stored_dag(state: &AppState, tenant: &str, dag_id: &str) -> ApiResult<crate::store::DagRow> {
    if engine::ids::check_id(dag_id).is_err() {
        return Err(no_dag(dag_id));
    }
    if let Some(redis) = &state.redis
        && let Some(row) = redis.cached_dag(tenant, dag_id).await
    {
        return Ok(row);
    }
    let row = state.db.get_dag(tenant, dag_id).await?.ok_or_else(|| no_dag(dag_id))?;
    if let Some(redis) = &state.redis {
        redis.cache_dag(tenant, &row).await;
    }
    Ok(row)
}

/// Drops a DAG from the cache after it changed.
async fn forget_dag(state: &AppState, tenant: &str, dag_id: &str) {
    if let Some(redis) = &state.redis {
        redis.forget_dag(tenant, dag_id).await;
    }
}

fn compiled(row: &crate::store::DagRow) -> ApiResult<engine::dag::Dag> {
    engine::dag::compile_stored(row.definition.clone(), Some(&row.dag_hash)).map_err(ApiError::Internal)
}

async fn list_dags(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Query(query): Query<std::collections::HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    let limit = page_limit(&query)?;
    let after = match query.get("cursor") {
        Some(c) => Some(decode_text_cursor(c)?),
        None => None,
    };
    let rows = state.db.list_dags(&tenant, after.as_deref(), limit).await?;
    let next_cursor =
        (rows.len() as i64 == limit).then(|| rows.last().map(|r| encode_text_cursor(&r.dag_id))).flatten();
    let items: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({"dag_id": r.dag_id, "name": r.name, "version": r.version, "dag_hash": r.dag_hash,
                   "revision": r.revision, "node_count": r.node_count, "created_at": r.created_at,
                   "updated_at": r.updated_at})
        })
        .collect();
    Ok(Json(json!({"count": items.len(), "items": items, "next_cursor": next_cursor})))
}

/// The DAG list's cursor: the id of the last item.
fn decode_text_cursor(cursor: &str) -> ApiResult<String> {
    let text = decode_text(cursor)?;
    engine::ids::check_id(&text).map_err(|_| bad_cursor())?;
    Ok(text)
}

async fn import_dag(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let text = json_body(&headers, &body)?;
    let request: Value = serde_json::from_str(&text).map_err(|e| ApiError::BadRequest(format!("invalid JSON: {e}")))?;
    let yaml = request
        .get("yaml_content")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::BadRequest("yaml_content must be a string holding the DAG as YAML".into()))?;
    if request.as_object().is_some_and(|o| o.len() != 1) {
        return Err(ApiError::BadRequest("the only field is yaml_content".into()));
    }
    let dag = accept_dag(&state, DagSpec::from_yaml(yaml))?;
    store_new(&state, &tenant, dag, "DAG imported").await
}

/// `If-Match: "3"` (or `W/"3"`, or `3`) as a revision number.
fn if_match(headers: &HeaderMap) -> ApiResult<Option<i64>> {
    let Some(value) = headers.get(header::IF_MATCH) else { return Ok(None) };
    let text = value.to_str().map_err(|_| ApiError::BadRequest("If-Match must be ASCII".into()))?;
    let bare = text.trim().trim_start_matches("W/").trim_matches('"');
    bare.parse().map(Some).map_err(|_| ApiError::BadRequest("If-Match must carry a revision, as in ETag".into()))
}

/// Applies a PUT body to a stored definition: given fields replace, `nodes` merge per node (each
/// node's given fields replace), and `null` deletes a field or a node.
fn merge_update(stored: &Value, patch: &Value, dag_id: &str) -> ApiResult<Value> {
    let (Some(base), Some(changes)) = (stored.as_object(), patch.as_object()) else {
        return Err(ApiError::BadRequest("the body must be a JSON object".into()));
    };
    let mut doc = base.clone();
    for (key, value) in changes {
        match (key.as_str(), value) {
            ("dag_id", v) if v.as_str() != Some(dag_id) => {
                return Err(ApiError::BadRequest("dag_id cannot change; it must match the path".into()));
            }
            ("nodes", Value::Object(nodes)) => {
                let target = doc.entry("nodes").or_insert_with(|| json!({}));
                let Some(target) = target.as_object_mut() else {
                    return Err(ApiError::Internal("stored nodes are not an object".into()));
                };
                for (node_id, change) in nodes {
                    match change {
                        Value::Null => {
                            target.remove(node_id);
                        }
                        Value::Object(fields) => {
                            let node = target.entry(node_id.clone()).or_insert_with(|| json!({}));
                            let Some(node) = node.as_object_mut() else {
                                return Err(ApiError::Internal("a stored node is not an object".into()));
                            };
                            for (field, v) in fields {
                                if v.is_null() {
                                    node.remove(field);
                                } else {
                                    node.insert(field.clone(), v.clone());
                                }
                            }
                        }
                        _ => return Err(ApiError::BadRequest(format!("nodes.{node_id} must be an object or null"))),
                    }
                }
            }
            ("nodes", _) => return Err(ApiError::BadRequest("nodes must be an object".into())),
            (_, Value::Null) => {
                doc.remove(key);
            }
            (_, v) => {
                doc.insert(key.clone(), v.clone());
            }
        }
    }
    Ok(Value::Object(doc))
}

async fn update_dag(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(dag_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let expected = if_match(&headers)?;
    let text = json_body(&headers, &body)?;
    let patch: Value = serde_json::from_str(&text).map_err(|e| ApiError::BadRequest(format!("invalid JSON: {e}")))?;
    // Fresh from the database, never the cache: the revision decides If-Match.
    let row = state.db.get_dag(&tenant, &dag_id).await?.ok_or_else(|| no_dag(&dag_id))?;
    if let Some(expected) = expected
        && expected != row.revision
    {
        return Err(ApiError::PreconditionFailed(format!("revision is {}, not {expected}", row.revision)));
    }
    let merged = merge_update(&row.definition, &patch, &dag_id)?;
    let dag = accept_dag(&state, DagSpec::from_value(merged))?;
    let outcome = state.db.update_dag(&tenant, &dag, Some(row.revision)).await?;
    forget_dag(&state, &tenant, &dag_id).await;
    let updated = match outcome {
        crate::store::UpdateOutcome::Updated(row) => row,
        crate::store::UpdateOutcome::NotFound => return Err(no_dag(&dag_id)),
        crate::store::UpdateOutcome::RevisionMismatch(now) => {
            return Err(ApiError::PreconditionFailed(format!("the DAG changed meanwhile (revision {now})")));
        }
    };
    let body = json!({"dag": dag_json(&updated), "message": "DAG updated", "warnings": dag.warnings()});
    Ok(with_etag(StatusCode::OK, body, updated.revision))
}

async fn delete_dag(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(dag_id): Path<String>,
) -> ApiResult<Json<Value>> {
    if engine::ids::check_id(&dag_id).is_err() || !state.db.delete_dag(&tenant, &dag_id).await? {
        return Err(no_dag(&dag_id));
    }
    forget_dag(&state, &tenant, &dag_id).await;
    Ok(Json(json!({"dag_id": dag_id, "message": "DAG deleted; past executions keep their pinned definition"})))
}

async fn validate_dag(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(dag_id): Path<String>,
) -> ApiResult<Json<Value>> {
    let row = stored_dag(&state, &tenant, &dag_id).await?;
    let spec = DagSpec::from_value(row.definition).map_err(|e| ApiError::Internal(e.to_string()))?;
    let report = match compile(spec, &Limits { max_nodes: state.settings.max_dag_nodes }) {
        Ok(dag) => dag.report(),
        Err(report) => {
            count_validation_errors(&state, &report);
            report
        }
    };
    Ok(Json(json!(report)))
}

async fn export_dag(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(dag_id): Path<String>,
) -> ApiResult<Json<Value>> {
    let row = stored_dag(&state, &tenant, &dag_id).await?;
    let yaml = compiled(&row)?.to_yaml().map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(Json(json!({"dag_id": dag_id, "dag_hash": row.dag_hash, "yaml": yaml})))
}

async fn visualize_dag(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(dag_id): Path<String>,
) -> ApiResult<Json<Value>> {
    let row = stored_dag(&state, &tenant, &dag_id).await?;
    Ok(Json(json!({"dag_id": dag_id, "mermaid": compiled(&row)?.to_mermaid()})))
}

async fn summary(State(state): State<AppState>, Tenant(tenant): Tenant) -> ApiResult<Json<Value>> {
    let mut body = state.db.summary(&tenant).await?;
    body["max_concurrent_executions"] = json!(state.settings.max_concurrent_executions);
    Ok(Json(body))
}

async fn openapi() -> Json<Value> {
    Json(crate::openapi::document())
}
