//! `concurrency`: run slots per evaluated key, and the queue of executions recorded as
//! `queued` that start, in arrival order, when a slot frees.

use std::collections::VecDeque;

use crate::flow::{Concurrency, Overflow};
use crate::store::StoreError;

use super::super::journal::*;
use super::{Runtime, lock};

#[derive(Default)]
pub(super) struct Slots {
    pub(super) running: Vec<ExecutionId>,
    pub(super) queue: VecDeque<ExecutionId>,
    /// Queued executions whose `Create` is not durable yet. One whose turn comes meanwhile
    /// takes its slot but is started by its submitter once the write is done
    /// ([`Runtime::queued_recorded`]): before that, the store may not have it.
    pub(super) unrecorded: Vec<ExecutionId>,
}

impl Slots {
    fn idle(&self) -> bool {
        self.running.is_empty() && self.queue.is_empty() && self.unrecorded.is_empty()
    }
}

/// What a new execution gets from its `concurrency` slot.
pub(super) enum Claim {
    /// A run slot: start now.
    Run,
    /// Every slot is taken and `overflow: queue`: record it `queued`; it starts when a slot
    /// frees.
    Queue,
    /// Every slot is taken and `overflow: drop`: refuse it.
    Drop,
    /// Every slot is taken and `overflow: replace`: it took the slot of this (oldest)
    /// execution, which must be cancelled.
    Replace(ExecutionId),
}

impl Runtime {
    /// Claims a slot of (`workflow`, `key`) for the new execution `id`, or applies the
    /// overflow policy when all `concurrency.limit` slots are taken.
    pub(super) fn claim_slot(
        &self,
        workflow: &str,
        concurrency: &Concurrency,
        key: String,
        id: ExecutionId,
    ) -> Claim {
        let limit = concurrency.limit.max(1) as usize;
        let mut slots = lock(&self.inner.slots);
        let slot = slots.entry((workflow.to_string(), key)).or_default();
        if slot.running.len() < limit {
            slot.running.push(id);
            return Claim::Run;
        }
        match concurrency.overflow {
            Overflow::Drop => Claim::Drop,
            Overflow::Queue => {
                slot.queue.push_back(id);
                slot.unrecorded.push(id);
                Claim::Queue
            }
            Overflow::Replace => {
                let old = slot.running.remove(0);
                slot.running.push(id);
                Claim::Replace(old)
            }
        }
    }

    /// Takes a queued execution out of its queue; whether it was queued here.
    pub(super) fn dequeue(&self, id: ExecutionId) -> bool {
        lock(&self.inner.slots).values_mut().any(|slot| {
            let before = slot.queue.len();
            slot.queue.retain(|queued| *queued != id);
            slot.queue.len() != before
        })
    }

    /// Frees `id`'s slot of (`workflow`, `key`) (it finished, or never started) and gives it
    /// to the next queued execution, started here once its `Create` is durable (else by its
    /// submitter).
    pub(super) fn release(&self, workflow: &str, key: String, id: ExecutionId) {
        let next = {
            let mut slots = lock(&self.inner.slots);
            let slot_key = (workflow.to_string(), key);
            let Some(slot) = slots.get_mut(&slot_key) else {
                return;
            };
            slot.running.retain(|running| *running != id);
            let next = slot.queue.pop_front();
            if let Some(next) = next {
                slot.running.push(next);
            }
            let recorded = next.filter(|next| !slot.unrecorded.contains(next));
            if slot.idle() {
                // Keys come from event data: forget idle ones so the map stays small.
                slots.remove(&slot_key);
            }
            recorded
        };
        if let Some(next) = next {
            self.start_queued(next);
        }
    }

    /// The submitter of a queued execution `id` is done writing its `Create` (`recorded`:
    /// durably). If its turn came meanwhile it starts now; if the write failed it leaves the
    /// queue, or gives its slot to the next one.
    pub(super) fn queued_recorded(
        &self,
        workflow: &str,
        key: &str,
        id: ExecutionId,
        recorded: bool,
    ) {
        let turn_came = {
            let mut slots = lock(&self.inner.slots);
            let slot_key = (workflow.to_string(), key.to_string());
            let Some(slot) = slots.get_mut(&slot_key) else {
                return;
            };
            slot.unrecorded.retain(|unrecorded| *unrecorded != id);
            if !recorded {
                slot.queue.retain(|queued| *queued != id);
            }
            let turn_came = slot.running.contains(&id);
            if slot.idle() {
                slots.remove(&slot_key);
            }
            turn_came
        };
        match (turn_came, recorded) {
            (true, true) => self.start_queued(id),
            (true, false) => self.release(workflow, key.to_string(), id),
            (false, _) => {}
        }
    }

    /// Loads the queued execution `id` (durably recorded) and runs it in its slot.
    fn start_queued(&self, id: ExecutionId) {
        let runtime = self.clone();
        self.inner.tasks.spawn(async move {
            let started = match runtime.inner.store.execution(id).await {
                Ok(Some(record)) => runtime.resume_stored(record).await,
                Ok(None) => Err(StoreError::Corrupt(format!(
                    "queued execution {id} vanished"
                ))),
                Err(error) => Err(error),
            };
            if let Err(error) = started {
                tracing::error!(execution = %id, %error, "starting a queued execution failed");
            }
        });
    }
}
