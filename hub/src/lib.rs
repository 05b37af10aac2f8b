//! `reactor-hub` as a library: the hub's parts, used by its binary and by the tests and
//! benches of the workspace.
//!
//! - [`db`]: the SQL layer (SQLite or PostgreSQL), its migrations and the journal store.
//! - [`config`]: `hub.toml` + `REACTOR_*` + flags for `serve`.
//! - [`server`]: `serve`'s wiring, [`server::HubState`], the route table, the auth layer.
//! - [`api`]: the API v1 handlers, problem details, OpenAPI, traces, diffs, retry.
//! - [`auth`]: tokens and roles; [`cli`]: `reactor-hub token`.
//! - [`triggers`]: the trigger factory, singleton triggers gated on leadership.
//! - [`metrics`]: `GET /metrics` and the metric values alerts and the stream read.
//! - [`stream`]: `GET /api/v1/stream`, the live stream (SSE) fed by the runtime.
//! - [`alerts`]: alert rules over the metrics, evaluated every second; events on firing.
//! - [`fleet`]: devices, enrollment, the device MQTT endpoint, ingestion, signing key.
//! - [`secrets`]: secrets encrypted at rest, their CLI and API, the engine's source of
//!   `secrets.NAME`.

pub mod alerts;
pub mod api;
pub mod auth;
pub mod cli;
pub mod config;
pub mod db;
pub mod fleet;
pub mod metrics;
pub mod secrets;
pub mod server;
pub mod stream;
pub mod triggers;
