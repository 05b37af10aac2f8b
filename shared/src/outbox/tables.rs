//! The outbox's redb tables and transactions. Synchronous: only the store thread runs these.
//!
//! - `outbox_records`: seq → `[format 1][kind][created ms, i64 LE][payload]`
//! - `outbox_gaps`: from → `[to u64 LE][count u64 LE][reason]`
//! - `outbox_state`: `"state"` → [`State`] as fixed little-endian u64s
//!
//! Every write transaction reads the state, changes records/gaps, and writes the state back,
//! so the counters always agree with the tables.

use ::redb::{
    Database, Durability, ReadableDatabase, ReadableTable, Table, TableDefinition, WriteTransaction,
};

use super::{
    DropReason, Gap, NewRecord, OutboxError, OutboxLimits, OverflowPolicy, Pending,
    RECORD_OVERHEAD, Record, RecordKind,
};
use crate::engine::Timestamp;
use crate::outbox::OutboxStats;
use crate::store::StoreError;

const RECORDS: TableDefinition<u64, &[u8]> = TableDefinition::new("outbox_records");
const GAPS: TableDefinition<u64, &[u8]> = TableDefinition::new("outbox_gaps");
const STATE: TableDefinition<&str, &[u8]> = TableDefinition::new("outbox_state");
#[cfg(test)]
pub(super) const RECORDS_FOR_TESTS: TableDefinition<u64, &[u8]> = RECORDS;
const STATE_KEY: &str = "state";
const FORMAT_V1: u8 = 1;
/// Bytes of a stored record before its payload.
const HEADER: usize = 1 + 1 + 8;

fn redb_error(context: &str, err: impl Into<::redb::Error>) -> StoreError {
    match err.into() {
        ::redb::Error::Corrupted(detail) => {
            StoreError::Corrupt(format!("outbox: {context}: {detail}"))
        }
        other => StoreError::Io(format!("outbox: {context}: {other}")),
    }
}

trait Context<T> {
    fn context(self, context: &str) -> Result<T, StoreError>;
}

impl<T, E: Into<::redb::Error>> Context<T> for Result<T, E> {
    fn context(self, context: &str) -> Result<T, StoreError> {
        self.map_err(|err| redb_error(context, err))
    }
}

/// The outbox's counters (what [`OutboxStats`] reports).
type State = OutboxStats;

fn encode_state(state: &State) -> Vec<u8> {
    [
        state.next_seq,
        state.acked,
        state.records,
        state.bytes,
        state.dropped_full,
        state.dropped_expired,
        state.dropped_corrupt,
        state.gaps,
    ]
    .iter()
    .flat_map(|n| n.to_le_bytes())
    .collect()
}

fn decode_state(bytes: &[u8]) -> Result<State, StoreError> {
    if bytes.len() != 64 {
        return Err(StoreError::Corrupt(format!(
            "outbox state has {} bytes, expected 64",
            bytes.len()
        )));
    }
    let n = |i: usize| {
        let mut word = [0u8; 8];
        word.copy_from_slice(&bytes[i * 8..i * 8 + 8]);
        u64::from_le_bytes(word)
    };
    Ok(State {
        next_seq: n(0),
        acked: n(1),
        records: n(2),
        bytes: n(3),
        dropped_full: n(4),
        dropped_expired: n(5),
        dropped_corrupt: n(6),
        gaps: n(7),
    })
}

fn encode_record(record: &NewRecord) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(HEADER + record.payload.len());
    bytes.push(FORMAT_V1);
    bytes.push(record.kind.code());
    bytes.extend_from_slice(&record.created.0.to_le_bytes());
    bytes.extend_from_slice(&record.payload);
    bytes
}

/// `None` when the stored bytes are not a record of a known format.
fn decode_record(seq: u64, bytes: &[u8]) -> Option<Record> {
    if bytes.len() < HEADER || bytes[0] != FORMAT_V1 {
        return None;
    }
    let kind = RecordKind::from_code(bytes[1])?;
    let mut created = [0u8; 8];
    created.copy_from_slice(&bytes[2..10]);
    Some(Record {
        seq,
        kind,
        created: Timestamp(i64::from_le_bytes(created)),
        payload: bytes[HEADER..].to_vec(),
    })
}

