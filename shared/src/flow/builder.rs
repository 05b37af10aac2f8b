//! The embedded Rust API: build a workflow in code.
//!
//! The builder writes the same document a YAML file holds (as JSON) and runs it through the
//! same decoder and validator ([`crate::dsl::Parser::decode`] over
//! [`crate::dsl::Node::from_value`]), so a built workflow is exactly as validated as a parsed
//! one and every problem is reported at once. Builder-made nodes have no source position:
//! their diagnostics and locations carry line 0, column 0, and `source` is `<builder>`.
//!
//! ```
//! use reactor_core::flow::builder::{StepBuilder, WorkflowBuilder};
//! use serde_json::json;
//!
//! let workflow = WorkflowBuilder::new("overheat-alert")
//!     .version(2)
//!     .trigger("mqtt", json!({ "topic": "sensors/+/temp", "qos": 1 }))
//!     .when("event.data.temp > 30")
//!     .step(
//!         StepBuilder::action("http")
//!             .id("notify")
//!             .with(json!({ "method": "POST", "url": "${{ secrets.SLACK_WEBHOOK }}" }))
//!             .retry(json!({ "attempts": 5, "backoff": "exponential", "delay": "500ms" })),
//!     )
//!     .step(StepBuilder::set(json!({ "alerts": "${{ vars.alerts + 1 }}" })))
//!     .var("alerts", json!(0))
//!     .build()
//!     .expect("a valid workflow");
//! assert_eq!(workflow.version, 2);
//! assert_eq!(workflow.steps.len(), 2);
//!
//! // Problems come back together, like the YAML validator's.
//! let problems = WorkflowBuilder::new("broken")
//!     .step(StepBuilder::action("htp"))
//!     .step(StepBuilder::sleep("5 m"))
//!     .build()
//!     .unwrap_err();
//! assert_eq!(problems.len(), 2);
//! ```

use crate::dsl::{Diagnostic, Node, Parser};
use crate::{Map, Value};

use super::Workflow;

/// The path builder-made workflows report in diagnostics and `Workflow::source`.
pub const BUILDER_SOURCE: &str = "<builder>";

/// Builds one workflow; see the module docs.
#[derive(Clone, Debug)]
pub struct WorkflowBuilder {
    doc: Map,
    parser: Option<Parser>,
}

impl WorkflowBuilder {
    /// A workflow of language version 1 with this name.
    pub fn new(name: &str) -> Self {
        let mut doc = Map::new();
        doc.insert("reactor".into(), Value::from(1));
        doc.insert("name".into(), Value::from(name));
        doc.insert("steps".into(), Value::Array(Vec::new()));
        WorkflowBuilder { doc, parser: None }
    }

    /// Any top-level key, as the YAML would hold it.
    pub fn key(mut self, key: &str, value: Value) -> Self {
        self.doc.insert(key.into(), value);
        self
    }

    fn push(mut self, key: &str, value: Value) -> Self {
        let list = self
            .doc
            .entry(key)
            .or_insert_with(|| Value::Array(Vec::new()));
        if let Value::Array(items) = list {
            items.push(value);
        }
        self
    }

    fn put(mut self, key: &str, name: &str, value: Value) -> Self {
        let map = self
            .doc
            .entry(key)
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(map) = map {
            map.insert(name.into(), value);
        }
        self
    }

    pub fn description(self, text: &str) -> Self {
        self.key("description", Value::from(text))
    }
    pub fn version(self, version: u32) -> Self {
        self.key("version", Value::from(version))
    }
    pub fn label(self, name: &str, value: &str) -> Self {
        self.put("labels", name, Value::from(value))
    }
    /// `agent`, `hub` or `any`.
    pub fn runs_on(self, place: &str) -> Self {
        self.key("runs_on", Value::from(place))
    }
    /// `inputs.<name>`: `json!({"type": "number", "default": 30})`.
    pub fn input(self, name: &str, spec: Value) -> Self {
        self.put("inputs", name, spec)
    }
    /// One trigger: its type and settings (`trigger("cron", json!("0 * * * * *"))`).
    pub fn trigger(self, kind: &str, settings: Value) -> Self {
        let mut item = Map::new();
        item.insert(kind.into(), settings);
        self.push("triggers", Value::Object(item))
    }
    /// Workflow-level `if`, with or without `${{ }}`.
    pub fn when(self, condition: &str) -> Self {
        self.key("if", Value::from(condition))
    }
    pub fn unless(self, condition: &str) -> Self {
        self.key("unless", Value::from(condition))
    }
    /// `json!({"limit": 4, "key": "${{ event.data.device }}", "overflow": "queue"})`.
    pub fn concurrency(self, settings: Value) -> Self {
        self.key("concurrency", settings)
    }
    /// A duration like `5m`.
    pub fn timeout(self, duration: &str) -> Self {
        self.key("timeout", Value::from(duration))
    }
    pub fn var(self, name: &str, initial: Value) -> Self {
        self.put("vars", name, initial)
    }
    pub fn step(self, step: StepBuilder) -> Self {
        self.push("steps", step.into_value())
    }
    pub fn output(self, output: Value) -> Self {
        self.key("output", output)
    }
    pub fn on_failure(self, step: StepBuilder) -> Self {
        self.push("on_failure", step.into_value())
    }
    /// Validate with this parser (its action catalog), instead of the default one.
    pub fn parser(mut self, parser: Parser) -> Self {
        self.parser = Some(parser);
        self
    }

