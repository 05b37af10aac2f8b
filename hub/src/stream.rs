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
//! Design — what keeps 1,000 subscribers from slowing the engine (figures in
//! docs/performance.md, "Live stream fan-out"):
//! - Nothing is built while nobody listens. The runtime's [`Observer`] call only *admits* an
//!   event into the current window — a counter check under a short lock — and encodes its SSE
//!   frame once if admitted.
//! - Each window admits at most [`EVENTS_PER_SECOND`] × its length execution events and as
//!   many step events for unfiltered subscribers, and as many again per workflow some
//!   subscriber filters on; the rest are only counted. Alerts, metrics snapshots and lag
//!   notices always pass.
//! - A pump task, once per window, builds one chunk per distinct filter (frames concatenated,
//!   plus `lagged {"missed": N}` when events were left out) and hands each subscriber a
//!   reference-counted copy through a small queue. The engine never waits for a subscriber;
//!   a subscriber whose queue is full misses that chunk and is told so in its next one.
//! - Windows last [`WINDOW`] (250 ms) up to 250 subscribers and lengthen with more, so that
//!   all subscribers together get about [`CHUNKS_PER_SECOND`] chunks a second, up to
//!   [`LONGEST_WINDOW`] (1 s, from 1,000 subscribers on). Each chunk is one write to one
//!   socket: the part of the stream's cost that grows with subscribers stays near 1,000
//!   writes a second up to 1,000 subscribers.
//! - An event's JSON is built only once it is admitted ([`LiveStream::offer`]): under load
//!   almost every event is only counted, and building each one's data first cost more than
//!   the rest of the stream together (a tenth of the engine's CPU per execution, measured).
//!
//! So each subscriber receives everything up to 40 execution and 40 step events per second
//! (≤ 250 ms late, ≤ 1 s with many subscribers), and a faithful sample with counts of what was
//! skipped beyond that: a live view, not a log — the executions API has the full record. At
//! most [`MAX_SUBSCRIBERS`] (503 beyond); the `metrics` event every second doubles as the
//! keep-alive.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
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
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::api::problem::ApiError;
use crate::auth::Role;
use crate::metrics::Telemetry;
use crate::server::RouteSpec;

/// The shortest window (few subscribers).
pub const WINDOW: Duration = Duration::from_millis(250);
/// The longest window (many subscribers).
pub const LONGEST_WINDOW: Duration = Duration::from_secs(1);
/// Chunks all subscribers together get per second, which sets the window's length between
/// [`WINDOW`] and [`LONGEST_WINDOW`].
pub const CHUNKS_PER_SECOND: u64 = 1_000;
/// Execution events (and, separately, step events) a subscriber gets per second.
pub const EVENTS_PER_SECOND: usize = 40;
/// Chunks queued per subscriber before it misses some.
pub const SUBSCRIBER_QUEUE: usize = 16;
/// Most subscribers at once.
pub const MAX_SUBSCRIBERS: u64 = 10_000;
/// How often a metrics snapshot is sent.
pub const SNAPSHOT_PERIOD: Duration = Duration::from_secs(1);
/// Most events held in one window (a bound, not a budget: admission keeps it far lower).
const MAX_WINDOW: usize = 100_000;

/// Which budget an event draws from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    Execution = 0,
    Step = 1,
    /// Alerts, metrics, lag notices: never left out.
    Always = 2,
}

fn class_of(kind: &str) -> Class {
    if kind.starts_with("execution.") {
        Class::Execution
    } else if kind.starts_with("step.") {
        Class::Step
    } else {
        Class::Always
    }
}

/// One admitted event, encoded once.
#[derive(Debug)]
struct Item {
    class: Class,
    workflow: Option<String>,
    /// `event: KIND\ndata: JSON\n\n` (JSON has no raw newlines).
    frame: Bytes,
}

fn frame(kind: &str, data: &Value) -> Bytes {
    Bytes::from(format!("event: {kind}\ndata: {data}\n\n"))
}

/// How long a window lasts with `subscribers` connected.
pub fn window_for(subscribers: u64) -> Duration {
    let spread = Duration::from_secs(1)
        .saturating_mul(u32::try_from(subscribers).unwrap_or(u32::MAX))
        / u32::try_from(CHUNKS_PER_SECOND).unwrap_or(u32::MAX);
    spread.clamp(WINDOW, LONGEST_WINDOW)
}

