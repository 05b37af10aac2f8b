//! The journal's write-ahead log: what makes a group commit durable between checkpoints.
//!
//! A durable redb commit writes every B-tree page the group touched (the right edges of six
//! tables), redb's own allocation records and its header, then syncs: measured at ~90 KiB
//! written and ~0.5 ms of CPU per group on the development VM (docs/performance.md,
//! "Session 16"). On an SD card those scattered page writes are what costs, in time and in
//! wear. So a group is committed to redb *without* durability (it stays in redb's cache and
//! the OS page cache) and made durable by appending its batches to this log with one
//! sequential write and one `sync_data`. Every [`CHECKPOINT_GROUPS`] groups, or when the log
//! is full, a group is committed to redb durably instead (a checkpoint), and the log starts
//! over from its beginning.
//!
//! Every write transaction also stores the log sequence number (LSN) of its group in the
//! `wal` table, so the durable state of redb says which groups it holds. Opening replays the
//! records after that LSN, in order, each committed as it first was, then checkpoints.
//!
//! File: records back to back from offset 0, each `len u32 | crc32 u32 | lsn u64 | payload`
//! (little endian; the CRC covers the LSN and the payload). The payload is a list of
//! entries, each a `uvar` length, a kind byte and its body: a group's journal batches
//! ([`JOURNAL_BATCH`], the batch's writes as [`encode_batch`] writes them), or one logged
//! operation of another part of the file ([`OUTBOX_APPEND`]: the fleet outbox's append with
//! its inputs, replayed by `outbox::replay_append`). The file is
//! written over from the start after each checkpoint, so past the last record of the
//! current cycle lie older records: recovery reads from the start and stops at the first
//! record that is torn (short or bad CRC) or out of sequence (an LSN other than the next);
//! records at or below the durable LSN are skipped. Every older record's LSN is at or below
//! the checkpoint that started the cycle, so none of them can pass for the next one.

use ::redb::StorageBackend;

use super::codec::{self, Malformed};
use super::tables::{id_of, key};
use crate::store::StoreWrite;

/// Groups committed without durability between two checkpoints: bounds both the log's
/// replay at start-up and the pages redb cannot reuse until the next durable commit.
pub(super) const CHECKPOINT_GROUPS: u32 = 128;

/// The log's size: a group whose record would not fit is a checkpoint instead.
pub(super) const CAPACITY: u64 = 4 * 1024 * 1024;

/// `len`, `crc`, `lsn`.
const HEADER: usize = 16;

/// Entry kind: a batch of journal writes.
pub(super) const JOURNAL_BATCH: u8 = 0;
/// Entry kind: an append to the fleet outbox.
pub(super) const OUTBOX_APPEND: u8 = 1;

/// Opens the log's file (again, after an I/O error).
pub(super) type WalOpener = Box<dyn FnMut() -> std::io::Result<Box<dyn StorageBackend>> + Send>;

/// The log, owned by the store thread.
pub(super) struct Wal {
    file: Box<dyn StorageBackend>,
    /// Where the next record goes.
    end: u64,
    /// Groups appended since the last checkpoint.
    groups: u32,
    buffer: Vec<u8>,
}

impl std::fmt::Debug for Wal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wal")
            .field("end", &self.end)
            .field("groups", &self.groups)
            .finish_non_exhaustive()
    }
}

impl Wal {
    pub(super) fn new(file: Box<dyn StorageBackend>) -> Wal {
        Wal {
            file,
            end: 0,
            groups: 0,
            buffer: Vec::new(),
        }
    }

    /// The payloads of the records after `durable`, in LSN order (see the module docs).
    pub(super) fn recover(&self, durable: u64) -> std::io::Result<Vec<(u64, Vec<u8>)>> {
        let len = usize::try_from(self.file.len()?.min(CAPACITY)).unwrap_or(0);
        let mut bytes = vec![0; len];
        self.file.read(0, &mut bytes)?;
        let mut records = Vec::new();
        let mut rest = bytes.as_slice();
        let mut expected = None;
        while let Some((lsn, payload, after)) = next_record(rest) {
            match expected {
                // The first record after the durable state starts the run to replay.
                None if lsn <= durable => {}
                None if lsn == durable + 1 => {
                    records.push((lsn, payload.to_vec()));
                    expected = Some(lsn + 1);
                }
                Some(next) if lsn == next => {
                    records.push((lsn, payload.to_vec()));
                    expected = Some(lsn + 1);
                }
                _ => break,
            }
            rest = after;
        }
        Ok(records)
    }

