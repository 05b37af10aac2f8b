//! The redb layout of the journal and the transactions over it. Synchronous: only the store
//! thread calls these.
//!
//! Tables (ids are the 16 big-endian bytes of the ULID, so key order is time order):
//! - `executions`: id → record, with the head of its journal inline (see `row.rs`)
//! - `journal`: (id, seq) → fact; seqs of one id are contiguous, from the end of the facts
//!   inline in its record row (from 0 for rows of older formats)
//! - `unfinished`: id → () for every running or queued execution
//! - `finished`: (finished time ms, id) → () for every finished execution: retention order
//! - `by_workflow`: (workflow, id) → () for every execution
//! - `meta`: key → bytes (stored raw, not versioned: callers own their format)
//! - `wal`: 0 → the log sequence number of the last group committed (see `wal.rs`)
//!
//! Invariant: the three index tables always agree with `executions`; every write that
//! changes a record changes its index entries in the same transaction.
//!
//! Values of `executions` and `journal` are one format byte followed by the value: 3
//! ([`FORMAT_INLINE`], `executions` only: facts, then a format-2 record), 2
//! ([`codec::FORMAT_V2`], compact binary, what is written now) or 1 ([`FORMAT_V1`], JSON, what
//! journals written before hold). All are read, row by row, so an existing journal needs no
//! migration: old rows stay JSON until their execution is pruned, and a record updated after
//! the upgrade is rewritten in the new format. Once the fsync was shared by a group, encoding
//! and the bytes written per commit became a visible share of the store's time; see
//! `codec.rs` for the layout.

use ::redb::{
    Database, Durability, ReadableTable, ReadableTableMetadata, TableDefinition, WriteTransaction,
};
use serde::de::DeserializeOwned;

use super::codec;
use super::row::{self, FORMAT_INLINE};
use super::wal;
use crate::engine::{ExecutionId, ExecutionRecord, ExecutionStatus, Fact, Timestamp};
use crate::store::batch::{beyond_retention, finished_time, validate};
use crate::store::{Retention, StoreError, StoreWrite};

pub(super) type IdBytes = [u8; 16];

pub(super) const EXECUTIONS: TableDefinition<&IdBytes, &[u8]> = TableDefinition::new("executions");
pub(super) const JOURNAL: TableDefinition<(&IdBytes, u32), &[u8]> = TableDefinition::new("journal");
pub(super) const UNFINISHED: TableDefinition<&IdBytes, ()> = TableDefinition::new("unfinished");
const FINISHED: TableDefinition<(i64, &IdBytes), ()> = TableDefinition::new("finished");
pub(super) const BY_WORKFLOW: TableDefinition<(&str, &IdBytes), ()> =
    TableDefinition::new("by_workflow");
pub(super) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const WAL: TableDefinition<u8, u64> = TableDefinition::new("wal");

/// The format byte of records and facts written as JSON (before [`codec::FORMAT_V2`]); still
/// read.
pub(super) const FORMAT_V1: u8 = 1;

/// Executions removed per prune transaction of its own, so one prune never holds a giant
/// transaction.
pub(super) const PRUNE_CHUNK: usize = 256;

/// Facts a record row holds inline at most when facts are folded into it by an `Update`
/// (a `Create` inlines what its batch holds): beyond, they take journal rows, so a long
/// execution's updates do not copy an ever longer row.
pub(super) const INLINE_FACTS: u32 = 64;

pub(super) fn key(id: ExecutionId) -> IdBytes {
    id.0.to_bytes()
}

/// Maps a redb error into a [`StoreError`], naming what was being done.
pub(super) fn redb_error(context: &str, err: impl Into<::redb::Error>) -> StoreError {
    match err.into() {
        ::redb::Error::Corrupted(detail) => StoreError::Corrupt(format!("{context}: {detail}")),
        other => StoreError::Io(format!("{context}: {other}")),
    }
}

pub(super) trait Context<T> {
    fn context(self, context: &str) -> Result<T, StoreError>;
}

impl<T, E: Into<::redb::Error>> Context<T> for Result<T, E> {
    fn context(self, context: &str) -> Result<T, StoreError> {
        self.map_err(|err| redb_error(context, err))
    }
}

