//! The driver: runs executions by performing their machines' commands.
//!
//! Each running execution is one task that owns its [`Machine`] and a bounded inbox of facts
//! (action results, timer fires, offered events, cancels). The task's loop:
//! 1. run the machine's commands; pure actions (`log`, `transform`) run inline and their
//!    results are applied at once;
//! 2. **flush** the journal (one batch, group-committed with other executions) — so every
//!    side effect's start, and every fact that led to it, is durable before it happens;
//! 3. launch the side effects (actions, timers, child workflows, emits);
//! 4. wait for the next fact, journal it, apply it, repeat.
//!
//! A new execution is written once for all of its pure prefix: an execution of pure steps
//! costs one write. After a crash, [`Runtime::recover`] replays each unfinished journal into
//! a fresh machine and performs what is outstanding; an action that had started and not
//! finished runs again with the same idempotency key.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use async_trait::async_trait;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::action::{ActionContext, ActionError, ActionRegistry, Effect};
use crate::flow::Workflow;
use crate::store::{Retention, Store, StoreError, StoreWrite};
use crate::{Map, Value};

use super::catalog::Catalog;
use super::journal::*;
use super::machine::{ActionCommand, Command, Machine, glob_match};
use super::observe::{Observer, RuntimeEvent, StepEvent};
use super::redact::Redactor;
use super::scope::{Environment, Globals, Locals, View};

/// Capacity of each execution's inbox.
const INBOX_CAPACITY: usize = 64;

/// Where emitted events go besides the runtime's own `wait` steps (event triggers, MQTT,
/// the hub). The default drops them.
#[async_trait]
pub trait EventBus: Send + Sync + 'static {
    async fn publish(&self, event: &Event, topic: Option<&str>) -> Result<(), String>;
}

#[derive(Debug)]
struct NoBus;

#[async_trait]
impl EventBus for NoBus {
    async fn publish(&self, _event: &Event, _topic: Option<&str>) -> Result<(), String> {
        Ok(())
    }
}

/// Runtime settings.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// Executions running at once; `submit` waits for a slot beyond this (backpressure).
    pub max_running: usize,
    pub retention: Retention,
    /// Prune after this many executions finished.
    pub prune_every: u64,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            max_running: 4096,
            retention: Retention::default(),
            prune_every: 1024,
        }
    }
}

/// What became of a submitted event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Submission {
    /// Durably recorded; running (or queued for a concurrency slot).
    Accepted(ExecutionId),
    /// `if`/`unless` rejected the event: counted, not stored.
    Skipped,
    /// `concurrency` with `overflow: drop` had no slot: counted, not stored.
    Dropped,
}

/// Why a submission failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SubmitError {
    #[error("no workflow named {0:?}")]
    UnknownWorkflow(String),
    #[error("evaluating the workflow's {what}: {message}")]
    Expression { what: &'static str, message: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the runtime is shutting down")]
    ShuttingDown,
}

/// The end of one execution, watched from before it started.
#[derive(Debug)]
pub struct Watch(oneshot::Receiver<ExecutionRecord>);

impl Watch {
    /// Waits for the execution's final record. Fails only when the runtime stopped first.
    pub async fn finished(self) -> Result<ExecutionRecord, StoreError> {
        self.0.await.map_err(|_| StoreError::Closed)
    }
}

/// The key that makes a submission happen at most once ([`Runtime::submit_once`]), and the
/// source position recorded with it.
#[derive(Clone, Debug, PartialEq)]
pub struct DedupeMark {
    /// Unique per source message within the workflow, stable across redeliveries, e.g.
    /// `kafka/{topic}/{partition}/{offset}`. At most 1 KiB (longer keys are refused).
    pub key: String,
    /// Where the message sits in its source (offset, stream id, LSN, binlog file:pos).
    pub position: Value,
}

impl DedupeMark {
    pub fn new(key: impl Into<String>, position: Value) -> DedupeMark {
        DedupeMark {
            key: key.into(),
            position,
        }
    }
}

/// What a de-duplication mark holds: the execution the key started, when, and the source
/// position.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MarkRecord {
    pub execution: ExecutionId,
    pub at: Timestamp,
    pub position: Value,
}

/// The longest accepted [`DedupeMark::key`], in bytes.
pub const MAX_MARK_KEY: usize = 1024;

/// Where marks live in the store's meta space.
fn mark_key(workflow: &str, key: &str) -> String {
    format!("dedupe/{workflow}/{key}")
}

