//! De-duplication marks in the hub's SQL store are pruned once older than `MARK_MAX_AGE`,
//! on SQLite and PostgreSQL: marks written by `Runtime::submit_once` (the way every broker
//! and database trigger submits) survive a prune inside the window and go after it; other
//! meta values (cron ticks, poll positions) and unreadable marks stay.

use std::sync::Arc;
use std::time::Duration;

use reactor_core::action::builtin_registry;
use reactor_core::engine::{
    DedupeMark, Environment, Event, Runtime, RuntimeConfig, Submission, Timestamp,
};
use reactor_core::store::{Retention, Store, StoreWrite};
use reactor_hub::db::testing::TempPostgres;
use reactor_hub::db::{Database, HubInstance, MARK_MAX_AGE, MARK_PRUNE_EVERY, SqlStore};
use serde_json::json;

const LEASE: Duration = Duration::from_secs(30);
const DAY: i64 = 86_400_000;

async fn store(db: Database) -> (Arc<SqlStore>, HubInstance) {
    db.migrate().await.expect("migrate");
    let instance = HubInstance::register(&db, LEASE).await.expect("register");
    (Arc::new(SqlStore::new(db, instance.id())), instance)
}

async fn marks_are_pruned_after_the_window(store: Arc<SqlStore>) {
    let runtime = Runtime::new(
        store.clone(),
        builtin_registry(Default::default()),
        Environment::empty(),
        RuntimeConfig::default(),
    );
    let yaml = "reactor: 1\nname: orders\ntriggers:\n  - event: { type: order }\nsteps:\n  - action: transform\n    with: { value: 1 }\n";
    runtime.load(reactor_core::dsl::parse_workflow("orders.yaml", yaml).unwrap());
    let submit = |key: &'static str| {
        let runtime = runtime.clone();
        async move {
            runtime
                .submit_once(
                    "orders",
                    Event::new("order", "test", json!({})),
                    json!({}),
                    DedupeMark::new(key, json!({"offset": 1})),
                )
                .await
                .unwrap()
        }
    };
    let Submission::Accepted(first) = submit("kafka/orders/0/1").await else {
        panic!("not accepted");
    };
    assert!(matches!(
        submit("kafka/orders/0/2").await,
        Submission::Accepted(_)
    ));
    // An older mark, as a hub that died between acknowledgement and delete leaves it.
    let now = Timestamp::now();
    let stale =
        json!({"execution": first.to_string(), "at": now.millis() - 8 * DAY, "position": 0});
    store
        .write(vec![
            StoreWrite::PutMeta {
                key: "dedupe/orders/kafka/orders/0/0".into(),
                value: Some(serde_json::to_vec(&stale).unwrap()),
            },
            StoreWrite::PutMeta {
                key: "dedupe/orders/garbled".into(),
                value: Some(b"not json".to_vec()),
            },
            StoreWrite::PutMeta {
                key: "cron/orders/0".into(),
                value: Some(0i64.to_be_bytes().to_vec()),
            },
            StoreWrite::PutMeta {
                key: "dedupe0".into(),
                value: Some(serde_json::to_vec(&stale).unwrap()),
            },
        ])
        .await
        .unwrap();
    let retention = Retention::default();

    // Within the window: only the stale mark goes.
    store.prune(retention, now).await.unwrap();
    assert!(
        store
            .meta("dedupe/orders/kafka/orders/0/0")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        runtime
            .mark("orders", "kafka/orders/0/1")
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        runtime
            .mark("orders", "kafka/orders/0/2")
            .await
            .unwrap()
            .is_some()
    );
    // A redelivery inside the window is still absorbed.
    assert_eq!(
        submit("kafka/orders/0/1").await,
        Submission::Accepted(first)
    );

    // A day before the window ends: kept.
    let almost = Timestamp(now.millis() + i64::try_from(MARK_MAX_AGE.as_millis()).unwrap() - DAY);
    store.prune(retention, almost).await.unwrap();
    assert!(
        runtime
            .mark("orders", "kafka/orders/0/1")
            .await
            .unwrap()
            .is_some()
    );

    // After it: gone, and everything that is not a readable mark stays.
    let after = Timestamp(now.millis() + i64::try_from(MARK_MAX_AGE.as_millis()).unwrap() + DAY);
    store.prune(retention, after).await.unwrap();
    assert!(
        runtime
            .mark("orders", "kafka/orders/0/1")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        runtime
            .mark("orders", "kafka/orders/0/2")
            .await
            .unwrap()
            .is_none()
    );
    assert!(store.meta("dedupe/orders/garbled").await.unwrap().is_some());
    assert!(store.meta("cron/orders/0").await.unwrap().is_some());
    assert!(store.meta("dedupe0").await.unwrap().is_some());
    runtime.shutdown().await;
}

