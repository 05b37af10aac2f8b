//! The NATS JetStream and MariaDB change-capture cases of the throughput bench.

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull};
use futures::StreamExt;
use mysql_async::binlog::events::{EventData, RowsEventData};
use mysql_async::prelude::Queryable;
use mysql_async::{BinlogStreamRequest, Row};
use reactor_core::store::StoreWrite;
use reactor_hub_triggers::Connections;
use reactor_hub_triggers::mysql::MysqlTrigger;

use super::{BATCH_SIZE, drive, name, per_message, report, runtime};

const NATS: &str = "nats://127.0.0.1:4222";
const MYSQL: &str = "mysql://root@127.0.0.1:3306/test";

/// Pulls of up to 512 messages as the trigger pulls (what is waiting; when nothing is, the
/// next message), each message double-acked (server-confirmed) as the trigger does.
pub async fn nats_bench(count: usize) {
    let js = jetstream::new(async_nats::connect(NATS).await.unwrap());
    let fill = |stream: String, subject: String| {
        let js = js.clone();
        async move {
            js.create_stream(jetstream::stream::Config {
                name: stream,
                subjects: vec![format!("{subject}.>")],
                ..Default::default()
            })
            .await
            .unwrap();
            let numbers: Vec<usize> = (0..count).collect();
            for chunk in numbers.chunks(1000) {
                let mut acks = Vec::with_capacity(chunk.len());
                for n in chunk {
                    let ack = js
                        .publish(format!("{subject}.e"), format!("{{\"n\": {n}}}").into())
                        .await
                        .unwrap();
                    acks.push(ack);
                }
                for ack in
                    futures::future::join_all(acks.into_iter().map(|a| a.into_future())).await
                {
                    ack.unwrap();
                }
            }
        }
    };
    // Raw.
    let stream = name("BENCH_RAW").to_uppercase();
    let subject = name("bench.raw");
    fill(stream.clone(), subject.clone()).await;
    let consumer: jetstream::consumer::PullConsumer = js
        .get_stream(&stream)
        .await
        .unwrap()
        .create_consumer(pull::Config {
            durable_name: Some("raw".into()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .unwrap();
    let started = Instant::now();
    let mut seen = 0;
    while seen < count {
        let mut batch = consumer.fetch().max_messages(512).messages().await.unwrap();
        let mut messages = Vec::new();
        while let Some(message) = batch.next().await {
            messages.push(message.unwrap());
        }
        if messages.is_empty() {
            let mut next = consumer
                .batch()
                .max_messages(1)
                .expires(Duration::from_secs(1))
                .messages()
                .await
                .unwrap();
            while let Some(message) = next.next().await {
                messages.push(message.unwrap());
            }
        }
        seen += messages.len();
        let acks = messages.iter().map(|m| m.double_ack());
        for ack in futures::future::join_all(acks).await {
            ack.unwrap();
        }
    }
    let raw = count as f64 / started.elapsed().as_secs_f64();
    js.delete_stream(&stream).await.unwrap();
    // Reactor, per message and with `batch:`, each over a stream of its own.
    let reactor = |prefix: &'static str, batch: String| {
        let fill = &fill;
        let js = js.clone();
        async move {
            let stream = name(&prefix.replace('.', "_")).to_uppercase();
            let subject = name(prefix);
            fill(stream.clone(), subject.clone()).await;
            let dir = tempfile::tempdir().unwrap();
            let runtime = runtime(
                &dir,
                &format!(
                    "nats: {{ subject: \"{subject}.>\", stream: {stream}, durable: hub, {batch} url: \"{NATS}\" }}"
                ),
            )
            .await;
            let rate = drive(&runtime, count).await;
            js.delete_stream(&stream).await.unwrap();
            rate
        }
    };
    if per_message() {
        let rate = reactor("bench.rt", String::new()).await;
        report("nats jetstream", count, raw, rate);
    }
    let batch = format!("batch: {{ size: {BATCH_SIZE}, wait: 50ms }},");
    let rate = reactor("bench.batch", batch).await;
    report(&format!("  batch {BATCH_SIZE}"), count, raw, rate);
}

/// The binlog position now (`SHOW MASTER STATUS`).
async fn position(conn: &mut mysql_async::Conn) -> (String, u64) {
    let row: Row = conn
        .query_first("SHOW MASTER STATUS")
        .await
        .unwrap()
        .expect("the binary log is on");
    (row.get(0).unwrap(), row.get(1).unwrap())
}

/// Rows inserted in transactions of 100 rows each.
async fn insert(conn: &mut mysql_async::Conn, table: &str, count: usize) {
    for _ in 0..count.div_ceil(100) {
        let values: Vec<String> = (0..100).map(|n| format!("('item {n}')")).collect();
        conn.query_drop(format!(
            "INSERT INTO {table} (item) VALUES {}",
            values.join(",")
        ))
        .await
        .unwrap();
    }
}

/// Raw: a binlog reader (as a replica) decoding the rows of the table's insert events.
pub async fn mysql_bench(count: usize) {
    let pool = mysql_async::Pool::new(MYSQL);
    let mut conn = pool.get_conn().await.unwrap();
    let table = name("bench_cdc");
    conn.query_drop(format!(
        "CREATE TABLE {table} (id bigint AUTO_INCREMENT PRIMARY KEY, item text)"
    ))
    .await
    .unwrap();
    // Raw.
    let (file, pos) = position(&mut conn).await;
    insert(&mut conn, &table, count).await;
    let started = Instant::now();
    let reader = mysql_async::Conn::new(mysql_async::Opts::from_url(MYSQL).unwrap())
        .await
        .unwrap();
    let mut stream = reader
        .get_binlog_stream(
            BinlogStreamRequest::new(4_000_000_001)
                .with_filename(file.as_bytes())
                .with_pos(pos),
        )
        .await
        .unwrap();
    let mut seen = 0;
    while seen < count {
        let event = stream.next().await.unwrap().unwrap();
        if let Some(EventData::RowsEvent(
            rows @ (RowsEventData::WriteRowsEvent(_) | RowsEventData::WriteRowsEventV1(_)),
        )) = event.read_data().unwrap()
        {
            let Some(tme) = stream.get_tme(rows.table_id()) else {
                continue;
            };
            if tme.table_name() != table {
                continue;
            }
            for row in rows.rows(tme) {
                let (_, after) = row.unwrap();
                assert!(after.is_some());
                seen += 1;
            }
        }
    }
    let raw = count as f64 / started.elapsed().as_secs_f64();
    drop(stream);
    // Reactor, from the position before its rows (stored where the trigger keeps it).
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime(
        &dir,
        &format!("mysql: {{ table: {table}, mode: cdc, operations: insert, url: \"{MYSQL}\" }}"),
    )
    .await;
    let spec = runtime.workflow("bench", None).unwrap().triggers[0].clone();
    let reactor_core::flow::TriggerKind::Mysql(settings) = spec.kind else {
        unreachable!("a mysql trigger");
    };
    let key = MysqlTrigger::new(&settings, &Connections::default())
        .unwrap()
        .position_key("bench");
    let (file, pos) = position(&mut conn).await;
    runtime
        .store()
        .write(vec![StoreWrite::PutMeta {
            key,
            value: Some(
                serde_json::to_vec(&serde_json::json!({"file": file, "pos": pos})).unwrap(),
            ),
        }])
        .await
        .unwrap();
    insert(&mut conn, &table, count).await;
    let reactor = drive(&runtime, count).await;
    conn.query_drop(format!("DROP TABLE {table}"))
        .await
        .unwrap();
    drop(conn);
    pool.disconnect().await.unwrap();
    report("mariadb cdc", count, raw, reactor);
}

/// PostgreSQL CDC at a steady rate instead of a backlog: `rate` rows/s (100-row
/// transactions) for `seconds` while the trigger reads, as a database under constant write
/// load. The slot's `restart_lsn` then trails by up to one standby snapshot (15 s), which
/// every read decodes again; reported: rows recorded per second over the run, and how far
/// behind the trigger was when the writes stopped (0 when it kept up).
pub async fn postgres_steady_bench(rate: usize, seconds: u64) {
    use sqlx::{Connection, Executor, PgConnection};
    let url = "postgres://postgres@127.0.0.1:5432/test";
    let mut conn = PgConnection::connect(url).await.unwrap();
    let table = name("bench_steady");
    conn.execute(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE {table} (id serial PRIMARY KEY, item text)"
    )))
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime(
        &dir,
        &format!("postgres: {{ table: {table}, operations: insert, url: \"{url}\" }}"),
    )
    .await;
    let (context, task) = super::start_trigger(&runtime);
    let recorded = || {
        context
            .stats
            .events
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    // The slot exists once the trigger has read once.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let transactions = rate * seconds as usize / 100;
    let every = Duration::from_secs_f64(100.0 / rate as f64);
    let started = Instant::now();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for _ in 0..transactions {
        tick.tick().await;
        conn.execute(sqlx::AssertSqlSafe(format!(
            "INSERT INTO {table} (item) SELECT 'item ' || g FROM generate_series(1, 100) g"
        )))
        .await
        .unwrap();
    }
    let wrote = started.elapsed();
    let behind = (transactions * 100) as u64 - recorded();
    let deadline = Instant::now() + Duration::from_secs(600);
    while recorded() < (transactions * 100) as u64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let total = started.elapsed();
    println!(
        "postgres steady {rate:>6}/s for {seconds} s  written at {:.0}/s  recorded {:.0}/s over the run  \
         {behind} rows behind when writing stopped, caught up {:.1} s later",
        (transactions * 100) as f64 / wrote.as_secs_f64(),
        recorded() as f64 / total.as_secs_f64(),
        (total - wrote).as_secs_f64(),
    );
    context.cancel.cancel();
    let _ = task.await;
    let slot = reactor_hub_triggers::postgres::PostgresTrigger::slot_name(
        "bench",
        &format!("\"{table}\""),
    );
    super::drop_slot_and_table(&mut conn, &slot, &table).await;
}
