//! The store conformance suite on SQLite, and the file staying bounded under retention.

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use reactor_core::engine::{ExecutionStatus, Timestamp};
use reactor_core::store::conformance::{Harness, append, create, id, record};
use reactor_core::store::{Retention, Store, StoreWrite};
use reactor_hub::db::{Database, HubInstance, SqlStore};
use tempfile::TempDir;

const LEASE: Duration = Duration::from_secs(30);

/// Each store lives in its own temporary data folder.
#[derive(Debug, Default)]
struct SqliteHarness {
    dir: Option<TempDir>,
    instance: Option<HubInstance>,
}

async fn open(dir: &Path) -> (SqlStore, HubInstance) {
    let db = Database::open(None, dir).await.expect("open");
    db.migrate().await.expect("migrate");
    let instance = HubInstance::register(&db, LEASE).await.expect("register");
    (SqlStore::new(db, instance.id()), instance)
}

#[async_trait]
impl Harness for SqliteHarness {
    type Store = SqlStore;

    async fn fresh(&mut self) -> SqlStore {
        let dir = TempDir::new().expect("temp dir");
        let (store, instance) = open(dir.path()).await;
        self.dir = Some(dir);
        self.instance = Some(instance);
        store
    }

    async fn reopen(&mut self, store: SqlStore) -> Option<SqlStore> {
        let db = store.database().clone();
        drop(store);
        db.close().await;
        // The old instance goes away as a crashed hub would: its lock with it.
        self.instance = None;
        let dir = self.dir.as_ref().expect("fresh first");
        let (store, instance) = open(dir.path()).await;
        self.instance = Some(instance);
        Some(store)
    }
}

mod conformance {
    reactor_core::store_conformance_tests!(super::SqliteHarness::default());
}

#[tokio::test]
async fn a_second_hub_on_one_data_folder_is_refused() {
    let dir = TempDir::new().expect("temp dir");
    let (_store, _instance) = open(dir.path()).await;
    let db = Database::open(None, dir.path()).await.expect("open");
    let err = HubInstance::register(&db, LEASE)
        .await
        .expect_err("the data folder is in use");
    assert!(err.to_string().contains("another hub"), "{err}");
}

#[tokio::test]
async fn unsupported_urls_are_refused_clearly() {
    let dir = TempDir::new().expect("temp dir");
    let err = Database::open(Some("mysql://root@localhost/x"), dir.path())
        .await
        .expect_err("mysql is not a hub database");
    assert!(
        err.to_string().contains("unsupported database URL"),
        "{err}"
    );
}

/// The size of the database file plus its WAL.
fn footprint(dir: &Path) -> u64 {
    ["hub.db", "hub.db-wal"]
        .iter()
        .filter_map(|name| std::fs::metadata(dir.join(name)).ok())
        .map(|meta| meta.len())
        .sum()
}

/// Writes `count` finished executions with bulky journals, created after `start`.
async fn fill(store: &SqlStore, start: u64, count: u64) {
    for chunk in (start..start + count).collect::<Vec<_>>().chunks(100) {
        let mut batch = Vec::new();
        for &n in chunk {
            let mut rec = record(id(n), "bulk", ExecutionStatus::Running);
            batch.push(create(rec.clone()));
            for seq in 1..=5 {
                batch.push(append(rec.id, seq));
            }
            rec.status = ExecutionStatus::Succeeded;
            rec.finished_at = Some(rec.created_at);
            rec.output = serde_json::json!({ "padding": "x".repeat(2_000) });
            batch.push(StoreWrite::Update(rec));
        }
        store.write(batch).await.expect("write");
    }
}

