//! A hook for watching the runtime: executions and steps as they start and finish.
//!
//! The hub feeds its live stream (SSE) and its metrics from an [`Observer`]; the agent sets
//! none. Events borrow the runtime's data, so an observer pays for what it copies and a runtime
//! without one pays one branch per event. Observers are called inline on the execution's task:
//! they must not block or await (send to a bounded or broadcast channel and drop on overflow).
//!
//! What an observer sees is already redacted: records are masked before they are stored and
//! step outcomes before they are journaled.

use std::time::Duration;

use super::journal::{ExecutionId, ExecutionRecord, Outcome, Timestamp};

/// One step attempt of one execution: an action run by the driver.
#[derive(Clone, Copy, Debug)]
pub struct StepEvent<'a> {
    pub execution: ExecutionId,
    pub workflow: &'a str,
    /// The step's id, or its position when it has none.
    pub step: &'a str,
    /// The action's kind (`http`, `log` …).
    pub action: &'a str,
    /// 1 for the first try.
    pub attempt: u32,
    /// `None` when the attempt starts; its outcome and how long it ran when it ends.
    pub phase: Option<(&'a Outcome, Duration)>,
}

/// What the runtime reports.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub enum RuntimeEvent<'a> {
    /// A new execution was recorded (running, or queued for a `concurrency` slot).
    ExecutionStarted {
        record: &'a ExecutionRecord,
        /// The triggering event's own time (`event.time`), when it parses: the trigger's lag
        /// is the record's `created_at` minus this.
        event_time: Option<Timestamp>,
    },
    /// A step attempt started or ended.
    Step(StepEvent<'a>),
    /// An execution reached its end (succeeded, failed or cancelled).
    ExecutionFinished { record: &'a ExecutionRecord },
}

/// Receives [`RuntimeEvent`]s. Called inline: must be quick and must never block.
pub trait Observer: Send + Sync + 'static {
    fn observe(&self, event: &RuntimeEvent<'_>);
}

/// Several observers, called in order.
#[derive(Clone, Default)]
pub struct Fanout(pub Vec<std::sync::Arc<dyn Observer>>);

impl std::fmt::Debug for Fanout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Fanout").field(&self.0.len()).finish()
    }
}

impl Observer for Fanout {
    fn observe(&self, event: &RuntimeEvent<'_>) {
        for observer in &self.0 {
            observer.observe(event);
        }
    }
}
