//! Probes and figures: `/health`, `/ready` (dependencies and stalled components), the JSON
//! summary and the Prometheus text.

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{ApiResult, AppState, SERVICE};
use crate::auth::Tenant;
use crate::problem::ApiError;

pub(super) async fn prometheus_text(State(state): State<AppState>) -> Response {
    state.metrics.set_pool(state.db.pool_usage());
    state.metrics.set_components(&state.health.components());
    let mut response = state.metrics.render().into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    response
}

/// Each dependency's state, every check bounded so the answer comes within 100 ms even when a
/// dependency hangs.
pub(super) async fn checks(state: &AppState) -> (&'static str, &'static str, &'static str) {
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
pub(super) async fn redis_ping(url: &str) -> bool {
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

pub(super) async fn health(State(state): State<AppState>) -> Json<Value> {
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
pub(super) async fn ready(State(state): State<AppState>) -> ApiResult<Json<Value>> {
    let (database, queue, redis) = checks(&state).await;
    let stalled = state.health.stalled();
    state.metrics.set_components(&state.health.components());
    if database != "ok" || queue != "ok" || !stalled.is_empty() {
        let stalled = if stalled.is_empty() { "none".to_owned() } else { stalled.join(", ") };
        return Err(ApiError::Unavailable(format!("database: {database}, queue: {queue}, stalled: {stalled}")));
    }
    Ok(Json(json!({"status": "ready", "checks": {"database": database, "queue": queue, "redis": redis}})))
}

pub(super) async fn summary(State(state): State<AppState>, Tenant(tenant): Tenant) -> ApiResult<Json<Value>> {
    let mut body = state.db.summary(&tenant).await?;
    body["max_concurrent_executions"] = json!(state.settings.max_concurrent_executions);
    Ok(Json(body))
}
