//! What goes up to the hub, and how it enters the outbox.
//!
//! - **Every execution summary** (with its step trace) once the execution finishes:
//!   [`FleetStore`] wraps the journal and, when a write finishes an execution, appends its
//!   summary to the outbox *before* the journal write. A crash between the two repeats the
//!   summary at most once (the execution id tells the hub it is the same), never loses it.
//! - **Every event emitted by a workflow** (DSL.md: on an agent, `emit` is also forwarded to
//!   the hub): [`FleetBus`] wraps the event bus and appends it before the `emit` step
//!   completes, so an emitted event is durable once the step is. Events that only triggered
//!   workflows (http requests, MQTT messages, files, timers) stay on the device; a workflow
//!   that wants one upstream emits it.
//!
//! Under `policy = "block_triggers"` a full outbox makes these appends wait for room (an
//! ack): executions stall at their end, `max_running` fills up and triggers wait.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use reactor_core::engine::{
    Event, EventBus, ExecutionId, ExecutionRecord, ExecutionStatus, Fact, StepStatus, Timestamp,
};
use reactor_core::outbox::{NewRecord, Outbox, OutboxError, RECORD_OVERHEAD, RecordKind};
use reactor_core::store::{ExecutionQuery, Retention, Store, StoreError, StoreWrite};
use reactor_core::sync::messages::{
    DeviceEvent, ExecutionRef, ExecutionReport, JsonText, MAX_NAME_BYTES, MAX_TEXT_BYTES,
    MAX_TRACE_STEPS, Outcome, StepTrace,
};
use tokio::sync::{mpsc, oneshot};

/// Appends to the outbox, waiting for room under `block_triggers`. Cheap to clone; every
/// clone feeds one appender task that group-commits whatever is queued (up to
/// [`GROUP_RECORDS`] records in one outbox transaction, one fsync), the way the journal
/// group-commits its writes.
#[derive(Debug, Clone)]
pub struct Feed {
    sender: mpsc::Sender<Job>,
}

/// Most records appended in one outbox transaction.
pub const GROUP_RECORDS: usize = 1_000;

#[derive(Debug)]
struct Job {
    record: NewRecord,
    reply: oneshot::Sender<Result<(), StoreError>>,
}

impl Feed {
    /// Starts the appender task (call from within the runtime).
    pub fn new(outbox: Outbox) -> Feed {
        let (sender, receiver) = mpsc::channel(4 * GROUP_RECORDS);
        tokio::spawn(appender(outbox, receiver));
        Feed { sender }
    }

    /// Appends one record durably; returns once it is on disk. `TooLarge` records are
    /// logged and skipped (they can never be sent); a full outbox under `block_triggers`
    /// waits for an ack.
    pub async fn append(&self, kind: RecordKind, payload: Vec<u8>) -> Result<(), StoreError> {
        let record = NewRecord {
            kind,
            created: Timestamp::now(),
            payload,
        };
        let (reply, answer) = oneshot::channel();
        self.sender
            .send(Job { record, reply })
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }
}