    /// Whether this group must be a checkpoint: the log holds [`CHECKPOINT_GROUPS`] groups,
    /// or a record of `payload` bytes would not fit.
    pub(super) fn wants_checkpoint(&self, payload: usize) -> bool {
        self.groups >= CHECKPOINT_GROUPS || self.end + (HEADER + payload) as u64 > CAPACITY
    }

    /// After a durable commit: the next record goes to the start of the file.
    pub(super) fn restart(&mut self) {
        self.end = 0;
        self.groups = 0;
    }

    /// Empties the file (it belongs to no journal) and restarts.
    pub(super) fn clear(&mut self) -> std::io::Result<()> {
        self.file.set_len(0)?;
        self.file.sync_data()?;
        self.restart();
        Ok(())
    }

    /// Groups appended since the last checkpoint.
    pub(super) fn groups(&self) -> u32 {
        self.groups
    }

    /// Appends the record of transaction `lsn`, made of `entries` (each a kind byte and its
    /// body), and syncs it. On error the record's state is unknown: the caller checkpoints (or
    /// reopens) before the log is used again.
    pub(super) fn append<'a>(
        &mut self,
        lsn: u64,
        entries: impl Iterator<Item = &'a [u8]>,
    ) -> std::io::Result<()> {
        let mut buffer = std::mem::take(&mut self.buffer);
        buffer.clear();
        buffer.resize(HEADER, 0);
        buffer[8..16].copy_from_slice(&lsn.to_le_bytes());
        for entry in entries {
            codec::uvar(&mut buffer, entry.len() as u64);
            buffer.extend_from_slice(entry);
        }
        let len = u32::try_from(buffer.len() - HEADER)
            .map_err(|_| std::io::Error::other("write-ahead record too large"))?;
        buffer[0..4].copy_from_slice(&len.to_le_bytes());
        let crc = crc32fast::hash(&buffer[8..]);
        buffer[4..8].copy_from_slice(&crc.to_le_bytes());
        let written = self
            .file
            .write(self.end, &buffer)
            .and_then(|()| self.file.sync_data());
        self.end += buffer.len() as u64;
        self.groups += 1;
        self.buffer = buffer;
        written
    }

    /// Bytes the record of these entries takes beyond its header.
    pub(super) fn payload_len<'a>(entries: impl Iterator<Item = &'a [u8]>) -> usize {
        entries
            .map(|entry| uvar_len(entry.len()) + entry.len())
            .sum()
    }
}

fn uvar_len(n: usize) -> usize {
    let bits = usize::BITS - n.leading_zeros();
    (bits.max(1) as usize).div_ceil(7)
}

/// The record at the start of `bytes`, if whole and intact: (lsn, payload, what follows).
fn next_record(bytes: &[u8]) -> Option<(u64, &[u8], &[u8])> {
    let header = bytes.get(..HEADER)?;
    let len = usize::try_from(u32::from_le_bytes(header[0..4].try_into().ok()?)).ok()?;
    let crc = u32::from_le_bytes(header[4..8].try_into().ok()?);
    let lsn = u64::from_le_bytes(header[8..16].try_into().ok()?);
    let covered = bytes.get(8..HEADER.checked_add(len)?)?;
    if crc32fast::hash(covered) != crc {
        return None;
    }
    Some((lsn, &bytes[HEADER..HEADER + len], &bytes[HEADER + len..]))
}

/// Splits a record's payload into its entries (each a kind byte and its body).
pub(super) fn entries(mut payload: &[u8]) -> Result<Vec<&[u8]>, Malformed> {
    let mut out = Vec::new();
    while !payload.is_empty() {
        let (len, used) = codec::read_uvar(payload)?;
        let len = usize::try_from(len).map_err(|_| Malformed("entry too long"))?;
        let end = used
            .checked_add(len)
            .filter(|end| *end <= payload.len())
            .ok_or(Malformed("truncated entry"))?;
        out.push(&payload[used..end]);
        payload = &payload[end..];
    }
    Ok(out)
}

