//! The per-step trace of an execution, rebuilt from its journal.
//!
//! The journal records when each effect started and ended and what it returned, but not the
//! input an action was given: the state machine computes that from the facts. So the trace
//! replays the journal into a fresh [`Machine`] (pure, no I/O — the same replay recovery
//! does) and pairs each effect's command (step, action, input) with its facts (start, end,
//! outcome). Secret values are replaced by `***` wherever they appear in inputs, outputs and
//! errors, by the runtime's [`Redactor`] (the same masking the engine applies to what it
//! records, encoded forms included).

use std::collections::HashMap;
use std::sync::Arc;

use reactor_core::Value;
use reactor_core::engine::{
    Command, Environment, ExecutionId, Fact, Machine, Outcome, Redactor, Timestamp,
};
use reactor_core::flow::Workflow;
use serde_json::json;

/// One effect of the trace, as it accumulates over the replay.
#[derive(Debug, Default)]
struct Entry {
    step: String,
    kind: &'static str,
    action: Option<String>,
    input: Value,
    attempts: u32,
    started_at: Option<Timestamp>,
    finished_at: Option<Timestamp>,
    output: Value,
    error: Option<Value>,
    order: usize,
}

/// Where a command's key belongs: its step label (id or path) and what it is.
fn describe(command: &Command) -> Option<(String, &'static str, Option<String>, Value)> {
    match command {
        Command::RunAction(action) => Some((
            action.step.clone(),
            "action",
            Some(action.action.clone()),
            action.input.clone(),
        )),
        Command::StartChild {
            key,
            workflow,
            input,
            ..
        } => Some((step_of(key), "call", Some(workflow.clone()), input.clone())),
        Command::Emit { key, event, .. } => Some((step_of(key), "emit", None, event.to_value())),
        Command::StartTimer { .. } | Command::AwaitEvent { .. } | Command::Cancel { .. } => None,
    }
}

/// An effect key is `path@attempt`; the step is the path.
fn step_of(key: &str) -> String {
    key.rsplit_once('@')
        .map_or(key, |(path, _)| path)
        .to_string()
}

/// Replays `journal` and returns, per step that performed an effect (actions, calls, emits),
/// its start and end, attempts, input and output — redacted with `environment`'s secrets.
pub fn build(
    workflow: Arc<Workflow>,
    id: ExecutionId,
    journal: &[Fact],
    environment: Arc<Environment>,
) -> Vec<Value> {
    let redactor = Redactor::from_secrets(&environment.secrets);
    let Some((first, rest)) = journal.split_first() else {
        return Vec::new();
    };
    if !matches!(first, Fact::Started { .. }) {
        return Vec::new();
    }
    let mut machine = Machine::start(workflow, id, first, environment);
    // key → entry index; steps group attempts (keys differ by `@attempt`).
    let mut by_key: HashMap<String, usize> = HashMap::new();
    let mut by_step: HashMap<String, usize> = HashMap::new();
    let mut entries: Vec<Entry> = Vec::new();
    let mut learn =
        |machine: &mut Machine, by_key: &mut HashMap<String, usize>, entries: &mut Vec<Entry>| {
            for command in machine.take_commands() {
                let Some((step, kind, action, input)) = describe(&command) else {
                    continue;
                };
                let index = *by_step.entry(step.clone()).or_insert_with(|| {
                    entries.push(Entry {
                        step,
                        kind,
                        order: entries.len(),
                        ..Entry::default()
                    });
                    entries.len() - 1
                });
                let entry = &mut entries[index];
                entry.action = action;
                entry.input = input;
                by_key.insert(command.key().to_string(), index);
            }
        };
    learn(&mut machine, &mut by_key, &mut entries);
    for fact in rest {
        match fact {
            Fact::EffectStarted { key, attempt, at } => {
                if let Some(&index) = by_key.get(key) {
                    let entry = &mut entries[index];
                    entry.started_at.get_or_insert(*at);
                    entry.attempts = entry.attempts.max(*attempt);
                    entry.finished_at = None;
                }
            }
            Fact::EffectFinished {
                key, outcome, at, ..
            } => {
                if let Some(&index) = by_key.get(key) {
                    let entry = &mut entries[index];
                    entry.finished_at = Some(*at);
                    match outcome {
                        Outcome::Succeeded(value) => {
                            entry.output = value.clone();
                            entry.error = None;
                        }
                        Outcome::Failed(error) => {
                            entry.output = Value::Null;
                            entry.error = Some(error.to_value());
                        }
                    }
                }
            }
            _ => {}
        }
        machine.apply(fact);
        learn(&mut machine, &mut by_key, &mut entries);
    }
    entries.sort_by_key(|e| (e.started_at.is_none(), e.started_at, e.order));
    entries
        .into_iter()
        .map(|entry| {
            let status = match (&entry.started_at, &entry.finished_at, &entry.error) {
                (None, _, _) => "pending",
                (Some(_), None, _) => "running",
                (Some(_), Some(_), Some(_)) => "failed",
                (Some(_), Some(_), None) => "succeeded",
            };
            let mut value = json!({
                "step": entry.step,
                "kind": entry.kind,
                "action": entry.action,
                "status": status,
                "attempts": entry.attempts,
                "started_at": entry.started_at.map(Timestamp::to_rfc3339),
                "finished_at": entry.finished_at.map(Timestamp::to_rfc3339),
                "input": entry.input,
                "output": entry.output,
                "error": entry.error,
            });
            redactor.redact_value(&mut value);
            value
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_of_strips_the_attempt() {
        assert_eq!(step_of("steps.0@2"), "steps.0");
        assert_eq!(step_of("plain"), "plain");
    }
}
