//! Load script for the hub's SQL store ([`SqlStore`]) on SQLite and PostgreSQL.
//!
//! ```text
//! hub-store runtime STORE [EXECUTIONS] [IN_FLIGHT]
//!     durable 3-step pure workflow executions/s through `Runtime` (budget ≥ 5,000/s)
//! hub-store list STORE [ROWS] [QUERIES]
//!     bulk-writes ROWS finished executions, then times filtered list queries
//!     (budget: p99 < 50 ms over 1,000,000)
//! ```
//!
//! STORE is `sqlite` (a temporary data folder), `sqlite:PATH`, or `postgres` (a temporary
//! database on `REACTOR_TEST_POSTGRES`, dropped at the end). Build with `--release`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::future::join_all;
use reactor_benches::{event, runtime};
use reactor_core::engine::{
    ExecutionId, ExecutionRecord, ExecutionStatus, Fact, RuntimeConfig, Submission, Timestamp,
};
use reactor_core::store::{Retention, Store, StoreWrite};
use reactor_hub::db::testing::TempPostgres;
use reactor_hub::db::{Database, ExecutionFilter, HubInstance, SqlStore};
use serde_json::json;

/// The hub's allocator (reactor-hub's `main.rs`), so that the figures are the hub's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Three pure steps: the hub budget's reference workflow.
const PURE_THREE: &str = r#"
reactor: 1
name: pure-three
steps:
  - id: reading
    action: transform
    with: { value: "${{ event.data.temp * 2 }}" }
  - id: remember
    set: { doubled: "${{ steps.reading.output }}" }
  - id: summary
    action: transform
    with:
      value: { device: "${{ event.data.device }}", doubled: "${{ vars.doubled }}" }
"#;

const WORKFLOWS: u64 = 20;
const DEVICES: u64 = 200;
const DAY_MS: i64 = 86_400_000;

/// An open store and what keeps it alive.
struct Opened {
    store: Arc<SqlStore>,
    _instance: HubInstance,
    _dir: Option<tempfile::TempDir>,
    _database: Option<TempPostgres>,
}

