//! One execution's task: run the machine's commands, flush the journal, launch side effects,
//! wait for the next fact (see the module docs of `runtime`).

use std::collections::{HashMap, VecDeque};

use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio_util::sync::CancellationToken;

use crate::Value;
use crate::action::Effect;
use crate::store::{StoreError, StoreWrite};

use super::super::journal::*;
use super::super::machine::{ActionCommand, Command, Machine};
use super::effects::{perform, run_child};
use super::{Input, Running, Runtime, lock};

/// Capacity of each execution's inbox.
const INBOX_CAPACITY: usize = 64;

/// Something to start once the journal is flushed.
enum Launch {
    Action(ActionCommand),
    Timer {
        key: String,
        at: Timestamp,
    },
    Child {
        key: String,
        child: ExecutionId,
        workflow: String,
        version: Option<u32>,
        input: Value,
        wait: bool,
    },
    Emit {
        key: String,
        event: Event,
        topic: Option<String>,
    },
}

/// What stands in for a record lent to the store during a write: its identity and status,
/// nothing that allocates.
fn skeleton(record: &ExecutionRecord) -> ExecutionRecord {
    ExecutionRecord {
        id: record.id,
        workflow: String::new(),
        version: record.version,
        status: record.status,
        created_at: record.created_at,
        finished_at: record.finished_at,
        output: Value::Null,
        error: None,
        steps: Vec::new(),
        parent: None,
        concurrency_key: None,
    }
}

/// One execution's task state.
pub(super) struct Driver {
    runtime: Runtime,
    machine: Machine,
    record: ExecutionRecord,
    seq: u32,
    buffer: Vec<StoreWrite>,
    queue: VecDeque<Command>,
    effects: HashMap<String, CancellationToken>,
    // Boxed: a channel allocates its slots in blocks of 32 when it is made, and an unboxed
    // `Input` (a whole `Fact`) made that an ~8 KiB allocation for every execution, most of
    // which (every pure one) never receive anything.
    inbox: mpsc::Receiver<Box<Input>>,
    sender: mpsc::Sender<Box<Input>>,
    _permit: OwnedSemaphorePermit,
    /// The execution is new: its first flush writes its `Create` (the record as it is then,
    /// and the start fact taken back from the machine) ahead of the buffer.
    create: bool,
}

impl Driver {
    pub(super) fn new(
        runtime: Runtime,
        machine: Machine,
        record: ExecutionRecord,
        seq: u32,
        buffer: Vec<StoreWrite>,
        queue: VecDeque<Command>,
        permit: OwnedSemaphorePermit,
    ) -> Driver {
        let (sender, inbox) = mpsc::channel(INBOX_CAPACITY);
        Driver {
            runtime,
            machine,
            record,
            seq,
            buffer,
            queue,
            effects: HashMap::new(),
            inbox,
            sender,
            _permit: permit,
            create: false,
        }
    }

    /// Marks the execution as new (see `create`); its machine came from [`Machine::begin`].
    pub(super) fn creating(mut self) -> Driver {
        self.create = true;
        self
    }

    /// Runs the pure prefix, makes the execution durable, then continues as a task.
    pub(super) async fn begin(mut self) -> Result<(), StoreError> {
        let id = self.record.id;
        lock(&self.runtime.inner.running).insert(
            id,
            Running {
                inbox: self.sender.clone(),
            },
        );
        let launches = self.settle().await;
        if let Err(error) = self.flush().await {
            lock(&self.runtime.inner.running).remove(&id);
            return Err(error);
        }
        if self.machine.completion().is_some() {
            let runtime = self.runtime.clone();
            runtime.finished(self.record);
            return Ok(());
        }
        self.launch(launches);
        let tasks = self.runtime.inner.tasks.clone();
        tasks.spawn(self.run());
        Ok(())
    }