async fn appender(outbox: Outbox, mut receiver: mpsc::Receiver<Job>) {
    let max = outbox.limits().max_bytes;
    while let Some(first) = receiver.recv().await {
        let mut jobs = vec![first];
        while jobs.len() < GROUP_RECORDS {
            match receiver.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        // Chunks that fit the bound on their own (so `block_triggers` can always make room).
        let mut chunk: Vec<Job> = Vec::new();
        let mut bytes = 0u64;
        for job in jobs {
            let size = job.record.payload.len() as u64 + RECORD_OVERHEAD;
            if size > max {
                tracing::warn!(
                    size,
                    max,
                    "record larger than the outbox: not sent to the hub"
                );
                let _ = job.reply.send(Ok(()));
                continue;
            }
            if bytes + size > max {
                append_chunk(&outbox, std::mem::take(&mut chunk)).await;
                bytes = 0;
            }
            bytes += size;
            chunk.push(job);
        }
        append_chunk(&outbox, chunk).await;
    }
}

async fn append_chunk(outbox: &Outbox, jobs: Vec<Job>) {
    if jobs.is_empty() {
        return;
    }
    let records: Vec<NewRecord> = jobs.iter().map(|job| job.record.clone()).collect();
    let result = loop {
        let waiting = outbox.space().notified();
        match outbox.append(records.clone(), Timestamp::now()).await {
            Ok(_) => break Ok(()),
            Err(OutboxError::Full { .. }) => {
                // Re-check now and then too: expiry also makes room.
                let _ = tokio::time::timeout(Duration::from_secs(1), waiting).await;
            }
            Err(OutboxError::Store(error)) => break Err(error),
            Err(other) => break Err(StoreError::Io(other.to_string())),
        }
    };
    for job in jobs {
        let _ = job.reply.send(result.clone());
    }
}

fn clip(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

fn outcome(status: ExecutionStatus) -> Outcome {
    match status {
        ExecutionStatus::Queued | ExecutionStatus::Running => Outcome::Running,
        ExecutionStatus::Succeeded => Outcome::Succeeded,
        ExecutionStatus::Failed => Outcome::Failed,
        ExecutionStatus::Cancelled => Outcome::Cancelled,
    }
}

fn step_outcome(status: StepStatus) -> Outcome {
    match status {
        StepStatus::Succeeded => Outcome::Succeeded,
        StepStatus::Failed => Outcome::Failed,
        StepStatus::Skipped => Outcome::Skipped,
        StepStatus::Cancelled => Outcome::Cancelled,
        _ => Outcome::Running,
    }
}

/// The wire summary of a finished execution, clipped to the protocol's bounds.
pub fn report(record: &ExecutionRecord) -> ExecutionReport {
    ExecutionReport {
        execution: ExecutionRef::from(record.id),
        workflow: clip(&record.workflow, MAX_NAME_BYTES),
        workflow_version: record.version,
        outcome: outcome(record.status),
        started_at: record.created_at,
        finished_at: record.finished_at,
        error: record
            .error
            .as_ref()
            .map(|e| clip(&e.message, MAX_TEXT_BYTES)),
        trace: record
            .steps
            .iter()
            .take(MAX_TRACE_STEPS)
            .map(|(step, s)| StepTrace {
                step: clip(step, MAX_NAME_BYTES),
                outcome: step_outcome(s.status),
                started_at: s.started_at.unwrap_or(record.created_at),
                finished_at: s.finished_at,
                attempts: s.attempts,
                error: s.error.as_ref().map(|e| clip(&e.message, MAX_TEXT_BYTES)),
            })
            .collect(),
    }
}

/// The wire form of an emitted event.
pub fn device_event(event: &Event) -> DeviceEvent {
    let time = chrono::DateTime::parse_from_rfc3339(&event.time)
        .map(|t| Timestamp(t.timestamp_millis()))
        .unwrap_or_else(|_| Timestamp::now());
    DeviceEvent {
        id: clip(&event.id, MAX_NAME_BYTES),
        event_type: clip(&event.event_type, MAX_NAME_BYTES),
        source: clip(&event.source, MAX_NAME_BYTES),
        time,
        data: JsonText::from_value(&event.data),
        meta: JsonText::from_value(&event.meta),
    }
}

/// The journal, feeding finished executions' summaries to the outbox.
pub struct FleetStore {
    inner: Arc<dyn Store>,
    feed: Feed,
    health: Arc<Health>,
}

impl std::fmt::Debug for FleetStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetStore").finish_non_exhaustive()
    }
}

/// Executions finished and failed over a trailing window (what the status reports and
/// rollout health gates read), counted in [`HEALTH_BUCKETS`] buckets, and restarted when a
/// new bundle becomes active ([`Health::restart`]) so a gate judges the new workflows only.
#[derive(Debug)]
pub struct Health {
    window: std::time::Duration,
    state: std::sync::Mutex<HealthWindow>,
}

/// Buckets per window (the window slides by one bucket's width).
pub const HEALTH_BUCKETS: u32 = 60;

#[derive(Debug)]
struct HealthWindow {
    /// Counting starts here (start, or the last restart).
    since: std::time::Instant,
    /// (bucket index since `since`, total, failed), oldest first.
    buckets: std::collections::VecDeque<(u64, u32, u32)>,
}

impl Default for Health {
    fn default() -> Self {
        Health::new(std::time::Duration::from_secs(300))
    }
}

impl Health {
    /// Counts over the trailing `window` (at least one second).
    pub fn new(window: std::time::Duration) -> Health {
        Health {
            window: window.max(std::time::Duration::from_secs(1)),
            state: std::sync::Mutex::new(HealthWindow {
                since: std::time::Instant::now(),
                buckets: std::collections::VecDeque::new(),
            }),
        }
    }

