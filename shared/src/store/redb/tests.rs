//! RedbStore: the conformance suite, redb-specific checks, fault injection and crash tests.

use std::path::PathBuf;

use async_trait::async_trait;

use super::{RedbOptions, RedbStore};
use crate::store::conformance::Harness;

/// Fresh stores in a temporary directory; `reopen` drops the store and opens its file again.
#[derive(Debug)]
pub(super) struct RedbHarness {
    dir: tempfile::TempDir,
    count: usize,
    current: Option<PathBuf>,
}

impl RedbHarness {
    pub(super) fn new() -> RedbHarness {
        RedbHarness {
            dir: tempfile::tempdir().expect("temp dir"),
            count: 0,
            current: None,
        }
    }
}

#[async_trait]
impl Harness for RedbHarness {
    type Store = RedbStore;
    async fn fresh(&mut self) -> RedbStore {
        self.count += 1;
        let path = self.dir.path().join(format!("journal-{}.redb", self.count));
        self.current = Some(path.clone());
        RedbStore::open(path, RedbOptions::default()).expect("open")
    }
    async fn reopen(&mut self, store: RedbStore) -> Option<RedbStore> {
        store.close().await.expect("close");
        drop(store);
        let path = self.current.clone()?;
        Some(RedbStore::open(path, RedbOptions::default()).expect("reopen"))
    }
}

mod conformance {
    crate::store_conformance_tests!(super::RedbHarness::new());
}

/// Undecodable data on disk is reported as `Corrupt`, never a panic.
#[tokio::test]
async fn undecodable_values_are_corrupt() {
    use crate::engine::ExecutionStatus;
    use crate::store::conformance::{create, id, record};
    use crate::store::{Store, StoreError};

    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("corrupt.redb");
    let cases: [&[u8]; 4] = [b"", b"\x01{not json", b"\x09{}", b"\x01{\"id\":1}"];
    for (n, bytes) in (1u64..).zip(cases) {
        {
            let db = ::redb::Database::create(&path).expect("create");
            super::tables::init(&db).expect("init");
            super::tables::put_raw_record(&db, id(n), bytes).expect("plant");
        }
        let store = RedbStore::open(&path, RedbOptions::default()).expect("open");
        let err = store.execution(id(n)).await.expect_err("bad record");
        assert!(matches!(err, StoreError::Corrupt(_)), "{err}");
        let err = store.journal(id(n)).await.expect_err("bad fact");
        assert!(matches!(err, StoreError::Corrupt(_)), "{err}");
        let err = store.unfinished().await.expect_err("bad unfinished");
        assert!(matches!(err, StoreError::Corrupt(_)), "{err}");
        // An update needs the old record: refused, and the store keeps working.
        let err = store
            .write(vec![crate::store::StoreWrite::Update(record(
                id(n),
                "w",
                ExecutionStatus::Failed,
            ))])
            .await
            .expect_err("update over a corrupt record");
        assert!(matches!(err, StoreError::Corrupt(_)), "{err}");
        store
            .write(vec![create(record(
                id(100 + n),
                "w",
                ExecutionStatus::Running,
            ))])
            .await
            .expect("other writes still work");
        store.close().await.expect("close");
    }
}

/// A prune asked for while writers keep committing rides on their group commits: it ends
/// with exactly the executions beyond the retention removed, and every write lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_rides_on_concurrent_group_commits() {
    use crate::engine::{ExecutionStatus, Timestamp};
    use crate::store::conformance::{create, id, record};
    use crate::store::{ExecutionQuery, Retention, Store};
    use std::sync::Arc;

    let dir = tempfile::tempdir().expect("temp dir");
    let store = Arc::new(
        RedbStore::open(dir.path().join("prune.redb"), RedbOptions::default()).expect("open"),
    );
    let old: Vec<_> = (1..=1_000)
        .map(|n| create(record(id(n), "w", ExecutionStatus::Succeeded)))
        .collect();
    store.write(old).await.expect("write the old ones");
    let commits_before = store.commits();
    // 32 writers, 20 running executions each, while the prune runs.
    let writers = (0..32u64).map(|w| {
        let store = store.clone();
        tokio::spawn(async move {
            for n in 0..20u64 {
                let rec = record(id(10_000 + w * 100 + n), "w", ExecutionStatus::Running);
                store.write(vec![create(rec)]).await.expect("write");
            }
        })
    });
    let writers: Vec<_> = writers.collect();
    let retention = Retention {
        keep: 100,
        max_age: None,
    };
    let removed = store.prune(retention, Timestamp(0)).await.expect("prune");
    for writer in writers {
        writer.await.expect("writer");
    }
    assert_eq!(removed, 900);
    let left = store
        .executions(&ExecutionQuery::default())
        .await
        .expect("list");
    assert_eq!(left.len(), 100 + 32 * 20);
    let finished = left.iter().filter(|r| r.status.is_finished()).count();
    assert_eq!(finished, 100);
    // The oldest went first: the newest 100 are what is left.
    assert!(left.iter().any(|r| r.id == id(1_000)));
    assert!(!left.iter().any(|r| r.id == id(900)));
    // 640 batches plus the prune in far fewer than 640 + 4 commits would be a bonus; what is
    // guaranteed is that the prune needed no more than its own chunks beyond the writes.
    assert!(store.commits() - commits_before <= 640 + 900 / super::tables::PRUNE_CHUNK as u64 + 1);
    assert_eq!(
        store.prune(retention, Timestamp(0)).await.expect("again"),
        0
    );
}

