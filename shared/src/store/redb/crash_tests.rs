//! Crash safety of [`RedbStore`] at the storage layer, through [`FaultDisk`].
//!
//! The checked invariants: every acknowledged batch is fully present after a failure or a
//! crash; no batch is half-written (its record, journal and meta appear together or not at
//! all); journals are contiguous (reading one with a gap is `Corrupt`, which fails the test).

use futures::future::join_all;

use super::fault::FaultDisk;
use super::{RedbOptions, RedbStore};
use crate::engine::ExecutionStatus;
use crate::store::conformance::{append, create, id, record};
use crate::store::{Store, StoreError, StoreWrite};

/// The long-lived execution that one batch of every round appends to.
const LONG: u64 = 10_000;

fn open(disk: &FaultDisk) -> Result<RedbStore, StoreError> {
    RedbStore::open_with(disk.opener(), disk.wal_opener(), RedbOptions::default())
}

/// Batch `i`: a new execution with three facts and a meta value; the first batch of round
/// `round` also appends seq `round + 1` to [`LONG`].
fn batch(i: u64, long_seq: Option<u32>) -> Vec<StoreWrite> {
    let mut writes = vec![
        create(record(id(i), "crash", ExecutionStatus::Running)),
        append(id(i), 1),
        append(id(i), 2),
        StoreWrite::PutMeta {
            key: format!("batch/{i}"),
            value: Some(vec![u8::try_from(i % 251).unwrap_or(0); 300]),
        },
    ];
    if let Some(seq) = long_seq {
        writes.push(append(id(LONG), seq));
    }
    writes
}

/// Whether batch `i` is present; panics if it is half there.
async fn present(store: &RedbStore, i: u64) -> bool {
    let record = store.execution(id(i)).await.expect("read record").is_some();
    let journal = store.journal(id(i)).await.expect("read journal").len();
    let meta = store.meta(&format!("batch/{i}")).await.expect("read meta");
    match (record, journal, meta) {
        (true, 3, Some(value)) => {
            assert_eq!(value.len(), 300, "meta of batch {i}");
            true
        }
        (false, 0, None) => false,
        other => panic!("batch {i} is half-written: {other:?}"),
    }
}

/// Writes `rounds` rounds of two concurrent batches (group-committed together); returns the
/// acknowledged batch numbers. Stops at the first round with a failure.
async fn run_rounds(store: &RedbStore, rounds: u32) -> (Vec<u64>, Option<StoreError>) {
    let mut acked = Vec::new();
    for round in 0..rounds {
        let first = u64::from(round) * 2;
        let results = join_all([
            store.write(batch(first, Some(round + 1))),
            store.write(batch(first + 1, None)),
        ])
        .await;
        let mut failure = None;
        for (offset, result) in (0u64..).zip(results) {
            match result {
                Ok(()) => acked.push(first + offset),
                Err(err) => failure = Some(err),
            }
        }
        if failure.is_some() {
            return (acked, failure);
        }
    }
    (acked, None)
}

/// Checks the invariants over batches `0..batches` (and batch 100, written after a failure);
/// returns how many of `0..batches` are present.
async fn check(store: &RedbStore, acked: &[u64], batches: u64) -> usize {
    let mut count = 0;
    for i in 0..batches {
        let here = present(store, i).await;
        assert!(
            here || !acked.contains(&i),
            "acknowledged batch {i} was lost"
        );
        count += usize::from(here);
    }
    // The long journal holds exactly the rounds whose first batch is present, in order.
    let long = store.journal(id(LONG)).await.expect("long journal");
    for round in 0..batches / 2 {
        let has_seq = long.len() > usize::try_from(round).expect("small") + 1;
        assert_eq!(has_seq, present(store, round * 2).await, "round {round}");
    }
    // Recovery reads (and decodes) everything unfinished.
    let unfinished = store.unfinished().await.expect("unfinished");
    let extra = usize::from(present(store, 100).await);
    assert_eq!(unfinished.len(), count + 1 + extra);
    count
}

async fn prepared() -> (FaultDisk, RedbStore) {
    let disk = FaultDisk::new();
    let store = open(&disk).expect("open");
    store
        .write(vec![create(record(
            id(LONG),
            "long",
            ExecutionStatus::Running,
        ))])
        .await
        .expect("create long");
    (disk, store)
}

const ROUNDS: u32 = 4;

// How two concurrent batches group into commits varies from run to run, and so does the
// number of I/O operations: the loops below measure once, then try every point, and check
// the invariants whether or not the chosen point was reached.

#[tokio::test]
async fn failed_io_is_reported_and_later_batches_work() {
    // Measure how many operations the rounds take, then fail each one in turn.
    let (disk, store) = prepared().await;
    disk.fail_nth(u64::MAX);
    let (acked, failure) = run_rounds(&store, ROUNDS).await;
    assert!(failure.is_none() && acked.len() == 2 * ROUNDS as usize);
    let total = disk.ops();
    drop(store);

    let mut failed = 0;
    for n in 1..=total {
        let (disk, store) = prepared().await;
        disk.fail_nth(n);
        let (mut acked, failure) = run_rounds(&store, ROUNDS).await;
        if let Some(failure) = failure {
            assert!(matches!(failure, StoreError::Io(_)), "{failure}");
            failed += 1;
        }
        // A run that used fewer operations never reached `n`: nothing more may fail.
        disk.fail_nth(u64::MAX);
        // The store reopened the database: later batches work.
        store
            .write(batch(100, None))
            .await
            .unwrap_or_else(|err| panic!("after failing operation {n}: {err}"));
        acked.push(100);
        assert!(present(&store, 100).await);
        check(&store, &acked, 2 * u64::from(ROUNDS)).await;
        // And what was acknowledged is durable.
        drop(store);
        let store = open(&disk.after_crash()).expect("open after crash");
        assert!(present(&store, 100).await);
        check(&store, &acked, 2 * u64::from(ROUNDS)).await;
    }
    assert!(
        failed * 2 > total,
        "only {failed} of {total} injected failures were hit"
    );
}

#[tokio::test]
async fn crash_at_every_point_keeps_acknowledged_batches() {
    let (disk, store) = prepared().await;
    disk.crash_at(u64::MAX);
    run_rounds(&store, ROUNDS).await;
    let total = disk.ops();
    drop(store);

    let mut outcomes = Vec::new();
    // Past `total` + a margin, no run reaches the crash point.
    for n in 1..=total + 20 {
        let (disk, store) = prepared().await;
        disk.crash_at(n);
        let (acked, failure) = run_rounds(&store, ROUNDS).await;
        if failure.is_some() {
            // The disk is gone: the store cannot reopen and says so.
            let later = store.write(batch(100, None)).await;
            assert!(later.is_err(), "a write after the crash at {n} succeeded");
        }
        drop(store);
        let store = open(&disk.after_crash())
            .unwrap_or_else(|err| panic!("reopen after a crash at operation {n}: {err}"));
        let count = check(&store, &acked, 2 * u64::from(ROUNDS)).await;
        outcomes.push(count);
    }
    // Sanity: crashes early keep little, no crash keeps everything.
    assert_eq!(outcomes.last().copied(), Some(2 * ROUNDS as usize));
    assert!(outcomes.first().copied() < Some(2 * ROUNDS as usize));
}
