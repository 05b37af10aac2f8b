//! [`MemoryStore`]: the journal in process memory, for tests and `reactor-agent exec`.
//!
//! "Durable" here means "visible to every later read of this store": nothing survives the
//! process. The mutex is never held across an `.await` (no method awaits while holding it).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;

use super::batch::{beyond_retention, finished_time, validate};
use super::{ExecutionQuery, Retention, Store, StoreError, StoreWrite};
use crate::engine::{ExecutionId, ExecutionRecord, Fact, Timestamp};

/// A [`Store`] kept in memory.
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Ordered by id, which is time-ordered: iteration is oldest first.
    records: BTreeMap<ExecutionId, ExecutionRecord>,
    /// Invariant: an entry exists exactly when `records` has the id, and is never empty
    /// (`Create` puts the `Started` fact at seq 0).
    journals: HashMap<ExecutionId, Vec<Fact>>,
    meta: BTreeMap<String, Vec<u8>>,
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave a half-applied batch (batches are
        // validated before any change), so a poisoned lock is still consistent.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Inner {
    fn next_seq(&self, id: ExecutionId) -> Option<u32> {
        self.journals
            .get(&id)
            .map(|journal| u32::try_from(journal.len()).unwrap_or(u32::MAX))
    }

    fn apply(&mut self, write: StoreWrite) {
        match write {
            StoreWrite::Create { record, started } => {
                self.journals.insert(record.id, vec![started]);
                self.records.insert(record.id, record);
            }
            StoreWrite::Append { id, fact, .. } => {
                // Validation proved the execution exists and `seq` is the next one.
                self.journals.entry(id).or_default().push(fact);
            }
            StoreWrite::Update(record) => {
                self.records.insert(record.id, record);
            }
            StoreWrite::PutMeta { key, value } => match value {
                Some(value) => {
                    self.meta.insert(key, value);
                }
                None => {
                    self.meta.remove(&key);
                }
            },
        }
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn write(&self, batch: Vec<StoreWrite>) -> Result<(), StoreError> {
        let mut inner = self.lock();
        validate(
            &batch,
            |id| Ok(inner.next_seq(id)),
            |id| Ok(inner.next_seq(id).is_some()),
        )?;
        for write in batch {
            inner.apply(write);
        }
        Ok(())
    }

    async fn unfinished(&self) -> Result<Vec<(ExecutionRecord, Vec<Fact>)>, StoreError> {
        let inner = self.lock();
        Ok(inner
            .records
            .values()
            .filter(|record| !record.status.is_finished())
            .map(|record| {
                let journal = inner.journals.get(&record.id).cloned().unwrap_or_default();
                (record.clone(), journal)
            })
            .collect())
    }

    async fn execution(&self, id: ExecutionId) -> Result<Option<ExecutionRecord>, StoreError> {
        Ok(self.lock().records.get(&id).cloned())
    }

    async fn journal(&self, id: ExecutionId) -> Result<Vec<Fact>, StoreError> {
        Ok(self.lock().journals.get(&id).cloned().unwrap_or_default())
    }

    async fn executions(&self, query: &ExecutionQuery) -> Result<Vec<ExecutionRecord>, StoreError> {
        let inner = self.lock();
        let limit = if query.limit == 0 {
            usize::MAX
        } else {
            query.limit
        };
        let upper = match query.before {
            Some(before) => std::ops::Bound::Excluded(before),
            None => std::ops::Bound::Unbounded,
        };
        Ok(inner
            .records
            .range((std::ops::Bound::Unbounded, upper))
            .rev()
            .map(|(_, record)| record)
            .filter(|record| {
                query
                    .workflow
                    .as_ref()
                    .is_none_or(|w| *w == record.workflow)
            })
            .filter(|record| query.status.is_none_or(|s| s == record.status))
            .take(limit)
            .cloned()
            .collect())
    }

    async fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.lock().meta.get(key).cloned())
    }

    async fn meta_prefix(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        Ok(self
            .lock()
            .meta
            .range::<str, _>((
                std::ops::Bound::Included(prefix),
                std::ops::Bound::Unbounded,
            ))
            .take_while(|(key, _)| key.starts_with(prefix))
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect())
    }

    async fn prune(&self, retention: Retention, now: Timestamp) -> Result<usize, StoreError> {
        let mut inner = self.lock();
        let mut finished: Vec<(Timestamp, ExecutionId)> = inner
            .records
            .values()
            .filter(|record| record.status.is_finished())
            .map(|record| (finished_time(record), record.id))
            .collect();
        finished.sort_unstable();
        let total = finished.len();
        let mut removed = 0;
        for (index, (time, id)) in finished.into_iter().enumerate() {
            if !beyond_retention(retention, index, total, time, now) {
                break;
            }
            inner.records.remove(&id);
            inner.journals.remove(&id);
            removed += 1;
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    crate::store_conformance_tests!(crate::store::conformance::MemoryHarness);
}
