//! The supervisor of long-lived tasks (triggers first of all): every task has a name, a child
//! cancellation token and counters; a task that fails is restarted after an exponential
//! backoff with jitter, capped; `shutdown` cancels everything, waits a grace period, aborts
//! the stragglers and reports which had to be forced.
//!
//! - A task that returns `Ok` is finished and not restarted.
//! - A task that returns an error (or panics, where panics unwind) is restarted, unless the
//!   error is [`TriggerError::Settings`]: settings do not get better by retrying.
//! - The backoff starts again from its initial delay after a run that lasted
//!   `healthy_after`.
//! - Failure logs are rate-limited per task (one per `log_period`, with the count held back).

use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::engine::Runtime;
use crate::flow::TriggerSpec;

use super::{TriggerContext, TriggerError, TriggerFactory, TriggerStats, WarnLimiter};

/// Restart and logging settings.
#[derive(Clone, Debug)]
pub struct SupervisorConfig {
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// A run this long resets the backoff.
    pub healthy_after: Duration,
    /// At most one failure log per task per period.
    pub log_period: Duration,
}

impl Default for SupervisorConfig {
    fn default() -> Self {
        SupervisorConfig {
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(60),
            healthy_after: Duration::from_secs(60),
            log_period: Duration::from_secs(60),
        }
    }
}

/// Where a task is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskState {
    Running,
    /// Failed; waiting to restart.
    Backoff,
    /// Returned `Ok`.
    Finished,
    /// Gave up (settings error).
    Failed,
}

/// What [`Supervisor::shutdown`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Tasks that stopped within the grace period.
    pub stopped: Vec<String>,
    /// Tasks that were aborted.
    pub forced: Vec<String>,
}

struct Entry {
    cancel: CancellationToken,
    handle: JoinHandle<()>,
    stats: Arc<TriggerStats>,
    state: Arc<Mutex<TaskState>>,
}

/// Named, restarted, cancellable tasks.
pub struct Supervisor {
    config: SupervisorConfig,
    root: CancellationToken,
    tasks: Mutex<HashMap<String, Entry>>,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor")
            .field("config", &self.config)
            .field("tasks", &self.names())
            .finish()
    }
}

