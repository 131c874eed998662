//! The one error type of the HTTP boundary: every error a handler or the authentication layer
//! returns is an [`ApiError`], answered as an RFC 9457 `application/problem+json` document with
//! a stable `type` (`urn:greenlang:orchestrator:problem:<slug>`). A leaf: the API and the
//! authentication layer both use it, and it uses neither.

use axum::Json;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use engine::dag::ValidationReport;
use serde_json::json;

use crate::service::ServiceError;
use crate::store::StoreError;

/// An API error: a status, a stable problem type and a sentence.
#[derive(Debug)]
pub enum ApiError {
    BadRequest(String),
    UnsupportedMediaType,
    Invalid(ValidationReport),
    NotFound(String),
    Conflict(String),
    Unauthorized(String),
    Forbidden(String),
    PreconditionFailed(String),
    Unavailable(String),
    Internal(String),
}

impl ApiError {
    fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        match self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad-request", "The request is malformed"),
            ApiError::UnsupportedMediaType => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported-media-type", "The body must be application/json")
            }
            ApiError::Invalid(_) => (StatusCode::UNPROCESSABLE_ENTITY, "validation-failed", "The DAG is not valid"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not-found", "No such resource"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict", "The request conflicts with the current state"),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized", "Authentication required"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden", "The token lacks a permission"),
            ApiError::PreconditionFailed(_) => {
                (StatusCode::PRECONDITION_FAILED, "precondition-failed", "The resource changed since it was read")
            }
            ApiError::Unavailable(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "service-unavailable", "A dependency is unavailable")
            }
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal", "Internal error"),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(what) => ApiError::Conflict(format!("{what} already exists")),
            e if e.is_unavailable() => ApiError::Unavailable("the database is unavailable".into()),
            e => ApiError::Internal(e.to_string()),
        }
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::BadRequest(message) => ApiError::BadRequest(message),
            ServiceError::Invalid(report) => ApiError::Invalid(report),
            ServiceError::NotFound(message) => ApiError::NotFound(message),
            ServiceError::PreconditionFailed(message) => ApiError::PreconditionFailed(message),
            ServiceError::Unavailable(message) => ApiError::Unavailable(message),
            ServiceError::Conflict(message) => ApiError::Conflict(message),
            ServiceError::Corrupt(message) => ApiError::Internal(message),
            ServiceError::Store(e) => e.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, slug, title) = self.parts();
        let mut body = json!({
            "type": format!("urn:greenlang:orchestrator:problem:{slug}"),
            "title": title,
            "status": status.as_u16(),
        });
        match self {
            ApiError::Invalid(report) => {
                body["detail"] = json!(format!("{} validation error(s)", report.error_count));
                body["errors"] = json!(report.errors);
                body["warnings"] = json!(report.warnings);
            }
            ApiError::Internal(cause) => {
                // Log the cause once, here; the client gets a generic sentence.
                tracing::error!(cause = %cause, "internal error");
                body["detail"] = json!("the server could not complete the request");
            }
            ApiError::BadRequest(d)
            | ApiError::NotFound(d)
            | ApiError::Conflict(d)
            | ApiError::PreconditionFailed(d)
            | ApiError::Unauthorized(d)
            | ApiError::Forbidden(d)
            | ApiError::Unavailable(d) => {
                body["detail"] = json!(d);
            }
            ApiError::UnsupportedMediaType => body["detail"] = json!("send the body as application/json"),
        }
        let mut response = (status, Json(body)).into_response();
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/problem+json"));
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer realm=\"greenlang-orchestrator\", error=\"invalid_token\""),
            );
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
        }
        response
    }
}
