//! Performing one effect for a driver: an action (with its context, observer events and
//! redaction) or a child execution, each ending as the fact its machine waits for.

use tokio_util::sync::CancellationToken;

use crate::Value;
use crate::action::{ActionContext, ActionError};

use super::super::journal::*;
use super::super::machine::ActionCommand;
use super::super::observe::{RuntimeEvent, StepEvent};
use super::Runtime;

/// Runs one action of execution `id` (of `workflow`) and turns its result into an outcome.
pub(super) async fn perform(
    runtime: &Runtime,
    id: ExecutionId,
    workflow: &str,
    command: &ActionCommand,
    cancel: CancellationToken,
) -> Outcome {
    let Some(action) = runtime.inner.actions.get(&command.action) else {
        return Outcome::Failed(ErrorInfo::new(
            "action",
            format!("unknown action {:?}", command.action),
        ));
    };
    let redactor = runtime.redactor();
    let context = ActionContext {
        execution: id.to_string(),
        workflow: workflow.to_string(),
        step: command.step.clone(),
        attempt: command.attempt,
        idempotency_key: command.idempotency_key.clone(),
        cancel,
        redactor: redactor.clone(),
    };
    let step = |phase| StepEvent {
        execution: id,
        workflow,
        step: &command.step,
        action: &command.action,
        attempt: command.attempt,
        phase,
    };
    runtime.observe(&RuntimeEvent::Step(step(None)));
    let began = std::time::Instant::now();
    let mut outcome = match action.execute(command.input.clone(), &context).await {
        Ok(output) => Outcome::Succeeded(output),
        Err(error) => Outcome::Failed(action_error(&command.action, error)),
    };
    // Before the outcome becomes a fact: the journal, the machine and replay all see it masked.
    redactor.redact_outcome(&mut outcome);
    runtime.observe(&RuntimeEvent::Step(step(Some((&outcome, began.elapsed())))));
    outcome
}

fn action_error(kind: &str, error: ActionError) -> ErrorInfo {
    let (message, status, retryable, cancelled) = match error {
        ActionError::Retryable { message, status } => (message, status, true, false),
        ActionError::Permanent { message, status } => (message, status, false, false),
        ActionError::Cancelled => ("cancelled".to_string(), None, false, true),
    };
    let mut info = ErrorInfo::new(if cancelled { "cancelled" } else { kind }, message);
    info.status = status;
    info.retryable = retryable;
    info
}

/// Starts (or, after a restart, finds) a child execution and reports the fact its parent
/// waits for.
#[allow(clippy::too_many_arguments)]
pub(super) async fn run_child(
    runtime: &Runtime,
    parent: ExecutionId,
    key: String,
    child: ExecutionId,
    workflow: String,
    version: Option<u32>,
    input: Value,
    wait: bool,
) -> Fact {
    let failed = |key: String, message: String| {
        let mut error = ErrorInfo::new("call", message);
        error.retryable = false;
        Fact::EffectFinished {
            key,
            attempt: 1,
            outcome: Outcome::Failed(error),
            at: Timestamp::now(),
        }
    };
    let existing = match runtime.inner.store.execution(child).await {
        Ok(existing) => existing,
        Err(error) => return failed(key, format!("looking up child execution: {error}")),
    };
    if existing.is_none() {
        let Some(wf) = runtime.workflow(&workflow, version) else {
            let pinned = version.map_or(String::new(), |v| format!(" version {v}"));
            return failed(key, format!("no workflow named {workflow:?}{pinned}"));
        };
        let mut event = Event::new(
            "call",
            &format!("reactor:execution/{parent}"),
            input.clone(),
        );
        event.id = format!("{parent}:{key}");
        let link = ParentLink {
            execution: parent,
            key: key.clone(),
        };
        let started =
            Box::pin(runtime.start(wf, child, event, input, Some(link), None, Vec::new())).await;
        if let Err(error) = started {
            return failed(key, format!("starting {workflow:?}: {error}"));
        }
    }
    if !wait {
        return Fact::ChildStarted {
            key,
            child,
            at: Timestamp::now(),
        };
    }
    match runtime.wait(child).await {
        Ok(record) => {
            let outcome = match record.status {
                ExecutionStatus::Succeeded => Outcome::Succeeded(record.output),
                _ => {
                    let mut error = record.error.unwrap_or_else(|| {
                        ErrorInfo::new("call", "the called workflow did not succeed")
                    });
                    error.kind = "call".into();
                    error.message = format!("{workflow}: {}", error.message);
                    Outcome::Failed(error)
                }
            };
            Fact::EffectFinished {
                key,
                attempt: 1,
                outcome,
                at: Timestamp::now(),
            }
        }
        Err(error) => failed(key, format!("waiting for {workflow:?}: {error}")),
    }
}
