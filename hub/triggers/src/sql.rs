//! What the SQL sources (`postgres`, `mysql`) share: table and column names, stored
//! positions (the poll position, the highest change submitted).

use std::time::Duration;

use reactor_core::engine::{Runtime, Submission, SubmitError};
use reactor_core::flow::{PollSettings, RowOperation};
use reactor_core::store::StoreWrite;
use reactor_core::trigger::{TriggerContext, TriggerError};

use crate::retry::Failure;
use serde_json::Value;

/// `table` or `schema.table`, both plain identifiers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TableName {
    pub schema: Option<String>,
    pub table: String,
}

impl TableName {
    pub(crate) fn parse(text: &str) -> Result<TableName, TriggerError> {
        let (schema, table) = match text.split_once('.') {
            Some((schema, table)) => (Some(schema), table),
            None => (None, text),
        };
        for part in schema.iter().chain([&table]) {
            check_identifier(part, "table")?;
        }
        Ok(TableName {
            schema: schema.map(str::to_string),
            table: table.to_string(),
        })
    }

    /// Quoted with `quote` (`"` for PostgreSQL, `` ` `` for MySQL).
    pub(crate) fn quoted(&self, quote: char) -> String {
        match &self.schema {
            Some(schema) => format!("{q}{schema}{q}.{q}{}{q}", self.table, q = quote),
            None => format!("{q}{}{q}", self.table, q = quote),
        }
    }
}

/// Letters, digits, `_` and `$`, not starting with a digit, at most 63 bytes: names that
/// need no escaping (quoted anyway).
pub(crate) fn check_identifier(name: &str, what: &str) -> Result<(), TriggerError> {
    let valid = !name.is_empty()
        && name.len() <= 63
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$');
    if valid {
        Ok(())
    } else {
        Err(TriggerError::Settings(format!(
            "{what} name {name:?} must be 1-63 letters, digits, _ or $ (schema.table allowed)"
        )))
    }
}

pub(crate) fn operation_name(operation: RowOperation) -> &'static str {
    match operation {
        RowOperation::Insert => "insert",
        RowOperation::Update => "update",
        RowOperation::Delete => "delete",
    }
}

/// The `poll` settings of a `mode: poll` trigger, checked.
pub(crate) fn poll_settings(poll: Option<&PollSettings>) -> Result<PollSettings, TriggerError> {
    let poll = poll
        .cloned()
        .ok_or_else(|| TriggerError::Settings("mode poll needs poll: { column, every }".into()))?;
    check_identifier(&poll.column, "poll column")?;
    if poll.every < Duration::from_millis(10) {
        return Err(TriggerError::Settings(
            "poll every must be at least 10ms".into(),
        ));
    }
    Ok(poll)
}

/// The stored poll position (the last column value recorded), under `key`.
pub(crate) async fn load_position(runtime: &Runtime, key: &str) -> Result<Option<Value>, String> {
    match runtime.store().meta(key).await {
        Ok(None) => Ok(None),
        Ok(Some(bytes)) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| format!("poll position {key:?} is unreadable: {e}")),
        Err(error) => Err(format!("reading the poll position: {error}")),
    }
}

pub(crate) async fn save_position(
    runtime: &Runtime,
    key: &str,
    position: &Value,
) -> Result<(), String> {
    let value = serde_json::to_vec(position).map_err(|e| e.to_string())?;
    runtime
        .store()
        .write(vec![StoreWrite::PutMeta {
            key: key.to_string(),
            value: Some(value),
        }])
        .await
        .map_err(|e| format!("storing the poll position: {e}"))
}

/// A source position that only grows, kept in the runtime's store under `key` — a log
/// position read as one number (a PostgreSQL LSN, a binlog file and offset). The
/// change-capture triggers keep two:
/// - the highest change they ever *submitted*, raised before the changes that pass it are
///   submitted. A log that hands changes out in commit order (a slot, a binlog) makes every
///   change past it a first delivery: nothing can have recorded it yet, so its mark is
///   written without being looked up ([`DedupeMark::first`]);
/// - PostgreSQL: the highest change *recorded and acknowledged*, raised before the slot
///   advance, so changes a server hands out again after losing the advance are skipped.
///
/// [`DedupeMark::first`]: reactor_core::engine::DedupeMark::first
pub(crate) struct HighWater {
    key: String,
    /// `None` until known: a trigger that never stored one (first run, or an upgrade from a
    /// version without it) or whose stored value is unreadable.
    high: Option<u64>,
}

impl HighWater {
    pub(crate) async fn load(runtime: &Runtime, key: String) -> Result<HighWater, Failure> {
        let stored = load_position(runtime, &key).await.map_err(Failure::Retry)?;
        let high = stored.and_then(|value| value.as_u64());
        Ok(HighWater { key, high })
    }

    /// The stored position, if known.
    pub(crate) fn get(&self) -> Option<u64> {
        self.high
    }

    /// Whether the stored position is past `position`.
    pub(crate) fn is_past(&self, position: u64) -> bool {
        self.high.is_some_and(|high| high > position)
    }

