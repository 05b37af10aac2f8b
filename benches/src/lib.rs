//! Workloads shared by the criterion benches in `benches/benches/` and the `soak` load script.
//!
//! - [`PURE_FIVE`]: five pure steps (transform, set, switch, set, transform) — the engine
//!   budgets' reference workflow; one journal write per execution.
//! - [`GUARDED_TWO`]: workflow-level `if`, two pure steps and an `output` map.
//! - [`MIXED_FIVE`]: five steps, two of them side-effecting ([`NoopAction`]) — three journal
//!   writes per execution (start + first effect's start, its end + the second's start, its
//!   end + the final record).
//! - [`generated_workflow`]: a realistic workflow of N top-level steps for the DSL bench.

use std::fmt::Write as _;
use std::sync::Arc;

use async_trait::async_trait;
use reactor_core::action::{
    Action, ActionContext, ActionError, ActionSpec, Effect, SettingSpec, builtin_registry,
    builtin_specs,
};
use reactor_core::dsl::Parser;
use reactor_core::engine::{Environment, Event, Runtime, RuntimeConfig};
use reactor_core::flow::Workflow;
use reactor_core::store::Store;
use serde_json::{Value, json};

/// Five pure steps with expressions; no side effect.
pub const PURE_FIVE: &str = r#"
reactor: 1
name: pure-five
steps:
  - id: reading
    action: transform
    with: { value: "${{ event.data.temp * 2 }}" }
  - id: remember
    set: { doubled: "${{ steps.reading.output }}" }
  - id: level
    switch:
      - when: ${{ vars.doubled > 50 }}
        steps:
          - action: transform
            with: { value: hot }
      - default:
          - action: transform
            with: { value: cold }
  - id: count
    set: { n: "${{ vars.doubled + 1 }}" }
  - id: summary
    action: transform
    with:
      value: { device: "${{ event.data.device }}", level: "${{ steps.level.output }}", n: "${{ vars.n }}" }
"#;

/// A workflow-level `if`, two pure steps and an output.
pub const GUARDED_TWO: &str = r#"
reactor: 1
name: guarded-two
if: ${{ event.data.temp > 0 }}
steps:
  - id: reading
    action: transform
    with: { value: "${{ event.data.temp * 2 }}" }
  - id: remember
    set: { doubled: "${{ steps.reading.output }}" }
output:
  device: ${{ event.data.device }}
  doubled: ${{ vars.doubled }}
"#;

/// Five steps, two of them side-effecting (`noop`).
pub const MIXED_FIVE: &str = r#"
reactor: 1
name: mixed-five
steps:
  - id: reading
    action: transform
    with: { value: "${{ event.data.temp * 2 }}" }
  - id: notify
    action: noop
    with: { device: "${{ event.data.device }}", value: "${{ steps.reading.output }}" }
  - id: remember
    set: { doubled: "${{ steps.reading.output }}" }
  - id: store
    action: noop
    with: { value: "${{ vars.doubled }}" }
  - id: summary
    action: transform
    with: { value: { device: "${{ event.data.device }}", stored: "${{ steps.store.output.ok }}" } }
"#;

static NOOP_SPEC: ActionSpec = ActionSpec {
    kind: "noop",
    description: "a side effect that returns at once (benchmarks)",
    effect: Effect::SideEffect,
    settings: &[
        SettingSpec {
            name: "device",
            required: false,
            json_type: "string",
            description: "ignored",
        },
        SettingSpec {
            name: "value",
            required: false,
            json_type: "",
            description: "ignored",
        },
    ],
};

/// A side-effecting action that does nothing and returns immediately: what remains is the
/// engine's own cost of a side effect (journal before and after, task spawn, inbox).
#[derive(Clone, Copy, Debug, Default)]
pub struct NoopAction;

#[async_trait]
impl Action for NoopAction {
    fn spec(&self) -> &'static ActionSpec {
        &NOOP_SPEC
    }

    async fn execute(&self, _input: Value, _context: &ActionContext) -> Result<Value, ActionError> {
        Ok(json!({ "ok": true }))
    }
}

/// A parser that knows the built-in actions and `noop`.
pub fn parser() -> Parser {
    let mut specs = builtin_specs();
    specs.push(&NOOP_SPEC);
    Parser::new().with_actions(specs)
}

/// Parses one of this module's workflows.
///
/// # Panics
/// If the text does not validate (a broken benchmark).
pub fn workflow(text: &str) -> Workflow {
    parser()
        .parse("bench.yaml", text)
        .unwrap_or_else(|problems| panic!("benchmark workflow is invalid: {problems:?}"))
}

/// A runtime over `store` with the built-in actions, `noop`, and `workflows` loaded.
pub fn runtime(store: Arc<dyn Store>, config: RuntimeConfig, workflows: &[&str]) -> Runtime {
    let mut actions = builtin_registry(Default::default());
    actions.register(Arc::new(NoopAction));
    let runtime = Runtime::new(store, actions, Environment::empty(), config);
    for text in workflows {
        runtime.load(workflow(text));
    }
    runtime
}

/// The event every benchmark execution starts from.
pub fn event(n: u64) -> Event {
    Event::new(
        "sensor.reading",
        "bench",
        json!({ "device": format!("dev-{}", n % 64), "temp": 20 + (n % 20) }),
    )
}

