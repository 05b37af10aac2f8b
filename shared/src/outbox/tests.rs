//! The outbox over a real redb file: order, bounds, both policies, gaps, acks, expiry,
//! corrupt records, and reopening after the store was dropped without a clean close.

use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::store::RedbOptions;

const NOW: Timestamp = Timestamp(1_700_000_000_000);

fn open_store(dir: &tempfile::TempDir) -> Arc<RedbStore> {
    Arc::new(RedbStore::open(dir.path().join("journal.redb"), RedbOptions::default()).unwrap())
}

fn limits(max_bytes: u64, policy: OverflowPolicy) -> OutboxLimits {
    OutboxLimits {
        max_bytes,
        max_age: Duration::from_secs(3600),
        policy,
    }
}

fn event(n: u64, size: usize) -> NewRecord {
    let mut payload = n.to_le_bytes().to_vec();
    payload.resize(size.max(8), 0xAB);
    NewRecord {
        kind: if n.is_multiple_of(3) {
            RecordKind::Execution
        } else {
            RecordKind::Event
        },
        created: NOW,
        payload,
    }
}

fn tag(record: &Record) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&record.payload[..8]);
    u64::from_le_bytes(word)
}

async fn all(outbox: &Outbox) -> Vec<Pending> {
    outbox.pending(0, usize::MAX, usize::MAX).await.unwrap()
}

fn records(items: &[Pending]) -> Vec<u64> {
    items
        .iter()
        .filter_map(|item| match item {
            Pending::Record(record) => Some(record.seq),
            Pending::Gap(_) => None,
        })
        .collect()
}

fn gaps(items: &[Pending]) -> Vec<Gap> {
    items
        .iter()
        .filter_map(|item| match item {
            Pending::Gap(gap) => Some(*gap),
            Pending::Record(_) => None,
        })
        .collect()
}

#[tokio::test]
async fn records_get_increasing_seqs_and_come_back_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = Outbox::open(open_store(&dir), OutboxLimits::default())
        .await
        .unwrap();
    assert_eq!(outbox.append(vec![], NOW).await.unwrap(), None);
    let a = outbox
        .append((1..=3).map(|n| event(n, 10)).collect(), NOW)
        .await
        .unwrap();
    let b = outbox
        .append((4..=10).map(|n| event(n, 10)).collect(), NOW)
        .await
        .unwrap();
    assert_eq!(a, Some((1, 3)));
    assert_eq!(b, Some((4, 10)));
    let items = all(&outbox).await;
    assert_eq!(records(&items), (1..=10).collect::<Vec<_>>());
    for item in &items {
        let Pending::Record(record) = item else {
            panic!("unexpected gap")
        };
        assert_eq!(tag(record), record.seq, "payload belongs to its seq");
        assert_eq!(record.kind, event(record.seq, 1).kind);
    }
    // Paging: after a cursor, a count, a byte budget (at least one item).
    let page = outbox.pending(4, 3, usize::MAX).await.unwrap();
    assert_eq!(records(&page), vec![5, 6, 7]);
    let page = outbox.pending(0, 100, 1).await.unwrap();
    assert_eq!(records(&page), vec![1]);
    let stats = outbox.stats().await.unwrap();
    assert_eq!(stats.records, 10);
    assert_eq!(stats.next_seq, 11);
    assert_eq!(stats.bytes, 10 * (10 + RECORD_OVERHEAD));
}

#[tokio::test]
async fn ack_removes_up_to_the_acked_seq_and_ignores_stale_or_unknown_acks() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = Outbox::open(open_store(&dir), OutboxLimits::default())
        .await
        .unwrap();
    outbox
        .append((1..=10).map(|n| event(n, 20)).collect(), NOW)
        .await
        .unwrap();
    assert!(outbox.ack(4).await.unwrap());
    assert_eq!(records(&all(&outbox).await), (5..=10).collect::<Vec<_>>());
    assert!(!outbox.ack(3).await.unwrap(), "lower than an earlier ack");
    assert!(!outbox.ack(4).await.unwrap(), "same as the earlier ack");
    assert!(!outbox.ack(11).await.unwrap(), "a seq never given");
    assert!(outbox.ack(10).await.unwrap());
    assert!(all(&outbox).await.is_empty());
    let stats = outbox.stats().await.unwrap();
    assert_eq!((stats.records, stats.bytes, stats.acked), (0, 0, 10));
    // Seqs keep increasing after everything was acked.
    let next = outbox.append(vec![event(11, 20)], NOW).await.unwrap();
    assert_eq!(next, Some((11, 11)));
}

