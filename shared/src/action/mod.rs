//! Actions: what a step does. Each action is one file: its settings, its logic, its tests.
//!
//! Built-in actions and the decisions they share:
//! - [`log`], [`http`], [`exec`], [`file_read`], [`file_write`], [`transform`] are registered
//!   by [`builtin_registry`], configured by a [`BuiltinConfig`] (exec denies every command by
//!   default; file paths may be confined under a root; HTTP limits). `http` and the
//!   `BuiltinConfig::http` field exist only with the crate's `http` feature (on by default);
//!   [`builtin_specs`] lists `http` either way, for the validator.
//! - [`mqtt_publish`] is not in [`builtin_registry`]: it needs a broker connection
//!   ([`mqtt_publish::MqttPublisher`]) that the agent's runtime owns; the runtime registers
//!   `MqttPublishAction::new(its_publisher)` itself.
//! - `with:` arrives evaluated, as a JSON value. Each action parses it into a typed settings
//!   struct; a wrong type, a missing required key or an unknown key is a
//!   [`ActionError::Permanent`] naming the action and the setting (`http: "url" is required`).
//!   For optional settings `null` means "not given".
//! - Cancellation: actions that wait on the outside world race their work against
//!   [`ActionContext::cancel`] and return [`ActionError::Cancelled`]; dropping their future is
//!   always safe (child processes are killed on drop, HTTP connections closed).

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
    /// Masks the runtime's secret values; actions that write logs (`log`) pass text through
    /// it. Results are redacted by the runtime itself.
    pub redactor: crate::engine::Redactor,
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
    /// Whether trying again may help (only [`ActionError::Retryable`]).
    pub fn is_retryable(&self) -> bool {
        matches!(self, ActionError::Retryable { .. })
    }
    /// The HTTP status that caused it, when there was one.
    pub fn status(&self) -> Option<u16> {
        match self {
            ActionError::Retryable { status, .. } | ActionError::Permanent { status, .. } => {
                *status
            }
            ActionError::Cancelled => None,
        }
    }
    /// The message users see (`cancelled` for [`ActionError::Cancelled`]).
    pub fn message(&self) -> &str {
        match self {
            ActionError::Retryable { message, .. } | ActionError::Permanent { message, .. } => {
                message
            }
            ActionError::Cancelled => "cancelled",
        }
    }
    /// `(retryable, status, message)`, for the engine's error value (`error.retryable`,
    /// `error.status`, `error.message` in `retry.if`).
    pub fn parts(&self) -> (bool, Option<u16>, &str) {
        (self.is_retryable(), self.status(), self.message())
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
pub mod file_config;
pub mod file_read;
pub mod file_write;
#[cfg(feature = "http")]
pub mod http;
#[cfg(feature = "http")]
pub mod http_guard;
pub mod log;
pub mod mqtt_publish;
mod settings;
pub mod transform;

/// How the built-in actions are set up by a runtime.
#[derive(Clone, Debug, Default)]
pub struct BuiltinConfig {
    /// Which commands `exec` may run; the default denies all.
    pub exec: exec::ExecConfig,
    /// Where `file.read` / `file.write` may go, and their size limit.
    pub file: file_config::FileConfig,
    /// Timeouts and limits of `http`.
    #[cfg(feature = "http")]
    pub http: http::HttpConfig,
}

/// A registry holding `log`, `http`, `exec`, `file.read`, `file.write` and `transform`.
///
/// `mqtt.publish` is not included: it needs the runtime's broker connection; register
/// [`mqtt_publish::MqttPublishAction`] with it. Without the `http` feature, `http` is absent.
pub fn builtin_registry(config: BuiltinConfig) -> ActionRegistry {
    let mut registry = ActionRegistry::new();
    registry.register(Arc::new(log::LogAction));
    registry.register(Arc::new(transform::TransformAction));
    registry.register(Arc::new(exec::ExecAction::new(config.exec)));
    registry.register(Arc::new(file_read::FileReadAction::new(
        config.file.clone(),
    )));
    registry.register(Arc::new(file_write::FileWriteAction::new(config.file)));
    #[cfg(feature = "http")]
    registry.register(Arc::new(http::HttpAction::new(config.http)));
    registry
}

// The validator knows `http` even in a build without the client.
#[cfg(feature = "http")]
use http::SPEC as HTTP_SPEC;
#[cfg(not(feature = "http"))]
const HTTP_SPEC: ActionSpec = ActionSpec {
    kind: "http",
    description: "calls an HTTP endpoint (not available in this build)",
    effect: Effect::SideEffect,
    settings: &[],
};

/// The specs of the built-in actions, for the validator, the JSON Schema and the designer.
pub fn builtin_specs() -> Vec<&'static ActionSpec> {
    vec![
        &exec::SPEC,
        &file_read::SPEC,
        &file_write::SPEC,
        &HTTP_SPEC,
        &log::SPEC,
        &mqtt_publish::SPEC,
        &transform::SPEC,
    ]
}

#[cfg(test)]
pub(crate) fn test_context() -> ActionContext {
    ActionContext {
        execution: "01JTEST".into(),
        workflow: "wf".into(),
        step: "s1".into(),
        attempt: 1,
        idempotency_key: "01JTEST/s1".into(),
        cancel: CancellationToken::new(),
        redactor: crate::engine::Redactor::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_registry_has_all_but_mqtt() {
        let registry = builtin_registry(BuiltinConfig::default());
        let kinds: Vec<_> = registry.specs().iter().map(|s| s.kind).collect();
        assert_eq!(
            kinds,
            [
                "exec",
                "file.read",
                "file.write",
                "http",
                "log",
                "transform"
            ]
        );
        assert!(registry.get("mqtt.publish").is_none());
    }

    #[test]
    fn error_parts() {
        let err = ActionError::Retryable {
            message: "boom".into(),
            status: Some(503),
        };
        assert_eq!(err.parts(), (true, Some(503), "boom"));
        assert_eq!(ActionError::Cancelled.parts(), (false, None, "cancelled"));
        assert_eq!(ActionError::permanent("no").parts(), (false, None, "no"));
    }
}