/// Holds the per-key lock of a keyed submission; releases the map entry when the last
/// holder goes (also when the submitting future is dropped).
struct MarkingGuard {
    runtime: Runtime,
    key: String,
    lock: Arc<tokio::sync::Mutex<()>>,
    _held: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl MarkingGuard {
    async fn lock(runtime: &Runtime, key: &str) -> MarkingGuard {
        let lock = lock(&runtime.inner.marking)
            .entry(key.to_string())
            .or_default()
            .clone();
        let mut guard = MarkingGuard {
            runtime: runtime.clone(),
            key: key.to_string(),
            lock: lock.clone(),
            _held: None,
        };
        guard._held = Some(lock.lock_owned().await);
        guard
    }
}

impl Drop for MarkingGuard {
    fn drop(&mut self) {
        self._held = None;
        let mut marking = lock(&self.runtime.inner.marking);
        // Two references: the map's and ours. More: someone else is waiting for the key.
        if Arc::strong_count(&self.lock) <= 2 {
            marking.remove(&self.key);
        }
    }
}

/// Counters for metrics.
#[derive(Debug, Default)]
pub struct Stats {
    pub started: AtomicU64,
    pub skipped: AtomicU64,
    pub dropped: AtomicU64,
    pub succeeded: AtomicU64,
    pub failed: AtomicU64,
    pub cancelled: AtomicU64,
    /// Keyed submissions ([`Runtime::submit_once`]) whose key was already recorded.
    pub deduplicated: AtomicU64,
}

enum Input {
    Fact(Fact),
    Offer { key: String, event: Event },
}

struct Running {
    inbox: mpsc::Sender<Box<Input>>,
}

#[derive(Default)]
struct Slots {
    running: Vec<ExecutionId>,
    queue: VecDeque<ExecutionId>,
}

struct Inner {
    store: Arc<dyn Store>,
    actions: ActionRegistry,
    catalog: RwLock<Catalog>,
    lent: RwLock<Lent>,
    bus: Arc<dyn EventBus>,
    observer: Option<Arc<dyn Observer>>,
    config: RuntimeConfig,
    permits: Arc<Semaphore>,
    running: Mutex<HashMap<ExecutionId, Running>>,
    waiters: Mutex<HashMap<(ExecutionId, String), String>>,
    subscribers: Mutex<HashMap<ExecutionId, Vec<oneshot::Sender<ExecutionRecord>>>>,
    slots: Mutex<HashMap<(String, String), Slots>>,
    /// Keyed submissions in progress, one lock per mark key (see [`Runtime::submit_once`]).
    marking: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    stats: Stats,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

/// The environment lent to executions and the redactor of its secrets, swapped together.
#[derive(Clone)]
struct Lent {
    environment: Arc<Environment>,
    redactor: Redactor,
}

impl Lent {
    fn new(environment: Environment) -> Lent {
        Lent {
            redactor: Redactor::from_secrets(&environment.secrets),
            environment: Arc::new(environment),
        }
    }
}

/// The engine's driver, shared by triggers, the API and the CLI. Cheap to clone.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("config", &self.inner.config)
            .finish()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Runtime {
    pub fn new(
        store: Arc<dyn Store>,
        actions: ActionRegistry,
        environment: Environment,
        config: RuntimeConfig,
    ) -> Runtime {
        Runtime {
            inner: Arc::new(Inner {
                store,
                actions,
                catalog: RwLock::new(Catalog::default()),
                lent: RwLock::new(Lent::new(environment)),
                bus: Arc::new(NoBus),
                observer: None,
                permits: Arc::new(Semaphore::new(config.max_running.max(1))),
                config,
                running: Mutex::default(),
                waiters: Mutex::default(),
                subscribers: Mutex::default(),
                slots: Mutex::default(),
                marking: Mutex::default(),
                stats: Stats::default(),
                tasks: TaskTracker::new(),
                shutdown: CancellationToken::new(),
            }),
        }
    }

    /// Sends emitted events to `bus` as well as to local `wait` steps. Call before starting.
    pub fn with_bus(self, bus: Arc<dyn EventBus>) -> Runtime {
        let mut inner = Arc::try_unwrap(self.inner)
            .unwrap_or_else(|_| panic!("with_bus must be called before the runtime is shared"));
        inner.bus = bus;
        Runtime {
            inner: Arc::new(inner),
        }
    }

    /// Tells `observer` about executions and steps as they start and finish (the hub's live
    /// stream and metrics). Call before starting. The observer must not block.
    pub fn with_observer(self, observer: Arc<dyn Observer>) -> Runtime {
        let mut inner = Arc::try_unwrap(self.inner).unwrap_or_else(|_| {
            panic!("with_observer must be called before the runtime is shared")
        });
        inner.observer = Some(observer);
        Runtime {
            inner: Arc::new(inner),
        }
    }

    /// Replaces the secrets executions see as `secrets.NAME` (and the values redacted from
    /// what is recorded). Executions already running keep the secrets they started with;
    /// values already recorded stay masked.
    pub fn set_secrets(&self, secrets: Map) {
        let mut lent = self.inner.lent.write().unwrap_or_else(|p| p.into_inner());
        let mut environment = Environment::clone(&lent.environment);
        environment.secrets = Value::Object(secrets);
        *lent = Lent::new(environment);
    }

    /// The redactor of the current secrets.
    pub fn redactor(&self) -> Redactor {
        self.lent().redactor
    }

    fn lent(&self) -> Lent {
        self.inner
            .lent
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Executions recorded and waiting for a `concurrency` slot in this process.
    pub fn queued(&self) -> usize {
        lock(&self.inner.slots)
            .values()
            .map(|s| s.queue.len())
            .sum()
    }

    /// Executions holding a run slot (running, or waiting on timers and events).
    pub fn running(&self) -> usize {
        lock(&self.inner.running).len()
    }

    /// Loads (or replaces) a workflow version.
    pub fn load(&self, workflow: Workflow) {
        self.inner
            .catalog
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(Arc::new(workflow));
    }

    pub fn workflow(&self, name: &str, version: Option<u32>) -> Option<Arc<Workflow>> {
        self.inner
            .catalog
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name, version)
    }

    pub fn workflows(&self) -> Vec<Arc<Workflow>> {
        self.inner
            .catalog
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .latest()
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// The allow-listed environment, secrets and device identity (triggers resolve their
    /// `secret` templates against it).
    pub fn environment(&self) -> Arc<Environment> {
        self.lent().environment
    }

    /// Whether every execution slot is taken: a new submission would wait.
    pub fn saturated(&self) -> bool {
        self.inner.permits.available_permits() == 0
    }

    pub fn stats(&self) -> &Stats {
        &self.inner.stats
    }

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
        self.start(wf, id, event, inputs, None, key, None).await
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
        let submitted = self.start(wf, id, event, inputs, None, key, None).await;
        match submitted {
            Ok(Submission::Accepted(id)) => Ok((Submission::Accepted(id), Some(Watch(rx)))),
            other => {
                lock(&self.inner.subscribers).remove(&id);
                other.map(|submission| (submission, None))
            }
        }
    }

    /// Like [`Runtime::submit`], at most once per `mark.key`: the first submission that is
    /// accepted writes a de-duplication mark (key `dedupe/{workflow}/{key}`, value
    /// [`MarkRecord`] with the source position) in the same atomic batch as the execution's
    /// `Create`. A later submission with the same key finds the mark and returns
    /// `Submission::Accepted` with the id recorded the first time, starting nothing (counted
    /// in [`Stats::deduplicated`]).
    ///
    /// This is what makes "record, then acknowledge the source" exactly-once across a crash:
    /// a message redelivered because the crash came between the durable record and the ack
    /// carries the same key (Kafka topic/partition/offset, stream sequence, LSN …) and is
    /// skipped. Submissions with the same key in this process are serialised; across
    /// processes sharing one store, the source must not hand the same message to two
    /// consumers at once (consumer groups and leader-only CDC see to that).
    ///
    /// Skipped (`if`/`unless`) and dropped (`concurrency`) events leave no mark: evaluated
    /// again on redelivery they give the same answer (dropped ones may be accepted then).
    /// Marks are removed with [`Runtime::forget_marks`] once the source has durably taken
    /// the acknowledgement (see docs/engine.md).
    pub async fn submit_once(
        &self,
        workflow: &str,
        event: Event,
        inputs: Value,
        mark: DedupeMark,
    ) -> Result<Submission, SubmitError> {
        let wf = self
            .workflow(workflow, None)
            .ok_or_else(|| SubmitError::UnknownWorkflow(workflow.to_string()))?;
        if mark.key.is_empty() || mark.key.len() > MAX_MARK_KEY {
            return Err(SubmitError::Store(StoreError::InvalidWrite(format!(
                "a de-duplication key must have 1 to {MAX_MARK_KEY} bytes, not {}",
                mark.key.len()
            ))));
        }
        let mark_key = mark_key(&wf.name.to_string(), &mark.key);
        let _serialised = MarkingGuard::lock(self, &mark_key).await;
        if let Some(existing) = self.mark_at(&mark_key).await? {
            self.inner
                .stats
                .deduplicated
                .fetch_add(1, Ordering::Relaxed);
            return Ok(Submission::Accepted(existing.execution));
        }
        let lent = self.lent();
        if !admitted(&wf, &event, &inputs, &lent)? {
            self.inner.stats.skipped.fetch_add(1, Ordering::Relaxed);
            return Ok(Submission::Skipped);
        }
        let id = ExecutionId::new();
        let key = concurrency_key(&wf, &event, &inputs, &lent)?;
        let record = MarkRecord {
            execution: id,
            at: Timestamp::now(),
            position: mark.position,
        };
        let value = serde_json::to_vec(&record)
            .map_err(|e| StoreError::InvalidWrite(format!("de-duplication mark: {e}")))?;
        let put = StoreWrite::PutMeta {
            key: mark_key,
            value: Some(value),
        };
        self.start(wf, id, event, inputs, None, key, Some(put))
            .await
    }

    /// The de-duplication mark of `key` for `workflow`, if one is recorded.
    pub async fn mark(&self, workflow: &str, key: &str) -> Result<Option<MarkRecord>, StoreError> {
        self.mark_at(&mark_key(workflow, key)).await
    }

    async fn mark_at(&self, mark_key: &str) -> Result<Option<MarkRecord>, StoreError> {
        match self.inner.store.meta(mark_key).await? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| StoreError::Corrupt(format!("de-duplication mark {mark_key:?}: {e}"))),
        }
    }

