//! Entries delivered again — this consumer's pending list re-read after a (re)connection, or
//! claimed from a dead consumer — that an execution already recorded.
//!
//! A mark is keyed like the first entry of what it recorded: one entry (`position.id`), or a
//! `batch:` run whose `position.ids` lists every entry of it. A run's tail can come back
//! without its head (a dead consumer's entries are claimed a few at a time, by several
//! consumers), so a point lookup by entry is not enough: recovery reads every mark of the
//! stream and group at once (few: a mark lives from its record to its acknowledgement) and
//! looks entries up in them. New entries (`>`) need none of this.

use std::collections::{HashMap, HashSet};

use reactor_core::trigger::TriggerContext;
use redis::RedisError;
use redis::streams::StreamId;
use serde_json::Value;

use crate::retry::Failure;

/// The marks of one stream and group: which entries each covers.
pub(super) struct Recorded {
    /// (mark key, its entries).
    marks: Vec<(String, Vec<String>)>,
    /// Entry id → index in `marks`.
    by_entry: HashMap<String, usize>,
}

impl Recorded {
    /// Reads every mark under `prefix` (`redis/{stream}/{group}/`).
    pub(super) async fn load(context: &TriggerContext, prefix: &str) -> Result<Recorded, Failure> {
        let found = context
            .runtime
            .marks(&context.workflow, prefix)
            .await
            .map_err(|e| Failure::Retry(format!("redis: reading marks: {e}")))?;
        let mut marks = Vec::with_capacity(found.len());
        let mut by_entry = HashMap::new();
        for (key, mark) in found {
            let entries = match mark.position.get("ids").and_then(Value::as_array) {
                Some(ids) => ids
                    .iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect(),
                // One entry's mark: the entry is in its key.
                None => vec![key[prefix.len()..].to_string()],
            };
            for entry in &entries {
                by_entry.insert(entry.clone(), marks.len());
            }
            marks.push((key, entries));
        }
        Ok(Recorded { marks, by_entry })
    }

    /// Splits `entries` into those no mark covers (to run) and the recovered ones.
    pub(super) fn split(mut self, entries: Vec<StreamId>) -> (Vec<StreamId>, Recovered) {
        let mut recovered = Recovered::default();
        let mut touched = vec![false; self.marks.len()];
        let mut unrecorded = Vec::with_capacity(entries.len());
        for entry in entries {
            match self.by_entry.get(&entry.id) {
                Some(&mark) => {
                    touched[mark] = true;
                    recovered.entries.push(entry.id);
                }
                None => unrecorded.push(entry),
            }
        }
        recovered.marks = self
            .marks
            .drain(..)
            .zip(touched)
            .filter_map(|(mark, touched)| touched.then_some(mark))
            .collect();
        (unrecorded, recovered)
    }
}

/// Entries found recorded, to acknowledge, and the marks that cover them.
#[derive(Debug, Default)]
pub(super) struct Recovered {
    entries: Vec<String>,
    marks: Vec<(String, Vec<String>)>,
}

impl Recovered {
    pub(super) fn entries(&self) -> &[String] {
        &self.entries
    }

    /// Once the recovered entries are acknowledged: the keys of the marks that can go, those
    /// none of whose entries is still pending in the group (a batch's other entries may
    /// wait at another consumer, and its mark must stay until they are acknowledged too).
    /// A mark kept here is pruned with old marks at the latest.
    pub(super) async fn settled(
        self,
        conn: &mut redis::aio::MultiplexedConnection,
        stream: &str,
        group: &str,
    ) -> Result<Vec<String>, RedisError> {
        let acknowledged: HashSet<&str> = self.entries.iter().map(String::as_str).collect();
        let mut settled = Vec::with_capacity(self.marks.len());
        for (key, entries) in self.marks {
            if entries.iter().all(|id| acknowledged.contains(id.as_str()))
                || !still_pending(conn, stream, group, &entries).await?
            {
                settled.push(key);
            }
        }
        Ok(settled)
    }
}

/// Pending entries examined per check: a batch's most.
const PENDING_PAGE: usize = reactor_core::flow::Batch::MAX_SIZE;

/// Whether any of `entries` is pending in the group (`XPENDING` over their id range). When
/// the range holds a full page of other consumers' entries, it answers yes: keeping a mark
/// too long is safe, dropping it early is not.
async fn still_pending(
    conn: &mut redis::aio::MultiplexedConnection,
    stream: &str,
    group: &str,
    entries: &[String],
) -> Result<bool, RedisError> {
    let (Some(first), Some(last)) = (
        entries.iter().min_by_key(|id| order(id)),
        entries.iter().max_by_key(|id| order(id)),
    ) else {
        return Ok(false);
    };
    let pending: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
        .arg(stream)
        .arg(group)
        .arg(first)
        .arg(last)
        .arg(PENDING_PAGE)
        .query_async(conn)
        .await?;
    let entries: HashSet<&str> = entries.iter().map(String::as_str).collect();
    Ok(pending.len() >= PENDING_PAGE
        || pending.iter().any(|(id, ..)| entries.contains(id.as_str())))
}

/// A stream id's place in the stream (`ms-seq`, compared as numbers).
fn order(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}