    /// The document as JSON: what a YAML file with the same workflow holds.
    pub fn to_value(&self) -> Value {
        Value::Object(self.doc.clone())
    }

    /// Decodes and validates the document; every problem at once.
    pub fn build(self) -> Result<Workflow, Vec<Diagnostic>> {
        let node = Node::from_value(&Value::Object(self.doc));
        self.parser
            .unwrap_or_default()
            .decode(BUILDER_SOURCE, &node)
    }
}

/// Builds one step: a kind constructor, then common keys.
#[derive(Clone, Debug)]
pub struct StepBuilder {
    map: Map,
}

fn steps_value(steps: Vec<StepBuilder>) -> Value {
    Value::Array(steps.into_iter().map(StepBuilder::into_value).collect())
}

impl StepBuilder {
    /// A step of any kind: the kind key and its value, as the YAML holds them.
    pub fn kind(kind: &str, value: Value) -> Self {
        let mut map = Map::new();
        map.insert(kind.into(), value);
        StepBuilder { map }
    }
    pub fn action(kind: &str) -> Self {
        Self::kind("action", Value::from(kind))
    }
    /// `json!({"name": value, …})`.
    pub fn set(assignments: Value) -> Self {
        Self::kind("set", assignments)
    }
    /// A duration (`10s`) or an expression.
    pub fn sleep(duration: &str) -> Self {
        Self::kind("sleep", Value::from(duration))
    }
    pub fn call(workflow: &str, input: Value) -> Self {
        Self::kind(
            "call",
            serde_json::json!({ "workflow": workflow, "input": input }),
        )
    }
    pub fn emit(event_type: &str, data: Value) -> Self {
        Self::kind(
            "emit",
            serde_json::json!({ "type": event_type, "data": data }),
        )
    }
    pub fn fail(message: &str) -> Self {
        Self::kind("fail", serde_json::json!({ "message": message }))
    }
    pub fn returns(output: Value) -> Self {
        Self::kind("return", output)
    }
    pub fn group(steps: Vec<StepBuilder>) -> Self {
        Self::kind("group", steps_value(steps))
    }
    /// `items`: an expression or a list; the item is `item` unless renamed with [`Self::as_name`].
    pub fn foreach(items: Value, steps: Vec<StepBuilder>) -> Self {
        Self::kind("foreach", items).key("steps", steps_value(steps))
    }
    /// `loop: { while, max }` with its steps.
    pub fn loop_while(condition: &str, max: u32, steps: Vec<StepBuilder>) -> Self {
        Self::kind(
            "loop",
            serde_json::json!({ "while": condition, "max": max }),
        )
        .key("steps", steps_value(steps))
    }
    /// `loop: { until, max }` with its steps.
    pub fn loop_until(condition: &str, max: u32, steps: Vec<StepBuilder>) -> Self {
        Self::kind(
            "loop",
            serde_json::json!({ "until": condition, "max": max }),
        )
        .key("steps", steps_value(steps))
    }

    /// Any key, as the YAML would hold it.
    pub fn key(mut self, key: &str, value: Value) -> Self {
        self.map.insert(key.into(), value);
        self
    }
    pub fn id(self, id: &str) -> Self {
        self.key("id", Value::from(id))
    }
    pub fn name(self, name: &str) -> Self {
        self.key("name", Value::from(name))
    }
    pub fn when(self, condition: &str) -> Self {
        self.key("if", Value::from(condition))
    }
    pub fn unless(self, condition: &str) -> Self {
        self.key("unless", Value::from(condition))
    }
    /// An action's settings.
    pub fn with(self, settings: Value) -> Self {
        self.key("with", settings)
    }
    /// `json!({"attempts": 3, "backoff": "exponential", "delay": "1s"})`.
    pub fn retry(self, retry: Value) -> Self {
        self.key("retry", retry)
    }
    pub fn timeout(self, duration: &str) -> Self {
        self.key("timeout", Value::from(duration))
    }
    pub fn catch(self, steps: Vec<StepBuilder>) -> Self {
        self.key("catch", steps_value(steps))
    }
    pub fn output(self, output: Value) -> Self {
        self.key("output", output)
    }
    /// The foreach item's name (`as:`).
    pub fn as_name(self, name: &str) -> Self {
        self.key("as", Value::from(name))
    }
    /// How many foreach iterations run at once.
    pub fn concurrency(self, limit: u32) -> Self {
        self.key("concurrency", Value::from(limit))
    }

