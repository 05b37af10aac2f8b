//! Triggers: what turns something that happened into an event for a workflow.
//!
//! Every trigger has the same shape: built by a [`TriggerFactory`] ([`build_light`] here)
//! from the validated settings of one `triggers:` entry, then [`Trigger::run`] until its
//! cancellation token fires, calling [`TriggerContext::submit`] for every event. Overload policy (STYLE.md):
//! - *block*: `submit` waits for a free execution slot, and returns only once the event is
//!   durably recorded — MQTT QoS ≥ 1, file, cron, interval, event acknowledge their source
//!   after that;
//! - *shed*: `http` checks [`TriggerContext::saturated`] and answers 503 with `Retry-After`.
//!
//! `http` triggers do not own a listener: the runtime's one HTTP server routes requests to
//! them through [`http::HttpRoutes`], which is framework-free and tested on its own. `event`
//! triggers have no task either: [`EventRouter`] (the runtime's event bus) submits emitted
//! events to the workflows whose `event` triggers match.
//!
//! Running triggers: a [`Supervisor`] names each trigger's task, gives it a child
//! cancellation token, restarts it with capped, jittered backoff when it fails, and stops
//! them all with a grace period. [`TriggerStats`] counts events and errors per trigger.
//!
//! Files: `http` (routing, auth, shed), `signature` (token and webhook signature checks),
//! `event` (the bus), `cron` (durable catch-up), `interval`, `startup`, `file` (feature
//! `file-trigger`), `supervisor`, `stats`.

use std::sync::Arc;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use crate::Value;
use crate::engine::{DedupeMark, Event, Runtime, Submission, SubmitError};
use crate::flow::{TriggerKind, TriggerSpec};

pub mod cron;
pub mod cron_tz;
pub mod event;
#[cfg(feature = "file-trigger")]
pub mod file;
pub mod http;
pub mod interval;
mod signature;
pub mod startup;
mod stats;
mod supervisor;

pub use self::event::EventRouter;
pub use self::http::{HttpReply, HttpRequest, HttpRoutes};
pub use self::stats::{TriggerStats, TriggerStatsSnapshot, UNHEALTHY_AFTER, WarnLimiter};
pub use self::supervisor::{ShutdownReport, Supervisor, SupervisorConfig, TaskState};

/// What a running trigger can reach.
#[derive(Clone, Debug)]
pub struct TriggerContext {
    /// The workflow this trigger starts.
    pub workflow: Arc<str>,
    pub runtime: Runtime,
    /// Fires when the trigger must stop (workflow removed or replaced, shutdown).
    pub cancel: CancellationToken,
    /// This trigger's counters; [`TriggerContext::submit`] keeps `events` and `errors`.
    pub stats: Arc<TriggerStats>,
}

impl TriggerContext {
    pub fn new(workflow: &str, runtime: Runtime, cancel: CancellationToken) -> TriggerContext {
        TriggerContext {
            workflow: Arc::from(workflow),
            runtime,
            cancel,
            stats: Arc::default(),
        }
    }

    /// Starts an execution for `event`; returns once it is durably recorded, skipped or
    /// dropped. Waits while the runtime is saturated (the *block* policy).
    pub async fn submit(&self, event: Event) -> Result<Submission, SubmitError> {
        let result = self
            .runtime
            .submit(&self.workflow, event, Value::Object(Default::default()))
            .await;
        match &result {
            Ok(_) => self.stats.count_event(),
            Err(error) => self.stats.record_error(&error.to_string()),
        }
        result
    }

    /// Like [`TriggerContext::submit`], at most once per `mark` (see
    /// [`Runtime::submit_once`]): for sources that redeliver what was recorded but not yet
    /// acknowledged when the process died.
    pub async fn submit_once(
        &self,
        event: Event,
        mark: DedupeMark,
    ) -> Result<Submission, SubmitError> {
        self.submit_batch(event, mark, 1).await
    }

