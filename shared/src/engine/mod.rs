//! The engine: a pure state machine per execution, advanced by facts, and the driver that
//! performs its commands.

pub mod journal;

pub use journal::*;