/// A journal written before the binary format (JSON rows, format byte 1) keeps working: its
/// rows are read, an update rewrites the record in the new format, and it can be pruned.
#[tokio::test]
async fn json_rows_of_the_first_format_are_still_read() {
    use crate::engine::{ExecutionStatus, Fact, Timestamp};
    use crate::store::conformance::{id, record};
    use crate::store::{ExecutionQuery, Retention, Store};

    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("v1.redb");
    let old = record(id(1), "legacy", ExecutionStatus::Running);
    let started = Fact::Started {
        workflow: "legacy".into(),
        version: 1,
        event: crate::engine::Event::new("manual", "test", serde_json::json!({ "n": 1.5 })),
        inputs: serde_json::json!({}),
        parent: None,
        at: Timestamp(1),
    };
    let json = |value: &dyn erased::Json| {
        let mut bytes = vec![super::tables::FORMAT_V1];
        bytes.extend(value.json());
        bytes
    };
    {
        let db = ::redb::Database::create(&path).expect("create");
        super::tables::init(&db).expect("init");
        super::tables::put_raw_execution(&db, id(1), "legacy", &json(&old), &json(&started))
            .expect("plant");
    }
    let store = RedbStore::open(&path, RedbOptions::default()).expect("open");
    assert_eq!(
        store.execution(id(1)).await.expect("read"),
        Some(old.clone())
    );
    assert_eq!(
        store.journal(id(1)).await.expect("journal"),
        vec![started.clone()]
    );
    let unfinished = store.unfinished().await.expect("unfinished");
    assert_eq!(unfinished, vec![(old.clone(), vec![started])]);
    // An update (new format) over the JSON record moves its index entries.
    finish(&store, &old).await;
    assert!(store.unfinished().await.expect("unfinished").is_empty());
    let by_workflow = ExecutionQuery {
        workflow: Some("legacy".into()),
        ..ExecutionQuery::default()
    };
    assert_eq!(store.executions(&by_workflow).await.expect("list").len(), 1);
    let retention = Retention {
        keep: 0,
        max_age: None,
    };
    assert_eq!(
        store.prune(retention, Timestamp(3)).await.expect("prune"),
        1
    );
    assert!(
        store
            .executions(&by_workflow)
            .await
            .expect("list")
            .is_empty()
    );
    store.close().await.expect("close");
}

