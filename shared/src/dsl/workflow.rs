//! The top level of a workflow file.

use std::collections::BTreeMap;

use crate::Value;
use crate::flow::{Concurrency, InputSpec, InputType, Overflow, RunsOn, Workflow, WorkflowName};

use super::decode::{Decoder, Scope};
use super::fields::{CONCURRENCY, INPUT, TRIGGERS, WORKFLOW};
use super::yaml::Node;

const INPUT_TYPES: &[&str] = &["string", "number", "integer", "boolean", "object", "array"];

impl Decoder<'_> {
    /// Decodes a whole document; `None` when anything was wrong (see `problems`).
    pub fn workflow(&mut self, root: &Node, source: &str) -> Option<Workflow> {
        if root.is_null() {
            self.error(
                root.location,
                "the file is empty; a workflow needs reactor, name and steps",
            );
            return None;
        }
        let fields = self.fields(root, &WORKFLOW)?;
        let top = Scope::default();

        if let Some(node) = fields.get("reactor")
            && let Some(version) = match &node.kind {
                super::yaml::NodeKind::Scalar {
                    value: Value::Number(n),
                    ..
                } => n.as_i64(),
                _ => None,
            }
            .or_else(|| {
                self.error(
                    node.location,
                    format!(
                        "reactor must be the language version 1, found {}",
                        node.describe()
                    ),
                );
                None
            })
            && version != 1
        {
            self.error_help(
                node.location,
                format!("unsupported language version {version}; this engine reads version 1"),
                Some("write reactor: 1".into()),
            );
        }

        let name = fields.get("name").and_then(|node| {
            let text = self.string(node, "name")?;
            WorkflowName::new(&text)
                .map_err(|e| self.error(node.location, e.0))
                .ok()
        });
        let description = fields
            .get("description")
            .and_then(|n| self.string(n, "description"));
        let version = match fields.get("version") {
            Some(n) => self.u32(n, "version", 1),
            None => Some(1),
        };
        let labels = fields
            .get("labels")
            .map(|n| self.labels(n))
            .unwrap_or_default();
        let runs_on = match fields.get("runs_on") {
            Some(n) => match self.choice(n, "runs_on", &["agent", "hub", "any"]) {
                Some("agent") => RunsOn::Agent,
                Some("hub") => RunsOn::Hub,
                _ => RunsOn::Any,
            },
            None => RunsOn::Any,
        };
        let inputs = fields
            .get("inputs")
            .map(|n| self.inputs(n))
            .unwrap_or_default();
        let triggers = fields
            .get("triggers")
            .map(|n| self.triggers(n))
            .unwrap_or_default();
        if runs_on == RunsOn::Agent {
            for trigger in &triggers {
                let name = trigger.type_name();
                if TRIGGERS.iter().any(|(t, _, hub)| *t == name && *hub) {
                    self.error_help(
                        trigger.location,
                        format!("the {name} trigger runs only on the hub, but runs_on is agent"),
                        Some("use runs_on: hub or any".into()),
                    );
                }
            }
        }
        let when = fields.get("if").and_then(|n| self.condition(n, "if", &top));
        let unless = fields
            .get("unless")
            .and_then(|n| self.condition(n, "unless", &top));
        let concurrency = fields
            .get("concurrency")
            .and_then(|n| self.concurrency(n, &top));
        let timeout = fields
            .get("timeout")
            .and_then(|n| self.duration(n, "timeout"));
        let vars = fields
            .get("vars")
            .and_then(|n| self.named_templates(n, "vars", &top))
            .unwrap_or_default();
        let steps = fields
            .get("steps")
            .map(|n| self.steps(n, &top))
            .unwrap_or_default();
        let output = fields.get("output").and_then(|n| self.template(n, &top));
        let on_failure = fields
            .get("on_failure")
            .map(|n| self.steps(n, &top.with_error()))
            .unwrap_or_default();

        if !self.problems.is_empty() {
            return None;
        }
        Some(Workflow {
            name: name?,
            description,
            version: version?,
            labels,
            runs_on,
            inputs,
            triggers,
            when,
            unless,
            concurrency,
            timeout,
            vars,
            steps,
            output,
            on_failure,
            source: source.to_string(),
        })
    }

    fn labels(&mut self, node: &Node) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let Some(entries) = node.as_map() else {
            self.error(
                node.location,
                format!(
                    "labels must be a map of names to text, found {}",
                    node.describe()
                ),
            );
            return out;
        };
        for (key, value) in entries {
            if let Some(text) = self.text(value, "a label") {
                out.insert(key.name.clone(), text);
            }
        }
        out
    }

    fn inputs(&mut self, node: &Node) -> Vec<InputSpec> {
        let mut out = Vec::new();
        let Some(entries) = node.as_map() else {
            self.error(
                node.location,
                format!(
                    "inputs must be a map of names to settings, found {}",
                    node.describe()
                ),
            );
            return out;
        };
        for (key, value) in entries {
            self.input_names.push(key.name.clone());
            // `name: {}` and `name:` both declare a required string input.
            let fields = if value.is_null() {
                None
            } else {
                match self.fields(value, &INPUT) {
                    Some(f) => Some(f),
                    None => continue,
                }
            };
            let get = |name: &str| fields.and_then(|f| f.get(name));
            let default = get("default").map(Node::to_value);
            let ty = match get("type") {
                Some(n) => match self.choice(n, "input type", INPUT_TYPES) {
                    Some(t) => input_type(t),
                    None => continue,
                },
                None => match &default {
                    Some(Value::Bool(_)) => InputType::Boolean,
                    Some(Value::Number(n)) if n.is_f64() => InputType::Number,
                    Some(Value::Number(_)) => InputType::Integer,
                    Some(Value::Array(_)) => InputType::Array,
                    Some(Value::Object(_)) => InputType::Object,
                    _ => InputType::String,
                },
            };
            if let (Some(value), Some(node)) = (&default, get("default"))
                && !ty.accepts(value)
            {
                self.error(
                    node.location,
                    format!(
                        "the default of input {:?} must be {} {}, found {}",
                        key.name,
                        if ty == InputType::Integer
                            || ty == InputType::Object
                            || ty == InputType::Array
                        {
                            "an"
                        } else {
                            "a"
                        },
                        ty.name(),
                        node.describe()
                    ),
                );
            }
            let description = get("description").and_then(|n| self.string(n, "description"));
            out.push(InputSpec {
                name: key.name.clone(),
                ty,
                default,
                description,
            });
        }
        out
    }

    fn concurrency(&mut self, node: &Node, scope: &Scope) -> Option<Concurrency> {
        let fields = self.fields(node, &CONCURRENCY)?;
        let limit = fields
            .get("limit")
            .and_then(|n| self.u32(n, "concurrency limit", 1));
        let key = fields.get("key").and_then(|n| self.template(n, scope));
        let overflow = match fields.get("overflow") {
            Some(n) => match self.choice(n, "overflow", &["queue", "drop", "replace"])? {
                "drop" => Overflow::Drop,
                "replace" => Overflow::Replace,
                _ => Overflow::Queue,
            },
            None => Overflow::Queue,
        };
        Some(Concurrency {
            limit: limit?,
            key,
            overflow,
        })
    }
}

fn input_type(name: &str) -> InputType {
    match name {
        "number" => InputType::Number,
        "integer" => InputType::Integer,
        "boolean" => InputType::Boolean,
        "object" => InputType::Object,
        "array" => InputType::Array,
        _ => InputType::String,
    }
}
