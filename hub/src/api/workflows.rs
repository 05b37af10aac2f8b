//! `/api/v1/workflows`: workflows stored in the database, every version kept, deployed into
//! the runtime (see `crate::db::workflows` for the version rule).

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use reactor_core::Value;
use reactor_core::deploy::Origin;
use reactor_core::flow::Workflow;
use serde::Deserialize;
use serde_json::json;

use super::problem::{ApiError, ApiResult};
use super::text_body;
use crate::auth::Principal;
use crate::db::workflows::{self as store, Saved, StoredVersion, StoredWorkflow};
use crate::server::HubState;

/// The name diagnostics carry for a submitted body (they are shown with line and column).
const BODY_SOURCE: &str = "request body";

fn workflow_json(workflow: &StoredWorkflow, version: Option<&StoredVersion>) -> Value {
    let mut value = json!({
        "name": workflow.name,
        "version": workflow.latest_version,
        "active": workflow.active,
        "created_at": workflow.created_at.to_rfc3339(),
        "updated_at": workflow.updated_at.to_rfc3339(),
    });
    if let Some(version) = version {
        value["hash"] = json!(version.hash);
        value["author"] = json!(version.author);
        value["source"] = json!(version.source);
    }
    value
}

fn version_json(version: &StoredVersion, with_source: bool) -> Value {
    let mut value = json!({
        "name": version.name,
        "version": version.version,
        "hash": version.hash,
        "created_at": version.created_at.to_rfc3339(),
        "author": version.author,
    });
    if with_source {
        value["source"] = json!(version.source);
    }
    value
}

/// `GET /api/v1/workflows`
pub async fn list(State(state): State<HubState>) -> ApiResult<Response> {
    let stored = store::list_active(&state.db).await?;
    let list: Vec<Value> = stored
        .iter()
        .map(|w| {
            let mut value = workflow_json(w, None);
            if let Some(loaded) = state.workflows.runtime().workflow(&w.name, None) {
                value["description"] = json!(loaded.description);
                value["triggers"] = json!(
                    loaded
                        .triggers
                        .iter()
                        .map(|t| t.type_name())
                        .collect::<Vec<_>>()
                );
            }
            value
        })
        .collect();
    Ok(axum::Json(json!({ "workflows": list })).into_response())
}

/// Parses a submitted workflow, or 422 with every diagnostic.
fn parse(body: &[u8]) -> ApiResult<(Workflow, String)> {
    let text = text_body(body, "a workflow is YAML text in UTF-8")?;
    match reactor_core::dsl::parse_workflow(BODY_SOURCE, &text) {
        Ok(workflow) => Ok((workflow, text)),
        Err(diagnostics) => Err(ApiError::invalid_workflow(&diagnostics)),
    }
}

/// Stores `text` as a version of its workflow and makes it the active one in the runtime.
/// With `create_only`, an active workflow of the same name is a conflict.
async fn deploy(
    state: &HubState,
    mut workflow: Workflow,
    text: &str,
    create_only: bool,
    principal: &Principal,
) -> ApiResult<Saved> {
    let name = workflow.name.to_string();
    let _guard = state.deploy.lock().await;
    crate::server::http_triggers::check_paths(&workflow, state.workflows.routes())
        .map_err(|diagnostics| ApiError::invalid_workflow(&diagnostics))?;
    if create_only
        && let Some(existing) = store::get(&state.db, &name).await?
        && existing.active
    {
        return Err(ApiError::conflict(
            "the workflow exists",
            &format!(
                "a workflow named {name:?} exists (version {}); PUT /api/v1/workflows/{name} adds a version",
                existing.latest_version
            ),
        ));
    }
    let saved = store::save_version(
        &state.db,
        &name,
        workflow.version,
        text,
        Some(&principal.token_id),
    )
    .await?;
    let live = state.workflows.version(&name);
    if live == Some(saved.version()) {
        return Ok(saved);
    }
    workflow.version = saved.version();
    let installed = state
        .workflows
        .install(workflow, text, Origin::Api(principal.token_id.clone()))
        .await
        .map_err(ApiError::internal)?;
    let runtime_version = match installed {
        reactor_core::deploy::Installed::New(v) | reactor_core::deploy::Installed::Unchanged(v) => {
            v
        }
    };
    if runtime_version != saved.version() {
        tracing::warn!(
            workflow = %name,
            stored = saved.version(),
            loaded = runtime_version,
            "the runtime chose another version number than the database"
        );
    }
    Ok(saved)
}

fn saved_response(state_code: StatusCode, name: &str, saved: Saved) -> Response {
    let status = match saved {
        Saved::Created(_) => "created",
        Saved::Updated(_) => "updated",
        Saved::Unchanged(_) => "unchanged",
    };
    let mut response = (
        state_code,
        axum::Json(json!({ "name": name, "version": saved.version(), "result": status })),
    )
        .into_response();
    if let Ok(location) = HeaderValue::try_from(format!("/api/v1/workflows/{name}")) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

/// `POST /api/v1/workflows`
pub async fn create(
    State(state): State<HubState>,
    Extension(principal): Extension<Principal>,
    body: Bytes,
) -> ApiResult<Response> {
    let (workflow, text) = parse(&body)?;
    let name = workflow.name.to_string();
    let saved = deploy(&state, workflow, &text, true, &principal).await?;
    Ok(saved_response(StatusCode::CREATED, &name, saved))
}

/// `PUT /api/v1/workflows/{name}`
pub async fn put(
    State(state): State<HubState>,
    Extension(principal): Extension<Principal>,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    let (workflow, text) = parse(&body)?;
    if workflow.name.as_str() != name {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "name mismatch",
            &format!(
                "the YAML names the workflow {:?} but the URL names {name:?}",
                workflow.name.as_str()
            ),
        ));
    }
    let saved = deploy(&state, workflow, &text, false, &principal).await?;
    let code = match saved {
        Saved::Created(_) => StatusCode::CREATED,
        Saved::Updated(_) | Saved::Unchanged(_) => StatusCode::OK,
    };
    Ok(saved_response(code, &name, saved))
}

