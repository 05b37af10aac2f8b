//! The write-ahead log: groups between checkpoints survive a crash through it alone, replay
//! stops at a torn record, stale records of older cycles and a log left by another journal
//! are never replayed. (`crash_tests.rs` crashes and fails every I/O operation of both files.)

use super::fault::FaultDisk;
use super::wal::{self, CHECKPOINT_GROUPS};
use super::{RedbOptions, RedbStore};
use crate::engine::ExecutionStatus;
use crate::store::conformance::{append, create, id, record};
use crate::store::{Store, StoreError, StoreWrite};

fn open(disk: &FaultDisk) -> Result<RedbStore, StoreError> {
    RedbStore::open_with(disk.opener(), disk.wal_opener(), RedbOptions::default())
}

fn batch(n: u64) -> Vec<StoreWrite> {
    vec![
        create(record(id(n), "wal", ExecutionStatus::Running)),
        append(id(n), 1),
        StoreWrite::PutMeta {
            key: format!("wal/{n}"),
            value: Some(n.to_le_bytes().to_vec()),
        },
    ]
}

/// Writes batches `range` one by one (each its own group).
async fn write(store: &RedbStore, range: std::ops::Range<u64>) {
    for n in range {
        store.write(batch(n)).await.expect("write");
    }
}

/// Which of `range` are present, whole (panics on a half-present batch).
async fn present(store: &RedbStore, range: std::ops::Range<u64>) -> Vec<u64> {
    let mut out = Vec::new();
    for n in range {
        let record = store.execution(id(n)).await.expect("read").is_some();
        let journal = store.journal(id(n)).await.expect("journal").len();
        let meta = store.meta(&format!("wal/{n}")).await.expect("meta");
        match (record, journal, meta) {
            (true, 2, Some(value)) => {
                assert_eq!(value, n.to_le_bytes());
                out.push(n);
            }
            (false, 0, None) => {}
            other => panic!("batch {n} is half there: {other:?}"),
        }
    }
    out
}

/// Kills the store as a crash would: every later I/O fails, so not even the checkpoint at
/// close reaches the disk; returns what survives.
fn crash(disk: &FaultDisk, store: RedbStore) -> FaultDisk {
    disk.crash_at(1);
    drop(store);
    disk.after_crash()
}

/// Writes batches `range` on a new disk, one group each, then crashes: the disk that
/// survives and its log's durable bytes.
async fn written_then_crashed(range: std::ops::Range<u64>) -> (FaultDisk, Vec<u8>) {
    let disk = FaultDisk::new();
    let store = open(&disk).expect("open");
    write(&store, range).await;
    let disk = crash(&disk, store);
    let log = disk.sibling().durable_bytes();
    (disk, log)
}

/// The LSN of the record at `at` in the log's bytes.
fn lsn_at(log: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(log[at + 8..at + 16].try_into().expect("8 bytes"))
}

/// The (offset, length) of each record in the log's durable bytes, in order.
fn records(log: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(header) = log.get(at..at + 16) {
        let len = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes")) as usize;
        if len == 0 {
            break;
        }
        out.push((at, 16 + len));
        at += 16 + len;
    }
    out
}

#[tokio::test]
async fn groups_between_checkpoints_survive_a_crash_through_the_log() {
    let disk = FaultDisk::new();
    let store = open(&disk).expect("open");
    write(&store, 0..10).await;
    assert_eq!(store.commits(), 10);
    assert_eq!(
        store.checkpoints(),
        0,
        "ten groups are far from a checkpoint"
    );
    let log = disk.sibling().durable_bytes();
    assert_eq!(records(&log).len(), 10, "one record per group");

    let disk = crash(&disk, store);
    let store = open(&disk).expect("reopen");
    assert_eq!(present(&store, 0..10).await, (0..10).collect::<Vec<_>>());
    // Replayed into one durable commit: a second crash right away loses nothing either.
    let disk = crash(&disk, store);
    let store = open(&disk).expect("reopen twice");
    assert_eq!(present(&store, 0..10).await.len(), 10);
    write(&store, 10..12).await;
    let disk = crash(&disk, store);
    let store = open(&disk).expect("reopen after more");
    assert_eq!(present(&store, 0..12).await.len(), 12);
}