fn encode_record(record: &ExecutionRecord) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(256);
    bytes.push(codec::FORMAT_V2);
    codec::record(&mut bytes, record);
    bytes
}

fn encode_fact(fact: &Fact) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(256);
    bytes.push(codec::FORMAT_V2);
    codec::fact(&mut bytes, fact);
    bytes
}

/// Decodes a stored value of either format; anything that does not decode is `Corrupt`,
/// never a panic.
fn decode<T: DeserializeOwned>(
    bytes: &[u8],
    binary: impl FnOnce(&[u8]) -> Result<T, codec::Malformed>,
    what: &dyn Fn() -> String,
) -> Result<T, StoreError> {
    match bytes.split_first() {
        Some((&codec::FORMAT_V2, rest)) => binary(rest)
            .map_err(|codec::Malformed(why)| StoreError::Corrupt(format!("{}: {why}", what()))),
        Some((&FORMAT_V1, json)) => serde_json::from_slice(json)
            .map_err(|err| StoreError::Corrupt(format!("{}: {err}", what()))),
        Some((version, _)) => Err(StoreError::Corrupt(format!(
            "{}: unknown format version {version}",
            what()
        ))),
        None => Err(StoreError::Corrupt(format!("{}: empty value", what()))),
    }
}

/// Decodes a record row of any format; an inline row's facts are skipped, not decoded.
fn decode_row<T: DeserializeOwned>(
    bytes: &[u8],
    binary: impl FnOnce(&[u8]) -> Result<T, codec::Malformed>,
    id: ExecutionId,
) -> Result<T, StoreError> {
    let what = || format!("record of execution {id}");
    match bytes.split_first() {
        Some((&FORMAT_INLINE, rest)) => row::split(rest)
            .and_then(|inline| binary(inline.record))
            .map_err(|codec::Malformed(why)| StoreError::Corrupt(format!("{}: {why}", what()))),
        _ => decode(bytes, binary, &what),
    }
}

pub(super) fn decode_record(bytes: &[u8], id: ExecutionId) -> Result<ExecutionRecord, StoreError> {
    decode_row(bytes, codec::read_record, id)
}

/// The inline facts of a record row ([`row`]); none for rows of the older formats.
pub(super) fn inline_facts(bytes: &[u8], id: ExecutionId) -> Result<Vec<Fact>, StoreError> {
    match bytes.split_first() {
        Some((&FORMAT_INLINE, rest)) => row::split(rest)
            .and_then(|inline| row::facts(&inline))
            .map_err(|codec::Malformed(why)| {
                StoreError::Corrupt(format!("journal of execution {id}: {why}"))
            }),
        _ => Ok(Vec::new()),
    }
}

pub(super) fn decode_fact(bytes: &[u8], id: ExecutionId, seq: u32) -> Result<Fact, StoreError> {
    decode(bytes, codec::read_fact, &|| {
        format!("fact {seq} of execution {id}")
    })
}

/// Creates every table, so read transactions never meet a missing one. Returns the LSN of
/// the last group in the durable state; `None` for a journal that never had a write-ahead
/// log (new, or written by an older version), whose LSN is now 0.
pub(super) fn init(db: &Database) -> Result<Option<u64>, StoreError> {
    let txn = begin(db, true)?;
    let lsn = {
        let mut wal = txn.open_table(WAL).context("create wal")?;
        let lsn = wal.get(0).context("read wal")?.map(|v| v.value());
        if lsn.is_none() {
            wal.insert(0, 0).context("start wal")?;
        }
        lsn
    };
    txn.open_table(EXECUTIONS).context("create executions")?;
    txn.open_table(JOURNAL).context("create journal")?;
    txn.open_table(UNFINISHED).context("create unfinished")?;
    txn.open_table(FINISHED).context("create finished")?;
    txn.open_table(BY_WORKFLOW).context("create by_workflow")?;
    txn.open_table(META).context("create meta")?;
    txn.commit().context("commit table creation")?;
    Ok(lsn)
}

fn begin(db: &Database, durable: bool) -> Result<WriteTransaction, StoreError> {
    let mut txn = db.begin_write().context("begin write")?;
    let durability = if durable {
        Durability::Immediate
    } else {
        Durability::None
    };
    txn.set_durability(durability).context("set durability")?;
    Ok(txn)
}