/// More marks than one pruning page (1,000): every old one goes.
async fn many_marks_are_pruned_page_by_page(store: Arc<SqlStore>) {
    let now = Timestamp::now();
    let old = serde_json::to_vec(&json!({"execution": "01J0000000000000000000000A", "at": now.millis() - 8 * DAY, "position": null})).unwrap();
    let young = serde_json::to_vec(
        &json!({"execution": "01J0000000000000000000000A", "at": now.millis(), "position": null}),
    )
    .unwrap();
    let batch = (0..2_500)
        .map(|n| StoreWrite::PutMeta {
            key: format!("dedupe/bulk/redis/s/g/{n:05}"),
            value: Some(if n % 5 == 0 {
                young.clone()
            } else {
                old.clone()
            }),
        })
        .collect();
    store.write(batch).await.unwrap();
    store.prune(Retention::default(), now).await.unwrap();
    let mut kept = 0;
    for n in 0..2_500 {
        if store
            .meta(&format!("dedupe/bulk/redis/s/g/{n:05}"))
            .await
            .unwrap()
            .is_some()
        {
            assert_eq!(n % 5, 0, "mark {n} should be gone");
            kept += 1;
        }
    }
    assert_eq!(kept, 500);
}

/// Marks are examined at most every `MARK_PRUNE_EVERY`, not with every prune of executions.
async fn marks_are_examined_at_most_every_interval(store: Arc<SqlStore>) {
    let start = Timestamp::now();
    let old = |key: &str| StoreWrite::PutMeta {
        key: format!("dedupe/spaced/{key}"),
        value: Some(
            serde_json::to_vec(&json!({"execution": "01J0000000000000000000000A",
                "at": start.millis() - 8 * DAY, "position": null}))
            .unwrap(),
        ),
    };
    let present = |key: &'static str| {
        let store = store.clone();
        async move {
            store
                .meta(&format!("dedupe/spaced/{key}"))
                .await
                .unwrap()
                .is_some()
        }
    };
    let every = i64::try_from(MARK_PRUNE_EVERY.as_millis()).unwrap();
    // Far from the other tests' instants, so the first prune here is due.
    let at = |ms: i64| Timestamp(start.millis() + 30 * DAY + ms);
    store.write(vec![old("a")]).await.unwrap();
    store.prune(Retention::default(), at(0)).await.unwrap();
    assert!(!present("a").await, "examined: the old mark went");
    store.write(vec![old("b")]).await.unwrap();
    store
        .prune(Retention::default(), at(every - 1))
        .await
        .unwrap();
    assert!(present("b").await, "not examined again so soon");
    store.prune(Retention::default(), at(every)).await.unwrap();
    assert!(
        !present("b").await,
        "examined again once the interval passed"
    );
}

#[tokio::test]
async fn sqlite_prunes_old_marks() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _instance) = store(Database::open(None, dir.path()).await.unwrap()).await;
    marks_are_pruned_after_the_window(store.clone()).await;
    many_marks_are_pruned_page_by_page(store.clone()).await;
    marks_are_examined_at_most_every_interval(store).await;
}

#[tokio::test]
async fn postgres_prunes_old_marks() {
    let database = TempPostgres::create("marks")
        .await
        .expect("create database");
    let db = Database::open(Some(database.url()), std::path::Path::new("unused"))
        .await
        .unwrap();
    let (store, instance) = store(db).await;
    marks_are_pruned_after_the_window(store.clone()).await;
    many_marks_are_pruned_page_by_page(store.clone()).await;
    marks_are_examined_at_most_every_interval(store).await;
    drop(instance);
}
