//! The example workflows in `workflows/`: every one validates, matches the JSON Schema
//! `reactor-agent schema` prints, and runs with `reactor-agent exec` against local HTTP
//! servers that behave like the services the examples talk to (flaky, slow, polling …).

mod catalog;
mod operations;
mod resilience;
mod support;
