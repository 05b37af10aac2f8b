//! `/api/v1/executions` and `POST /api/v1/workflows/{name}/run`.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use reactor_core::Value;
use reactor_core::engine::{
    Event, ExecutionId, ExecutionRecord, ExecutionStatus, Submission, SubmitError, Timestamp,
};
use serde::Deserialize;
use serde_json::json;

use super::problem::{ApiError, ApiResult};
use crate::db::ExecutionFilter;
use crate::server::HubState;

/// Page size of `GET /executions` when `limit` is not given, and its maximum.
const DEFAULT_PAGE: usize = 50;
const MAX_PAGE: usize = 500;

/// 503 while start-up (recovery) runs.
pub(super) fn starting() -> ApiError {
    ApiError::unavailable(
        "the hub is starting",
        "unfinished executions are being recovered; try again shortly",
        1,
    )
}

/// The event data of a request body: JSON, or `{}` when empty.
pub(super) fn event_data(body: &[u8]) -> ApiResult<Value> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Object(Default::default()));
    }
    serde_json::from_slice(body).map_err(|error| {
        ApiError::bad_request(
            "the body is not JSON",
            &format!("the body is the event's data and must be JSON: {error}"),
        )
    })
}

/// Maps a refused submission to a problem.
pub(super) fn submit_error(name: &str, error: SubmitError) -> ApiError {
    match error {
        SubmitError::UnknownWorkflow(_) => ApiError::not_found(
            "unknown workflow",
            &format!("no active workflow named {name:?}"),
        ),
        SubmitError::Expression { what, message } => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "the event was not accepted",
            &format!("evaluating the workflow's {what}: {message}"),
        ),
        SubmitError::ShuttingDown => {
            ApiError::unavailable("the hub is stopping", "try again after it restarts", 5)
        }
        other => ApiError::internal(other),
    }
}

/// `POST /api/v1/workflows/{name}/run` — body: the event's data; 202 `{"execution": id}`
/// once the execution is durably recorded.
pub async fn run(
    State(state): State<HubState>,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    if !state.accepting() {
        return Err(starting());
    }
    if !state.workflows.is_active(&name) {
        return Err(ApiError::not_found(
            "unknown workflow",
            &format!("no active workflow named {name:?}"),
        ));
    }
    let data = event_data(&body)?;
    let runtime = state.workflows.runtime();
    if runtime.saturated() {
        return Err(ApiError::unavailable(
            "busy",
            "every execution slot is taken; try again shortly",
            1,
        ));
    }
    let event = Event::new("manual", "reactor:hub:api", data);
    match runtime
        .submit(&name, event, Value::Object(Default::default()))
        .await
    {
        Ok(Submission::Accepted(id)) => Ok((
            StatusCode::ACCEPTED,
            axum::Json(json!({ "execution": id.to_string() })),
        )
            .into_response()),
        Ok(Submission::Skipped) => Ok((
            StatusCode::OK,
            axum::Json(json!({ "execution": null, "status": "skipped" })),
        )
            .into_response()),
        Ok(Submission::Dropped) => Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "dropped",
            "the workflow's concurrency limit is reached and its overflow policy is drop",
        )),
        Err(error) => Err(submit_error(&name, error)),
    }
}

/// Query of `GET /api/v1/executions`.
#[derive(Debug, Deserialize)]
pub struct ListQuery {
    workflow: Option<String>,
    status: Option<String>,
    /// RFC 3339 or milliseconds since the epoch: created at or after.
    since: Option<String>,
    /// RFC 3339 or milliseconds since the epoch: created before.
    until: Option<String>,
    device: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

fn parse_status(text: &str) -> Option<ExecutionStatus> {
    Some(match text {
        "queued" => ExecutionStatus::Queued,
        "running" => ExecutionStatus::Running,
        "succeeded" => ExecutionStatus::Succeeded,
        "failed" => ExecutionStatus::Failed,
        "cancelled" => ExecutionStatus::Cancelled,
        _ => return None,
    })
}

fn parse_time(key: &str, text: &str) -> ApiResult<Timestamp> {
    if let Ok(millis) = text.parse::<i64>() {
        return Ok(Timestamp(millis));
    }
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| Timestamp(t.timestamp_millis()))
        .map_err(|_| {
            ApiError::bad_request(
                &format!("bad {key}"),
                &format!(
                    "{text:?} is not a time: use RFC 3339 (2026-01-31T12:00:00Z) or milliseconds since the epoch"
                ),
            )
        })
}

fn time(at: Option<Timestamp>) -> Value {
    at.map_or(Value::Null, |t| Value::String(t.to_rfc3339()))
}

fn summary(record: &ExecutionRecord) -> Value {
    json!({
        "id": record.id.to_string(),
        "workflow": record.workflow,
        "version": record.version,
        "status": record.status.as_str(),
        "created_at": record.created_at.to_rfc3339(),
        "finished_at": time(record.finished_at),
    })
}

