//! The redb layout of the journal and the transactions over it. Synchronous: only the store
//! thread calls these.
//!
//! Tables (ids are the 16 big-endian bytes of the ULID, so key order is time order):
//! - `executions`: id → record (for an execution created finished, with the head of its
//!   journal inline: see `row.rs`)
//! - `journal`: (id, seq) → fact; seqs of one id are contiguous, from 0 or from the end of
//!   the facts inline in its record row
//! - `unfinished`: id → () for every running or queued execution
//! - `finished`: (finished time ms, id) → () for every finished execution: retention order
//! - `by_workflow`: (workflow, id) → () for every execution
//! - `meta`: key → bytes (stored raw, not versioned: callers own their format)
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

use std::ops::Bound;

use ::redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
    WriteTransaction,
};
use serde::de::DeserializeOwned;

use super::codec;
use super::row::{self, FORMAT_INLINE};
use crate::engine::{ExecutionId, ExecutionRecord, ExecutionStatus, Fact, Timestamp};
use crate::store::batch::{beyond_retention, finished_time, validate};
use crate::store::{ExecutionQuery, Retention, StoreError, StoreWrite};

type IdBytes = [u8; 16];

const EXECUTIONS: TableDefinition<&IdBytes, &[u8]> = TableDefinition::new("executions");
const JOURNAL: TableDefinition<(&IdBytes, u32), &[u8]> = TableDefinition::new("journal");
const UNFINISHED: TableDefinition<&IdBytes, ()> = TableDefinition::new("unfinished");
const FINISHED: TableDefinition<(i64, &IdBytes), ()> = TableDefinition::new("finished");
const BY_WORKFLOW: TableDefinition<(&str, &IdBytes), ()> = TableDefinition::new("by_workflow");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// The format byte of records and facts written as JSON (before [`codec::FORMAT_V2`]); still
/// read.
pub(super) const FORMAT_V1: u8 = 1;

/// Executions removed per prune transaction of its own, so one prune never holds a giant
/// transaction.
pub(super) const PRUNE_CHUNK: usize = 256;

fn key(id: ExecutionId) -> IdBytes {
    id.0.to_bytes()
}