async fn open(spec: &str) -> Result<Opened> {
    let (db, dir, database) = match spec {
        "sqlite" => {
            let dir = tempfile::tempdir()?;
            let db = Database::open(None, dir.path()).await?;
            (db, Some(dir), None)
        }
        "postgres" => {
            let database = TempPostgres::create("bench").await?;
            let db = Database::open_postgres(database.url()).await?;
            (db, None, Some(database))
        }
        other => match other.strip_prefix("sqlite:") {
            Some(path) => (Database::open_sqlite(path.as_ref()).await?, None, None),
            None => bail!("STORE is sqlite, sqlite:PATH or postgres"),
        },
    };
    db.migrate().await?;
    let instance = HubInstance::register(&db, Duration::from_secs(60)).await?;
    let store = Arc::new(SqlStore::new(db, instance.id()));
    Ok(Opened {
        store,
        _instance: instance,
        _dir: dir,
        _database: database,
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let number = |index: usize, default: u64| -> Result<u64> {
        args.get(index)
            .map(|v| v.parse().context("a number"))
            .unwrap_or(Ok(default))
    };
    match (args.get(1).map(String::as_str), args.get(2)) {
        (Some("runtime"), Some(spec)) => {
            throughput(spec, number(3, 50_000)?, number(4, 512)?).await
        }
        (Some("list"), Some(spec)) => list(spec, number(3, 1_000_000)?, number(4, 2_000)?).await,
        _ => bail!("usage: hub-store runtime|list STORE [N] [M]"),
    }
}

async fn throughput(spec: &str, total: u64, in_flight: u64) -> Result<()> {
    let opened = open(spec).await?;
    let store: Arc<dyn Store> = opened.store.clone();
    let config = RuntimeConfig {
        retention: Retention {
            keep: usize::MAX,
            max_age: None,
        },
        prune_every: 0,
        ..RuntimeConfig::default()
    };
    let engine = runtime(store, config, &[PURE_THREE]);
    // Warm-up: connections, statement caches.
    drive(&engine, 2_000.min(total), in_flight).await;
    let (commits, batches) = (opened.store.commits(), opened.store.batches());
    let busy = opened.store.writer_busy();
    let elapsed = drive(&engine, total, in_flight).await;
    let commits = opened.store.commits() - commits;
    let batches = opened.store.batches() - batches;
    let busy = opened.store.writer_busy() - busy;
    println!(
        "{spec}: {total} executions of pure-three, {in_flight} in flight: {:.0}/s ({:.2} s); {commits} commits, {:.1} batches/commit, writer busy {:.0}%",
        total as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64(),
        batches as f64 / commits.max(1) as f64,
        100.0 * busy.as_secs_f64() / elapsed.as_secs_f64(),
    );
    engine.shutdown().await;
    Ok(())
}

async fn drive(engine: &reactor_core::engine::Runtime, total: u64, in_flight: u64) -> Duration {
    let start = Instant::now();
    join_all((0..in_flight).map(|lane| async move {
        let mut n = lane;
        while n < total {
            let submission = engine
                .submit("pure-three", event(n), json!({}))
                .await
                .expect("submit");
            let Submission::Accepted(id) = submission else {
                panic!("not accepted: {submission:?}")
            };
            let record = engine.wait(id).await.expect("wait");
            assert_eq!(
                record.status,
                ExecutionStatus::Succeeded,
                "{:?}",
                record.error
            );
            n += in_flight;
        }
    }))
    .await;
    start.elapsed()
}

/// The `n`th bulk execution: 20 workflows, 200 devices, one of five statuses, spread over the
/// last 30 days.
fn bulk(n: u64, now: i64) -> StoreWrite {
    let span = 30 * DAY_MS;
    let created = now - span + (n as i64 * 7_919) % span;
    let id = ExecutionId(ulid::Ulid::from_parts(
        created as u64,
        u128::from(n) << 20 | 7,
    ));
    let status = match (n / WORKFLOWS) % 20 {
        0 => ExecutionStatus::Failed,
        1 => ExecutionStatus::Cancelled,
        2 => ExecutionStatus::Running,
        _ => ExecutionStatus::Succeeded,
    };
    let workflow = format!("workflow-{}", n % WORKFLOWS);
    let record = ExecutionRecord {
        id,
        workflow: workflow.clone(),
        version: 1,
        status,
        created_at: Timestamp(created),
        finished_at: status.is_finished().then_some(Timestamp(created + 40)),
        output: json!({ "device": format!("device-{}", n % DEVICES), "ok": true }),
        error: None,
        steps: Vec::new(),
        parent: None,
        concurrency_key: None,
    };
    let mut ev = event(n);
    ev.meta = json!({ "device": format!("device-{}", n % DEVICES) });
    StoreWrite::Create {
        record,
        started: Fact::Started {
            workflow,
            version: 1,
            event: ev,
            inputs: json!({}),
            parent: None,
            at: Timestamp(created),
        },
    }
}

async fn list(spec: &str, rows: u64, queries: u64) -> Result<()> {
    let opened = open(spec).await?;
    let store = &opened.store;
    let now = Timestamp::now().millis();
    let start = Instant::now();
    const BATCH: u64 = 2_000;
    const WRITERS: u64 = 4;
    // A file filled by an earlier run (STORE = sqlite:PATH) is reused as it is.
    let stored = count(store.database()).await?;
    let mut next = if stored >= rows { rows } else { 0 };
    while next < rows {
        let writes = (0..WRITERS).filter_map(|w| {
            let from = next + w * BATCH;
            (from < rows).then(|| {
                let batch: Vec<StoreWrite> = (from..(from + BATCH).min(rows))
                    .map(|n| bulk(n, now))
                    .collect();
                store.write(batch)
            })
        });
        for result in join_all(writes).await {
            result?;
        }
        next += WRITERS * BATCH;
    }
    println!(
        "{spec}: wrote {rows} executions in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    analyze(store.database()).await?;
    let kinds: [(&str, MakeFilter); 8] = [
        ("newest", |_, _| ExecutionFilter::default()),
        ("workflow", |q, _| ExecutionFilter {
            workflow: Some(format!("workflow-{}", q % WORKFLOWS)),
            ..ExecutionFilter::default()
        }),
        ("status=failed", |_, _| ExecutionFilter {
            status: Some(ExecutionStatus::Failed),
            ..ExecutionFilter::default()
        }),
        ("workflow+status", |q, _| ExecutionFilter {
            workflow: Some(format!("workflow-{}", q % WORKFLOWS)),
            status: Some(ExecutionStatus::Cancelled),
            ..ExecutionFilter::default()
        }),
        ("device", |q, _| ExecutionFilter {
            device: Some(format!("device-{}", q % DEVICES)),
            ..ExecutionFilter::default()
        }),
        ("since+until (1 day)", |q, now| {
            let day = (q % 29) as i64 + 1;
            ExecutionFilter {
                since: Some(Timestamp(now - (day + 1) * DAY_MS)),
                until: Some(Timestamp(now - day * DAY_MS)),
                ..ExecutionFilter::default()
            }
        }),
        ("workflow+since", |q, now| ExecutionFilter {
            workflow: Some(format!("workflow-{}", q % WORKFLOWS)),
            since: Some(Timestamp(now - ((q % 29) as i64 + 1) * DAY_MS)),
            ..ExecutionFilter::default()
        }),
        ("workflow, page at a cursor", |q, now| {
            let back = (q as i64 * 104_729) % (29 * DAY_MS);
            ExecutionFilter {
                workflow: Some(format!("workflow-{}", q % WORKFLOWS)),
                before: Some(ExecutionId(ulid::Ulid::from_parts((now - back) as u64, 0))),
                ..ExecutionFilter::default()
            }
        }),
    ];
    let mut all = Vec::new();
    for (name, make) in kinds {
        let mut times = Vec::new();
        for q in 0..queries / kinds.len() as u64 {
            let mut filter = make(q, now);
            filter.limit = 50;
            let start = Instant::now();
            let found = store.list(&filter).await?;
            times.push(start.elapsed());
            assert!(!found.is_empty(), "{name}: empty page");
        }
        times.sort_unstable();
        println!(
            "  {name:28} p50 {:7.2} ms  p99 {:7.2} ms  max {:7.2} ms",
            ms(percentile(&times, 50)),
            ms(percentile(&times, 99)),
            ms(*times.last().unwrap_or(&Duration::ZERO)),
        );
        all.extend(times);
    }
    all.sort_unstable();
    println!(
        "{spec}: {} list queries (limit 50) over {rows}: p50 {:.2} ms, p99 {:.2} ms",
        all.len(),
        ms(percentile(&all, 50)),
        ms(percentile(&all, 99)),
    );
    Ok(())
}

/// Makes the filter of query number `q` at time `now` (ms).
type MakeFilter = fn(u64, i64) -> ExecutionFilter;

async fn count(db: &Database) -> Result<u64> {
    let count: i64 = match db {
        Database::Sqlite(pool) => {
            sqlx::query_scalar("SELECT COUNT(*) FROM executions")
                .fetch_one(pool)
                .await?
        }
        Database::Postgres(pool) => {
            sqlx::query_scalar("SELECT COUNT(*) FROM executions")
                .fetch_one(pool)
                .await?
        }
    };
    Ok(u64::try_from(count).unwrap_or(0))
}

/// Refreshes the planner's statistics after the bulk load, as a hub's periodic maintenance
/// (`PRAGMA optimize` / autovacuum's analyze) does in production.
async fn analyze(db: &Database) -> Result<()> {
    match db {
        Database::Sqlite(pool) => {
            sqlx::query("ANALYZE").execute(pool).await?;
        }
        Database::Postgres(pool) => {
            sqlx::query("ANALYZE executions").execute(pool).await?;
        }
    }
    Ok(())
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1_000.0
}
