//! `PUT /api/v1/secrets/{name}` (body `{"value": "…"}`; answers 201 or 204, never the value),
//! `GET /api/v1/secrets` (names and times only), `DELETE /api/v1/secrets/{name}`. Admin only.
//!
//! The body is parsed here rather than by axum's `Json` extractor: its rejections quote
//! what they could not read, and a malformed body holding a secret must not come back in the
//! error. A change reaches the runtime before the response is sent.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, put};
use serde_json::{Value, json};

use super::{SecretError, SecretStore};
use crate::api::problem::{ApiError, ApiResult};
use crate::auth::Role;
use crate::server::{HubState, RouteSpec};

/// The secrets routes, over `store`.
pub fn routes(store: SecretStore) -> Vec<RouteSpec> {
    let (s1, s2, s3) = (store.clone(), store.clone(), store);
    vec![
        RouteSpec::new(
            Method::GET,
            "/api/v1/secrets",
            Role::Admin,
            "List secret names (never values)",
            get(move || list(s1.clone())),
        ),
        RouteSpec::new(
            Method::PUT,
            "/api/v1/secrets/{name}",
            Role::Admin,
            "Create or replace a secret (body: {\"value\": \"…\"}; write-only)",
            put(
                move |state: State<HubState>, name: Path<String>, body: Bytes| {
                    set(s2.clone(), state, name, body)
                },
            ),
        ),
        RouteSpec::new(
            Method::DELETE,
            "/api/v1/secrets/{name}",
            Role::Admin,
            "Delete a secret",
            delete(move |state: State<HubState>, name: Path<String>| {
                remove(s3.clone(), state, name)
            }),
        ),
    ]
}

fn problem(error: SecretError) -> ApiError {
    match error {
        SecretError::BadName(_) | SecretError::Empty(_) => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid secret",
            &error.to_string(),
        ),
        SecretError::TooLarge { .. } => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "secret too large",
            &error.to_string(),
        ),
        SecretError::TooMany => ApiError::conflict("too many secrets", &error.to_string()),
        other => ApiError::internal(other),
    }
}

async fn list(store: SecretStore) -> ApiResult<Response> {
    let secrets = store.list().await.map_err(problem)?;
    Ok(axum::Json(json!({ "secrets": secrets })).into_response())
}

async fn set(
    store: SecretStore,
    State(state): State<HubState>,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    super::check_name(&name).map_err(problem)?;
    let value = match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(mut map)) if map.len() == 1 => match map.remove("value") {
            Some(Value::String(value)) => value,
            _ => return Err(bad_body()),
        },
        _ => return Err(bad_body()),
    };
    let existed = store.set(&name, &value).await.map_err(problem)?;
    drop(value);
    store
        .sync_runtime(&state.runtime)
        .await
        .map_err(ApiError::internal)?;
    tracing::info!(secret = %name, replaced = existed, "secret stored");
    Ok(if existed {
        StatusCode::NO_CONTENT.into_response()
    } else {
        (StatusCode::CREATED, axum::Json(json!({ "name": name }))).into_response()
    })
}

fn bad_body() -> ApiError {
    ApiError::bad_request(
        "invalid body",
        "send a JSON object with one key: {\"value\": \"the secret as a string\"}",
    )
}

async fn remove(
    store: SecretStore,
    State(state): State<HubState>,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    if !store.delete(&name).await.map_err(problem)? {
        return Err(ApiError::not_found(
            "no such secret",
            &format!("there is no secret named {name:?}"),
        ));
    }
    store
        .sync_runtime(&state.runtime)
        .await
        .map_err(ApiError::internal)?;
    tracing::info!(secret = %name, "secret deleted");
    Ok(StatusCode::NO_CONTENT.into_response())
}
