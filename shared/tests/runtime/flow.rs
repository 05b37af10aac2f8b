//! Control flow: calls, waits, cancelling, timeouts, `if`/`unless`, parallel joins, loops.

use std::sync::Arc;
use std::time::Duration;

use reactor_core::engine::{Event, ExecutionStatus, Submission};
use reactor_core::store::{MemoryStore, Store};
use serde_json::json;
use tokio::sync::Semaphore;

use crate::support::{Probe, THREE_STEPS, accepted, event, run, runtime};

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
    let id = accepted(runtime.submit("approval", event(), json!({})).await);
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
    let id = accepted(runtime.submit("three", event(), json!({})).await);
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
