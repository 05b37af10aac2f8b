//! `/metrics`: Prometheus text format, written by hand (no metrics crate: the agent stays
//! small).
//!
//! Per-workflow execution counts come from [`MeteredStore`], which wraps the journal and
//! counts what the engine writes: a `Create` is a started execution, an `Update` to a finished
//! status is a finished one. The counters are since this process started.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use reactor_core::engine::{ExecutionId, ExecutionRecord, Fact, Timestamp};
use reactor_core::store::{ExecutionQuery, RedbStore, Retention, Store, StoreError, StoreWrite};
use reactor_core::trigger::{TaskState, TriggerStatsSnapshot};

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
    async fn prune(&self, retention: Retention, now: Timestamp) -> Result<usize, StoreError> {
        self.inner.prune(retention, now).await
    }
}

/// Label values escaped as the text format requires.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// The resident set size of this process, from /proc/self/status (Linux).
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

pub fn render(state: &AgentState) -> String {
    let mut out = String::with_capacity(4096);
    let stats = state.runtime.stats();
    let metrics = &state.metrics;

    header(
        &mut out,
        "reactor_executions_total",
        "counter",
        "Executions started and finished, by workflow and status (since start).",
    );
    for (workflow, statuses) in metrics
        .executions
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
    {
        for (status, count) in statuses {
            let _ = writeln!(
                out,
                "reactor_executions_total{{workflow=\"{}\",status=\"{status}\"}} {count}",
                label(workflow)
            );
        }
    }
    if let Some(journal) = &metrics.journal {
        header(
            &mut out,
            "reactor_store_commits_total",
            "counter",
            "Durable journal transactions committed (each carries one or more batches).",
        );
        let _ = writeln!(out, "reactor_store_commits_total {}", journal.commits());
        header(
            &mut out,
            "reactor_store_batches_total",
            "counter",
            "Write batches committed to the journal (group commit: many per transaction).",
        );
        let _ = writeln!(out, "reactor_store_batches_total {}", journal.batches());
    }
    let started = stats.started.load(Ordering::Relaxed);
    let finished = stats.succeeded.load(Ordering::Relaxed)
        + stats.failed.load(Ordering::Relaxed)
        + stats.cancelled.load(Ordering::Relaxed);
    header(
        &mut out,
        "reactor_executions_skipped_total",
        "counter",
        "Events the workflow's if/unless rejected (no execution created).",
    );
    let _ = writeln!(
        out,
        "reactor_executions_skipped_total {}",
        stats.skipped.load(Ordering::Relaxed)
    );
    header(
        &mut out,
        "reactor_executions_dropped_total",
        "counter",
        "Events dropped by concurrency overflow: drop.",
    );
    let _ = writeln!(
        out,
        "reactor_executions_dropped_total {}",
        stats.dropped.load(Ordering::Relaxed)
    );
    header(
        &mut out,
        "reactor_executions_running",
        "gauge",
        "Executions started by this process and not finished yet.",
    );
    let _ = writeln!(
        out,
        "reactor_executions_running {}",
        started.saturating_sub(finished)
    );
    header(
        &mut out,
        "reactor_workflows_loaded",
        "gauge",
        "Active workflows.",
    );
    let _ = writeln!(
        out,
        "reactor_workflows_loaded {}",
        state.workflows.list().len()
    );

    // One row per trigger: (workflow, trigger, kind, stats, up).
    let mut rows: Vec<(
        String,
        String,
        &'static str,
        TriggerStatsSnapshot,
        Option<bool>,
    )> = Vec::new();
    let tasks: BTreeMap<String, (TaskState, TriggerStatsSnapshot)> = state
        .workflows
        .supervisor()
        .tasks()
        .into_iter()
        .map(|(name, task_state, stats)| (name, (task_state, stats.snapshot())))
        .collect();
    for info in state.workflows.triggers() {
        if let Some((task_state, stats)) = info.task.as_ref().and_then(|t| tasks.get(t)) {
            let up = matches!(task_state, TaskState::Running | TaskState::Finished);
            rows.push((
                info.workflow,
                info.label,
                info.kind,
                stats.clone(),
                Some(up),
            ));
        }
    }
    for (workflow, method, path, stats) in state.workflows.routes().stats() {
        let trigger = format!("{method} {path}");
        rows.push((
            workflow.to_string(),
            trigger,
            "http",
            stats.snapshot(),
            Some(true),
        ));
    }
    for (workflow, pattern, stats) in state.workflows.events().stats() {
        rows.push((
            workflow.to_string(),
            pattern,
            "event",
            stats.snapshot(),
            Some(true),
        ));
    }
    let labels = |row: &(
        String,
        String,
        &'static str,
        TriggerStatsSnapshot,
        Option<bool>,
    )| {
        format!(
            "workflow=\"{}\",trigger=\"{}\",kind=\"{}\"",
            label(&row.0),
            label(&row.1),
            row.2
        )
    };
    header(
        &mut out,
        "reactor_trigger_up",
        "gauge",
        "1 while the trigger runs, 0 while it restarts after an error or has given up.",
    );
    for row in &rows {
        if let Some(up) = row.4 {
            let _ = writeln!(
                out,
                "reactor_trigger_up{{{}}} {}",
                labels(row),
                u8::from(up)
            );
        }
    }
    type Counter = (&'static str, &'static str, fn(&TriggerStatsSnapshot) -> u64);
    let counters: [Counter; 4] = [
        (
            "reactor_trigger_events_total",
            "Events a trigger submitted to the engine.",
            |s| s.events,
        ),
        (
            "reactor_trigger_errors_total",
            "Trigger errors (failed submissions, failures of the trigger itself).",
            |s| s.errors,
        ),
        (
            "reactor_trigger_rejected_total",
            "Requests or events a trigger refused (auth, signature, size).",
            |s| s.rejected,
        ),
        (
            "reactor_trigger_restarts_total",
            "Times a trigger was restarted after an error.",
            |s| s.restarts,
        ),
    ];
    for (name, help, value) in counters {
        header(&mut out, name, "counter", help);
        for row in &rows {
            let _ = writeln!(out, "{name}{{{}}} {}", labels(row), value(&row.3));
        }
    }
    header(
        &mut out,
        "reactor_http_requests_shed_total",
        "counter",
        "HTTP trigger requests answered 503 with Retry-After because the engine was saturated.",
    );
    for row in rows.iter().filter(|r| r.2 == "http") {
        let _ = writeln!(
            out,
            "reactor_http_requests_shed_total{{{}}} {}",
            labels(row),
            row.3.shed
        );
    }
    let shed: u64 = rows.iter().map(|r| r.3.shed).sum();
    let _ = writeln!(out, "reactor_http_requests_shed_total {shed}");
    if let Some(rss) = resident_bytes() {
        header(
            &mut out,
            "reactor_process_resident_memory_bytes",
            "gauge",
            "Resident set size of the agent process.",
        );
        let _ = writeln!(out, "reactor_process_resident_memory_bytes {rss}");
    }
    out
}
