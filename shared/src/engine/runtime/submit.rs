//! Admission and the first durable write: `if`/`unless`, the concurrency key and slot, the
//! `Create` batch (with the de-duplication marks when keyed), then the driver's first settle.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::oneshot;

use crate::flow::Workflow;
use crate::store::StoreWrite;
use crate::{Map, Value};

use super::super::journal::*;
use super::super::machine::Machine;
use super::super::observe::RuntimeEvent;
use super::super::scope::{Environment, Globals, Locals, View};
use super::concurrency::Claim;
use super::driver::Driver;
use super::{Lent, Runtime, Submission, SubmitError, Watch, lock};

impl Runtime {
    /// Starts an execution of the newest version of `workflow` for `event`. Returns once the
    /// execution is durably recorded (or skipped / dropped).
    pub async fn submit(
        &self,
        workflow: &str,
        event: Event,
        inputs: Value,
    ) -> Result<Submission, SubmitError> {
        let wf = self
            .workflow(workflow, None)
            .ok_or_else(|| SubmitError::UnknownWorkflow(workflow.to_string()))?;
        let lent = self.lent();
        if !admitted(&wf, &event, &inputs, &lent)? {
            self.inner.stats.skipped.fetch_add(1, Ordering::Relaxed);
            return Ok(Submission::Skipped);
        }
        let id = ExecutionId::new();
        let key = concurrency_key(&wf, &event, &inputs, &lent)?;
        Box::pin(self.start(wf, id, event, inputs, None, key, Vec::new())).await
    }

    /// Like [`Runtime::submit`], and also returns a [`Watch`] on the execution's end, set up
    /// before it starts — the request/response path (`http` with `response: sync`) needs no
    /// store read to learn the result.
    pub async fn submit_watched(
        &self,
        workflow: &str,
        event: Event,
        inputs: Value,
    ) -> Result<(Submission, Option<Watch>), SubmitError> {
        let wf = self
            .workflow(workflow, None)
            .ok_or_else(|| SubmitError::UnknownWorkflow(workflow.to_string()))?;
        let lent = self.lent();
        if !admitted(&wf, &event, &inputs, &lent)? {
            self.inner.stats.skipped.fetch_add(1, Ordering::Relaxed);
            return Ok((Submission::Skipped, None));
        }
        let id = ExecutionId::new();
        let key = concurrency_key(&wf, &event, &inputs, &lent)?;
        let (tx, rx) = oneshot::channel();
        lock(&self.inner.subscribers)
            .entry(id)
            .or_default()
            .push(tx);
        let submitted = Box::pin(self.start(wf, id, event, inputs, None, key, Vec::new())).await;
        match submitted {
            Ok(Submission::Accepted(id)) => Ok((Submission::Accepted(id), Some(Watch(rx)))),
            other => {
                lock(&self.inner.subscribers).remove(&id);
                other.map(|submission| (submission, None))
            }
        }
    }

