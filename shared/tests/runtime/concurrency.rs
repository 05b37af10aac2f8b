//! Concurrency limits (drop, queue, replace), queued cancels and slots around slow writes.

use std::sync::Arc;
use std::time::Duration;

use reactor_core::engine::{Event, ExecutionStatus, Submission};
use reactor_core::store::{ExecutionQuery, MemoryStore, Store};
use serde_json::json;

use crate::stores::HeldCreate;
use crate::support::{Probe, accepted, end_status, event, gated_probe, runtime, submit_in_task};

#[tokio::test]
async fn concurrency_drop_and_queue() {
    let (gate, probe) = gated_probe();
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

    let a = accepted(runtime.submit("queueing", event(), json!({})).await);
    let b = accepted(runtime.submit("queueing", event(), json!({})).await);
    let queued = runtime.store().execution(b).await.unwrap().unwrap();
    assert_eq!(queued.status, ExecutionStatus::Queued);
    gate.add_permits(10);
    assert_eq!(
        end_status(&runtime, a, Duration::from_secs(10)).await,
        ExecutionStatus::Succeeded
    );
    assert_eq!(
        end_status(&runtime, b, Duration::from_secs(10)).await,
        ExecutionStatus::Succeeded
    );
}

#[tokio::test]
async fn concurrency_replace_cancels_the_oldest_with_the_same_key() {
    let (gate, probe) = gated_probe();
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
    let old = accepted(submit("a").await);
    let other = accepted(submit("b").await);
    let new = accepted(submit("a").await);
    assert_eq!(
        end_status(&runtime, old, Duration::from_secs(5)).await,
        ExecutionStatus::Cancelled
    );
    gate.add_permits(10);
    assert_eq!(
        end_status(&runtime, new, Duration::from_secs(5)).await,
        ExecutionStatus::Succeeded
    );
    assert_eq!(
        end_status(&runtime, other, Duration::from_secs(5)).await,
        ExecutionStatus::Succeeded
    );
}

#[tokio::test]
async fn cancelling_a_queued_execution_records_it_cancelled() {
    let (gate, probe) = gated_probe();
    let yaml =
        "reactor: 1\nname: one-at-a-time\nconcurrency: { limit: 1 }\nsteps:\n  - action: probe\n";
    let runtime = runtime(Arc::new(MemoryStore::new()), probe, &[yaml]);
    let running = accepted(runtime.submit("one-at-a-time", event(), json!({})).await);
    let queued = accepted(runtime.submit("one-at-a-time", event(), json!({})).await);
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

/// A slot that frees while a queued execution's `Create` is still being written goes to it
/// once the write is done (it used to be read too early, found missing, and the slot was
/// lost with it); a queued execution whose `Create` fails gives its turn to the next one.
#[tokio::test]
async fn a_slot_freed_while_the_queued_create_is_written_is_not_lost() {
    let (gate, probe) = gated_probe();
    let (store, release) = HeldCreate::new(ExecutionStatus::Queued);
    let runtime = runtime(
        Arc::new(store),
        probe.clone(),
        &[
            "reactor: 1\nname: one\nconcurrency: { limit: 1, overflow: queue }\nsteps:\n  - action: probe\n",
        ],
    );
    // One execution runs; the next queues behind it and its `Create` is held; the first
    // finishes meanwhile and frees the slot; then the held write lands (`lands`) or fails.
    let freed_while_queued_create_is_held = async |lands: bool| {
        let first = accepted(runtime.submit("one", event(), json!({})).await);
        let queued = submit_in_task(&runtime);
        tokio::time::sleep(Duration::from_millis(50)).await;
        gate.add_permits(1);
        assert_eq!(
            end_status(&runtime, first, Duration::from_secs(10)).await,
            ExecutionStatus::Succeeded
        );
        release.send(lands).await.unwrap();
        queued.await.unwrap()
    };

    // b's `Create` lands after a freed the slot: b gets it.
    let b = accepted(freed_while_queued_create_is_held(true).await);
    gate.add_permits(1);
    assert_eq!(
        end_status(&runtime, b, Duration::from_secs(10)).await,
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
        end_status(&runtime, e, Duration::from_secs(10)).await,
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
