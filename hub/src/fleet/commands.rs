//! Hub → device commands (table `device_commands`, migration 0008): run a workflow now,
//! cancel an execution, ping.
//!
//! - `POST /api/v1/devices/{id}/commands` stores the command under the device's next
//!   command id (the command frame's seq: increasing per device, as the protocol asks) in
//!   state `pending`, wakes this hub's [`super::delivery`] and answers 202 — or, with
//!   `?wait=5s`, waits up to that long for the answer (200 once answered).
//! - Delivery (every hub, for the devices connected to it) publishes pending commands on
//!   `d/{id}/cmd` (QoS 1, not retained) → `sent`, and publishes a command again under the
//!   same id while no answer came for [`RESEND_AFTER`] (the agent answers a repeated id from
//!   its memory without running it twice). Unanswered after [`EXPIRE_AFTER`] → `expired`.
//! - The device's `CommandResult` (on its `executions` channel, seen by ingest) is stored by
//!   [`record_result`] → `answered` with the result.
//! - `GET /api/v1/devices/{id}/commands/{cmd}` and `GET /api/v1/devices/{id}/commands`.
//!
//! Every route answers 404 (problem+json, "unknown device") for a device that does not exist.

use std::time::Duration;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use reactor_core::engine::{ExecutionId, Timestamp};
use reactor_core::sync::messages::{
    Command, CommandOutcome, CommandResult, ExecutionRef, JsonText,
};
use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::Row;

use super::delivery::Delivery;
use super::registry::{self, on_pool};
use crate::api::problem::{ApiError, ApiResult};
use crate::auth::{Principal, Role};
use crate::db::Database;
use crate::server::{HubState, RouteSpec};

/// A sent command without an answer is sent again (same id) after this long.
pub const RESEND_AFTER: Duration = Duration::from_secs(10);
/// A command without an answer after this long is given up (`expired`).
pub const EXPIRE_AFTER: Duration = Duration::from_secs(300);
/// Longest `?wait=`.
const MAX_WAIT: Duration = Duration::from_secs(30);
/// Attempts at taking the next command id when requests race.
const SEQ_ATTEMPTS: usize = 8;

/// A command as the API takes it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum CommandRequest {
    RunWorkflow {
        workflow: String,
        #[serde(default)]
        input: Value,
    },
    CancelExecution {
        execution: String,
    },
    Ping {
        #[serde(default)]
        nonce: Option<u64>,
    },
}

impl CommandRequest {
    /// The wire command, or why it cannot be one.
    pub fn to_wire(&self, seq: u64) -> Result<Command, String> {
        Ok(match self {
            CommandRequest::RunWorkflow { workflow, input } => {
                if workflow.is_empty()
                    || workflow.len() > reactor_core::sync::messages::MAX_NAME_BYTES
                {
                    return Err("`workflow` must be 1 to 256 bytes".into());
                }
                Command::RunWorkflow {
                    workflow: workflow.clone(),
                    input: JsonText::from_value(input),
                }
            }
            CommandRequest::CancelExecution { execution } => {
                let id: ExecutionId = execution
                    .parse()
                    .map_err(|_| format!("`execution` {execution:?} is not an execution id"))?;
                Command::CancelExecution {
                    execution: ExecutionRef::from(id),
                }
            }
            CommandRequest::Ping { nonce } => Command::Ping {
                nonce: nonce.unwrap_or(seq),
            },
        })
    }

    fn to_json(&self) -> Value {
        match self {
            CommandRequest::RunWorkflow { workflow, input } => {
                json!({ "type": "run_workflow", "workflow": workflow, "input": input })
            }
            CommandRequest::CancelExecution { execution } => {
                json!({ "type": "cancel_execution", "execution": execution })
            }
            CommandRequest::Ping { nonce } => json!({ "type": "ping", "nonce": nonce }),
        }
    }
}