    /// Callers box this future (`Box::pin(self.start(…))`): its state is ~8 KiB (the event,
    /// the start fact, the record and the driver's first settle and flush live in it), and
    /// unboxed it was copied by value into every future that awaits it and again into each
    /// `join_all` / `FuturesUnordered` slot of a trigger's batch — `memmove` was 14 % of the
    /// engine thread. Boxed, a submission's future is 0.7–1.2 KiB and the state is written
    /// once (docs/performance.md, "Session 10").
    #[allow(
        clippy::too_many_arguments,
        reason = "private; every caller passes each part explicitly"
    )]
    pub(super) async fn start(
        &self,
        wf: Arc<Workflow>,
        id: ExecutionId,
        event: Event,
        inputs: Value,
        parent: Option<ParentLink>,
        key: Option<String>,
        marks: Vec<StoreWrite>,
    ) -> Result<Submission, SubmitError> {
        if self.inner.shutdown.is_cancelled() {
            return Err(SubmitError::ShuttingDown);
        }
        let event_time = self.inner.observer.as_ref().and_then(|_| {
            chrono::DateTime::parse_from_rfc3339(&event.time)
                .ok()
                .map(|t| Timestamp(t.timestamp_millis()))
        });
        let started = Fact::Started {
            workflow: wf.name.to_string(),
            version: wf.version,
            event,
            inputs,
            parent: parent.clone(),
            at: Timestamp::now(),
        };
        let mut record = ExecutionRecord {
            id,
            workflow: wf.name.to_string(),
            version: wf.version,
            status: ExecutionStatus::Running,
            created_at: started.at(),
            finished_at: None,
            output: Value::Null,
            error: None,
            steps: Vec::new(),
            parent,
            concurrency_key: None,
        };
        if let (Some(concurrency), Some(key)) = (&wf.concurrency, key) {
            let claim = self.claim_slot(wf.name.as_str(), concurrency, key.clone(), id);
            record.concurrency_key = Some(key);
            match claim {
                Claim::Run => {}
                Claim::Drop => {
                    self.inner.stats.dropped.fetch_add(1, Ordering::Relaxed);
                    return Ok(Submission::Dropped);
                }
                Claim::Queue => record.status = ExecutionStatus::Queued,
                Claim::Replace(old) => {
                    Box::pin(self.cancel(
                        old,
                        "replaced by a newer execution (concurrency overflow: replace)",
                    ))
                    .await;
                }
            }
            if record.status == ExecutionStatus::Queued {
                let observed = self.inner.observer.as_ref().map(|_| record.clone());
                let key = record.concurrency_key.clone().unwrap_or_default();
                let mut batch = vec![StoreWrite::Create { record, started }];
                // Deletes first: a mark written here is never undone by one of them.
                batch.extend(self.take_forgetting());
                batch.extend(marks);
                // On a task of its own: the queue's bookkeeping must follow the write even if
                // the submitter stops waiting (an HTTP client that hangs up).
                let runtime = self.clone();
                let workflow = wf.name.to_string();
                let written = self
                    .inner
                    .tasks
                    .spawn(async move {
                        let written = runtime.inner.store.write(batch).await;
                        runtime.queued_recorded(&workflow, &key, id, written.is_ok());
                        written
                    })
                    .await
                    .map_err(|_| SubmitError::ShuttingDown)?;
                written?;
                if let Some(record) = observed {
                    self.observe(&RuntimeEvent::ExecutionStarted {
                        record: &record,
                        event_time,
                    });
                }
                return Ok(Submission::Accepted(id));
            }
        }
        let slot = record
            .concurrency_key
            .clone()
            .map(|key| (wf.name.to_string(), key));
        // A submitter that stops waiting (an HTTP client hanging up drops its handler) drops
        // the execution half-begun: the guard hands it to `adopt_abandoned`.
        let mut guard = Abandoned {
            runtime: self,
            id,
            slot,
            armed: true,
        };
        // Deletes first: a mark written here is never undone by one of them.
        let mut writes = self.take_forgetting();
        if writes.is_empty() {
            writes = marks;
        } else {
            writes.extend(marks);
        }
        let begun = self
            .begin_execution(wf, started, record, writes, event_time)
            .await;
        guard.armed = false;
        let slot = guard.slot.take();
        if begun.is_err()
            && let Some((workflow, key)) = slot
        {
            self.release(&workflow, key, id);
        }
        begun?;
        self.inner.stats.started.fetch_add(1, Ordering::Relaxed);
        Ok(Submission::Accepted(id))
    }

    /// Takes over an execution whose submitter stopped waiting in `begin_execution`: its
    /// `Create` may have been on its way to the store. Once the store has it, it is resumed
    /// from its journal like after a restart; if it never lands, its concurrency slot is
    /// freed. (The SQL stores do not order reads after queued writes, hence the retries.)
    async fn adopt_abandoned(&self, id: ExecutionId, slot: Option<(String, String)>) {
        lock(&self.inner.running).remove(&id);
        for _ in 0..ADOPT_TRIES {
            if let Ok(Some(record)) = self.inner.store.execution(id).await {
                if record.finished_at.is_some() {
                    // Finished in its first write (pure steps only): what the driver would
                    // have done next — free its slot, answer its waiters.
                    self.finished(record);
                    return;
                }
                if let Err(error) = self.resume_stored(record).await {
                    tracing::error!(execution = %id, %error, "resuming an execution its submitter left failed");
                }
                return;
            }
            tokio::time::sleep(ADOPT_RETRY).await;
        }
        lock(&self.inner.subscribers).remove(&id);
        if let Some((workflow, key)) = slot {
            self.release(&workflow, key, id);
        }
    }

    /// Waits for a run slot of the runtime (`max_running`), then runs the new execution up
    /// to its first durable write.
    async fn begin_execution(
        &self,
        wf: Arc<Workflow>,
        started: Fact,
        record: ExecutionRecord,
        marks: Vec<StoreWrite>,
        event_time: Option<Timestamp>,
    ) -> Result<(), SubmitError> {
        let id = record.id;
        let permit = tokio::select! {
            biased;
            () = self.inner.shutdown.cancelled() => return Err(SubmitError::ShuttingDown),
            permit = self.inner.permits.clone().acquire_owned() => permit.map_err(|_| SubmitError::ShuttingDown)?,
        };
        // The start fact moves into the machine and comes back for the `Create` at the
        // first flush (the driver's `create`): a pure execution's event is never copied.
        let machine = Machine::begin(wf, id, started, self.lent().environment);
        if self.inner.observer.is_some() {
            self.observe(&RuntimeEvent::ExecutionStarted {
                record: &record,
                event_time,
            });
        }
        let driver = Driver::new(
            self.clone(),
            machine,
            record,
            0,
            marks,
            VecDeque::new(),
            permit,
        )
        .creating();
        driver.begin().await?;
        Ok(())
    }
}

