//! The REST API under `/api/v1/orchestrator`: the HTTP adapter. `mod.rs` holds the router, the
//! state the handlers share and the helpers every resource uses; one file per resource
//! ([`dags`], [`executions`]), the probes and metrics ([`probes`]) and cursor pagination
//! ([`pagination`]). Every error is an RFC 9457 `application/problem+json` body with a stable
//! `type` ([`crate::problem`]); the routes' scopes and answers are in [`crate::endpoints`].

mod answers;
mod bodies;
mod dags;
mod executions;
mod openapi;
mod pagination;
mod probes;
mod reports;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use engine::config::Settings;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::problem::ApiError;
use crate::store::SharedStore;

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
        .route("/health", get(probes::health))
        .route("/ready", get(probes::ready))
        .route("/dags", post(dags::create_dag).get(dags::list_dags))
        .route("/dags/import", post(dags::import_dag))
        .route("/dags/{dag_id}", get(dags::get_dag).put(dags::update_dag).delete(dags::delete_dag))
        .route("/dags/{dag_id}/validate", post(dags::validate_dag))
        .route("/dags/{dag_id}/export", get(dags::export_dag))
        .route("/dags/{dag_id}/visualize", get(dags::visualize_dag))
        .route("/metrics", get(probes::summary))
        .route("/dags/{dag_id}/execute", post(executions::execute))
        .route("/executions/{execution_id}", get(executions::get_execution))
        .route("/executions/{execution_id}/trace", get(executions::trace))
        .route("/executions/{execution_id}/cancel", post(executions::cancel))
        .route("/executions/{execution_id}/provenance", get(executions::provenance_of))
        .route("/executions/{execution_id}/resume", post(executions::resume))
        .route("/executions", get(executions::list_executions))
        .route("/checkpoints/{execution_id}", get(executions::list_checkpoints).delete(executions::delete_checkpoints))
        .route("/openapi.json", get(openapi))
        .route_layer(axum::middleware::from_fn_with_state(state.verifier.clone(), crate::auth::authenticate))
        .with_state(state);
    Router::new()
        .nest("/api/v1/orchestrator", api)
        .route("/metrics", get(probes::prometheus_text))
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

async fn openapi() -> Json<Value> {
    Json(openapi::document())
}
