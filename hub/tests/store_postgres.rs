//! The store conformance suite on PostgreSQL: each case in a database of its own, created
//! and dropped by the harness.

use std::time::Duration;

use async_trait::async_trait;
use reactor_core::engine::{ExecutionStatus, Timestamp};
use reactor_core::store::conformance::{Harness, append, create, id, record};
use reactor_core::store::{ExecutionQuery, Retention, Store, StoreError, StoreWrite};
use reactor_hub::db::testing::TempPostgres;
use reactor_hub::db::{Database, ExecutionFilter, HubInstance, SqlStore};

const LEASE: Duration = Duration::from_secs(30);

#[derive(Debug, Default)]
struct PostgresHarness {
    // Dropped last: the database goes after the store and instance.
    instance: Option<HubInstance>,
    database: Option<TempPostgres>,
}

async fn open(url: &str) -> (SqlStore, HubInstance) {
    let db = Database::open(Some(url), std::path::Path::new("unused"))
        .await
        .expect("open");
    db.migrate().await.expect("migrate");
    let instance = HubInstance::register(&db, LEASE).await.expect("register");
    (SqlStore::new(db, instance.id()), instance)
}

#[async_trait]
impl Harness for PostgresHarness {
    type Store = SqlStore;

    async fn fresh(&mut self) -> SqlStore {
        let database = TempPostgres::create("store")
            .await
            .expect("create database");
        let (store, instance) = open(database.url()).await;
        self.database = Some(database);
        self.instance = Some(instance);
        store
    }

    async fn reopen(&mut self, store: SqlStore) -> Option<SqlStore> {
        // A restarted hub is a new instance; the old one released its lease on shutdown.
        let old = self.instance.take().expect("fresh first");
        old.release().await.expect("release");
        let db = store.database().clone();
        drop(store);
        db.close().await;
        let url = self
            .database
            .as_ref()
            .expect("fresh first")
            .url()
            .to_string();
        let (store, instance) = open(&url).await;
        self.instance = Some(instance);
        Some(store)
    }
}

mod conformance {
    reactor_core::store_conformance_tests!(super::PostgresHarness::default());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_run_twice_and_filters_use_every_column() {
    let database = TempPostgres::create("filters")
        .await
        .expect("create database");
    let (store, _instance) = open(database.url()).await;
    store.database().migrate().await.expect("idempotent");
    let mut batch = Vec::new();
    for n in 1..=20u64 {
        let status = if n % 2 == 0 {
            ExecutionStatus::Succeeded
        } else {
            ExecutionStatus::Failed
        };
        let rec = record(id(n), if n <= 10 { "a" } else { "b" }, status);
        let mut write = create(rec);
        if let StoreWrite::Create {
            started: reactor_core::engine::Fact::Started { event, .. },
            ..
        } = &mut write
        {
            event.meta = serde_json::json!({ "device": format!("dev-{}", n % 3) });
        }
        batch.push(write);
    }
    store.write(batch).await.expect("write");
    let created = |n: u64| Timestamp(i64::try_from(id(n).0.timestamp_ms()).expect("ms"));
    let found = store
        .list(&ExecutionFilter {
            workflow: Some("b".into()),
            status: Some(ExecutionStatus::Failed),
            device: Some("dev-1".into()),
            since: Some(created(11)),
            until: Some(created(20)),
            before: None,
            limit: 10,
        })
        .await
        .expect("list");
    let ids: Vec<_> = found.iter().map(|r| r.id).collect();
    // b: 11..=20; failed: odd; device dev-1: n % 3 == 1 → 13, 19; until excludes 20.
    assert_eq!(ids, vec![id(19), id(13)]);
    let page = store
        .executions(&ExecutionQuery {
            before: Some(id(19)),
            limit: 2,
            ..ExecutionQuery::default()
        })
        .await
        .expect("page");
    assert_eq!(
        page.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![id(18), id(17)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_instance_cannot_write_to_an_execution_it_does_not_own() {
    let database = TempPostgres::create("fence")
        .await
        .expect("create database");
    let (a, _a_instance) = open(database.url()).await;
    let (b, _b_instance) = open(database.url()).await;
    let rec = record(id(1), "w", ExecutionStatus::Running);
    a.write(vec![create(rec.clone())]).await.expect("create");
    let err = b
        .write(vec![append(rec.id, 1)])
        .await
        .expect_err("b does not own it");
    assert!(matches!(err, StoreError::InvalidWrite(_)), "{err}");
    // B's claim skips it: A's lease holds.
    assert!(b.unfinished().await.expect("claim").is_empty());
    a.write(vec![append(rec.id, 1)])
        .await
        .expect("the owner writes");
    assert_eq!(a.unfinished().await.expect("own").len(), 1);
    // Retention sees only finished executions, whoever owns them.
    assert_eq!(
        b.prune(
            Retention {
                keep: 0,
                max_age: None
            },
            Timestamp::now()
        )
        .await
        .expect("prune"),
        0
    );
}