    async fn run(mut self) {
        let shutdown = self.runtime.inner.shutdown.clone();
        let mut completed = false;
        loop {
            let input = tokio::select! {
                biased;
                // Cancel-safe: nothing is half-done between iterations; the journal holds
                // everything applied so far and recovery resumes from it.
                () = shutdown.cancelled() => break,
                input = self.inbox.recv() => match input { Some(input) => input, None => break },
            };
            let fact = match *input {
                Input::Fact(fact) => fact,
                Input::Offer { key, event } => {
                    if !self.machine.offer_event(&key, &event) {
                        continue;
                    }
                    lock(&self.runtime.inner.waiters).remove(&(self.record.id, key.clone()));
                    Fact::EventReceived {
                        key,
                        event,
                        at: Timestamp::now(),
                    }
                }
            };
            let relevant = match &fact {
                Fact::CancelRequested { .. } => true,
                Fact::EffectFinished { key, .. }
                | Fact::TimerFired { key, .. }
                | Fact::EventReceived { key, .. }
                | Fact::ChildStarted { key, .. } => {
                    self.effects.remove(key);
                    self.machine.is_pending(key)
                }
                _ => false,
            };
            if !relevant {
                continue;
            }
            self.apply(fact);
            let launches = self.settle().await;
            if let Err(error) = self.flush().await {
                // The journal could not be written: stop here; the execution resumes from
                // what is durable after the next start.
                tracing::error!(execution = %self.record.id, %error, "journal write failed; execution paused");
                break;
            }
            if self.machine.completion().is_some() {
                completed = true;
                break;
            }
            self.launch(launches);
        }
        for token in self.effects.values() {
            token.cancel();
        }
        if completed {
            let runtime = self.runtime.clone();
            runtime.finished(self.record);
        }
    }

    fn apply(&mut self, fact: Fact) {
        self.seq += 1;
        self.machine.apply(&fact);
        self.buffer.push(StoreWrite::Append {
            id: self.record.id,
            seq: self.seq,
            fact,
        });
    }

    /// Performs commands until the machine waits on the outside world; returns the side
    /// effects to start after the next flush.
    async fn settle(&mut self) -> Vec<Launch> {
        let mut launches = Vec::new();
        loop {
            self.queue.extend(self.machine.take_commands());
            let Some(command) = self.queue.pop_front() else {
                break;
            };
            match command {
                Command::RunAction(action) => {
                    let effect = self
                        .runtime
                        .inner
                        .actions
                        .get(&action.action)
                        .map(|a| a.spec().effect);
                    match effect {
                        Some(Effect::Pure) | None => {
                            let outcome = perform(
                                &self.runtime,
                                self.record.id,
                                &self.record.workflow,
                                &action,
                                CancellationToken::new(),
                            )
                            .await;
                            let at = Timestamp::now();
                            self.apply(Fact::EffectFinished {
                                key: action.key,
                                attempt: action.attempt,
                                outcome,
                                at,
                            });
                        }
                        Some(Effect::SideEffect) => {
                            let at = Timestamp::now();
                            self.seq += 1;
                            let fact = Fact::EffectStarted {
                                key: action.key.clone(),
                                attempt: action.attempt,
                                at,
                            };
                            self.buffer.push(StoreWrite::Append {
                                id: self.record.id,
                                seq: self.seq,
                                fact,
                            });
                            launches.push(Launch::Action(action));
                        }
                    }
                }
                Command::StartTimer { key, at } => launches.push(Launch::Timer { key, at }),
                Command::AwaitEvent { key, pattern } => {
                    lock(&self.runtime.inner.waiters).insert((self.record.id, key), pattern);
                }
                Command::StartChild {
                    key,
                    child,
                    workflow,
                    version,
                    input,
                    wait,
                } => {
                    launches.push(Launch::Child {
                        key,
                        child,
                        workflow,
                        version,
                        input,
                        wait,
                    });
                }
                Command::Emit { key, event, topic } => {
                    launches.push(Launch::Emit { key, event, topic })
                }
                Command::Cancel { key } => {
                    if let Some(token) = self.effects.remove(&key) {
                        token.cancel();
                    }
                    lock(&self.runtime.inner.waiters).remove(&(self.record.id, key));
                }
            }
        }
        if let Some(status) = self
            .machine
            .completion()
            .map(|completion| completion.status)
        {
            self.record.status = status;
            if let Some((output, error)) = self.machine.take_result() {
                self.record.output = output;
                self.record.error = error;
            }
            self.record.finished_at = Some(Timestamp::now());
            self.record.steps = self.machine.take_step_records();
            self.runtime.redactor().redact_record(&mut self.record);
            // An execution that finishes before its first flush (pure workflows, sync http
            // replies) is created finished: one record write instead of create + update.
            if !self.create {
                self.buffer.push(StoreWrite::Update(self.record.clone()));
            }
        }
        launches
    }

