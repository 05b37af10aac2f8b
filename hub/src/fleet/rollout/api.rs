//! Rollout routes: `POST /api/v1/rollouts` (editor), `GET /api/v1/rollouts`,
//! `GET /api/v1/rollouts/{id}` (viewer), `POST /api/v1/rollouts/{id}/abort` (editor).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use reactor_core::sync::bundle::BundleSigner;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::Notify;

use super::store::{self, NewRollout};
use super::{Gate, Strategy, state};
use crate::api::problem::{ApiError, ApiResult, INVALID_WORKFLOW};
use crate::auth::{Principal, Role};
use crate::fleet::bundles::{self, BundleBuildError, Purpose};
use crate::fleet::registry::{self, Labels};
use crate::server::{HubState, RouteSpec};

/// What the routes need besides [`HubState`].
#[derive(Debug, Clone)]
pub struct RolloutApi {
    pub signer: Arc<BundleSigner>,
    /// Wakes this hub's driver (it steps only when this hub leads).
    pub wake: Arc<Notify>,
}

/// `POST /api/v1/rollouts` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateRequest {
    /// Workflow YAML texts (the bundle).
    workflows: Vec<String>,
    /// Labels a device must carry (all of them); also the bundle's signed target.
    #[serde(default)]
    selector: BTreeMap<String, String>,
    #[serde(default)]
    strategy: Strategy,
    #[serde(default)]
    gate: Gate,
    #[serde(default = "yes")]
    auto_rollback: bool,
    /// How long devices may accept the bundle (`30d` by default).
    #[serde(default)]
    expires_in: Option<String>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AbortRequest {
    /// Roll back the devices that took the bundle (default: the rollout's `auto_rollback`).
    #[serde(default)]
    rollback: Option<bool>,
}

pub fn routes(api: RolloutApi) -> Vec<RouteSpec> {
    let (create_api, abort_api) = (api.clone(), api);
    vec![
        RouteSpec::new(
            Method::POST,
            "/api/v1/rollouts",
            Role::Editor,
            "Start a rollout: {\"workflows\": [yaml…], \"selector\": {label: value}, \"strategy\": {\"canary\", \"steps\"}, \"gate\": {\"max_failure_rate\", \"min_executions\", \"observe\", \"stage_timeout\"}, \"auto_rollback\", \"expires_in\"}",
            post(
                move |state: State<HubState>,
                      principal: Option<Extension<Principal>>,
                      body: Bytes| {
                    let api = create_api.clone();
                    async move { create(api, state, principal, body).await }
                },
            ),
        ),
        RouteSpec::new(
            Method::GET,
            "/api/v1/rollouts",
            Role::Viewer,
            "Rollouts, newest first, with device counts per state",
            get(list),
        ),
        RouteSpec::new(
            Method::GET,
            "/api/v1/rollouts/{id}",
            Role::Viewer,
            "A rollout with each device's state (pending, sent, applied, failed_health, timed_out, rolling_back, rolled_back, skipped)",
            get(show),
        ),
        RouteSpec::new(
            Method::POST,
            "/api/v1/rollouts/{id}/abort",
            Role::Editor,
            "Stop a running rollout; {\"rollback\": true} rolls back the devices that took it",
            post(
                move |state: State<HubState>, id: Path<String>, body: Bytes| {
                    let api = abort_api.clone();
                    async move { abort(api, state, id, body).await }
                },
            ),
        ),
    ]
}

fn unprocessable(title: &str, detail: &str) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, title, detail)
}