async fn active(state: &HubState, name: &str) -> ApiResult<StoredWorkflow> {
    match store::get(&state.db, name).await? {
        Some(workflow) if workflow.active => Ok(workflow),
        _ => Err(ApiError::not_found(
            "unknown workflow",
            &format!("no workflow named {name:?}"),
        )),
    }
}

/// `GET /api/v1/workflows/{name}`
pub async fn get_one(
    State(state): State<HubState>,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    let workflow = active(&state, &name).await?;
    let version = store::version(&state.db, &name, workflow.latest_version).await?;
    let mut value = workflow_json(&workflow, version.as_ref());
    if let Some(loaded) = state.workflows.runtime().workflow(&name, None) {
        value["description"] = json!(loaded.description);
    }
    value["trigger_status"] = trigger_status(&state, &name);
    Ok(axum::Json(value).into_response())
}

/// The health of the workflow's running triggers: counters, `healthy` (false after 3 errors
/// in a row without a success) and the last error with its time (also in `/metrics`).
fn trigger_status(state: &HubState, name: &str) -> Value {
    let rows = reactor_core::metrics::trigger_rows(&state.workflows);
    Value::Array(
        rows.into_iter()
            .filter(|row| row.workflow == name)
            .map(|row| {
                let stats = &row.stats;
                json!({
                    "trigger": row.trigger,
                    "kind": row.kind,
                    "up": row.up,
                    "healthy": stats.healthy(),
                    "events": stats.events,
                    "errors": stats.errors,
                    "lag": stats.lag,
                    "failing": stats.failing,
                    "restarts": stats.restarts,
                    "last_error": stats.last_error.as_ref().map(|(at, message)| json!({
                        "at": at.to_rfc3339(),
                        "message": message,
                    })),
                })
            })
            .collect(),
    )
}

/// `DELETE /api/v1/workflows/{name}`
pub async fn remove(
    State(state): State<HubState>,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    let _guard = state.deploy.lock().await;
    if !store::deactivate(&state.db, &name).await? {
        return Err(ApiError::not_found(
            "unknown workflow",
            &format!("no workflow named {name:?}"),
        ));
    }
    state.workflows.remove(&name).await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Versions exist for deleted workflows too (executions started on them still show them).
async fn known(state: &HubState, name: &str) -> ApiResult<StoredWorkflow> {
    store::get(&state.db, name).await?.ok_or_else(|| {
        ApiError::not_found("unknown workflow", &format!("no workflow named {name:?}"))
    })
}

/// `GET /api/v1/workflows/{name}/versions`
pub async fn versions(
    State(state): State<HubState>,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    let workflow = known(&state, &name).await?;
    let versions = store::versions(&state.db, &name).await?;
    let list: Vec<Value> = versions.iter().map(|v| version_json(v, false)).collect();
    Ok(axum::Json(json!({
        "name": name,
        "active": workflow.active,
        "latest_version": workflow.latest_version,
        "versions": list,
    }))
    .into_response())
}

async fn one_version(state: &HubState, name: &str, version: u32) -> ApiResult<StoredVersion> {
    store::version(&state.db, name, version)
        .await?
        .ok_or_else(|| {
            ApiError::not_found(
                "unknown version",
                &format!("workflow {name:?} has no version {version}"),
            )
        })
}

/// `GET /api/v1/workflows/{name}/versions/{version}`
pub async fn version(
    State(state): State<HubState>,
    Path((name, version)): Path<(String, String)>,
) -> ApiResult<Response> {
    let version = version.parse::<u32>().map_err(|_| {
        ApiError::bad_request(
            "bad version",
            &format!("{version:?} is not a version number"),
        )
    })?;
    let stored = one_version(&state, &name, version).await?;
    Ok(axum::Json(version_json(&stored, true)).into_response())
}

/// Query of `GET /api/v1/workflows/{name}/diff`.
#[derive(Debug, Deserialize)]
pub struct DiffQuery {
    from: Option<u32>,
    to: Option<u32>,
}

/// `GET /api/v1/workflows/{name}/diff?from=A&to=B` — `to` defaults to the latest version,
/// `from` to the one before `to`.
pub async fn diff(
    State(state): State<HubState>,
    Path(name): Path<String>,
    query: Result<Query<DiffQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let Query(query) =
        query.map_err(|_| ApiError::bad_request("bad query", "from and to are version numbers"))?;
    let workflow = known(&state, &name).await?;
    let to = query.to.unwrap_or(workflow.latest_version);
    let from = match query.from {
        Some(from) => from,
        None => {
            let versions = store::versions(&state.db, &name).await?;
            versions
                .iter()
                .map(|v| v.version)
                .filter(|v| *v < to)
                .max()
                .unwrap_or(to)
        }
    };
    let old = one_version(&state, &name, from).await?;
    let new = one_version(&state, &name, to).await?;
    let lines = super::diff::lines(&old.source, &new.source);
    let unified =
        super::diff::unified(&lines, &format!("{name} v{from}"), &format!("{name} v{to}"));
    Ok(axum::Json(json!({
        "name": name,
        "from": from,
        "to": to,
        "unified": unified,
        "lines": lines.iter().map(super::diff::Line::to_json).collect::<Vec<_>>(),
    }))
    .into_response())
}