    async fn flush(&mut self) -> Result<(), StoreError> {
        if self.create {
            let started = self.machine.take_started().ok_or_else(|| {
                StoreError::InvalidWrite(format!(
                    "execution {}: the start fact is missing",
                    self.record.id
                ))
            })?;
            self.create = false;
            let store = &self.runtime.inner.store;
            // A finished execution's record is needed after the write (its watchers get it):
            // moved into the `Create` and taken back when the store hands batches back, cloned
            // otherwise. Only `Ok` needs it back; after an error the task stops.
            let lend = self.record.status.is_finished() && store.returns_batches();
            let record = if lend {
                let skeleton = skeleton(&self.record);
                std::mem::replace(&mut self.record, skeleton)
            } else {
                self.record.clone()
            };
            // The `Create` goes first; built in place rather than inserted at the front of the
            // buffer (a reallocation and a move of every write behind it).
            let mut batch = Vec::with_capacity(self.buffer.len() + 1);
            batch.push(StoreWrite::Create { record, started });
            batch.append(&mut self.buffer);
            if !lend {
                return store.write(batch).await;
            }
            let (outcome, returned) = store.write_returning(batch).await;
            match returned.into_iter().next() {
                Some(StoreWrite::Create { record, .. }) => self.record = record,
                _ if outcome.is_ok() => {
                    return Err(StoreError::InvalidWrite(format!(
                        "execution {}: the store did not hand its record back",
                        self.record.id
                    )));
                }
                _ => {}
            }
            return outcome;
        }
        if self.buffer.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.buffer);
        self.runtime.inner.store.write(batch).await
    }

    fn launch(&mut self, launches: Vec<Launch>) {
        let id = self.record.id;
        for launch in launches {
            let token = self.runtime.inner.shutdown.child_token();
            let inbox = self.sender.clone();
            let runtime = self.runtime.clone();
            let (key, task): (String, futures::future::BoxFuture<'static, ()>) = match launch {
                Launch::Action(action) => {
                    let key = action.key.clone();
                    let cancel = token.clone();
                    // Not the whole record: an action needs only whose it is.
                    let workflow = self.record.workflow.clone();
                    (
                        key,
                        Box::pin(async move {
                            let outcome = perform(&runtime, id, &workflow, &action, cancel).await;
                            let fact = Fact::EffectFinished {
                                key: action.key,
                                attempt: action.attempt,
                                outcome,
                                at: Timestamp::now(),
                            };
                            let _ = inbox.send(Box::new(Input::Fact(fact))).await;
                        }),
                    )
                }
                Launch::Timer { key, at } => {
                    let cancel = token.clone();
                    (
                        key.clone(),
                        Box::pin(async move {
                            let wait = std::time::Duration::from_millis(
                                u64::try_from(at.0 - Timestamp::now().0).unwrap_or(0),
                            );
                            tokio::select! {
                                biased;
                                () = cancel.cancelled() => {}
                                () = tokio::time::sleep(wait) => {
                                    let fact = Fact::TimerFired { key, at: Timestamp::now().max(at) };
                                    let _ = inbox.send(Box::new(Input::Fact(fact))).await;
                                }
                            }
                        }),
                    )
                }
                Launch::Child {
                    key,
                    child,
                    workflow,
                    version,
                    input,
                    wait,
                } => (
                    key.clone(),
                    Box::pin(async move {
                        let fact =
                            run_child(&runtime, id, key, child, workflow, version, input, wait)
                                .await;
                        let _ = inbox.send(Box::new(Input::Fact(fact))).await;
                    }),
                ),
                Launch::Emit { key, event, topic } => (
                    key.clone(),
                    Box::pin(async move {
                        let outcome =
                            match runtime.inner.bus.publish(&event, topic.as_deref()).await {
                                Ok(()) => {
                                    runtime.deliver(&event).await;
                                    Outcome::Succeeded(serde_json::json!({ "id": event.id }))
                                }
                                Err(message) => {
                                    let mut error = ErrorInfo::new("emit", message);
                                    error.retryable = true;
                                    Outcome::Failed(error)
                                }
                            };
                        let _ = inbox
                            .send(Box::new(Input::Fact(Fact::EffectFinished {
                                key,
                                attempt: 1,
                                outcome,
                                at: Timestamp::now(),
                            })))
                            .await;
                    }),
                ),
            };
            self.effects.insert(key, token);
            self.runtime.inner.tasks.spawn(task);
        }
    }
}