/// `GET /api/v1/executions` — newest first; `next_cursor` pages.
pub async fn list(
    State(state): State<HubState>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let Query(query) = query.map_err(|error| {
        ApiError::bad_request(
            "bad query",
            &format!(
                "expected workflow, status, since, until, device, limit (a number) and cursor: {error}"
            ),
        )
    })?;
    let status = match query.status.as_deref() {
        None | Some("") => None,
        Some(text) => Some(parse_status(text).ok_or_else(|| {
            ApiError::bad_request(
                "bad status",
                &format!("{text:?} is not one of queued, running, succeeded, failed, cancelled"),
            )
        })?),
    };
    let cursor = match query.cursor.as_deref() {
        None | Some("") => None,
        Some(text) => Some(text.parse::<ExecutionId>().map_err(|_| {
            ApiError::bad_request(
                "bad cursor",
                "the cursor is the next_cursor of a previous page",
            )
        })?),
    };
    let since = query
        .since
        .as_deref()
        .filter(|s| !s.is_empty())
        .map(|s| parse_time("since", s))
        .transpose()?;
    let until = query
        .until
        .as_deref()
        .filter(|s| !s.is_empty())
        .map(|s| parse_time("until", s))
        .transpose()?;
    let limit = query.limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE);
    let filter = ExecutionFilter {
        workflow: query.workflow.filter(|w| !w.is_empty()),
        status,
        device: query.device.filter(|d| !d.is_empty()),
        since,
        until,
        before: cursor,
        limit,
    };
    let found = state.store.list(&filter).await?;
    let next = (found.len() == limit)
        .then(|| found.last().map(|r| r.id.to_string()))
        .flatten();
    let list: Vec<Value> = found.iter().map(summary).collect();
    Ok(axum::Json(json!({ "executions": list, "next_cursor": next })).into_response())
}

pub(super) fn parse_id(text: &str) -> ApiResult<ExecutionId> {
    text.parse::<ExecutionId>().map_err(|_| {
        ApiError::bad_request(
            "bad execution id",
            &format!("{text:?} is not an execution id"),
        )
    })
}

pub(super) async fn record(state: &HubState, id: ExecutionId) -> ApiResult<ExecutionRecord> {
    state
        .workflows
        .runtime()
        .store()
        .execution(id)
        .await?
        .ok_or_else(|| {
            ApiError::not_found(
                "unknown execution",
                &format!("no execution {id} (it may have been pruned)"),
            )
        })
}

/// `exec`'s JSON plus identity, times, per-step timing and the trace.
fn execution_json(record: &ExecutionRecord, trace: Option<Vec<Value>>) -> Value {
    let mut value = reactor_core::cli::exec_json(record);
    if let Some(object) = value.as_object_mut() {
        object.insert("id".into(), json!(record.id.to_string()));
        object.insert("workflow".into(), json!(record.workflow));
        object.insert("version".into(), json!(record.version));
        object.insert("created_at".into(), json!(record.created_at.to_rfc3339()));
        object.insert("finished_at".into(), time(record.finished_at));
        if let Some(steps) = object.get_mut("steps").and_then(Value::as_object_mut) {
            for (id, step) in &record.steps {
                if let Some(entry) = steps.get_mut(id).and_then(Value::as_object_mut) {
                    entry.insert("started_at".into(), time(step.started_at));
                    entry.insert("finished_at".into(), time(step.finished_at));
                }
            }
        }
        object.insert("trace".into(), trace.map_or(Value::Null, Value::Array));
    }
    value
}

/// `GET /api/v1/executions/{id}`
pub async fn get_one(State(state): State<HubState>, Path(id): Path<String>) -> ApiResult<Response> {
    let id = parse_id(&id)?;
    let record = record(&state, id).await?;
    let runtime = state.workflows.runtime();
    let trace = match runtime.workflow(&record.workflow, Some(record.version)) {
        Some(workflow) => {
            let journal = runtime.store().journal(id).await?;
            Some(super::trace::build(
                workflow,
                id,
                &journal,
                runtime.environment().clone(),
            ))
        }
        None => None,
    };
    let mut value = execution_json(&record, trace);
    // Outputs and errors come from actions, which may echo secrets back.
    runtime.redactor().redact_value(&mut value);
    Ok(axum::Json(value).into_response())
}

/// `POST /api/v1/executions/{id}/cancel` — 202 when the cancel was delivered here, or recorded
/// for the hub that runs the execution ([`crate::db::cancels`]); 409 once it has finished.
pub async fn cancel(State(state): State<HubState>, Path(id): Path<String>) -> ApiResult<Response> {
    const REASON: &str = "cancelled through the API";
    let id = parse_id(&id)?;
    let accepted = || {
        (
            StatusCode::ACCEPTED,
            axum::Json(json!({ "execution": id.to_string(), "status": "cancelling" })),
        )
            .into_response()
    };
    if state.workflows.runtime().cancel(id, REASON).await {
        return Ok(accepted());
    }
    let record = record(&state, id).await?;
    if record.status.is_finished() {
        return Err(ApiError::conflict(
            "not running",
            &format!(
                "execution {id} is {} and cannot be cancelled",
                record.status.as_str()
            ),
        ));
    }
    // Unfinished but not here: another hub runs it (or will adopt it).
    crate::db::cancels::request(&state.db, id, REASON).await?;
    Ok(accepted())
}
