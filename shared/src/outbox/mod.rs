//! The agent's durable outbox (feature `outbox`): records waiting for the hub, in the
//! journal's redb file.
//!
//! Every record (an event or an execution summary, as opaque bytes the caller encodes) gets
//! the next number of ONE per-device sequence, starting at 1, and stays until the hub acks a
//! seq at or above it ([`Outbox::ack`]). Appends are durable when they return (through the
//! journal's write-ahead log, like a group commit: the log's entry holds the append's inputs
//! and a replay repeats it; acks and expiry are durable commits of their own), so a kill -9
//! loses nothing that was appended and re-sends nothing that was acked.
//!
//! Bounds: the records' bytes (payload plus [`RECORD_OVERHEAD`] each) stay within
//! `max_bytes`, and no record is kept longer than `max_age`. When an append does not fit:
//! - [`OverflowPolicy::DropOldest`] (default) drops the oldest records until it does;
//! - [`OverflowPolicy::BlockTriggers`] refuses the append with [`OutboxError::Full`]; the
//!   caller waits for [`Outbox::space`] (an ack freed room) and tries again.
//!
//! Records past `max_age` are dropped under both policies ([`Outbox::expire`]). A record that
//! no longer decodes is dropped when met. Every drop is counted by reason and recorded as a
//! [`Gap`] (`from ..= to`, count, reason); contiguous drops of one reason merge into one gap.
//! Gaps are read back with the records ([`Outbox::pending`], in seq order) and removed once an
//! ack covers their `to`. Drops always take the lowest seqs, so a gap's range is contiguous.
//!
//! The outbox shares the journal's store thread ([`RedbStore`]): its transactions run between
//! the journal's group commits, in their own tables (`outbox_records`, `outbox_gaps`,
//! `outbox_state`).

mod tables;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

use crate::engine::Timestamp;
use crate::store::{Logged, RedbStore, StoreError};

/// Bytes counted per record on top of its payload (key, header, redb's own overhead).
pub const RECORD_OVERHEAD: u64 = 32;

/// What to do when an append would exceed `max_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OverflowPolicy {
    /// Drop the oldest records (reported as a gap with [`DropReason::Full`]).
    #[default]
    DropOldest,
    /// Refuse the append ([`OutboxError::Full`]); producers wait for room.
    BlockTriggers,
}

impl std::str::FromStr for OverflowPolicy {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "drop_oldest" => Ok(OverflowPolicy::DropOldest),
            "block_triggers" => Ok(OverflowPolicy::BlockTriggers),
            other => Err(format!(
                "unknown outbox policy {other:?}: write \"drop_oldest\" or \"block_triggers\""
            )),
        }
    }
}

/// The outbox's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxLimits {
    /// Most bytes held (payloads plus [`RECORD_OVERHEAD`] each).
    pub max_bytes: u64,
    /// Records older than this (by their `created` time) are dropped.
    pub max_age: Duration,
    pub policy: OverflowPolicy,
}

impl Default for OutboxLimits {
    fn default() -> Self {
        OutboxLimits {
            max_bytes: 64 * 1024 * 1024,
            max_age: Duration::from_secs(7 * 86_400),
            policy: OverflowPolicy::DropOldest,
        }
    }
}

/// What a record carries (it decides the channel it is sent on).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordKind {
    /// An event for the hub (`events` channel).
    Event,
    /// An execution summary with its trace (`executions` channel).
    Execution,
}

impl RecordKind {
    fn code(self) -> u8 {
        match self {
            RecordKind::Event => 1,
            RecordKind::Execution => 2,
        }
    }

    fn from_code(code: u8) -> Option<RecordKind> {
        match code {
            1 => Some(RecordKind::Event),
            2 => Some(RecordKind::Execution),
            _ => None,
        }
    }
}

/// A record to append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRecord {
    pub kind: RecordKind,
    /// When it was produced (the age bound counts from here).
    pub created: Timestamp,
    /// The caller's encoding of the event or summary.
    pub payload: Vec<u8>,
}

