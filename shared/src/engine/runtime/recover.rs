//! Recovery: resuming unfinished journals (after a restart, or adopted from a process that
//! died on a shared store) by replaying them into fresh machines.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::flow::Workflow;
use crate::store::{StoreError, StoreWrite};

use super::super::journal::*;
use super::super::machine::{Command, Machine};
use super::driver::Driver;
use super::{Runtime, lock};

impl Runtime {
    /// Resumes every unfinished execution from its journal that this process does not drive
    /// yet. Call at start, after the workflows are loaded; a store shared by several
    /// processes (the hub's SQL journal) hands over the executions of processes that died, so
    /// calling it again later adopts those (it is idempotent for this process' own work).
    ///
    /// Skipped: executions running here, and executions waiting here for a `concurrency`
    /// slot (queued, or handed a slot and about to start). Because an execution is marked
    /// running before its first write and its last write lands before it is unmarked, one
    /// that is neither is re-read first: an execution that finished while this call ran is
    /// not resumed from its stale journal. Queued executions are taken after the running
    /// ones, and start at once when their slot has room. Returns how many it took up.
    pub async fn recover(&self) -> Result<usize, StoreError> {
        let mut unfinished = self.inner.store.unfinished().await?;
        // Running ones first, so that queued ones see the slots they occupy.
        unfinished.sort_by_key(|(record, _)| record.status == ExecutionStatus::Queued);
        let mut resumed = 0;
        for (record, journal) in unfinished {
            if self.drives(&record) {
                continue;
            }
            // The list may predate this execution's end here.
            match self.inner.store.execution(record.id).await? {
                Some(fresh) if fresh.finished_at.is_none() && !self.drives(&fresh) => {}
                _ => continue,
            }
            resumed += 1;
            let Some(wf) = self.workflow(&record.workflow, Some(record.version)) else {
                let mut failed = record.clone();
                failed.status = ExecutionStatus::Failed;
                failed.finished_at = Some(Timestamp::now());
                failed.error = Some(ErrorInfo::new(
                    "internal",
                    format!(
                        "workflow {} version {} is no longer loaded",
                        record.workflow, record.version
                    ),
                ));
                self.inner
                    .store
                    .write(vec![StoreWrite::Update(failed)])
                    .await?;
                continue;
            };
            if let (Some(concurrency), Some(key)) = (&wf.concurrency, &record.concurrency_key) {
                let mut slots = lock(&self.inner.slots);
                let slot = slots.entry((wf.name.to_string(), key.clone())).or_default();
                if record.status == ExecutionStatus::Queued
                    && slot.running.len() >= concurrency.limit.max(1) as usize
                {
                    slot.queue.push_back(record.id);
                    continue;
                }
                slot.running.push(record.id);
            }
            self.resume(wf, record, journal).await?;
        }
        Ok(resumed)
    }

    /// Whether this process drives `record` already: running, or holding or awaiting a
    /// concurrency slot.
    fn drives(&self, record: &ExecutionRecord) -> bool {
        if lock(&self.inner.running).contains_key(&record.id) {
            return true;
        }
        let Some(key) = &record.concurrency_key else {
            return false;
        };
        lock(&self.inner.slots)
            .get(&(record.workflow.clone(), key.clone()))
            .is_some_and(|slot| {
                slot.running.contains(&record.id) || slot.queue.contains(&record.id)
            })
    }

    /// Resumes the stored, unfinished execution `record` from its journal in its workflow
    /// version (a queued execution whose turn came; one whose submitter left).
    pub(super) async fn resume_stored(&self, record: ExecutionRecord) -> Result<(), StoreError> {
        let journal = self.inner.store.journal(record.id).await?;
        let Some(wf) = self.workflow(&record.workflow, Some(record.version)) else {
            return Err(StoreError::Corrupt(format!(
                "the workflow version of execution {} is gone",
                record.id
            )));
        };
        self.resume(wf, record, journal).await
    }

    pub(super) async fn resume(
        &self,
        wf: Arc<Workflow>,
        mut record: ExecutionRecord,
        journal: Vec<Fact>,
    ) -> Result<(), StoreError> {
        let Some(machine) = Machine::replay(wf, record.id, &journal, self.lent().environment)
        else {
            return Err(StoreError::Corrupt(format!(
                "execution {} has no start fact",
                record.id
            )));
        };
        let mut writes = Vec::new();
        if record.status == ExecutionStatus::Queued {
            record.status = ExecutionStatus::Running;
            writes.push(StoreWrite::Update(record.clone()));
        }
        let outstanding: VecDeque<Command> = machine.outstanding().into();
        let permit = self
            .inner
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| StoreError::Closed)?;
        let seq = u32::try_from(journal.len().saturating_sub(1)).unwrap_or(u32::MAX);
        let driver = Driver::new(
            self.clone(),
            machine,
            record,
            seq,
            writes,
            outstanding,
            permit,
        );
        driver.begin().await
    }
}
