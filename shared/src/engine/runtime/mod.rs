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
//!
//! Modules, along the seams of an execution's life:
//! - `submit`: admission (`if`/`unless`, concurrency key) and the first durable write;
//! - `dedupe`: keyed submission ([`Runtime::submit_once`]) and its marks;
//! - `concurrency`: the `concurrency` slots and queues;
//! - `driver`: one execution's task — settle, flush, launch, wait for the next fact;
//! - `effects`: performing one action or child call and turning it into a fact;
//! - `recover`: resuming unfinished journals after a restart.

mod concurrency;
mod dedupe;
mod driver;
mod effects;
mod recover;
mod submit;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use async_trait::async_trait;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::action::ActionRegistry;
use crate::flow::Workflow;
use crate::store::{Retention, Store, StoreError, StoreWrite};
use crate::{Map, Value};

use super::catalog::Catalog;
use super::journal::*;
use super::machine::glob_match;
use super::observe::{Observer, RuntimeEvent};
use super::redact::Redactor;
use super::scope::Environment;
use concurrency::Slots;

pub use dedupe::{DedupeMark, MAX_MARK_KEY, MarkRecord};

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

/// Counters for metrics.
#[derive(Debug, Default)]
pub struct Stats {
    pub started: AtomicU64,
    pub skipped: AtomicU64,
    pub dropped: AtomicU64,
    pub succeeded: AtomicU64,
    pub failed: AtomicU64,
    pub cancelled: AtomicU64,
    /// Keyed submissions ([`Runtime::submit_once`]) whose key was already recorded, and
    /// redelivered messages a trigger found recorded in the marks ([`Runtime::marks`]).
    pub deduplicated: AtomicU64,
}

enum Input {
    Fact(Fact),
    Offer { key: String, event: Event },
}

struct Running {
    inbox: mpsc::Sender<Box<Input>>,
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
    /// Marks to delete with the next execution's first write ([`Runtime::forget_marks_soon`]).
    forgetting: Mutex<dedupe::Forgetting>,
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
                forgetting: Mutex::default(),
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
        if !self.dequeue(id) {
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
        {
            // `retain` visits every waiter: skip it when nothing waits at all (pure workflows).
            let mut waiters = lock(&self.inner.waiters);
            if !waiters.is_empty() {
                waiters.retain(|(id, _), _| *id != record.id);
            }
        }
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
            self.release(&record.workflow, key.clone(), record.id);
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
}
