//! `/api/v1/tokens` (admin): create, list and revoke API tokens. A token's secret is in the
//! creation response only.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::problem::{ApiError, ApiResult};
use crate::auth::Role;
use crate::db::tokens;
use crate::server::HubState;

/// Longest token name.
const MAX_NAME: usize = 128;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateRequest {
    role: Role,
    name: Option<String>,
}

/// `GET /api/v1/tokens`
pub async fn list(State(state): State<HubState>) -> ApiResult<Response> {
    let list: Vec<_> = tokens::list(&state.db)
        .await?
        .into_iter()
        .map(|t| {
            json!({
                "id": t.id,
                "role": t.role,
                "name": t.name,
                "created_at": t.created_at.to_rfc3339(),
                "revoked_at": t.revoked_at.map(|at| at.to_rfc3339()),
            })
        })
        .collect();
    Ok(axum::Json(json!({ "tokens": list })).into_response())
}

/// `POST /api/v1/tokens` — body `{"role": "viewer", "name": "ci"}`; 201 with the token.
pub async fn create(State(state): State<HubState>, body: Bytes) -> ApiResult<Response> {
    let request: CreateRequest = serde_json::from_slice(&body).map_err(|error| {
        ApiError::bad_request(
            "bad token request",
            &format!("expected {{\"role\": \"admin|editor|viewer\", \"name\": \"...\"}}: {error}"),
        )
    })?;
    if request.name.as_ref().is_some_and(|n| n.len() > MAX_NAME) {
        return Err(ApiError::bad_request(
            "bad token request",
            &format!("name is at most {MAX_NAME} characters"),
        ));
    }
    let (id, token) = tokens::create(&state.db, request.role, request.name.as_deref())
        .await
        .map_err(ApiError::internal)?;
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({ "id": id, "role": request.role, "token": token.secret })),
    )
        .into_response())
}

/// `DELETE /api/v1/tokens/{id}` — 204; the token stops working at once on this hub (other
/// hubs sharing the database within their cache time, a few seconds).
pub async fn revoke(State(state): State<HubState>, Path(id): Path<String>) -> ApiResult<Response> {
    if !tokens::revoke(&state.db, &id).await? {
        return Err(ApiError::not_found(
            "unknown token",
            &format!("no live token with id {id:?}"),
        ));
    }
    state.tokens.clear();
    Ok(StatusCode::NO_CONTENT.into_response())
}
