//! `GET /metrics`: the hub's metrics in the Prometheus text format — and the same values for
//! alert rules ([`crate::alerts`]) and the live stream's snapshots ([`crate::stream`]).
//!
//! Sources:
//! - [`EngineMetrics`], a runtime [`Observer`]: executions started and finished by workflow
//!   and status, step latency histograms by workflow, action and result, and the trigger lag
//!   (execution created − event time) by workflow. Counters are since this process started.
//! - the runtime: executions running and queued, run slots free;
//! - the active workflows: per-trigger event, error, rejection, restart and shed counters
//!   (reactor-core `metrics::trigger_families`, shared with the agent's format);
//! - the process, through `sysinfo`: CPU %, resident memory, and the data folder's disk.
//!
//! Everything is collected when asked ([`Telemetry::families`]); nothing is sampled in the
//! background except what the alert evaluator and the stream ask for once a second.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::http::{Method, header};
use axum::response::IntoResponse;
use axum::routing::get;
use reactor_core::deploy::ActiveWorkflows;
use reactor_core::engine::{Observer, Outcome, Runtime, RuntimeEvent};
use reactor_core::metrics::{
    Family, Histogram, Kind, LATENCY_BUCKETS, Labels, labels, render, trigger_families,
    trigger_rows,
};

use crate::auth::Role;
use crate::db::SqlStore;
use crate::server::RouteSpec;