#[tokio::test]
async fn every_so_many_groups_redb_commits_durably_and_the_log_starts_over() {
    let disk = FaultDisk::new();
    let store = open(&disk).expect("open");
    let total = u64::from(CHECKPOINT_GROUPS) + 3;
    write(&store, 0..total).await;
    assert_eq!(store.checkpoints(), 1);
    // Group 129 was the checkpoint; the log started over: its first records are the two
    // groups since, and older records stay behind them.
    let log = disk.sibling().durable_bytes();
    let lsns: Vec<u64> = records(&log)
        .iter()
        .take(2)
        .map(|&(at, _)| lsn_at(&log, at))
        .collect();
    assert_eq!(lsns, [total - 1, total]);
    let (at, len) = records(&log)[1];
    assert!(log.len() > at + len, "the older records are still there");

    let disk = crash(&disk, store);
    let store = open(&disk).expect("reopen");
    assert_eq!(present(&store, 0..total).await.len() as u64, total);
}

#[tokio::test]
async fn replay_stops_at_a_torn_record() {
    let (disk, log) = written_then_crashed(0..4).await;
    // Tear the third record: one byte of its payload changes.
    let (at, len) = records(&log)[2];
    let byte = log[at + len - 1];
    disk.sibling().plant((at + len - 1) as u64, &[byte ^ 0xff]);

    let store = open(&disk).expect("reopen");
    // The fourth, though intact, follows a gap: nothing after a torn record is replayed.
    assert_eq!(present(&store, 0..4).await, vec![0, 1]);
    // The journal goes on from there, and a later crash keeps what follows.
    write(&store, 10..12).await;
    let disk = crash(&disk, store);
    let store = open(&disk).expect("reopen again");
    assert_eq!(present(&store, 0..4).await, vec![0, 1]);
    assert_eq!(present(&store, 10..12).await, vec![10, 11]);
}

#[tokio::test]
async fn stale_records_of_an_older_cycle_are_not_replayed() {
    let disk = FaultDisk::new();
    let store = open(&disk).expect("open");
    write(&store, 0..5).await;
    // A clean close checkpoints; the log keeps its old records.
    store.close().await.expect("close");
    drop(store);
    let store = open(&disk).expect("reopen");
    assert_eq!(present(&store, 0..5).await.len(), 5);
    // Delete batch 0's meta (a write that replaying an old record would undo), then crash
    // with one new record at the start of the log and the older ones behind it.
    store
        .write(vec![StoreWrite::PutMeta {
            key: "wal/0".into(),
            value: None,
        }])
        .await
        .expect("delete");
    let disk = crash(&disk, store);
    assert!(records(&disk.sibling().durable_bytes()).len() > 1);
    let store = open(&disk).expect("reopen after crash");
    assert_eq!(store.meta("wal/0").await.expect("meta"), None);
    for n in 1..5 {
        assert!(
            store
                .meta(&format!("wal/{n}"))
                .await
                .expect("meta")
                .is_some()
        );
    }
}

#[tokio::test]
async fn a_log_left_by_another_journal_is_not_replayed() {
    let (_, log) = written_then_crashed(0..3).await;
    // A new, empty journal file beside the old log (the journal was deleted by hand).
    let fresh = FaultDisk::new();
    fresh.sibling().plant(0, &log);
    let store = open(&fresh).expect("open beside a foreign log");
    assert!(present(&store, 0..3).await.is_empty());
    write(&store, 10..11).await;
    let fresh = crash(&fresh, store);
    let store = open(&fresh).expect("reopen");
    assert!(present(&store, 0..3).await.is_empty());
    assert_eq!(present(&store, 10..11).await, vec![10]);
}