    fn width(&self) -> std::time::Duration {
        (self.window / HEALTH_BUCKETS).max(std::time::Duration::from_millis(100))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HealthWindow> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// One finished execution, now.
    pub fn record(&self, failed: bool) {
        self.record_at(std::time::Instant::now(), failed);
    }

    fn record_at(&self, at: std::time::Instant, failed: bool) {
        let width = self.width().as_nanos().max(1);
        let mut state = self.lock();
        let index = u64::try_from(at.saturating_duration_since(state.since).as_nanos() / width)
            .unwrap_or(u64::MAX);
        match state.buckets.back_mut() {
            Some((last, total, fails)) if *last == index => {
                *total = total.saturating_add(1);
                *fails = fails.saturating_add(u32::from(failed));
            }
            _ => state.buckets.push_back((index, 1, u32::from(failed))),
        }
        while state.buckets.len() > HEALTH_BUCKETS as usize + 1 {
            state.buckets.pop_front();
        }
    }

    /// Forgets what was counted: a new bundle is active.
    pub fn restart(&self) {
        let mut state = self.lock();
        state.since = std::time::Instant::now();
        state.buckets.clear();
    }

    /// The health at `now`: the window is the configured one, or the time since counting
    /// (re)started when that is shorter.
    pub fn snapshot(&self) -> reactor_core::sync::messages::Health {
        self.snapshot_at(std::time::Instant::now())
    }

    fn snapshot_at(&self, now: std::time::Instant) -> reactor_core::sync::messages::Health {
        let width = self.width().as_nanos().max(1);
        let state = self.lock();
        let elapsed = now.saturating_duration_since(state.since);
        let current = u64::try_from(elapsed.as_nanos() / width).unwrap_or(u64::MAX);
        // Buckets that end after `now - window` (the oldest one only partly inside).
        let oldest = current.saturating_sub(u64::from(HEALTH_BUCKETS) - 1);
        let (mut total, mut failed) = (0u32, 0u32);
        for &(index, t, f) in &state.buckets {
            if index >= oldest && index <= current {
                total = total.saturating_add(t);
                failed = failed.saturating_add(f);
            }
        }
        let window = elapsed.min(self.window).as_secs().max(1);
        reactor_core::sync::messages::Health {
            window_secs: u32::try_from(window).unwrap_or(u32::MAX),
            executions_total: total,
            executions_failed: failed.min(total),
        }
    }
}

impl FleetStore {
    pub fn new(inner: Arc<dyn Store>, feed: Feed, health: Arc<Health>) -> FleetStore {
        FleetStore {
            inner,
            feed,
            health,
        }
    }
}

#[async_trait]
impl Store for FleetStore {
    async fn write(&self, batch: Vec<StoreWrite>) -> Result<(), StoreError> {
        for write in &batch {
            // A finished execution is an `Update`, or a `Create` of an already finished
            // record (an execution that finished before its first flush: pure workflows,
            // sync http replies).
            let finished = match write {
                StoreWrite::Update(record) | StoreWrite::Create { record, .. } => {
                    Some(record).filter(|r| r.status.is_finished())
                }
                _ => None,
            };
            if let Some(record) = finished {
                let payload = postcard::to_allocvec(&report(record))
                    .map_err(|e| StoreError::InvalidWrite(format!("execution summary: {e}")))?;
                self.feed.append(RecordKind::Execution, payload).await?;
                self.health.record(record.status == ExecutionStatus::Failed);
            }
        }
        self.inner.write(batch).await
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

/// The event bus, feeding every emitted event to the outbox before passing it on.
pub struct FleetBus {
    inner: Arc<dyn EventBus>,
    feed: Feed,
}

impl std::fmt::Debug for FleetBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetBus").finish_non_exhaustive()
    }
}

impl FleetBus {
    pub fn new(inner: Arc<dyn EventBus>, feed: Feed) -> FleetBus {
        FleetBus { inner, feed }
    }
}

#[async_trait]
impl EventBus for FleetBus {
    async fn publish(&self, event: &Event, topic: Option<&str>) -> Result<(), String> {
        let payload = postcard::to_allocvec(&device_event(event)).map_err(|e| e.to_string())?;
        self.feed
            .append(RecordKind::Event, payload)
            .await
            .map_err(|e| format!("outbox: {e}"))?;
        self.inner.publish(event, topic).await
    }
}

#[cfg(test)]
mod health_tests {
    use std::time::{Duration, Instant};

    use super::Health;

    #[test]
    fn the_window_slides_and_restarts() {
        let health = Health::new(Duration::from_secs(60));
        let start = health.lock().since;
        health.record_at(start + Duration::from_secs(1), false);
        health.record_at(start + Duration::from_secs(2), true);
        health.record_at(start + Duration::from_secs(30), true);
        let at = |secs| health.snapshot_at(start + Duration::from_secs(secs));
        let now = at(31);
        assert_eq!((now.executions_total, now.executions_failed), (3, 2));
        assert_eq!(now.window_secs, 31, "shorter than the window since start");
        // 62 s later the first two have left the window, the third is still in it.
        let later = at(62);
        assert_eq!((later.executions_total, later.executions_failed), (1, 1));
        assert_eq!(later.window_secs, 60);
        let gone = at(95);
        assert_eq!(gone.executions_total, 0);
        // A restart (new bundle) forgets everything counted before.
        health.record(true);
        health.restart();
        let fresh = health.snapshot_at(Instant::now());
        assert_eq!(fresh.executions_total, 0);
        health.record(false);
        assert_eq!(health.snapshot().executions_total, 1);
    }
}
