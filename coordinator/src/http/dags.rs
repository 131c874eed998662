//! DAG definitions: create, import, read, update (revision and `If-Match`), delete, validate,
//! export and visualize; the DAG cache is consulted first and forgotten on change.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use engine::dag::{DagSpec, Limits, ValidationReport, compile};
use serde_json::{Value, json};

use super::bodies::{ImportRequest, read};
use super::pagination::{decode_text_cursor, encode_text_cursor, page_limit};
use super::{ApiResult, AppState, json_body, reject_nul};
use crate::auth::Tenant;
use crate::problem::ApiError;

/// Counts each validation error by type, then turns the report into a 422.
pub(super) fn invalid(state: &AppState, report: ValidationReport) -> ApiError {
    count_validation_errors(state, &report);
    ApiError::Invalid(report)
}

pub(super) fn count_validation_errors(state: &AppState, report: &ValidationReport) {
    for e in &report.errors {
        let kind = serde_json::to_value(e.error_type).ok().and_then(|v| v.as_str().map(str::to_owned));
        state.metrics.dag_validation_errors.with_label_values(&[&kind.unwrap_or_default()]).inc();
    }
}

pub(super) fn dag_json(row: &crate::store::DagRow) -> Value {
    let mut dag = row.definition.clone();
    if let Some(obj) = dag.as_object_mut() {
        obj.insert("dag_hash".into(), json!(row.dag_hash));
        obj.insert("revision".into(), json!(row.revision));
        obj.insert("created_at".into(), json!(row.created_at));
        obj.insert("updated_at".into(), json!(row.updated_at));
    }
    dag
}

pub(super) async fn create_dag(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let text = json_body(&headers, &body)?;
    let dag = accept_dag(&state, DagSpec::from_json(&text))?;
    store_new(&state, &tenant, dag, "DAG created").await
}

pub(super) async fn get_dag(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(dag_id): Path<String>,
) -> ApiResult<Response> {
    let row = stored_dag(&state, &tenant, &dag_id).await?;
    Ok(with_etag(StatusCode::OK, json!({"dag": dag_json(&row)}), row.revision))
}

/// Parses, checks and compiles a DAG document received by the API.
pub(super) fn accept_dag(
    state: &AppState,
    spec: Result<DagSpec, engine::dag::ParseError>,
) -> ApiResult<engine::dag::Dag> {
    let spec = spec.map_err(|e| ApiError::BadRequest(e.to_string()))?;
    reject_nul(&serde_json::to_value(&spec).unwrap_or_default(), "the DAG")?;
    compile(spec, &Limits { max_nodes: state.settings.max_dag_nodes }).map_err(|r| invalid(state, r))
}

pub(super) async fn store_new(
    state: &AppState,
    tenant: &str,
    dag: engine::dag::Dag,
    message: &str,
) -> ApiResult<Response> {
    let row = state.db.insert_dag(tenant, &dag).await?;
    forget_dag(state, tenant, &row.dag_id).await;
    let body = json!({"dag": dag_json(&row), "message": message, "warnings": dag.warnings()});
    Ok(with_etag(StatusCode::CREATED, body, row.revision))
}

/// A JSON response carrying the DAG revision as its `ETag` (the `If-Match` of the next update).
pub(super) fn with_etag(status: StatusCode, body: Value, revision: i64) -> Response {
    let mut response = (status, Json(body)).into_response();
    if let Ok(v) = header::HeaderValue::from_str(&format!("\"{revision}\"")) {
        response.headers_mut().insert(header::ETAG, v);
    }
    response
}

pub(super) fn no_dag(dag_id: &str) -> ApiError {
    ApiError::NotFound(format!("no DAG {dag_id:?}"))
}

/// A stored DAG, from the Redis cache when it has it (and then cached).
pub(super) async fn stored_dag(state: &AppState, tenant: &str, dag_id: &str) -> ApiResult<crate::store::DagRow> {
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
pub(super) async fn forget_dag(state: &AppState, tenant: &str, dag_id: &str) {
    if let Some(redis) = &state.redis {
        redis.forget_dag(tenant, dag_id).await;
    }
}

pub(super) fn compiled(row: &crate::store::DagRow) -> ApiResult<engine::dag::Dag> {
    engine::dag::compile_stored(row.definition.clone(), Some(&row.dag_hash)).map_err(ApiError::Internal)
}

pub(super) async fn list_dags(
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

pub(super) async fn import_dag(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let text = json_body(&headers, &body)?;
    let ImportRequest { yaml_content } = read(&text, "the import request (yaml_content: the DAG as YAML)")?;
    let dag = accept_dag(&state, DagSpec::from_yaml(&yaml_content))?;
    store_new(&state, &tenant, dag, "DAG imported").await
}

/// `If-Match: "3"` (or `W/"3"`, or `3`) as a revision number.
pub(super) fn if_match(headers: &HeaderMap) -> ApiResult<Option<i64>> {
    let Some(value) = headers.get(header::IF_MATCH) else { return Ok(None) };
    let text = value.to_str().map_err(|_| ApiError::BadRequest("If-Match must be ASCII".into()))?;
    let bare = text.trim().trim_start_matches("W/").trim_matches('"');
    bare.parse().map(Some).map_err(|_| ApiError::BadRequest("If-Match must carry a revision, as in ETag".into()))
}

/// Applies a PUT body to a stored definition: given fields replace, `nodes` merge per node (each
/// node's given fields replace), and `null` deletes a field or a node.
pub(super) fn merge_update(stored: &Value, patch: &Value, dag_id: &str) -> ApiResult<Value> {
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

pub(super) async fn update_dag(
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

pub(super) async fn delete_dag(
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

pub(super) async fn validate_dag(
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

pub(super) async fn export_dag(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(dag_id): Path<String>,
) -> ApiResult<Json<Value>> {
    let row = stored_dag(&state, &tenant, &dag_id).await?;
    let yaml = compiled(&row)?.to_yaml().map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(Json(json!({"dag_id": dag_id, "dag_hash": row.dag_hash, "yaml": yaml})))
}

pub(super) async fn visualize_dag(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(dag_id): Path<String>,
) -> ApiResult<Json<Value>> {
    let row = stored_dag(&state, &tenant, &dag_id).await?;
    Ok(Json(json!({"dag_id": dag_id, "mermaid": compiled(&row)?.to_mermaid()})))
}
