//! Keyed submission: at most one execution per source message across redeliveries and
//! crashes (see docs/engine.md, "Keyed submission").

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::Value;
use crate::store::{StoreError, StoreWrite};

use super::super::journal::*;
use super::submit::{admitted, concurrency_key};
use super::{Runtime, Submission, SubmitError, lock};

/// The key that makes a submission happen at most once ([`Runtime::submit_once`]), and the
/// source position recorded with it.
#[derive(Clone, Debug, PartialEq)]
pub struct DedupeMark {
    /// Unique per source message within the workflow, stable across redeliveries, e.g.
    /// `kafka/{topic}/{partition}/{offset}`. At most 1 KiB (longer keys are refused).
    pub key: String,
    /// Where the message sits in its source (offset, stream id, LSN, binlog file:pos).
    pub position: Value,
    /// The source delivers this message for the first time (see [`DedupeMark::first`]).
    pub first: bool,
}

impl DedupeMark {
    pub fn new(key: impl Into<String>, position: Value) -> DedupeMark {
        DedupeMark {
            key: key.into(),
            position,
            first: false,
        }
    }

    /// Marks a message its source hands out for the first time, so that no mark of its key
    /// can exist (a Redis stream entry read with `>`: a group delivers an entry once; after
    /// a crash it comes back only as a pending or claimed entry). [`Runtime::submit_once`]
    /// then writes the mark without reading the store first — on the hub's SQL store that
    /// read is a round trip per submission. (It still holds the key's lock while it records,
    /// so a redelivery arriving meanwhile waits for the mark.)
    pub fn first(mut self) -> DedupeMark {
        self.first = true;
        self
    }
}

/// What a de-duplication mark holds: the execution the key started, when, and the source
/// position.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MarkRecord {
    pub execution: ExecutionId,
    pub at: Timestamp,
    pub position: Value,
}

/// How long [`Runtime::forget_marks_soon`] waits for an execution to carry its deletes.
pub const FORGET_LINGER: std::time::Duration = std::time::Duration::from_millis(250);

/// Mark deletes waiting for a write to ride in.
#[derive(Debug, Default)]
pub(super) struct Forgetting {
    keys: Vec<String>,
    /// A lone write of them is scheduled.
    scheduled: bool,
}

/// The longest accepted [`DedupeMark::key`], in bytes.
pub const MAX_MARK_KEY: usize = 1024;

/// Where marks live in the store's meta space.
fn mark_key(workflow: &str, key: &str) -> String {
    format!("dedupe/{workflow}/{key}")
}

