//! The HTTP server loop, with the deadlines `axum::serve` does not offer: a client must send a
//! request's headers within the request timeout (`GL_ORCHESTRATOR_HTTP_REQUEST_TIMEOUT_SECONDS`),
//! and a handler that has not answered within it gets a 503 problem instead of holding the
//! connection for ever. On shutdown the listener closes at once and requests in flight get the
//! same timeout to finish.

use std::future::Future;
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

use crate::problem::ApiError;

/// Serves `app` on `listener` until `shutdown` resolves, then drains for at most `limit`.
pub async fn serve(listener: TcpListener, app: Router, limit: Duration, shutdown: impl Future<Output = ()>) {
    let app =
        app.layer(axum::middleware::from_fn(move |request: Request, next: Next| answer_within(limit, request, next)));
    let mut builder = Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(limit);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: pause rather than spin.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let service = TowerToHyperService::new(app.clone());
        let connection = builder.serve_connection(TokioIo::new(stream), service).into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            // A client that goes away or sends garbage ends its own connection only.
            let _ = connection.await;
        });
    }
    drop(listener);
    if tokio::time::timeout(limit, graceful.shutdown()).await.is_err() {
        tracing::warn!(after = ?limit, "requests still in flight at shutdown were dropped");
    }
}

async fn answer_within(limit: Duration, request: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            ApiError::Unavailable(format!("the request was not answered within {} s", limit.as_secs())).into_response()
        }
    }
}