/// How a group commit ends.
#[derive(Clone, Copy, Debug)]
pub(super) struct Commit {
    /// The group's log sequence number, stored with it.
    pub lsn: u64,
    /// Durable (a checkpoint), or left to the write-ahead log.
    pub durable: bool,
}

/// Begins the write transaction of group `commit.lsn` and records its LSN in it.
pub(super) fn begin_group(db: &Database, commit: Commit) -> Result<WriteTransaction, StoreError> {
    let txn = begin(db, commit.durable)?;
    txn.open_table(WAL)
        .context("open wal")?
        .insert(0, commit.lsn)
        .context("record lsn")?;
    Ok(txn)
}

/// A durable commit that only records `lsn`: the checkpoint at close.
pub(super) fn checkpoint(db: &Database, lsn: u64) -> Result<(), StoreError> {
    let txn = begin(db, true)?;
    txn.open_table(WAL)
        .context("open wal")?
        .insert(0, lsn)
        .context("record lsn")?;
    txn.commit().context("commit checkpoint")
}

/// Applies each batch in one write transaction and commits it as `commit` says, with its LSN.
///
/// `Ok` holds one outcome per batch: a batch refused by validation gets its error and leaves
/// no trace, the others are committed. `Err` means the transaction did not commit (or its
/// outcome is unknown); every batch gets that error.
///
/// With `prune`, the same transaction also removes up to `slice.max` executions beyond the
/// retention (see [`prune_slice`]): pruning rides on the group's commit instead of paying
/// commits of its own. The second value is how many it removed.
pub(super) fn commit_group(
    db: &Database,
    batches: &[Encoded],
    prune: Option<PruneSlice>,
    commit: Commit,
) -> Result<(Vec<Result<(), StoreError>>, usize), StoreError> {
    let txn = begin_group(db, commit)?;
    let mut outcomes = Vec::with_capacity(batches.len());
    let pruned;
    {
        let mut tables = Tables::open(&txn)?;
        for batch in batches {
            // Executions whose whole journal validation found inline in the record row.
            let mut inline_only = Vec::new();
            let checked = validate(
                &batch.writes,
                |id| {
                    let end = tables.journal_end(id)?;
                    if let Some((_, JournalEnd::Inline)) = end {
                        inline_only.push(id);
                    }
                    Ok(end.map(|(next, _)| next))
                },
                |id| tables.exists(id),
            );
            match checked {
                Ok(()) => {
                    tables.apply_batch(batch, inline_only)?;
                    outcomes.push(Ok(()));
                }
                Err(err) => outcomes.push(Err(err)),
            }
        }
        pruned = match prune {
            Some(slice) => tables.prune_slice(slice)?,
            None => 0,
        };
    }
    txn.commit().context("commit")?;
    Ok((outcomes, pruned))
}

/// A batch with its stored bytes, encoded by the writer before it reaches the store thread:
/// the one thread that owns the database only validates and inserts, while encoding runs in
/// parallel on the writers' threads.
pub(super) struct Encoded {
    writes: Vec<StoreWrite>,
    payloads: Vec<Payload>,
    /// The batch as the write-ahead log stores it: [`wal::JOURNAL_BATCH`], then
    /// [`wal::encode_batch`]'s bytes.
    logged: Vec<u8>,
}

/// The stored value(s) of one write.
enum Payload {
    /// The record row, with the start fact and the `Append`s that follow it inline.
    Create(Vec<u8>),
    /// A fact; with `fold`, the write right after this run of `Append`s is an `Update` of the
    /// same execution, which may take the fact into its record row instead (see
    /// [`Tables::apply_batch`]).
    Append {
        bytes: Vec<u8>,
        fold: bool,
    },
    /// An `Append` whose fact is inline in its `Create`'s record row: nothing to apply.
    Inlined,
    Update(Vec<u8>),
    Meta,
}

