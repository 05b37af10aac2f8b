//! The names expressions see while an execution runs.
//!
//! [`Globals`] hold what every expression of an execution sees (`event`, `inputs`, `vars`,
//! `steps`, `execution`, `env`, `secrets`, `device`); [`Locals`] chain the names a block binds
//! (`item`/`index` in `foreach`, `error` in `catch`, `branches` in a join, `result` in a step's
//! `output`), innermost first.

use std::sync::Arc;

use crate::expr::Scope;
use crate::{Map, Value};

/// What the runtime lends an execution and does not journal: allow-listed environment
/// variables, secrets resolved at run time, and the device identity.
#[derive(Clone, Debug, Default)]
pub struct Environment {
    pub env: Value,
    pub secrets: Value,
    pub device: Value,
}

impl Environment {
    pub fn empty() -> Environment {
        Environment {
            env: Value::Object(Map::new()),
            secrets: Value::Object(Map::new()),
            device: Value::Null,
        }
    }

    /// The environment an execution started by `event` sees. A runtime without a device
    /// identity of its own (the hub) lends `device` from the event instead when the event
    /// came from a device: `meta.device` (its id) and `meta.device_labels` become
    /// `device.id` and `device.labels`. Otherwise the environment as it is.
    pub fn for_event(self: &Arc<Self>, event: &crate::engine::Event) -> Arc<Environment> {
        if !self.device.is_null() {
            return self.clone();
        }
        let Some(id) = event.meta.get("device").and_then(Value::as_str) else {
            return self.clone();
        };
        let labels = match event.meta.get("device_labels") {
            Some(labels @ Value::Object(_)) => labels.clone(),
            _ => Value::Object(Map::new()),
        };
        let mut environment = Environment::clone(self);
        environment.device = serde_json::json!({ "id": id, "labels": labels });
        Arc::new(environment)
    }
}

/// Execution-wide names.
#[derive(Debug)]
pub(crate) struct Globals {
    pub event: Value,
    pub inputs: Value,
    pub vars: Value,
    pub steps: Value,
    pub execution: Value,
    pub environment: Arc<Environment>,
}

/// A chain of block-local names, innermost first. Cheap to extend and share.
#[derive(Clone, Debug, Default)]
pub(crate) struct Locals(Option<Arc<LocalFrame>>);

#[derive(Debug)]
struct LocalFrame {
    name: String,
    value: Value,
    parent: Locals,
}

impl Locals {
    pub fn with(&self, name: impl Into<String>, value: Value) -> Locals {
        Locals(Some(Arc::new(LocalFrame {
            name: name.into(),
            value,
            parent: self.clone(),
        })))
    }

    fn get(&self, name: &str) -> Option<&Value> {
        let mut frame = self.0.as_deref();
        while let Some(f) = frame {
            if f.name == name {
                return Some(&f.value);
            }
            frame = f.parent.0.as_deref();
        }
        None
    }
}

/// Globals and locals seen together.
pub(crate) struct View<'a> {
    pub globals: &'a Globals,
    pub locals: &'a Locals,
}

impl Scope for View<'_> {
    fn lookup(&self, name: &str) -> Option<&Value> {
        if let Some(value) = self.locals.get(name) {
            return Some(value);
        }
        let g = self.globals;
        match name {
            "event" => Some(&g.event),
            "inputs" => Some(&g.inputs),
            "vars" => Some(&g.vars),
            "steps" => Some(&g.steps),
            "execution" => Some(&g.execution),
            "env" => Some(&g.environment.env),
            "secrets" => Some(&g.environment.secrets),
            "device" => Some(&g.environment.device),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::engine::Event;

    #[test]
    fn device_comes_from_the_event_only_without_an_own_identity() {
        let mut event = Event::new("reading", "sensor", json!({}));
        event.meta = json!({ "device": "pump-1", "device_labels": { "site": "north" } });
        let hub = Arc::new(Environment::empty());
        assert_eq!(
            hub.for_event(&event).device,
            json!({ "id": "pump-1", "labels": { "site": "north" } })
        );
        assert!(
            hub.for_event(&Event::new("x", "y", json!({})))
                .device
                .is_null()
        );
        let mut agent = Environment::empty();
        agent.device = json!({ "id": "self", "labels": {} });
        let agent = Arc::new(agent);
        assert_eq!(agent.for_event(&event).device["id"], "self");
    }
}
