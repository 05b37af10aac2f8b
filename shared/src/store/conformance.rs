//! The conformance suite every [`Store`] implementation runs.
//!
//! An implementation provides a [`Harness`] (how to make an empty store and, for persistent
//! stores, how to reopen one) and either calls [`run_all`] or expands
//! [`store_conformance_tests!`](crate::store_conformance_tests) in a test module, which makes
//! one `#[tokio::test]` per case:
//!
//! ```ignore
//! #[cfg(test)]
//! mod tests {
//!     reactor_core::store_conformance_tests!(MySqlHarness::new());
//! }
//! ```
//!
//! Cases panic (with a message naming what broke) on a violation, like any test.

use std::time::Duration;

use async_trait::async_trait;

use super::{ExecutionQuery, MemoryStore, Retention, Store, StoreError, StoreWrite};
use crate::Value;
use crate::engine::{Event, ExecutionId, ExecutionRecord, ExecutionStatus, Fact, Timestamp};

/// Makes stores for the suite.
#[async_trait]
pub trait Harness: Send {
    type Store: Store;
    /// A new, empty store.
    async fn fresh(&mut self) -> Self::Store;
    /// Closes `store` and opens the same data again; `None` for stores that keep nothing
    /// across a reopen (the reopen case is then skipped).
    async fn reopen(&mut self, store: Self::Store) -> Option<Self::Store>;
}

/// The harness of [`MemoryStore`].
#[derive(Debug, Default)]
pub struct MemoryHarness;

#[async_trait]
impl Harness for MemoryHarness {
    type Store = MemoryStore;
    async fn fresh(&mut self) -> MemoryStore {
        MemoryStore::new()
    }
    async fn reopen(&mut self, _store: MemoryStore) -> Option<MemoryStore> {
        None
    }
}

/// Expands to one `#[tokio::test]` per conformance case, each with a harness made by `$make`.
/// The calling crate needs `tokio` with the `macros` and `rt-multi-thread` features.
#[macro_export]
macro_rules! store_conformance_tests {
    ($make:expr) => {
        $crate::store_conformance_tests!(@cases $make;
            create_append_read, batch_atomicity, unfinished_lists_running_and_queued,
            finishing_leaves_unfinished, query_executions, meta_put_get_delete, meta_by_prefix,
            prune_by_count, prune_by_age, concurrent_writers, reopen_sees_everything);
    };
    (@cases $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let mut harness = $make;
                $crate::store::conformance::$case(&mut harness).await;
            }
        )*
    };
}

/// Runs every case in turn.
pub async fn run_all<H: Harness>(harness: &mut H) {
    create_append_read(harness).await;
    batch_atomicity(harness).await;
    unfinished_lists_running_and_queued(harness).await;
    finishing_leaves_unfinished(harness).await;
    query_executions(harness).await;
    meta_put_get_delete(harness).await;
    meta_by_prefix(harness).await;
    prune_by_count(harness).await;
    prune_by_age(harness).await;
    concurrent_writers(harness).await;
    reopen_sees_everything(harness).await;
}

// ---- fixtures -------------------------------------------------------------------------------

const BASE_MS: u64 = 1_750_000_000_000;

/// The `n`th id: ids of higher `n` are newer.
pub fn id(n: u64) -> ExecutionId {
    ExecutionId(ulid::Ulid::from_parts(BASE_MS + n, u128::from(n) + 1))
}

pub fn record(id: ExecutionId, workflow: &str, status: ExecutionStatus) -> ExecutionRecord {
    let created = Timestamp(i64::try_from(id.0.timestamp_ms()).unwrap_or(i64::MAX));
    ExecutionRecord {
        id,
        workflow: workflow.to_string(),
        version: 1,
        status,
        created_at: created,
        finished_at: status.is_finished().then_some(created),
        output: Value::Null,
        error: None,
        steps: Vec::new(),
        parent: None,
        concurrency_key: None,
    }
}

pub fn started(workflow: &str) -> Fact {
    Fact::Started {
        workflow: workflow.to_string(),
        version: 1,
        event: Event {
            id: format!("event-of-{workflow}"),
            event_type: "test.event".into(),
            source: "conformance".into(),
            time: "2026-01-01T00:00:00.000Z".into(),
            data: serde_json::json!({"n": 1, "nested": {"b": [true, 1e300]}}),
            meta: serde_json::json!({"topic": "t/ü"}),
        },
        inputs: serde_json::json!({"list": [1, 2.5, "three", null]}),
        parent: None,
        at: Timestamp(1),
    }
}

