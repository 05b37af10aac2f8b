//! [`HubState`]: what every handler shares.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use reactor_core::deploy::ActiveWorkflows;
use reactor_core::engine::Runtime;
use tokio_util::sync::CancellationToken;

use super::TokenCache;
use crate::db::{Database, SqlStore};

/// The state handlers share. Cheap to clone.
#[derive(Debug, Clone)]
pub struct HubState {
    /// The hub's database (workflows, tokens, the journal …).
    pub db: Database,
    /// The journal in `db` (the runtime's store), for queries the `Store` trait lacks.
    pub store: Arc<SqlStore>,
    /// The engine, journaling into `store`.
    pub runtime: Runtime,
    /// The active workflows and their triggers.
    pub workflows: Arc<ActiveWorkflows>,
    /// Token lookups with a short cache.
    pub tokens: Arc<TokenCache>,
    /// Serialises changes to workflows, so that the version the database assigns and the one
    /// the runtime loads are decided in the same order.
    pub deploy: Arc<tokio::sync::Mutex<()>>,
    /// Largest request body, bytes, on every route.
    pub max_body: usize,
    /// Set once start-up is complete (migrations, workflows, recovery, triggers).
    pub ready: Arc<AtomicBool>,
    /// Fires when shutdown begins.
    pub stopping: CancellationToken,
}

impl HubState {
    /// Whether `/healthz` answers 200.
    pub fn healthy(&self) -> bool {
        self.accepting() && !self.stopping.is_cancelled()
    }

    /// Whether requests that start executions are accepted: start-up is complete.
    pub fn accepting(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}