/// A command's answer as JSON (what the API shows).
pub fn outcome_json(outcome: &CommandOutcome) -> Value {
    match outcome {
        CommandOutcome::Started { execution } => json!({
            "outcome": "started",
            "execution": ExecutionId::from(*execution).to_string(),
        }),
        CommandOutcome::Cancelled => json!({ "outcome": "cancelled" }),
        CommandOutcome::NotFound => json!({ "outcome": "not_found" }),
        CommandOutcome::Pong { nonce } => json!({ "outcome": "pong", "nonce": nonce }),
        CommandOutcome::Refused { reason } => json!({ "outcome": "refused", "reason": reason }),
        CommandOutcome::Unsupported { version, kind } => {
            json!({ "outcome": "unsupported", "version": version, "kind": kind })
        }
    }
}

/// Stores a device's answer to command `seq` (first answer wins; repeats are ignored).
/// Returns whether it was stored.
pub async fn record_result(
    db: &Database,
    device: &str,
    seq: u64,
    result: &CommandResult,
) -> Result<bool, sqlx::Error> {
    let Ok(seq) = i64::try_from(seq) else {
        return Ok(false);
    };
    let now = Timestamp::now().millis();
    let result = outcome_json(&result.outcome).to_string();
    let done = on_pool!(db, pool => {
        sqlx::query(
            "UPDATE device_commands SET state = 'answered', result = $3, answered_at = $4 \
             WHERE device_id = $1 AND seq = $2 AND state <> 'answered'",
        )
        .bind(device)
        .bind(seq)
        .bind(&result)
        .bind(now)
        .execute(pool)
        .await?
        .rows_affected()
    });
    Ok(done == 1)
}

/// A command due for (re)sending.
#[derive(Debug, Clone)]
pub struct Due {
    pub device: String,
    pub seq: u64,
    pub command: CommandRequest,
}

/// Commands pending, or sent without answer for [`RESEND_AFTER`]; expires the ones older
/// than [`EXPIRE_AFTER`] first.
pub async fn due(db: &Database) -> Result<Vec<Due>, sqlx::Error> {
    let now = Timestamp::now().millis();
    let expire_before = now - i64::try_from(EXPIRE_AFTER.as_millis()).unwrap_or(0);
    let resend_before = now - i64::try_from(RESEND_AFTER.as_millis()).unwrap_or(0);
    let rows = on_pool!(db, pool => {
        sqlx::query(
            "UPDATE device_commands SET state = 'expired' \
             WHERE state IN ('pending', 'sent') AND created_at < $1",
        )
        .bind(expire_before)
        .execute(pool)
        .await?;
        sqlx::query(
            "SELECT device_id, seq, command FROM device_commands WHERE state = 'pending' \
             OR (state = 'sent' AND sent_at < $1) ORDER BY device_id, seq LIMIT 1000",
        )
        .bind(resend_before)
        .fetch_all(pool)
        .await?
        .into_iter()
        .map(|row| {
            Ok::<_, sqlx::Error>((
                row.try_get::<String, _>(0)?,
                row.try_get::<i64, _>(1)?,
                row.try_get::<String, _>(2)?,
            ))
        })
        .collect::<Result<Vec<_>, _>>()?
    });
    Ok(rows
        .into_iter()
        .filter_map(|(device, seq, command)| {
            Some(Due {
                device,
                seq: u64::try_from(seq).ok()?,
                command: serde_json::from_str::<CommandRequest>(&command).ok()?,
            })
        })
        .collect())
}

/// Records that command `seq` of `device` was handed to the broker.
pub async fn mark_sent(db: &Database, device: &str, seq: u64) -> Result<(), sqlx::Error> {
    let now = Timestamp::now().millis();
    on_pool!(db, pool => {
        sqlx::query(
            "UPDATE device_commands SET state = 'sent', sent_at = $3, attempts = attempts + 1 \
             WHERE device_id = $1 AND seq = $2 AND state IN ('pending', 'sent')",
        )
        .bind(device)
        .bind(i64::try_from(seq).unwrap_or(i64::MAX))
        .bind(now)
        .execute(pool)
        .await?;
    });
    Ok(())
}