pub fn step_fact(n: u32) -> Fact {
    Fact::EffectStarted {
        key: format!("step-{n}"),
        attempt: n,
        at: Timestamp(i64::from(n)),
    }
}

pub fn create(record: ExecutionRecord) -> StoreWrite {
    let started = started(&record.workflow);
    StoreWrite::Create { record, started }
}

pub fn append(id: ExecutionId, seq: u32) -> StoreWrite {
    StoreWrite::Append {
        id,
        seq,
        fact: step_fact(seq),
    }
}

fn ids(records: &[ExecutionRecord]) -> Vec<ExecutionId> {
    records.iter().map(|r| r.id).collect()
}

/// Checks the journal of `id` is `Started` followed by `step_fact(1..len)`.
async fn assert_journal(store: &impl Store, id: ExecutionId, len: u32) {
    let journal = store.journal(id).await.expect("journal");
    assert_eq!(journal.len(), len as usize, "journal length of {id}");
    assert!(matches!(journal.first(), Some(Fact::Started { .. })));
    for (seq, fact) in journal.iter().enumerate().skip(1) {
        let seq = u32::try_from(seq).expect("small seq");
        assert_eq!(fact, &step_fact(seq), "fact {seq} of {id}");
    }
}

// ---- cases ----------------------------------------------------------------------------------

pub async fn create_append_read<H: Harness>(harness: &mut H) {
    let store = harness.fresh().await;
    let rec = record(id(1), "orders", ExecutionStatus::Running);
    store
        .write(vec![create(rec.clone())])
        .await
        .expect("create");
    for seq in 1..=3 {
        store
            .write(vec![append(rec.id, seq)])
            .await
            .expect("append");
    }
    store
        .write(vec![append(rec.id, 4), append(rec.id, 5)])
        .await
        .expect("append two");
    assert_eq!(
        store.execution(rec.id).await.expect("read"),
        Some(rec.clone())
    );
    let journal = store.journal(rec.id).await.expect("journal");
    assert_eq!(journal[0], started("orders"), "Started round-trips");
    assert_journal(&store, rec.id, 6).await;
    assert_eq!(store.execution(id(2)).await.expect("read"), None);
    assert!(store.journal(id(2)).await.expect("journal").is_empty());
}

pub async fn batch_atomicity<H: Harness>(harness: &mut H) {
    let store = harness.fresh().await;
    let a = record(id(1), "w", ExecutionStatus::Running);
    let meta = StoreWrite::PutMeta {
        key: "k".into(),
        value: Some(b"v".to_vec()),
    };
    // Unknown execution at the end: nothing of the batch is written.
    let err = store
        .write(vec![
            create(a.clone()),
            append(a.id, 1),
            meta.clone(),
            append(id(9), 1),
        ])
        .await
        .expect_err("append to unknown execution");
    assert!(
        matches!(err, StoreError::NotFound(x) if x == id(9)),
        "{err}"
    );
    assert_eq!(store.execution(a.id).await.expect("read"), None);
    assert_eq!(store.meta("k").await.expect("meta"), None);

    store.write(vec![create(a.clone())]).await.expect("create");
    let err = store
        .write(vec![append(a.id, 1), append(a.id, 3)])
        .await
        .expect_err("gap in seq");
    assert!(
        matches!(
            err,
            StoreError::OutOfOrder {
                expected: 2,
                got: 3,
                ..
            }
        ),
        "{err}"
    );
    let err = store
        .write(vec![append(a.id, 0)])
        .await
        .expect_err("seq 0 again");
    assert!(
        matches!(err, StoreError::OutOfOrder { expected: 1, .. }),
        "{err}"
    );
    assert_journal(&store, a.id, 1).await;

    let err = store
        .write(vec![create(a.clone())])
        .await
        .expect_err("duplicate create");
    assert!(matches!(err, StoreError::AlreadyExists(_)), "{err}");
    let err = store
        .write(vec![StoreWrite::Update(record(
            id(5),
            "w",
            ExecutionStatus::Failed,
        ))])
        .await
        .expect_err("update unknown");
    assert!(matches!(err, StoreError::NotFound(_)), "{err}");
    let err = store
        .write(vec![StoreWrite::Create {
            record: record(id(6), "w", ExecutionStatus::Running),
            started: step_fact(0),
        }])
        .await
        .expect_err("create without Started");
    assert!(matches!(err, StoreError::InvalidWrite(_)), "{err}");

    // Creates and appends within one batch see each other.
    let b = record(id(2), "w", ExecutionStatus::Running);
    store
        .write(vec![create(b.clone()), append(b.id, 1), append(b.id, 2)])
        .await
        .expect("create and append in one batch");
    assert_journal(&store, b.id, 3).await;
}