/// An execution created finished keeps its facts inline in its record row (`row.rs`): its
/// journal reads whole, later appends continue it in the journal table, an update keeps the
/// inline facts, and pruning removes everything.
#[tokio::test]
async fn executions_created_finished_keep_their_journal_inline() {
    use crate::engine::{ExecutionStatus, Timestamp};
    use crate::store::conformance::{append, create, id, record};
    use crate::store::{ExecutionQuery, Retention, Store, StoreError, StoreWrite};

    let mut harness = RedbHarness::new();
    let store = harness.fresh().await;
    let done = record(id(1), "pure", ExecutionStatus::Succeeded);
    let mark = StoreWrite::PutMeta {
        key: "mark".into(),
        value: Some(b"1".to_vec()),
    };
    store
        .write(vec![
            create(done.clone()),
            mark,
            append(id(1), 1),
            append(id(1), 2),
        ])
        .await
        .expect("create finished");
    let journal = store.journal(id(1)).await.expect("journal");
    assert_eq!(journal.len(), 3);
    assert_eq!(store.meta("mark").await.expect("meta"), Some(b"1".to_vec()));
    // Appends continue after the inline facts; a wrong seq is still refused.
    let err = store
        .write(vec![append(id(1), 2)])
        .await
        .expect_err("stale seq");
    assert!(
        matches!(
            err,
            StoreError::OutOfOrder {
                expected: 3,
                got: 2,
                ..
            }
        ),
        "{err}"
    );
    store
        .write(vec![append(id(1), 3)])
        .await
        .expect("append after inline facts");
    let mut updated = done.clone();
    updated.output = serde_json::json!({ "again": true });
    updated.finished_at = Some(Timestamp(5));
    store
        .write(vec![StoreWrite::Update(updated.clone())])
        .await
        .expect("update");
    let store = harness.reopen(store).await.expect("reopen");
    assert_eq!(
        store.execution(id(1)).await.expect("read"),
        Some(updated.clone())
    );
    let journal = store.journal(id(1)).await.expect("journal");
    assert_eq!(journal.len(), 4);
    assert_eq!(journal[3], crate::store::conformance::step_fact(3));
    let listed = store
        .executions(&ExecutionQuery {
            workflow: Some("pure".into()),
            ..ExecutionQuery::default()
        })
        .await
        .expect("list");
    assert_eq!(listed, vec![updated]);
    let retention = Retention {
        keep: 0,
        max_age: None,
    };
    assert_eq!(
        store.prune(retention, Timestamp(10)).await.expect("prune"),
        1
    );
    assert_eq!(store.execution(id(1)).await.expect("read"), None);
    assert!(store.journal(id(1)).await.expect("journal").is_empty());
    store.close().await.expect("close");
}

/// A running execution is created as an inline row too; the facts appended right before
/// the `Update` that finishes it fold into that row while its journal is wholly inline, and
/// take journal rows otherwise (earlier rows, or past the cap). Every journal reads back
/// whole and in order, before and after a reopen, and pruning leaves no journal rows.
#[tokio::test]
async fn facts_fold_into_the_row_only_while_the_journal_is_inline() {
    use crate::engine::{ExecutionStatus, Timestamp};
    use crate::store::conformance::{append, create, id, record, started, step_fact};
    use crate::store::{ExecutionQuery, Retention, Store, StoreWrite};

    let mut harness = RedbHarness::new();
    let store = harness.fresh().await;
    let finished = |n: u64| {
        let mut done = record(id(n), "fold", ExecutionStatus::Succeeded);
        done.finished_at = Some(Timestamp(2));
        done
    };
    let journal = |facts: u32| {
        let mut all = vec![started("fold")];
        all.extend((1..facts).map(step_fact));
        all
    };
    for n in 1..=4 {
        store
            .write(vec![create(record(
                id(n),
                "fold",
                ExecutionStatus::Running,
            ))])
            .await
            .expect("create");
    }
    // 1: created with its first fact inline, then two facts and the finish in one batch.
    store
        .write(vec![
            append(id(1), 1),
            append(id(1), 2),
            StoreWrite::Update(finished(1)),
        ])
        .await
        .expect("fold");
    // 2: a fact on its own first (a journal row), so the later ones must follow it there.
    store.write(vec![append(id(2), 1)]).await.expect("append");
    store
        .write(vec![append(id(2), 2), StoreWrite::Update(finished(2))])
        .await
        .expect("no fold");
    // 3: more facts than a row holds: the first ones fold, the rest take journal rows.
    let mut long: Vec<StoreWrite> = (1..100).map(|seq| append(id(3), seq)).collect();
    long.push(StoreWrite::Update(finished(3)));
    store.write(long).await.expect("long");
    // 4: a fact between the appends and the update is not a run: nothing folds.
    store
        .write(vec![
            append(id(4), 1),
            StoreWrite::PutMeta {
                key: "m".into(),
                value: None,
            },
            StoreWrite::Update(finished(4)),
        ])
        .await
        .expect("interrupted run");
    let check = async |store: &RedbStore| {
        for (n, facts) in [(1, 3), (2, 3), (3, 100), (4, 2)] {
            assert_eq!(
                store.journal(id(n)).await.expect("journal"),
                journal(facts),
                "execution {n}"
            );
            assert_eq!(
                store.execution(id(n)).await.expect("read"),
                Some(finished(n))
            );
        }
        assert!(store.unfinished().await.expect("unfinished").is_empty());
        let listed = store
            .executions(&ExecutionQuery {
                workflow: Some("fold".into()),
                ..ExecutionQuery::default()
            })
            .await
            .expect("list");
        assert_eq!(listed.len(), 4);
    };
    check(&store).await;
    let store = harness.reopen(store).await.expect("reopen");
    check(&store).await;
    // Journal rows: none for 1, two for 2, the facts past the cap for 3, one for 4.
    let path = harness.current.clone().expect("path");
    store.close().await.expect("close");
    drop(store);
    let rows = || {
        let db = ::redb::Database::open(&path).expect("open");
        super::tables::journal_rows(&db).expect("rows")
    };
    let cap = super::tables::INLINE_FACTS as usize;
    let last = |n| id(n).0.to_bytes()[15];
    assert_eq!(rows(), [(last(2), 2), (last(3), 100 - cap), (last(4), 1)]);
    let store = RedbStore::open(&path, RedbOptions::default()).expect("reopen");
    let retention = Retention {
        keep: 0,
        max_age: None,
    };
    assert_eq!(
        store.prune(retention, Timestamp(3)).await.expect("prune"),
        4
    );
    store.close().await.expect("close");
    drop(store);
    assert!(rows().is_empty());
}