/// Maps a redb error into a [`StoreError`], naming what was being done.
pub(super) fn redb_error(context: &str, err: impl Into<::redb::Error>) -> StoreError {
    match err.into() {
        ::redb::Error::Corrupted(detail) => StoreError::Corrupt(format!("{context}: {detail}")),
        other => StoreError::Io(format!("{context}: {other}")),
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

fn decode_record(bytes: &[u8], id: ExecutionId) -> Result<ExecutionRecord, StoreError> {
    decode_row(bytes, codec::read_record, id)
}

/// The inline facts of a record row ([`row`]); none for rows of the older formats.
fn inline_facts(bytes: &[u8], id: ExecutionId) -> Result<Vec<Fact>, StoreError> {
    match bytes.split_first() {
        Some((&FORMAT_INLINE, rest)) => row::split(rest)
            .and_then(|inline| row::facts(&inline))
            .map_err(|codec::Malformed(why)| {
                StoreError::Corrupt(format!("journal of execution {id}: {why}"))
            }),
        _ => Ok(Vec::new()),
    }
}

fn decode_fact(bytes: &[u8], id: ExecutionId, seq: u32) -> Result<Fact, StoreError> {
    decode(bytes, codec::read_fact, &|| {
        format!("fact {seq} of execution {id}")
    })
}

/// Creates every table, so read transactions never meet a missing one.
pub(super) fn init(db: &Database) -> Result<(), StoreError> {
    let txn = begin(db)?;
    txn.open_table(EXECUTIONS).context("create executions")?;
    txn.open_table(JOURNAL).context("create journal")?;
    txn.open_table(UNFINISHED).context("create unfinished")?;
    txn.open_table(FINISHED).context("create finished")?;
    txn.open_table(BY_WORKFLOW).context("create by_workflow")?;
    txn.open_table(META).context("create meta")?;
    txn.commit().context("commit table creation")
}

fn begin(db: &Database) -> Result<WriteTransaction, StoreError> {
    let mut txn = db.begin_write().context("begin write")?;
    txn.set_durability(Durability::Immediate)
        .context("set durability")?;
    Ok(txn)
}

/// Applies each batch in one write transaction and commits it durably.
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
) -> Result<(Vec<Result<(), StoreError>>, usize), StoreError> {
    let txn = begin(db)?;
    let mut outcomes = Vec::with_capacity(batches.len());
    let pruned;
    {
        let mut tables = Tables::open(&txn)?;
        for batch in batches {
            let checked = validate(
                &batch.writes,
                |id| tables.next_seq(id),
                |id| tables.exists(id),
            );
            match checked {
                Ok(()) => {
                    for (write, payload) in batch.writes.iter().zip(&batch.payloads) {
                        tables.apply(write, payload)?;
                    }
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
}

/// The stored value(s) of one write.
enum Payload {
    /// The record row, and the start fact's journal row unless the row holds it inline.
    Create {
        record: Vec<u8>,
        started: Option<Vec<u8>>,
    },
    Append(Vec<u8>),
    /// An `Append` whose fact is inline in its `Create`'s record row: nothing to apply.
    Inlined,
    Update(Vec<u8>),
    Meta,
}

impl Encoded {
    /// Encodes each write. A `Create` of a finished execution becomes one inline record row
    /// ([`row`]) holding its start fact and the `Append`s of the same execution that follow
    /// it in order (meta writes in between are fine); anything else ends the run.
    pub(super) fn new(writes: Vec<StoreWrite>) -> Encoded {
        let mut payloads = Vec::with_capacity(writes.len());
        // `Append`s before this index (and after an inlining `Create`) went inline.
        let mut inlined_before = 0;
        for (index, write) in writes.iter().enumerate() {
            let payload = match write {
                StoreWrite::Append { .. } if index < inlined_before => Payload::Inlined,
                StoreWrite::Create { record, started } if record.status.is_finished() => {
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
                    Payload::Create {
                        record: row::inline(record, &facts),
                        started: None,
                    }
                }
                StoreWrite::Create { record, started } => Payload::Create {
                    record: encode_record(record),
                    started: Some(encode_fact(started)),
                },
                StoreWrite::Append { fact, .. } => Payload::Append(encode_fact(fact)),
                StoreWrite::Update(record) => Payload::Update(encode_record(record)),
                StoreWrite::PutMeta { .. } => Payload::Meta,
            };
            payloads.push(payload);
        }
        Encoded { writes, payloads }
    }

    /// The writes, as they were given (the encoded bytes are dropped).
    pub(super) fn into_writes(self) -> Vec<StoreWrite> {
        self.writes
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

    /// The next seq of a stored execution's journal; `None` when it does not exist.
    fn next_seq(&self, id: ExecutionId) -> Result<Option<u32>, StoreError> {
        next_seq(&self.journal, &self.executions, id)
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

    fn apply(&mut self, write: &StoreWrite, payload: &Payload) -> Result<(), StoreError> {
        match (write, payload) {
            (
                StoreWrite::Create { record, .. },
                Payload::Create {
                    record: bytes,
                    started,
                },
            ) => {
                if let Some(started) = started {
                    self.journal
                        .insert((&key(record.id), 0), started.as_slice())
                        .context("insert fact")?;
                }
                self.put_record(record, bytes, None)?;
            }
            (StoreWrite::Append { id, seq, .. }, Payload::Append(bytes)) => {
                self.journal
                    .insert((&key(*id), *seq), bytes.as_slice())
                    .context("insert fact")?;
            }
            (StoreWrite::Append { .. }, Payload::Inlined) => {}
            (StoreWrite::Update(record), Payload::Update(bytes)) => {
                let (old, facts) = match self
                    .executions
                    .get(&key(record.id))
                    .context("read record")?
                {
                    None => (None, None),
                    Some(value) => {
                        let value = value.value();
                        let facts = match value.split_first() {
                            // The inline facts stay; only the record at the end is replaced.
                            Some((&FORMAT_INLINE, rest)) => row::split(rest)
                                .map(|inline| value[..1 + inline.record_at].to_vec())
                                .map_err(|codec::Malformed(why)| {
                                    StoreError::Corrupt(format!(
                                        "record of execution {}: {why}",
                                        record.id
                                    ))
                                })
                                .map(Some)?,
                            _ => None,
                        };
                        (Some(indexed(value, record.id)?), facts)
                    }
                };
                match facts {
                    Some(mut row) => {
                        // `bytes` is a format-2 record: its format byte gives way to the row's.
                        row.extend_from_slice(&bytes[1..]);
                        self.put_record(record, &row, old.as_ref())?;
                    }
                    None => self.put_record(record, bytes, old.as_ref())?,
                }
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
        Ok(())
    }

    /// Stores `record` and moves its index entries from `old`'s.
    fn put_record(
        &mut self,
        record: &ExecutionRecord,
        bytes: &[u8],
        old: Option<&Indexed>,
    ) -> Result<(), StoreError> {
        if let Some(old) = old {
            self.unindex(record.id, old)?;
        }
        let k = key(record.id);
        self.executions.insert(&k, bytes).context("insert record")?;
        self.by_workflow
            .insert((record.workflow.as_str(), &k), ())
            .context("index workflow")?;
        if record.status.is_finished() {
            self.finished
                .insert((finished_time(record).0, &k), ())
                .context("index finished")?;
        } else {
            self.unfinished.insert(&k, ()).context("index unfinished")?;
        }
        Ok(())
    }

    fn unindex(&mut self, id: ExecutionId, record: &Indexed) -> Result<(), StoreError> {
        let k = key(id);
        self.by_workflow
            .remove((record.workflow.as_str(), &k))
            .context("unindex workflow")?;
        if record.status.is_finished() {
            self.finished
                .remove((record.finished_time().0, &k))
                .context("unindex finished")?;
        } else {
            self.unfinished.remove(&k).context("unindex unfinished")?;
        }
        Ok(())
    }

    /// Removes an execution, its journal and its index entries.
    fn delete(&mut self, id: ExecutionId) -> Result<(), StoreError> {
        if let Some(record) = get_indexed(&self.executions, id)? {
            self.unindex(id, &record)?;
        }
        let k = key(id);
        self.executions.remove(&k).context("delete record")?;
        self.journal
            .retain_in((&k, 0)..=(&k, u32::MAX), |_, _| false)
            .context("delete journal")?;
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
            victims.push(id_of(id));
        }
        for id in &victims {
            self.delete(*id)?;
        }
        Ok(victims.len())
    }
}

/// The next seq of `id`'s journal: after its last row in `journal`, or after the facts
/// inline in its record row when it has no rows there (see [`row`]).
fn next_seq(
    journal: &impl ReadableTable<(&'static IdBytes, u32), &'static [u8]>,
    executions: &impl ReadableTable<&'static IdBytes, &'static [u8]>,
    id: ExecutionId,
) -> Result<Option<u32>, StoreError> {
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
                let inline = row::split(&value.value()[1..]).map_err(|codec::Malformed(why)| {
                    StoreError::Corrupt(format!("record of execution {id}: {why}"))
                })?;
                Ok(Some(u32::try_from(inline.facts.len()).map_err(|_| {
                    StoreError::Corrupt(format!("journal of {id} is full"))
                })?))
            }
            _ => Ok(None),
        },
        Some((entry, _)) => {
            let seq = entry.value().1;
            seq.checked_add(1)
                .map(Some)
                .ok_or_else(|| StoreError::Corrupt(format!("journal of {id} is full")))
        }
    }
}

fn get_record(
    executions: &impl ReadableTable<&'static IdBytes, &'static [u8]>,
    id: ExecutionId,
) -> Result<Option<ExecutionRecord>, StoreError> {
    match executions.get(&key(id)).context("read record")? {
        None => Ok(None),
        Some(value) => decode_record(value.value(), id).map(Some),
    }
}

fn get_indexed(
    executions: &impl ReadableTable<&'static IdBytes, &'static [u8]>,
    id: ExecutionId,
) -> Result<Option<Indexed>, StoreError> {
    match executions.get(&key(id)).context("read record")? {
        None => Ok(None),
        Some(value) => indexed(value.value(), id).map(Some),
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

fn id_of(bytes: &IdBytes) -> ExecutionId {
    ExecutionId(ulid::Ulid::from_bytes(*bytes))
}

/// One durable transaction removing up to `slice.max` executions beyond the retention (when
/// no group commit is there to carry the work); returns how many.
pub(super) fn prune(db: &Database, slice: PruneSlice) -> Result<usize, StoreError> {
    let txn = begin(db)?;
    let removed = Tables::open(&txn)?.prune_slice(slice)?;
    if removed == 0 {
        txn.abort().context("abort empty prune")?;
    } else {
        txn.commit().context("commit prune")?;
    }
    Ok(removed)
}

// ---- reads: each in its own read transaction (a consistent snapshot) ---------------------------

pub(super) fn execution(
    db: &Database,
    id: ExecutionId,
) -> Result<Option<ExecutionRecord>, StoreError> {
    let txn = db.begin_read().context("begin read")?;
    let executions = txn.open_table(EXECUTIONS).context("open executions")?;
    get_record(&executions, id)
}

pub(super) fn journal(db: &Database, id: ExecutionId) -> Result<Vec<Fact>, StoreError> {
    let txn = db.begin_read().context("begin read")?;
    let table = txn.open_table(JOURNAL).context("open journal")?;
    let executions = txn.open_table(EXECUTIONS).context("open executions")?;
    read_journal(&table, &executions, id)
}

/// The facts inline in `id`'s record row (see [`row`]), then its rows of `table`.
fn read_journal(
    table: &impl ReadableTable<(&'static IdBytes, u32), &'static [u8]>,
    executions: &impl ReadableTable<&'static IdBytes, &'static [u8]>,
    id: ExecutionId,
) -> Result<Vec<Fact>, StoreError> {
    let k = key(id);
    let mut facts = match executions.get(&k).context("read record")? {
        Some(value) => inline_facts(value.value(), id)?,
        None => Vec::new(),
    };
    for entry in table
        .range((&k, 0)..=(&k, u32::MAX))
        .context("read journal")?
    {
        let (entry_key, value) = entry.context("read journal")?;
        let seq = entry_key.value().1;
        if usize::try_from(seq).ok() != Some(facts.len()) {
            return Err(StoreError::Corrupt(format!(
                "journal of {id} has a gap before seq {seq}"
            )));
        }
        facts.push(decode_fact(value.value(), id, seq)?);
    }
    Ok(facts)
}

pub(super) fn unfinished(db: &Database) -> Result<Vec<(ExecutionRecord, Vec<Fact>)>, StoreError> {
    let txn = db.begin_read().context("begin read")?;
    let index = txn.open_table(UNFINISHED).context("open unfinished")?;
    let executions = txn.open_table(EXECUTIONS).context("open executions")?;
    let journal = txn.open_table(JOURNAL).context("open journal")?;
    let mut out = Vec::new();
    for entry in index.iter().context("scan unfinished")? {
        let (entry, _) = entry.context("scan unfinished")?;
        let id = id_of(entry.value());
        let record = get_record(&executions, id)?.ok_or_else(|| {
            StoreError::Corrupt(format!("unfinished index names missing execution {id}"))
        })?;
        let facts = read_journal(&journal, &executions, id)?;
        out.push((record, facts));
    }
    Ok(out)
}

pub(super) fn executions(
    db: &Database,
    query: &ExecutionQuery,
) -> Result<Vec<ExecutionRecord>, StoreError> {
    let txn = db.begin_read().context("begin read")?;
    let executions = txn.open_table(EXECUTIONS).context("open executions")?;
    let limit = if query.limit == 0 {
        usize::MAX
    } else {
        query.limit
    };
    let upper = query.before.map(key);
    let mut out = Vec::new();
    let mut take = |record: ExecutionRecord| {
        if query.status.is_none_or(|status| status == record.status) {
            out.push(record);
        }
        out.len() < limit
    };
    if let Some(workflow) = &query.workflow {
        let index = txn.open_table(BY_WORKFLOW).context("open by_workflow")?;
        let lowest = [0u8; 16];
        let highest = [0xffu8; 16];
        let end = match &upper {
            Some(before) => Bound::Excluded((workflow.as_str(), before)),
            None => Bound::Included((workflow.as_str(), &highest)),
        };
        let range = index
            .range((Bound::Included((workflow.as_str(), &lowest)), end))
            .context("scan by_workflow")?;
        for entry in range.rev() {
            let (entry, _) = entry.context("scan by_workflow")?;
            let id = id_of(entry.value().1);
            let record = get_record(&executions, id)?.ok_or_else(|| {
                StoreError::Corrupt(format!("workflow index names missing execution {id}"))
            })?;
            if !take(record) {
                break;
            }
        }
    } else {
        let end = match &upper {
            Some(before) => Bound::Excluded(before),
            None => Bound::Unbounded,
        };
        for entry in executions
            .range::<&IdBytes>((Bound::Unbounded, end))
            .context("scan executions")?
            .rev()
        {
            let (entry, value) = entry.context("scan executions")?;
            let id = id_of(entry.value());
            let record = decode_record(value.value(), id)?;
            if !take(record) {
                break;
            }
        }
    }
    Ok(out)
}

pub(super) fn meta(db: &Database, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
    let txn = db.begin_read().context("begin read")?;
    let table = txn.open_table(META).context("open meta")?;
    Ok(table
        .get(key)
        .context("read meta")?
        .map(|value| value.value().to_vec()))
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
    let txn = begin(db)?;
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
