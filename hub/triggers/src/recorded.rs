//! Redelivered messages that an execution already recorded, found by the marks of their
//! source: for sources that hand a message out again in any split (a Redis stream's pending
//! entries, claimed a few at a time; JetStream messages after `ack_wait`), where a `batch:`
//! mark keyed like its first message cannot be found from any other message of it.
//!
//! A mark covers the message its key ends with (one message's execution), or every message
//! its position lists (a batch's). Recovery reads every mark under the source's key prefix
//! at once — few: a mark lives from its record to its acknowledgement — and looks the
//! redelivered messages up in them. First deliveries need none of this.

use std::collections::{HashMap, HashSet};

use reactor_core::trigger::TriggerContext;
use serde_json::Value;

use crate::retry::Failure;

/// The marks under one key prefix: which messages each covers.
pub(crate) struct Recorded {
    /// (mark key, ids of the messages it covers).
    marks: Vec<(String, Vec<String>)>,
    /// Message id → index in `marks`.
    by_id: HashMap<String, usize>,
}

impl Recorded {
    /// Reads every mark under `prefix`; a batch's lists its messages' ids under `list` in its
    /// position (strings or numbers).
    pub(crate) async fn load(
        context: &TriggerContext,
        prefix: &str,
        list: &str,
    ) -> Result<Recorded, Failure> {
        let found = context
            .runtime
            .marks(&context.workflow, prefix)
            .await
            .map_err(|e| Failure::Retry(format!("reading the marks under {prefix}: {e}")))?;
        let mut marks = Vec::with_capacity(found.len());
        let mut by_id = HashMap::new();
        for (key, mark) in found {
            let ids = match mark.position.get(list).and_then(Value::as_array) {
                Some(ids) => ids.iter().filter_map(id_of).collect(),
                // One message's mark: its id is in the key.
                None => vec![key[prefix.len()..].to_string()],
            };
            for id in &ids {
                by_id.insert(id.clone(), marks.len());
            }
            marks.push((key, ids));
        }
        Ok(Recorded { marks, by_id })
    }

    /// Splits `items` into those no mark covers (to run) and the recovered ones; `id` names
    /// an item's message as the marks do.
    pub(crate) fn split<T>(
        mut self,
        items: Vec<T>,
        id: impl Fn(&T) -> String,
    ) -> (Vec<T>, Recovered<T>) {
        let mut recovered = Recovered::default();
        let mut touched = vec![false; self.marks.len()];
        let mut unrecorded = Vec::with_capacity(items.len());
        for item in items {
            let item_id = id(&item);
            match self.by_id.get(&item_id) {
                Some(&mark) => {
                    touched[mark] = true;
                    recovered.ids.push(item_id);
                    recovered.items.push(item);
                }
                None => unrecorded.push(item),
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

/// Messages found recorded, to acknowledge without running them, and the marks that cover
/// them.
#[derive(Debug)]
pub(crate) struct Recovered<T> {
    pub(crate) items: Vec<T>,
    /// The recovered messages' ids, in `items`' order.
    pub(crate) ids: Vec<String>,
    /// (mark key, ids of the messages it covers).
    pub(crate) marks: Vec<(String, Vec<String>)>,
}

impl<T> Default for Recovered<T> {
    fn default() -> Recovered<T> {
        Recovered {
            items: Vec::new(),
            ids: Vec::new(),
            marks: Vec::new(),
        }
    }
}

impl<T> Recovered<T> {
    /// Splits the marks into the keys of those whose every message was recovered here (they
    /// can go once these are acknowledged) and the rest (some message of theirs may still
    /// come again).
    pub(crate) fn whole_marks(&mut self) -> (Vec<String>, Vec<(String, Vec<String>)>) {
        let recovered: HashSet<&str> = self.ids.iter().map(String::as_str).collect();
        let (whole, partial): (Vec<_>, Vec<_>) = std::mem::take(&mut self.marks)
            .into_iter()
            .partition(|(_, ids)| ids.iter().all(|id| recovered.contains(id.as_str())));
        (whole.into_iter().map(|(key, _)| key).collect(), partial)
    }
}

/// A listed message id: a string, or a number written out.
fn id_of(value: &Value) -> Option<String> {
    match value {
        Value::String(id) => Some(id.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}