/// A realistic workflow of `steps` top-level steps: actions with templated `with`, `set`,
/// `switch`, `parallel`, `foreach`, `retry`, `timeout`, `if`/`unless`, `group`, `catch`,
/// `output` and `emit`, referring to earlier steps' outputs.
pub fn generated_workflow(steps: usize) -> String {
    let mut y = String::from(
        "reactor: 1\nname: generated\ndescription: a generated benchmark workflow\nversion: 7\n\
         labels: { team: ops, site: plant-3 }\ninputs:\n  threshold: { type: number, default: 30 }\n  \
         url: { type: string, default: \"http://127.0.0.1:9/hook\" }\n\
         triggers:\n  - mqtt: { topic: \"sensors/+/temp\", qos: 1 }\n  - http: { path: /hooks/temp, method: POST }\n\
         if: ${{ event.data.temp > inputs.threshold }}\nunless: ${{ event.data.maintenance == true }}\n\
         concurrency: { limit: 4, key: \"${{ event.data.device }}\", overflow: queue }\ntimeout: 5m\n\
         vars: { alerts: 0, seen: [] }\nsteps:\n",
    );
    for i in 0..steps {
        let prev = if i == 0 {
            "event.data.temp".to_string()
        } else {
            format!("steps.s{}.status", i - 1)
        };
        match i % 10 {
            0 => write!(
                y,
                "  - id: s{i}\n    action: http\n    with:\n      method: POST\n      url: \"${{{{ inputs.url }}}}/s{i}\"\n      \
                 headers: {{ X-Device: \"${{{{ event.data.device }}}}\" }}\n      \
                 json: {{ text: \"Sensor ${{{{ event.data.device }}}} at ${{{{ event.data.temp }}}}°C\", step: {i} }}\n    \
                 retry: {{ attempts: 5, backoff: exponential, delay: 500ms, max_delay: 30s, jitter: true }}\n    timeout: 10s\n"
            ),
            1 => write!(
                y,
                "  - id: s{i}\n    if: ${{{{ {prev} != \"failed\" }}}}\n    set: {{ alerts: \"${{{{ vars.alerts + 1 }}}}\", last: \"${{{{ event.data.device }}}}\" }}\n"
            ),
            2 => write!(
                y,
                "  - id: s{i}\n    switch:\n      - when: ${{{{ vars.alerts > 3 && event.data.temp > 40.5 }}}}\n        steps:\n          \
                 - action: log\n            with: {{ level: warn, message: \"hot ${{{{ event.data.device }}}}\" }}\n      \
                 - when: ${{{{ event.data.device.startsWith(\"pump\") }}}}\n        steps:\n          - action: transform\n            with: {{ value: pump }}\n      \
                 - default:\n          - action: transform\n            with: {{ value: \"${{{{ size(vars.seen) }}}}\" }}\n"
            ),
            3 => write!(
                y,
                "  - id: s{i}\n    parallel:\n      join: all\n      branches:\n        left:\n          - action: transform\n            \
                 with: {{ value: \"${{{{ event.data.temp * 2 }}}}\" }}\n        right:\n          - action: log\n            \
                 with: {{ level: info, message: \"right ${{{{ execution.id }}}}\" }}\n          - action: transform\n            with: {{ value: [1, 2, 3] }}\n"
            ),
            4 => write!(
                y,
                "  - id: s{i}\n    foreach: ${{{{ [1, 2, 3, event.data.temp] }}}}\n    as: reading\n    concurrency: 2\n    steps:\n      \
                 - action: transform\n        with: {{ value: {{ n: \"${{{{ reading }}}}\", idx: \"${{{{ index }}}}\" }} }}\n"
            ),
            5 => write!(
                y,
                "  - id: s{i}\n    action: mqtt.publish\n    with:\n      topic: \"alerts/${{{{ event.data.device }}}}\"\n      \
                 payload: {{ temp: \"${{{{ event.data.temp }}}}\", alerts: \"${{{{ vars.alerts }}}}\" }}\n      qos: 1\n    \
                 retry: {{ attempts: 3, delay: 1s }}\n    timeout: 5s\n    \
                 catch:\n      - action: log\n        with: {{ level: error, message: \"publish failed: ${{{{ error.message }}}}\" }}\n"
            ),
            6 => write!(
                y,
                "  - id: s{i}\n    group:\n      - action: transform\n        with: {{ value: \"${{{{ {prev} }}}}\" }}\n      \
                 - set: {{ seen: \"${{{{ vars.seen + [event.data.device] }}}}\" }}\n    retry: {{ attempts: 2, backoff: fixed, delay: 200ms }}\n"
            ),
            7 => write!(
                y,
                "  - id: s{i}\n    unless: ${{{{ event.data.maintenance == true }}}}\n    action: transform\n    \
                 with: {{ value: {{ device: \"${{{{ event.data.device }}}}\", level: \"${{{{ steps.s{p}.output }}}}\" }} }}\n    \
                 output: ${{{{ result.device }}}}\n",
                p = i - 5
            ),
            8 => write!(
                y,
                "  - id: s{i}\n    emit: {{ type: sensor.alert, data: {{ device: \"${{{{ event.data.device }}}}\", step: {i} }} }}\n"
            ),
            _ => write!(
                y,
                "  - id: s{i}\n    action: file.write\n    with: {{ path: \"/tmp/reactor-bench-{i}.log\", content: \"${{{{ string(event.data.temp) }}}}\", append: true }}\n    \
                 timeout: 2s\n"
            ),
        }
        .expect("writing to a String");
    }
    y.push_str(
        "output:\n  alerts: ${{ vars.alerts }}\n  last: ${{ vars.last }}\non_failure:\n  - action: log\n    \
         with: { level: error, message: \"failed: ${{ error.message }}\" }\n",
    );
    y
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_workload_validates() {
        for text in [PURE_FIVE, GUARDED_TWO, MIXED_FIVE] {
            workflow(text);
        }
        let generated = parser().parse("generated.yaml", &generated_workflow(50));
        let generated = generated.unwrap_or_else(|problems| {
            let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
            panic!("{}", lines.join("\n"))
        });
        assert_eq!(generated.steps.len(), 50);
    }
}