pub async fn unfinished_lists_running_and_queued<H: Harness>(harness: &mut H) {
    let store = harness.fresh().await;
    let running = record(id(1), "w", ExecutionStatus::Running);
    let finished = record(id(2), "w", ExecutionStatus::Succeeded);
    let queued = record(id(3), "w", ExecutionStatus::Queued);
    store
        .write(vec![
            create(queued.clone()),
            create(finished.clone()),
            create(running.clone()),
            append(running.id, 1),
        ])
        .await
        .expect("write");
    let unfinished = store.unfinished().await.expect("unfinished");
    let listed: Vec<_> = unfinished.iter().map(|(r, _)| r.clone()).collect();
    assert_eq!(
        listed,
        vec![running.clone(), queued.clone()],
        "oldest first"
    );
    assert_eq!(unfinished[0].1.len(), 2, "journal of the running one");
    assert_eq!(unfinished[1].1, vec![started("w")]);
}

pub async fn finishing_leaves_unfinished<H: Harness>(harness: &mut H) {
    let store = harness.fresh().await;
    let mut rec = record(id(1), "w", ExecutionStatus::Queued);
    store
        .write(vec![create(rec.clone())])
        .await
        .expect("create");
    rec.status = ExecutionStatus::Running;
    store
        .write(vec![StoreWrite::Update(rec.clone()), append(rec.id, 1)])
        .await
        .expect("run");
    assert_eq!(store.unfinished().await.expect("unfinished").len(), 1);
    rec.status = ExecutionStatus::Failed;
    rec.finished_at = Some(Timestamp(BASE_MS as i64 + 10));
    rec.output = serde_json::json!({"ok": false});
    store
        .write(vec![StoreWrite::Update(rec.clone())])
        .await
        .expect("finish");
    assert!(store.unfinished().await.expect("unfinished").is_empty());
    assert_eq!(
        store.execution(rec.id).await.expect("read"),
        Some(rec.clone())
    );
    assert_journal(&store, rec.id, 2).await;
}

pub async fn query_executions<H: Harness>(harness: &mut H) {
    let store = harness.fresh().await;
    let mut batch = Vec::new();
    for n in 1..=12u64 {
        let workflow = if n.is_multiple_of(2) { "even" } else { "odd" };
        let status = match n % 3 {
            0 => ExecutionStatus::Succeeded,
            1 => ExecutionStatus::Running,
            _ => ExecutionStatus::Failed,
        };
        batch.push(create(record(id(n), workflow, status)));
    }
    store.write(batch).await.expect("write");
    let query = |workflow: Option<&str>, status, before, limit| ExecutionQuery {
        workflow: workflow.map(str::to_string),
        status,
        before,
        limit,
    };
    let all = store
        .executions(&query(None, None, None, 0))
        .await
        .expect("all");
    assert_eq!(
        ids(&all),
        (1..=12).rev().map(id).collect::<Vec<_>>(),
        "newest first"
    );
    let page = store
        .executions(&query(None, None, None, 5))
        .await
        .expect("page");
    assert_eq!(ids(&page), (8..=12).rev().map(id).collect::<Vec<_>>());
    let next = store
        .executions(&query(None, None, Some(id(8)), 5))
        .await
        .expect("next page");
    assert_eq!(ids(&next), (3..=7).rev().map(id).collect::<Vec<_>>());
    let even = store
        .executions(&query(Some("even"), None, Some(id(10)), 3))
        .await
        .expect("even");
    assert_eq!(ids(&even), vec![id(8), id(6), id(4)]);
    let succeeded_odd = store
        .executions(&query(
            Some("odd"),
            Some(ExecutionStatus::Succeeded),
            None,
            0,
        ))
        .await
        .expect("odd succeeded");
    assert_eq!(ids(&succeeded_odd), vec![id(9), id(3)]);
    let running = store
        .executions(&query(None, Some(ExecutionStatus::Running), None, 2))
        .await
        .expect("running");
    assert_eq!(ids(&running), vec![id(10), id(7)]);
    let none = store
        .executions(&query(Some("missing"), None, None, 0))
        .await
        .expect("missing");
    assert!(none.is_empty());
}

