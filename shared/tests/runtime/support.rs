//! Shared helpers: the `probe` test action, a runtime over a store, submitting and waiting.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use reactor_core::action::{
    Action, ActionContext, ActionError, ActionSpec, Effect, SettingSpec, builtin_registry,
    builtin_specs,
};
use reactor_core::dsl::Parser;
use reactor_core::engine::{
    Environment, Event, ExecutionId, ExecutionStatus, Runtime, RuntimeConfig, Submission,
};
use reactor_core::store::Store;
use serde_json::{Value, json};
use tokio::sync::Semaphore;

static PROBE_SPEC: ActionSpec = ActionSpec {
    kind: "probe",
    description: "records calls; can be held at a gate or made to fail",
    effect: Effect::SideEffect,
    settings: &[SettingSpec {
        name: "n",
        required: false,
        json_type: "integer",
        description: "echoed back",
    }],
};

/// A side-effecting test action: records (step, idempotency key, attempt) of every call.
#[derive(Default)]
pub(crate) struct Probe {
    pub(crate) calls: Mutex<Vec<(String, String, u32)>>,
    /// When set, calls wait for a permit (never granted = in flight forever).
    pub(crate) gate: Option<Arc<Semaphore>>,
    /// Fail this many first calls with a retryable error.
    pub(crate) failures: Mutex<u32>,
}

#[async_trait]
impl Action for Probe {
    fn spec(&self) -> &'static ActionSpec {
        &PROBE_SPEC
    }
    async fn execute(&self, input: Value, context: &ActionContext) -> Result<Value, ActionError> {
        self.calls.lock().unwrap().push((
            context.step.clone(),
            context.idempotency_key.clone(),
            context.attempt,
        ));
        if let Some(gate) = &self.gate {
            tokio::select! {
                permit = gate.acquire() => permit.expect("gate open").forget(),
                () = context.cancel.cancelled() => return Err(ActionError::Cancelled),
            }
        }
        let mut failures = self.failures.lock().unwrap();
        if *failures > 0 {
            *failures -= 1;
            return Err(ActionError::retryable("probe failure"));
        }
        Ok(json!({ "echo": input, "step": context.step }))
    }
}

impl Probe {
    pub(crate) fn steps(&self) -> Vec<String> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .map(|c| c.0.clone())
            .collect()
    }
}

fn parser() -> Parser {
    let mut specs = builtin_specs();
    specs.push(&PROBE_SPEC);
    Parser::new().with_actions(specs)
}

pub(crate) fn runtime(store: Arc<dyn Store>, probe: Arc<Probe>, yaml: &[&str]) -> Runtime {
    let mut actions = builtin_registry(Default::default());
    actions.register(probe);
    let runtime = Runtime::new(
        store,
        actions,
        Environment::empty(),
        RuntimeConfig::default(),
    );
    for text in yaml {
        let workflow = parser()
            .parse("test.yaml", text)
            .unwrap_or_else(|d| panic!("{d:?}"));
        runtime.load(workflow);
    }
    runtime
}

pub(crate) fn event() -> Event {
    Event::new("manual", "test", json!({ "n": 1 }))
}

pub(crate) async fn run(runtime: &Runtime, name: &str) -> reactor_core::engine::ExecutionRecord {
    let Submission::Accepted(id) = runtime.submit(name, event(), json!({})).await.unwrap() else {
        panic!("not accepted")
    };
    tokio::time::timeout(Duration::from_secs(10), runtime.wait(id))
        .await
        .expect("finished in time")
        .unwrap()
}

pub(crate) const THREE_STEPS: &str = r#"
reactor: 1
name: three
steps:
  - id: first
    action: probe
    with: { n: 1 }
  - id: pure
    action: transform
    with: { value: 42 }
  - id: last
    action: probe
    with: { n: 3 }
"#;

/// Submits an execution of `one` on a task of its own (a submitter that can be left or
/// aborted).
pub(crate) fn submit_in_task(
    runtime: &Runtime,
) -> tokio::task::JoinHandle<Result<Submission, reactor_core::engine::SubmitError>> {
    let runtime = runtime.clone();
    tokio::spawn(async move { runtime.submit("one", event(), json!({})).await })
}

/// The id of an accepted submission.
pub(crate) fn accepted(
    submitted: Result<Submission, reactor_core::engine::SubmitError>,
) -> ExecutionId {
    match submitted {
        Ok(Submission::Accepted(id)) => id,
        other => panic!("not accepted: {other:?}"),
    }
}

/// A probe whose calls wait for permits of the returned gate (it starts with none).
pub(crate) fn gated_probe() -> (Arc<Semaphore>, Arc<Probe>) {
    let gate = Arc::new(Semaphore::new(0));
    let probe = Arc::new(Probe {
        gate: Some(gate.clone()),
        ..Probe::default()
    });
    (gate, probe)
}

/// The status execution `id` ends with; panics if it has not ended within `within`.
pub(crate) async fn end_status(
    runtime: &Runtime,
    id: ExecutionId,
    within: Duration,
) -> ExecutionStatus {
    tokio::time::timeout(within, runtime.wait(id))
        .await
        .unwrap_or_else(|_| panic!("execution {id} still running after {within:?}"))
        .expect("wait")
        .status
}
