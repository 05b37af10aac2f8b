//! The driver end to end, in-process: journaling order, recovery after a stop mid-step,
//! concurrency, calls and waits — against the memory and redb stores.

mod concurrency;
mod flow;
mod journal;
mod stores;
mod support;
