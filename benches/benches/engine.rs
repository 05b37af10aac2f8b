//! Engine throughput, one element = one execution run to the end.
//!
//! - `machine/pure_five`: the pure state machine alone (`Machine::start` + `apply` until
//!   done), transform results computed inline as the driver would.
//! - `memory/pure_five/K`: `Runtime` over `MemoryStore`, `submit` + `wait`, K in flight, on a
//!   current-thread tokio runtime (one core). Budget ≥ 50,000/s.
//! - `redb/guarded_two/K`: durable on `RedbStore` in a temp dir, workflow-level `if` + two
//!   pure steps + output; one group-committed write per execution. Budget ≥ 20,000/s.
//! - `redb/mixed_five/K`: durable, five steps of which two are side effects (`noop`); three
//!   journal writes per execution. Budget ≥ 5,000/s.
//!
//! After each durable benchmark the redb commits/s and journal batches per commit are
//! printed.
//!
//! `cargo bench -p reactor-benches --bench engine -- --warm-up-time 1 --measurement-time 5`

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use futures::future::join_all;
use reactor_benches::{GUARDED_TWO, MIXED_FIVE, PURE_FIVE, event, runtime, workflow};
use reactor_core::engine::{
    Command, Environment, ExecutionId, ExecutionStatus, Fact, Machine, Outcome, Runtime,
    RuntimeConfig, Submission, Timestamp,
};
use reactor_core::store::{MemoryStore, RedbOptions, RedbStore, Store};
use serde_json::{Value, json};

/// Executions per criterion iteration of the runtime benchmarks.
const BATCH: u64 = 1024;

/// Runs one execution of `wf` through the bare machine; returns the number of facts applied.
fn run_machine(wf: &Arc<reactor_core::flow::Workflow>, env: &Arc<Environment>, n: u64) -> usize {
    let id = ExecutionId::new();
    let started = Fact::Started {
        workflow: wf.name.to_string(),
        version: wf.version,
        event: event(n),
        inputs: json!({}),
        parent: None,
        at: Timestamp::now(),
    };
    let mut machine = Machine::start(wf.clone(), id, &started, env.clone());
    let mut applied = 0;
    while machine.completion().is_none() {
        let commands = machine.take_commands();
        assert!(!commands.is_empty(), "the machine stalled");
        for command in commands {
            let Command::RunAction(action) = command else {
                panic!("unexpected command {command:?}")
            };
            // What the `transform` action returns: its `value` setting.
            let value = action.input.get("value").cloned().unwrap_or(Value::Null);
            machine.apply(&Fact::EffectFinished {
                key: action.key,
                attempt: action.attempt,
                outcome: Outcome::Succeeded(value),
                at: Timestamp::now(),
            });
            applied += 1;
        }
    }
    assert_eq!(
        machine.completion().map(|c| c.status),
        Some(ExecutionStatus::Succeeded)
    );
    applied
}

fn machine(c: &mut Criterion) {
    let wf = Arc::new(workflow(PURE_FIVE));
    let env = Arc::new(Environment::empty());
    let mut group = c.benchmark_group("machine");
    group.throughput(Throughput::Elements(1));
    group.bench_function("pure_five", |b| {
        let mut n = 0;
        b.iter(|| {
            n += 1;
            run_machine(&wf, &env, n)
        })
    });
    group.finish();
}

/// Runs `total` executions of `name`, `in_flight` at a time; returns the elapsed time.
async fn drive(runtime: &Runtime, name: &str, total: u64, in_flight: u64) -> Duration {
    let start = Instant::now();
    join_all((0..in_flight).map(|lane| async move {
        let mut n = lane;
        while n < total {
            let submission = runtime
                .submit(name, event(n), json!({}))
                .await
                .expect("submit");
            let Submission::Accepted(id) = submission else {
                panic!("not accepted: {submission:?}")
            };
            let record = runtime.wait(id).await.expect("wait");
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

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn memory(c: &mut Criterion) {
    let tokio = current_thread();
    let mut group = c.benchmark_group("memory");
    group.sample_size(10);
    group.throughput(Throughput::Elements(BATCH));
    let in_flight = 256u64;
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let engine = runtime(store, RuntimeConfig::default(), &[PURE_FIVE]);
    group.bench_function(BenchmarkId::new("pure_five", in_flight), |b| {
        b.iter_custom(|iters| tokio.block_on(drive(&engine, "pure-five", iters * BATCH, in_flight)))
    });
    tokio.block_on(engine.shutdown());
    group.finish();
}

fn durable(c: &mut Criterion) {
    let tokio = current_thread();
    let mut group = c.benchmark_group("redb");
    group.sample_size(10);
    group.throughput(Throughput::Elements(BATCH));
    for (name, text) in [("guarded-two", GUARDED_TWO), ("mixed-five", MIXED_FIVE)] {
        for in_flight in [64u64, 256] {
            let dir = tempfile::tempdir().expect("temp dir");
            let redb = Arc::new(
                RedbStore::open(dir.path().join("bench.redb"), RedbOptions::default())
                    .expect("open redb"),
            );
            let store: Arc<dyn Store> = redb.clone();
            let engine = runtime(store, RuntimeConfig::default(), &[text]);
            let (mut time, mut commits, mut batches) = (Duration::ZERO, 0, 0);
            group.bench_function(BenchmarkId::new(name.replace('-', "_"), in_flight), |b| {
                b.iter_custom(|iters| {
                    let (c0, b0) = (redb.commits(), redb.batches());
                    let elapsed = tokio.block_on(drive(&engine, name, iters * BATCH, in_flight));
                    time += elapsed;
                    commits += redb.commits() - c0;
                    batches += redb.batches() - b0;
                    elapsed
                })
            });
            tokio.block_on(engine.shutdown());
            let seconds = time.as_secs_f64();
            println!(
                "{name}/{in_flight}: {:.0} commits/s, {:.1} batches per commit",
                commits as f64 / seconds,
                batches as f64 / commits.max(1) as f64
            );
        }
    }
    group.finish();
}

criterion_group!(benches, machine, memory, durable);
criterion_main!(benches);