/// A stored record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub seq: u64,
    pub kind: RecordKind,
    pub created: Timestamp,
    pub payload: Vec<u8>,
}

/// Why records were dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// The byte bound under [`OverflowPolicy::DropOldest`].
    Full,
    /// The age bound.
    Expired,
    /// The stored record did not decode.
    Corrupt,
}

impl DropReason {
    fn code(self) -> u8 {
        match self {
            DropReason::Full => 1,
            DropReason::Expired => 2,
            DropReason::Corrupt => 3,
        }
    }

    fn from_code(code: u8) -> Option<DropReason> {
        match code {
            1 => Some(DropReason::Full),
            2 => Some(DropReason::Expired),
            3 => Some(DropReason::Corrupt),
            _ => None,
        }
    }
}

/// Records `from ..= to` were dropped (`count` of them) and will never be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    pub from: u64,
    pub to: u64,
    pub count: u64,
    pub reason: DropReason,
}

/// One item to send, in seq order: a record or a gap notice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pending {
    Record(Record),
    Gap(Gap),
}

impl Pending {
    /// The first seq the item covers.
    pub fn first(&self) -> u64 {
        match self {
            Pending::Record(record) => record.seq,
            Pending::Gap(gap) => gap.from,
        }
    }

    /// The last seq the item covers.
    pub fn last(&self) -> u64 {
        match self {
            Pending::Record(record) => record.seq,
            Pending::Gap(gap) => gap.to,
        }
    }
}

/// Counters and levels, durable across restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OutboxStats {
    /// The seq the next record gets.
    pub next_seq: u64,
    /// The highest seq acked by the hub (0: none).
    pub acked: u64,
    /// Records held.
    pub records: u64,
    /// Bytes held (payloads plus overhead).
    pub bytes: u64,
    /// Records dropped for the byte bound, ever.
    pub dropped_full: u64,
    /// Records dropped for the age bound, ever.
    pub dropped_expired: u64,
    /// Records dropped because they did not decode, ever.
    pub dropped_corrupt: u64,
    /// Gap notices not yet acked.
    pub gaps: u64,
}

impl OutboxStats {
    /// Every record dropped, for any reason.
    pub fn dropped(&self) -> u64 {
        self.dropped_full + self.dropped_expired + self.dropped_corrupt
    }
}

/// Outbox failures.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum OutboxError {
    /// The append does not fit and the policy is `block_triggers`; nothing was written.
    #[error("the outbox is full ({held} of {max} bytes held, {needed} more needed)")]
    Full { held: u64, needed: u64, max: u64 },
    /// One record alone is larger than the outbox; nothing was written.
    #[error("a record of {size} bytes can never fit an outbox of {max} bytes")]
    TooLarge { size: u64, max: u64 },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The durable outbox. Cheap to clone; clones share the store and the space signal.
#[derive(Debug, Clone)]
pub struct Outbox {
    store: Arc<RedbStore>,
    limits: OutboxLimits,
    space: Arc<Notify>,
    /// The highest seq [`Outbox::pending`] handed out (at open: every seq given so far, since
    /// a previous run may have sent them). A gap that may have been sent is never extended:
    /// later drops start a new gap, so a notice the hub stored never changes meaning.
    handed_out: Arc<AtomicU64>,
}

/// Replays an append the journal's write-ahead log holds (the store calls it on open).
pub(crate) fn replay_append(
    txn: &::redb::WriteTransaction,
    entry: &[u8],
) -> Result<(), StoreError> {
    tables::replay_append(txn, entry)
}

impl Outbox {
    /// Opens the outbox in `store`'s file (creating its tables on first use).
    pub async fn open(store: Arc<RedbStore>, limits: OutboxLimits) -> Result<Outbox, OutboxError> {
        store.run(tables::init).await?;
        let stats = store.run(tables::stats).await?;
        Ok(Outbox {
            store,
            limits,
            space: Arc::new(Notify::new()),
            handed_out: Arc::new(AtomicU64::new(stats.next_seq.saturating_sub(1))),
        })
    }

