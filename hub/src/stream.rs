//! `GET /api/v1/stream`: the hub's live stream as Server-Sent Events.
//!
//! Events (the SSE `event:` field; `data:` is one JSON object):
//! - `execution.started` / `execution.finished`: `{execution, workflow, version, status,
//!   created_at, finished_at?, error?}` (errors redacted like everything the engine records);
//! - `step.started` / `step.finished`: `{execution, workflow, step, action, attempt,
//!   result?, duration_ms?, error?}`;
//! - `metrics`: every second, a snapshot of headline values (executions by status, running,
//!   queued, process CPU and memory, subscribers);
//! - `alert.firing` / `alert.resolved`: from [`crate::alerts`].
//!
//! `?workflow=NAME` keeps only that workflow's execution and step events (metrics and alerts
//! always pass).
//!
//! Design (what keeps 1,000 subscribers cheap for the engine): one `tokio::sync::broadcast`
//! channel. The runtime's [`Observer`] call builds the event and encodes its whole SSE frame
//! **once** (only while someone listens); `send` puts an `Arc` in the ring and never blocks
//! or waits for a subscriber. Each subscriber, when woken, takes every frame already waiting
//! (up to [`MAX_BATCH`]) and writes them as one chunk: no per-subscriber encoding, one write
//! per wake-up however busy the engine is. A subscriber that falls more than [`CAPACITY`]
//! events behind skips ahead and gets a `lagged` event saying how many it missed.
//! Subscribers are capped ([`MAX_SUBSCRIBERS`]); beyond it the route answers 503. The
//! `metrics` event every second doubles as the keep-alive.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::Query;
use axum::http::{Method, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use reactor_core::engine::{ExecutionRecord, Observer, Outcome, RuntimeEvent};
use reactor_core::metrics::Labels;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::api::problem::ApiError;
use crate::auth::Role;
use crate::metrics::Telemetry;
use crate::server::RouteSpec;

/// Events kept for slow subscribers before they skip.
pub const CAPACITY: usize = 4096;
/// Most subscribers at once.
pub const MAX_SUBSCRIBERS: u64 = 10_000;
/// How often a metrics snapshot is sent.
pub const SNAPSHOT_PERIOD: Duration = Duration::from_secs(1);
/// Most frames written in one chunk.
pub const MAX_BATCH: usize = 512;

/// One event, serialised once for every subscriber.
#[derive(Debug)]
pub struct StreamItem {
    /// The SSE event name (`execution.started` …).
    pub kind: &'static str,
    /// The workflow it concerns, for `?workflow=` (`None`: for everyone).
    pub workflow: Option<String>,
    /// The encoded SSE frame: `event: KIND\ndata: JSON\n\n`.
    pub frame: Bytes,
}

impl StreamItem {
    /// An item with its frame encoded (`data` is one line: JSON has no raw newlines).
    pub fn new(kind: &'static str, workflow: Option<&str>, data: &Value) -> StreamItem {
        StreamItem {
            kind,
            workflow: workflow.map(str::to_string),
            frame: Bytes::from(format!("event: {kind}\ndata: {data}\n\n")),
        }
    }
}

/// The broadcast hub of the live stream.
#[derive(Debug, Clone)]
pub struct LiveStream {
    sender: broadcast::Sender<Arc<StreamItem>>,
    subscribers: Arc<AtomicU64>,
}

impl Default for LiveStream {
    fn default() -> Self {
        LiveStream::new()
    }
}

impl LiveStream {
    pub fn new() -> LiveStream {
        let (sender, _) = broadcast::channel(CAPACITY);
        LiveStream {
            sender,
            subscribers: Arc::default(),
        }
    }

    /// Connected subscribers (for `/metrics`: `reactor_stream_subscribers`).
    pub fn subscribers(&self) -> Arc<AtomicU64> {
        self.subscribers.clone()
    }

    /// Whether anyone listens (events are not even built otherwise).
    pub fn listening(&self) -> bool {
        self.sender.receiver_count() > 0
    }

    /// Sends an event to every subscriber (dropped when there is none).
    pub fn publish(&self, kind: &'static str, workflow: Option<&str>, data: &Value) {
        if !self.listening() {
            return;
        }
        let _ = self
            .sender
            .send(Arc::new(StreamItem::new(kind, workflow, data)));
    }

    /// A new subscription (also counted), or `None` when [`MAX_SUBSCRIBERS`] are connected.
    pub fn subscribe(&self) -> Option<Subscription> {
        let now = self.subscribers.fetch_add(1, Ordering::AcqRel);
        if now >= MAX_SUBSCRIBERS {
            self.subscribers.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Subscription {
            receiver: self.sender.subscribe(),
            count: self.subscribers.clone(),
        })
    }

    /// Sends a `metrics` snapshot every [`SNAPSHOT_PERIOD`] while anyone listens, until
    /// `stop` fires.
    pub async fn run_snapshots(self, telemetry: Arc<Telemetry>, stop: CancellationToken) {
        let mut ticker = tokio::time::interval(SNAPSHOT_PERIOD);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                biased;
                () = stop.cancelled() => return,
                _ = ticker.tick() => {}
            }
            if !self.listening() {
                continue;
            }
            let telemetry = telemetry.clone();
            let Ok(snapshot) = tokio::task::spawn_blocking(move || snapshot(&telemetry)).await
            else {
                continue;
            };
            self.publish("metrics", None, &snapshot);
        }
    }
}