/// A file written before inline journals (every execution's facts in the journal table,
/// format-2 records) opens and keeps working: read, append, finish, list, prune.
#[tokio::test]
async fn files_without_inline_journals_still_open() {
    use crate::engine::{ExecutionStatus, Timestamp};
    use crate::store::conformance::{append, id, record, started, step_fact};
    use crate::store::{ExecutionQuery, Retention, Store};

    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("v2.redb");
    let old = record(id(1), "legacy", ExecutionStatus::Running);
    let first = started("legacy");
    {
        let v2 = |write: &dyn Fn(&mut Vec<u8>)| {
            let mut bytes = vec![super::codec::FORMAT_V2];
            write(&mut bytes);
            bytes
        };
        let db = ::redb::Database::create(&path).expect("create");
        super::tables::init(&db).expect("init");
        let record_bytes = v2(&|out| super::codec::record(out, &old));
        let fact_bytes = v2(&|out| super::codec::fact(out, &first));
        super::tables::put_raw_execution(&db, id(1), "legacy", &record_bytes, &fact_bytes)
            .expect("plant");
    }
    let store = RedbStore::open(&path, RedbOptions::default()).expect("open");
    assert_eq!(
        store.journal(id(1)).await.expect("journal"),
        vec![first.clone()]
    );
    store.write(vec![append(id(1), 1)]).await.expect("append");
    finish(&store, &old).await;
    assert_eq!(
        store.journal(id(1)).await.expect("journal"),
        vec![first, step_fact(1)]
    );
    assert!(store.unfinished().await.expect("unfinished").is_empty());
    let all = store
        .executions(&ExecutionQuery::default())
        .await
        .expect("list");
    assert_eq!(all.len(), 1);
    let retention = Retention {
        keep: 0,
        max_age: None,
    };
    assert_eq!(
        store.prune(retention, Timestamp(3)).await.expect("prune"),
        1
    );
    assert!(store.journal(id(1)).await.expect("journal").is_empty());
    store.close().await.expect("close");
}

/// JSON encoding of the test values without naming their types twice.
mod erased {
    pub trait Json {
        fn json(&self) -> Vec<u8>;
    }
    impl<T: serde::Serialize> Json for T {
        fn json(&self) -> Vec<u8> {
            serde_json::to_vec(self).expect("json")
        }
    }
}

/// Writes `record` as succeeded at time 2 through an `Update` and checks it reads back so.
async fn finish(store: &RedbStore, record: &crate::engine::ExecutionRecord) {
    use crate::engine::{ExecutionStatus, Timestamp};
    use crate::store::{Store, StoreWrite};

    let mut done = record.clone();
    done.status = ExecutionStatus::Succeeded;
    done.finished_at = Some(Timestamp(2));
    store
        .write(vec![StoreWrite::Update(done.clone())])
        .await
        .expect("finish");
    assert_eq!(store.execution(done.id).await.expect("read"), Some(done));
}