/// How often, and how far apart, an abandoned execution's record is looked for.
const ADOPT_TRIES: u32 = 5;
const ADOPT_RETRY: std::time::Duration = std::time::Duration::from_millis(200);

/// Armed while a submitter waits for its execution to begin; dropped with the submitter's
/// future, it hands the execution to [`Runtime::adopt_abandoned`]. Disarmed once begun.
struct Abandoned<'a> {
    runtime: &'a Runtime,
    id: ExecutionId,
    slot: Option<(String, String)>,
    armed: bool,
}

impl Drop for Abandoned<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        // Outside a runtime (the process is stopping) recovery at the next start takes over.
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let runtime = self.runtime.clone();
        let (id, slot) = (self.id, self.slot.take());
        self.runtime
            .inner
            .tasks
            .spawn(async move { runtime.adopt_abandoned(id, slot).await });
    }
}

/// Evaluates the workflow-level `if` / `unless` against an event.
pub(super) fn admitted(
    wf: &Workflow,
    event: &Event,
    inputs: &Value,
    lent: &Lent,
) -> Result<bool, SubmitError> {
    if wf.when.is_none() && wf.unless.is_none() {
        return Ok(true);
    }
    let globals = event_globals(wf, event, inputs, &lent.environment);
    let locals = Locals::default();
    let view = View {
        globals: &globals,
        locals: &locals,
    };
    if let Some(when) = &wf.when {
        let ok = when.eval_bool(&view).map_err(|e| SubmitError::Expression {
            what: "if",
            message: lent.redactor.redact_str(&e.message),
        })?;
        if !ok {
            return Ok(false);
        }
    }
    if let Some(unless) = &wf.unless {
        let hit = unless
            .eval_bool(&view)
            .map_err(|e| SubmitError::Expression {
                what: "unless",
                message: lent.redactor.redact_str(&e.message),
            })?;
        if hit {
            return Ok(false);
        }
    }
    Ok(true)
}

pub(super) fn concurrency_key(
    wf: &Workflow,
    event: &Event,
    inputs: &Value,
    lent: &Lent,
) -> Result<Option<String>, SubmitError> {
    let Some(concurrency) = &wf.concurrency else {
        return Ok(None);
    };
    let Some(template) = &concurrency.key else {
        return Ok(Some(String::new()));
    };
    let globals = event_globals(wf, event, inputs, &lent.environment);
    let locals = Locals::default();
    let value = template
        .eval(&View {
            globals: &globals,
            locals: &locals,
        })
        .map_err(|e| SubmitError::Expression {
            what: "concurrency key",
            message: lent.redactor.redact_str(&e.message),
        })?;
    Ok(Some(match value {
        Value::String(s) => s,
        other => other.to_string(),
    }))
}

/// The names visible before an execution exists (workflow `if`, `unless`, concurrency key).
fn event_globals(
    wf: &Workflow,
    event: &Event,
    inputs: &Value,
    environment: &Arc<Environment>,
) -> Globals {
    let inputs = super::super::interpret::resolve_inputs(wf, inputs.clone())
        .unwrap_or_else(|_| inputs.clone());
    Globals {
        event: event.to_value(),
        inputs,
        vars: Value::Object(Map::new()),
        steps: Value::Object(Map::new()),
        execution: serde_json::json!({ "workflow": wf.name.as_str(), "version": wf.version }),
        environment: environment.for_event(event),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::DedupeMark;
    use super::*;
    use crate::trigger::testing;

    /// Triggers hold hundreds of submissions at once and every combinator moves them by
    /// value: a submission's future must stay small (the execution's state is boxed inside).
    #[tokio::test]
    async fn a_submissions_future_stays_small() {
        let runtime = testing::runtime(
            testing::memory(),
            &[
                "reactor: 1\nname: w\ntriggers:\n  - interval: { every: 1h }\nsteps:\n  - action: transform\n    with: { value: 1 }\n",
            ],
        );
        let event = || Event::new("t", "s", json!({}));
        let plain = runtime.submit("w", event(), json!({}));
        let watched = runtime.submit_watched("w", event(), json!({}));
        let keyed = runtime.submit_once("w", event(), json!({}), DedupeMark::new("k", json!(1)));
        for (what, size) in [
            ("submit", std::mem::size_of_val(&plain)),
            ("submit_watched", std::mem::size_of_val(&watched)),
            ("submit_once", std::mem::size_of_val(&keyed)),
        ] {
            assert!(size <= 2048, "{what}'s future is {size} bytes");
        }
        assert!(matches!(plain.await, Ok(Submission::Accepted(_))));
    }
}