    /// Deletes the de-duplication marks of `keys` for `workflow` in one batch: call it once
    /// the source durably took the acknowledgement of those messages and can no longer
    /// redeliver them.
    pub async fn forget_marks(&self, workflow: &str, keys: &[String]) -> Result<(), StoreError> {
        if keys.is_empty() {
            return Ok(());
        }
        let batch = keys
            .iter()
            .map(|key| StoreWrite::PutMeta {
                key: mark_key(workflow, key),
                value: None,
            })
            .collect();
        self.inner.store.write(batch).await
    }

    #[allow(
        clippy::too_many_arguments,
        reason = "private; every caller passes each part explicitly"
    )]
    async fn start(
        &self,
        wf: Arc<Workflow>,
        id: ExecutionId,
        event: Event,
        inputs: Value,
        parent: Option<ParentLink>,
        key: Option<String>,
        mark: Option<StoreWrite>,
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
            let slot_key = (wf.name.to_string(), key.clone());
            record.concurrency_key = Some(key);
            let limit = concurrency.limit.max(1) as usize;
            let mut replaced = None;
            {
                let mut slots = lock(&self.inner.slots);
                let slot = slots.entry(slot_key).or_default();
                if slot.running.len() >= limit {
                    match concurrency.overflow {
                        crate::flow::Overflow::Drop => {
                            self.inner.stats.dropped.fetch_add(1, Ordering::Relaxed);
                            return Ok(Submission::Dropped);
                        }
                        crate::flow::Overflow::Queue => {
                            slot.queue.push_back(id);
                            record.status = ExecutionStatus::Queued;
                        }
                        crate::flow::Overflow::Replace => {
                            replaced = Some(slot.running.remove(0));
                            slot.running.push(id);
                        }
                    }
                } else {
                    slot.running.push(id);
                }
            }
            if let Some(old) = replaced {
                self.cancel(
                    old,
                    "replaced by a newer execution (concurrency overflow: replace)",
                )
                .await;
            }
            if record.status == ExecutionStatus::Queued {
                let observed = self.inner.observer.as_ref().map(|_| record.clone());
                let mut batch = vec![StoreWrite::Create { record, started }];
                batch.extend(mark);
                self.inner.store.write(batch).await?;
                if let Some(record) = observed {
                    self.observe(&RuntimeEvent::ExecutionStarted {
                        record: &record,
                        event_time,
                    });
                }
                return Ok(Submission::Accepted(id));
            }
        }
        let permit = tokio::select! {
            biased;
            () = self.inner.shutdown.cancelled() => return Err(SubmitError::ShuttingDown),
            permit = self.inner.permits.clone().acquire_owned() => permit.map_err(|_| SubmitError::ShuttingDown)?,
        };
        let machine = Machine::start(wf, id, &started, self.lent().environment);
        if self.inner.observer.is_some() {
            self.observe(&RuntimeEvent::ExecutionStarted {
                record: &record,
                event_time,
            });
        }
        let create = StoreWrite::Create {
            record: record.clone(),
            started,
        };
        let mut batch = vec![create];
        batch.extend(mark);
        let driver = Driver::new(
            self.clone(),
            machine,
            record,
            0,
            batch,
            VecDeque::new(),
            permit,
        );
        driver.begin().await?;
        self.inner.stats.started.fetch_add(1, Ordering::Relaxed);
        Ok(Submission::Accepted(id))
    }

    /// Waits until execution `id` has finished and returns its record.
    pub async fn wait(&self, id: ExecutionId) -> Result<ExecutionRecord, StoreError> {
        let (tx, rx) = oneshot::channel();
        lock(&self.inner.subscribers)
            .entry(id)
            .or_default()
            .push(tx);
        // An execution running here removes itself from `running` before it takes its
        // subscribers, so one seen running after subscribing will answer `rx`: no store read.
        if lock(&self.inner.running).contains_key(&id) {
            return rx.await.map_err(|_| StoreError::Closed);
        }
        let stored = self.inner.store.execution(id).await;
        match stored {
            Ok(Some(record)) if record.status.is_finished() => {
                // Nobody will take this subscription: the execution already finished.
                drop(rx);
                self.unsubscribe(id);
                Ok(record)
            }
            Err(error) => {
                drop(rx);
                self.unsubscribe(id);
                Err(error)
            }
            Ok(_) => rx.await.map_err(|_| StoreError::Closed),
        }
    }

    /// Drops the subscriptions of `id` whose receivers are gone.
    fn unsubscribe(&self, id: ExecutionId) {
        let mut subscribers = lock(&self.inner.subscribers);
        if let Some(waiting) = subscribers.get_mut(&id) {
            waiting.retain(|tx| !tx.is_closed());
            if waiting.is_empty() {
                subscribers.remove(&id);
            }
        }
    }

    /// Requests cancellation of a running or queued execution. Returns whether it was
    /// running or queued.
    pub async fn cancel(&self, id: ExecutionId, reason: &str) -> bool {
        let inbox = lock(&self.inner.running).get(&id).map(|r| r.inbox.clone());
        let fact = Fact::CancelRequested {
            reason: reason.to_string(),
            at: Timestamp::now(),
        };
        if let Some(inbox) = inbox {
            return inbox.send(Box::new(Input::Fact(fact))).await.is_ok();
        }
        // A queued execution has no task yet: take it out of its queue and record the end.
        let dequeued = lock(&self.inner.slots).values_mut().any(|slot| {
            let before = slot.queue.len();
            slot.queue.retain(|queued| *queued != id);
            slot.queue.len() != before
        });
        if !dequeued {
            return false;
        }
        let Ok(Some(mut record)) = self.inner.store.execution(id).await else {
            return false;
        };
        record.status = ExecutionStatus::Cancelled;
        record.finished_at = Some(Timestamp::now());
        record.error = Some(ErrorInfo::new("cancelled", format!("cancelled: {reason}")));
        if let Err(error) = self
            .inner
            .store
            .write(vec![StoreWrite::Update(record.clone())])
            .await
        {
            tracing::error!(execution = %id, %error, "recording the cancel of a queued execution failed");
            return false;
        }
        self.finished(record);
        true
    }

    /// Offers an event to every `wait` step whose pattern it matches.
    pub async fn deliver(&self, event: &Event) {
        let targets: Vec<(ExecutionId, String)> = lock(&self.inner.waiters)
            .iter()
            .filter(|(_, pattern)| glob_match(pattern, &event.event_type))
            .map(|(k, _)| k.clone())
            .collect();
        for (id, key) in targets {
            let inbox = lock(&self.inner.running).get(&id).map(|r| r.inbox.clone());
            if let Some(inbox) = inbox {
                let _ = inbox
                    .send(Box::new(Input::Offer {
                        key,
                        event: event.clone(),
                    }))
                    .await;
            }
        }
    }

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

    async fn resume(
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

    /// Stops every execution task at its next step boundary. The journal stays consistent:
    /// what was in flight resumes after the next start.
    pub async fn shutdown(&self) {
        self.inner.shutdown.cancel();
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }

    fn observe(&self, event: &RuntimeEvent<'_>) {
        if let Some(observer) = &self.inner.observer {
            observer.observe(event);
        }
    }

    /// Accounts for an execution's end and hands its final record to the subscribers (the
    /// last one gets it without a copy).
    fn finished(&self, record: ExecutionRecord) {
        self.observe(&RuntimeEvent::ExecutionFinished { record: &record });
        let stats = &self.inner.stats;
        match record.status {
            ExecutionStatus::Succeeded => stats.succeeded.fetch_add(1, Ordering::Relaxed),
            ExecutionStatus::Failed => stats.failed.fetch_add(1, Ordering::Relaxed),
            _ => stats.cancelled.fetch_add(1, Ordering::Relaxed),
        };
        lock(&self.inner.running).remove(&record.id);
        lock(&self.inner.waiters).retain(|(id, _), _| *id != record.id);
        let subscribers = lock(&self.inner.subscribers)
            .remove(&record.id)
            .unwrap_or_default();
        let done = stats.succeeded.load(Ordering::Relaxed)
            + stats.failed.load(Ordering::Relaxed)
            + stats.cancelled.load(Ordering::Relaxed);
        if self.inner.config.prune_every > 0 && done.is_multiple_of(self.inner.config.prune_every) {
            let store = self.inner.store.clone();
            let retention = self.inner.config.retention;
            self.inner.tasks.spawn(async move {
                if let Err(error) = store.prune(retention, Timestamp::now()).await {
                    tracing::warn!(%error, "pruning finished executions failed");
                }
            });
        }
        if let Some(key) = &record.concurrency_key {
            self.release_slot(&record, key.clone());
        }
        let mut subscribers = subscribers.into_iter().peekable();
        while let Some(subscriber) = subscribers.next() {
            let copy = if subscribers.peek().is_some() {
                record.clone()
            } else {
                // The last one: no copy needed (break: `record` is moved).
                let _ = subscriber.send(record);
                break;
            };
            let _ = subscriber.send(copy);
        }
    }

    fn release_slot(&self, record: &ExecutionRecord, key: String) {
        let next = {
            let mut slots = lock(&self.inner.slots);
            let slot_key = (record.workflow.clone(), key);
            let Some(slot) = slots.get_mut(&slot_key) else {
                return;
            };
            slot.running.retain(|id| *id != record.id);
            let next = slot.queue.pop_front();
            if let Some(next) = next {
                slot.running.push(next);
            }
            if slot.running.is_empty() && slot.queue.is_empty() {
                // Keys come from event data: forget idle ones so the map stays small.
                slots.remove(&slot_key);
            }
            next
        };
        if let Some(next) = next {
            let runtime = self.clone();
            self.inner.tasks.spawn(async move {
                let loaded = async {
                    let record = runtime.inner.store.execution(next).await?;
                    let journal = runtime.inner.store.journal(next).await?;
                    Ok::<_, StoreError>((record, journal))
                };
                match loaded.await {
                    Ok((Some(record), journal)) => match runtime.workflow(&record.workflow, Some(record.version)) {
                        Some(wf) => {
                            if let Err(error) = runtime.resume(wf, record, journal).await {
                                tracing::error!(execution = %next, %error, "starting a queued execution failed");
                            }
                        }
                        None => tracing::error!(execution = %next, "queued execution's workflow version is gone"),
                    },
                    Ok((None, _)) => tracing::error!(execution = %next, "queued execution vanished"),
                    Err(error) => tracing::error!(execution = %next, %error, "loading a queued execution failed"),
                }
            });
        }
    }
}