/// The bytes a stored value counts against the bound.
fn counted(stored_len: usize) -> u64 {
    (stored_len.saturating_sub(HEADER)) as u64 + RECORD_OVERHEAD
}

fn encode_gap(gap: &Gap) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(17);
    bytes.extend_from_slice(&gap.to.to_le_bytes());
    bytes.extend_from_slice(&gap.count.to_le_bytes());
    bytes.push(gap.reason.code());
    bytes
}

fn decode_gap(from: u64, bytes: &[u8]) -> Result<Gap, StoreError> {
    let corrupt = || StoreError::Corrupt(format!("outbox gap at {from} does not decode"));
    if bytes.len() != 17 {
        return Err(corrupt());
    }
    let mut to = [0u8; 8];
    to.copy_from_slice(&bytes[0..8]);
    let mut count = [0u8; 8];
    count.copy_from_slice(&bytes[8..16]);
    Ok(Gap {
        from,
        to: u64::from_le_bytes(to),
        count: u64::from_le_bytes(count),
        reason: DropReason::from_code(bytes[16]).ok_or_else(corrupt)?,
    })
}

fn begin(db: &Database) -> Result<WriteTransaction, StoreError> {
    let mut txn = db.begin_write().context("begin write")?;
    txn.set_durability(Durability::Immediate)
        .context("set durability")?;
    Ok(txn)
}

fn read_state(txn: &WriteTransaction) -> Result<State, StoreError> {
    let table = txn.open_table(STATE).context("open outbox_state")?;
    let value = table.get(STATE_KEY).context("read outbox state")?;
    match value {
        Some(value) => decode_state(value.value()),
        None => Ok(State {
            next_seq: 1,
            ..State::default()
        }),
    }
}

fn write_state(txn: &WriteTransaction, state: &State) -> Result<(), StoreError> {
    let mut table = txn.open_table(STATE).context("open outbox_state")?;
    table
        .insert(STATE_KEY, encode_state(state).as_slice())
        .context("write outbox state")?;
    Ok(())
}

/// Creates the tables and the initial state.
pub(super) fn init(db: &Database) -> Result<(), StoreError> {
    let txn = begin(db)?;
    txn.open_table(RECORDS).context("create outbox_records")?;
    txn.open_table(GAPS).context("create outbox_gaps")?;
    let state = read_state(&txn)?;
    write_state(&txn, &state)?;
    txn.commit().context("commit outbox tables")
}

/// Drops held records from the lowest seq while `more(state, record)` says so, recording the
/// drops as gaps (merged into the last gap when contiguous, of the same reason, and not yet
/// handed out: its `from` is above `handed_out`).
struct Dropper<'t> {
    records: Table<'t, u64, &'static [u8]>,
    gaps: Table<'t, u64, &'static [u8]>,
    handed_out: u64,
}

impl Dropper<'_> {
    fn drop_front(
        &mut self,
        state: &mut State,
        reason: DropReason,
        mut more: impl FnMut(&State, Option<&Record>) -> bool,
    ) -> Result<u64, StoreError> {
        let mut dropped = 0;
        loop {
            let first = {
                let first = self.records.first().context("read first record")?;
                first.map(|(seq, value)| {
                    let seq = seq.value();
                    (seq, value.value().len(), decode_record(seq, value.value()))
                })
            };
            let Some((seq, stored_len, record)) = first else {
                break;
            };
            // A record that does not decode is dropped as corrupt whatever the reason asked.
            let reason = if record.is_none() {
                DropReason::Corrupt
            } else {
                reason
            };
            if record.is_some() && !more(state, record.as_ref()) {
                break;
            }
            self.records.remove(seq).context("drop record")?;
            state.records = state.records.saturating_sub(1);
            state.bytes = state.bytes.saturating_sub(counted(stored_len));
            match reason {
                DropReason::Full => state.dropped_full += 1,
                DropReason::Expired => state.dropped_expired += 1,
                DropReason::Corrupt => state.dropped_corrupt += 1,
            }
            self.add_to_gap(state, seq, reason)?;
            dropped += 1;
        }
        Ok(dropped)
    }

    fn add_to_gap(
        &mut self,
        state: &mut State,
        seq: u64,
        reason: DropReason,
    ) -> Result<(), StoreError> {
        let last = match self.gaps.last().context("read last gap")? {
            Some((from, value)) => Some(decode_gap(from.value(), value.value())?),
            None => None,
        };
        if let Some(mut gap) = last
            && gap.to + 1 == seq
            && gap.reason == reason
            && gap.from > self.handed_out
        {
            gap.to = seq;
            gap.count += 1;
            self.gaps
                .insert(gap.from, encode_gap(&gap).as_slice())
                .context("extend gap")?;
            return Ok(());
        }
        let gap = Gap {
            from: seq,
            to: seq,
            count: 1,
            reason,
        };
        self.gaps
            .insert(seq, encode_gap(&gap).as_slice())
            .context("add gap")?;
        state.gaps += 1;
        Ok(())
    }
}

