//! The `mysql` trigger against the real MariaDB on 127.0.0.1:3306 (database `test`; binlog
//! ROW/FULL from scripts/services).

#![cfg(feature = "mysql")]

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use mysql_async::prelude::Queryable;
use reactor_core::engine::Runtime;
use reactor_core::flow;
use reactor_core::trigger::TriggerError;
use reactor_hub_triggers::Connections;
use reactor_hub_triggers::mysql::MysqlTrigger;
use serde_json::json;

const URL: &str = "mysql://root@127.0.0.1:3306/test";

async fn db() -> mysql_async::Conn {
    mysql_async::Conn::from_url(URL).await.unwrap()
}

async fn exec(sql: &str) {
    let mut conn = db().await;
    conn.query_drop(sql).await.unwrap();
    conn.disconnect().await.unwrap();
}

async fn table(prefix: &str) -> String {
    let name = unique(prefix);
    exec(&format!(
        "CREATE TABLE {name} (id INT AUTO_INCREMENT PRIMARY KEY, item VARCHAR(50) NOT NULL, qty INT, \
         price DECIMAL(8,2), doc JSON, at DATETIME)"
    ))
    .await;
    name
}

fn trigger(runtime: &Runtime) -> MysqlTrigger {
    let flow::TriggerKind::Mysql(settings) = spec(runtime, "orders").kind else {
        panic!("not mysql");
    };
    MysqlTrigger::new(&settings, &Connections::default()).unwrap()
}

/// A binlog position (`file`, `pos`) of a stored position or an event's meta; file names are
/// zero-padded, so the pair orders as the binlog does.
fn position(value: &serde_json::Value) -> (String, u64) {
    (
        value["file"].as_str().unwrap().to_string(),
        value["pos"].as_u64().unwrap(),
    )
}

async fn started(runtime: &Runtime, key: &str) -> bool {
    let key = key.to_string();
    eventually(|| {
        let runtime = runtime.clone();
        let key = key.clone();
        async move { runtime.store().meta(&key).await.unwrap().is_some() }
    })
    .await
}

#[tokio::test]
async fn cdc_reports_row_changes_with_column_names() {
    let table = table("rt_cdc").await;
    let yaml = workflow(
        "orders",
        &format!("mysql: {{ table: {table}, url: \"{URL}\" }}"),
    );
    let runtime = runtime(&yaml);
    let cdc = trigger(&runtime);
    let key = cdc.position_key("orders");
    let running = Running::start(&runtime, "orders", Box::new(cdc));
    assert!(
        started(&runtime, &key).await,
        "the start position is stored"
    );
    exec(&format!(
        "INSERT INTO {table} (item, qty, price, doc, at) VALUES ('bolt', 3, 1.50, '{{\"a\": 1}}', '2026-11-30 13:00:00'), ('nut', 5, NULL, NULL, NULL); \
         UPDATE {table} SET qty = 4 WHERE item = 'bolt'; DELETE FROM {table} WHERE item = 'nut'"
    ))
    .await;
    let events = wait_events(&runtime, "orders", 4).await;
    assert_eq!(events.len(), 4);
    // One batch is submitted together: executions start in any order; meta.pos orders them.
    let mut ops: Vec<(u64, &str)> = events
        .iter()
        .map(|e| {
            (
                e.meta["pos"].as_u64().unwrap(),
                e.data["operation"].as_str().unwrap(),
            )
        })
        .collect();
    ops.sort();
    let ops: Vec<&str> = ops.into_iter().map(|(_, op)| op).collect();
    assert_eq!(ops, ["insert", "insert", "update", "delete"]);
    let update = events
        .iter()
        .find(|e| e.data["operation"] == "update")
        .unwrap();
    let delete = events
        .iter()
        .find(|e| e.data["operation"] == "delete")
        .unwrap();
    assert_eq!(update.event_type, "mysql");
    assert_eq!(update.source, format!("reactor:mysql/test.{table}"));
    assert_eq!(
        update.data["old"],
        json!({"id": 1, "item": "bolt", "qty": 3, "price": 1.50, "doc": {"a": 1}, "at": "2026-11-30 13:00:00"})
    );
    assert_eq!(update.data["new"]["qty"], json!(4));
    assert_eq!(delete.data["old"]["item"], json!("nut"));
    assert_eq!(delete.data["new"], json!(null));
    assert!(
        update.meta["file"]
            .as_str()
            .unwrap()
            .starts_with("mysql-bin.")
    );
    running.stop().await.unwrap();
    exec(&format!("DROP TABLE {table}")).await;
}

