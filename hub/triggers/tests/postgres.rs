//! The `postgres` trigger against the real PostgreSQL on 127.0.0.1:5432 (database `test`,
//! `wal_level = logical` from scripts/services).

#![cfg(feature = "postgres")]

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use reactor_core::engine::Runtime;
use reactor_core::flow;
use reactor_core::trigger::TriggerError;
use reactor_hub_triggers::postgres::PostgresTrigger;
use reactor_hub_triggers::{Connections, Leader};
use serde_json::json;
use sqlx::{Connection, Executor, PgConnection};

const URL: &str = "postgres://postgres@127.0.0.1:5432/test";

async fn db() -> PgConnection {
    PgConnection::connect(URL).await.unwrap()
}

async fn exec(sql: &str) {
    db().await.execute(sqlx::AssertSqlSafe(sql)).await.unwrap();
}

/// A fresh table (REPLICA IDENTITY FULL) and slot names for one test.
async fn table(prefix: &str) -> String {
    drop_orphaned_slots().await;
    let name = unique(prefix);
    exec(&format!(
        "CREATE TABLE {name} (id serial PRIMARY KEY, item text NOT NULL, qty integer, doc jsonb, \
         paid boolean DEFAULT false); ALTER TABLE {name} REPLICA IDENTITY FULL"
    ))
    .await;
    name
}