/// Holds the per-key lock of a keyed submission; releases the map entry when the last
/// holder goes (also when the submitting future is dropped).
struct MarkingGuard {
    runtime: Runtime,
    key: String,
    lock: Arc<tokio::sync::Mutex<()>>,
    _held: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl MarkingGuard {
    async fn lock(runtime: &Runtime, key: &str) -> MarkingGuard {
        let lock = lock(&runtime.inner.marking)
            .entry(key.to_string())
            .or_default()
            .clone();
        let mut guard = MarkingGuard {
            runtime: runtime.clone(),
            key: key.to_string(),
            lock: lock.clone(),
            _held: None,
        };
        guard._held = Some(lock.lock_owned().await);
        guard
    }
}

impl Drop for MarkingGuard {
    fn drop(&mut self) {
        self._held = None;
        let mut marking = lock(&self.runtime.inner.marking);
        // Two references: the map's and ours. More: someone else is waiting for the key.
        if Arc::strong_count(&self.lock) <= 2 {
            marking.remove(&self.key);
        }
    }
}

impl Runtime {
    /// Like [`Runtime::submit`], at most once per `mark.key`: the first submission that is
    /// accepted writes a de-duplication mark (key `dedupe/{workflow}/{key}`, value
    /// [`MarkRecord`] with the source position) in the same atomic batch as the execution's
    /// `Create`. A later submission with the same key finds the mark and returns
    /// `Submission::Accepted` with the id recorded the first time, starting nothing (counted
    /// in [`Stats::deduplicated`]).
    ///
    /// This is what makes "record, then acknowledge the source" exactly-once across a crash:
    /// a message redelivered because the crash came between the durable record and the ack
    /// carries the same key (Kafka topic/partition/offset, stream sequence, LSN …) and is
    /// skipped. Submissions with the same key in this process are serialised; across
    /// processes sharing one store, the source must not hand the same message to two
    /// consumers at once (consumer groups and leader-only CDC see to that).
    ///
    /// Skipped (`if`/`unless`) and dropped (`concurrency`) events leave no mark: evaluated
    /// again on redelivery they give the same answer (dropped ones may be accepted then).
    /// Marks are removed with [`Runtime::forget_marks`] once the source has durably taken
    /// the acknowledgement (see docs/engine.md).
    pub async fn submit_once(
        &self,
        workflow: &str,
        event: Event,
        inputs: Value,
        mark: DedupeMark,
    ) -> Result<Submission, SubmitError> {
        let wf = self
            .workflow(workflow, None)
            .ok_or_else(|| SubmitError::UnknownWorkflow(workflow.to_string()))?;
        if mark.key.is_empty() || mark.key.len() > MAX_MARK_KEY {
            return Err(SubmitError::Store(StoreError::InvalidWrite(format!(
                "a de-duplication key must have 1 to {MAX_MARK_KEY} bytes, not {}",
                mark.key.len()
            ))));
        }
        let stored_key = mark_key(&wf.name.to_string(), &mark.key);
        // Also a first delivery: a redelivery of it (say after the source's ack timeout) may
        // arrive while it is still being recorded, and must then wait and find its mark.
        let _serialised = MarkingGuard::lock(self, &stored_key).await;
        if !mark.first
            && let Some(existing) = self.mark_at(&stored_key).await?
        {
            self.inner
                .stats
                .deduplicated
                .fetch_add(1, Ordering::Relaxed);
            return Ok(Submission::Accepted(existing.execution));
        }
        let lent = self.lent();
        if !admitted(&wf, &event, &inputs, &lent)? {
            self.inner.stats.skipped.fetch_add(1, Ordering::Relaxed);
            return Ok(Submission::Skipped);
        }
        let id = ExecutionId::new();
        let key = concurrency_key(&wf, &event, &inputs, &lent)?;
        let record = MarkRecord {
            execution: id,
            at: Timestamp::now(),
            position: mark.position,
        };
        let value = serde_json::to_vec(&record)
            .map_err(|e| StoreError::InvalidWrite(format!("de-duplication mark: {e}")))?;
        let puts = vec![StoreWrite::PutMeta {
            key: stored_key,
            value: Some(value),
        }];
        Box::pin(self.start(wf, id, event, inputs, None, key, puts)).await
    }

    /// The de-duplication mark of `key` for `workflow`, if one is recorded.
    pub async fn mark(&self, workflow: &str, key: &str) -> Result<Option<MarkRecord>, StoreError> {
        self.mark_at(&mark_key(workflow, key)).await
    }

    /// Every de-duplication mark of `workflow` whose key starts with `prefix`, by key (as
    /// given to [`Runtime::submit_once`]), in key order. For recovery paths: it reads them
    /// all (a source's marks live from its record to its acknowledgement, so few are left).
    pub async fn marks(
        &self,
        workflow: &str,
        prefix: &str,
    ) -> Result<Vec<(String, MarkRecord)>, StoreError> {
        let base = mark_key(workflow, "");
        let rows = self
            .inner
            .store
            .meta_prefix(&mark_key(workflow, prefix))
            .await?;
        rows.into_iter()
            .map(|(key, bytes)| {
                let record = serde_json::from_slice(&bytes).map_err(|e| {
                    StoreError::Corrupt(format!("de-duplication mark {key:?}: {e}"))
                })?;
                Ok((key[base.len()..].to_string(), record))
            })
            .collect()
    }