fn max_age_ms(limits: OutboxLimits) -> i64 {
    i64::try_from(limits.max_age.as_millis()).unwrap_or(i64::MAX)
}

/// Result of an append: `Ok((first, last), freed)`, or the policy's refusal.
pub(super) type AppendOutcome = Result<((u64, u64), bool), OutboxError>;

/// An append as the journal's write-ahead log stores it: the records with every input that
/// decides the outcome, so replaying it on the same state repeats it exactly.
/// `[max_bytes u64][max_age ms i64][policy][now i64][handed_out u64][count u32]` then per
/// record `[len u32][stored record]` (little endian).
pub(super) fn encode_append(
    new: &[NewRecord],
    limits: OutboxLimits,
    now: Timestamp,
    handed_out: u64,
) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(
        37 + new
            .iter()
            .map(|r| 4 + HEADER + r.payload.len())
            .sum::<usize>(),
    );
    bytes.extend_from_slice(&limits.max_bytes.to_le_bytes());
    bytes.extend_from_slice(&max_age_ms(limits).to_le_bytes());
    bytes.push(match limits.policy {
        OverflowPolicy::DropOldest => 0,
        OverflowPolicy::BlockTriggers => 1,
    });
    bytes.extend_from_slice(&now.0.to_le_bytes());
    bytes.extend_from_slice(&handed_out.to_le_bytes());
    bytes.extend_from_slice(&(new.len() as u32).to_le_bytes());
    for record in new {
        let stored = encode_record(record);
        bytes.extend_from_slice(&(stored.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&stored);
    }
    bytes
}

/// Replays an append the log holds ([`encode_append`]) in `txn`.
pub(super) fn replay_append(txn: &WriteTransaction, bytes: &[u8]) -> Result<(), StoreError> {
    let corrupt = || StoreError::Corrupt("outbox append in the write-ahead log".into());
    let mut rest = bytes;
    let mut take = |n: usize| -> Result<&[u8], StoreError> {
        if rest.len() < n {
            return Err(corrupt());
        }
        let (taken, after) = rest.split_at(n);
        rest = after;
        Ok(taken)
    };
    let u64_at = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap_or([0; 8]));
    let max_bytes = u64_at(take(8)?);
    let max_age = u64_at(take(8)?);
    let policy = match take(1)?[0] {
        0 => OverflowPolicy::DropOldest,
        1 => OverflowPolicy::BlockTriggers,
        _ => return Err(corrupt()),
    };
    let now = Timestamp(u64_at(take(8)?) as i64);
    let handed_out = u64_at(take(8)?);
    let count = u32::from_le_bytes(take(4)?.try_into().unwrap_or([0; 4]));
    let mut new = Vec::with_capacity((count as usize).min(1024));
    for _ in 0..count {
        let len = u32::from_le_bytes(take(4)?.try_into().unwrap_or([0; 4])) as usize;
        let record = decode_record(0, take(len)?).ok_or_else(corrupt)?;
        new.push(NewRecord {
            kind: record.kind,
            created: record.created,
            payload: record.payload,
        });
    }
    let limits = OutboxLimits {
        max_bytes,
        max_age: std::time::Duration::from_millis(max_age),
        policy,
    };
    append_in(txn, &new, limits, now, handed_out).map(|_| ())
}