/// Drops the replication slots that a test process which is gone left behind — a failed
/// assertion skips its test's cleanup. An abandoned slot holds every WAL segment after it
/// on a machine that runs these tests again and again. Names from [`unique`] carry the
/// creating process's id; a slot of a live process (this one's, or a parallel run's) stays.
async fn drop_orphaned_slots() {
    let mut conn = db().await;
    let slots: Vec<(String,)> = sqlx::query_as(
        "SELECT slot_name::text FROM pg_replication_slots WHERE slot_name LIKE 'rt\\_%' AND NOT active",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    for (slot,) in slots {
        let Some(pid) = slot.split('_').find_map(|part| part.parse::<u32>().ok()) else {
            continue;
        };
        if std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let _ = sqlx::query("SELECT pg_drop_replication_slot($1)")
            .bind(&slot)
            .execute(&mut conn)
            .await;
    }
}

async fn cleanup(table: &str, slot: &str) {
    let mut conn = db().await;
    let _ = sqlx::query(
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1",
    )
    .bind(slot)
    .execute(&mut conn)
    .await;
    conn.execute(sqlx::AssertSqlSafe(format!("DROP TABLE IF EXISTS {table}")))
        .await
        .unwrap();
}

fn trigger(runtime: &Runtime, connections: &Connections) -> PostgresTrigger {
    let flow::TriggerKind::Postgres(settings) = spec(runtime, "orders").kind else {
        panic!("not postgres");
    };
    PostgresTrigger::new(&settings, connections).unwrap()
}

async fn slot_exists(slot: &str) -> bool {
    sqlx::query("SELECT 1 FROM pg_replication_slots WHERE slot_name = $1")
        .bind(slot)
        .fetch_optional(&mut db().await)
        .await
        .unwrap()
        .is_some()
}

#[tokio::test]
async fn cdc_reports_inserts_updates_deletes_and_advances_the_slot() {
    let table = table("rt_cdc").await;
    let slot = unique("rt_slot");
    let yaml = workflow(
        "orders",
        &format!("postgres: {{ table: {table}, url: \"{URL}\" }}"),
    );
    let runtime = runtime(&yaml);
    let running = Running::start(
        &runtime,
        "orders",
        Box::new(trigger(&runtime, &Connections::default()).with_slot(&slot)),
    );
    assert!(
        eventually(|| slot_exists(&slot)).await,
        "the slot is created"
    );
    exec(&format!(
        "INSERT INTO {table} (item, qty, doc) VALUES ('bolt', 3, '{{\"a\": 1}}'), ('nut', 5, NULL); \
         UPDATE {table} SET qty = 4, paid = true WHERE item = 'bolt'; DELETE FROM {table} WHERE item = 'nut'"
    ))
    .await;
    let events = wait_events(&runtime, "orders", 4).await;
    assert_eq!(events.len(), 4);
    let ops: Vec<&str> = events
        .iter()
        .map(|e| e.data["operation"].as_str().unwrap())
        .collect();
    let mut sorted = ops.clone();
    sorted.sort();
    assert_eq!(sorted, ["delete", "insert", "insert", "update"]);
    let update = events
        .iter()
        .find(|e| e.data["operation"] == "update")
        .unwrap();
    assert_eq!(update.event_type, "postgres");
    assert_eq!(update.source, format!("reactor:postgres/public.{table}"));
    assert_eq!(update.data["table"], json!(table));
    assert_eq!(
        update.data["old"],
        json!({"id": 1, "item": "bolt", "qty": 3, "doc": {"a": 1}, "paid": false})
    );
    assert_eq!(
        update.data["new"],
        json!({"id": 1, "item": "bolt", "qty": 4, "doc": {"a": 1}, "paid": true})
    );
    let delete = events
        .iter()
        .find(|e| e.data["operation"] == "delete")
        .unwrap();
    assert_eq!(delete.data["old"]["item"], json!("nut"));
    assert_eq!(delete.data["new"], json!(null));
    assert_eq!(update.meta["slot"], json!(slot));
    assert!(update.meta["lsn"].as_str().unwrap().contains('/'));
    // Everything recorded was consumed from the slot. (Peeking fails while the trigger's
    // own read holds the slot: that is "not yet".)
    assert!(
        eventually(|| async {
            let pending: Result<(i64,), _> =
                sqlx::query_as("SELECT count(*) FROM pg_logical_slot_peek_changes($1, NULL, NULL)")
                    .bind(&slot)
                    .fetch_one(&mut db().await)
                    .await;
            matches!(pending, Ok((0,)))
        })
        .await
    );
    running.stop().await.unwrap();
    cleanup(&table, &slot).await;
}

#[tokio::test]
async fn killed_between_record_and_slot_advance_no_second_execution() {
    let table = table("rt_crash").await;
    let slot = unique("rt_slot");
    sqlx::query("SELECT pg_create_logical_replication_slot($1, 'test_decoding')")
        .bind(&slot)
        .execute(&mut db().await)
        .await
        .unwrap();
    exec(&format!(
        "INSERT INTO {table} (item) SELECT 'i' || g FROM generate_series(1, 5) g"
    ))
    .await;
    let yaml = workflow(
        "orders",
        &format!("postgres: {{ table: {table}, operations: insert, url: \"{URL}\" }}"),
    );
    let runtime = runtime(&yaml);
    let dying = trigger(&runtime, &Connections::default())
        .with_slot(&slot)
        .stop_before_ack(5);
    let first = Running::start(&runtime, "orders", Box::new(dying));
    let result = first.ended().await;
    assert!(matches!(result, Err(TriggerError::Source(_))), "{result:?}");
    assert_eq!(executions(&runtime, "orders").await.len(), 5);

    let again = Running::start(
        &runtime,
        "orders",
        Box::new(trigger(&runtime, &Connections::default()).with_slot(&slot)),
    );
    assert!(
        eventually(|| async { runtime.stats().deduplicated.load(Ordering::Relaxed) == 5 }).await
    );
    exec(&format!("INSERT INTO {table} (item) VALUES ('late')")).await;
    let events = wait_events(&runtime, "orders", 6).await;
    assert_eq!(events.len(), 6, "five once, plus the new one");
    // The late row was submitted as a first delivery: the stored high water (the commit LSN
    // of the last transaction submitted) is past it.
    let late = events
        .iter()
        .find(|e| e.data["new"]["item"] == "late")
        .unwrap();
    let lsn = |text: &str| {
        let (high, low) = text.split_once('/').unwrap();
        u64::from_str_radix(high, 16).unwrap() << 32 | u64::from_str_radix(low, 16).unwrap()
    };
    let stored = runtime
        .store()
        .meta(&format!("cdc/orders/postgres/{slot}/submitted"))
        .await
        .unwrap()
        .expect("high water stored");
    let high: u64 = serde_json::from_slice(&stored).unwrap();
    assert!(high > lsn(late.meta["lsn"].as_str().unwrap()), "{high:x}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        executions(&runtime, "orders").await.len(),
        6,
        "no second execution"
    );
    again.stop().await.unwrap();
    cleanup(&table, &slot).await;
}

/// The server makes a slot's advance durable only at a checkpoint: a crash can hand out
/// transactions again that were recorded, acknowledged and whose marks are gone. Simulated
/// by putting back a copy of the slot taken before the trigger read it.
#[tokio::test]
async fn a_slot_that_lost_its_advance_replays_nothing() {
    let table = table("rt_lost").await;
    let slot = unique("rt_slot");
    let backup = unique("rt_backup");
    let create = |name: String| async move {
        sqlx::query("SELECT pg_create_logical_replication_slot($1, 'test_decoding')")
            .bind(name)
            .execute(&mut db().await)
            .await
            .unwrap();
    };
    create(slot.clone()).await;
    exec(&format!(
        "INSERT INTO {table} (item) SELECT 'i' || g FROM generate_series(1, 4) g"
    ))
    .await;
    sqlx::query("SELECT pg_copy_logical_replication_slot($1, $2)")
        .bind(&slot)
        .bind(&backup)
        .execute(&mut db().await)
        .await
        .unwrap();
    let yaml = workflow(
        "orders",
        &format!("postgres: {{ table: {table}, operations: insert, url: \"{URL}\" }}"),
    );
    let runtime = runtime(&yaml);
    let reading = Running::start(
        &runtime,
        "orders",
        Box::new(trigger(&runtime, &Connections::default()).with_slot(&slot)),
    );
    assert_eq!(wait_events(&runtime, "orders", 4).await.len(), 4);
    // The batch's marks go right after the advance.
    assert!(
        eventually(|| async { runtime.marks("orders", "pg/").await.unwrap().is_empty() }).await
    );
    reading.stop().await.unwrap();

    // The slot as a crashed server would have it: back where it was before the read.
    let mut conn = db().await;
    sqlx::query("SELECT pg_drop_replication_slot($1)")
        .bind(&slot)
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query("SELECT pg_copy_logical_replication_slot($1, $2)")
        .bind(&backup)
        .bind(&slot)
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query("SELECT pg_drop_replication_slot($1)")
        .bind(&backup)
        .execute(&mut conn)
        .await
        .unwrap();
    exec(&format!("INSERT INTO {table} (item) VALUES ('after')")).await;
    let again = Running::start(
        &runtime,
        "orders",
        Box::new(trigger(&runtime, &Connections::default()).with_slot(&slot)),
    );
    assert_eq!(wait_events(&runtime, "orders", 5).await.len(), 5);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut items: Vec<String> = events(&runtime, "orders")
        .await
        .iter()
        .map(|e| e.data["new"]["item"].as_str().unwrap().to_string())
        .collect();
    items.sort();
    assert_eq!(
        items,
        ["after", "i1", "i2", "i3", "i4"],
        "the replay started nothing"
    );
    again.stop().await.unwrap();
    cleanup(&table, &slot).await;
}

/// Positions stored for another server (the database moved to a new cluster, whose LSNs
/// start low again) are dropped, not used to skip this server's changes.
#[tokio::test]
async fn positions_past_the_servers_wal_are_dropped() {
    let table = table("rt_moved").await;
    let slot = unique("rt_slot");
    let yaml = workflow(
        "orders",
        &format!("postgres: {{ table: {table}, operations: insert, url: \"{URL}\" }}"),
    );
    let runtime = runtime(&yaml);
    let far = serde_json::to_vec(&json!(u64::MAX / 2)).unwrap();
    let writes = ["recorded", "submitted"]
        .map(|name| reactor_core::store::StoreWrite::PutMeta {
            key: format!("cdc/orders/postgres/{slot}/{name}"),
            value: Some(far.clone()),
        })
        .to_vec();
    runtime.store().write(writes).await.unwrap();
    let reading = Running::start(
        &runtime,
        "orders",
        Box::new(trigger(&runtime, &Connections::default()).with_slot(&slot)),
    );
    assert!(eventually(|| slot_exists(&slot)).await);
    exec(&format!("INSERT INTO {table} (item) VALUES ('a'), ('b')")).await;
    assert_eq!(wait_events(&runtime, "orders", 2).await.len(), 2);
    let stored = runtime
        .store()
        .meta(&format!("cdc/orders/postgres/{slot}/recorded"))
        .await
        .unwrap()
        .unwrap();
    assert_ne!(stored, far, "replaced by this server's position");
    reading.stop().await.unwrap();
    cleanup(&table, &slot).await;
}

#[tokio::test]
async fn reconnects_after_pg_terminate_backend() {
    let table = table("rt_term").await;
    let slot = unique("rt_slot");
    let yaml = workflow(
        "orders",
        &format!("postgres: {{ table: {table}, url: \"{URL}\" }}"),
    );
    let runtime = runtime(&yaml);
    let running = Running::start(
        &runtime,
        "orders",
        Box::new(trigger(&runtime, &Connections::default()).with_slot(&slot)),
    );
    assert!(eventually(|| slot_exists(&slot)).await);
    exec(&format!("INSERT INTO {table} (item) VALUES ('before')")).await;
    assert_eq!(wait_events(&runtime, "orders", 1).await.len(), 1);
    let app = format!("reactor/orders/{table}");
    let (killed,): (i64,) = sqlx::query_as(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1",
    )
    .bind(&app)
    .fetch_one(&mut db().await)
    .await
    .unwrap();
    assert_eq!(killed, 1);
    exec(&format!("INSERT INTO {table} (item) VALUES ('after')")).await;
    let events = wait_events(&runtime, "orders", 2).await;
    assert_eq!(events.len(), 2);
    assert_eq!(events[1].data["new"]["item"], json!("after"));
    assert!(running.context.stats.snapshot().errors >= 1);
    assert!(running.context.stats.snapshot().healthy());
    running.stop().await.unwrap();
    cleanup(&table, &slot).await;
}

#[tokio::test]
async fn poll_reports_new_rows_by_column_and_waits_for_leadership() {
    let table = table("rt_poll").await;
    exec(&format!("INSERT INTO {table} (item) VALUES ('old')")).await;
    let yaml = workflow(
        "orders",
        &format!(
            "postgres: {{ table: {table}, mode: poll, poll: {{ column: id, every: 50ms }}, url: \"{URL}\" }}"
        ),
    );
    let runtime = runtime(&yaml);
    let (lead, leader) = tokio::sync::watch::channel(false);
    let connections = Connections::default().with_leader(Leader::new(leader));
    let running = Running::start(
        &runtime,
        "orders",
        Box::new(trigger(&runtime, &connections)),
    );
    let position_key = format!("poll/orders/postgres/\"{table}\"/id");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        runtime.store().meta(&position_key).await.unwrap().is_none(),
        "not leading: not polling"
    );
    lead.send(true).unwrap();
    assert!(
        eventually(|| async { runtime.store().meta(&position_key).await.unwrap().is_some() }).await
    );
    exec(&format!(
        "INSERT INTO {table} (item, qty) VALUES ('a', 1), ('b', 2)"
    ))
    .await;
    let mut events = wait_events(&runtime, "orders", 2).await;
    assert_eq!(events.len(), 2);
    // Rows are submitted together: order by position.
    events.sort_by_key(|e| e.meta["position"].as_i64());
    assert_eq!(events[0].data["operation"], json!("upsert"));
    assert_eq!(events[0].data["new"]["item"], json!("a"));
    assert_eq!(events[1].data["new"]["item"], json!("b"));
    assert_eq!(events[1].meta["position"], json!(3));
    assert!(
        eventually(|| async {
            runtime.store().meta(&position_key).await.unwrap() == Some(b"3".to_vec())
        })
        .await
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        executions(&runtime, "orders").await.len(),
        2,
        "the pre-existing row is not reported"
    );
    running.stop().await.unwrap();
    cleanup(&table, "none").await;
}

#[tokio::test]
async fn persistent_failure_is_unhealthy_and_settings_are_checked() {
    let yaml = workflow(
        "orders",
        "postgres: { table: t, url: \"postgres://postgres@127.0.0.1:1/test\" }",
    );
    let error = unhealthy_error(&yaml).await;
    assert!(error.contains("postgres"), "{error}");

    let bad = runtime_with(&workflow(
        "orders",
        "postgres: { table: \"t; drop\", url: \"postgres://h/db\" }",
    ));
    let error = reactor_hub_triggers::build(&spec(&bad, "orders"), &Connections::default())
        .err()
        .unwrap();
    assert!(error.to_string().contains("table name"), "{error}");
    let bad = runtime_with(&workflow(
        "orders",
        "postgres: { table: t, mode: poll, operations: delete, poll: { column: id, every: 1s }, url: \"postgres://h/db\" }",
    ));
    let error = reactor_hub_triggers::build(&spec(&bad, "orders"), &Connections::default())
        .err()
        .unwrap();
    assert!(error.to_string().contains("deletes"), "{error}");
}

fn runtime_with(yaml: &str) -> Runtime {
    runtime(yaml)
}