#[tokio::test]
async fn killed_between_record_and_position_no_second_execution() {
    let table = table("rt_crash").await;
    let yaml = workflow(
        "orders",
        &format!("mysql: {{ table: {table}, operations: insert, url: \"{URL}\" }}"),
    );
    let runtime = runtime(&yaml);
    let first = trigger(&runtime).stop_before_ack(3);
    let key = first.position_key("orders");
    let first = Running::start(&runtime, "orders", Box::new(first));
    assert!(started(&runtime, &key).await);
    let start = runtime.store().meta(&key).await.unwrap();
    exec(&format!(
        "INSERT INTO {table} (item) VALUES ('a'), ('b'), ('c')"
    ))
    .await;
    let result = first.ended().await;
    assert!(matches!(result, Err(TriggerError::Source(_))), "{result:?}");
    assert_eq!(executions(&runtime, "orders").await.len(), 3);
    // The stored position may have moved over other tests' transactions (the binlog is
    // the server's), but never past the three recorded rows.
    let first_row = events(&runtime, "orders")
        .await
        .iter()
        .map(|e| position(&e.meta))
        .min()
        .unwrap();
    let stored = runtime.store().meta(&key).await.unwrap().unwrap();
    let stored = position(&serde_json::from_slice(&stored).unwrap());
    assert!(
        stored <= first_row,
        "the position moved past recorded rows: {stored:?} > {first_row:?}"
    );

    let again = Running::start(&runtime, "orders", Box::new(trigger(&runtime)));
    assert!(
        eventually(|| async { runtime.stats().deduplicated.load(Ordering::Relaxed) == 3 }).await
    );
    exec(&format!("INSERT INTO {table} (item) VALUES ('d')")).await;
    assert_eq!(wait_events(&runtime, "orders", 4).await.len(), 4);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        executions(&runtime, "orders").await.len(),
        4,
        "no second execution"
    );
    assert_ne!(
        runtime.store().meta(&key).await.unwrap(),
        start,
        "the position moved on"
    );
    again.stop().await.unwrap();
    exec(&format!("DROP TABLE {table}")).await;
}

#[tokio::test]
async fn reconnects_after_kill() {
    let table = table("rt_kill").await;
    let user = unique("rt_user");
    exec(&format!(
        "CREATE USER '{user}'@'%'; GRANT REPLICATION SLAVE, BINLOG MONITOR ON *.* TO '{user}'@'%'; \
         GRANT SELECT ON test.* TO '{user}'@'%'"
    ))
    .await;
    let url = format!("mysql://{user}@127.0.0.1:3306/test");
    let yaml = workflow(
        "orders",
        &format!("mysql: {{ table: {table}, url: \"{url}\" }}"),
    );
    let runtime = runtime(&yaml);
    let cdc = trigger(&runtime);
    let key = cdc.position_key("orders");
    let running = Running::start(&runtime, "orders", Box::new(cdc));
    assert!(started(&runtime, &key).await);
    exec(&format!("INSERT INTO {table} (item) VALUES ('before')")).await;
    assert_eq!(wait_events(&runtime, "orders", 1).await.len(), 1);
    let mut conn = db().await;
    let ids: Vec<u64> = conn
        .exec(
            "SELECT ID FROM information_schema.PROCESSLIST WHERE USER = ?",
            (&user,),
        )
        .await
        .unwrap();
    assert!(!ids.is_empty());
    for id in ids {
        let _ = conn.query_drop(format!("KILL {id}")).await;
    }
    exec(&format!("INSERT INTO {table} (item) VALUES ('after')")).await;
    let events = wait_events(&runtime, "orders", 2).await;
    assert_eq!(
        events.len(),
        2,
        "{:?} {:?}",
        running.context.stats.snapshot(),
        String::from_utf8(runtime.store().meta(&key).await.unwrap().unwrap())
    );
    assert_eq!(events[1].data["new"]["item"], json!("after"));
    assert!(running.context.stats.snapshot().errors >= 1);
    running.stop().await.unwrap();
    conn.query_drop(format!("DROP USER '{user}'@'%'"))
        .await
        .unwrap();
    conn.query_drop(format!("DROP TABLE {table}"))
        .await
        .unwrap();
}

#[tokio::test]
async fn poll_reports_new_rows() {
    let table = table("rt_poll").await;
    exec(&format!("INSERT INTO {table} (item) VALUES ('old')")).await;
    let yaml = workflow(
        "orders",
        &format!(
            "mysql: {{ table: {table}, mode: poll, poll: {{ column: id, every: 50ms }}, url: \"{URL}\" }}"
        ),
    );
    let runtime = runtime(&yaml);
    let running = Running::start(&runtime, "orders", Box::new(trigger(&runtime)));
    let key = format!("poll/orders/mysql/`{table}`/id");
    assert!(started(&runtime, &key).await);
    exec(&format!(
        "INSERT INTO {table} (item, price) VALUES ('a', 2.25), ('b', NULL)"
    ))
    .await;
    let mut events = wait_events(&runtime, "orders", 2).await;
    assert_eq!(events.len(), 2);
    // Rows are submitted together: order by position.
    events.sort_by_key(|e| e.meta["position"].as_i64());
    assert_eq!(events[0].data["new"]["item"], json!("a"));
    assert_eq!(events[0].data["new"]["price"], json!(2.25));
    assert_eq!(events[1].meta["position"], json!(3));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(executions(&runtime, "orders").await.len(), 2);
    running.stop().await.unwrap();
    exec(&format!("DROP TABLE {table}")).await;
}

#[tokio::test]
async fn persistent_failure_is_unhealthy() {
    let yaml = workflow(
        "orders",
        "mysql: { table: t, url: \"mysql://root@127.0.0.1:1/test\" }",
    );
    let error = unhealthy_error(&yaml).await;
    assert!(error.contains("mysql"), "{error}");
}