#[tokio::test]
async fn a_record_that_does_not_decode_refuses_the_open() {
    let (disk, log) = written_then_crashed(0..2).await;
    // A record with a valid checksum around a payload that is not a batch: a bug, not a
    // torn write, so the journal is not opened on a guess.
    let (at, len) = records(&log)[1];
    let lsn = lsn_at(&log, at);
    // One entry: a journal batch (kind 0) whose writes do not decode.
    let payload = [4u8, 0, 0xee, 0xee, 0xee];
    let mut record = Vec::new();
    record.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    let mut covered = lsn.to_le_bytes().to_vec();
    covered.extend_from_slice(&payload);
    record.extend_from_slice(&crc32fast::hash(&covered).to_le_bytes());
    record.extend_from_slice(&covered);
    assert!(record.len() <= len);
    disk.sibling().plant(at as u64, &record);
    let error = open(&disk).expect_err("a malformed record must not open");
    assert!(
        matches!(&error, StoreError::Corrupt(why) if why.contains("write-ahead log record")),
        "{error}"
    );
}

#[test]
fn every_write_round_trips_through_the_log_format() {
    let mut finished = record(id(7), "w", ExecutionStatus::Succeeded);
    finished.output = serde_json::json!({ "a": [1, -2, 3.5, "x", null, true] });
    let writes = vec![
        create(record(id(7), "w", ExecutionStatus::Running)),
        append(id(7), 1),
        StoreWrite::Update(finished),
        StoreWrite::PutMeta {
            key: "k".into(),
            value: Some(vec![0, 1, 2]),
        },
        StoreWrite::PutMeta {
            key: "gone".into(),
            value: None,
        },
    ];
    let mut bytes = Vec::new();
    wal::encode_batch(&writes, &mut bytes);
    assert_eq!(wal::decode_batch(&bytes).expect("decode"), writes);
    // Truncated anywhere: an error, never a panic.
    for cut in 0..bytes.len() {
        let _ = wal::decode_batch(&bytes[..cut]);
    }
    assert!(wal::decode_batch(&bytes[..bytes.len() - 1]).is_err());
}

/// The fleet outbox's appends go through the log too: between checkpoints a crash keeps every
/// acknowledged append, with its seqs, and an append after the replay continues the sequence;
/// an ack (a durable commit of its own) in between keeps its effect.
#[cfg(feature = "outbox")]
#[tokio::test]
async fn outbox_appends_survive_a_crash_through_the_log() {
    use std::sync::Arc;

    use crate::engine::Timestamp;
    use crate::outbox::{NewRecord, Outbox, OutboxLimits, Pending, RecordKind};

    fn batch_of(from: u8, count: u8) -> Vec<NewRecord> {
        (from..from + count)
            .map(|n| NewRecord {
                kind: RecordKind::Event,
                created: Timestamp::now(),
                payload: vec![n; 40],
            })
            .collect()
    }
    async fn seqs(outbox: &Outbox) -> Vec<(u64, u8)> {
        let pending = outbox.pending(0, 100, 1 << 20).await.expect("pending");
        pending
            .iter()
            .map(|item| match item {
                Pending::Record(record) => (record.seq, record.payload[0]),
                Pending::Gap(gap) => panic!("unexpected gap {gap:?}"),
            })
            .collect()
    }

    let disk = FaultDisk::new();
    let store = Arc::new(open(&disk).expect("open"));
    let outbox = Outbox::open(Arc::clone(&store), OutboxLimits::default())
        .await
        .expect("outbox");
    outbox
        .append(batch_of(1, 3), Timestamp::now())
        .await
        .expect("append");
    outbox.ack(1).await.expect("ack");
    outbox
        .append(batch_of(4, 2), Timestamp::now())
        .await
        .expect("append");
    assert_eq!(store.checkpoints(), 0);
    assert_eq!(
        records(&disk.sibling().durable_bytes()).len(),
        2,
        "each append is a record of the log (the ack is a durable commit of its own)"
    );
    drop(outbox);
    let store = Arc::into_inner(store).expect("one owner");
    let disk = crash(&disk, store);

    let store = Arc::new(open(&disk).expect("reopen"));
    let outbox = Outbox::open(Arc::clone(&store), OutboxLimits::default())
        .await
        .expect("outbox");
    assert_eq!(seqs(&outbox).await, vec![(2, 2), (3, 3), (4, 4), (5, 5)]);
    outbox
        .append(batch_of(6, 1), Timestamp::now())
        .await
        .expect("append");
    assert_eq!(seqs(&outbox).await.last(), Some(&(6, 6)));
}
