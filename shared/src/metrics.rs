//! Metrics as values, and their Prometheus text exposition: what the hub's `/metrics`, its
//! alert rules and its live stream share, and what the agent's `/metrics` can reuse.
//!
//! - [`Family`]: one metric name with its kind, help and samples (labels → value). Collected
//!   fresh for each scrape or evaluation; nothing here keeps history.
//! - [`Histogram`]: lock-free bucket counters (cumulative on output), for latencies.
//! - [`trigger_families`]: per-trigger counters from [`ActiveWorkflows`] (events, errors,
//!   rejections, restarts, sheds, up).
//! - [`render`]: the text format (version 0.0.4), label values escaped.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::deploy::ActiveWorkflows;
use crate::trigger::{TaskState, TriggerStatsSnapshot};

/// Label name → value, sorted.
pub type Labels = BTreeMap<String, String>;

/// Builds [`Labels`] from pairs.
pub fn labels<const N: usize>(pairs: [(&str, &str); N]) -> Labels {
    pairs
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The Prometheus metric type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// One sample: a full series name (`NAME`, or `NAME_bucket` / `_sum` / `_count` for
/// histograms), its labels and value.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Labels,
    pub value: f64,
}

/// One metric: name, kind, help and its samples.
#[derive(Clone, Debug, PartialEq)]
pub struct Family {
    pub name: &'static str,
    pub kind: Kind,
    pub help: &'static str,
    pub samples: Vec<Sample>,
}

impl Family {
    pub fn new(name: &'static str, kind: Kind, help: &'static str) -> Family {
        Family {
            name,
            kind,
            help,
            samples: Vec::new(),
        }
    }

    /// Adds a sample of this family's own name.
    pub fn push(&mut self, labels: Labels, value: f64) {
        self.samples.push(Sample {
            name: self.name.to_string(),
            labels,
            value,
        });
    }

    /// With one unlabelled sample.
    pub fn single(name: &'static str, kind: Kind, help: &'static str, value: f64) -> Family {
        let mut family = Family::new(name, kind, help);
        family.push(Labels::new(), value);
        family
    }

    /// Adds a histogram's series (`_bucket` per bound and `+Inf`, `_sum`, `_count`).
    pub fn push_histogram(&mut self, labels: &Labels, histogram: &Histogram) {
        let (buckets, sum, count) = histogram.snapshot();
        for (bound, cumulative) in histogram.bounds.iter().zip(&buckets) {
            let mut with_le = labels.clone();
            with_le.insert("le".into(), format_value(*bound));
            self.samples.push(Sample {
                name: format!("{}_bucket", self.name),
                labels: with_le,
                value: *cumulative as f64,
            });
        }
        let mut inf = labels.clone();
        inf.insert("le".into(), "+Inf".into());
        self.samples.push(Sample {
            name: format!("{}_bucket", self.name),
            labels: inf,
            value: count as f64,
        });
        self.samples.push(Sample {
            name: format!("{}_sum", self.name),
            labels: labels.clone(),
            value: sum,
        });
        self.samples.push(Sample {
            name: format!("{}_count", self.name),
            labels: labels.clone(),
            value: count as f64,
        });
    }
}

/// Bucket counters for observations in seconds. Observing is two relaxed atomic adds.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Per bucket (not cumulative); observations above the last bound only count in `count`.
    counts: Vec<AtomicU64>,
    sum_micros: AtomicU64,
    count: AtomicU64,
}

/// Latency buckets, seconds: 1 ms to 1 min.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    /// Records one observation of `seconds` (negative values count as 0).
    pub fn observe(&self, seconds: f64) {
        let seconds = seconds.max(0.0);
        if let Some(index) = self.bounds.iter().position(|b| seconds <= *b) {
            self.counts[index].fetch_add(1, Ordering::Relaxed);
        }
        self.sum_micros
            .fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Cumulative bucket counts, sum (seconds) and count.
    pub fn snapshot(&self) -> (Vec<u64>, f64, u64) {
        let mut running = 0;
        let buckets = self
            .counts
            .iter()
            .map(|c| {
                running += c.load(Ordering::Relaxed);
                running
            })
            .collect();
        (
            buckets,
            self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
            self.count.load(Ordering::Relaxed),
        )
    }
}

/// A label value escaped as the text format requires.
pub fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A value as the text format writes it (integers without a fraction).
pub fn format_value(value: f64) -> String {
    if value.is_nan() {
        "NaN".into()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{}", value as i64)
    } else {
        format!("{value}")
    }
}

/// The Prometheus text exposition of `families`.
pub fn render(families: &[Family]) -> String {
    let mut out = String::with_capacity(8192);
    for family in families {
        let _ = writeln!(out, "# HELP {} {}", family.name, family.help);
        let _ = writeln!(out, "# TYPE {} {}", family.name, family.kind.as_str());
        for sample in &family.samples {
            out.push_str(&sample.name);
            if !sample.labels.is_empty() {
                out.push('{');
                for (i, (key, value)) in sample.labels.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    let _ = write!(out, "{key}=\"{}\"", escape_label(value));
                }
                out.push('}');
            }
            let _ = writeln!(out, " {}", format_value(sample.value));
        }
    }
    out
}