    /// One execution for `messages` source messages gathered by a trigger's `batch:`, at most
    /// once per `mark` (the batch's: its position says which messages it holds). Counts
    /// `messages` events. See [`TriggerContext::start_batch`].
    pub async fn submit_batch(
        &self,
        event: Event,
        mark: DedupeMark,
        messages: usize,
    ) -> Result<Submission, SubmitError> {
        self.start_batch(event, mark, messages).result().await
    }

    /// Starts [`TriggerContext::submit_batch`] on a task of its own and returns at once.
    ///
    /// A trigger submits what one read brought side by side, and its own task is one core:
    /// spawned, the executions are built, run and encoded for the store on every core, and
    /// a trigger can read and start its next messages while these are recorded. Dropping
    /// the handle leaves the submission running to its end (its message, not acknowledged,
    /// comes again and finds its mark).
    pub fn start_batch(&self, event: Event, mark: DedupeMark, messages: usize) -> Submitting {
        let (runtime, workflow, stats) = (
            self.runtime.clone(),
            self.workflow.clone(),
            self.stats.clone(),
        );
        Submitting(tokio::spawn(async move {
            let result = runtime
                .submit_once(&workflow, event, Value::Object(Default::default()), mark)
                .await;
            match &result {
                Ok(_) => {
                    stats.count_events(messages as u64);
                    stats.record_success();
                }
                Err(error) => stats.record_error(&error.to_string()),
            }
            result
        }))
    }

    /// Whether a new execution would have to wait for a slot (the *shed* policy's test).
    pub fn saturated(&self) -> bool {
        self.runtime.saturated()
    }
}

/// A submission started by [`TriggerContext::start_batch`].
#[derive(Debug)]
pub struct Submitting(tokio::task::JoinHandle<Result<Submission, SubmitError>>);

impl Submitting {
    /// Waits for the submission: once its execution is durably recorded, skipped or
    /// dropped.
    pub async fn result(self) -> Result<Submission, SubmitError> {
        match self.0.await {
            Ok(result) => result,
            Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
            Err(_) => Err(SubmitError::ShuttingDown),
        }
    }
}

/// Why a trigger stopped or could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TriggerError {
    #[error("invalid trigger settings: {0}")]
    Settings(String),
    #[error("{0}")]
    Source(String),
    #[error("the {0} trigger is not available in this runtime")]
    Unsupported(&'static str),
}

/// A running source of events.
#[async_trait]
pub trait Trigger: Send + 'static {
    /// The trigger type (`cron`, `mqtt` …), for logs and metrics.
    fn kind(&self) -> &'static str;
    /// Runs until `context.cancel` fires. An error means the trigger gave up; the supervisor
    /// reports it and restarts it with backoff.
    async fn run(self: Box<Self>, context: TriggerContext) -> Result<(), TriggerError>;
}

/// Builds the trigger of one `triggers:` entry: the `index`-th entry of `workflow`'s
/// `triggers:` list. `Ok(None)`: the trigger has no task of its own (`http` entries are routed
/// by [`HttpRoutes`], `event` entries by [`EventRouter`]). Called once when a workflow is
/// installed (to validate and learn whether there is a task) and again for every (re)start of
/// the task, so it must be cheap and side-effect free.
///
/// Pluggable: core offers [`LightTriggers`]; the agent adds `mqtt`
/// (`crate::mqtt::MqttTriggers`); the hub adds its broker and database triggers and may wrap
/// the triggers it builds (leader gating).
pub trait TriggerFactory: Send + Sync + 'static {
    fn build(
        &self,
        workflow: &str,
        index: usize,
        spec: &TriggerSpec,
    ) -> Result<Option<Box<dyn Trigger>>, TriggerError>;
}

impl<F> TriggerFactory for F
where
    F: Fn(&str, usize, &TriggerSpec) -> Result<Option<Box<dyn Trigger>>, TriggerError>
        + Send
        + Sync
        + 'static,
{
    fn build(
        &self,
        workflow: &str,
        index: usize,
        spec: &TriggerSpec,
    ) -> Result<Option<Box<dyn Trigger>>, TriggerError> {
        self(workflow, index, spec)
    }
}