/// Execution events (and, separately, step events) a subscriber gets in a window of `length`.
pub fn cap_for(length: Duration) -> usize {
    let millis = usize::try_from(length.as_millis()).unwrap_or(usize::MAX);
    (EVENTS_PER_SECOND.saturating_mul(millis) / 1000).max(1)
}

/// What one window collected.
#[derive(Debug)]
struct Window {
    /// Its budget per class ([`cap_for`] its length).
    cap: usize,
    items: Vec<Item>,
    /// Admitted for everyone, per class.
    admitted: [usize; 2],
    /// Admitted per filtered workflow, per class.
    admitted_for: HashMap<String, [usize; 2]>,
    /// Left out at admission: for everyone, and per filtered workflow.
    skipped: u64,
    skipped_for: HashMap<String, u64>,
}

impl Window {
    fn new(length: Duration) -> Window {
        Window {
            cap: cap_for(length),
            items: Vec::new(),
            admitted: [0; 2],
            admitted_for: HashMap::new(),
            skipped: 0,
            skipped_for: HashMap::new(),
        }
    }
}

impl Default for Window {
    fn default() -> Window {
        Window::new(WINDOW)
    }
}

#[derive(Debug)]
struct Subscriber {
    id: u64,
    filter: Option<String>,
    queue: mpsc::Sender<Bytes>,
    /// Frames it missed because its queue was full.
    missed: u64,
}

#[derive(Debug, Default)]
struct Shared {
    window: Mutex<Window>,
    /// Workflow filters in use → how many subscribers use each.
    filters: Mutex<HashMap<String, usize>>,
    /// Subscribers with a filter (none: events skip the filters' lock).
    filtered: AtomicU64,
    subscribers: Mutex<Vec<Subscriber>>,
    count: Arc<AtomicU64>,
    next_id: AtomicU64,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// The live stream: admission, windows and subscribers. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct LiveStream {
    shared: Arc<Shared>,
}

impl LiveStream {
    pub fn new() -> LiveStream {
        LiveStream::default()
    }

    /// Connected subscribers (for `/metrics`: `reactor_stream_subscribers`).
    pub fn subscribers(&self) -> Arc<AtomicU64> {
        self.shared.count.clone()
    }

    /// Whether anyone listens (events are not even built otherwise).
    pub fn listening(&self) -> bool {
        self.shared.count.load(Ordering::Relaxed) > 0
    }

    /// Offers an event to the current window: admitted (and encoded) within the budgets,
    /// counted otherwise. Never blocks on a subscriber.
    pub fn publish(&self, kind: &'static str, workflow: Option<&str>, data: &Value) {
        self.admit(kind, workflow, || frame(kind, data));
    }

    /// Like [`LiveStream::publish`], building the event's data only once it is admitted:
    /// most events of a busy engine are only counted, and building their JSON would cost
    /// more than the rest of the stream.
    pub fn offer(&self, kind: &'static str, workflow: Option<&str>, data: impl FnOnce() -> Value) {
        self.admit(kind, workflow, || frame(kind, &data()));
    }

    /// Admits an event into the current window within the budgets, encoding its frame only
    /// then; counts it otherwise.
    fn admit(&self, kind: &'static str, workflow: Option<&str>, encode: impl FnOnce() -> Bytes) {
        if !self.listening() {
            return;
        }
        let class = class_of(kind);
        let filtered = workflow.filter(|w| {
            self.shared.filtered.load(Ordering::Relaxed) > 0
                && lock(&self.shared.filters).contains_key(*w)
        });
        {
            let mut window = lock(&self.shared.window);
            let window = &mut *window;
            let admit = match class {
                Class::Always => window.items.len() < MAX_WINDOW,
                Class::Execution | Class::Step => {
                    let slot = class as usize;
                    let cap = window.cap;
                    let for_all = window.admitted[slot] < cap;
                    let for_filter = filtered.is_some_and(|w| {
                        window
                            .admitted_for
                            .get(w)
                            .is_none_or(|counts| counts[slot] < cap)
                    });
                    if for_all || for_filter {
                        window.admitted[slot] += 1;
                        if let Some(w) = filtered {
                            window.admitted_for.entry(w.to_string()).or_default()[slot] += 1;
                        }
                        window.items.len() < MAX_WINDOW
                    } else {
                        false
                    }
                }
            };
            if !admit {
                window.skipped += 1;
                if let Some(w) = filtered {
                    *window.skipped_for.entry(w.to_string()).or_default() += 1;
                }
                return;
            }
        }
        let item = Item {
            class,
            workflow: workflow.map(str::to_string),
            frame: encode(),
        };
        lock(&self.shared.window).items.push(item);
    }