    async fn mark_at(&self, mark_key: &str) -> Result<Option<MarkRecord>, StoreError> {
        match self.inner.store.meta(mark_key).await? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| StoreError::Corrupt(format!("de-duplication mark {mark_key:?}: {e}"))),
        }
    }

    /// Deletes the de-duplication marks of `keys` for `workflow` without a commit of their
    /// own: the deletes ride in the next execution's first write (any workflow's), or go
    /// as a batch of their own after [`FORGET_LINGER`] when no execution starts meanwhile.
    /// For triggers that forget what the source acknowledged while new messages keep
    /// coming: a journal commit per acknowledgement would cost as much as the executions'
    /// own (on the hub's SQLite store, one of two commits per batch). A delete lost to a
    /// crash or a failed write leaves its mark for pruning; a mark of an acknowledged
    /// message is never looked up again.
    pub fn forget_marks_soon(&self, workflow: &str, keys: &[String]) {
        if keys.is_empty() {
            return;
        }
        let schedule = {
            let mut forgetting = lock(&self.inner.forgetting);
            forgetting
                .keys
                .extend(keys.iter().map(|key| mark_key(workflow, key)));
            !std::mem::replace(&mut forgetting.scheduled, true)
        };
        if schedule {
            let runtime = self.clone();
            self.inner.tasks.spawn(async move {
                tokio::select! {
                    () = runtime.inner.shutdown.cancelled() => {}
                    () = tokio::time::sleep(FORGET_LINGER) => {}
                }
                let deletes = runtime.take_forgetting();
                if !deletes.is_empty()
                    && let Err(error) = runtime.inner.store.write(deletes).await
                {
                    tracing::debug!(%error, "forgetting de-duplication marks failed; they stay until pruned");
                }
            });
        }
    }

    /// The deletes [`Runtime::forget_marks_soon`] queued, taken (a write carries them).
    pub(super) fn take_forgetting(&self) -> Vec<StoreWrite> {
        let mut forgetting = lock(&self.inner.forgetting);
        forgetting.scheduled = false;
        std::mem::take(&mut forgetting.keys)
            .into_iter()
            .map(|key| StoreWrite::PutMeta { key, value: None })
            .collect()
    }

    /// Deletes the de-duplication marks of `keys` for `workflow` in one batch: call it once
    /// the source durably took the acknowledgement of those messages and can no longer
    /// redeliver them.
    pub async fn forget_marks(&self, workflow: &str, keys: &[String]) -> Result<(), StoreError> {
        if keys.is_empty() {
            return Ok(());
        }
        let batch = keys
            .iter()
            .map(|key| StoreWrite::PutMeta {
                key: mark_key(workflow, key),
                value: None,
            })
            .collect();
        self.inner.store.write(batch).await
    }
}

#[cfg(all(test, feature = "redb"))]
mod tests {
    //! Keyed submission: a crash between the durable record and the source's ack must not
    //! start a second execution when the source redelivers.

    use std::sync::Arc;

    use serde_json::json;

    use super::*;
    use crate::store::{ExecutionQuery, RedbOptions, RedbStore};
    use crate::trigger::testing;

    const FLOW: &str = r#"
reactor: 1
name: orders
triggers:
  - interval: { every: 1h }
steps:
  - action: transform
    with: { value: "${{ event.data.n }}" }
"#;

    async fn count(runtime: &Runtime) -> usize {
        runtime
            .store()
            .executions(&ExecutionQuery {
                workflow: Some("orders".into()),
                ..ExecutionQuery::default()
            })
            .await
            .unwrap()
            .len()
    }

    fn event(n: u32) -> Event {
        Event::new("kafka", "reactor:kafka/orders", json!({ "n": n }))
    }

    #[tokio::test]
    async fn crash_between_record_and_ack_does_not_run_twice() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.redb");
        let mark = || DedupeMark::new("kafka/orders/0/41", json!({"partition": 0, "offset": 41}));