/// Evaluates the workflow-level `if` / `unless` against an event.
fn admitted(
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

fn concurrency_key(
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
    let inputs =
        super::interpret::resolve_inputs(wf, inputs.clone()).unwrap_or_else(|_| inputs.clone());
    Globals {
        event: event.to_value(),
        inputs,
        vars: Value::Object(Map::new()),
        steps: Value::Object(Map::new()),
        execution: serde_json::json!({ "workflow": wf.name.as_str(), "version": wf.version }),
        environment: environment.for_event(event),
    }
}

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

/// One execution's task state.
struct Driver {
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
}

impl Driver {
    fn new(
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
        }
    }

    /// Runs the pure prefix, makes the execution durable, then continues as a task.
    async fn begin(mut self) -> Result<(), StoreError> {
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
                                &self.record,
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
        if let Some(completion) = self.machine.completion() {
            self.record.status = completion.status;
            self.record.output = completion.output.clone();
            self.record.error = completion.error.clone();
            self.record.finished_at = Some(Timestamp::now());
            self.record.steps = self.machine.step_records();
            self.runtime.redactor().redact_record(&mut self.record);
            // An execution that finishes before its first flush (pure workflows, sync http
            // replies) is created finished: one record write instead of create + update.
            match self.buffer.first_mut() {
                Some(StoreWrite::Create { record, .. }) if record.id == self.record.id => {
                    record.clone_from(&self.record);
                }
                _ => self.buffer.push(StoreWrite::Update(self.record.clone())),
            }
        }
        launches
    }

    async fn flush(&mut self) -> Result<(), StoreError> {
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
            let record = self.record.clone();
            let (key, task): (String, futures::future::BoxFuture<'static, ()>) = match launch {
                Launch::Action(action) => {
                    let key = action.key.clone();
                    let cancel = token.clone();
                    (
                        key,
                        Box::pin(async move {
                            let outcome = perform(&runtime, &record, &action, cancel).await;
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

/// Runs one action and turns its result into an outcome.
async fn perform(
    runtime: &Runtime,
    record: &ExecutionRecord,
    command: &ActionCommand,
    cancel: CancellationToken,
) -> Outcome {
    let Some(action) = runtime.inner.actions.get(&command.action) else {
        return Outcome::Failed(ErrorInfo::new(
            "action",
            format!("unknown action {:?}", command.action),
        ));
    };
    let redactor = runtime.redactor();
    let context = ActionContext {
        execution: record.id.to_string(),
        workflow: record.workflow.clone(),
        step: command.step.clone(),
        attempt: command.attempt,
        idempotency_key: command.idempotency_key.clone(),
        cancel,
        redactor: redactor.clone(),
    };
    let step = |phase| StepEvent {
        execution: record.id,
        workflow: &record.workflow,
        step: &command.step,
        action: &command.action,
        attempt: command.attempt,
        phase,
    };
    runtime.observe(&RuntimeEvent::Step(step(None)));
    let began = std::time::Instant::now();
    let mut outcome = match action.execute(command.input.clone(), &context).await {
        Ok(output) => Outcome::Succeeded(output),
        Err(error) => Outcome::Failed(action_error(&command.action, error)),
    };
    // Before the outcome becomes a fact: the journal, the machine and replay all see it masked.
    redactor.redact_outcome(&mut outcome);
    runtime.observe(&RuntimeEvent::Step(step(Some((&outcome, began.elapsed())))));
    outcome
}

fn action_error(kind: &str, error: ActionError) -> ErrorInfo {
    let (message, status, retryable, cancelled) = match error {
        ActionError::Retryable { message, status } => (message, status, true, false),
        ActionError::Permanent { message, status } => (message, status, false, false),
        ActionError::Cancelled => ("cancelled".to_string(), None, false, true),
    };
    let mut info = ErrorInfo::new(if cancelled { "cancelled" } else { kind }, message);
    info.status = status;
    info.retryable = retryable;
    info
}

/// Starts (or, after a restart, finds) a child execution and reports the fact its parent
/// waits for.
#[allow(clippy::too_many_arguments)]
async fn run_child(
    runtime: &Runtime,
    parent: ExecutionId,
    key: String,
    child: ExecutionId,
    workflow: String,
    version: Option<u32>,
    input: Value,
    wait: bool,
) -> Fact {
    let failed = |key: String, message: String| {
        let mut error = ErrorInfo::new("call", message);
        error.retryable = false;
        Fact::EffectFinished {
            key,
            attempt: 1,
            outcome: Outcome::Failed(error),
            at: Timestamp::now(),
        }
    };
    let existing = match runtime.inner.store.execution(child).await {
        Ok(existing) => existing,
        Err(error) => return failed(key, format!("looking up child execution: {error}")),
    };
    if existing.is_none() {
        let Some(wf) = runtime.workflow(&workflow, version) else {
            let pinned = version.map_or(String::new(), |v| format!(" version {v}"));
            return failed(key, format!("no workflow named {workflow:?}{pinned}"));
        };
        let mut event = Event::new(
            "call",
            &format!("reactor:execution/{parent}"),
            input.clone(),
        );
        event.id = format!("{parent}:{key}");
        let link = ParentLink {
            execution: parent,
            key: key.clone(),
        };
        let started =
            Box::pin(runtime.start(wf, child, event, input, Some(link), None, None)).await;
        if let Err(error) = started {
            return failed(key, format!("starting {workflow:?}: {error}"));
        }
    }
    if !wait {
        return Fact::ChildStarted {
            key,
            child,
            at: Timestamp::now(),
        };
    }
    match runtime.wait(child).await {
        Ok(record) => {
            let outcome = match record.status {
                ExecutionStatus::Succeeded => Outcome::Succeeded(record.output),
                _ => {
                    let mut error = record.error.unwrap_or_else(|| {
                        ErrorInfo::new("call", "the called workflow did not succeed")
                    });
                    error.kind = "call".into();
                    error.message = format!("{workflow}: {}", error.message);
                    Outcome::Failed(error)
                }
            };
            Fact::EffectFinished {
                key,
                attempt: 1,
                outcome,
                at: Timestamp::now(),
            }
        }
        Err(error) => failed(key, format!("waiting for {workflow:?}: {error}")),
    }
}

#[cfg(all(test, feature = "redb"))]
mod dedupe_tests {
    //! Keyed submission: a crash between the durable record and the source's ack must not
    //! start a second execution when the source redelivers.

    use std::sync::Arc;

    use serde_json::json;

    use super::*;
    use crate::store::{ExecutionQuery, RedbOptions, RedbStore};
    use crate::trigger::testing;

    const FLOW: &str = r#"
reactor: 1
name: orders
triggers:
  - interval: { every: 1h }
steps:
  - action: transform
    with: { value: "${{ event.data.n }}" }
"#;

    async fn count(runtime: &Runtime) -> usize {
        runtime
            .store()
            .executions(&ExecutionQuery {
                workflow: Some("orders".into()),
                ..ExecutionQuery::default()
            })
            .await
            .unwrap()
            .len()
    }

    fn event(n: u32) -> Event {
        Event::new("kafka", "reactor:kafka/orders", json!({ "n": n }))
    }

    #[tokio::test]
    async fn crash_between_record_and_ack_does_not_run_twice() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.redb");
        let mark = || DedupeMark::new("kafka/orders/0/41", json!({"partition": 0, "offset": 41}));

        // First life: the message is recorded, then the process dies before the ack.
        let first_id = {
            let store = Arc::new(RedbStore::open(&path, RedbOptions::default()).unwrap());
            let runtime = testing::runtime(store.clone(), &[FLOW]);
            let Submission::Accepted(id) = runtime
                .submit_once("orders", event(1), json!({}), mark())
                .await
                .unwrap()
            else {
                panic!("not accepted");
            };
            runtime.wait(id).await.unwrap();
            store.close().await.unwrap();
            id
        };

        // Second life: the source redelivers the unacknowledged message.
        let store = Arc::new(RedbStore::open(&path, RedbOptions::default()).unwrap());
        let runtime = testing::runtime(store.clone(), &[FLOW]);
        runtime.recover().await.unwrap();
        let again = runtime
            .submit_once("orders", event(1), json!({}), mark())
            .await
            .unwrap();
        assert_eq!(again, Submission::Accepted(first_id));
        assert_eq!(count(&runtime).await, 1, "the redelivery started nothing");
        assert_eq!(runtime.stats().deduplicated.load(Ordering::Relaxed), 1);
        let recorded = runtime
            .mark("orders", "kafka/orders/0/41")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(recorded.execution, first_id);
        assert_eq!(recorded.position, json!({"partition": 0, "offset": 41}));

        // A new key runs; a forgotten key runs again (the source will never redeliver it).
        let other = DedupeMark::new("kafka/orders/0/42", json!(42));
        assert!(matches!(
            runtime.submit_once("orders", event(2), json!({}), other).await,
            Ok(Submission::Accepted(id)) if id != first_id
        ));
        runtime
            .forget_marks("orders", &["kafka/orders/0/41".to_string()])
            .await
            .unwrap();
        assert!(
            runtime
                .mark("orders", "kafka/orders/0/41")
                .await
                .unwrap()
                .is_none()
        );
        store.close().await.unwrap();
    }

    #[tokio::test]
    async fn concurrent_duplicates_start_one_execution() {
        let runtime = testing::runtime(testing::memory(), &[FLOW]);
        let submissions = (0..16).map(|_| {
            let runtime = runtime.clone();
            async move {
                runtime
                    .submit_once(
                        "orders",
                        event(7),
                        json!({}),
                        DedupeMark::new("same", json!(null)),
                    )
                    .await
                    .unwrap()
            }
        });
        let results = futures::future::join_all(submissions).await;
        assert!(
            results.windows(2).all(|pair| pair[0] == pair[1]),
            "{results:?}"
        );
        assert_eq!(count(&runtime).await, 1);
        assert!(
            lock(&runtime.inner.marking).is_empty(),
            "per-key locks are released"
        );
    }

    #[tokio::test]
    async fn keys_are_bounded() {
        let runtime = testing::runtime(testing::memory(), &[FLOW]);
        let long = DedupeMark::new("k".repeat(MAX_MARK_KEY + 1), json!(null));
        let error = runtime
            .submit_once("orders", event(1), json!({}), long)
            .await
            .unwrap_err();
        assert!(error.to_string().contains("de-duplication key"), "{error}");
    }
}