impl Encoded {
    /// Encodes each write. A `Create` becomes one inline record row ([`row`]) holding its
    /// start fact and the `Append`s of the same execution that follow it in order (meta
    /// writes in between are fine); anything else ends the run. The `Append`s right before
    /// an `Update` of their execution are marked to fold into its row.
    pub(super) fn new(writes: Vec<StoreWrite>) -> Encoded {
        let mut payloads = Vec::with_capacity(writes.len());
        // `Append`s before this index (and after an inlining `Create`) went inline.
        let mut inlined_before = 0;
        for (index, write) in writes.iter().enumerate() {
            let payload = match write {
                StoreWrite::Append { .. } if index < inlined_before => Payload::Inlined,
                StoreWrite::Create { record, started } => {
                    let mut facts = vec![started];
                    for (later, next) in writes.iter().enumerate().skip(index + 1) {
                        match next {
                            StoreWrite::PutMeta { .. } => {}
                            StoreWrite::Append { id, seq, fact }
                                if *id == record.id
                                    && usize::try_from(*seq).ok() == Some(facts.len()) =>
                            {
                                facts.push(fact);
                                inlined_before = later + 1;
                            }
                            _ => break,
                        }
                    }
                    Payload::Create(row::inline(record, &facts))
                }
                StoreWrite::Append { fact, .. } => Payload::Append {
                    bytes: encode_fact(fact),
                    fold: false,
                },
                StoreWrite::Update(record) => Payload::Update(encode_record(record)),
                StoreWrite::PutMeta { .. } => Payload::Meta,
            };
            payloads.push(payload);
        }
        mark_folds(&writes, &mut payloads);
        let mut logged = Vec::with_capacity(512);
        logged.push(wal::JOURNAL_BATCH);
        wal::encode_batch(&writes, &mut logged);
        Encoded {
            writes,
            payloads,
            logged,
        }
    }

    /// The batch as the write-ahead log stores it.
    pub(super) fn logged(&self) -> &[u8] {
        &self.logged
    }

    /// The writes, as they were given (the encoded bytes are dropped).
    pub(super) fn into_writes(self) -> Vec<StoreWrite> {
        self.writes
    }
}

/// Marks the `Append`s that fold into an `Update`: the run of `Append`s of one execution
/// right before an `Update` of it. One pass from the end.
fn mark_folds(writes: &[StoreWrite], payloads: &mut [Payload]) {
    let mut updating = None;
    for (write, payload) in writes.iter().zip(payloads.iter_mut()).rev() {
        updating = match (write, payload) {
            (StoreWrite::Update(record), _) => Some(record.id),
            (StoreWrite::Append { id, .. }, Payload::Append { fold, .. })
                if updating == Some(*id) =>
            {
                *fold = true;
                updating
            }
            _ => None,
        };
    }
}

/// One bounded step of pruning: remove at most `max` finished executions beyond `retention`
/// at `now`.
#[derive(Clone, Copy, Debug)]
pub(super) struct PruneSlice {
    pub retention: Retention,
    pub now: Timestamp,
    pub max: usize,
}

/// What the indexes need of a stored record. Decoding only these fields (the rest of the
/// value is skipped, not built) keeps `Update` and pruning from materialising outputs and
/// step records they never look at.
#[derive(serde::Deserialize)]
struct Indexed {
    workflow: String,
    status: ExecutionStatus,
    created_at: Timestamp,
    #[serde(default)]
    finished_at: Option<Timestamp>,
}

impl Indexed {
    fn finished_time(&self) -> Timestamp {
        self.finished_at.unwrap_or(self.created_at)
    }
}

/// The tables of one write transaction.
struct Tables<'txn> {
    executions: ::redb::Table<'txn, &'static IdBytes, &'static [u8]>,
    journal: ::redb::Table<'txn, (&'static IdBytes, u32), &'static [u8]>,
    unfinished: ::redb::Table<'txn, &'static IdBytes, ()>,
    finished: ::redb::Table<'txn, (i64, &'static IdBytes), ()>,
    by_workflow: ::redb::Table<'txn, (&'static str, &'static IdBytes), ()>,
    meta: ::redb::Table<'txn, &'static str, &'static [u8]>,
}