        // First life: the message is recorded, then the process dies before the ack.
        let first_id = {
            let store = Arc::new(RedbStore::open(&path, RedbOptions::default()).unwrap());
            let runtime = testing::runtime(store.clone(), &[FLOW]);
            let Submission::Accepted(id) = runtime
                .submit_once("orders", event(1), json!({}), mark())
                .await
                .unwrap()
            else {
                panic!("not accepted");
            };
            runtime.wait(id).await.unwrap();
            store.close().await.unwrap();
            id
        };

        // Second life: the source redelivers the unacknowledged message.
        let store = Arc::new(RedbStore::open(&path, RedbOptions::default()).unwrap());
        let runtime = testing::runtime(store.clone(), &[FLOW]);
        runtime.recover().await.unwrap();
        let again = runtime
            .submit_once("orders", event(1), json!({}), mark())
            .await
            .unwrap();
        assert_eq!(again, Submission::Accepted(first_id));
        assert_eq!(count(&runtime).await, 1, "the redelivery started nothing");
        assert_eq!(runtime.stats().deduplicated.load(Ordering::Relaxed), 1);
        let recorded = runtime
            .mark("orders", "kafka/orders/0/41")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(recorded.execution, first_id);
        assert_eq!(recorded.position, json!({"partition": 0, "offset": 41}));