const CREATE: u8 = 0;
const APPEND: u8 = 1;
const UPDATE: u8 = 2;
const PUT_META: u8 = 3;
const DELETE_META: u8 = 4;

/// Appends a batch's writes as the log stores them: per write a tag byte, then its parts,
/// each (record, fact, meta key or value) a `u32` little-endian length and its bytes
/// ([`codec`] for records and facts). The length is a fixed four bytes so that each part is
/// encoded in place and its length written after it.
pub(super) fn encode_batch(writes: &[StoreWrite], out: &mut Vec<u8>) {
    let part = |out: &mut Vec<u8>, encode: &dyn Fn(&mut Vec<u8>)| {
        let at = out.len();
        out.extend_from_slice(&[0; 4]);
        encode(out);
        let len = u32::try_from(out.len() - at - 4).unwrap_or(u32::MAX);
        out[at..at + 4].copy_from_slice(&len.to_le_bytes());
    };
    for write in writes {
        match write {
            StoreWrite::Create { record, started } => {
                out.push(CREATE);
                part(out, &|b| codec::record(b, record));
                part(out, &|b| codec::fact(b, started));
            }
            StoreWrite::Append { id, seq, fact } => {
                out.push(APPEND);
                out.extend_from_slice(&key(*id));
                codec::uvar(out, u64::from(*seq));
                part(out, &|b| codec::fact(b, fact));
            }
            StoreWrite::Update(record) => {
                out.push(UPDATE);
                part(out, &|b| codec::record(b, record));
            }
            StoreWrite::PutMeta { key, value } => {
                out.push(if value.is_some() {
                    PUT_META
                } else {
                    DELETE_META
                });
                part(out, &|b| b.extend_from_slice(key.as_bytes()));
                if let Some(value) = value {
                    part(out, &|b| b.extend_from_slice(value));
                }
            }
        }
    }
}

/// Reads back what [`encode_batch`] wrote.
pub(super) fn decode_batch(mut bytes: &[u8]) -> Result<Vec<StoreWrite>, Malformed> {
    fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Result<&'a [u8], Malformed> {
        if n > bytes.len() {
            return Err(Malformed("truncated write"));
        }
        let (taken, rest) = bytes.split_at(n);
        *bytes = rest;
        Ok(taken)
    }
    fn uvar(bytes: &mut &[u8]) -> Result<u64, Malformed> {
        let (n, used) = codec::read_uvar(bytes)?;
        *bytes = &bytes[used..];
        Ok(n)
    }
    fn part<'a>(bytes: &mut &'a [u8]) -> Result<&'a [u8], Malformed> {
        let len: [u8; 4] = take(bytes, 4)?
            .try_into()
            .map_err(|_| Malformed("length"))?;
        let len = usize::try_from(u32::from_le_bytes(len)).map_err(|_| Malformed("length"))?;
        take(bytes, len)
    }
    let mut writes = Vec::new();
    while let Some((&tag, rest)) = bytes.split_first() {
        bytes = rest;
        let write = match tag {
            CREATE => StoreWrite::Create {
                record: codec::read_record(part(&mut bytes)?)?,
                started: codec::read_fact(part(&mut bytes)?)?,
            },
            APPEND => {
                let id: [u8; 16] = take(&mut bytes, 16)?
                    .try_into()
                    .map_err(|_| Malformed("id"))?;
                let seq = u32::try_from(uvar(&mut bytes)?).map_err(|_| Malformed("seq"))?;
                StoreWrite::Append {
                    id: id_of(&id),
                    seq,
                    fact: codec::read_fact(part(&mut bytes)?)?,
                }
            }
            UPDATE => StoreWrite::Update(codec::read_record(part(&mut bytes)?)?),
            PUT_META | DELETE_META => {
                let key = std::str::from_utf8(part(&mut bytes)?)
                    .map_err(|_| Malformed("meta key is not UTF-8"))?
                    .to_string();
                let value = match tag {
                    PUT_META => Some(part(&mut bytes)?.to_vec()),
                    _ => None,
                };
                StoreWrite::PutMeta { key, value }
            }
            _ => return Err(Malformed("unknown write")),
        };
        writes.push(write);
    }
    Ok(writes)
}
