//! Group-committed journal throughput of `RedbStore` on a temporary file.
//!
//! N concurrent writers each write `Create` + `Update(succeeded)` batches (one execution per
//! batch). Criterion reports records/s (one element = one execution); after each size the
//! commits/s and batches per commit are printed.
//!
//! `cargo bench -p reactor-benches --bench store -- --warm-up-time 1 --measurement-time 5`

use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use futures::future::join_all;
use reactor_core::engine::{ExecutionId, ExecutionStatus, Timestamp};
use reactor_core::store::conformance::{create, record};
use reactor_core::store::{RedbOptions, RedbStore, Store, StoreWrite};

fn batch() -> Vec<StoreWrite> {
    let id = ExecutionId::new();
    let mut finished = record(id, "bench", ExecutionStatus::Succeeded);
    finished.output = serde_json::json!({"status": 200, "body": {"ok": true, "items": [1, 2, 3]}});
    finished.finished_at = Some(Timestamp::now());
    vec![
        create(record(id, "bench", ExecutionStatus::Running)),
        StoreWrite::Update(finished),
    ]
}

fn group_commit(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("redb_group_commit");
    for writers in [1u64, 16, 64] {
        let dir = tempfile::tempdir().expect("temp dir");
        let store =
            RedbStore::open(dir.path().join("bench.redb"), RedbOptions::default()).expect("open");
        let mut total_time = Duration::ZERO;
        let mut total_commits = 0;
        let mut total_batches = 0;
        group.throughput(Throughput::Elements(writers));
        group.bench_function(BenchmarkId::from_parameter(writers), |b| {
            b.iter_custom(|iters| {
                let commits = store.commits();
                let batches = store.batches();
                let start = Instant::now();
                runtime.block_on(join_all((0..writers).map(|_| async {
                    for _ in 0..iters {
                        store.write(batch()).await.expect("write");
                    }
                })));
                let elapsed = start.elapsed();
                total_time += elapsed;
                total_commits += store.commits() - commits;
                total_batches += store.batches() - batches;
                elapsed
            });
        });
        let seconds = total_time.as_secs_f64();
        println!(
            "writers={writers}: {:.0} records/s, {:.0} commits/s, {:.1} batches per commit",
            total_batches as f64 / seconds,
            total_commits as f64 / seconds,
            total_batches as f64 / total_commits.max(1) as f64,
        );
    }
    group.finish();
}

criterion_group!(benches, group_commit);
criterion_main!(benches);