    /// A new subscriber for `workflow` (all when `None`), or `None` when [`MAX_SUBSCRIBERS`]
    /// are connected.
    pub fn subscribe(&self, workflow: Option<String>) -> Option<Subscription> {
        let now = self.shared.count.fetch_add(1, Ordering::AcqRel);
        if now >= MAX_SUBSCRIBERS {
            self.shared.count.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        let (queue, receiver) = mpsc::channel(SUBSCRIBER_QUEUE);
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        if let Some(w) = &workflow {
            *lock(&self.shared.filters).entry(w.clone()).or_default() += 1;
            self.shared.filtered.fetch_add(1, Ordering::Relaxed);
        }
        lock(&self.shared.subscribers).push(Subscriber {
            id,
            filter: workflow,
            queue,
            missed: 0,
        });
        Some(Subscription {
            id,
            receiver,
            shared: self.shared.clone(),
        })
    }

    /// Closes the current window — one chunk per distinct filter, handed to every subscriber
    /// — and opens the next one; returns that one's length ([`window_for`] the subscribers).
    pub fn flush(&self) -> Duration {
        let length = window_for(self.shared.count.load(Ordering::Relaxed));
        let window = std::mem::replace(&mut *lock(&self.shared.window), Window::new(length));
        if window.items.is_empty() && window.skipped == 0 {
            return length;
        }
        let mut chunks: HashMap<Option<String>, Option<(Bytes, u64)>> = HashMap::new();
        let mut subscribers = lock(&self.shared.subscribers);
        subscribers.retain_mut(|subscriber| {
            let chunk = chunks
                .entry(subscriber.filter.clone())
                .or_insert_with(|| chunk_for(&window, subscriber.filter.as_deref()));
            let Some((bytes, frames)) = chunk else {
                return true;
            };
            let bytes = if subscriber.missed > 0 {
                let note = frame("lagged", &json!({ "missed": subscriber.missed }));
                let mut joined = Vec::with_capacity(note.len() + bytes.len());
                joined.extend_from_slice(&note);
                joined.extend_from_slice(bytes);
                Bytes::from(joined)
            } else {
                bytes.clone()
            };
            match subscriber.queue.try_send(bytes) {
                Ok(()) => {
                    subscriber.missed = 0;
                    true
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    subscriber.missed += *frames;
                    true
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
        length
    }

    /// The pump: closes each window when its time is up and sends a `metrics` snapshot every
    /// [`SNAPSHOT_PERIOD`] while anyone listens, until `stop` fires.
    pub async fn run(self, telemetry: Option<Arc<Telemetry>>, stop: CancellationToken) {
        let mut last_snapshot = tokio::time::Instant::now();
        let mut next = tokio::time::Instant::now() + WINDOW;
        loop {
            tokio::select! {
                biased;
                () = stop.cancelled() => return,
                () = tokio::time::sleep_until(next) => {}
            }
            if let Some(telemetry) = &telemetry
                && self.listening()
                && last_snapshot.elapsed() >= SNAPSHOT_PERIOD
            {
                last_snapshot = tokio::time::Instant::now();
                let telemetry = telemetry.clone();
                if let Ok(value) = tokio::task::spawn_blocking(move || snapshot(&telemetry)).await {
                    self.publish("metrics", None, &value);
                }
            }
            // From the planned end, not from now: the windows do not drift (a late wake-up
            // is not made up for, as the pump never runs windows back to back).
            next = (next + self.flush()).max(tokio::time::Instant::now());
        }
    }
}

/// The chunk subscribers with `filter` get from `window`, and how many frames it holds;
/// `None` when there is nothing for them.
fn chunk_for(window: &Window, filter: Option<&str>) -> Option<(Bytes, u64)> {
    let cap = window.cap;
    let mut taken = [0usize; 2];
    let mut skipped = match filter {
        None => window.skipped,
        Some(w) => window.skipped_for.get(w).copied().unwrap_or(0),
    };
    let mut out = Vec::new();
    let mut frames = 0u64;
    for item in &window.items {
        let matches = match (filter, item.workflow.as_deref()) {
            (Some(wanted), Some(of)) => wanted == of,
            _ => true,
        };
        if !matches {
            continue;
        }
        if item.class != Class::Always {
            let slot = item.class as usize;
            if taken[slot] >= cap {
                skipped += 1;
                continue;
            }
            taken[slot] += 1;
        }
        out.extend_from_slice(&item.frame);
        frames += 1;
    }
    if skipped > 0 {
        out.extend_from_slice(&frame("lagged", &json!({ "missed": skipped })));
        frames += 1;
    }
    (frames > 0).then(|| (Bytes::from(out), frames))
}

/// One subscriber: its queue of chunks. Unregistered when dropped.
#[derive(Debug)]
pub struct Subscription {
    id: u64,
    receiver: mpsc::Receiver<Bytes>,
    shared: Arc<Shared>,
}

impl Subscription {
    /// The next chunk of frames; `None` when the stream closed.
    pub async fn next(&mut self) -> Option<Bytes> {
        self.receiver.recv().await
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let filter = {
            let mut subscribers = lock(&self.shared.subscribers);
            let at = subscribers.iter().position(|s| s.id == self.id);
            at.map(|at| subscribers.swap_remove(at))
                .and_then(|s| s.filter)
        };
        if let Some(w) = filter {
            self.shared.filtered.fetch_sub(1, Ordering::Relaxed);
            let mut filters = lock(&self.shared.filters);
            if let Some(n) = filters.get_mut(&w) {
                *n -= 1;
                if *n == 0 {
                    filters.remove(&w);
                }
            }
        }
        self.shared.count.fetch_sub(1, Ordering::AcqRel);
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
            RuntimeEvent::ExecutionStarted { record, .. } => {
                self.offer("execution.started", Some(&record.workflow), || {
                    execution_data(record)
                });
            }
            RuntimeEvent::ExecutionFinished { record } => {
                self.offer("execution.finished", Some(&record.workflow), || {
                    execution_data(record)
                });
            }
            RuntimeEvent::Step(step) => {
                let kind = match step.phase {
                    None => "step.started",
                    Some(_) => "step.finished",
                };
                self.offer(kind, Some(step.workflow), || {
                    let mut data = json!({
                        "execution": step.execution.to_string(),
                        "workflow": step.workflow,
                        "step": step.step,
                        "action": step.action,
                        "attempt": step.attempt,
                    });
                    if let Some((outcome, elapsed)) = step.phase {
                        data["duration_ms"] = json!(elapsed.as_secs_f64() * 1000.0);
                        match outcome {
                            Outcome::Succeeded(_) => data["result"] = json!("succeeded"),
                            Outcome::Failed(error) => {
                                data["result"] = json!("failed");
                                data["error"] = error.to_value();
                            }
                        }
                    }
                    data
                });
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
    let Some(subscription) = stream.subscribe(workflow) else {
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
        (subscription, stop),
        |(mut subscription, stop)| async move {
            // Cancel-safe: a chunk is either taken whole or left in the queue.
            let chunk = tokio::select! {
                biased;
                () = stop.cancelled() => return None,
                chunk = subscription.next() => chunk?,
            };
            Some((Ok::<_, Infallible>(chunk), (subscription, stop)))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(bytes: &Bytes) -> Vec<(String, Value)> {
        let text = std::str::from_utf8(bytes).unwrap();
        text.split("\n\n")
            .filter(|f| !f.is_empty())
            .map(|f| {
                let mut lines = f.lines();
                let event = lines
                    .next()
                    .unwrap()
                    .trim_start_matches("event: ")
                    .to_string();
                let data = lines.next().unwrap().trim_start_matches("data: ");
                (event, serde_json::from_str(data).unwrap())
            })
            .collect()
    }

    #[tokio::test]
    async fn budgets_per_window_with_counts_of_what_was_left_out() {
        let stream = LiveStream::new();
        stream.publish("execution.started", Some("a"), &json!({"n": 0}));
        assert!(
            lock(&stream.shared.window).items.is_empty(),
            "nobody listens"
        );

        let mut all = stream.subscribe(None).unwrap();
        let mut only_b = stream.subscribe(Some("b".into())).unwrap();
        for n in 0..25 {
            stream.publish("step.started", Some("a"), &json!({"n": n}));
        }
        // Left out: its data is never built.
        stream.offer("step.started", Some("a"), || {
            panic!("built although left out")
        });
        for n in 0..3 {
            stream.publish("execution.finished", Some("b"), &json!({"n": n}));
            stream.publish("step.started", Some("b"), &json!({"n": n}));
        }
        stream.publish("alert.firing", None, &json!({}));
        stream.flush();

        let got = frames(&all.next().await.unwrap());
        let steps = got.iter().filter(|(e, _)| e == "step.started").count();
        assert_eq!(steps, cap_for(WINDOW), "{got:?}");
        assert_eq!(
            got.iter()
                .filter(|(e, _)| e == "execution.finished")
                .count(),
            3
        );
        assert!(got.iter().any(|(e, _)| e == "alert.firing"));
        let (last, data) = got.last().unwrap();
        assert_eq!(last, "lagged");
        assert_eq!(
            data["missed"],
            json!(25 + 1 + 3 - cap_for(WINDOW)),
            "{got:?}"
        );

        // The filtered subscriber gets all of b's events although a's used up the budget.
        let got = frames(&only_b.next().await.unwrap());
        let kinds: Vec<&str> = got.iter().map(|(e, _)| e.as_str()).collect();
        assert_eq!(
            kinds,
            [
                "execution.finished",
                "step.started",
                "execution.finished",
                "step.started",
                "execution.finished",
                "step.started",
                "alert.firing"
            ]
        );
        drop(only_b);
        assert_eq!(stream.subscribers().load(Ordering::Relaxed), 1);
        assert!(lock(&stream.shared.filters).is_empty());
    }

    #[test]
    fn windows_lengthen_with_subscribers_and_keep_the_rate_per_subscriber() {
        assert_eq!(window_for(0), WINDOW);
        assert_eq!(window_for(250), WINDOW);
        assert_eq!(window_for(500), Duration::from_millis(500));
        assert_eq!(window_for(1_000), LONGEST_WINDOW);
        assert_eq!(window_for(MAX_SUBSCRIBERS), LONGEST_WINDOW);
        assert_eq!(cap_for(WINDOW), 10);
        assert_eq!(cap_for(Duration::from_millis(500)), 20);
        assert_eq!(cap_for(LONGEST_WINDOW), EVENTS_PER_SECOND);
    }

    #[tokio::test]
    async fn many_subscribers_get_longer_windows_with_larger_budgets() {
        let stream = LiveStream::new();
        let mut subscriptions: Vec<Subscription> = (0..1_000)
            .map(|_| stream.subscribe(None).unwrap())
            .collect();
        // The window open before the subscribers came is a short one; the next is long.
        assert_eq!(stream.flush(), LONGEST_WINDOW);
        for n in 0..100 {
            stream.publish("step.started", Some("a"), &json!({"n": n}));
        }
        assert_eq!(stream.flush(), LONGEST_WINDOW);
        for subscription in [0, 999] {
            let subscription = &mut subscriptions[subscription];
            let got = frames(&subscription.next().await.unwrap());
            let steps = got.iter().filter(|(e, _)| e == "step.started").count();
            assert_eq!(steps, EVENTS_PER_SECOND, "{got:?}");
            assert_eq!(
                got.last().unwrap().1["missed"],
                json!(100 - EVENTS_PER_SECOND)
            );
        }
        subscriptions.truncate(10);
        assert_eq!(stream.flush(), WINDOW);
    }

    #[tokio::test]
    async fn a_full_queue_misses_chunks_and_is_told() {
        let stream = LiveStream::new();
        let mut slow = stream.subscribe(None).unwrap();
        for n in 0..SUBSCRIBER_QUEUE + 2 {
            stream.publish("execution.started", Some("a"), &json!({ "n": n }));
            stream.flush();
        }
        for _ in 0..SUBSCRIBER_QUEUE {
            slow.next().await.unwrap();
        }
        stream.publish("execution.started", Some("a"), &json!({"n": "late"}));
        stream.flush();
        let got = frames(&slow.next().await.unwrap());
        assert_eq!(got[0].0, "lagged");
        assert_eq!(got[0].1["missed"], json!(2));
        assert_eq!(got[1].1["n"], json!("late"));
    }
}
