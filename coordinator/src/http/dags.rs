//! DAG definitions: create, import, read, update (revision and `If-Match`), delete, validate,
//! export and visualize: each handler reads the request, calls a use case of
//! [`crate::service::dags`] and renders its outcome.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use engine::dag::{DagSpec, Limits};
use serde_json::{Value, json};

use super::answers::{DagDeleted, DagExport, DagGraph, DagListItem, DagSaved, DagView, Page, Validation};
use super::bodies::{ImportRequest, read};
use super::pagination::{decode_text_cursor, encode_text_cursor, page_limit};
use super::{ApiResult, AppState, json_body};
use crate::auth::Tenant;
use crate::problem::ApiError;
use crate::service::dags::{Catalog, DagCache, Saved, compiled};

/// The DAG use cases over this replica's store, cache and limits.
pub(super) fn catalog(state: &AppState) -> Catalog<'_> {
    Catalog {
        db: state.db.as_ref(),
        cache: state.redis.as_deref().map(|r| r as &dyn DagCache),
        limits: Limits { max_nodes: state.settings.max_dag_nodes },
        metrics: &state.metrics,
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

/// A saved DAG as create, import and update answer it, with its revision as the `ETag`.
fn saved(status: StatusCode, saved: &Saved, message: &str) -> Response {
    let warnings = saved.warnings.iter().map(|w| serde_json::to_value(w).unwrap_or_default()).collect();
    let body = DagSaved { dag: dag_json(&saved.row), message: message.into(), warnings };
    with_etag(status, body, saved.row.revision)
}

pub(super) async fn create_dag(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let text = json_body(&headers, &body)?;
    let created = catalog(&state).create(&tenant, DagSpec::from_json(&text)).await?;
    Ok(saved(StatusCode::CREATED, &created, "DAG created"))
}

pub(super) async fn get_dag(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(dag_id): Path<String>,
) -> ApiResult<Response> {
    let row = catalog(&state).get(&tenant, &dag_id).await?;
    Ok(with_etag(StatusCode::OK, DagView { dag: dag_json(&row) }, row.revision))
}

/// A JSON response carrying the DAG revision as its `ETag` (the `If-Match` of the next update).
fn with_etag(status: StatusCode, body: impl serde::Serialize, revision: i64) -> Response {
    let mut response = (status, Json(body)).into_response();
    if let Ok(v) = header::HeaderValue::from_str(&format!("\"{revision}\"")) {
        response.headers_mut().insert(header::ETAG, v);
    }
    response
}

pub(super) async fn list_dags(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Query(query): Query<std::collections::HashMap<String, String>>,
) -> ApiResult<Json<Page<DagListItem>>> {
    let limit = page_limit(&query)?;
    let after = match query.get("cursor") {
        Some(c) => Some(decode_text_cursor(c)?),
        None => None,
    };
    let rows = state.db.list_dags(&tenant, after.as_deref(), limit).await?;
    let next_cursor =
        (rows.len() as i64 == limit).then(|| rows.last().map(|r| encode_text_cursor(&r.dag_id))).flatten();
    Ok(Json(Page::new(rows.iter().map(DagListItem::from).collect(), next_cursor)))
}

pub(super) async fn import_dag(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let text = json_body(&headers, &body)?;
    let ImportRequest { yaml_content } = read(&text, "the import request (yaml_content: the DAG as YAML)")?;
    let created = catalog(&state).create(&tenant, DagSpec::from_yaml(&yaml_content)).await?;
    Ok(saved(StatusCode::CREATED, &created, "DAG imported"))
}

/// `If-Match: "3"` (or `W/"3"`, or `3`) as a revision number.
fn if_match(headers: &HeaderMap) -> ApiResult<Option<i64>> {
    let Some(value) = headers.get(header::IF_MATCH) else { return Ok(None) };
    let text = value.to_str().map_err(|_| ApiError::BadRequest("If-Match must be ASCII".into()))?;
    let bare = text.trim().trim_start_matches("W/").trim_matches('"');
    bare.parse().map(Some).map_err(|_| ApiError::BadRequest("If-Match must carry a revision, as in ETag".into()))
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
    let updated = catalog(&state).update(&tenant, &dag_id, expected, &patch).await?;
    Ok(saved(StatusCode::OK, &updated, "DAG updated"))
}

pub(super) async fn delete_dag(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(dag_id): Path<String>,
) -> ApiResult<Json<DagDeleted>> {
    catalog(&state).delete(&tenant, &dag_id).await?;
    let message = "DAG deleted; past executions keep their pinned definition".into();
    Ok(Json(DagDeleted { dag_id, message }))
}

pub(super) async fn validate_dag(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(dag_id): Path<String>,
) -> ApiResult<Json<Validation>> {
    let report = catalog(&state).validate(&tenant, &dag_id).await?;
    Ok(Json(Validation::from(report)))
}

pub(super) async fn export_dag(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(dag_id): Path<String>,
) -> ApiResult<Json<DagExport>> {
    let row = catalog(&state).get(&tenant, &dag_id).await?;
    let yaml = compiled(&row)?.to_yaml().map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(Json(DagExport { dag_id, dag_hash: row.dag_hash, yaml }))
}

pub(super) async fn visualize_dag(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(dag_id): Path<String>,
) -> ApiResult<Json<DagGraph>> {
    let row = catalog(&state).get(&tenant, &dag_id).await?;
    Ok(Json(DagGraph { mermaid: compiled(&row)?.to_mermaid(), dag_id }))
}