        // A new key runs; a forgotten key runs again (the source will never redeliver it).
        let other = DedupeMark::new("kafka/orders/0/42", json!(42));
        assert!(matches!(
            runtime.submit_once("orders", event(2), json!({}), other).await,
            Ok(Submission::Accepted(id)) if id != first_id
        ));
        runtime
            .forget_marks("orders", &["kafka/orders/0/41".to_string()])
            .await
            .unwrap();
        assert!(
            runtime
                .mark("orders", "kafka/orders/0/41")
                .await
                .unwrap()
                .is_none()
        );
        store.close().await.unwrap();
    }

    #[tokio::test]
    async fn concurrent_duplicates_start_one_execution() {
        let runtime = testing::runtime(testing::memory(), &[FLOW]);
        let submissions = (0..16).map(|_| {
            let runtime = runtime.clone();
            async move {
                runtime
                    .submit_once(
                        "orders",
                        event(7),
                        json!({}),
                        DedupeMark::new("same", json!(null)),
                    )
                    .await
                    .unwrap()
            }
        });
        let results = futures::future::join_all(submissions).await;
        assert!(
            results.windows(2).all(|pair| pair[0] == pair[1]),
            "{results:?}"
        );
        assert_eq!(count(&runtime).await, 1);
        assert!(
            lock(&runtime.inner.marking).is_empty(),
            "per-key locks are released"
        );
    }

    #[tokio::test]
    async fn marks_are_listed_by_key_prefix() {
        let runtime = testing::runtime(testing::memory(), &[FLOW]);
        let mut ids = Vec::new();
        for (n, key) in ["redis/s/g/1-2", "redis/s/g/1-1", "redis/s/h/1-0"]
            .into_iter()
            .enumerate()
        {
            let mark = DedupeMark::new(key, json!({ "n": n }));
            let Ok(Submission::Accepted(id)) = runtime
                .submit_once("orders", event(n as u32), json!({}), mark)
                .await
            else {
                panic!("not accepted");
            };
            ids.push(id);
        }
        let marks = runtime.marks("orders", "redis/s/g/").await.unwrap();
        let found: Vec<_> = marks
            .iter()
            .map(|(key, mark)| (key.as_str(), mark.execution, mark.position.clone()))
            .collect();
        assert_eq!(
            found,
            [
                ("redis/s/g/1-1", ids[1], json!({"n": 1})),
                ("redis/s/g/1-2", ids[0], json!({"n": 0})),
            ]
        );
        assert!(runtime.marks("other", "redis/").await.unwrap().is_empty());
        runtime
            .forget_marks("orders", &["redis/s/g/1-1".to_string()])
            .await
            .unwrap();
        assert_eq!(runtime.marks("orders", "redis/").await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn marks_forgotten_soon_ride_the_next_execution_or_go_alone() {
        let runtime = testing::runtime(testing::memory(), &[FLOW]);
        let submit = |n: u32| {
            let runtime = runtime.clone();
            async move {
                let mark = DedupeMark::new(format!("kafka/orders/0/{n}"), json!({ "offset": n }));
                runtime
                    .submit_once("orders", event(n), json!({}), mark)
                    .await
                    .unwrap()
            }
        };
        submit(1).await;
        let first = vec!["kafka/orders/0/1".to_string()];
        runtime.forget_marks_soon("orders", &first);
        assert!(runtime.mark("orders", &first[0]).await.unwrap().is_some());
        // The next execution's first write carries the delete.
        submit(2).await;
        assert!(runtime.mark("orders", &first[0]).await.unwrap().is_none());
        // With no execution to carry it, the delete goes alone after the linger.
        runtime.forget_marks_soon("orders", &["kafka/orders/0/2".to_string()]);
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while runtime
            .mark("orders", "kafka/orders/0/2")
            .await
            .unwrap()
            .is_some()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the lone delete never went"
            );
            tokio::time::sleep(FORGET_LINGER / 5).await;
        }
        assert_eq!(count(&runtime).await, 2);
    }

    #[tokio::test]
    async fn a_first_delivery_writes_its_mark_without_reading_one() {
        let runtime = testing::runtime(testing::memory(), &[FLOW]);
        let mark = || DedupeMark::new("redis/s/g/1-0", json!({ "id": "1-0" }));
        let accepted = |submission| match submission {
            Submission::Accepted(id) => id,
            other => panic!("not accepted: {other:?}"),
        };
        let once = runtime.submit_once("orders", event(1), json!({}), mark());
        let first = accepted(once.await.unwrap());
        // The caller vouches that the source never delivered it before: the store is not
        // asked, so a recorded key is not found (and is overwritten).
        let again = runtime.submit_once("orders", event(1), json!({}), mark().first());
        let second = accepted(again.await.unwrap());
        assert_ne!(first, second);
        assert_eq!(count(&runtime).await, 2);
        // A redelivery (not first) finds the mark the first delivery wrote.
        let redelivered = runtime.submit_once("orders", event(1), json!({}), mark());
        assert_eq!(accepted(redelivered.await.unwrap()), second);
        assert_eq!(count(&runtime).await, 2);
    }

    /// A redelivery that arrives while the first delivery is still being recorded (its
    /// write in the journal thread's queue) waits for it — the key's lock — and then finds
    /// its mark.
    #[tokio::test]
    async fn a_redelivery_waits_for_the_first_delivery_in_flight() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.redb");
        let store = Arc::new(RedbStore::open(&path, RedbOptions::default()).unwrap());
        let runtime = testing::runtime(store.clone(), &[FLOW]);
        let key = || DedupeMark::new("nats/s/9", json!(null));
        let (first, redelivered) = futures::future::join(
            runtime.submit_once("orders", event(9), json!({}), key().first()),
            runtime.submit_once("orders", event(9), json!({}), key()),
        )
        .await;
        assert_eq!(first.unwrap(), redelivered.unwrap());
        assert_eq!(count(&runtime).await, 1);
        store.close().await.unwrap();
    }

    #[tokio::test]
    async fn keys_are_bounded() {
        let runtime = testing::runtime(testing::memory(), &[FLOW]);
        let long = DedupeMark::new("k".repeat(MAX_MARK_KEY + 1), json!(null));
        let error = runtime
            .submit_once("orders", event(1), json!({}), long)
            .await
            .unwrap_err();
        assert!(error.to_string().contains("de-duplication key"), "{error}");
    }
}
