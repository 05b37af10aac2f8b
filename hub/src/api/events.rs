//! `POST /api/v1/events`: emit an event into the hub, as an `emit` step would — it starts
//! the workflows whose `event` triggers match and reaches executions waiting in a `wait`.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use reactor_core::Value;
use reactor_core::engine::Event;
use serde::Deserialize;
use serde_json::json;

use super::problem::{ApiError, ApiResult};
use crate::server::HubState;

/// Longest event type or source accepted.
const MAX_NAME: usize = 256;

/// The request body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EmitRequest {
    #[serde(rename = "type")]
    event_type: String,
    source: Option<String>,
    #[serde(default)]
    data: Value,
}

/// `POST /api/v1/events` — body `{"type": "...", "source": "...", "data": {...}}`;
/// 202 `{"event": id, "started": N}` with the number of workflows started.
pub async fn emit(State(state): State<HubState>, body: Bytes) -> ApiResult<Response> {
    if !state.accepting() {
        return Err(super::executions::starting());
    }
    let request: EmitRequest = serde_json::from_slice(&body).map_err(|error| {
        ApiError::bad_request(
            "bad event",
            &format!("expected {{\"type\": \"...\", \"source\": \"...\", \"data\": ...}}: {error}"),
        )
    })?;
    let source = request
        .source
        .unwrap_or_else(|| "reactor:hub:api".to_string());
    if request.event_type.trim().is_empty()
        || request.event_type.len() > MAX_NAME
        || source.len() > MAX_NAME
    {
        return Err(ApiError::bad_request(
            "bad event",
            &format!("type must be 1 to {MAX_NAME} characters, source at most {MAX_NAME}"),
        ));
    }
    let event = Event::new(&request.event_type, &source, request.data);
    let started = state
        .workflows
        .events()
        .route(&event)
        .await
        .map_err(|message| {
            tracing::warn!(event = %event.id, %message, "routing an API event failed");
            ApiError::unavailable(
                "the event was not delivered to every workflow",
                "some matching workflows could not start; try again",
                1,
            )
        })?;
    state.workflows.runtime().deliver(&event).await;
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(json!({ "event": event.id, "started": started })),
    )
        .into_response())
}
