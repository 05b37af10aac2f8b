//! `POST /api/v1/executions/{id}/retry`: a new execution that re-uses the failed one's
//! finished step results up to the failed step, and runs from there.
//!
//! What "retry" does, precisely:
//! 1. Only a `failed` execution can be retried (409 otherwise), with the workflow version it
//!    ran (loaded from the database when the runtime no longer has it).
//! 2. The failed step is the execution's `error.step` (a step id or path). Replaying the old
//!    journal tells which effects belong to it; the new journal is the old one up to (not
//!    including) the first fact that started an effect of that step. `CancelRequested` facts
//!    are left out. Without a failed step (an `if` expression failed, say), the new journal
//!    is only the start fact: the whole workflow runs again with the same event and inputs.
//! 3. The new execution gets a new id and is recorded with that journal in one durable
//!    write, then resumed exactly like after a restart: steps whose results are in the
//!    journal are not performed again; the failed step runs from its first attempt, and so
//!    does everything after it (including effects of parallel branches that were journaled
//!    after the failed step started).
//! 4. The original execution is left as it was. The response is 202 `{"execution": new id,
//!    "retry_of": old id}`.
//!
//! Retry is refused (409) for workflows with a `concurrency` setting: queued executions of
//! such workflows are admitted by the runtime's slot queue, which a resumed execution would
//! bypass.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use reactor_core::engine::{
    Command, ExecutionId, ExecutionRecord, ExecutionStatus, Fact, Machine, Timestamp,
};
use reactor_core::store::StoreWrite;
use serde_json::json;

use super::executions::{parse_id, record, starting};
use super::problem::{ApiError, ApiResult};
use crate::server::HubState;

/// The step label (id or path) an effect command belongs to.
fn step_label(command: &Command) -> Option<String> {
    match command {
        Command::RunAction(action) => Some(action.step.clone()),
        Command::StartChild { key, .. } | Command::Emit { key, .. } => Some(
            key.rsplit_once('@')
                .map_or(key.as_str(), |(path, _)| path)
                .to_string(),
        ),
        Command::StartTimer { .. } | Command::AwaitEvent { .. } | Command::Cancel { .. } => None,
    }
}

/// The prefix of `journal` to keep for a retry of `failed_step` (see the module docs).
pub fn retry_journal(
    machine_for: impl FnOnce(&Fact) -> Machine,
    journal: &[Fact],
    failed_step: Option<&str>,
) -> Vec<Fact> {
    let Some((first, rest)) = journal.split_first() else {
        return Vec::new();
    };
    let mut kept = vec![first.clone()];
    let Some(failed_step) = failed_step else {
        return kept;
    };
    let mut machine = machine_for(first);
    let mut steps = std::collections::HashMap::new();
    let learn = |machine: &mut Machine, steps: &mut std::collections::HashMap<String, String>| {
        for command in machine.take_commands() {
            if let Some(step) = step_label(&command) {
                steps.insert(command.key().to_string(), step);
            }
        }
    };
    learn(&mut machine, &mut steps);
    for fact in rest {
        if let Fact::EffectStarted { key, .. } = fact
            && steps.get(key).is_some_and(|step| step == failed_step)
        {
            break;
        }
        machine.apply(fact);
        learn(&mut machine, &mut steps);
        if !matches!(fact, Fact::CancelRequested { .. }) {
            kept.push(fact.clone());
        }
    }
    kept
}

/// Loads a stored version of a workflow into the runtime's catalog (not made active), for
/// a retry of an execution that ran on it.
async fn load_version(
    state: &HubState,
    name: &str,
    version: u32,
) -> ApiResult<Arc<reactor_core::flow::Workflow>> {
    let gone = || {
        ApiError::conflict(
            "version not available",
            &format!("workflow {name} version {version} is not stored on this hub"),
        )
    };
    let stored = crate::db::workflows::version(&state.db, name, version)
        .await?
        .ok_or_else(gone)?;
    let source = format!("db:{name}@v{version}");
    let mut workflow =
        reactor_core::dsl::parse_workflow(&source, &stored.source).map_err(|_| {
            ApiError::conflict(
                "version no longer valid",
                &format!("workflow {name} version {version} no longer validates on this hub"),
            )
        })?;
    workflow.version = version;
    let runtime = state.workflows.runtime();
    runtime.load(workflow);
    runtime.workflow(name, Some(version)).ok_or_else(gone)
}

/// `POST /api/v1/executions/{id}/retry`
pub async fn retry(State(state): State<HubState>, Path(id): Path<String>) -> ApiResult<Response> {
    if !state.accepting() {
        return Err(starting());
    }
    let id = parse_id(&id)?;
    let old = record(&state, id).await?;
    if old.status != ExecutionStatus::Failed {
        return Err(ApiError::conflict(
            "not failed",
            &format!(
                "execution {id} is {}; only failed executions can be retried",
                old.status.as_str()
            ),
        ));
    }
    let runtime = state.workflows.runtime();
    let workflow = match runtime.workflow(&old.workflow, Some(old.version)) {
        Some(workflow) => workflow,
        None => load_version(&state, &old.workflow, old.version).await?,
    };
    if workflow.concurrency.is_some() {
        return Err(ApiError::conflict(
            "retry not supported",
            "workflows with a concurrency setting cannot be retried from a step; run them again",
        ));
    }
    let journal = runtime.store().journal(id).await?;
    let environment = runtime.environment().clone();
    let new_id = ExecutionId::new();
    let failed_step = old.error.as_ref().and_then(|e| e.step.clone());
    let kept = {
        let workflow = Arc::clone(&workflow);
        retry_journal(
            |first| Machine::start(workflow, new_id, first, environment),
            &journal,
            failed_step.as_deref(),
        )
    };
    let Some((started, rest)) = kept.split_first() else {
        return Err(ApiError::internal(format!(
            "execution {id} has an empty journal"
        )));
    };
    let record = ExecutionRecord {
        id: new_id,
        workflow: old.workflow.clone(),
        version: old.version,
        status: ExecutionStatus::Running,
        created_at: Timestamp::now(),
        finished_at: None,
        output: serde_json::Value::Null,
        error: None,
        steps: Vec::new(),
        parent: None,
        concurrency_key: None,
    };
    let mut batch = vec![StoreWrite::Create {
        record,
        started: started.clone(),
    }];
    for (index, fact) in rest.iter().enumerate() {
        batch.push(StoreWrite::Append {
            id: new_id,
            seq: u32::try_from(index + 1).unwrap_or(u32::MAX),
            fact: fact.clone(),
        });
    }
    runtime.store().write(batch).await?;
    // Recovery resumes every unfinished execution not already running here: the new one.
    runtime.recover().await?;
    tracing::info!(execution = %new_id, retry_of = %id, step = ?failed_step, reused = rest.len(), "retry started");
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(json!({
            "execution": new_id.to_string(),
            "retry_of": id.to_string(),
            "from_step": failed_step,
        })),
    )
        .into_response())
}