/// One trigger's counters.
#[derive(Clone, Debug)]
pub struct TriggerRow {
    pub workflow: String,
    /// `workflow#index`, `METHOD /path` or the event pattern.
    pub trigger: String,
    pub kind: &'static str,
    pub stats: TriggerStatsSnapshot,
    /// Whether its task runs (`None` for routed triggers, which have no task).
    pub up: Option<bool>,
}

/// Every active trigger of `workflows` with its counters.
pub fn trigger_rows(workflows: &ActiveWorkflows) -> Vec<TriggerRow> {
    let tasks: BTreeMap<String, (TaskState, TriggerStatsSnapshot)> = workflows
        .supervisor()
        .tasks()
        .into_iter()
        .map(|(name, state, stats)| (name, (state, stats.snapshot())))
        .collect();
    let mut rows = Vec::new();
    for info in workflows.triggers() {
        if let Some((state, stats)) = info.task.as_ref().and_then(|t| tasks.get(t)) {
            rows.push(TriggerRow {
                workflow: info.workflow,
                trigger: info.label,
                kind: info.kind,
                stats: stats.clone(),
                up: Some(matches!(state, TaskState::Running | TaskState::Finished)),
            });
        }
    }
    for (workflow, method, path, stats) in workflows.routes().stats() {
        rows.push(TriggerRow {
            workflow: workflow.to_string(),
            trigger: format!("{method} {path}"),
            kind: "http",
            stats: stats.snapshot(),
            up: None,
        });
    }
    for (workflow, pattern, stats) in workflows.events().stats() {
        rows.push(TriggerRow {
            workflow: workflow.to_string(),
            trigger: pattern,
            kind: "event",
            stats: stats.snapshot(),
            up: None,
        });
    }
    rows
}

/// `reactor_trigger_*` families from trigger rows.
pub fn trigger_families(rows: &[TriggerRow]) -> Vec<Family> {
    let row_labels = |row: &TriggerRow| {
        labels([
            ("workflow", row.workflow.as_str()),
            ("trigger", row.trigger.as_str()),
            ("kind", row.kind),
        ])
    };
    let mut up = Family::new(
        "reactor_trigger_up",
        Kind::Gauge,
        "1 while the trigger's task runs, 0 while it restarts after an error or has given up.",
    );
    for row in rows {
        if let Some(is_up) = row.up {
            up.push(row_labels(row), f64::from(u8::from(is_up)));
        }
    }
    type Counter = (&'static str, &'static str, fn(&TriggerStatsSnapshot) -> u64);
    let counters: [Counter; 5] = [
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
        (
            "reactor_trigger_shed_total",
            "Requests answered 503 because the engine was saturated.",
            |s| s.shed,
        ),
    ];
    let mut families = vec![up];
    for (name, help, value) in counters {
        let mut family = Family::new(name, Kind::Counter, help);
        for row in rows {
            family.push(row_labels(row), value(&row.stats) as f64);
        }
        families.push(family);
    }
    let mut healthy = Family::new(
        "reactor_trigger_healthy",
        Kind::Gauge,
        "0 while a trigger keeps failing (3 errors in a row without a success in between), else 1.",
    );
    let mut lag = Family::new(
        "reactor_trigger_source_lag",
        Kind::Gauge,
        "How far behind its source a trigger is, in the source's unit (Kafka messages, stream entries, WAL or binlog bytes); 0 where the source does not tell.",
    );
    let mut last_error = Family::new(
        "reactor_trigger_last_error_timestamp_seconds",
        Kind::Gauge,
        "When the trigger's last error happened (the message is in the API), for triggers that had one.",
    );
    for row in rows {
        healthy.push(row_labels(row), f64::from(u8::from(row.stats.healthy())));
        lag.push(row_labels(row), row.stats.lag as f64);
        if let Some((at, _)) = &row.stats.last_error {
            last_error.push(row_labels(row), at.millis() as f64 / 1000.0);
        }
    }
    families.extend([healthy, lag, last_error]);
    families
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_families_and_histograms() {
        let mut executions = Family::new("reactor_x_total", Kind::Counter, "Things.");
        executions.push(labels([("workflow", "a\"b"), ("status", "ok")]), 3.0);
        let histogram = Histogram::new(&[0.1, 1.0]);
        histogram.observe(0.05);
        histogram.observe(0.5);
        histogram.observe(7.0);
        let mut latency = Family::new("reactor_lat_seconds", Kind::Histogram, "Latency.");
        latency.push_histogram(&labels([("w", "a")]), &histogram);
        let text = render(&[executions, latency]);
        assert_eq!(
            text,
            "# HELP reactor_x_total Things.\n# TYPE reactor_x_total counter\n\
             reactor_x_total{status=\"ok\",workflow=\"a\\\"b\"} 3\n\
             # HELP reactor_lat_seconds Latency.\n# TYPE reactor_lat_seconds histogram\n\
             reactor_lat_seconds_bucket{le=\"0.1\",w=\"a\"} 1\n\
             reactor_lat_seconds_bucket{le=\"1\",w=\"a\"} 2\n\
             reactor_lat_seconds_bucket{le=\"+Inf\",w=\"a\"} 3\n\
             reactor_lat_seconds_sum{w=\"a\"} 7.55\n\
             reactor_lat_seconds_count{w=\"a\"} 3\n"
        );
    }
}