impl<'txn> Tables<'txn> {
    fn open(txn: &'txn WriteTransaction) -> Result<Tables<'txn>, StoreError> {
        Ok(Tables {
            executions: txn.open_table(EXECUTIONS).context("open executions")?,
            journal: txn.open_table(JOURNAL).context("open journal")?,
            unfinished: txn.open_table(UNFINISHED).context("open unfinished")?,
            finished: txn.open_table(FINISHED).context("open finished")?,
            by_workflow: txn.open_table(BY_WORKFLOW).context("open by_workflow")?,
            meta: txn.open_table(META).context("open meta")?,
        })
    }

    /// The next seq of a stored execution's journal and where its journal ends; `None`
    /// when it does not exist.
    fn journal_end(&self, id: ExecutionId) -> Result<Option<(u32, JournalEnd)>, StoreError> {
        journal_end(&self.journal, &self.executions, id)
    }

    /// Applies a validated batch. `inline_only` names the executions whose journal
    /// validation found wholly inline in their record rows.
    ///
    /// An `Update` rewrites its execution's record row anyway, so the facts appended just
    /// before it join the row's inline facts instead of taking journal rows of their own —
    /// when the journal is still wholly inline (the inline facts must stay a prefix of the
    /// journal) and short of [`INLINE_FACTS`]. A typical execution with a side effect is
    /// then two row writes (create, finish) and no journal rows at all.
    fn apply_batch(
        &mut self,
        batch: &Encoded,
        mut inline_only: Vec<ExecutionId>,
    ) -> Result<(), StoreError> {
        let mut folded: Vec<(u32, &[u8])> = Vec::new();
        for (write, payload) in batch.writes.iter().zip(&batch.payloads) {
            match (write, payload) {
                (StoreWrite::Create { record, .. }, Payload::Create(bytes)) => {
                    self.put_record(record, bytes, None)?;
                }
                (StoreWrite::Append { id, seq, .. }, Payload::Append { bytes, fold }) => {
                    if *fold && *seq < INLINE_FACTS && inline_only.contains(id) {
                        // Inline facts are stored without the format byte of a fact row.
                        folded.push((*seq, &bytes[1..]));
                        continue;
                    }
                    // Once a fact of `id` is in the journal table, later ones must follow it.
                    inline_only.retain(|other| other != id);
                    self.journal
                        .insert((&key(*id), *seq), bytes.as_slice())
                        .context("insert fact")?;
                }
                (StoreWrite::Append { .. }, Payload::Inlined) => {}
                (StoreWrite::Update(record), Payload::Update(bytes)) => {
                    self.update(record, bytes, &folded)?;
                    folded.clear();
                }
                (StoreWrite::PutMeta { key, value }, Payload::Meta) => match value {
                    Some(value) => {
                        self.meta
                            .insert(key.as_str(), value.as_slice())
                            .context("put meta")?;
                    }
                    None => {
                        self.meta.remove(key.as_str()).context("delete meta")?;
                    }
                },
                _ => {
                    return Err(StoreError::InvalidWrite(
                        "a write and its encoded value do not match".into(),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Whether execution `id` is stored: one point lookup of its record (its record and its
    /// first fact are always written and deleted together), cheaper than a journal range.
    fn exists(&self, id: ExecutionId) -> Result<bool, StoreError> {
        Ok(self
            .executions
            .get(&key(id))
            .context("read record")?
            .is_some())
    }

    /// Replaces the record of an `Update`, keeping the row's inline facts and adding
    /// `folded` (the facts appended right before it, `(seq, bytes)`) to them.
    fn update(
        &mut self,
        record: &ExecutionRecord,
        bytes: &[u8],
        folded: &[(u32, &[u8])],
    ) -> Result<(), StoreError> {
        let corrupt =
            |why: &str| StoreError::Corrupt(format!("record of execution {}: {why}", record.id));
        let (old, row) = match self
            .executions
            .get(&key(record.id))
            .context("read record")?
        {
            None => (None, None),
            Some(value) => {
                let value = value.value();
                let row = match value.split_first() {
                    Some((&FORMAT_INLINE, rest)) => {
                        let inline =
                            row::split(rest).map_err(|codec::Malformed(why)| corrupt(why))?;
                        let first = u32::try_from(inline.facts.len()).ok();
                        if let Some((seq, _)) = folded.first()
                            && first != Some(*seq)
                        {
                            return Err(corrupt("folded facts do not follow the inline ones"));
                        }
                        // `bytes` is a format-2 record: its format byte gives way to the row's.
                        Some(row::rewrite(
                            rest,
                            &inline,
                            folded.iter().map(|(_, f)| *f),
                            &bytes[1..],
                        ))
                    }
                    _ => None,
                };
                (Some(indexed(value, record.id)?), row)
            }
        };
        match row {
            Some(row) => self.put_record(record, &row, old.as_ref()),
            None if folded.is_empty() => self.put_record(record, bytes, old.as_ref()),
            None => Err(corrupt("facts to fold into a row without inline facts")),
        }
    }

    /// Stores `record` and moves its index entries from `old`'s (only those that change: a
    /// finishing execution keeps its `by_workflow` entry).
    fn put_record(
        &mut self,
        record: &ExecutionRecord,
        bytes: &[u8],
        old: Option<&Indexed>,
    ) -> Result<(), StoreError> {
        let k = key(record.id);
        let finished = record.status.is_finished().then(|| finished_time(record).0);
        let (same_workflow, same_status) = match old {
            Some(old) => {
                let old_finished = old.status.is_finished().then(|| old.finished_time().0);
                (old.workflow == record.workflow, old_finished == finished)
            }
            None => (false, false),
        };
        if let Some(old) = old {
            if !same_workflow {
                self.by_workflow
                    .remove((old.workflow.as_str(), &k))
                    .context("unindex workflow")?;
            }
            if !same_status {
                self.unindex_status(&k, old)?;
            }
        }
        self.executions.insert(&k, bytes).context("insert record")?;
        if !same_workflow {
            self.by_workflow
                .insert((record.workflow.as_str(), &k), ())
                .context("index workflow")?;
        }
        if !same_status {
            match finished {
                Some(time) => {
                    self.finished
                        .insert((time, &k), ())
                        .context("index finished")?;
                }
                None => {
                    self.unfinished.insert(&k, ()).context("index unfinished")?;
                }
            }
        }
        Ok(())
    }

    /// Removes `record`'s entry of `finished` or `unfinished`.
    fn unindex_status(&mut self, k: &IdBytes, record: &Indexed) -> Result<(), StoreError> {
        if record.status.is_finished() {
            self.finished
                .remove((record.finished_time().0, k))
                .context("unindex finished")?;
        } else {
            self.unfinished.remove(k).context("unindex unfinished")?;
        }
        Ok(())
    }

    /// Removes up to `slice.max` finished executions beyond the retention, oldest first;
    /// returns how many.
    fn prune_slice(&mut self, slice: PruneSlice) -> Result<usize, StoreError> {
        let total =
            usize::try_from(self.finished.len().context("count finished")?).unwrap_or(usize::MAX);
        // The prunable executions are a prefix of the (finished time, id) order.
        let mut victims = Vec::new();
        for (index, entry) in self.finished.iter().context("scan finished")?.enumerate() {
            let (entry, _) = entry.context("scan finished")?;
            let (time, id) = entry.value();
            if victims.len() == slice.max
                || !beyond_retention(slice.retention, index, total, Timestamp(time), slice.now)
            {
                break;
            }
            victims.push((time, *id));
        }
        let Some(&(last_time, last)) = victims.last() else {
            return Ok(0);
        };
        // Their `finished` entries go in one range removal, the rest per execution.
        self.finished
            .retain_in(..=(last_time, &last), |_, _| false)
            .context("unindex finished")?;
        for (_, k) in &victims {
            let id = id_of(k);
            let workflow = match self.executions.remove(k).context("delete record")? {
                Some(value) => Some(indexed(value.value(), id)?.workflow),
                None => None,
            };
            if let Some(workflow) = workflow {
                self.by_workflow
                    .remove((workflow.as_str(), k))
                    .context("unindex workflow")?;
            }
            self.journal
                .retain_in((k, 0)..=(k, u32::MAX), |_, _| false)
                .context("delete journal")?;
        }
        Ok(victims.len())
    }
}

/// Where an execution's journal ends.
#[derive(Clone, Copy, Debug, PartialEq)]
enum JournalEnd {
    /// In its record row: it has no rows in the `journal` table.
    Inline,
    /// In the `journal` table.
    Table,
}

/// The next seq of `id`'s journal: after its last row in `journal`, or after the facts
/// inline in its record row when it has no rows there (see [`row`]).
fn journal_end(
    journal: &impl ReadableTable<(&'static IdBytes, u32), &'static [u8]>,
    executions: &impl ReadableTable<&'static IdBytes, &'static [u8]>,
    id: ExecutionId,
) -> Result<Option<(u32, JournalEnd)>, StoreError> {
    let k = key(id);
    let last = journal
        .range((&k, 0)..=(&k, u32::MAX))
        .context("read journal")?
        .next_back()
        .transpose()
        .context("read journal")?;
    match last {
        None => match executions.get(&k).context("read record")? {
            Some(value) if value.value().first() == Some(&FORMAT_INLINE) => {
                let count = row::count(&value.value()[1..]).map_err(|codec::Malformed(why)| {
                    StoreError::Corrupt(format!("record of execution {id}: {why}"))
                })?;
                Ok(Some((count, JournalEnd::Inline)))
            }
            _ => Ok(None),
        },
        Some((entry, _)) => {
            let seq = entry.value().1;
            seq.checked_add(1)
                .map(|next| Some((next, JournalEnd::Table)))
                .ok_or_else(|| StoreError::Corrupt(format!("journal of {id} is full")))
        }
    }
}

pub(super) fn get_record(
    executions: &impl ReadableTable<&'static IdBytes, &'static [u8]>,
    id: ExecutionId,
) -> Result<Option<ExecutionRecord>, StoreError> {
    match executions.get(&key(id)).context("read record")? {
        None => Ok(None),
        Some(value) => decode_record(value.value(), id).map(Some),
    }
}

/// What the indexes need of a stored record row.
fn indexed(bytes: &[u8], id: ExecutionId) -> Result<Indexed, StoreError> {
    let head = |bytes: &[u8]| {
        codec::read_head(bytes).map(|head| Indexed {
            workflow: head.workflow,
            status: head.status,
            created_at: head.created_at,
            finished_at: head.finished_at,
        })
    };
    decode_row(bytes, head, id)
}

pub(super) fn id_of(bytes: &IdBytes) -> ExecutionId {
    ExecutionId(ulid::Ulid::from_bytes(*bytes))
}

/// One durable transaction removing up to `slice.max` executions beyond the retention (when
/// no group commit is there to carry the work); returns how many.
pub(super) fn prune(db: &Database, slice: PruneSlice) -> Result<usize, StoreError> {
    let txn = begin(db, true)?;
    let removed = Tables::open(&txn)?.prune_slice(slice)?;
    if removed == 0 {
        txn.abort().context("abort empty prune")?;
    } else {
        txn.commit().context("commit prune")?;
    }
    Ok(removed)
}

/// Stores raw bytes as the record of `id` (and indexes it as unfinished): tests use it to
/// plant undecodable data.
#[cfg(test)]
pub(super) fn put_raw_record(
    db: &Database,
    id: ExecutionId,
    bytes: &[u8],
) -> Result<(), StoreError> {
    put_raw_execution(db, id, "w", bytes, bytes)
}

/// Stores raw bytes as the record and the first fact of an unfinished execution of
/// `workflow` (tests: rows of an older format, undecodable data).
#[cfg(test)]
pub(super) fn put_raw_execution(
    db: &Database,
    id: ExecutionId,
    workflow: &str,
    record: &[u8],
    fact: &[u8],
) -> Result<(), StoreError> {
    let txn = begin(db, true)?;
    {
        let k = key(id);
        let mut tables = Tables::open(&txn)?;
        tables.executions.insert(&k, record).context("plant")?;
        tables.unfinished.insert(&k, ()).context("plant")?;
        tables
            .by_workflow
            .insert((workflow, &k), ())
            .context("plant")?;
        tables.journal.insert((&k, 0), fact).context("plant")?;
    }
    txn.commit().context("commit plant")
}

/// How many journal-table rows each execution has, in id order, as (last byte of the id,
/// rows): tests check where facts went.
#[cfg(test)]
pub(super) fn journal_rows(db: &Database) -> Result<Vec<(u8, usize)>, StoreError> {
    use ::redb::ReadableDatabase;
    let txn = db.begin_read().context("begin read")?;
    let journal = txn.open_table(JOURNAL).context("open journal")?;
    let mut rows: Vec<(u8, usize)> = Vec::new();
    for entry in journal.iter().context("scan journal")? {
        let (entry, _) = entry.context("scan journal")?;
        let last = entry.value().0[15];
        match rows.last_mut() {
            Some((id, count)) if *id == last => *count += 1,
            _ => rows.push((last, 1)),
        }
    }
    Ok(rows)
}