/// Appends in the caller's transaction (the store thread's, which commits it and makes it
/// durable through the journal's write-ahead log).
pub(super) fn append_in(
    txn: &WriteTransaction,
    new: &[NewRecord],
    limits: OutboxLimits,
    now: Timestamp,
    handed_out: u64,
) -> Result<AppendOutcome, StoreError> {
    let mut state = read_state(txn)?;
    let needed: u64 = new
        .iter()
        .map(|r| r.payload.len() as u64 + RECORD_OVERHEAD)
        .sum();
    let first = state.next_seq;
    let freed;
    {
        let mut dropper = Dropper {
            records: txn.open_table(RECORDS).context("open outbox_records")?,
            gaps: txn.open_table(GAPS).context("open outbox_gaps")?,
            handed_out,
        };
        let oldest_kept = now.0.saturating_sub(max_age_ms(limits));
        let expired = dropper.drop_front(&mut state, DropReason::Expired, |_, record| {
            record.is_some_and(|r| r.created.0 < oldest_kept)
        })?;
        let mut full = 0;
        if state.bytes + needed > limits.max_bytes {
            match limits.policy {
                OverflowPolicy::BlockTriggers => {
                    let refusal = OutboxError::Full {
                        held: state.bytes,
                        needed,
                        max: limits.max_bytes,
                    };
                    drop(dropper);
                    if expired > 0 {
                        // Keep the expiry (it is due whatever happens to this append).
                        write_state(txn, &state)?;
                    }
                    return Ok(Err(refusal));
                }
                OverflowPolicy::DropOldest => {
                    full = dropper.drop_front(&mut state, DropReason::Full, |state, _| {
                        state.bytes + needed > limits.max_bytes
                    })?;
                }
            }
        }
        freed = expired + full > 0;
        for (i, record) in new.iter().enumerate() {
            let value = encode_record(record);
            dropper
                .records
                .insert(first + i as u64, value.as_slice())
                .context("append record")?;
        }
    }
    state.next_seq = first + new.len() as u64;
    state.records += new.len() as u64;
    state.bytes += needed;
    write_state(txn, &state)?;
    Ok(Ok(((first, state.next_seq - 1), freed)))
}

/// Reads pending items above `after`; returns them and whether corrupt records were found
/// and dropped (the caller reads again to get their gap).
pub(super) fn pending(
    db: &Database,
    after: u64,
    max_items: usize,
    max_bytes: usize,
    handed_out: u64,
) -> Result<(Vec<Pending>, bool), StoreError> {
    let txn = db.begin_read().context("begin read")?;
    let records = txn.open_table(RECORDS).context("open outbox_records")?;
    let gaps = txn.open_table(GAPS).context("open outbox_gaps")?;
    let mut gap_iter = gaps
        .range(after.saturating_add(1)..)
        .context("read gaps")?
        .peekable();
    let mut items = Vec::new();
    let mut bytes = 0usize;
    let mut corrupt = false;
    let mut next_gap = |upto: u64, items: &mut Vec<Pending>| -> Result<(), StoreError> {
        while let Some(entry) = gap_iter.peek() {
            if let Ok((from, _)) = entry
                && from.value() > upto
            {
                break;
            }
            let (from, value) = gap_iter
                .next()
                .transpose()
                .context("read gap")?
                .ok_or_else(|| StoreError::Io("outbox: gap vanished".into()))?;
            items.push(Pending::Gap(decode_gap(from.value(), value.value())?));
        }
        Ok(())
    };
    for entry in records
        .range(after.saturating_add(1)..)
        .context("read records")?
    {
        if items.len() >= max_items || (bytes >= max_bytes && !items.is_empty()) {
            break;
        }
        let (seq, value) = entry.context("read record")?;
        let seq = seq.value();
        next_gap(seq, &mut items)?;
        match decode_record(seq, value.value()) {
            Some(record) => {
                bytes += record.payload.len();
                items.push(Pending::Record(record));
            }
            None => {
                corrupt = true;
                break;
            }
        }
    }
    if !corrupt && items.len() < max_items {
        next_gap(u64::MAX, &mut items)?;
    }
    items.truncate(max_items);
    drop(records);
    drop(gaps);
    drop(txn);
    if corrupt {
        // Drop the corrupt records at the front of what remains (everything before them in
        // the table is either before `after`, i.e. handed out, or was just read fine).
        let txn = begin(db)?;
        let mut state = read_state(&txn)?;
        {
            let mut dropper = Dropper {
                records: txn.open_table(RECORDS).context("open outbox_records")?,
                gaps: txn.open_table(GAPS).context("open outbox_gaps")?,
                handed_out,
            };
            drop_corrupt_after(&mut dropper, &mut state, after)?;
        }
        write_state(&txn, &state)?;
        txn.commit().context("commit corrupt drop")?;
    }
    Ok((items, corrupt))
}

