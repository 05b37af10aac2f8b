//! `reactor-hub` as a library: the hub's parts, used by its binary and by the tests and
//! benches of the workspace.
//!
//! - [`db`]: the SQL layer (SQLite or PostgreSQL), its migrations and the journal store.

pub mod db;
