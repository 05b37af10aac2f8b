//! The agent's one HTTP server: `/healthz`, `/metrics`, the local API under `/api/v1`, and
//! every other path routed to the http triggers.
//!
//! A global body limit (`limits.max_body`) applies to every request; an http trigger's own
//! `max_body` can only be lower. When shutdown begins the server stops accepting connections
//! and requests still waiting for a sync execution are answered 503 (the execution resumes
//! after the restart).
//!
//! Until start-up is complete (`/healthz` 200) http triggers and manual runs answer 503 with
//! `Retry-After: 1`: routes exist as soon as the workflows are loaded, but recovery must see
//! the journal before any new execution starts, or it would resume an execution this process
//! just started (a second driver for one journal).

use std::net::SocketAddr;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, DefaultBodyLimit, Query, Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::daemon::AgentState;
use reactor_core::trigger::{HttpReply, HttpRequest};

pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AgentState,
    max_body: usize,
    stopping: CancellationToken,
) -> std::io::Result<()> {
    let app = router(state, max_body);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(stopping.cancelled_owned())
    .await
}

pub fn router(state: AgentState, max_body: usize) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .nest("/api/v1", crate::api::router())
        .fallback(trigger)
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}

async fn healthz(State(state): State<AgentState>) -> Response {
    let triggers = state.workflows.triggers();
    let waiting = state.waiting_triggers();
    if state.healthy() {
        (
            StatusCode::OK,
            axum::Json(json!({ "status": "ok", "triggers": triggers.len() })),
        )
            .into_response()
    } else {
        let status = if state.stopping.is_cancelled() {
            "stopping"
        } else {
            "starting"
        };
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({ "status": status, "waiting": waiting })),
        )
            .into_response()
    }
}

async fn metrics(State(state): State<AgentState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::metrics::render(&state),
    )
        .into_response()
}

/// Every path that is not the agent's own goes to the http triggers.
async fn trigger(
    State(state): State<AgentState>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    if !state.accepting() {
        return starting();
    }
    let (parts, body) = request.into_parts();
    // The global DefaultBodyLimit applies too; a route's own limit is usually lower. One byte
    // over the route's limit is read so that the routes answer 413 themselves.
    let limit = state
        .workflows
        .routes()
        .body_limit(parts.method.as_str(), parts.uri.path())
        .map_or(usize::MAX, |l| {
            usize::try_from(l.saturating_add(1)).unwrap_or(usize::MAX)
        });
    let body: Bytes = match axum::body::to_bytes(body, limit).await {
        Ok(body) => body,
        Err(_) => {
            return crate::api::problem(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request body too large",
                "the body is larger than the agent's limits.max_body",
            );
        }
    };
    let headers = parts
        .headers
        .iter()
        .filter_map(|(name, value)| {
            value
                .to_str()
                .ok()
                .map(|v| (name.as_str().to_string(), v.to_string()))
        })
        .collect();
    let request = HttpRequest {
        method: parts.method.as_str().to_string(),
        path: parts.uri.path().to_string(),
        query: Query::<Vec<(String, String)>>::try_from_uri(&parts.uri)
            .map(|q| q.0)
            .unwrap_or_default(),
        headers,
        body: body.to_vec(),
        remote: Some(remote),
    };
    // Cancel-safety: dropping `handle` abandons only the wait for a sync reply; the execution
    // is already journaled and resumes after the restart.
    let reply = tokio::select! {
        biased;
        () = state.stopping.cancelled() => HttpReply {
            status: 503,
            headers: vec![
                ("content-type".into(), "application/problem+json".into()),
                ("retry-after".into(), "5".into()),
            ],
            body: json!({
                "type": "about:blank",
                "title": "the agent is stopping",
                "status": 503,
                "detail": "the execution, if started, continues after the agent restarts"
            })
            .to_string()
            .into_bytes(),
        },
        reply = state.workflows.routes().handle(request) => reply,
    };
    into_response(reply)
}

/// 503 for events that arrive before start-up is complete.
pub fn starting() -> Response {
    let mut response = crate::api::problem(
        StatusCode::SERVICE_UNAVAILABLE,
        "the agent is starting",
        "unfinished executions are being recovered; try again shortly",
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

fn into_response(reply: HttpReply) -> Response {
    let mut response = Response::new(Body::from(reply.body));
    *response.status_mut() =
        StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    for (name, value) in reply.headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::try_from(name.as_str()),
            HeaderValue::try_from(value.as_str()),
        ) {
            response.headers_mut().append(name, value);
        }
    }
    response
}
