//! Events/s from a source into durably recorded executions of a 1-step workflow (redb journal
//! in a temp dir, `Durability::Immediate`; `REACTOR_BENCH_STORE=sqlite`: the hub's SQLite
//! store), beside a raw consumer of the same source doing the
//! same reads and acknowledgements without recording anything.
//!
//! Beside both, the engine's own ceiling for the same workflow and journal: `submit_once` of
//! the same number of events in batches of 512, with no source at all (`engine`).
//!
//! `cargo bench -p reactor-hub-triggers --bench throughput [-- engine redis nats kafka postgres mysql]`
//! Needs Redis on 6379, NATS (JetStream) on 4222, PostgreSQL on 5432 (wal_level=logical) and
//! MariaDB on 3306 (binlog, ROW); Kafka is librdkafka's mock cluster. `REACTOR_BENCH_EVENTS`
//! sets the event count (default 20000); Kafka's is `REACTOR_BENCH_KAFKA_EVENTS` (default
//! 400000): with fewer, every partition's messages arrive in one fetch, so the raw consumer
//! only drains librdkafka's prefetched queue (~1M/s from memory) instead of consuming from
//! the broker.
//!
//! `postgres-steady` (not in the default set) writes `REACTOR_BENCH_RATE` rows/s (default
//! 5,000) for `REACTOR_BENCH_SECONDS` (60) while the PostgreSQL trigger reads: change capture
//! under constant write load rather than draining a backlog.
//!
//! Redis streams, NATS JetStream and Kafka also run with `batch: { size: 500 }` (one execution per 500
//! messages at most), reported as `batch 500` against the same raw consumer;
//! `REACTOR_BENCH_BATCH_ONLY=1` runs only those (and the raw consumers).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rdkafka::Message as _;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use reactor_core::action::builtin_registry;
use reactor_core::engine::{DedupeMark, Environment, Event, Runtime, RuntimeConfig};
use reactor_core::store::{RedbOptions, RedbStore, Store};
use reactor_core::trigger::{Trigger, TriggerContext};
use reactor_hub::db::{Database, SqlStore};
use reactor_hub_triggers::Connections;
use sqlx::{Connection, Executor, PgConnection};
use tokio_util::sync::CancellationToken;

#[path = "throughput/sources.rs"]
mod sources;

/// The hub's allocator (reactor-hub's `main.rs`): the engine's figures depend on it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn events() -> usize {
    std::env::var("REACTOR_BENCH_EVENTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(20_000)
}

fn kafka_events() -> usize {
    std::env::var("REACTOR_BENCH_KAFKA_EVENTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(400_000)
}

fn name(prefix: &str) -> String {
    format!("{prefix}_{}", ulid::Ulid::new().to_string().to_lowercase())
}

/// A runtime over a fresh redb journal, with a 1-step workflow whose trigger is `trigger`.
/// The journal executions are recorded in, by `REACTOR_BENCH_STORE`: `redb` (the default;
/// a redb file, the agent's journal) or `sqlite` (the hub's default store: `SqlStore` on a
/// SQLite file, WAL, `synchronous=FULL`), in `dir`.
async fn journal(dir: &tempfile::TempDir) -> Arc<dyn Store> {
    match std::env::var("REACTOR_BENCH_STORE").as_deref() {
        Err(_) | Ok("redb") => Arc::new(
            RedbStore::open(dir.path().join("journal.redb"), RedbOptions::default()).unwrap(),
        ),
        Ok("sqlite") => {
            let db = Database::open_sqlite(&dir.path().join("hub.db"))
                .await
                .unwrap();
            db.migrate().await.unwrap();
            Arc::new(SqlStore::new(db, "bench"))
        }
        Ok(other) => panic!("REACTOR_BENCH_STORE is redb or sqlite, not {other:?}"),
    }
}

async fn runtime(dir: &tempfile::TempDir, trigger: &str) -> Runtime {
    let runtime = Runtime::new(
        journal(dir).await,
        builtin_registry(Default::default()),
        Environment::empty(),
        RuntimeConfig::default(),
    );
    let yaml = format!(
        "reactor: 1\nname: bench\ntriggers:\n  - {trigger}\nsteps:\n  - action: transform\n    with: {{ value: \"${{{{ event.data }}}}\" }}\n"
    );
    runtime.load(reactor_core::dsl::parse_workflow("bench.yaml", &yaml).unwrap());
    runtime
}

/// Runs the workflow's trigger until `count` source events are recorded (in as many
/// executions, or fewer with `batch:`); returns events/s.
async fn drive(runtime: &Runtime, count: usize) -> f64 {
    let (context, task) = start_trigger(runtime);
    let recorded = || context.stats.events.load(Ordering::Relaxed);
    // Timed from the first recorded execution: connecting and joining groups are not
    // throughput.
    let deadline = Instant::now() + Duration::from_secs(600);
    while recorded() == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert!(Instant::now() < deadline, "nothing recorded");
    }
    let started = Instant::now();
    let first = recorded();
    while recorded() < count as u64 {
        tokio::time::sleep(Duration::from_millis(2)).await;
        assert!(Instant::now() < deadline, "too slow");
    }
    let rate = (count as u64 - first) as f64 / started.elapsed().as_secs_f64();
    context.cancel.cancel();
    let _ = task.await;
    rate
}

