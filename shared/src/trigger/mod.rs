//! Triggers: what turns something that happened into an event for a workflow.
//!
//! Every trigger has the same shape: built by [`build`] from the validated settings of one
//! `triggers:` entry, then [`Trigger::run`] until its cancellation token fires, calling
//! [`TriggerContext::submit`] for every event. Overload policy (STYLE.md):
//! - *block*: `submit` waits for a free execution slot, and returns only once the event is
//!   durably recorded — MQTT QoS ≥ 1, file, cron, interval, event acknowledge their source
//!   after that;
//! - *shed*: `http` checks [`TriggerContext::saturated`] and answers 503 with `Retry-After`.
//!
//! `http` triggers do not own a listener: the runtime's one HTTP server routes requests to
//! them through [`http::HttpRoutes`], which is framework-free and tested on its own.

use std::sync::Arc;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use crate::Value;
use crate::engine::{Event, Runtime, Submission, SubmitError};
use crate::flow::TriggerSpec;

/// What a running trigger can reach.
#[derive(Clone, Debug)]
pub struct TriggerContext {
    /// The workflow this trigger starts.
    pub workflow: Arc<str>,
    pub runtime: Runtime,
    /// Fires when the trigger must stop (workflow removed or replaced, shutdown).
    pub cancel: CancellationToken,
}

impl TriggerContext {
    /// Starts an execution for `event`; returns once it is durably recorded, skipped or
    /// dropped. Waits while the runtime is saturated (the *block* policy).
    pub async fn submit(&self, event: Event) -> Result<Submission, SubmitError> {
        self.runtime
            .submit(&self.workflow, event, Value::Object(Default::default()))
            .await
    }

    /// Whether a new execution would have to wait for a slot (the *shed* policy's test).
    pub fn saturated(&self) -> bool {
        self.runtime.saturated()
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

/// Builds the trigger for one `triggers:` entry. `http` entries return `None`: the HTTP
/// server routes them (see [`http::HttpRoutes`]).
pub type TriggerFactory =
    dyn Fn(&TriggerSpec) -> Result<Option<Box<dyn Trigger>>, TriggerError> + Send + Sync;
