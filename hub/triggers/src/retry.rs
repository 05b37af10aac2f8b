//! What every source shares: reconnect delays (exponential, capped, jittered), cancellable
//! sleeps, the leader signal, and failure bookkeeping.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use reactor_core::engine::{Submission, SubmitError};
use reactor_core::trigger::{TriggerContext, TriggerError};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// Reconnect delays: 200 ms doubling to 30 s, each with "equal jitter" (half fixed, half
/// random) so that many triggers cut off at once do not reconnect in step.
#[derive(Debug)]
pub(crate) struct Backoff {
    attempt: u32,
    initial: Duration,
    max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            attempt: 0,
            initial: Duration::from_millis(200),
            max: Duration::from_secs(30),
        }
    }
}

impl Backoff {
    pub(crate) fn next_delay(&mut self) -> Duration {
        let exp = self.attempt.min(16);
        self.attempt = self.attempt.saturating_add(1);
        let raw = self.initial.saturating_mul(1 << exp).min(self.max);
        raw / 2 + raw.mul_f64(random_fraction() / 2.0)
    }

    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// A number in [0, 1) from the standard library's randomly seeded hasher.
fn random_fraction() -> f64 {
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// Sleeps `delay` unless `cancel` fires first; false when cancelled.
pub(crate) async fn pause(cancel: &CancellationToken, delay: Duration) -> bool {
    tokio::select! {
        biased;
        () = cancel.cancelled() => false,
        () = tokio::time::sleep(delay) => true,
    }
}

/// Records a failed session and waits before the next; false when the trigger must stop.
pub(crate) async fn failed(
    context: &TriggerContext,
    backoff: &mut Backoff,
    source: &str,
    error: &str,
) -> bool {
    context.stats.record_error(error);
    let delay = backoff.next_delay();
    tracing::warn!(workflow = %context.workflow, source, error, retry_in = ?delay,
        "trigger source failed; reconnecting");
    pause(&context.cancel, delay).await
}

/// Deletes the de-duplication marks of `keys` without waiting: the deletes ride in the
/// store's next write of an execution instead of costing the pipeline a commit of their own
/// ([`reactor_core::engine::Runtime::forget_marks_soon`]).
pub(crate) fn forget_soon(context: &TriggerContext, keys: Vec<String>) {
    context.runtime.forget_marks_soon(&context.workflow, &keys);
}

/// Whether this hub leads (multi-hub: change capture and pollers run on the leader only).
/// The default always leads (a single hub).
#[derive(Clone, Debug)]
pub struct Leader {
    signal: watch::Receiver<bool>,
    /// The sender of a fixed signal, kept so that `changed` waits instead of erroring.
    _fixed: Option<std::sync::Arc<watch::Sender<bool>>>,
}

impl Default for Leader {
    fn default() -> Self {
        Leader::fixed(true)
    }
}

impl Leader {
    /// Follows `signal` (the hub's advisory-lock leadership).
    pub fn new(signal: watch::Receiver<bool>) -> Leader {
        Leader {
            signal,
            _fixed: None,
        }
    }

    /// Always (or never) leading.
    pub fn fixed(leading: bool) -> Leader {
        let (tx, rx) = watch::channel(leading);
        Leader {
            signal: rx,
            _fixed: Some(std::sync::Arc::new(tx)),
        }
    }

    pub fn is_leading(&self) -> bool {
        *self.signal.borrow()
    }

    /// Waits until leading; false if `cancel` fires first.
    pub(crate) async fn wait_leading(&mut self, cancel: &CancellationToken) -> bool {
        loop {
            if *self.signal.borrow_and_update() {
                return true;
            }
            tokio::select! {
                biased;
                () = cancel.cancelled() => return false,
                changed = self.signal.changed() => if changed.is_err() { return false },
            }
        }
    }

    /// Resolves when leadership is lost (never, while leading for good).
    pub(crate) async fn lost(&mut self) {
        loop {
            if !*self.signal.borrow_and_update() {
                return;
            }
            if self.signal.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

/// How a session ended.
pub(crate) enum Failure {
    /// Reconnect after a backoff.
    Retry(String),
    /// Give up (the supervisor decides).
    Fatal(TriggerError),
}

/// Whether a submission is final for the source (acknowledge it): recorded, skipped,
/// dropped, or an event the workflow can never take (poison, logged).
pub(crate) fn handled(workflow: &str, id: &str, result: &Result<Submission, SubmitError>) -> bool {
    match result {
        Ok(_) => true,
        Err(error @ SubmitError::Expression { .. }) => {
            warn!(%workflow, id, %error,
                "message cannot start the workflow; acknowledging it so it is not redelivered forever");
            true
        }
        Err(error) => {
            warn!(%workflow, id, %error, "message not recorded; not acknowledged, it will come again");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_capped_and_jittered() {
        let mut backoff = Backoff::default();
        let delays: Vec<Duration> = (0..12).map(|_| backoff.next_delay()).collect();
        assert!(delays[0] >= Duration::from_millis(100) && delays[0] <= Duration::from_millis(200));
        assert!(delays[3] >= Duration::from_millis(800));
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(30)));
        assert!(delays[11] >= Duration::from_secs(15));
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(200));
    }

    #[tokio::test]
    async fn leader_signal() {
        let (tx, rx) = watch::channel(false);
        let mut leader = Leader::new(rx);
        assert!(!leader.is_leading());
        let cancel = CancellationToken::new();
        let waiter = tokio::spawn({
            let mut leader = leader.clone();
            let cancel = cancel.clone();
            async move { leader.wait_leading(&cancel).await }
        });
        tx.send(true).unwrap();
        assert!(waiter.await.unwrap());
        let lost = tokio::spawn(async move { leader.lost().await });
        tx.send(false).unwrap();
        lost.await.unwrap();
    }
}
