//! Actions: what a step does. Each action is one file: its settings, its logic, its tests.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use crate::Value;

/// What an action knows about the step running it.
#[derive(Clone, Debug)]
pub struct ActionContext {
    pub execution: String,
    pub workflow: String,
    /// The step's id, or its position when it has none.
    pub step: String,
    /// 1 for the first try.
    pub attempt: u32,
    /// Stable across retries and restarts of the same step; `http` sends it as
    /// `Idempotency-Key`.
    pub idempotency_key: String,
    /// Fires when the step is cancelled (timeout, a lost `parallel` race, execution cancel).
    pub cancel: CancellationToken,
}

/// Why an action failed, and whether trying again may help.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ActionError {
    /// Worth retrying: 5xx, connection errors, timeouts.
    #[error("{message}")]
    Retryable {
        message: String,
        status: Option<u16>,
    },
    /// Trying again will not help: 4xx, bad settings, a refused command.
    #[error("{message}")]
    Permanent {
        message: String,
        status: Option<u16>,
    },
    #[error("cancelled")]
    Cancelled,
}

impl ActionError {
    pub fn retryable(message: impl Into<String>) -> Self {
        ActionError::Retryable {
            message: message.into(),
            status: None,
        }
    }
    pub fn permanent(message: impl Into<String>) -> Self {
        ActionError::Permanent {
            message: message.into(),
            status: None,
        }
    }
}

/// Whether an action changes the world. Side-effecting actions get a durable journal entry
/// before they run; pure ones are journaled with the next write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    Pure,
    SideEffect,
}

/// One documented setting of an action's `with:`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SettingSpec {
    pub name: &'static str,
    pub required: bool,
    /// JSON Schema type name (`string`, `object` …); empty for any value.
    pub json_type: &'static str,
    pub description: &'static str,
}

/// What the validator, the JSON Schema and the designer know about an action type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ActionSpec {
    pub kind: &'static str,
    pub description: &'static str,
    pub effect: Effect,
    pub settings: &'static [SettingSpec],
}

/// An action implementation.
#[async_trait]
pub trait Action: Send + Sync + 'static {
    fn spec(&self) -> &'static ActionSpec;
    /// Runs the action with its evaluated `with:` settings.
    async fn execute(&self, input: Value, context: &ActionContext) -> Result<Value, ActionError>;
}

/// The actions a runtime offers, keyed by type.
#[derive(Clone, Default)]
pub struct ActionRegistry {
    actions: HashMap<&'static str, Arc<dyn Action>>,
}

impl std::fmt::Debug for ActionRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut kinds: Vec<_> = self.actions.keys().collect();
        kinds.sort();
        f.debug_struct("ActionRegistry")
            .field("actions", &kinds)
            .finish()
    }
}

impl ActionRegistry {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn register(&mut self, action: Arc<dyn Action>) {
        self.actions.insert(action.spec().kind, action);
    }
    pub fn get(&self, kind: &str) -> Option<&Arc<dyn Action>> {
        self.actions.get(kind)
    }
    pub fn specs(&self) -> Vec<&'static ActionSpec> {
        let mut specs: Vec<_> = self.actions.values().map(|a| a.spec()).collect();
        specs.sort_by_key(|s| s.kind);
        specs
    }
}

pub mod exec;
pub mod file_read;
pub mod file_write;
pub mod http;
pub mod log;
pub mod mqtt_publish;
pub mod transform;

/// The specs of the built-in actions, for the validator, the JSON Schema and the designer.
pub fn builtin_specs() -> Vec<&'static ActionSpec> {
    vec![
        &exec::SPEC,
        &file_read::SPEC,
        &file_write::SPEC,
        &http::SPEC,
        &log::SPEC,
        &mqtt_publish::SPEC,
        &transform::SPEC,
    ]
}
