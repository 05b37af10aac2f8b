//! The driver end to end, in-process: journaling order, recovery after a stop mid-step,
//! concurrency, calls and waits — against the memory and redb stores.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use reactor_core::action::{
    Action, ActionContext, ActionError, ActionSpec, Effect, SettingSpec, builtin_registry,
    builtin_specs,
};
use reactor_core::dsl::Parser;
use reactor_core::engine::{
    Environment, Event, ExecutionId, ExecutionRecord, ExecutionStatus, Fact, Runtime,
    RuntimeConfig, Submission, Timestamp,
};
use reactor_core::store::{
    ExecutionQuery, MemoryStore, RedbOptions, RedbStore, Retention, Store, StoreError, StoreWrite,
};
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
struct Probe {
    calls: Mutex<Vec<(String, String, u32)>>,
    /// When set, calls wait for a permit (never granted = in flight forever).
    gate: Option<Arc<Semaphore>>,
    /// Fail this many first calls with a retryable error.
    failures: Mutex<u32>,
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
    fn steps(&self) -> Vec<String> {
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

fn runtime(store: Arc<dyn Store>, probe: Arc<Probe>, yaml: &[&str]) -> Runtime {
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

fn event() -> Event {
    Event::new("manual", "test", json!({ "n": 1 }))
}

async fn run(runtime: &Runtime, name: &str) -> reactor_core::engine::ExecutionRecord {
    let Submission::Accepted(id) = runtime.submit(name, event(), json!({})).await.unwrap() else {
        panic!("not accepted")
    };
    tokio::time::timeout(Duration::from_secs(10), runtime.wait(id))
        .await
        .expect("finished in time")
        .unwrap()
}

const THREE_STEPS: &str = r#"
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

#[tokio::test]
async fn side_effects_are_journaled_before_and_after() {
    let store = Arc::new(MemoryStore::new());
    let probe = Arc::new(Probe::default());
    let runtime = runtime(store.clone(), probe.clone(), &[THREE_STEPS]);
    let record = run(&runtime, "three").await;
    assert_eq!(record.status, ExecutionStatus::Succeeded);
    assert_eq!(record.output["step"], json!("last"));
    assert_eq!(probe.steps(), ["first", "last"]);
    let journal = store.journal(record.id).await.unwrap();
    let shape: Vec<String> = journal
        .iter()
        .map(|f| match f {
            Fact::Started { .. } => "started".to_string(),
            Fact::EffectStarted { key, .. } => format!("start {key}"),
            Fact::EffectFinished { key, .. } => format!("end {key}"),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(
        shape,
        [
            "started",
            "start first@1",
            "end first@1",
            "start last@1",
            "end last@1"
        ]
    );
    let steps: Vec<&str> = record.steps.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(steps, ["first", "pure", "last"]);
}

/// A pure execution against redb: the record lent to the store for its single write comes
/// back whole to its watcher, equal to what was stored, and the journal holds its start.
#[tokio::test]
async fn a_watched_pure_execution_gets_its_whole_record_from_redb() {
    let dir = tempfile::tempdir().unwrap();
    let store =
        Arc::new(RedbStore::open(dir.path().join("j.redb"), RedbOptions::default()).unwrap());
    let yaml = r#"
reactor: 1
name: pure
steps:
  - id: double
    action: transform
    with: { value: "${{ event.data.n * 2 }}" }
output: { doubled: "${{ steps.double.output }}" }
"#;
    let runtime = runtime(store.clone(), Arc::new(Probe::default()), &[yaml]);
    let (submission, watch) = runtime
        .submit_watched("pure", event(), json!({}))
        .await
        .unwrap();
    let Submission::Accepted(id) = submission else {
        panic!("not accepted")
    };
    let record = watch.unwrap().finished().await.unwrap();
    assert_eq!(record.output, json!({ "doubled": 2 }));
    assert_eq!(record.steps[0].1.output, json!(2));
    assert_eq!(store.execution(id).await.unwrap(), Some(record));
    let journal = store.journal(id).await.unwrap();
    assert!(
        matches!(&journal[..], [Fact::Started { event, .. }] if event.data == json!({ "n": 1 }))
    );
}

#[tokio::test]
async fn recovery_reruns_only_the_step_in_flight_with_the_same_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.redb");
    let gate = Arc::new(Semaphore::new(0));
    let id;
    let first_key;
    {
        let store = Arc::new(RedbStore::open(&path, RedbOptions::default()).unwrap());
        // The first probe call passes, the second is held in flight.
        let probe = Arc::new(Probe {
            gate: Some(gate.clone()),
            ..Probe::default()
        });
        gate.add_permits(1);
        let runtime = runtime(store.clone(), probe.clone(), &[THREE_STEPS]);
        let Submission::Accepted(accepted) =
            runtime.submit("three", event(), json!({})).await.unwrap()
        else {
            panic!()
        };
        id = accepted;
        for _ in 0..200 {
            if probe.steps().len() == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(probe.steps(), ["first", "last"]);
        first_key = probe.calls.lock().unwrap()[1].1.clone();
        runtime.shutdown().await;
        store.close().await.unwrap();
    }
    let store = Arc::new(RedbStore::open(&path, RedbOptions::default()).unwrap());
    let probe = Arc::new(Probe::default());
    let runtime = runtime(store.clone(), probe.clone(), &[THREE_STEPS]);
    assert_eq!(runtime.recover().await.unwrap(), 1);
    let record = tokio::time::timeout(Duration::from_secs(10), runtime.wait(id))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.status, ExecutionStatus::Succeeded);
    // Only the step that was in flight ran again, with the same idempotency key.
    assert_eq!(probe.steps(), ["last"]);
    assert_eq!(probe.calls.lock().unwrap()[0].1, first_key);
}

#[tokio::test]
async fn retries_use_durable_timers_and_keep_the_key() {
    let probe = Arc::new(Probe {
        failures: Mutex::new(2),
        ..Probe::default()
    });
    let yaml = r#"
reactor: 1
name: flaky
steps:
  - id: call
    action: probe
    retry: { attempts: 3, delay: 10ms, jitter: false }
"#;
    let runtime = runtime(Arc::new(MemoryStore::new()), probe.clone(), &[yaml]);
    let record = run(&runtime, "flaky").await;
    assert_eq!(record.status, ExecutionStatus::Succeeded);
    let calls = probe.calls.lock().unwrap().clone();
    assert_eq!(calls.iter().map(|c| c.2).collect::<Vec<_>>(), [1, 2, 3]);
    assert!(calls.iter().all(|c| c.1 == calls[0].1));
    assert_eq!(record.steps[0].1.attempts, 3);
}

#[tokio::test]
async fn concurrency_drop_and_queue() {
    let gate = Arc::new(Semaphore::new(0));
    let probe = Arc::new(Probe {
        gate: Some(gate.clone()),
        ..Probe::default()
    });
    let yaml = |name: &str, overflow: &str| {
        format!(
            "reactor: 1\nname: {name}\nconcurrency: {{ limit: 1, overflow: {overflow} }}\nsteps:\n  - action: probe\n"
        )
    };
    let (dropping, queueing) = (yaml("dropping", "drop"), yaml("queueing", "queue"));
    let runtime = runtime(
        Arc::new(MemoryStore::new()),
        probe.clone(),
        &[&dropping, &queueing],
    );
    let first = runtime
        .submit("dropping", event(), json!({}))
        .await
        .unwrap();
    assert!(matches!(first, Submission::Accepted(_)));
    assert_eq!(
        runtime
            .submit("dropping", event(), json!({}))
            .await
            .unwrap(),
        Submission::Dropped
    );

    let Submission::Accepted(a) = runtime
        .submit("queueing", event(), json!({}))
        .await
        .unwrap()
    else {
        panic!()
    };
    let Submission::Accepted(b) = runtime
        .submit("queueing", event(), json!({}))
        .await
        .unwrap()
    else {
        panic!()
    };
    let queued = runtime.store().execution(b).await.unwrap().unwrap();
    assert_eq!(queued.status, ExecutionStatus::Queued);
    gate.add_permits(10);
    let wait = |id| tokio::time::timeout(Duration::from_secs(10), runtime.wait(id));
    assert_eq!(
        wait(a).await.unwrap().unwrap().status,
        ExecutionStatus::Succeeded
    );
    assert_eq!(
        wait(b).await.unwrap().unwrap().status,
        ExecutionStatus::Succeeded
    );
}

#[tokio::test]
async fn call_runs_the_child_and_returns_its_output() {
    let parent = r#"
reactor: 1
name: parent
steps:
  - id: child
    call: { workflow: child, input: { who: parent } }
"#;
    let child = r#"
reactor: 1
name: child
inputs:
  who: { type: string }
steps:
  - id: work
    action: probe
    with: { n: 2 }
"#;
    let probe = Arc::new(Probe::default());
    let runtime = runtime(
        Arc::new(MemoryStore::new()),
        probe.clone(),
        &[parent, child],
    );
    let record = run(&runtime, "parent").await;
    assert_eq!(
        record.status,
        ExecutionStatus::Succeeded,
        "{:?}",
        record.error
    );
    assert_eq!(record.output["echo"], json!({ "n": 2 }));
}

#[tokio::test]
async fn wait_resumes_on_a_matching_event() {
    let yaml = r#"
reactor: 1
name: approval
steps:
  - id: approved
    wait: { event: "approval.*", timeout: 10s }
"#;
    let runtime = runtime(
        Arc::new(MemoryStore::new()),
        Arc::new(Probe::default()),
        &[yaml],
    );
    let Submission::Accepted(id) = runtime
        .submit("approval", event(), json!({}))
        .await
        .unwrap()
    else {
        panic!()
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    runtime
        .deliver(&Event::new("other.thing", "test", json!(1)))
        .await;
    runtime
        .deliver(&Event::new(
            "approval.granted",
            "test",
            json!({ "by": "ops" }),
        ))
        .await;
    let record = tokio::time::timeout(Duration::from_secs(5), runtime.wait(id))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.status, ExecutionStatus::Succeeded);
    assert_eq!(record.output["data"], json!({ "by": "ops" }));
}

#[tokio::test]
async fn cancel_stops_a_running_execution() {
    let gate = Arc::new(Semaphore::new(0));
    let probe = Arc::new(Probe {
        gate: Some(gate),
        ..Probe::default()
    });
    let runtime = runtime(Arc::new(MemoryStore::new()), probe, &[THREE_STEPS]);
    let Submission::Accepted(id) = runtime.submit("three", event(), json!({})).await.unwrap()
    else {
        panic!()
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(runtime.cancel(id, "test").await);
    let record = tokio::time::timeout(Duration::from_secs(5), runtime.wait(id))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.status, ExecutionStatus::Cancelled);
    assert_eq!(
        record.steps[0].1.status,
        reactor_core::engine::StepStatus::Cancelled
    );
}

#[tokio::test]
async fn concurrency_replace_cancels_the_oldest_with_the_same_key() {
    let gate = Arc::new(Semaphore::new(0));
    let probe = Arc::new(Probe {
        gate: Some(gate.clone()),
        ..Probe::default()
    });
    let yaml = r#"
reactor: 1
name: latest-wins
concurrency: { limit: 1, key: "${{ event.data.device }}", overflow: replace }
steps:
  - id: work
    action: probe
"#;
    let runtime = runtime(Arc::new(MemoryStore::new()), probe, &[yaml]);
    let submit = |device: &str| {
        runtime.submit(
            "latest-wins",
            Event::new("manual", "t", json!({ "device": device })),
            json!({}),
        )
    };
    let Submission::Accepted(old) = submit("a").await.unwrap() else {
        panic!()
    };
    let Submission::Accepted(other) = submit("b").await.unwrap() else {
        panic!()
    };
    let Submission::Accepted(new) = submit("a").await.unwrap() else {
        panic!()
    };
    let wait = |id| tokio::time::timeout(Duration::from_secs(5), runtime.wait(id));
    assert_eq!(
        wait(old).await.unwrap().unwrap().status,
        ExecutionStatus::Cancelled
    );
    gate.add_permits(10);
    assert_eq!(
        wait(new).await.unwrap().unwrap().status,
        ExecutionStatus::Succeeded
    );
    assert_eq!(
        wait(other).await.unwrap().unwrap().status,
        ExecutionStatus::Succeeded
    );
}

#[tokio::test]
async fn workflow_timeout_fails_and_on_failure_sees_the_error() {
    let yaml = r#"
reactor: 1
name: slow
timeout: 50ms
steps:
  - id: nap
    sleep: 10s
on_failure:
  - id: report
    action: transform
    with: { value: "failed: ${{ error.type }}" }
"#;
    let runtime = runtime(
        Arc::new(MemoryStore::new()),
        Arc::new(Probe::default()),
        &[yaml],
    );
    let record = run(&runtime, "slow").await;
    assert_eq!(record.status, ExecutionStatus::Failed);
    assert_eq!(record.error.as_ref().unwrap().kind, "timeout");
    let report = record.steps.iter().find(|(id, _)| id == "report").unwrap();
    assert_eq!(report.1.output, json!("failed: timeout"));
    let nap = record.steps.iter().find(|(id, _)| id == "nap").unwrap();
    assert_eq!(nap.1.status, reactor_core::engine::StepStatus::Cancelled);
}

#[tokio::test]
async fn workflow_if_skips_without_storing() {
    let yaml = r#"
reactor: 1
name: hot
if: ${{ event.data.temp > 30 }}
unless: ${{ event.data.maintenance == true }}
steps:
  - action: transform
    with: { value: 1 }
"#;
    let store = Arc::new(MemoryStore::new());
    let runtime = runtime(store.clone(), Arc::new(Probe::default()), &[yaml]);
    let cold = Event::new("manual", "t", json!({ "temp": 20 }));
    assert_eq!(
        runtime.submit("hot", cold, json!({})).await.unwrap(),
        Submission::Skipped
    );
    let maintenance = Event::new("manual", "t", json!({ "temp": 40, "maintenance": true }));
    assert_eq!(
        runtime.submit("hot", maintenance, json!({})).await.unwrap(),
        Submission::Skipped
    );
    let hot = Event::new("manual", "t", json!({ "temp": 40 }));
    assert!(matches!(
        runtime.submit("hot", hot, json!({})).await.unwrap(),
        Submission::Accepted(_)
    ));
    assert_eq!(
        runtime
            .stats()
            .skipped
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );
    let stored = store.executions(&Default::default()).await.unwrap();
    assert_eq!(
        stored.len(),
        1,
        "skipped executions are counted, not stored"
    );
}

#[tokio::test]
async fn parallel_when_join_and_loop_until() {
    let yaml = r#"
reactor: 1
name: joins
vars: { n: 0 }
steps:
  - id: race
    parallel:
      join: { when: "${{ has(branches.fast) }}" }
      branches:
        fast:
          - action: transform
            with: { value: quick }
        slow:
          - sleep: 10s
  - id: counting
    loop: { until: "${{ vars.n >= 3 }}", max: 5 }
    steps:
      - set: { n: "${{ vars.n + 1 }}" }
output:
  race: ${{ steps.race.output }}
  n: ${{ vars.n }}
"#;
    let runtime = runtime(
        Arc::new(MemoryStore::new()),
        Arc::new(Probe::default()),
        &[yaml],
    );
    let record = run(&runtime, "joins").await;
    assert_eq!(
        record.status,
        ExecutionStatus::Succeeded,
        "{:?}",
        record.error
    );
    assert_eq!(
        record.output,
        json!({ "race": { "fast": "quick" }, "n": 3 })
    );
}

#[tokio::test]
async fn loop_reaching_max_fails_the_step() {
    let yaml = r#"
reactor: 1
name: endless
steps:
  - id: spin
    loop: { while: "${{ true }}", max: 3 }
    steps:
      - action: transform
        with: { value: 1 }
"#;
    let runtime = runtime(
        Arc::new(MemoryStore::new()),
        Arc::new(Probe::default()),
        &[yaml],
    );
    let record = run(&runtime, "endless").await;
    assert_eq!(record.status, ExecutionStatus::Failed);
    assert_eq!(record.error.as_ref().unwrap().step.as_deref(), Some("spin"));
    assert!(record.error.as_ref().unwrap().message.contains("max 3"));
}

#[tokio::test]
async fn cancelling_a_queued_execution_records_it_cancelled() {
    let gate = Arc::new(Semaphore::new(0));
    let probe = Arc::new(Probe {
        gate: Some(gate.clone()),
        ..Probe::default()
    });
    let yaml =
        "reactor: 1\nname: one-at-a-time\nconcurrency: { limit: 1 }\nsteps:\n  - action: probe\n";
    let runtime = runtime(Arc::new(MemoryStore::new()), probe, &[yaml]);
    let Submission::Accepted(running) = runtime
        .submit("one-at-a-time", event(), json!({}))
        .await
        .unwrap()
    else {
        panic!()
    };
    let Submission::Accepted(queued) = runtime
        .submit("one-at-a-time", event(), json!({}))
        .await
        .unwrap()
    else {
        panic!()
    };
    assert!(runtime.cancel(queued, "not needed").await);
    let record = runtime.wait(queued).await.unwrap();
    assert_eq!(record.status, ExecutionStatus::Cancelled);
    gate.add_permits(10);
    assert_eq!(
        runtime.wait(running).await.unwrap().status,
        ExecutionStatus::Succeeded
    );
    assert!(!runtime.cancel(running, "too late").await);
}

/// What `Store::unfinished` answers.
type Unfinished = Vec<(ExecutionRecord, Vec<Fact>)>;

/// `Store` for a test wrapper: the given methods, and the read side handed to its `inner`
/// store unchanged.
macro_rules! store_wrapper {
    ($wrapper:ty { $($method:item)* }) => {
        #[async_trait]
        impl Store for $wrapper {
            $($method)*
            async fn execution(&self, id: ExecutionId) -> Result<Option<ExecutionRecord>, StoreError> {
                self.inner.execution(id).await
            }
            async fn journal(&self, id: ExecutionId) -> Result<Vec<Fact>, StoreError> {
                self.inner.journal(id).await
            }
            async fn executions(
                &self,
                query: &ExecutionQuery,
            ) -> Result<Vec<ExecutionRecord>, StoreError> {
                self.inner.executions(query).await
            }
            async fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
                self.inner.meta(key).await
            }
            async fn prune(&self, retention: Retention, now: Timestamp) -> Result<usize, StoreError> {
                self.inner.prune(retention, now).await
            }
        }
    };
}

/// A store whose `unfinished()` can be made to answer an old snapshot: the list a shared
/// store returned just before executions finished (as periodic adoption sees it).
struct StaleUnfinished {
    inner: MemoryStore,
    snapshot: Mutex<Option<Unfinished>>,
}

store_wrapper!(StaleUnfinished {
    async fn write(&self, batch: Vec<StoreWrite>) -> Result<(), StoreError> {
        self.inner.write(batch).await
    }
    async fn unfinished(&self) -> Result<Unfinished, StoreError> {
        let snapshot = self.snapshot.lock().unwrap().clone();
        match snapshot {
            Some(old) => Ok(old),
            None => self.inner.unfinished().await,
        }
    }
});

#[tokio::test]
async fn recovering_again_skips_running_queued_and_just_finished_executions() {
    let gate = Arc::new(Semaphore::new(0));
    let probe = Arc::new(Probe {
        gate: Some(gate.clone()),
        ..Probe::default()
    });
    let yaml =
        "reactor: 1\nname: one-at-a-time\nconcurrency: { limit: 1 }\nsteps:\n  - action: probe\n";
    let store = Arc::new(StaleUnfinished {
        inner: MemoryStore::new(),
        snapshot: Mutex::default(),
    });
    let runtime = runtime(store.clone(), probe.clone(), &[yaml]);
    let mut ids = Vec::new();
    for _ in 0..2 {
        let Submission::Accepted(id) = runtime
            .submit("one-at-a-time", event(), json!({}))
            .await
            .unwrap()
        else {
            panic!()
        };
        ids.push(id);
    }
    let queued = runtime.store().execution(ids[1]).await.unwrap().unwrap();
    assert_eq!(queued.status, ExecutionStatus::Queued);
    // Periodic adoption over this process' own work: nothing to take up, however often.
    for _ in 0..3 {
        assert_eq!(runtime.recover().await.unwrap(), 0);
    }
    // The store's list as it was while both were unfinished, answered after they finished.
    let before = store.inner.unfinished().await.unwrap();
    assert_eq!(before.len(), 2);
    gate.add_permits(10);
    for id in &ids {
        let record = tokio::time::timeout(Duration::from_secs(10), runtime.wait(*id))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(record.status, ExecutionStatus::Succeeded);
    }
    *store.snapshot.lock().unwrap() = Some(before);
    assert_eq!(runtime.recover().await.unwrap(), 0);
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Each ran once: no duplicate queue entry, no resume from a stale journal.
    assert_eq!(probe.steps().len(), 2, "{:?}", probe.steps());
    let stats = runtime.stats();
    assert_eq!(
        stats.succeeded.load(std::sync::atomic::Ordering::Relaxed),
        2
    );
}

#[tokio::test]
async fn a_queued_execution_whose_slot_is_free_starts_on_recovery() {
    // A process died after the running execution of a key finished but before the queued
    // one took the slot: the journal holds only the queued one.
    let gate = Arc::new(Semaphore::new(0));
    let probe = Arc::new(Probe {
        gate: Some(gate.clone()),
        ..Probe::default()
    });
    let yaml =
        "reactor: 1\nname: one-at-a-time\nconcurrency: { limit: 1 }\nsteps:\n  - action: probe\n";
    let store = Arc::new(MemoryStore::new());
    let first = runtime(store.clone(), probe.clone(), &[yaml]);
    let mut ids = Vec::new();
    for _ in 0..2 {
        let Submission::Accepted(id) = first
            .submit("one-at-a-time", event(), json!({}))
            .await
            .unwrap()
        else {
            panic!()
        };
        ids.push(id);
    }
    first.shutdown().await;
    // The running one is recorded finished (as if it completed just before the crash).
    let mut done = store.execution(ids[0]).await.unwrap().unwrap();
    done.status = ExecutionStatus::Cancelled;
    done.finished_at = Some(Timestamp::now());
    store.write(vec![StoreWrite::Update(done)]).await.unwrap();

    let probe = Arc::new(Probe::default());
    let second = runtime(store.clone(), probe.clone(), &[yaml]);
    assert_eq!(second.recover().await.unwrap(), 1);
    let record = tokio::time::timeout(Duration::from_secs(10), second.wait(ids[1]))
        .await
        .expect("the queued execution ran")
        .unwrap();
    assert_eq!(record.status, ExecutionStatus::Succeeded);
    assert_eq!(probe.steps().len(), 1);
}

/// The memory store, holding back the writes of `Create`s with the status `held` until
/// released — and then applying each, or failing it as a broken disk would. Like the redb
/// store's thread, a write goes on once handed over, whether or not its caller still waits.
struct HeldCreate {
    inner: Arc<MemoryStore>,
    held: ExecutionStatus,
    /// Permits to let held writes go on; each carries whether the write succeeds.
    release: Arc<tokio::sync::Mutex<tokio::sync::mpsc::Receiver<bool>>>,
}

impl HeldCreate {
    fn new(held: ExecutionStatus) -> (HeldCreate, tokio::sync::mpsc::Sender<bool>) {
        let (release, receiver) = tokio::sync::mpsc::channel(4);
        let store = HeldCreate {
            inner: Arc::new(MemoryStore::new()),
            held,
            release: Arc::new(tokio::sync::Mutex::new(receiver)),
        };
        (store, release)
    }
}

store_wrapper!(HeldCreate {
    async fn write(&self, batch: Vec<StoreWrite>) -> Result<(), StoreError> {
        let held = batch.iter().any(|write| {
            matches!(write, StoreWrite::Create { record, .. } if record.status == self.held)
        });
        let (inner, release) = (self.inner.clone(), self.release.clone());
        tokio::spawn(async move {
            if held && !release.lock().await.recv().await.unwrap_or(true) {
                return Err(StoreError::Io("disk failed (test)".into()));
            }
            inner.write(batch).await
        })
        .await
        .expect("the write task ran")
    }
    async fn unfinished(&self) -> Result<Vec<(ExecutionRecord, Vec<Fact>)>, StoreError> {
        self.inner.unfinished().await
    }
});

/// Submits an execution of `one` on a task of its own (a submitter that can be left or
/// aborted).
fn submit_in_task(
    runtime: &Runtime,
) -> tokio::task::JoinHandle<Result<Submission, reactor_core::engine::SubmitError>> {
    let runtime = runtime.clone();
    tokio::spawn(async move { runtime.submit("one", event(), json!({})).await })
}

/// The id of an accepted submission.
fn accepted(submitted: Result<Submission, reactor_core::engine::SubmitError>) -> ExecutionId {
    match submitted {
        Ok(Submission::Accepted(id)) => id,
        other => panic!("not accepted: {other:?}"),
    }
}

/// A slot that frees while a queued execution's `Create` is still being written goes to it
/// once the write is done (it used to be read too early, found missing, and the slot was
/// lost with it); a queued execution whose `Create` fails gives its turn to the next one.
#[tokio::test]
async fn a_slot_freed_while_the_queued_create_is_written_is_not_lost() {
    let gate = Arc::new(Semaphore::new(0));
    let probe = Arc::new(Probe {
        gate: Some(gate.clone()),
        ..Probe::default()
    });
    let (store, release) = HeldCreate::new(ExecutionStatus::Queued);
    let runtime = runtime(
        Arc::new(store),
        probe.clone(),
        &[
            "reactor: 1\nname: one\nconcurrency: { limit: 1, overflow: queue }\nsteps:\n  - action: probe\n",
        ],
    );
    let wait = |id| tokio::time::timeout(Duration::from_secs(10), runtime.wait(id));
    // One execution runs; the next queues behind it and its `Create` is held; the first
    // finishes meanwhile and frees the slot; then the held write lands (`lands`) or fails.
    let freed_while_queued_create_is_held = async |lands: bool| {
        let first = accepted(runtime.submit("one", event(), json!({})).await);
        let queued = submit_in_task(&runtime);
        tokio::time::sleep(Duration::from_millis(50)).await;
        gate.add_permits(1);
        assert_eq!(
            wait(first).await.unwrap().unwrap().status,
            ExecutionStatus::Succeeded
        );
        release.send(lands).await.unwrap();
        queued.await.unwrap()
    };

    // b's `Create` lands after a freed the slot: b gets it.
    let b = accepted(freed_while_queued_create_is_held(true).await);
    gate.add_permits(1);
    assert_eq!(
        wait(b).await.expect("b ran").unwrap().status,
        ExecutionStatus::Succeeded
    );

    // d's `Create` fails after c freed the slot: e must still get it.
    assert!(
        freed_while_queued_create_is_held(false).await.is_err(),
        "d's Create failed"
    );
    let e = accepted(runtime.submit("one", event(), json!({})).await);
    gate.add_permits(1);
    assert_eq!(
        wait(e).await.expect("e ran").unwrap().status,
        ExecutionStatus::Succeeded
    );
}

/// A submitter that stops waiting while its execution's `Create` is being written (an HTTP
/// client hanging up) does not abandon the execution: once the write lands it runs to the
/// end, and its concurrency slot is free again afterwards — also when its `Create` never
/// lands.
#[tokio::test]
async fn an_execution_outlives_a_submitter_that_stops_waiting() {
    let (store, release) = HeldCreate::new(ExecutionStatus::Running);
    let store = Arc::new(store);
    let runtime = runtime(
        store.clone(),
        Arc::new(Probe::default()),
        &["reactor: 1\nname: one\nconcurrency: { limit: 1 }\nsteps:\n  - action: probe\n"],
    );
    let submitting = submit_in_task(&runtime);
    tokio::time::sleep(Duration::from_millis(50)).await;
    submitting.abort();
    assert!(submitting.await.unwrap_err().is_cancelled());
    release.send(true).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let record = loop {
        let all = store.executions(&ExecutionQuery::default()).await.unwrap();
        if let Some(record) = all
            .into_iter()
            .find(|r| r.status == ExecutionStatus::Succeeded)
        {
            break record;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the abandoned execution never finished"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(record.workflow, "one");
    // Its slot was released: the next one runs (its `Create` held and released too).
    let next = submit_in_task(&runtime);
    release.send(true).await.unwrap();
    let id = accepted(next.await.unwrap());
    let finished = tokio::time::timeout(Duration::from_secs(10), runtime.wait(id)).await;
    assert_eq!(
        finished.unwrap().unwrap().status,
        ExecutionStatus::Succeeded
    );

    // Left again, and this time the `Create` never lands: the slot is freed all the same.
    let submitting = submit_in_task(&runtime);
    tokio::time::sleep(Duration::from_millis(50)).await;
    submitting.abort();
    let _ = submitting.await;
    release.send(false).await.unwrap();
    let next = submit_in_task(&runtime);
    release.send(true).await.unwrap();
    let id = accepted(next.await.unwrap());
    let finished = tokio::time::timeout(Duration::from_secs(10), runtime.wait(id)).await;
    assert_eq!(
        finished.unwrap().unwrap().status,
        ExecutionStatus::Succeeded
    );
}

/// A pure execution finishes in its first write. If its submitter left during that write,
/// the takeover finds it finished and does what the driver would have: frees its slot.
#[tokio::test]
async fn a_left_execution_that_finished_in_its_first_write_frees_its_slot() {
    let (store, release) = HeldCreate::new(ExecutionStatus::Succeeded);
    let runtime = runtime(
        Arc::new(store),
        Arc::new(Probe::default()),
        &["reactor: 1\nname: one\nconcurrency: { limit: 1 }\nsteps:\n  - set: { x: 1 }\n"],
    );
    let submitting = submit_in_task(&runtime);
    tokio::time::sleep(Duration::from_millis(50)).await;
    submitting.abort();
    let _ = submitting.await;
    release.send(true).await.unwrap();
    // The next one gets the slot (queued behind a leaked slot, it would never run).
    let next = submit_in_task(&runtime);
    release.send(true).await.unwrap();
    let id = accepted(next.await.unwrap());
    let finished = tokio::time::timeout(Duration::from_secs(10), runtime.wait(id)).await;
    assert_eq!(
        finished.expect("the slot was freed").unwrap().status,
        ExecutionStatus::Succeeded
    );
}