/// Starts the `bench` workflow's trigger: its context (counters, cancellation) and task.
fn start_trigger(
    runtime: &Runtime,
) -> (
    TriggerContext,
    tokio::task::JoinHandle<Result<(), reactor_core::trigger::TriggerError>>,
) {
    let spec = runtime.workflow("bench", None).unwrap().triggers[0].clone();
    let trigger: Box<dyn Trigger> = reactor_hub_triggers::build(&spec, &Connections::default())
        .unwrap()
        .unwrap();
    let context = TriggerContext::new("bench", runtime.clone(), CancellationToken::new());
    let task = tokio::spawn(trigger.run(context.clone()));
    (context, task)
}

fn report(source: &str, count: usize, raw: f64, reactor: f64) {
    println!(
        "{source:<14} {count:>7} events  raw consumer {raw:>10.0}/s  reactor {reactor:>9.0}/s  ({:.1} % of raw)",
        100.0 * reactor / raw
    );
}

/// The engine alone: `submit_once` of `count` events in batches of 512 (as the triggers
/// submit), each batch awaited before the next, into the same journal.
async fn engine_bench(count: usize) {
    let dir = tempfile::tempdir().unwrap();
    let keyed = runtime(&dir, "event: { type: bench }").await;
    let started = Instant::now();
    let numbers: Vec<usize> = (0..count).collect();
    for chunk in numbers.chunks(512) {
        let submissions = chunk.iter().map(|n| {
            let event = Event::new("bench", "reactor:bench", serde_json::json!({"n": n}));
            let mark = DedupeMark::new(format!("bench/{n}"), serde_json::json!(n));
            keyed.submit_once("bench", event, serde_json::json!({}), mark)
        });
        for result in futures::future::join_all(submissions).await {
            result.unwrap();
        }
    }
    let rate = count as f64 / started.elapsed().as_secs_f64();
    println!(
        "{:<14} {count:>7} events  engine alone (no source), submit_once  {rate:>9.0}/s",
        "engine"
    );
    // The same without de-duplication marks (no mark read, no mark write).
    let dir = tempfile::tempdir().unwrap();
    let plain = runtime(&dir, "event: { type: bench }").await;
    let started = Instant::now();
    for chunk in numbers.chunks(512) {
        let submissions = chunk.iter().map(|n| {
            let event = Event::new("bench", "reactor:bench", serde_json::json!({"n": n}));
            plain.submit("bench", event, serde_json::json!({}))
        });
        for result in futures::future::join_all(submissions).await {
            result.unwrap();
        }
    }
    let rate = count as f64 / started.elapsed().as_secs_f64();
    println!(
        "{:<14} {count:>7} events  engine alone (no source), submit       {rate:>9.0}/s",
        "engine"
    );
}