    pub fn into_value(self) -> Value {
        Value::Object(self.map)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::flow::{Location, Step, StepKind, TriggerKind};

    /// Positions differ by construction (YAML lines vs line 0) and so does `source`;
    /// everything else must be equal.
    fn strip(mut w: Workflow) -> Workflow {
        fn steps(list: &mut [Step]) {
            for step in list {
                step.location = Location::default();
                if let Some(c) = &mut step.catch {
                    steps(c);
                }
                match &mut step.kind {
                    StepKind::Switch(s) => {
                        s.cases.iter_mut().for_each(|c| steps(&mut c.steps));
                        if let Some(d) = &mut s.default {
                            steps(d);
                        }
                    }
                    StepKind::Parallel(p) => {
                        p.branches.iter_mut().for_each(|b| steps(&mut b.steps))
                    }
                    StepKind::Foreach(f) => steps(&mut f.steps),
                    StepKind::Loop(l) => steps(&mut l.steps),
                    StepKind::Group(g) => steps(g),
                    _ => {}
                }
            }
        }
        steps(&mut w.steps);
        steps(&mut w.on_failure);
        w.triggers
            .iter_mut()
            .for_each(|t| t.location = Location::default());
        w.source = String::new();
        w
    }

    #[test]
    fn builder_equals_its_yaml_twin() {
        let yaml = r#"
reactor: 1
name: overheat-alert
description: Tell the on-call channel when a sensor runs hot
version: 3
labels: { team: ops }
inputs:
  threshold: { type: number, default: 30 }
triggers:
  - mqtt: { topic: "sensors/+/temp", qos: 1 }
  - cron: "*/5 * * * *"
if: ${{ event.data.temp > inputs.threshold }}
concurrency: { limit: 4, key: "${{ event.data.device }}", overflow: queue }
timeout: 5m
vars: { alerts: 0 }
steps:
  - id: notify
    action: http
    with:
      method: POST
      url: "${{ secrets.SLACK_WEBHOOK }}"
      json: { text: "Sensor ${{ event.data.device }} at ${{ event.data.temp }}" }
    retry: { attempts: 5, backoff: exponential, delay: 500ms, max_delay: 30s }
    catch:
      - action: log
        with: { level: error, message: "${{ error.message }}" }
  - foreach: "${{ event.data.readings }}"
    as: reading
    steps:
      - set: { last: "${{ reading }}" }
  - id: count
    set: { alerts: "${{ vars.alerts + 1 }}" }
output:
  alerts: ${{ vars.alerts }}
on_failure:
  - action: log
    with: { message: "failed: ${{ error.message }}" }
"#;
        let parsed = crate::dsl::parse_workflow("twin.yaml", yaml).unwrap();
        let built = WorkflowBuilder::new("overheat-alert")
            .description("Tell the on-call channel when a sensor runs hot")
            .version(3)
            .label("team", "ops")
            .input("threshold", json!({"type": "number", "default": 30}))
            .trigger("mqtt", json!({"topic": "sensors/+/temp", "qos": 1}))
            .trigger("cron", json!("*/5 * * * *"))
            .when("${{ event.data.temp > inputs.threshold }}")
            .concurrency(json!({"limit": 4, "key": "${{ event.data.device }}", "overflow": "queue"}))
            .timeout("5m")
            .var("alerts", json!(0))
            .step(
                StepBuilder::action("http")
                    .id("notify")
                    .with(json!({
                        "method": "POST",
                        "url": "${{ secrets.SLACK_WEBHOOK }}",
                        "json": {"text": "Sensor ${{ event.data.device }} at ${{ event.data.temp }}"}
                    }))
                    .retry(json!({"attempts": 5, "backoff": "exponential", "delay": "500ms", "max_delay": "30s"}))
                    .catch(vec![StepBuilder::action("log").with(
                        json!({"level": "error", "message": "${{ error.message }}"}),
                    )]),
            )
            .step(
                StepBuilder::foreach(
                    json!("${{ event.data.readings }}"),
                    vec![StepBuilder::set(json!({"last": "${{ reading }}"}))],
                )
                .as_name("reading"),
            )
            .step(StepBuilder::set(json!({"alerts": "${{ vars.alerts + 1 }}"})).id("count"))
            .output(json!({"alerts": "${{ vars.alerts }}"}))
            .on_failure(
                StepBuilder::action("log").with(json!({"message": "failed: ${{ error.message }}"})),
            )
            .build()
            .unwrap();
        assert_eq!(built.source, BUILDER_SOURCE);
        assert!(
            matches!(&built.triggers[1].kind, TriggerKind::Cron(c) if c.normalized == "0 */5 * * * *")
        );
        assert_eq!(strip(built), strip(parsed));
    }

    #[test]
    fn builder_reports_every_problem() {
        let problems = WorkflowBuilder::new("x")
            .runs_on("edge")
            .step(StepBuilder::action("log").with(json!({"mesage": "hi"})))
            .step(StepBuilder::set(json!({"a": "${{ steps.nope.output }}"})))
            .build()
            .unwrap_err();
        let messages: Vec<&str> = problems.iter().map(|d| d.message.as_str()).collect();
        assert_eq!(messages.len(), 4, "{messages:#?}");
        assert!(messages.contains(&"unknown setting \"mesage\" for action \"log\""));
        assert!(messages.contains(&"unknown step id \"nope\" in steps.nope"));
        assert!(
            problems
                .iter()
                .all(|d| d.path == BUILDER_SOURCE && d.line == 0)
        );
    }
}
