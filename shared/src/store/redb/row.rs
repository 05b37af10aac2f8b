//! Record rows that carry the head of their execution's journal ([`FORMAT_INLINE`]).
//!
//! Every execution is created as one such row: its start fact and the facts its first batch
//! appends go inside the record row instead of taking a journal row (a B-tree insert, and
//! the journal tree's pages in the commit) each. An execution created finished (every pure
//! workflow, a sync `http` reply) is never written again. One that is not is finished by an
//! `Update`, which rewrites the row anyway: the facts appended in the same batch right
//! before it fold into the row too (up to a cap, see `tables.rs`), so a typical execution
//! with one side effect is two row writes and no journal rows.
//!
//! Layout after the format byte: `uvar` fact count, then each fact as a little-endian `u32`
//! length and its [`codec::fact`] bytes, then the record's [`codec::record`] bytes to the end
//! of the value. The record comes last so that an update can keep the facts' bytes as they
//! are and replace only the tail.
//!
//! The journal of an execution is its inline facts (seq 0, 1, …) followed by its rows of the
//! `journal` table, which continue at the next seq. Facts fold into the row only while the
//! execution has no journal rows, so the inline facts are always a prefix of the journal.
//! Rows of formats 1 and 2 (no inline facts, written by older versions) are still read and
//! updated as before.

use super::codec::{self, Malformed};
use crate::engine::{ExecutionRecord, Fact};

/// The format byte of a record row with inline facts.
pub(super) const FORMAT_INLINE: u8 = 3;

/// A record row with inline facts: format byte, facts, record.
pub(super) fn inline(record: &ExecutionRecord, facts: &[&Fact]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(512);
    bytes.push(FORMAT_INLINE);
    codec::uvar(&mut bytes, facts.len() as u64);
    for fact in facts {
        let at = bytes.len();
        bytes.extend_from_slice(&[0; 4]);
        codec::fact(&mut bytes, fact);
        let len = u32::try_from(bytes.len() - at - 4).unwrap_or(u32::MAX);
        bytes[at..at + 4].copy_from_slice(&len.to_le_bytes());
    }
    codec::record(&mut bytes, record);
    bytes
}

/// The parts of a [`FORMAT_INLINE`] value (given without its format byte).
pub(super) struct Inline<'a> {
    /// Each fact's [`codec::fact`] bytes, in journal order.
    pub facts: Vec<&'a [u8]>,
    /// Where the first fact's length starts in the value given to [`split`].
    pub facts_at: usize,
    /// Where the record's bytes start in the value given to [`split`].
    pub record_at: usize,
    /// The record's [`codec::record`] bytes.
    pub record: &'a [u8],
}

/// Splits an inline row (without its format byte). Lengths are checked against the value:
/// malformed bytes are an error, never a panic.
pub(super) fn split(bytes: &[u8]) -> Result<Inline<'_>, Malformed> {
    let (count, mut at) = codec::read_uvar(bytes)?;
    let count = usize::try_from(count).map_err(|_| Malformed("count out of range"))?;
    if count > bytes.len() {
        return Err(Malformed("count beyond the value"));
    }
    let facts_at = at;
    let mut facts = Vec::with_capacity(count);
    for _ in 0..count {
        let len: [u8; 4] = bytes
            .get(at..at + 4)
            .and_then(|len| len.try_into().ok())
            .ok_or(Malformed("truncated"))?;
        let start = at + 4;
        let end = usize::try_from(u32::from_le_bytes(len))
            .ok()
            .and_then(|len| start.checked_add(len))
            .filter(|end| *end <= bytes.len())
            .ok_or(Malformed("truncated"))?;
        facts.push(&bytes[start..end]);
        at = end;
    }
    Ok(Inline {
        facts,
        facts_at,
        record_at: at,
        record: &bytes[at..],
    })
}

/// How many facts an inline row (without its format byte) holds.
pub(super) fn count(bytes: &[u8]) -> Result<u32, Malformed> {
    let (count, _) = codec::read_uvar(bytes)?;
    u32::try_from(count).map_err(|_| Malformed("count out of range"))
}

/// The row `bytes` (split as `inline`; without its format byte) with `more` facts after its
/// own and `record` (format-2 record bytes without their format byte) as its record.
pub(super) fn rewrite<'a>(
    bytes: &[u8],
    inline: &Inline<'_>,
    more: impl ExactSizeIterator<Item = &'a [u8]>,
    record: &[u8],
) -> Vec<u8> {
    let added: usize = 4 * more.len();
    let mut row = Vec::with_capacity(1 + bytes.len() + added + record.len());
    row.push(FORMAT_INLINE);
    codec::uvar(&mut row, (inline.facts.len() + more.len()) as u64);
    row.extend_from_slice(&bytes[inline.facts_at..inline.record_at]);
    for fact in more {
        let len = u32::try_from(fact.len()).unwrap_or(u32::MAX);
        row.extend_from_slice(&len.to_le_bytes());
        row.extend_from_slice(fact);
    }
    row.extend_from_slice(record);
    row
}

/// The inline facts of a row, decoded.
pub(super) fn facts(inline: &Inline<'_>) -> Result<Vec<Fact>, Malformed> {
    inline
        .facts
        .iter()
        .map(|fact| codec::read_fact(fact))
        .collect()
}