/// Removes every record above `after` that does not decode (each becomes a corrupt gap).
fn drop_corrupt_after(
    dropper: &mut Dropper<'_>,
    state: &mut State,
    after: u64,
) -> Result<(), StoreError> {
    let mut bad = Vec::new();
    for entry in dropper
        .records
        .range(after.saturating_add(1)..)
        .context("scan records")?
    {
        let (seq, value) = entry.context("scan record")?;
        if decode_record(seq.value(), value.value()).is_none() {
            bad.push((seq.value(), value.value().len()));
        }
    }
    for (seq, stored_len) in bad {
        dropper.records.remove(seq).context("drop corrupt record")?;
        state.records = state.records.saturating_sub(1);
        state.bytes = state.bytes.saturating_sub(counted(stored_len));
        state.dropped_corrupt += 1;
        dropper.add_to_gap(state, seq, DropReason::Corrupt)?;
    }
    Ok(())
}

pub(super) fn ack(db: &Database, highest: u64) -> Result<bool, StoreError> {
    let txn = begin(db)?;
    let mut state = read_state(&txn)?;
    if highest <= state.acked || highest >= state.next_seq {
        return Ok(false);
    }
    {
        let mut records = txn.open_table(RECORDS).context("open outbox_records")?;
        let mut removed = 0u64;
        let mut bytes = 0u64;
        records
            .retain_in(..=highest, |_, value| {
                removed += 1;
                bytes += counted(value.len());
                false
            })
            .context("remove acked records")?;
        state.records = state.records.saturating_sub(removed);
        state.bytes = state.bytes.saturating_sub(bytes);
        let mut gaps = txn.open_table(GAPS).context("open outbox_gaps")?;
        let mut covered = Vec::new();
        for entry in gaps.range(..=highest).context("scan gaps")? {
            let (from, value) = entry.context("scan gap")?;
            let gap = decode_gap(from.value(), value.value())?;
            if gap.to <= highest {
                covered.push(gap.from);
            }
        }
        for from in &covered {
            gaps.remove(*from).context("remove acked gap")?;
        }
        state.gaps = state.gaps.saturating_sub(covered.len() as u64);
    }
    state.acked = highest;
    write_state(&txn, &state)?;
    txn.commit().context("commit outbox ack")?;
    Ok(true)
}

pub(super) fn expire(
    db: &Database,
    limits: OutboxLimits,
    now: Timestamp,
    handed_out: u64,
) -> Result<u64, StoreError> {
    let txn = begin(db)?;
    let mut state = read_state(&txn)?;
    let oldest_kept = now.0.saturating_sub(max_age_ms(limits));
    let dropped = {
        let mut dropper = Dropper {
            records: txn.open_table(RECORDS).context("open outbox_records")?,
            gaps: txn.open_table(GAPS).context("open outbox_gaps")?,
            handed_out,
        };
        dropper.drop_front(&mut state, DropReason::Expired, |_, record| {
            record.is_some_and(|r| r.created.0 < oldest_kept)
        })?
    };
    if dropped == 0 {
        return Ok(0);
    }
    write_state(&txn, &state)?;
    txn.commit().context("commit outbox expiry")?;
    Ok(dropped)
}

pub(super) fn stats(db: &Database) -> Result<State, StoreError> {
    let txn = db.begin_read().context("begin read")?;
    let table = txn.open_table(STATE).context("open outbox_state")?;
    let value = table.get(STATE_KEY).context("read outbox state")?;
    match value {
        Some(value) => decode_state(value.value()),
        None => Ok(State {
            next_seq: 1,
            ..State::default()
        }),
    }
}