/// The headline values of a `metrics` event.
pub fn snapshot(telemetry: &Telemetry) -> Value {
    let families = telemetry.families();
    let value = |name: &str| Telemetry::value(&families, name, &Labels::new());
    let mut executions = Map::new();
    for status in ["started", "succeeded", "failed", "cancelled"] {
        let mut selector = Labels::new();
        selector.insert("status".into(), status.into());
        let total = Telemetry::value(&families, "reactor_executions_total", &selector);
        executions.insert(status.into(), json!(total.unwrap_or(0.0)));
    }
    json!({
        "at": reactor_core::engine::Timestamp::now().to_rfc3339(),
        "executions": executions,
        "running": value("reactor_executions_running"),
        "queued": value("reactor_executions_queued"),
        "cpu_percent": value("reactor_process_cpu_percent"),
        "memory_bytes": value("reactor_process_resident_memory_bytes"),
        "subscribers": value("reactor_stream_subscribers"),
    })
}

/// One subscriber's receiver; uncounted when dropped.
#[derive(Debug)]
pub struct Subscription {
    receiver: broadcast::Receiver<Arc<StreamItem>>,
    count: Arc<AtomicU64>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Subscription {
    /// The next event for `workflow` (all when `None`); a `lagged` item when this subscriber
    /// fell behind; `None` when the stream closed.
    pub async fn next(&mut self, workflow: Option<&str>) -> Option<Arc<StreamItem>> {
        loop {
            match self.receiver.recv().await {
                Ok(item) => {
                    if wanted(workflow, &item) {
                        return Some(item);
                    }
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    return Some(lagged(missed));
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    /// The next frames for `workflow`: waits for one, then takes every frame already waiting
    /// (up to [`MAX_BATCH`]) into one chunk. `None` when the stream closed.
    pub async fn next_batch(&mut self, workflow: Option<&str>) -> Option<Bytes> {
        let first = self.next(workflow).await?;
        let mut frames = vec![first];
        while frames.len() < MAX_BATCH {
            match self.receiver.try_recv() {
                Ok(item) => {
                    if wanted(workflow, &item) {
                        frames.push(item);
                    }
                }
                Err(broadcast::error::TryRecvError::Lagged(missed)) => frames.push(lagged(missed)),
                Err(_) => break,
            }
        }
        if frames.len() == 1 {
            return Some(frames[0].frame.clone());
        }
        let mut chunk = Vec::with_capacity(frames.iter().map(|f| f.frame.len()).sum());
        for item in &frames {
            chunk.extend_from_slice(&item.frame);
        }
        Some(Bytes::from(chunk))
    }
}

fn wanted(workflow: Option<&str>, item: &StreamItem) -> bool {
    match (workflow, item.workflow.as_deref()) {
        (Some(wanted), Some(of)) => wanted == of,
        _ => true,
    }
}

fn lagged(missed: u64) -> Arc<StreamItem> {
    Arc::new(StreamItem::new(
        "lagged",
        None,
        &json!({ "missed": missed }),
    ))
}

fn execution_data(record: &ExecutionRecord) -> Value {
    let mut data = json!({
        "execution": record.id.to_string(),
        "workflow": record.workflow,
        "version": record.version,
        "status": record.status.as_str(),
        "created_at": record.created_at.to_rfc3339(),
    });
    if let Some(at) = record.finished_at {
        data["finished_at"] = json!(at.to_rfc3339());
    }
    if let Some(error) = &record.error {
        data["error"] = error.to_value();
    }
    data
}

impl Observer for LiveStream {
    fn observe(&self, event: &RuntimeEvent<'_>) {
        if !self.listening() {
            return;
        }
        match event {
            RuntimeEvent::ExecutionStarted { record, .. } => self.publish(
                "execution.started",
                Some(&record.workflow),
                &execution_data(record),
            ),
            RuntimeEvent::ExecutionFinished { record } => self.publish(
                "execution.finished",
                Some(&record.workflow),
                &execution_data(record),
            ),
            RuntimeEvent::Step(step) => {
                let mut data = json!({
                    "execution": step.execution.to_string(),
                    "workflow": step.workflow,
                    "step": step.step,
                    "action": step.action,
                    "attempt": step.attempt,
                });
                let kind = match step.phase {
                    None => "step.started",
                    Some((outcome, elapsed)) => {
                        data["duration_ms"] = json!(elapsed.as_secs_f64() * 1000.0);
                        match outcome {
                            Outcome::Succeeded(_) => data["result"] = json!("succeeded"),
                            Outcome::Failed(error) => {
                                data["result"] = json!("failed");
                                data["error"] = error.to_value();
                            }
                        }
                        "step.finished"
                    }
                };
                self.publish(kind, Some(step.workflow), &data);
            }
            _ => {}
        }
    }
}

/// The query of `GET /api/v1/stream`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StreamQuery {
    workflow: Option<String>,
}

/// `GET /api/v1/stream` (viewer). Open streams end when `stop` fires (so a graceful
/// shutdown does not wait on them).
pub fn routes(stream: LiveStream, stop: CancellationToken) -> Vec<RouteSpec> {
    vec![RouteSpec::new(
        Method::GET,
        "/api/v1/stream",
        Role::Viewer,
        "Live events (Server-Sent Events): executions, steps, metrics every second, alerts; ?workflow= filters",
        get(move |query: Query<StreamQuery>| {
            let stream = stream.clone();
            let stop = stop.clone();
            async move { sse_response(&stream, query.0.workflow, stop) }
        }),
    )]
}

/// The SSE response for one subscriber of `stream` (`workflow` filters), ending when `stop`
/// fires. Public so benches can serve it without the hub's state.
pub fn sse_response(
    stream: &LiveStream,
    workflow: Option<String>,
    stop: CancellationToken,
) -> Response {
    let Some(subscription) = stream.subscribe() else {
        return ApiError::unavailable(
            "too many stream subscribers",
            &format!("the live stream serves at most {MAX_SUBSCRIBERS} subscribers"),
            5,
        )
        .into_response();
    };
    // A comment first, so clients see the stream open before the first event.
    let hello = futures::stream::once(async {
        Ok::<_, Infallible>(Bytes::from_static(b": reactor live stream\n\n"))
    });
    let frames = futures::stream::unfold(
        (subscription, workflow, stop),
        |(mut subscription, workflow, stop)| async move {
            // Cancel-safe: `next_batch` holds no half-taken frame; the stream simply ends.
            let chunk = tokio::select! {
                biased;
                () = stop.cancelled() => return None,
                chunk = subscription.next_batch(workflow.as_deref()) => chunk?,
            };
            Some((Ok::<_, Infallible>(chunk), (subscription, workflow, stop)))
        },
    );
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(futures::StreamExt::chain(hello, frames)),
    )
        .into_response()
}