/// The `Content-Type` of the text format.
pub const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Most distinct (workflow, action, result) histograms and (workflow, status) counters kept;
/// beyond it new combinations are counted under `workflow="_other"` (workflow names come
/// from API users: the exposition must stay bounded).
const MAX_SERIES: usize = 10_000;

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// (workflow, action, result) of a step latency histogram.
type StepKey = (String, String, &'static str);

/// Counters fed by the runtime. Cheap per event: a map lookup and an atomic add.
#[derive(Debug, Default)]
pub struct EngineMetrics {
    /// (workflow, status) → count; `started` counts new executions.
    executions: Mutex<HashMap<(String, &'static str), Arc<AtomicU64>>>,
    /// (workflow, action, result) → step latency.
    steps: Mutex<HashMap<StepKey, Arc<Histogram>>>,
    /// workflow → trigger lag.
    lag: Mutex<HashMap<String, Arc<Histogram>>>,
}

impl EngineMetrics {
    pub fn new() -> EngineMetrics {
        EngineMetrics::default()
    }

    fn count(&self, workflow: &str, status: &'static str) {
        let counter = {
            let mut map = lock(&self.executions);
            let full = map.len() >= MAX_SERIES;
            let key = (workflow.to_string(), status);
            match map.get(&key) {
                Some(counter) => counter.clone(),
                None => {
                    let key = if full {
                        ("_other".to_string(), status)
                    } else {
                        key
                    };
                    map.entry(key).or_default().clone()
                }
            }
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn step(&self, workflow: &str, action: &str, result: &'static str, seconds: f64) {
        let histogram = {
            let mut map = lock(&self.steps);
            let full = map.len() >= MAX_SERIES;
            let key = (workflow.to_string(), action.to_string(), result);
            match map.get(&key) {
                Some(h) => h.clone(),
                None => {
                    let key = if full {
                        ("_other".to_string(), action.to_string(), result)
                    } else {
                        key
                    };
                    map.entry(key)
                        .or_insert_with(|| Arc::new(Histogram::new(LATENCY_BUCKETS)))
                        .clone()
                }
            }
        };
        histogram.observe(seconds);
    }

    fn lag(&self, workflow: &str, seconds: f64) {
        let histogram = {
            let mut map = lock(&self.lag);
            let key = if map.len() >= MAX_SERIES && !map.contains_key(workflow) {
                "_other".to_string()
            } else {
                workflow.to_string()
            };
            map.entry(key)
                .or_insert_with(|| Arc::new(Histogram::new(LATENCY_BUCKETS)))
                .clone()
        };
        histogram.observe(seconds);
    }

    /// The engine's families.
    pub fn families(&self) -> Vec<Family> {
        let mut executions = Family::new(
            "reactor_executions_total",
            Kind::Counter,
            "Executions started (status=\"started\") and finished, by workflow and status, since the hub started.",
        );
        let mut rows: Vec<_> = lock(&self.executions)
            .iter()
            .map(|((w, s), c)| (w.clone(), *s, c.load(Ordering::Relaxed)))
            .collect();
        rows.sort();
        for (workflow, status, count) in rows {
            executions.push(
                labels([("workflow", &workflow), ("status", status)]),
                count as f64,
            );
        }
        let mut steps = Family::new(
            "reactor_step_duration_seconds",
            Kind::Histogram,
            "How long step actions ran, by workflow, action and result (succeeded|failed).",
        );
        let mut rows: Vec<_> = lock(&self.steps)
            .iter()
            .map(|(k, h)| (k.clone(), h.clone()))
            .collect();
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        for ((workflow, action, result), histogram) in rows {
            steps.push_histogram(
                &labels([
                    ("workflow", &workflow),
                    ("action", &action),
                    ("result", result),
                ]),
                &histogram,
            );
        }
        let mut lag = Family::new(
            "reactor_trigger_lag_seconds",
            Kind::Histogram,
            "Time from an event's own timestamp to its execution being recorded, by workflow.",
        );
        let mut rows: Vec<_> = lock(&self.lag)
            .iter()
            .map(|(k, h)| (k.clone(), h.clone()))
            .collect();
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        for (workflow, histogram) in rows {
            lag.push_histogram(&labels([("workflow", &workflow)]), &histogram);
        }
        vec![executions, steps, lag]
    }
}

impl Observer for EngineMetrics {
    fn observe(&self, event: &RuntimeEvent<'_>) {
        match event {
            RuntimeEvent::ExecutionStarted { record, event_time } => {
                self.count(&record.workflow, "started");
                if let Some(time) = event_time {
                    let millis = record.created_at.millis() - time.millis();
                    self.lag(&record.workflow, millis.max(0) as f64 / 1000.0);
                }
            }
            RuntimeEvent::ExecutionFinished { record } => {
                self.count(&record.workflow, record.status.as_str());
            }
            RuntimeEvent::Step(step) => {
                if let Some((outcome, elapsed)) = step.phase {
                    let result = match outcome {
                        Outcome::Succeeded(_) => "succeeded",
                        Outcome::Failed(_) => "failed",
                    };
                    self.step(step.workflow, step.action, result, elapsed.as_secs_f64());
                }
            }
            _ => {}
        }
    }
}

/// The process and the data folder's disk, read through `sysinfo`.
struct ProcessProbe {
    system: sysinfo::System,
    disks: sysinfo::Disks,
    pid: Option<sysinfo::Pid>,
}

impl ProcessProbe {
    fn new() -> ProcessProbe {
        ProcessProbe {
            system: sysinfo::System::new(),
            disks: sysinfo::Disks::new(),
            pid: sysinfo::get_current_pid().ok(),
        }
    }

    fn families(&mut self, data_dir: &std::path::Path) -> Vec<Family> {
        let mut families = Vec::new();
        if let Some(pid) = self.pid {
            self.system.refresh_processes_specifics(
                sysinfo::ProcessesToUpdate::Some(&[pid]),
                true,
                sysinfo::ProcessRefreshKind::nothing()
                    .with_cpu()
                    .with_memory(),
            );
            if let Some(process) = self.system.process(pid) {
                families.push(Family::single(
                    "reactor_process_cpu_percent",
                    Kind::Gauge,
                    "CPU used by the hub process since the previous reading, percent of one core.",
                    f64::from(process.cpu_usage()),
                ));
                families.push(Family::single(
                    "reactor_process_resident_memory_bytes",
                    Kind::Gauge,
                    "Resident memory of the hub process.",
                    process.memory() as f64,
                ));
            }
        }
        self.disks.refresh(true);
        let data_dir = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
        // The disk holding the data folder: the longest mount point that is its prefix.
        let disk = self
            .disks
            .list()
            .iter()
            .filter(|d| data_dir.starts_with(d.mount_point()))
            .max_by_key(|d| d.mount_point().as_os_str().len());
        if let Some(disk) = disk {
            families.push(Family::single(
                "reactor_disk_available_bytes",
                Kind::Gauge,
                "Free space on the disk holding the hub's data folder.",
                disk.available_space() as f64,
            ));
            families.push(Family::single(
                "reactor_disk_total_bytes",
                Kind::Gauge,
                "Size of the disk holding the hub's data folder.",
                disk.total_space() as f64,
            ));
        }
        families
    }
}

/// The journal writer's group commits: batches / commits is the mean group size, and busy
/// seconds per second its utilisation (near 1 on SQLite: the writer is the limit).
fn journal_families(journal: &SqlStore) -> Vec<Family> {
    vec![
        Family::single(
            "reactor_journal_commits_total",
            Kind::Counter,
            "Transactions the journal writer committed (each holds one or more write batches).",
            journal.commits() as f64,
        ),
        Family::single(
            "reactor_journal_batches_total",
            Kind::Counter,
            "Write batches committed by the journal writer (refused ones excluded).",
            journal.batches() as f64,
        ),
        Family::single(
            "reactor_journal_writer_busy_seconds_total",
            Kind::Counter,
            "Time the journal writer tasks spent committing groups, summed over the tasks.",
            journal.writer_busy().as_secs_f64(),
        ),
    ]
}

/// Everything `/metrics` shows, collected on demand.
pub struct Telemetry {
    engine: Arc<EngineMetrics>,
    runtime: Runtime,
    workflows: Option<Arc<ActiveWorkflows>>,
    data_dir: PathBuf,
    process: Mutex<ProcessProbe>,
    /// Extra gauges registered by other parts (e.g. stream subscribers).
    gauges: Mutex<Vec<(&'static str, &'static str, Arc<AtomicU64>)>>,
    /// The SQL journal whose group commits are reported.
    journal: Option<Arc<SqlStore>>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("data_dir", &self.data_dir)
            .finish_non_exhaustive()
    }
}

impl Telemetry {
    /// `engine` must be the observer given to `runtime` (`Runtime::with_observer`).
    pub fn new(
        engine: Arc<EngineMetrics>,
        runtime: Runtime,
        workflows: Option<Arc<ActiveWorkflows>>,
        data_dir: PathBuf,
    ) -> Telemetry {
        Telemetry {
            engine,
            runtime,
            workflows,
            data_dir,
            process: Mutex::new(ProcessProbe::new()),
            gauges: Mutex::default(),
            journal: None,
        }
    }

    /// Also reports `journal`'s group commits (batches per commit, writer utilisation).
    pub fn with_journal(mut self, journal: Arc<SqlStore>) -> Telemetry {
        self.journal = Some(journal);
        self
    }

    /// Adds a gauge read from `value` at each collection.
    pub fn register_gauge(&self, name: &'static str, help: &'static str, value: Arc<AtomicU64>) {
        lock(&self.gauges).push((name, help, value));
    }

    /// Every family, freshly collected.
    pub fn families(&self) -> Vec<Family> {
        let mut families = self.engine.families();
        let stats = self.runtime.stats();
        families.push(Family::single(
            "reactor_executions_running",
            Kind::Gauge,
            "Executions holding a run slot in this hub (running, sleeping or waiting).",
            self.runtime.running() as f64,
        ));
        families.push(Family::single(
            "reactor_executions_queued",
            Kind::Gauge,
            "Executions recorded and waiting for a concurrency slot in this hub.",
            self.runtime.queued() as f64,
        ));
        families.push(Family::single(
            "reactor_executions_saturated",
            Kind::Gauge,
            "1 when every run slot is taken (new submissions wait).",
            f64::from(u8::from(self.runtime.saturated())),
        ));
        families.push(Family::single(
            "reactor_executions_skipped_total",
            Kind::Counter,
            "Events the workflow's if/unless rejected (no execution created).",
            stats.skipped.load(Ordering::Relaxed) as f64,
        ));
        families.push(Family::single(
            "reactor_executions_dropped_total",
            Kind::Counter,
            "Events dropped by concurrency overflow: drop.",
            stats.dropped.load(Ordering::Relaxed) as f64,
        ));
        if let Some(workflows) = &self.workflows {
            families.push(Family::single(
                "reactor_workflows_loaded",
                Kind::Gauge,
                "Active workflows.",
                workflows.list().len() as f64,
            ));
            families.extend(trigger_families(&trigger_rows(workflows)));
        }
        for (name, help, value) in lock(&self.gauges).iter() {
            families.push(Family::single(
                name,
                Kind::Gauge,
                help,
                value.load(Ordering::Relaxed) as f64,
            ));
        }
        if let Some(journal) = &self.journal {
            families.extend(journal_families(journal));
        }
        families.extend(lock(&self.process).families(&self.data_dir));
        families
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        render(&self.families())
    }

    /// The value of `metric` over the samples whose labels include `selector` (summed when
    /// several match); `None` when none does. `metric` may name a histogram's `_sum` or
    /// `_count` series.
    pub fn value(families: &[Family], metric: &str, selector: &Labels) -> Option<f64> {
        let mut found = None;
        for family in families {
            if !metric.starts_with(family.name) {
                continue;
            }
            for sample in &family.samples {
                if sample.name == metric
                    && selector
                        .iter()
                        .all(|(k, v)| sample.labels.get(k).is_some_and(|have| have == v))
                {
                    *found.get_or_insert(0.0) += sample.value;
                }
            }
        }
        found
    }
}

/// `GET /metrics` (viewer).
pub fn routes(telemetry: Arc<Telemetry>) -> Vec<RouteSpec> {
    vec![RouteSpec::new(
        Method::GET,
        "/metrics",
        Role::Viewer,
        "Prometheus metrics (text format)",
        get(move || {
            let telemetry = telemetry.clone();
            async move {
                // sysinfo reads /proc: keep it off the async workers.
                let text = tokio::task::spawn_blocking(move || telemetry.render())
                    .await
                    .unwrap_or_default();
                ([(header::CONTENT_TYPE, TEXT_FORMAT)], text).into_response()
            }
        }),
    )]
}