async fn create(
    api: RolloutApi,
    State(state): State<HubState>,
    principal: Option<Extension<Principal>>,
    body: Bytes,
) -> ApiResult<Response> {
    let request: CreateRequest = serde_json::from_slice(&body)
        .map_err(|e| unprocessable("invalid rollout", &e.to_string()))?;
    request
        .strategy
        .check()
        .map_err(|e| unprocessable("invalid strategy", &e))?;
    request
        .gate
        .check()
        .map_err(|e| unprocessable("invalid gate", &e))?;
    let selector: Labels = {
        let items: Vec<String> = request
            .selector
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let parsed = registry::parse_labels(&items)
            .map_err(|e| unprocessable("invalid selector", &e.to_string()))?;
        if parsed.len() != request.selector.len() {
            return Err(unprocessable(
                "invalid selector",
                "label values may not contain ','",
            ));
        }
        parsed
    };
    let expires_in = match &request.expires_in {
        None => bundles::DEFAULT_EXPIRY,
        Some(text) => reactor_core::flow::parse_duration(text)
            .map_err(|e| unprocessable("invalid expires_in", &e.to_string()))?,
    };
    if expires_in < bundles::MIN_EXPIRY {
        return Err(unprocessable(
            "invalid expires_in",
            "a bundle must be valid for at least 1s (it is renewed before it expires)",
        ));
    }
    let workflows = bundles::validate(&request.workflows).map_err(build_problem)?;
    let active = store::list(&state.db, true, 1).await?;
    if let Some(running) = active.first() {
        return Err(ApiError::conflict(
            "a rollout is in progress",
            &format!(
                "rollout {} is {}; wait for it or abort it (POST /api/v1/rollouts/{}/abort)",
                running.id, running.state, running.id
            ),
        ));
    }
    let devices = store::targets(&state.db, &selector).await?;
    if devices.is_empty() {
        return Err(unprocessable(
            "no device matches",
            "no enrolled device carries every label of the selector",
        ));
    }
    let id = ulid::Ulid::new().to_string();
    let version = bundles::sign_and_store(
        &state.db,
        &api.signer,
        &selector,
        &workflows,
        expires_in,
        Some(&id),
        Purpose::Rollout,
    )
    .await
    .map_err(build_problem)?;
    let rollout = NewRollout {
        id: id.clone(),
        bundle_version: version,
        selector,
        strategy: request.strategy,
        gate: request.gate,
        auto_rollback: request.auto_rollback,
        created_by: principal.map(|Extension(p)| p.token_id),
    };
    store::insert(&state.db, &rollout, &devices).await?;
    api.wake.notify_one();
    tracing::info!(rollout = %id, version, devices = devices.len(), "rollout created");
    let body = describe(&state, &id, true).await?;
    Ok((StatusCode::CREATED, axum::Json(body)).into_response())
}

fn build_problem(error: BundleBuildError) -> ApiError {
    match error {
        BundleBuildError::Invalid(diagnostics) => {
            let mut problem = ApiError::invalid_workflow(&diagnostics);
            problem.0.title = "a bundle workflow is not valid".into();
            problem.0.detail = diagnostics
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n");
            problem.0.kind = INVALID_WORKFLOW;
            let problems: Vec<Value> = diagnostics.iter().map(|d| json!(d.to_string())).collect();
            problem
                .0
                .extra
                .insert("problems".into(), Value::Array(problems));
            if let Some(Value::Array(list)) = problem.0.extra.get_mut("diagnostics") {
                for (entry, diagnostic) in list.iter_mut().zip(&diagnostics) {
                    entry["path"] = json!(diagnostic.path);
                }
            }
            problem
        }
        BundleBuildError::Refused(why) => unprocessable("invalid bundle", &why),
        BundleBuildError::TooLarge { .. } => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "bundle too large",
            &error.to_string(),
        ),
        BundleBuildError::Sql(error) => ApiError::internal(error),
    }
}

/// The rollout as JSON, with counts (and each device when `devices`).
async fn describe(state: &HubState, id: &str, devices: bool) -> ApiResult<Value> {
    let Some(rollout) = store::get(&state.db, id).await? else {
        return Err(ApiError::not_found(
            "unknown rollout",
            &format!("no rollout {id:?}"),
        ));
    };
    let members = store::members(&state.db, id).await?;
    let mut body = rollout.json(members.len());
    body["counts"] = store::counts(&members);
    body["devices_total"] = json!(members.len());
    if devices {
        body["devices"] = Value::Array(members.iter().map(store::Member::json).collect());
    }
    Ok(body)
}

async fn list(State(state): State<HubState>) -> ApiResult<Response> {
    let rollouts = store::list(&state.db, false, 100).await?;
    let mut out = Vec::with_capacity(rollouts.len());
    for rollout in rollouts {
        out.push(describe(&state, &rollout.id, false).await?);
    }
    Ok(axum::Json(json!({ "rollouts": out })).into_response())
}

async fn show(State(state): State<HubState>, Path(id): Path<String>) -> ApiResult<Response> {
    Ok(axum::Json(describe(&state, &id, true).await?).into_response())
}

async fn abort(
    api: RolloutApi,
    State(state): State<HubState>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    let request: AbortRequest = if body.is_empty() {
        AbortRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| unprocessable("invalid abort", &e.to_string()))?
    };
    let Some(rollout) = store::get(&state.db, &id).await? else {
        return Err(ApiError::not_found(
            "unknown rollout",
            &format!("no rollout {id:?}"),
        ));
    };
    let rollback = request.rollback.unwrap_or(rollout.auto_rollback);
    let to = if rollback {
        state::ROLLBACK_REQUESTED
    } else {
        state::ABORTED
    };
    let changed = store::set_state(
        &state.db,
        &id,
        &[state::RUNNING],
        to,
        Some("aborted through the API"),
    )
    .await?;
    if !changed {
        return Err(ApiError::conflict(
            "the rollout is not running",
            &format!("rollout {id} is {}", rollout.state),
        ));
    }
    api.wake.notify_one();
    Ok(axum::Json(describe(&state, &id, false).await?).into_response())
}