pub async fn meta_put_get_delete<H: Harness>(harness: &mut H) {
    let store = harness.fresh().await;
    let put = |key: &str, value: Option<&[u8]>| StoreWrite::PutMeta {
        key: key.to_string(),
        value: value.map(<[u8]>::to_vec),
    };
    store
        .write(vec![put("cron/a", Some(b"1")), put("cron/b", Some(b""))])
        .await
        .expect("put");
    assert_eq!(
        store.meta("cron/a").await.expect("get"),
        Some(b"1".to_vec())
    );
    assert_eq!(store.meta("cron/b").await.expect("get"), Some(Vec::new()));
    store
        .write(vec![put("cron/a", Some(b"2")), put("cron/b", None)])
        .await
        .expect("overwrite and delete");
    assert_eq!(
        store.meta("cron/a").await.expect("get"),
        Some(b"2".to_vec())
    );
    assert_eq!(store.meta("cron/b").await.expect("get"), None);
    assert_eq!(store.meta("never").await.expect("get"), None);
    store
        .write(vec![put("never", None)])
        .await
        .expect("deleting a missing key is fine");
}

pub async fn meta_by_prefix<H: Harness>(harness: &mut H) {
    let store = harness.fresh().await;
    let keys = [
        "dedupe/w/redis/s/g/1-0",
        "dedupe/w/redis/s/g/1-1",
        "dedupe/w/redis/s/g/1-1/x",
        "dedupe/w/redis/s/g",
        "dedupe/w/redis/s/g0",
        "dedupe/w/redis/s/h/1-0",
        "dedupe/w/redis/s/gü/1-0",
        "dedupe/v/redis/s/g/1-0",
    ];
    store
        .write(
            keys.iter()
                .enumerate()
                .map(|(n, key)| StoreWrite::PutMeta {
                    key: key.to_string(),
                    value: Some(vec![n as u8]),
                })
                .collect(),
        )
        .await
        .expect("put");
    let found = store
        .meta_prefix("dedupe/w/redis/s/g/")
        .await
        .expect("scan");
    assert_eq!(
        found,
        vec![
            ("dedupe/w/redis/s/g/1-0".to_string(), vec![0]),
            ("dedupe/w/redis/s/g/1-1".to_string(), vec![1]),
            ("dedupe/w/redis/s/g/1-1/x".to_string(), vec![2]),
        ]
    );
    let found = store.meta_prefix("dedupe/w/redis/s/g").await.expect("scan");
    let found: Vec<&str> = found.iter().map(|(key, _)| key.as_str()).collect();
    assert_eq!(
        found,
        [
            "dedupe/w/redis/s/g",
            "dedupe/w/redis/s/g/1-0",
            "dedupe/w/redis/s/g/1-1",
            "dedupe/w/redis/s/g/1-1/x",
            "dedupe/w/redis/s/g0",
            "dedupe/w/redis/s/gü/1-0",
        ],
        "byte order, the prefix's own key included"
    );
    assert!(
        store
            .meta_prefix("nothing/")
            .await
            .expect("scan")
            .is_empty()
    );
    assert_eq!(store.meta_prefix("").await.expect("scan").len(), keys.len());
}

