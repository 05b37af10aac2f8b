//! Entries delivered again — this consumer's pending list re-read after a (re)connection, or
//! claimed from a dead consumer — that an execution already recorded ([`crate::recorded`]).
//!
//! A mark is keyed like the first entry of what it recorded: one entry (`position.id`), or a
//! `batch:` run whose `position.ids` lists every entry of it. A run's tail can come back
//! without its head (a dead consumer's entries are claimed a few at a time, by several
//! consumers), so recovery reads every mark of the stream and group at once. New entries
//! (`>`) need none of this.

use std::collections::HashSet;

use redis::RedisError;
use redis::streams::StreamId;

use crate::recorded::Recovered;

/// Once the recovered entries are acknowledged: the keys of the marks that can go, those
/// none of whose entries is still pending in the group (a batch's other entries may wait at
/// another consumer, and its mark must stay until they are acknowledged too). A mark kept
/// here is pruned with old marks at the latest.
pub(super) async fn settled(
    mut recovered: Recovered<StreamId>,
    conn: &mut redis::aio::MultiplexedConnection,
    stream: &str,
    group: &str,
) -> Result<Vec<String>, RedisError> {
    let (mut settled, partial) = recovered.whole_marks();
    for (key, entries) in partial {
        if !still_pending(conn, stream, group, &entries).await? {
            settled.push(key);
        }
    }
    Ok(settled)
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
