//! A fixed amount of engine work for instruction-count profiles (callgrind) of the durable
//! path: N executions of one workload, K in flight, on a current-thread tokio runtime (the
//! redb store thread is a second thread), then a summary line.
//!
//! ```text
//! engine-profile WORKLOAD [--executions N] [--in-flight K] [--store redb|memory] [--dir PATH]
//! ```
//!
//! Workloads:
//! - `http-rule`: `benches/load/workflows/rule-http.yaml` (switch + output) submitted the way
//!   the `http` trigger does (`submit_watched`, an event with `meta.headers`, waiting on the
//!   watch): the agent's HTTP budget without the HTTP server;
//! - `one-step`: one `transform` of `event.data` through `submit` + `wait` (the hub trigger
//!   bench's workflow);
//! - `one-step-once`: the same through `submit_once` with a de-duplication mark per event
//!   and no wait, as the Kafka/Redis/JetStream triggers submit;
//! - `mixed-five`: [`reactor_benches::MIXED_FIVE`], two side effects (three journal writes).
//!
//! Instructions per execution: run it twice under
//! `valgrind --tool=callgrind` with different N and divide the difference of the totals by
//! the difference of N (start-up, parsing and opening the database cancel out).

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use futures::future::join_all;
use reactor_benches::{MIXED_FIVE, runtime};
use reactor_core::engine::{
    DedupeMark, Event, ExecutionStatus, Runtime, RuntimeConfig, Submission,
};
use reactor_core::store::{MemoryStore, RedbOptions, RedbStore, Store};
use serde_json::{Value, json};

const HTTP_RULE: &str = include_str!("../../load/workflows/rule-http.yaml");

const ONE_STEP: &str = r#"
reactor: 1
name: one-step
steps:
  - action: transform
    with: { value: "${{ event.data }}" }
"#;

#[derive(Clone, Copy, PartialEq)]
enum Workload {
    HttpRule,
    OneStep,
    OneStepOnce,
    MixedFive,
}

impl Workload {
    fn parse(name: &str) -> anyhow::Result<Workload> {
        Ok(match name {
            "http-rule" => Workload::HttpRule,
            "one-step" => Workload::OneStep,
            "one-step-once" => Workload::OneStepOnce,
            "mixed-five" => Workload::MixedFive,
            other => {
                bail!("unknown workload {other:?} (http-rule, one-step, one-step-once, mixed-five)")
            }
        })
    }

    fn workflow(self) -> (&'static str, &'static str) {
        match self {
            Workload::HttpRule => ("rule-http", HTTP_RULE),
            Workload::OneStep | Workload::OneStepOnce => ("one-step", ONE_STEP),
            Workload::MixedFive => ("mixed-five", MIXED_FIVE),
        }
    }
}

/// The event the `http` trigger builds for `POST /rule` from wrk (`benches/load/rule.lua`).
fn http_event(n: u64) -> Event {
    let data = if n.is_multiple_of(2) {
        json!({"device": "sensor-1", "zone": "A", "temp": 31.5})
    } else {
        json!({"device": "sensor-2", "zone": "B", "temp": 22.0})
    };
    let mut event = Event::new("http", "reactor:http/rule", data);
    event.meta = json!({
        "method": "POST",
        "path": "/rule",
        "query": {},
        "headers": {
            "host": "127.0.0.1:18080",
            "content-type": "application/json",
            "content-length": "45",
        },
        "remote": "127.0.0.1:40000",
    });
    event
}

fn source_event(n: u64) -> Event {
    Event::new(
        "redis",
        "reactor:redis/bench",
        json!({"n": n, "device": "sensor-1", "temp": 21.5}),
    )
}

async fn one(runtime: &Runtime, workload: Workload, name: &str, n: u64) -> anyhow::Result<()> {
    let record = match workload {
        Workload::HttpRule => {
            let (submission, watch) = runtime
                .submit_watched(name, http_event(n), Value::Object(Default::default()))
                .await?;
            let Submission::Accepted(_) = submission else {
                bail!("not accepted: {submission:?}");
            };
            watch.context("no watch")?.finished().await?
        }
        Workload::OneStep | Workload::MixedFive => {
            let submission = runtime.submit(name, source_event(n), json!({})).await?;
            let Submission::Accepted(id) = submission else {
                bail!("not accepted: {submission:?}");
            };
            runtime.wait(id).await?
        }
        Workload::OneStepOnce => {
            let mark = DedupeMark::new(format!("redis/bench/g/{n}-0"), json!({ "id": n }));
            let submission = runtime
                .submit_once(name, source_event(n), json!({}), mark)
                .await?;
            let Submission::Accepted(id) = submission else {
                bail!("not accepted: {submission:?}");
            };
            // The broker triggers acknowledge their source after `submit_once` and never
            // wait; the pure workflow finished inside it (`main` checks the count of
            // succeeded executions at the end).
            let _ = id;
            return Ok(());
        }
    };
    if record.status != ExecutionStatus::Succeeded {
        bail!("execution {}: {:?}", record.status.as_str(), record.error);
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let workload = Workload::parse(&args.next().context("usage: engine-profile WORKLOAD …")?)?;
    let (mut total, mut in_flight, mut kind, mut dir) =
        (10_000u64, 64u64, "redb".to_string(), None);
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--executions" => total = value.parse()?,
            "--in-flight" => in_flight = value.parse()?,
            "--store" => kind = value,
            "--dir" => dir = Some(std::path::PathBuf::from(value)),
            other => bail!("unknown flag {other:?}"),
        }
    }
    let temp = tempfile::tempdir()?;
    let dir = dir.unwrap_or_else(|| temp.path().to_path_buf());
    let (store, redb): (Arc<dyn Store>, Option<Arc<RedbStore>>) = match kind.as_str() {
        "redb" => {
            let redb = Arc::new(RedbStore::open(
                dir.join("profile.redb"),
                RedbOptions::default(),
            )?);
            (redb.clone(), Some(redb))
        }
        "memory" => (Arc::new(MemoryStore::new()), None),
        other => bail!("unknown store {other:?} (redb, memory)"),
    };
    let (name, text) = workload.workflow();
    let engine = runtime(store, RuntimeConfig::default(), &[text]);
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let start = Instant::now();
    tokio.block_on(async {
        let lanes = (0..in_flight).map(|lane| {
            let engine = &engine;
            async move {
                let mut n = lane;
                while n < total {
                    one(engine, workload, name, n).await?;
                    n += in_flight;
                }
                Ok::<_, anyhow::Error>(())
            }
        });
        join_all(lanes)
            .await
            .into_iter()
            .collect::<Result<Vec<_>, _>>()
    })?;
    let elapsed = start.elapsed().as_secs_f64();
    let succeeded = engine
        .stats()
        .succeeded
        .load(std::sync::atomic::Ordering::Relaxed);
    if succeeded != total {
        bail!("{succeeded} of {total} executions succeeded");
    }
    tokio.block_on(engine.shutdown());
    let (commits, batches) = redb.as_ref().map_or((0, 0), |r| (r.commits(), r.batches()));
    println!(
        "{total} executions of {name} in {elapsed:.2} s = {:.0}/s; {commits} commits, {:.1} batches per commit",
        total as f64 / elapsed,
        batches as f64 / commits.max(1) as f64
    );
    Ok(())
}