/// Runs past retention twice: after the second round the file is no bigger than after the
/// first (freed pages go back to the file system through `incremental_vacuum`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_keeps_the_file_bounded() {
    let dir = TempDir::new().expect("temp dir");
    let (store, _instance) = open(dir.path()).await;
    let retention = Retention {
        keep: 500,
        max_age: None,
    };
    let round = 3_000;
    fill(&store, 0, round).await;
    let full = footprint(dir.path());
    let removed = store
        .prune(retention, Timestamp::now())
        .await
        .expect("prune");
    assert_eq!(removed, round as usize - 500);
    let after_first = footprint(dir.path());
    assert!(
        after_first < full,
        "pruning gave space back: {full} -> {after_first}"
    );
    fill(&store, round, round).await;
    let removed = store
        .prune(retention, Timestamp::now())
        .await
        .expect("prune");
    assert_eq!(removed, round as usize);
    fill(&store, 2 * round, round).await;
    let removed = store
        .prune(retention, Timestamp::now())
        .await
        .expect("prune");
    assert_eq!(removed, round as usize);
    let after_third = footprint(dir.path());
    let kept = store
        .list(&reactor_hub::db::ExecutionFilter::default())
        .await
        .expect("list");
    assert_eq!(kept.len(), 500);
    assert_eq!(kept[0].id, id(3 * round - 1), "the newest are kept");
    // Three rounds of 3,000 written; the file holds 500 plus slack, not 9,000.
    let db_file = std::fs::metadata(dir.path().join("hub.db"))
        .expect("db file")
        .len();
    eprintln!(
        "full {full} B, after first prune {after_first} B, after third {after_third} B, db file {db_file} B"
    );
    assert!(
        db_file <= full / 2,
        "the database file is bounded by retention: {db_file} B after 9,000 executions vs {full} B for 3,000"
    );
    assert!(
        after_third <= full + full / 4,
        "database + WAL stay bounded: {after_third} B vs {full} B"
    );
}

/// Groups bigger than the largest statement shape (64 rows) take every multi-row path: new
/// executions, stored ones that only got facts (their `next_seq` and owner by `json_each`),
/// stored ones with a new summary (the upsert, which keeps `device`), meta puts and deletes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_groups_write_every_row() {
    let dir = TempDir::new().expect("temp dir");
    let (store, _instance) = open(dir.path()).await;
    let n = 150u64;
    let records: Vec<_> = (0..n)
        .map(|i| record(id(i), "big", ExecutionStatus::Running))
        .collect();
    let mut batch: Vec<StoreWrite> = records.iter().cloned().map(create).collect();
    batch.extend((0..n).map(|i| StoreWrite::PutMeta {
        key: format!("big/{i:03}"),
        value: Some(vec![u8::try_from(i).expect("small")]),
    }));
    store.write(batch).await.expect("creates");
    // Facts for every execution; a new summary for the first 100 of them.
    let mut batch: Vec<StoreWrite> = records.iter().map(|r| append(r.id, 1)).collect();
    for r in records.iter().take(100) {
        let mut finished = r.clone();
        finished.status = ExecutionStatus::Succeeded;
        finished.finished_at = Some(r.created_at);
        batch.push(StoreWrite::Update(finished));
    }
    batch.extend((0..70).map(|i| StoreWrite::PutMeta {
        key: format!("big/{i:03}"),
        value: None,
    }));
    store.write(batch).await.expect("appends and updates");
    // Every execution took its fact (the next one must be seq 2).
    let next: Vec<StoreWrite> = records.iter().map(|r| append(r.id, 2)).collect();
    store.write(next).await.expect("seq 2 follows");
    for (i, r) in records.iter().enumerate() {
        assert_eq!(store.journal(r.id).await.expect("journal").len(), 3);
        let stored = store.execution(r.id).await.expect("read").expect("stored");
        let want = if i < 100 {
            ExecutionStatus::Succeeded
        } else {
            ExecutionStatus::Running
        };
        assert_eq!(stored.status, want, "execution {i}");
    }
    let meta = store.meta_prefix("big/").await.expect("meta");
    assert_eq!(meta.len(), 80);
    assert_eq!(meta[0], ("big/070".to_string(), vec![70]));
    let finished = store
        .list(&reactor_hub::db::ExecutionFilter {
            status: Some(ExecutionStatus::Succeeded),
            ..Default::default()
        })
        .await
        .expect("list");
    assert_eq!(finished.len(), 100, "the status column follows the upsert");
}

/// The journal checkpoints the WAL into the database file on its own, long before
/// SQLite's automatic checkpoint (64 MiB here) would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wal_is_checkpointed_off_the_writer() {
    let dir = TempDir::new().expect("temp dir");
    let (store, _instance) = open(dir.path()).await;
    let db_file = || {
        std::fs::metadata(dir.path().join("hub.db"))
            .expect("db file")
            .len()
    };
    let before = db_file();
    fill(&store, 0, 300).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while db_file() < before + 500_000 {
        assert!(
            std::time::Instant::now() < deadline,
            "nothing was checkpointed: the database file stayed at {} B",
            db_file()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
