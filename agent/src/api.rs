//! The local API under `/api/v1` (JSON; errors as RFC 9457 `application/problem+json`).
//!
//! - `GET  /workflows` — active workflows: name, version, description, triggers, source
//! - `GET  /executions?workflow=&status=&limit=&cursor=` — newest first; `next_cursor` pages
//! - `GET  /executions/{id}` — `exec`'s JSON shape plus id, workflow, version, times, and
//!   `started_at` / `finished_at` per step
//! - `POST /workflows/{name}/run` — body: the event's data (JSON); 202 `{"execution": id}`
//! - `POST /executions/{id}/cancel` — 202 when the cancel was delivered

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use reactor_core::Value;
use reactor_core::engine::{
    Event, ExecutionId, ExecutionRecord, ExecutionStatus, Submission, SubmitError, Timestamp,
};
use reactor_core::flow::{TriggerKind, TriggerSpec};
use reactor_core::store::ExecutionQuery;
use serde::Deserialize;
use serde_json::json;

use crate::daemon::AgentState;

/// Page size of `GET /executions` when `limit` is not given, and its maximum.
const DEFAULT_PAGE: usize = 50;
const MAX_PAGE: usize = 500;

pub fn router() -> Router<AgentState> {
    Router::new()
        .route("/workflows", get(list_workflows))
        .route("/workflows/{name}/run", post(run_workflow))
        .route("/executions", get(list_executions))
        .route("/executions/{id}", get(get_execution))
        .route("/executions/{id}/cancel", post(cancel_execution))
        .fallback(|| async {
            problem(
                StatusCode::NOT_FOUND,
                "not found",
                "no such API endpoint under /api/v1",
            )
        })
}

/// An RFC 9457 problem response.
pub fn problem(status: StatusCode, title: &str, detail: &str) -> Response {
    let body = json!({
        "type": "about:blank",
        "title": title,
        "status": status.as_u16(),
        "detail": detail,
    });
    (
        status,
        [(header::CONTENT_TYPE, "application/problem+json")],
        body.to_string(),
    )
        .into_response()
}

fn internal(error: impl std::fmt::Display) -> Response {
    tracing::error!(%error, "API request failed");
    problem(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal error",
        "the agent could not complete the request; see its log",
    )
}

fn trigger_json(spec: &TriggerSpec) -> Value {
    match &spec.kind {
        TriggerKind::Http(http) => json!({
            "type": "http", "path": http.path, "method": http.method,
            "response": match http.response {
                reactor_core::flow::HttpResponseMode::Sync => "sync",
                reactor_core::flow::HttpResponseMode::Async => "async",
            }
        }),
        TriggerKind::Cron(cron) => {
            json!({ "type": "cron", "schedule": cron.schedule, "timezone": cron.timezone })
        }
        TriggerKind::Interval { every } => json!({
            "type": "interval", "every": reactor_core::flow::format_duration(*every)
        }),
        TriggerKind::File(file) => json!({ "type": "file", "path": file.path }),
        TriggerKind::Mqtt(mqtt) => {
            json!({ "type": "mqtt", "topic": mqtt.topic, "qos": mqtt.qos, "sessions": mqtt.sessions })
        }
        TriggerKind::Event { event_type, source } => {
            json!({ "type": "event", "event": event_type, "source": source })
        }
        other => json!({ "type": other.type_name() }),
    }
}

async fn list_workflows(State(state): State<AgentState>) -> Response {
    let list: Vec<Value> = state
        .workflows
        .list()
        .iter()
        .map(|w| {
            json!({
                "name": w.name.as_str(),
                "version": w.version,
                "description": w.description,
                "triggers": w.triggers.iter().map(trigger_json).collect::<Vec<_>>(),
                "source": state.workflows.origin(w.name.as_str()).map(|o| o.to_string()),
            })
        })
        .collect();
    axum::Json(json!({ "workflows": list })).into_response()
}