#[tokio::test]
async fn drop_oldest_keeps_the_byte_bound_and_reports_one_gap() {
    let dir = tempfile::tempdir().unwrap();
    let record = 100 + RECORD_OVERHEAD;
    let outbox = Outbox::open(
        open_store(&dir),
        limits(10 * record, OverflowPolicy::DropOldest),
    )
    .await
    .unwrap();
    for n in 1..=25 {
        outbox.append(vec![event(n, 100)], NOW).await.unwrap();
        let stats = outbox.stats().await.unwrap();
        assert!(stats.bytes <= 10 * record, "bound kept after {n}");
    }
    let items = all(&outbox).await;
    assert_eq!(
        gaps(&items),
        vec![Gap {
            from: 1,
            to: 15,
            count: 15,
            reason: DropReason::Full
        }]
    );
    assert_eq!(records(&items), (16..=25).collect::<Vec<_>>());
    assert_eq!(items[0].first(), 1, "the gap comes first, in seq order");
    let stats = outbox.stats().await.unwrap();
    assert_eq!(
        (stats.dropped_full, stats.dropped(), stats.gaps),
        (15, 15, 1)
    );
    // The gap is handed out: later drops start a new gap instead of changing it.
    outbox.append(vec![event(26, 100)], NOW).await.unwrap();
    let items = all(&outbox).await;
    assert_eq!(
        gaps(&items),
        vec![
            Gap {
                from: 1,
                to: 15,
                count: 15,
                reason: DropReason::Full
            },
            Gap {
                from: 16,
                to: 16,
                count: 1,
                reason: DropReason::Full
            }
        ]
    );
    // An ack covering a gap removes it; one that does not cover it keeps it.
    outbox.ack(15).await.unwrap();
    assert_eq!(gaps(&all(&outbox).await).len(), 1);
    outbox.ack(16).await.unwrap();
    assert!(gaps(&all(&outbox).await).is_empty());
    assert_eq!(outbox.stats().await.unwrap().gaps, 0);
}

