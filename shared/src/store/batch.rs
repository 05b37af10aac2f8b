//! Validation of a write batch, shared by every store so they refuse the same batches.
//!
//! A batch is checked as a whole before anything of it is applied: that is what makes a batch
//! with one bad write leave the store untouched, and it keeps each journal contiguous.

use std::collections::HashMap;

use super::{StoreError, StoreWrite};
use crate::engine::{ExecutionId, Fact, Timestamp};

/// Checks `batch` against the stored state. `next_seq(id)` answers the next journal seq of a
/// stored execution, or `None` when it does not exist; `exists(id)` whether it exists (a
/// `Create` needs no more, and a store may answer that more cheaply than a journal scan).
pub(crate) fn validate(
    batch: &[StoreWrite],
    mut next_seq: impl FnMut(ExecutionId) -> Result<Option<u32>, StoreError>,
    mut exists: impl FnMut(ExecutionId) -> Result<bool, StoreError>,
) -> Result<(), StoreError> {
    // Effects of the earlier writes of this batch: execution → its next seq.
    let mut overlay = Overlay::default();
    let mut lookup = |id: ExecutionId, overlay: &Overlay| -> Result<Option<u32>, StoreError> {
        match overlay.get(id) {
            Some(next) => Ok(Some(next)),
            None => next_seq(id),
        }
    };
    for write in batch {
        match write {
            StoreWrite::Create { record, started } => {
                if !matches!(started, Fact::Started { .. }) {
                    return Err(StoreError::InvalidWrite(format!(
                        "execution {}: the first fact must be Started",
                        record.id
                    )));
                }
                if overlay.get(record.id).is_some() || exists(record.id)? {
                    return Err(StoreError::AlreadyExists(record.id));
                }
                overlay.set(record.id, 1);
            }
            StoreWrite::Append { id, seq, .. } => {
                let expected = lookup(*id, &overlay)?.ok_or(StoreError::NotFound(*id))?;
                if *seq != expected {
                    return Err(StoreError::OutOfOrder {
                        execution: *id,
                        expected,
                        got: *seq,
                    });
                }
                let next = expected.checked_add(1).ok_or_else(|| {
                    StoreError::InvalidWrite(format!("execution {id}: journal is full"))
                })?;
                overlay.set(*id, next);
            }
            StoreWrite::Update(record) => {
                let next = lookup(record.id, &overlay)?.ok_or(StoreError::NotFound(record.id))?;
                overlay.set(record.id, next);
            }
            StoreWrite::PutMeta { .. } => {}
        }
    }
    Ok(())
}

/// The next seq of each execution the batch has written so far. A batch names one execution
/// or a few (an execution's writes, a parent and its child): a short list searched in order
/// is cheaper than hashing; a long batch (an import, a test) moves to a map.
#[derive(Default)]
struct Overlay {
    few: Vec<(ExecutionId, u32)>,
    many: HashMap<ExecutionId, u32>,
}

/// Executions an [`Overlay`] keeps in its list before it moves to a map.
const OVERLAY_LIST: usize = 16;

impl Overlay {
    fn get(&self, id: ExecutionId) -> Option<u32> {
        if !self.many.is_empty() {
            return self.many.get(&id).copied();
        }
        self.few
            .iter()
            .find(|(known, _)| *known == id)
            .map(|(_, next)| *next)
    }

    fn set(&mut self, id: ExecutionId, next: u32) {
        if !self.many.is_empty() {
            self.many.insert(id, next);
        } else if let Some((_, slot)) = self.few.iter_mut().find(|(known, _)| *known == id) {
            *slot = next;
        } else if self.few.len() < OVERLAY_LIST {
            self.few.push((id, next));
        } else {
            self.many.extend(self.few.drain(..));
            self.many.insert(id, next);
        }
    }
}

/// The time a finished execution's age counts from (see [`super::Retention::max_age`]).
pub(crate) fn finished_time(record: &crate::engine::ExecutionRecord) -> Timestamp {
    record.finished_at.unwrap_or(record.created_at)
}

/// Whether a finished execution at position `index` (oldest first) of `total` finished ones,
/// finished at `time`, is beyond `retention` at `now`. The answer is monotone along the
/// (finished time, id) order, so the prunable executions are always a prefix of it.
pub(crate) fn beyond_retention(
    retention: super::Retention,
    index: usize,
    total: usize,
    time: Timestamp,
    now: Timestamp,
) -> bool {
    let over_count = index < total.saturating_sub(retention.keep);
    let too_old = retention.max_age.is_some_and(|age| time.plus(age) < now);
    over_count || too_old
}