impl Default for Supervisor {
    fn default() -> Self {
        Supervisor::new(SupervisorConfig::default())
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl Supervisor {
    pub fn new(config: SupervisorConfig) -> Supervisor {
        Supervisor {
            config,
            root: CancellationToken::new(),
            tasks: Mutex::default(),
        }
    }

    /// Starts task `name`: `make` is called for every attempt with the attempt's
    /// cancellation token. A task already running under `name` is cancelled and aborted
    /// (call [`Supervisor::stop`] first to give it a grace period).
    pub fn spawn<F, Fut>(&self, name: &str, stats: Arc<TriggerStats>, mut make: F)
    where
        F: FnMut(CancellationToken) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), TriggerError>> + Send + 'static,
    {
        let cancel = self.root.child_token();
        let state = Arc::new(Mutex::new(TaskState::Running));
        let config = self.config.clone();
        let task_name = name.to_string();
        let task = {
            let cancel = cancel.clone();
            let stats = stats.clone();
            let state = state.clone();
            async move {
                let warn = WarnLimiter::new(config.log_period);
                let mut attempt: u32 = 0;
                loop {
                    *lock(&state) = TaskState::Running;
                    let started = Instant::now();
                    let outcome = AssertUnwindSafe(make(cancel.child_token()))
                        .catch_unwind()
                        .await;
                    let error = match outcome {
                        Ok(Ok(())) => {
                            *lock(&state) = TaskState::Finished;
                            return;
                        }
                        Ok(Err(error)) => error,
                        Err(_) => TriggerError::Source("the task panicked".into()),
                    };
                    if cancel.is_cancelled() {
                        *lock(&state) = TaskState::Finished;
                        return;
                    }
                    stats.record_error(&error.to_string());
                    if matches!(error, TriggerError::Settings(_)) {
                        tracing::error!(task = %task_name, %error, "task gave up");
                        *lock(&state) = TaskState::Failed;
                        return;
                    }
                    if started.elapsed() >= config.healthy_after {
                        attempt = 0;
                    }
                    let delay = backoff(&config, attempt, &task_name);
                    attempt = attempt.saturating_add(1);
                    if let Some(suppressed) = warn.allow_counting() {
                        tracing::warn!(task = %task_name, %error, retry_in = ?delay, suppressed, "task failed; restarting");
                    }
                    *lock(&state) = TaskState::Backoff;
                    tokio::select! {
                        biased;
                        // Cancel-safe: only a sleep is dropped.
                        () = cancel.cancelled() => {
                            *lock(&state) = TaskState::Finished;
                            return;
                        }
                        () = tokio::time::sleep(delay) => {}
                    }
                    stats.count_restart();
                }
            }
        };
        let handle = tokio::spawn(task);
        let previous = lock(&self.tasks).insert(
            name.to_string(),
            Entry {
                cancel,
                handle,
                stats,
                state,
            },
        );
        if let Some(old) = previous {
            old.cancel.cancel();
            old.handle.abort();
        }
    }

    /// Builds the trigger for `spec` (entry `index` of `workflow`'s `triggers:`) with
    /// `factory` and runs it under `name`, rebuilding it for every restart. `Ok(None)`: the
    /// factory has no task for this trigger (`http`, `event`). Settings errors are returned at
    /// once.
    pub fn spawn_trigger(
        &self,
        name: &str,
        workflow: &str,
        index: usize,
        runtime: &Runtime,
        spec: &TriggerSpec,
        factory: Arc<dyn TriggerFactory>,
    ) -> Result<Option<Arc<TriggerStats>>, TriggerError> {
        let Some(first) = factory.build(workflow, index, spec)? else {
            return Ok(None);
        };
        let stats = Arc::new(TriggerStats::default());
        let kind = first.kind();
        let mut first = Some(first);
        let spec = spec.clone();
        let runtime = runtime.clone();
        let workflow: Arc<str> = Arc::from(workflow);
        let task_stats = stats.clone();
        self.spawn(name, stats.clone(), move |cancel| {
            let trigger = match first.take() {
                Some(trigger) => Ok(trigger),
                None => factory
                    .build(&workflow, index, &spec)
                    .and_then(|t| t.ok_or(TriggerError::Unsupported(kind))),
            };
            let context = TriggerContext {
                workflow: workflow.clone(),
                runtime: runtime.clone(),
                cancel,
                stats: task_stats.clone(),
            };
            let span = tracing::info_span!("trigger", workflow = %workflow, trigger = kind);
            tracing::Instrument::instrument(async move { trigger?.run(context).await }, span)
        });
        Ok(Some(stats))
    }

    /// Cancels task `name` and waits up to `grace` for it; `Some(forced)` if it existed.
    pub async fn stop(&self, name: &str, grace: Duration) -> Option<bool> {
        let entry = lock(&self.tasks).remove(name)?;
        entry.cancel.cancel();
        Some(finish(entry, Instant::now() + grace).await)
    }

    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = lock(&self.tasks).keys().cloned().collect();
        names.sort();
        names
    }

