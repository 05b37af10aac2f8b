//! `reactor-hub` as a library: the hub's parts, used by its binary and by the tests and
//! benches of the workspace.
//!
//! - [`db`]: the SQL layer (SQLite or PostgreSQL), its migrations and the journal store.
//! - [`secrets`]: secrets encrypted at rest, their CLI and API, the engine's source of
//!   `secrets.NAME`.

pub mod db;
pub mod secrets;
