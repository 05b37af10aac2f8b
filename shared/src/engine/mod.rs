//! The engine: a pure state machine per execution, advanced by facts, and the driver that
//! performs its commands.
//!
//! - [`journal`]: ids, events, facts and records — what is stored.
//! - [`machine`]: the pure, deterministic state machine ([`Machine`]).
//! - `interpret`: DSL.md's step semantics, run by the machine.
//! - [`backoff`]: retry delays with deterministic jitter.
//! - [`redact`]: masks secret values in what is journaled, recorded and logged.
//! - [`observe`]: the [`Observer`] hook (executions and steps as they start and end).
//! - [`runtime`]: the driver — performs actions, timers, waits, calls and emits, journals
//!   facts before side effects, recovers after a restart, enforces `concurrency`.

pub mod backoff;
mod catalog;
mod interpret;
pub mod journal;
pub mod machine;
pub mod observe;
pub mod redact;
pub mod runtime;
mod scope;

pub use catalog::Catalog;
pub use interpret::resolve_inputs;
pub use journal::*;
pub use machine::{ActionCommand, Command, Completion, Machine};
pub use observe::{Fanout, Observer, RuntimeEvent, StepEvent};
pub use redact::Redactor;
pub use runtime::{
    DedupeMark, EventBus, MarkRecord, Runtime, RuntimeConfig, Submission, SubmitError, Watch,
};
pub use scope::Environment;

#[cfg(test)]
mod tests;