async fn redis_bench(count: usize) {
    let client = redis::Client::open("redis://127.0.0.1:6379").unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let fill = |stream: String, mut conn: redis::aio::MultiplexedConnection| async move {
        let _: () = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&stream)
            .arg("hub")
            .arg("$")
            .arg("MKSTREAM")
            .query_async(&mut conn)
            .await
            .unwrap();
        for chunk in 0..count.div_ceil(1000) {
            let mut pipe = redis::pipe();
            for n in chunk * 1000..((chunk + 1) * 1000).min(count) {
                pipe.cmd("XADD")
                    .arg(&stream)
                    .arg("*")
                    .arg("n")
                    .arg(n)
                    .ignore();
            }
            let _: () = pipe.query_async(&mut conn).await.unwrap();
        }
    };
    // Raw: XREADGROUP 512 at a time (as the trigger reads) + XACK.
    let stream = name("bench_raw");
    fill(stream.clone(), conn.clone()).await;
    let started = Instant::now();
    let mut seen = 0;
    while seen < count {
        let reply: redis::streams::StreamReadReply = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg("hub")
            .arg("raw")
            .arg("COUNT")
            .arg(512)
            .arg("STREAMS")
            .arg(&stream)
            .arg(">")
            .query_async(&mut conn)
            .await
            .unwrap();
        let ids: Vec<String> = reply
            .keys
            .into_iter()
            .flat_map(|k| k.ids)
            .map(|i| i.id)
            .collect();
        seen += ids.len();
        let _: i64 = redis::cmd("XACK")
            .arg(&stream)
            .arg("hub")
            .arg(&ids)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let raw = count as f64 / started.elapsed().as_secs_f64();
    let _: () = redis::cmd("DEL")
        .arg(&stream)
        .query_async(&mut conn)
        .await
        .unwrap();
    // Reactor.
    let stream = name("bench_rt");
    if per_message() {
        fill(stream.clone(), conn.clone()).await;
        let dir = tempfile::tempdir().unwrap();
        let plain = runtime(
            &dir,
            &format!("redis: {{ stream: {stream}, group: hub, url: \"redis://127.0.0.1:6379\" }}"),
        )
        .await;
        let reactor = drive(&plain, count).await;
        report("redis stream", count, raw, reactor);
    }
    // Reactor with `batch:` (500 entries per execution).
    let batched_stream = name("bench_batch");
    fill(batched_stream.clone(), conn.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let batching = runtime(
        &dir,
        &format!(
            "redis: {{ stream: {batched_stream}, group: hub, batch: {{ size: {BATCH_SIZE}, wait: 50ms }}, url: \"redis://127.0.0.1:6379\" }}"
        ),
    ).await;
    let batched = drive(&batching, count).await;
    report(&format!("  batch {BATCH_SIZE}"), count, raw, batched);
    let _: () = redis::cmd("DEL")
        .arg(&stream)
        .arg(&batched_stream)
        .query_async(&mut conn)
        .await
        .unwrap();
}

/// Whether the per-message Reactor runs of the sources with `batch:` run too
/// (`REACTOR_BENCH_BATCH_ONLY=1` skips them: the batched runs alone, e.g. under a profiler).
fn per_message() -> bool {
    std::env::var("REACTOR_BENCH_BATCH_ONLY").map_or(true, |v| v != "1")
}

/// Messages per execution in the `batch:` runs (gathered for 50 ms at most: only the
/// stream's tail waits).
const BATCH_SIZE: usize = 500;

async fn kafka_bench(count: usize) {
    let cluster = MockCluster::new(1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let fill = |topic: String| {
        let producer = producer.clone();
        async move {
            let sends = (0..count).map(|n| {
                let producer = producer.clone();
                let topic = topic.clone();
                async move {
                    let payload = format!("{{\"n\": {n}}}");
                    producer
                        .send(
                            FutureRecord::<(), _>::to(&topic).payload(&payload),
                            Duration::from_secs(30),
                        )
                        .await
                        .unwrap();
                }
            });
            futures::future::join_all(sends).await;
        }
    };
    // Raw: receive, commit every 256 asynchronously (a blocking commit holds the consumer back).
    let topic = name("bench_raw");
    cluster.create_topic(&topic, 4, 1).unwrap();
    fill(topic.clone()).await;
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", "raw")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[&topic]).unwrap();
    let first = consumer.recv().await.unwrap().detach();
    let started = Instant::now();
    let mut seen = 1;
    let mut last = first;
    while seen < count {
        last = consumer.recv().await.unwrap().detach();
        seen += 1;
        if seen % 256 == 0 {
            consumer.commit_consumer_state(CommitMode::Async).ok();
        }
    }
    let _ = last.offset();
    let raw = count as f64 / started.elapsed().as_secs_f64();
    drop(consumer);
    // Reactor.
    if per_message() {
        let topic = name("bench_rt");
        cluster.create_topic(&topic, 4, 1).unwrap();
        fill(topic.clone()).await;
        let dir = tempfile::tempdir().unwrap();
        let plain = runtime(
            &dir,
            &format!(
                "kafka: {{ topic: {topic}, group: rt, from: earliest, brokers: \"{brokers}\" }}"
            ),
        )
        .await;
        let reactor = drive(&plain, count).await;
        report("kafka (mock)", count, raw, reactor);
    }
    // Reactor with `batch:` (500 messages per execution at most, per partition).
    let topic = name("bench_batch");
    cluster.create_topic(&topic, 4, 1).unwrap();
    fill(topic.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let batching = runtime(
        &dir,
        &format!(
            "kafka: {{ topic: {topic}, group: rt, from: earliest, batch: {{ size: {BATCH_SIZE}, wait: 50ms }}, brokers: \"{brokers}\" }}"
        ),
    ).await;
    let batched = drive(&batching, count).await;
    report(&format!("  batch {BATCH_SIZE}"), count, raw, batched);
}

async fn postgres_bench(count: usize) {
    let url = "postgres://postgres@127.0.0.1:5432/test";
    let mut conn = PgConnection::connect(url).await.unwrap();
    let table = name("bench_cdc");
    conn.execute(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE {table} (id serial PRIMARY KEY, item text)"
    )))
    .await
    .unwrap();
    let fill = |slot: String| {
        let table = table.clone();
        async move {
            let mut conn = PgConnection::connect(url).await.unwrap();
            sqlx::query("SELECT pg_create_logical_replication_slot($1, 'test_decoding')")
                .bind(&slot)
                .execute(&mut conn)
                .await
                .unwrap();
            // 100 rows per transaction.
            for _ in 0..count.div_ceil(100) {
                conn.execute(sqlx::AssertSqlSafe(format!(
                    "INSERT INTO {table} (item) SELECT 'item ' || g FROM generate_series(1, 100) g"
                )))
                .await
                .unwrap();
            }
        }
    };
    // Raw: peek as many as the trigger does, then advance, without recording.
    let slot = name("bench_raw");
    fill(slot.clone()).await;
    let started = Instant::now();
    let mut seen = 0usize;
    while seen < count {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT lsn::text, data FROM pg_logical_slot_peek_changes($1, NULL, $2, 'include-xids', '1', 'skip-empty-xacts', '1')",
        )
        .bind(&slot)
        .bind(reactor_hub_triggers::postgres::PEEK)
        .fetch_all(&mut conn)
        .await
        .unwrap();
        seen += rows.iter().filter(|r| r.1.starts_with("table ")).count();
        if let Some((lsn, _)) = rows.last() {
            sqlx::query("SELECT end_lsn FROM pg_replication_slot_advance($1, $2::pg_lsn)")
                .bind(&slot)
                .bind(lsn)
                .execute(&mut conn)
                .await
                .unwrap();
        }
    }
    let raw = count as f64 / started.elapsed().as_secs_f64();
    sqlx::query("SELECT pg_drop_replication_slot($1)")
        .bind(&slot)
        .execute(&mut conn)
        .await
        .unwrap();
    // Reactor (operations: insert, the rows of the raw run's fill are already consumed).
    let slot = reactor_hub_triggers::postgres::PostgresTrigger::slot_name(
        "bench",
        &format!("\"{table}\""),
    );
    fill(slot.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime(
        &dir,
        &format!("postgres: {{ table: {table}, operations: insert, url: \"{url}\" }}"),
    )
    .await;
    let reactor = drive(&runtime, count).await;
    drop_slot_and_table(&mut conn, &slot, &table).await;
    report("postgres cdc", count, raw, reactor);
}

/// Removes a CDC run's slot (retrying: the trigger's connection may hold it a moment after
/// the trigger stopped) and its table.
async fn drop_slot_and_table(conn: &mut PgConnection, slot: &str, table: &str) {
    for _ in 0..50 {
        let dropped = sqlx::query("SELECT pg_drop_replication_slot($1)")
            .bind(slot)
            .execute(&mut *conn)
            .await;
        if dropped.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    conn.execute(sqlx::AssertSqlSafe(format!("DROP TABLE {table}")))
        .await
        .unwrap();
}

fn main() {
    let wanted: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let on = |name: &str| wanted.is_empty() || wanted.iter().any(|w| w == name);
    let count = events();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        if on("engine") {
            engine_bench(count).await;
        }
        if on("redis") {
            redis_bench(count).await;
        }
        if on("kafka") {
            kafka_bench(kafka_events()).await;
        }
        if on("nats") {
            sources::nats_bench(count).await;
        }
        if on("postgres") {
            postgres_bench(count).await;
        }
        if on("mysql") {
            sources::mysql_bench(count).await;
        }
        // Not in the default set: it runs for a fixed time.
        if wanted.iter().any(|w| w == "postgres-steady") {
            let rate = std::env::var("REACTOR_BENCH_RATE")
                .ok()
                .and_then(|n| n.parse().ok())
                .unwrap_or(5_000);
            let seconds = std::env::var("REACTOR_BENCH_SECONDS")
                .ok()
                .and_then(|n| n.parse().ok())
                .unwrap_or(60);
            sources::postgres_steady_bench(rate, seconds).await;
        }
    });
}
