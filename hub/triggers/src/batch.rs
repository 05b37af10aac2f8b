//! `batch: { size, wait }` on the `kafka` and `redis` (stream) triggers: up to `size` source
//! messages in one execution, gathered for at most `wait` after the first (Kestra's batch
//! trigger beside its realtime one). For sinks that write in bulk, and for sources faster
//! than one durable execution per message.
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