/// The [`TriggerFactory`] of the light triggers ([`build_light`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct LightTriggers;

impl TriggerFactory for LightTriggers {
    fn build(
        &self,
        _workflow: &str,
        _index: usize,
        spec: &TriggerSpec,
    ) -> Result<Option<Box<dyn Trigger>>, TriggerError> {
        build_light(spec)
    }
}

/// Builds the light triggers (`cron`, `interval`, `startup`, `file`). `http` (routed by
/// [`HttpRoutes`]) and `event` (routed by [`EventRouter`]) return `None`: they have no task of
/// their own. Broker and database triggers are built elsewhere and are `Unsupported` here.
pub fn build_light(spec: &TriggerSpec) -> Result<Option<Box<dyn Trigger>>, TriggerError> {
    Ok(Some(match &spec.kind {
        TriggerKind::Http(_) | TriggerKind::Event { .. } => return Ok(None),
        TriggerKind::Cron(settings) => Box::new(cron::CronSchedule::new(settings)?),
        TriggerKind::Interval { every } => Box::new(interval::Interval::new(*every)?),
        TriggerKind::Startup => Box::new(startup::Startup),
        #[cfg(feature = "file-trigger")]
        TriggerKind::File(settings) => Box::new(file::FileWatch::new(settings)?),
        #[cfg(not(feature = "file-trigger"))]
        TriggerKind::File(_) => return Err(TriggerError::Unsupported("file")),
        other => return Err(TriggerError::Unsupported(other.type_name())),
    }))
}

#[cfg(test)]
pub(crate) mod testing {
    //! A runtime over the memory store with workflows parsed from YAML, for trigger tests.

    use std::sync::Arc;
    use std::time::Duration;

    use crate::action::builtin_registry;
    use crate::engine::{Environment, ExecutionRecord, Runtime, RuntimeConfig};
    use crate::store::{ExecutionQuery, MemoryStore, Store};

    pub fn runtime(store: Arc<dyn Store>, yaml: &[&str]) -> Runtime {
        let runtime = Runtime::new(
            store,
            builtin_registry(Default::default()),
            Environment::empty(),
            RuntimeConfig::default(),
        );
        load(&runtime, yaml);
        runtime
    }

    pub fn load(runtime: &Runtime, yaml: &[&str]) {
        for text in yaml {
            let workflow =
                crate::dsl::parse_workflow("test.yaml", text).unwrap_or_else(|d| panic!("{d:?}"));
            runtime.load(workflow);
        }
    }

    pub fn memory() -> Arc<dyn Store> {
        Arc::new(MemoryStore::new())
    }

    /// Executions of `workflow`, oldest first.
    pub async fn executions(runtime: &Runtime, workflow: &str) -> Vec<ExecutionRecord> {
        let mut list = runtime
            .store()
            .executions(&ExecutionQuery {
                workflow: Some(workflow.to_string()),
                ..ExecutionQuery::default()
            })
            .await
            .unwrap();
        list.reverse();
        list
    }

    /// The events that started `workflow`'s executions, oldest first.
    pub async fn started_events(runtime: &Runtime, workflow: &str) -> Vec<crate::engine::Event> {
        let mut out = Vec::new();
        for record in executions(runtime, workflow).await {
            let journal = runtime.store().journal(record.id).await.unwrap();
            if let Some(crate::engine::Fact::Started { event, .. }) = journal.first() {
                out.push(event.clone());
            }
        }
        out
    }

    /// Polls until `workflow` has at least `count` executions (or `timeout` passes).
    pub async fn wait_for(
        runtime: &Runtime,
        workflow: &str,
        count: usize,
        timeout: Duration,
    ) -> Vec<ExecutionRecord> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let list = executions(runtime, workflow).await;
            if list.len() >= count || tokio::time::Instant::now() >= deadline {
                return list;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