    /// The bounds in force.
    pub fn limits(&self) -> OutboxLimits {
        self.limits
    }

    /// Notified whenever an ack or a drop freed room (producers blocked by
    /// [`OverflowPolicy::BlockTriggers`] wait on it; use `notified()` before retrying).
    pub fn space(&self) -> &Notify {
        &self.space
    }

    /// Appends `records` in order, durably, in one transaction; returns the seqs given to the
    /// first and last (an empty append returns `None`). Expired records are dropped first;
    /// then the byte bound applies per the policy.
    pub async fn append(
        &self,
        records: Vec<NewRecord>,
        now: Timestamp,
    ) -> Result<Option<(u64, u64)>, OutboxError> {
        if records.is_empty() {
            return Ok(None);
        }
        for record in &records {
            let size = record.payload.len() as u64 + RECORD_OVERHEAD;
            if size > self.limits.max_bytes {
                return Err(OutboxError::TooLarge {
                    size,
                    max: self.limits.max_bytes,
                });
            }
        }
        let limits = self.limits;
        let handed_out = self.handed_out.load(Ordering::Acquire);
        // Durable through the journal's write-ahead log: the entry holds every input, so a
        // replay after a crash repeats this append exactly.
        let entry = Logged::OutboxAppend(tables::encode_append(&records, limits, now, handed_out));
        let (range, freed) = self
            .store
            .write_logged(entry, move |txn| {
                tables::append_in(txn, &records, limits, now, handed_out)
            })
            .await??;
        if freed {
            self.space.notify_waiters();
        }
        Ok(Some(range))
    }

    /// Up to `max_items` records and gaps with a first seq above `after`, in seq order, with
    /// at most about `max_bytes` of payload (at least one item when any is pending). Records
    /// that no longer decode are dropped here and come back as a gap.
    pub async fn pending(
        &self,
        after: u64,
        max_items: usize,
        max_bytes: usize,
    ) -> Result<Vec<Pending>, OutboxError> {
        let handed_out = self.handed_out.load(Ordering::Acquire);
        let read = move |db: &::redb::Database| {
            tables::pending(db, after, max_items.max(1), max_bytes, handed_out)
        };
        let (mut items, dropped) = self.store.run(read).await?;
        if dropped {
            self.space.notify_waiters();
            // The corrupt records became a gap: read again so it is included, in order.
            items = self.store.run(read).await?.0;
        }
        if let Some(last) = items.last() {
            self.handed_out.fetch_max(last.last(), Ordering::AcqRel);
        }
        Ok(items)
    }

    /// The hub stored everything up to `highest`: removes those records and the gaps that
    /// end at or below it. An ack below an earlier one, or above the last seq given, is
    /// ignored (returns `false`).
    pub async fn ack(&self, highest: u64) -> Result<bool, OutboxError> {
        let moved = self.store.run(move |db| tables::ack(db, highest)).await?;
        if moved {
            self.space.notify_waiters();
        }
        Ok(moved)
    }

    /// Drops records older than `max_age` at `now`; returns how many.
    pub async fn expire(&self, now: Timestamp) -> Result<u64, OutboxError> {
        let limits = self.limits;
        let handed_out = self.handed_out.load(Ordering::Acquire);
        let dropped = self
            .store
            .run(move |db| tables::expire(db, limits, now, handed_out))
            .await?;
        if dropped > 0 {
            self.space.notify_waiters();
        }
        Ok(dropped)
    }

    /// Levels and counters.
    pub async fn stats(&self) -> Result<OutboxStats, OutboxError> {
        Ok(self.store.run(tables::stats).await?)
    }
}

#[cfg(test)]
mod tests;