pub async fn prune_by_count<H: Harness>(harness: &mut H) {
    let store = harness.fresh().await;
    // More finished executions than one prune chunk of any sane store.
    let finished = 600;
    let mut batch: Vec<StoreWrite> = (1..=finished)
        .map(|n| create(record(id(n), "w", ExecutionStatus::Succeeded)))
        .collect();
    batch.push(create(record(id(0), "w", ExecutionStatus::Running)));
    batch.push(create(record(id(1000), "w", ExecutionStatus::Queued)));
    store.write(batch).await.expect("write");
    let retention = Retention {
        keep: 3,
        max_age: None,
    };
    let removed = store.prune(retention, Timestamp(0)).await.expect("prune");
    assert_eq!(removed, finished as usize - 3);
    let left = store
        .executions(&ExecutionQuery::default())
        .await
        .expect("list");
    let expected = vec![
        id(1000),
        id(finished),
        id(finished - 1),
        id(finished - 2),
        id(0),
    ];
    assert_eq!(ids(&left), expected);
    assert!(
        store.journal(id(1)).await.expect("journal").is_empty(),
        "journal pruned"
    );
    assert_eq!(
        store.prune(retention, Timestamp(0)).await.expect("again"),
        0
    );
    assert_eq!(store.unfinished().await.expect("unfinished").len(), 2);
}

pub async fn prune_by_age<H: Harness>(harness: &mut H) {
    let store = harness.fresh().await;
    let hour = 3_600_000;
    let now = Timestamp(BASE_MS as i64 + 100 * hour);
    let mut batch = Vec::new();
    for n in 1..=6u64 {
        let mut rec = record(id(n), "w", ExecutionStatus::Cancelled);
        // n = 1..=3 finished long ago; 4..=6 within the hour.
        let ago = if n <= 3 { 50 * hour } else { hour / 2 };
        rec.finished_at = Some(Timestamp(now.0 - ago));
        batch.push(create(rec));
    }
    // Old but running: never pruned.
    batch.push(create(record(id(7), "w", ExecutionStatus::Running)));
    store.write(batch).await.expect("write");
    let retention = Retention {
        keep: 100,
        max_age: Some(Duration::from_secs(3600)),
    };
    assert_eq!(store.prune(retention, now).await.expect("prune"), 3);
    let left = store
        .executions(&ExecutionQuery::default())
        .await
        .expect("list");
    assert_eq!(ids(&left), vec![id(7), id(6), id(5), id(4)]);
}

pub async fn concurrent_writers<H: Harness>(harness: &mut H) {
    const WRITERS: u64 = 64;
    const WRITES: u32 = 50;
    let store = harness.fresh().await;
    let store = &store;
    let writers = (0..WRITERS).map(|w| async move {
        let rec = record(id(w), "load", ExecutionStatus::Running);
        store.write(vec![create(rec)]).await.expect("create");
        for seq in 1..WRITES {
            store.write(vec![append(id(w), seq)]).await.expect("append");
        }
    });
    futures::future::join_all(writers).await;
    for w in 0..WRITERS {
        assert_journal(store, id(w), WRITES).await;
    }
    assert_eq!(
        store.unfinished().await.expect("unfinished").len(),
        WRITERS as usize
    );
}

pub async fn reopen_sees_everything<H: Harness>(harness: &mut H) {
    let store = harness.fresh().await;
    let mut done = record(id(1), "w", ExecutionStatus::Running);
    let running = record(id(2), "w", ExecutionStatus::Running);
    store
        .write(vec![
            create(done.clone()),
            create(running.clone()),
            append(running.id, 1),
            StoreWrite::PutMeta {
                key: "m".into(),
                value: Some(vec![0, 255]),
            },
        ])
        .await
        .expect("write");
    done.status = ExecutionStatus::Succeeded;
    done.finished_at = Some(Timestamp(5));
    store
        .write(vec![StoreWrite::Update(done.clone())])
        .await
        .expect("finish");
    let Some(store) = harness.reopen(store).await else {
        return;
    };
    assert_eq!(
        store.execution(done.id).await.expect("read"),
        Some(done.clone())
    );
    let unfinished = store.unfinished().await.expect("unfinished");
    assert_eq!(unfinished.len(), 1);
    assert_eq!(unfinished[0].0, running);
    assert_eq!(unfinished[0].1.len(), 2);
    assert_eq!(store.meta("m").await.expect("meta"), Some(vec![0, 255]));
    store
        .write(vec![append(running.id, 2)])
        .await
        .expect("the journal continues after a reopen");
    assert_journal(&store, running.id, 3).await;
}