    /// (name, state, counters) of every task, by name.
    pub fn tasks(&self) -> Vec<(String, TaskState, Arc<TriggerStats>)> {
        let mut out: Vec<_> = lock(&self.tasks)
            .iter()
            .map(|(name, e)| (name.clone(), *lock(&e.state), e.stats.clone()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Cancels every task, waits up to `grace` for all of them, aborts the rest.
    pub async fn shutdown(&self, grace: Duration) -> ShutdownReport {
        self.root.cancel();
        let entries: Vec<(String, Entry)> = lock(&self.tasks).drain().collect();
        let deadline = Instant::now() + grace;
        let mut report = ShutdownReport::default();
        let results = futures::future::join_all(
            entries
                .into_iter()
                .map(|(name, entry)| async move { (name, finish(entry, deadline).await) }),
        )
        .await;
        for (name, forced) in results {
            if forced {
                tracing::warn!(task = %name, "task did not stop within the grace period; aborted");
                report.forced.push(name);
            } else {
                report.stopped.push(name);
            }
        }
        report.stopped.sort();
        report.forced.sort();
        report
    }
}

/// Waits for a cancelled task until `deadline`, then aborts it. Returns whether it was forced.
async fn finish(mut entry: Entry, deadline: Instant) -> bool {
    match tokio::time::timeout_at(deadline, &mut entry.handle).await {
        Ok(_) => false,
        Err(_) => {
            entry.handle.abort();
            let _ = entry.handle.await;
            true
        }
    }
}

/// `initial · 2^attempt`, capped, with ±25 % jitter so restarts do not synchronise.
fn backoff(config: &SupervisorConfig, attempt: u32, name: &str) -> Duration {
    let base = config
        .initial_backoff
        .saturating_mul(1u32.checked_shl(attempt.min(30)).unwrap_or(u32::MAX))
        .min(config.max_backoff);
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0)
        ^ u64::from(attempt).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for byte in name.bytes() {
        seed = (seed ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
    }
    seed ^= seed >> 33;
    seed = seed.wrapping_mul(0xff51_afd7_ed55_8ccd);
    seed ^= seed >> 33;
    // A factor in [0.75, 1.25).
    let factor = 0.75 + (seed % 10_000) as f64 / 20_000.0;
    base.mul_f64(factor).min(config.max_backoff)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;
    use crate::trigger::testing::{memory, runtime, wait_for};

    fn quick() -> SupervisorConfig {
        SupervisorConfig {
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(40),
            healthy_after: Duration::from_secs(60),
            log_period: Duration::from_secs(60),
        }
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let config = SupervisorConfig::default();
        let first = backoff(&config, 0, "a");
        assert!(first >= Duration::from_millis(375) && first < Duration::from_millis(625));
        let third = backoff(&config, 2, "a");
        assert!(third >= Duration::from_millis(1500) && third < Duration::from_millis(2500));
        assert!(backoff(&config, 40, "a") <= config.max_backoff);
    }

    #[tokio::test]
    async fn failing_task_restarts_until_it_succeeds() {
        let supervisor = Supervisor::new(quick());
        let attempts = Arc::new(AtomicU32::new(0));
        let stats = Arc::new(TriggerStats::default());
        let counter = attempts.clone();
        supervisor.spawn("flaky", stats.clone(), move |_cancel| {
            let counter = counter.clone();
            async move {
                if counter.fetch_add(1, Ordering::SeqCst) < 3 {
                    Err(TriggerError::Source("not yet".into()))
                } else {
                    Ok(())
                }
            }
        });
        for _ in 0..200 {
            if supervisor.tasks()[0].1 == TaskState::Finished {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(supervisor.tasks()[0].1, TaskState::Finished);
        assert_eq!(attempts.load(Ordering::SeqCst), 4);
        let snap = stats.snapshot();
        assert_eq!((snap.errors, snap.restarts), (3, 3));
        assert_eq!(snap.last_error.unwrap().1, "not yet");
    }

    #[tokio::test]
    async fn settings_errors_are_not_retried() {
        let supervisor = Supervisor::new(quick());
        let attempts = Arc::new(AtomicU32::new(0));
        let counter = attempts.clone();
        supervisor.spawn("bad", Arc::default(), move |_| {
            counter.fetch_add(1, Ordering::SeqCst);
            async { Err(TriggerError::Settings("no".into())) }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(attempts.load(Ordering::SeqCst), 1);
        assert_eq!(supervisor.tasks()[0].1, TaskState::Failed);
    }

    #[tokio::test]
    async fn shutdown_reports_forced_tasks() {
        let supervisor = Supervisor::new(quick());
        supervisor.spawn(
            "polite",
            Arc::default(),
            |cancel: CancellationToken| async move {
                cancel.cancelled().await;
                Ok(())
            },
        );
        supervisor.spawn("stubborn", Arc::default(), |_| async {
            std::future::pending::<()>().await;
            Ok(())
        });
        supervisor.spawn(
            "gone",
            Arc::default(),
            |cancel: CancellationToken| async move {
                cancel.cancelled().await;
                Ok(())
            },
        );
        assert_eq!(
            supervisor.stop("gone", Duration::from_secs(1)).await,
            Some(false)
        );
        assert_eq!(supervisor.stop("gone", Duration::from_secs(1)).await, None);
        let report = supervisor.shutdown(Duration::from_millis(100)).await;
        assert_eq!(report.stopped, ["polite"]);
        assert_eq!(report.forced, ["stubborn"]);
        assert!(supervisor.names().is_empty());
    }

    #[tokio::test]
    async fn runs_light_triggers_from_specs() {
        let runtime = runtime(
            memory(),
            &[
                "reactor: 1\nname: boot\ntriggers: [startup, { http: { path: /x } }]\nsteps:\n  - action: transform\n    with: { value: 1 }\n",
            ],
        );
        let wf = runtime.workflow("boot", None).unwrap();
        let supervisor = Supervisor::default();
        let factory: Arc<dyn TriggerFactory> = Arc::new(super::super::LightTriggers);
        let stats = supervisor
            .spawn_trigger(
                "boot/0",
                "boot",
                0,
                &runtime,
                &wf.triggers[0],
                factory.clone(),
            )
            .unwrap()
            .unwrap();
        let none = supervisor
            .spawn_trigger("boot/1", "boot", 1, &runtime, &wf.triggers[1], factory)
            .unwrap();
        assert!(none.is_none());
        assert_eq!(
            wait_for(&runtime, "boot", 1, Duration::from_secs(5))
                .await
                .len(),
            1
        );
        assert_eq!(stats.snapshot().events, 1);
        let report = supervisor.shutdown(Duration::from_secs(1)).await;
        assert_eq!(report.stopped, ["boot/0"]);
        runtime.shutdown().await;
    }
}