async fn run_workflow(
    State(state): State<AgentState>,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    if !state.accepting() {
        return crate::server::starting();
    }
    if !state.workflows.is_active(&name) {
        return problem(
            StatusCode::NOT_FOUND,
            "unknown workflow",
            &format!("no active workflow named {name:?}"),
        );
    }
    let data: Value = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Object(Default::default())
    } else {
        match serde_json::from_slice(&body) {
            Ok(data) => data,
            Err(error) => {
                return problem(
                    StatusCode::BAD_REQUEST,
                    "the body is not JSON",
                    &format!("the body is the event's data and must be JSON: {error}"),
                );
            }
        }
    };
    if state.runtime.saturated() {
        let mut response = problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            "every execution slot is taken; try again shortly",
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        return response;
    }
    let event = Event::new("manual", "reactor:api", data);
    match state
        .runtime
        .submit(&name, event, Value::Object(Default::default()))
        .await
    {
        Ok(Submission::Accepted(id)) => (
            StatusCode::ACCEPTED,
            axum::Json(json!({ "execution": id.to_string() })),
        )
            .into_response(),
        Ok(Submission::Skipped) => (
            StatusCode::OK,
            axum::Json(json!({ "execution": null, "status": "skipped" })),
        )
            .into_response(),
        Ok(Submission::Dropped) => problem(
            StatusCode::TOO_MANY_REQUESTS,
            "dropped",
            "the workflow's concurrency limit is reached and its overflow policy is drop",
        ),
        Err(SubmitError::UnknownWorkflow(_)) => problem(
            StatusCode::NOT_FOUND,
            "unknown workflow",
            &format!("no active workflow named {name:?}"),
        ),
        Err(SubmitError::Expression { what, message }) => problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            "the event was not accepted",
            &format!("evaluating the workflow's {what}: {message}"),
        ),
        Err(SubmitError::ShuttingDown) => problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "the agent is stopping",
            "try again after it restarts",
        ),
        Err(error) => internal(error),
    }
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    workflow: Option<String>,
    status: Option<String>,
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

async fn list_executions(
    State(state): State<AgentState>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(query)) = query else {
        return problem(
            StatusCode::BAD_REQUEST,
            "bad query",
            "expected workflow, status, limit (a number) and cursor",
        );
    };
    let status = match query.status.as_deref() {
        None | Some("") => None,
        Some(text) => match parse_status(text) {
            Some(status) => Some(status),
            None => {
                return problem(
                    StatusCode::BAD_REQUEST,
                    "bad status",
                    &format!(
                        "{text:?} is not one of queued, running, succeeded, failed, cancelled"
                    ),
                );
            }
        },
    };
    let before = match query.cursor.as_deref() {
        None | Some("") => None,
        Some(text) => match text.parse::<ExecutionId>() {
            Ok(id) => Some(id),
            Err(_) => {
                return problem(
                    StatusCode::BAD_REQUEST,
                    "bad cursor",
                    "the cursor is the next_cursor of a previous page",
                );
            }
        },
    };
    let limit = query.limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE);
    let store_query = ExecutionQuery {
        workflow: query.workflow.filter(|w| !w.is_empty()),
        status,
        before,
        limit,
    };
    match state.runtime.store().executions(&store_query).await {
        Ok(records) => {
            let next = (records.len() == limit)
                .then(|| records.last().map(|r| r.id.to_string()))
                .flatten();
            let list: Vec<Value> = records.iter().map(summary).collect();
            axum::Json(json!({ "executions": list, "next_cursor": next })).into_response()
        }
        Err(error) => internal(error),
    }
}

fn parse_id(text: &str) -> Result<ExecutionId, Box<Response>> {
    text.parse::<ExecutionId>().map_err(|_| {
        Box::new(problem(
            StatusCode::BAD_REQUEST,
            "bad execution id",
            &format!("{text:?} is not an execution id"),
        ))
    })
}

/// `exec`'s JSON plus identity, times, and per-step timing.
pub fn execution_json(record: &ExecutionRecord) -> Value {
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
    }
    value
}

async fn get_execution(State(state): State<AgentState>, Path(id): Path<String>) -> Response {
    let id = match parse_id(&id) {
        Ok(id) => id,
        Err(response) => return *response,
    };
    match state.runtime.store().execution(id).await {
        Ok(Some(record)) => axum::Json(execution_json(&record)).into_response(),
        Ok(None) => problem(
            StatusCode::NOT_FOUND,
            "unknown execution",
            &format!("no execution {id} (it may have been pruned)"),
        ),
        Err(error) => internal(error),
    }
}

async fn cancel_execution(State(state): State<AgentState>, Path(id): Path<String>) -> Response {
    let id = match parse_id(&id) {
        Ok(id) => id,
        Err(response) => return *response,
    };
    if state.runtime.cancel(id, "cancelled through the API").await {
        return (
            StatusCode::ACCEPTED,
            axum::Json(json!({ "execution": id.to_string(), "status": "cancelling" })),
        )
            .into_response();
    }
    match state.runtime.store().execution(id).await {
        Ok(Some(record)) => problem(
            StatusCode::CONFLICT,
            "not running",
            &format!(
                "execution {id} is {} and cannot be cancelled",
                record.status.as_str()
            ),
        ),
        Ok(None) => problem(
            StatusCode::NOT_FOUND,
            "unknown execution",
            &format!("no execution {id}"),
        ),
        Err(error) => internal(error),
    }
}
