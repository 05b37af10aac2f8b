//! `POST /api/v1/alerts` (editor; body: a rule), `GET /api/v1/alerts` (viewer; rules with
//! their current state), `DELETE /api/v1/alerts/{id}` (editor),
//! `GET /api/v1/alerts/{id}/history?limit=` (viewer; newest first).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use serde::Deserialize;
use serde_json::json;

use super::rule::{AlertState, RuleRequest};
use super::{AlertError, Alerts};
use crate::api::problem::{ApiError, ApiResult};
use crate::auth::Role;
use crate::server::RouteSpec;

/// The alert routes.
pub fn routes(alerts: Arc<Alerts>) -> Vec<RouteSpec> {
    let (a1, a2, a3, a4) = (alerts.clone(), alerts.clone(), alerts.clone(), alerts);
    vec![
        RouteSpec::new(
            Method::POST,
            "/api/v1/alerts",
            Role::Editor,
            "Create an alert rule (metric, labels, comparator, threshold, for)",
            post(move |body: Bytes| create(a1.clone(), body)),
        ),
        RouteSpec::new(
            Method::GET,
            "/api/v1/alerts",
            Role::Viewer,
            "List alert rules with their state",
            get(move || list(a2.clone())),
        ),
        RouteSpec::new(
            Method::DELETE,
            "/api/v1/alerts/{id}",
            Role::Editor,
            "Delete an alert rule and its history",
            delete(move |id: Path<String>| remove(a3.clone(), id)),
        ),
        RouteSpec::new(
            Method::GET,
            "/api/v1/alerts/{id}/history",
            Role::Viewer,
            "An alert rule's firing and resolved transitions, newest first",
            get(move |id: Path<String>, query: Query<HistoryQuery>| history(a4.clone(), id, query)),
        ),
    ]
}

fn problem(error: AlertError) -> ApiError {
    match error {
        AlertError::Invalid(_) => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid alert rule",
            &error.to_string(),
        ),
        AlertError::TooMany => ApiError::conflict("too many alert rules", &error.to_string()),
        other => ApiError::internal(other),
    }
}

fn state_json(state: AlertState) -> serde_json::Value {
    match state {
        AlertState::Inactive => json!({ "state": "inactive" }),
        AlertState::Pending { since } | AlertState::Firing { since } => json!({
            "state": state.as_str(),
            "since": reactor_core::engine::Timestamp(since).to_rfc3339(),
        }),
    }
}

async fn create(alerts: Arc<Alerts>, body: Bytes) -> ApiResult<Response> {
    let request: RuleRequest = serde_json::from_slice(&body).map_err(|error| {
        ApiError::bad_request(
            "invalid alert rule",
            &format!(
                "expected {{\"metric\": \"…\", \"labels\": {{…}}, \"comparator\": \">\", \"threshold\": 1, \"for\": \"30s\"}}: {error}"
            ),
        )
    })?;
    let rule = alerts.create(request).await.map_err(problem)?;
    let mut body = rule.to_json();
    body["status"] = state_json(AlertState::Inactive);
    Ok((StatusCode::CREATED, axum::Json(body)).into_response())
}

async fn list(alerts: Arc<Alerts>) -> ApiResult<Response> {
    let rules = alerts.rules().await.map_err(problem)?;
    let list: Vec<_> = rules
        .iter()
        .map(|rule| {
            let mut value = rule.to_json();
            value["status"] = state_json(alerts.state(&rule.id));
            value
        })
        .collect();
    Ok(axum::Json(json!({ "alerts": list })).into_response())
}

async fn remove(alerts: Arc<Alerts>, Path(id): Path<String>) -> ApiResult<Response> {
    if alerts.delete(&id).await.map_err(problem)? {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(not_found(&id))
    }
}

fn not_found(id: &str) -> ApiError {
    ApiError::not_found(
        "no such alert rule",
        &format!(
            "there is no alert rule with id {:?}",
            id.chars().take(64).collect::<String>()
        ),
    )
}

/// `?limit=` of the history route.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryQuery {
    limit: Option<i64>,
}

async fn history(
    alerts: Arc<Alerts>,
    Path(id): Path<String>,
    Query(query): Query<HistoryQuery>,
) -> ApiResult<Response> {
    let limit = query.limit.unwrap_or(100);
    match alerts.history(&id, limit).await.map_err(problem)? {
        Some(entries) => Ok(axum::Json(json!({ "id": id, "history": entries })).into_response()),
        None => Err(not_found(&id)),
    }
}
