//! The validated workflow model: what the engine runs.
//!
//! Only the DSL decoder ([`crate::dsl`]) and the [`builder`] construct a [`Workflow`]; both go
//! through the same validation, so a `Workflow` value is always well-formed: ids are unique,
//! references resolve, durations and cron schedules parse, loops are bounded.

pub mod builder;
mod duration;
mod model;
mod names;

pub use duration::{DurationError, format_duration, parse_duration};
pub use model::*;
pub use names::{NameError, StepId, WorkflowName};