/// Stores `command` for `device` under its next command id; `None` for an unknown device.
pub async fn create(
    db: &Database,
    device: &str,
    command: &CommandRequest,
    by: Option<&str>,
) -> Result<Option<u64>, sqlx::Error> {
    let now = Timestamp::now().millis();
    let text = command.to_json().to_string();
    for _ in 0..SEQ_ATTEMPTS {
        let inserted = on_pool!(db, pool => {
            let mut tx = crate::db::begin_write(pool).await?;
            let known = sqlx::query("SELECT id FROM devices WHERE id = $1")
                .bind(device)
                .fetch_optional(&mut *tx)
                .await?;
            if known.is_none() {
                return Ok(None);
            }
            let next: i64 = sqlx::query(
                "SELECT COALESCE(MAX(seq), 0) + 1 FROM device_commands WHERE device_id = $1",
            )
            .bind(device)
            .fetch_one(&mut *tx)
            .await?
            .try_get(0)?;
            let done = sqlx::query(
                "INSERT INTO device_commands (device_id, seq, command, state, created_by, created_at) \
                 VALUES ($1, $2, $3, 'pending', $4, $5) ON CONFLICT (device_id, seq) DO NOTHING",
            )
            .bind(device)
            .bind(next)
            .bind(&text)
            .bind(by)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            (done.rows_affected() == 1).then_some(next)
        });
        if let Some(seq) = inserted {
            return Ok(Some(u64::try_from(seq).unwrap_or(0)));
        }
    }
    Err(sqlx::Error::Protocol(
        "could not take a command id: concurrent requests kept taking them".into(),
    ))
}

/// One command as the API shows it.
pub async fn get_one(db: &Database, device: &str, seq: i64) -> Result<Option<Value>, sqlx::Error> {
    let rows = select(db, device, Some(seq), 1).await?;
    Ok(rows.into_iter().next())
}

async fn select(
    db: &Database,
    device: &str,
    seq: Option<i64>,
    limit: i64,
) -> Result<Vec<Value>, sqlx::Error> {
    on_pool!(db, pool => {
    let rows = sqlx::query(
            "SELECT seq, command, state, result, attempts, created_by, created_at, sent_at, \
             answered_at FROM device_commands WHERE device_id = $1 AND ($2 IS NULL OR seq = $2) \
             ORDER BY seq DESC LIMIT $3",
        )
        .bind(device)
        .bind(seq)
        .bind(limit)
        .fetch_all(pool)
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let command: String = row.try_get("command")?;
        let result: Option<String> = row.try_get("result")?;
        out.push(json!({
            "device": device,
            "id": row.try_get::<i64, _>("seq")?,
            "command": serde_json::from_str::<Value>(&command).unwrap_or(Value::Null),
            "state": row.try_get::<String, _>("state")?,
            "result": result.and_then(|r: String| serde_json::from_str::<Value>(&r).ok()),
            "attempts": row.try_get::<i64, _>("attempts")?,
            "created_by": row.try_get::<Option<String>, _>("created_by")?,
            "created_at": row.try_get::<i64, _>("created_at")?,
            "sent_at": row.try_get::<Option<i64>, _>("sent_at")?,
            "answered_at": row.try_get::<Option<i64>, _>("answered_at")?,
        }));
    }
    Ok(out)
    })
}

/// The commands routes; `delivery` (this hub's, when it runs the device endpoint) is woken
/// so a new command leaves at once.
pub fn routes(delivery: Option<Delivery>) -> Vec<RouteSpec> {
    vec![
        RouteSpec::new(
            Method::POST,
            "/api/v1/devices/{id}/commands",
            Role::Editor,
            "Send a device a command: {\"type\": \"run_workflow\", \"workflow\", \"input\"} | {\"type\": \"cancel_execution\", \"execution\"} | {\"type\": \"ping\"}; ?wait=5s waits for the answer",
            post(
                move |state: State<HubState>,
                      principal: Option<Extension<Principal>>,
                      id: Path<String>,
                      query: Query<WaitQuery>,
                      body: Bytes| {
                    let delivery = delivery.clone();
                    async move { send(state, principal, id, query, body, delivery).await }
                },
            ),
        ),
        RouteSpec::new(
            Method::GET,
            "/api/v1/devices/{id}/commands",
            Role::Viewer,
            "A device's latest 100 commands with their state and answer",
            get(list),
        ),
        RouteSpec::new(
            Method::GET,
            "/api/v1/devices/{id}/commands/{command}",
            Role::Viewer,
            "One command: pending, sent, answered (with the device's result) or expired",
            get(show),
        ),
    ]
}