#[tokio::test]
async fn block_triggers_refuses_when_full_and_fits_again_after_an_ack() {
    let dir = tempfile::tempdir().unwrap();
    let record = 100 + RECORD_OVERHEAD;
    let outbox = Outbox::open(
        open_store(&dir),
        limits(5 * record, OverflowPolicy::BlockTriggers),
    )
    .await
    .unwrap();
    outbox
        .append((1..=5).map(|n| event(n, 100)).collect(), NOW)
        .await
        .unwrap();
    let refused = outbox.append(vec![event(6, 100)], NOW).await;
    assert!(
        matches!(refused, Err(OutboxError::Full { needed, .. }) if needed == record),
        "{refused:?}"
    );
    let stats = outbox.stats().await.unwrap();
    assert_eq!((stats.records, stats.next_seq, stats.dropped()), (5, 6, 0));
    // A waiter learns about the room an ack makes.
    let waiter = {
        let outbox = outbox.clone();
        tokio::spawn(async move {
            outbox.space().notified().await;
            outbox.append(vec![event(6, 100)], NOW).await
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    outbox.ack(2).await.unwrap();
    let appended = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(appended, Some((6, 6)));
    assert_eq!(records(&all(&outbox).await), vec![3, 4, 5, 6]);
    // One record larger than the whole outbox is refused under both policies.
    let huge = outbox.append(vec![event(7, 10 * 1024)], NOW).await;
    assert!(
        matches!(huge, Err(OutboxError::TooLarge { .. })),
        "{huge:?}"
    );
}

#[tokio::test]
async fn records_past_the_age_bound_are_dropped_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    for policy in [OverflowPolicy::DropOldest, OverflowPolicy::BlockTriggers] {
        let dir = tempfile::tempdir_in(dir.path()).unwrap();
        let outbox = Outbox::open(open_store(&dir), limits(1 << 20, policy))
            .await
            .unwrap();
        let old = |n| NewRecord {
            created: Timestamp(NOW.0 - 2 * 3_600_000),
            ..event(n, 10)
        };
        outbox
            .append(vec![old(1), old(2), old(3)], NOW)
            .await
            .unwrap();
        outbox.append(vec![event(4, 10)], NOW).await.unwrap();
        // The append above already expired 1..=3 (expiry runs first in every append).
        let items = all(&outbox).await;
        assert_eq!(
            gaps(&items),
            vec![Gap {
                from: 1,
                to: 3,
                count: 3,
                reason: DropReason::Expired
            }],
            "{policy:?}"
        );
        assert_eq!(records(&items), vec![4]);
        // expire() on its own: record 4 ages out later.
        let later = Timestamp(NOW.0 + 3_600_001);
        assert_eq!(outbox.expire(later).await.unwrap(), 1);
        assert_eq!(outbox.expire(later).await.unwrap(), 0);
        let stats = outbox.stats().await.unwrap();
        assert_eq!((stats.dropped_expired, stats.records), (4, 0));
    }
}

#[tokio::test]
async fn a_record_that_does_not_decode_becomes_a_corrupt_gap() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(&dir);
    let outbox = Outbox::open(store.clone(), OutboxLimits::default())
        .await
        .unwrap();
    outbox
        .append((1..=5).map(|n| event(n, 10)).collect(), NOW)
        .await
        .unwrap();
    store
        .run(|db| {
            let txn = db.begin_write().unwrap();
            {
                let mut table = txn.open_table(tables::RECORDS_FOR_TESTS).unwrap();
                table.insert(3, [9u8, 9, 9].as_slice()).unwrap();
            }
            txn.commit().unwrap();
            Ok(())
        })
        .await
        .unwrap();
    let items = all(&outbox).await;
    assert_eq!(records(&items), vec![1, 2, 4, 5]);
    assert_eq!(
        gaps(&items),
        vec![Gap {
            from: 3,
            to: 3,
            count: 1,
            reason: DropReason::Corrupt
        }]
    );
    let order: Vec<u64> = items.iter().map(Pending::first).collect();
    assert_eq!(order, vec![1, 2, 3, 4, 5]);
    assert_eq!(outbox.stats().await.unwrap().dropped_corrupt, 1);
}

#[tokio::test]
async fn everything_survives_a_reopen_without_a_clean_close() {
    let dir = tempfile::tempdir().unwrap();
    let record = 10 + RECORD_OVERHEAD;
    let limits = limits(20 * record, OverflowPolicy::DropOldest);
    {
        let store = open_store(&dir);
        let outbox = Outbox::open(store.clone(), limits).await.unwrap();
        for n in 1..=30 {
            outbox.append(vec![event(n, 10)], NOW).await.unwrap();
        }
        outbox.ack(12).await.unwrap();
        // No close: the store thread is torn down with whatever it had committed.
        drop(outbox);
        drop(store);
    }
    let outbox = Outbox::open(open_store(&dir), limits).await.unwrap();
    let stats = outbox.stats().await.unwrap();
    assert_eq!(stats.next_seq, 31);
    assert_eq!(stats.acked, 12);
    assert_eq!(stats.dropped_full, 10);
    let items = all(&outbox).await;
    assert_eq!(records(&items), (13..=30).collect::<Vec<_>>());
    assert!(gaps(&items).is_empty(), "the gap 1..=10 was acked");
    assert_eq!(stats.records, 18);
    assert_eq!(stats.bytes, 18 * record);
    // After a reopen, new drops never extend a gap a previous run may have sent.
    let next = outbox.append(vec![event(31, 10)], NOW).await.unwrap();
    assert_eq!(next, Some((31, 31)));
}
