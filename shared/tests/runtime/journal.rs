//! Journaling order, durable retry timers and recovery after a stop, in memory and redb.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use reactor_core::engine::{ExecutionStatus, Fact, Submission, Timestamp};
use reactor_core::store::{MemoryStore, RedbOptions, RedbStore, Store, StoreWrite};
use serde_json::json;
use tokio::sync::Semaphore;

use crate::stores::StaleUnfinished;
use crate::support::{Probe, THREE_STEPS, accepted, event, gated_probe, run, runtime};

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
        let accepted = accepted(runtime.submit("three", event(), json!({})).await);
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
async fn recovering_again_skips_running_queued_and_just_finished_executions() {
    let (gate, probe) = gated_probe();
    let yaml =
        "reactor: 1\nname: one-at-a-time\nconcurrency: { limit: 1 }\nsteps:\n  - action: probe\n";
    let store = Arc::new(StaleUnfinished {
        inner: MemoryStore::new(),
        snapshot: Mutex::default(),
    });
    let runtime = runtime(store.clone(), probe.clone(), &[yaml]);
    let mut ids = Vec::new();
    for _ in 0..2 {
        let id = accepted(runtime.submit("one-at-a-time", event(), json!({})).await);
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
    let (_gate, probe) = gated_probe();
    let yaml =
        "reactor: 1\nname: one-at-a-time\nconcurrency: { limit: 1 }\nsteps:\n  - action: probe\n";
    let store = Arc::new(MemoryStore::new());
    let first = runtime(store.clone(), probe.clone(), &[yaml]);
    let mut ids = Vec::new();
    for _ in 0..2 {
        let id = accepted(first.submit("one-at-a-time", event(), json!({})).await);
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
