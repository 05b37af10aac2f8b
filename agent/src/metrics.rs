//! `/metrics`: the Prometheus text format through reactor-core's `metrics` (no metrics crate:
//! the agent stays small), the same names and labels as the hub's.
//!
//! Per-workflow execution counts come from [`MeteredStore`], which wraps the journal and
//! counts what the engine writes: a `Create` is a started execution, an `Update` to a finished
//! status is a finished one. The counters are since this process started.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use reactor_core::engine::{ExecutionId, ExecutionRecord, Fact, Timestamp};
use reactor_core::metrics::{self, Family, Kind, labels, trigger_families, trigger_rows};
use reactor_core::store::{ExecutionQuery, RedbStore, Retention, Store, StoreError, StoreWrite};

use crate::daemon::AgentState;

/// Counters the agent keeps itself.
#[derive(Debug, Default)]
pub struct Metrics {
    /// workflow → status → count; status `started` counts creations. Keyed by name first so
    /// that counting an execution allocates nothing once its workflow has been seen.
    executions: Mutex<BTreeMap<String, BTreeMap<&'static str, u64>>>,
    /// The journal, for its commit counters.
    journal: Option<Arc<RedbStore>>,
}

impl Metrics {
    pub fn with_journal(journal: Arc<RedbStore>) -> Metrics {
        Metrics {
            journal: Some(journal),
            ..Metrics::default()
        }
    }

    fn count(&self, workflow: &str, status: &'static str) {
        let mut map = self.executions.lock().unwrap_or_else(|p| p.into_inner());
        let statuses = match map.get_mut(workflow) {
            Some(statuses) => statuses,
            None => map.entry(workflow.to_string()).or_default(),
        };
        *statuses.entry(status).or_default() += 1;
    }
}

/// The journal, counting executions as they are written.
pub struct MeteredStore<S> {
    inner: Arc<S>,
    metrics: Arc<Metrics>,
}

impl<S> std::fmt::Debug for MeteredStore<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeteredStore").finish_non_exhaustive()
    }
}

impl<S> MeteredStore<S> {
    pub fn new(inner: Arc<S>, metrics: Arc<Metrics>) -> MeteredStore<S> {
        MeteredStore { inner, metrics }
    }
}

#[async_trait]
impl<S: Store> Store for MeteredStore<S> {
    async fn write(&self, batch: Vec<StoreWrite>) -> Result<(), StoreError> {
        let mut counts: Vec<(String, &'static str)> = Vec::new();
        for write in &batch {
            match write {
                StoreWrite::Create { record, .. } => {
                    counts.push((record.workflow.clone(), "started"));
                    if record.status.is_finished() {
                        counts.push((record.workflow.clone(), record.status.as_str()));
                    }
                }
                StoreWrite::Update(record) if record.status.is_finished() => {
                    counts.push((record.workflow.clone(), record.status.as_str()));
                }
                _ => {}
            }
        }
        self.inner.write(batch).await?;
        for (workflow, status) in counts {
            self.metrics.count(&workflow, status);
        }
        Ok(())
    }
    async fn unfinished(&self) -> Result<Vec<(ExecutionRecord, Vec<Fact>)>, StoreError> {
        self.inner.unfinished().await
    }
    async fn execution(&self, id: ExecutionId) -> Result<Option<ExecutionRecord>, StoreError> {
        self.inner.execution(id).await
    }
    async fn journal(&self, id: ExecutionId) -> Result<Vec<Fact>, StoreError> {
        self.inner.journal(id).await
    }
    async fn executions(&self, query: &ExecutionQuery) -> Result<Vec<ExecutionRecord>, StoreError> {
        self.inner.executions(query).await
    }
    async fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.meta(key).await
    }
    async fn meta_prefix(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.inner.meta_prefix(prefix).await
    }
    async fn prune(&self, retention: Retention, now: Timestamp) -> Result<usize, StoreError> {
        self.inner.prune(retention, now).await
    }
}

/// The resident set size of this process, from /proc/self/status (Linux).
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The agent's metric families, in the text format the hub also writes (reactor-core
/// [`metrics`](reactor_core::metrics)): executions, triggers, load shedding, memory.
pub fn render(state: &AgentState) -> String {
    let stats = state.runtime.stats();
    let count = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed) as f64;

    let mut executions = Family::new(
        "reactor_executions_total",
        Kind::Counter,
        "Executions started and finished, by workflow and status (since start).",
    );
    for (workflow, statuses) in state
        .metrics
        .executions
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
    {
        for (status, total) in statuses {
            executions.push(
                labels([("workflow", workflow.as_str()), ("status", status)]),
                *total as f64,
            );
        }
    }
    let finished = count(&stats.succeeded) + count(&stats.failed) + count(&stats.cancelled);
    let mut families = vec![
        executions,
        Family::single(
            "reactor_executions_skipped_total",
            Kind::Counter,
            "Events the workflow's if/unless rejected (no execution created).",
            count(&stats.skipped),
        ),
        Family::single(
            "reactor_executions_dropped_total",
            Kind::Counter,
            "Events dropped by concurrency overflow: drop.",
            count(&stats.dropped),
        ),
        Family::single(
            "reactor_executions_running",
            Kind::Gauge,
            "Executions started by this process and not finished yet.",
            (count(&stats.started) - finished).max(0.0),
        ),
        Family::single(
            "reactor_workflows_loaded",
            Kind::Gauge,
            "Active workflows.",
            state.workflows.list().len() as f64,
        ),
    ];
    if let Some(journal) = &state.metrics.journal {
        families.push(Family::single(
            "reactor_store_commits_total",
            Kind::Counter,
            "Journal group commits (each carries one or more batches; durable through the write-ahead log or as a checkpoint).",
            journal.commits() as f64,
        ));
        families.push(Family::single(
            "reactor_store_checkpoints_total",
            Kind::Counter,
            "Journal commits made durable in redb itself, after which the write-ahead log starts over.",
            journal.checkpoints() as f64,
        ));
        families.push(Family::single(
            "reactor_store_batches_total",
            Kind::Counter,
            "Write batches committed to the journal (group commit: many per transaction).",
            journal.batches() as f64,
        ));
    }
    let rows = trigger_rows(&state.workflows);
    families.extend(trigger_families(&rows));
    // Kept from the agent's first releases: sheds of http triggers, and their sum.
    let mut shed = Family::new(
        "reactor_http_requests_shed_total",
        Kind::Counter,
        "HTTP trigger requests answered 503 with Retry-After because the engine was saturated.",
    );
    for row in rows.iter().filter(|row| row.kind == "http") {
        shed.push(
            labels([
                ("workflow", row.workflow.as_str()),
                ("trigger", row.trigger.as_str()),
                ("kind", row.kind),
            ]),
            row.stats.shed as f64,
        );
    }
    let total: u64 = rows.iter().map(|row| row.stats.shed).sum();
    shed.push(Default::default(), total as f64);
    families.push(shed);
    if let Some(rss) = resident_bytes() {
        families.push(Family::single(
            "reactor_process_resident_memory_bytes",
            Kind::Gauge,
            "Resident set size of the agent process.",
            rss as f64,
        ));
    }
    metrics::render(&families)
}