    /// Drops the stored position (it belongs to another source): unknown until the next
    /// [`HighWater::raise`] stores this source's.
    pub(crate) fn forget(&mut self) {
        self.high = None;
    }

    /// Stores `high` (durably) if it is past the stored position or none is known; 0 means
    /// "no position" and stores nothing.
    pub(crate) async fn raise(&mut self, runtime: &Runtime, high: u64) -> Result<(), Failure> {
        if high > 0 && self.high.is_none_or(|stored| high > stored) {
            save_position(runtime, &self.key, &Value::from(high))
                .await
                .map_err(Failure::Retry)?;
            self.high = Some(high);
        }
        Ok(())
    }
}

/// A de-duplication key for a poll row: the column value, hashed when long.
pub(crate) fn poll_key(prefix: &str, position: &Value) -> String {
    let text = position.to_string();
    if text.len() <= 200 {
        format!("{prefix}/{text}")
    } else {
        format!("{prefix}/#{:016x}", fnv(text.as_bytes()))
    }
}

/// FNV-1a, for stable short names (slot names, long keys).
pub(crate) fn fnv(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash = (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// A polled batch after its submissions: how far the poll went and what is left to do.
pub(crate) struct PolledBatch<'a> {
    /// The source's name, for errors (`postgres`, `mysql`).
    pub source: &'static str,
    /// Prefix of the rows' de-dup keys.
    pub prefix: &'a str,
    /// Where the poll position is stored.
    pub position_key: &'a str,
    /// The crash test's hook: fail once this many rows were recorded, before the position is
    /// stored.
    pub stop_before_ack: Option<u64>,
}

impl PolledBatch<'_> {
    /// Settles the batch's results (`positions` and `results` in row order): stores the
    /// position of the last row handled before the first that was not, forgets the handled
    /// rows' marks soon after, and asks for a retry when a row was not handled. Returns the
    /// new position when it moved.
    pub(crate) async fn record<'v>(
        &self,
        context: &TriggerContext,
        recorded: &mut u64,
        positions: impl Iterator<Item = &'v Value>,
        results: Vec<Result<Submission, SubmitError>>,
    ) -> Result<Option<Value>, Failure> {
        let Settled {
            reached,
            keys,
            accepted,
            complete,
        } = settle(&context.workflow, self.prefix, positions, results);
        *recorded += accepted;
        if let Some(limit) = self.stop_before_ack
            && *recorded >= limit
        {
            return Err(Failure::Fatal(TriggerError::Source(
                "stopped before storing the poll position (crash test)".into(),
            )));
        }
        if let Some(reached) = &reached {
            save_position(&context.runtime, self.position_key, reached)
                .await
                .map_err(Failure::Retry)?;
            // Rows at or below a stored position are never read again.
            crate::retry::forget_soon(context, keys);
        }
        if !complete {
            return Err(Failure::Retry(format!(
                "{} poll: a row was not recorded",
                self.source
            )));
        }
        Ok(reached)
    }
}

/// What a polled batch's submissions came to, in row order.
struct Settled {
    /// The position of the last row handled before the first one that was not: how far the
    /// stored poll position may move.
    pub reached: Option<Value>,
    /// The de-dup marks of the handled rows (forgotten once the position is stored).
    pub keys: Vec<String>,
    /// Rows that started an execution (not skipped as already recorded).
    pub accepted: u64,
    /// Whether every row was handled.
    pub complete: bool,
}

/// Walks a polled batch's results (`positions` and `results` in row order) up to the first
/// row that was not handled, for the `postgres` and `mysql` poll modes.
fn settle<'a>(
    workflow: &str,
    prefix: &str,
    positions: impl Iterator<Item = &'a Value>,
    results: Vec<Result<Submission, SubmitError>>,
) -> Settled {
    let mut settled = Settled {
        reached: None,
        keys: Vec::new(),
        accepted: 0,
        complete: true,
    };
    for (at, result) in positions.zip(results) {
        let key = poll_key(prefix, at);
        if !crate::retry::handled(workflow, &key, &result) {
            settled.complete = false;
            break;
        }
        if matches!(result, Ok(Submission::Accepted(_))) {
            settled.accepted += 1;
        }
        settled.reached = Some(at.clone());
        settled.keys.push(key);
    }
    settled
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names() {
        let t = TableName::parse("sales.orders").unwrap();
        assert_eq!(t.quoted('"'), "\"sales\".\"orders\"");
        assert_eq!(TableName::parse("orders").unwrap().quoted('`'), "`orders`");
        for bad in ["", "a.b.c", "x;drop", "1abc", "a b", "\"q\""] {
            assert!(TableName::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn long_poll_keys_are_hashed() {
        assert_eq!(poll_key("p", &serde_json::json!(42)), "p/42");
        let long = poll_key("p", &serde_json::json!("x".repeat(500)));
        assert!(long.starts_with("p/#") && long.len() < 40);
    }
}