/// `?wait=5s`.
#[derive(Debug, Default, Deserialize)]
pub struct WaitQuery {
    wait: Option<String>,
}

async fn send(
    State(state): State<HubState>,
    principal: Option<Extension<Principal>>,
    Path(id): Path<String>,
    Query(query): Query<WaitQuery>,
    body: Bytes,
    delivery: Option<Delivery>,
) -> ApiResult<Response> {
    let wait = match query.wait.as_deref() {
        None => None,
        Some(text) => Some(
            reactor_core::flow::parse_duration(text)
                .map_err(|e| ApiError::bad_request("invalid wait", &e.to_string()))?
                .min(MAX_WAIT),
        ),
    };
    let command: CommandRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid command",
            &format!(
                "{e}; send {{\"type\": \"run_workflow\" | \"cancel_execution\" | \"ping\", …}}"
            ),
        )
    })?;
    command
        .to_wire(0)
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid command", &e))?;
    let by = principal.map(|Extension(p)| p.token_id);
    let Some(seq) = create(&state.db, &id, &command, by.as_deref()).await? else {
        return Err(unknown_device(&id));
    };
    if let Some(delivery) = &delivery {
        delivery.wake();
    }
    let seq = i64::try_from(seq).unwrap_or(i64::MAX);
    if let Some(wait) = wait {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let current = get_one(&state.db, &id, seq).await?;
            if let Some(current) = &current
                && matches!(current["state"].as_str(), Some("answered" | "expired"))
            {
                return Ok((StatusCode::OK, axum::Json(current.clone())).into_response());
            }
            if tokio::time::Instant::now() >= deadline {
                let body = current.unwrap_or(Value::Null);
                return Ok((StatusCode::ACCEPTED, axum::Json(body)).into_response());
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
    let body = get_one(&state.db, &id, seq).await?.unwrap_or(Value::Null);
    Ok((StatusCode::ACCEPTED, axum::Json(body)).into_response())
}

/// 404 (problem+json) unless device `id` exists: every per-device route answers so for an
/// unknown device rather than an empty result.
async fn known_device(db: &Database, id: &str) -> ApiResult<()> {
    if registry::exists(db, id).await? {
        Ok(())
    } else {
        Err(unknown_device(id))
    }
}

fn unknown_device(id: &str) -> ApiError {
    ApiError::not_found(
        "unknown device",
        &format!("no device {id:?} (reactor-hub device add)"),
    )
}

async fn list(State(state): State<HubState>, Path(id): Path<String>) -> ApiResult<Response> {
    known_device(&state.db, &id).await?;
    let commands = select(&state.db, &id, None, 100).await?;
    Ok(axum::Json(json!({ "commands": commands })).into_response())
}

async fn show(
    State(state): State<HubState>,
    Path((id, command)): Path<(String, i64)>,
) -> ApiResult<Response> {
    known_device(&state.db, &id).await?;
    match get_one(&state.db, &id, command).await? {
        Some(found) => Ok(axum::Json(found).into_response()),
        None => Err(ApiError::not_found(
            "unknown command",
            &format!("device {id:?} has no command {command}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_convert() {
        let run: CommandRequest = serde_json::from_value(
            json!({"type": "run_workflow", "workflow": "w", "input": {"a": 1}}),
        )
        .unwrap();
        assert!(matches!(
            run.to_wire(1).unwrap(),
            Command::RunWorkflow { .. }
        ));
        let ping: CommandRequest = serde_json::from_value(json!({"type": "ping"})).unwrap();
        assert_eq!(ping.to_wire(7).unwrap(), Command::Ping { nonce: 7 });
        let cancel: CommandRequest =
            serde_json::from_value(json!({"type": "cancel_execution", "execution": "nope"}))
                .unwrap();
        assert!(cancel.to_wire(1).is_err());
        assert!(serde_json::from_value::<CommandRequest>(json!({"type": "reboot"})).is_err());
        // What is stored reads back as the same request.
        let back: CommandRequest = serde_json::from_value(run.to_json()).unwrap();
        assert_eq!(back, run);
    }
}
