//! reactor-core: the workflow language and the durable engine shared by the agent and the hub.
//!
//! Map of the crate:
//! - [`flow`]: the validated workflow model (what the engine runs), durations, names, and the
//!   Rust builder API. Only [`dsl`] and the builder construct a [`flow::Workflow`].
//! - [`dsl`]: YAML → spanned document tree → model, with every problem reported at once as
//!   `PATH:LINE:COL` diagnostics; hostile-input caps; the JSON Schema of the language.
//! - [`expr`]: `${{ }}` expressions (CEL syntax and semantics, with numbers that mix),
//!   compiled once and evaluated against a [`expr::Scope`]; templates for values holding them.
//! - [`engine`]: the pure execution state machine ([`engine::machine`]) advanced by facts, and
//!   the driver ([`engine::runtime`]) that performs actions, timers and waits through traits.
//! - [`store`]: the journal ([`store::Store`]): redb and in-memory implementations, one shared
//!   conformance suite, group commit, retention.
//! - [`trigger`]: the `Trigger` trait and the light triggers (http routing, cron, interval,
//!   file, event, startup).
//! - [`deploy`]: the set of active workflows (install/replace/remove, versions kept in the
//!   store's meta table, their triggers started through a pluggable `TriggerFactory`), shared
//!   by the agent and the hub.
//! - [`action`]: the `Action` trait, its registry and the built-in actions.
//! - `mqtt` (feature `mqtt`): the MQTT trigger and publisher over rumqttc.
//! - `outbox` (feature `outbox`): the agent's durable, bounded outbox of records for the hub,
//!   in the journal's redb file.
//! - `sync` (feature `sync`): the fleet protocol between agent and hub: topics, versioned
//!   postcard envelopes, signed bundles.
//! - [`metrics`]: metric families, histograms, trigger counters, Prometheus text.
//! - [`cli`]: `validate` and `exec`, the command-line contract both binaries share.
//!
//! Invariants that matter:
//! - The state machine never performs I/O; given the same journal it makes the same decisions.
//!   Recovery is replay of the journal.
//! - A side effect is performed only after its start is durably journaled; a finished step's
//!   recorded result is reused on replay and never performed again.

pub mod action;
pub mod cli;
#[cfg(feature = "app")]
pub mod config;
pub mod deploy;
pub mod dsl;
pub mod engine;
pub mod expr;
pub mod flow;
pub mod metrics;
#[cfg(feature = "mqtt")]
pub mod mqtt;
#[cfg(feature = "outbox")]
pub mod outbox;
#[cfg(feature = "app")]
pub mod process;
pub mod store;
#[cfg(feature = "sync")]
pub mod sync;
pub mod trigger;

/// JSON-like values used for event data, inputs, outputs and variables.
pub type Value = serde_json::Value;
/// An ordered map of values (insertion order is kept).
pub type Map = serde_json::Map<String, Value>;
