//! `batch: { size, wait }` on the `kafka` and `redis` (stream) triggers: up to `size` source
//! messages in one execution, gathered for at most `wait` after the first (Kestra's batch
//! trigger beside its realtime one). For sinks that write in bulk, and for sources faster
//! than one durable execution per message.
//!
//! A batch also closes at [`Batch::MAX_BYTES`](reactor_core::flow::Batch::MAX_BYTES) of
//! messages, whatever `size` says.
//!
//! The event of a batch has the trigger's type and source; `data` is the list of the
//! messages, each `{data, meta}` — exactly what an unbatched event of that message holds in
//! `event.data` and `event.meta` — in source order; `meta` says where the batch sits (per
//! source: docs/triggers.md). `foreach: "${{ event.data }}"` walks it.
//!
//! Acknowledgement and exactly-once stay per message: a message is acknowledged only after
//! the execution holding it is recorded, and the marks written with that execution make a
//! redelivered message start nothing new — Kafka with one mark per batch naming its offset
//! range (a partition has one consumer, and redelivery resumes at a committed offset, so a
//! redelivered run starts where a recorded batch starts), Redis streams with one mark per
//! entry (entries of a dead consumer may be claimed in any split).

use reactor_core::engine::Event;
use serde_json::{Map, Value};

/// One message inside a batch event.
pub(crate) fn item(data: Value, meta: Value) -> Value {
    let mut item = Map::new();
    item.insert("data".into(), data);
    item.insert("meta".into(), meta);
    Value::Object(item)
}

/// The event of a batch: `items` (from [`item`]) in source order, `meta` where they sit.
pub(crate) fn event(event_type: &str, source: &str, items: Vec<Value>, meta: Value) -> Event {
    let mut event = Event::new(event_type, source, Value::Array(items));
    event.meta = meta;
    event
}

/// Batches a trigger takes from its source at once when more are waiting: read together,
/// then recorded side by side, so the journal's group commit carries them together (on the
/// hub's SQLite store one fsync for three executions instead of three) and the source's
/// round trips are shared. Guarantees stay per batch: each has its own execution and mark.
pub(crate) const IN_FLIGHT: usize = 3;

/// At most this many messages are taken at once beyond a single batch.
const MAX_AHEAD: usize = 4096;

/// How many messages to take at once for batches of `size`: [`IN_FLIGHT`] batches, fewer
/// when that passes [`MAX_AHEAD`] (never less than one batch).
pub(crate) fn ahead(size: usize) -> usize {
    (size * IN_FLIGHT).min(MAX_AHEAD).max(size)
}

/// Splits `items` (in source order) into batches of at most `size` items and `max_bytes`
/// bytes (`bytes` of each; an item larger than that alone is a batch of its own).
pub(crate) fn split<T>(
    items: impl IntoIterator<Item = T>,
    size: usize,
    max_bytes: usize,
    bytes: impl Fn(&T) -> usize,
) -> Vec<Vec<T>> {
    let mut batches = Vec::new();
    let mut current = Vec::new();
    let mut current_bytes = 0;
    for item in items {
        let n = bytes(&item);
        if !current.is_empty() && (current.len() >= size || current_bytes + n > max_bytes) {
            batches.push(std::mem::take(&mut current));
            current_bytes = 0;
        }
        current_bytes += n;
        current.push(item);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_close_at_their_size_or_their_bytes() {
        let sizes = [3, 3, 3, 3, 3, 3, 3];
        let by_count = split(sizes, 3, 100, |n| *n);
        assert_eq!(by_count, vec![vec![3, 3, 3], vec![3, 3, 3], vec![3]]);
        let by_bytes = split(sizes, 5, 7, |n| *n);
        assert_eq!(by_bytes, vec![vec![3, 3], vec![3, 3], vec![3, 3], vec![3]]);
        let oversized = split([1, 50, 1, 1], 10, 10, |n| *n);
        assert_eq!(oversized, vec![vec![1], vec![50], vec![1, 1]]);
        assert!(split(Vec::<usize>::new(), 3, 10, |n| *n).is_empty());
    }
}
