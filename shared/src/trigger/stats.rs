//! Per-trigger counters (exposed later as `reactor_trigger_*` metrics) and the rate limiter
//! for repeating warnings.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::engine::Timestamp;

/// Counters of one trigger. Shared (`Arc`) between the trigger, its supervisor and metrics.
#[derive(Debug, Default)]
pub struct TriggerStats {
    /// Events handed to the runtime (accepted, skipped or dropped by the workflow).
    pub events: AtomicU64,
    /// Failures: submit errors, source errors, trigger restarts.
    pub errors: AtomicU64,
    /// Requests refused because the runtime was saturated (`http`: 503).
    pub shed: AtomicU64,
    /// Requests refused as invalid: auth, size, body (`http`: 4xx).
    pub rejected: AtomicU64,
    /// Times the supervisor restarted the trigger.
    pub restarts: AtomicU64,
    /// How far behind its source the trigger is, in the source's unit (Kafka: messages not
    /// yet consumed; streams: pending entries; CDC: bytes of WAL/binlog). 0 where a source
    /// does not tell.
    pub lag: AtomicU64,
    /// Errors since the last success ([`TriggerStats::record_success`]); at
    /// [`UNHEALTHY_AFTER`] or more the trigger is reported unhealthy.
    pub failing: AtomicU64,
    last_error: Mutex<Option<(Timestamp, String)>>,
}

/// A copy of [`TriggerStats`] at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TriggerStatsSnapshot {
    pub events: u64,
    pub errors: u64,
    pub shed: u64,
    pub rejected: u64,
    pub restarts: u64,
    pub lag: u64,
    /// Errors in a row (reset by a success).
    pub failing: u64,
    /// When and what, for the last error.
    pub last_error: Option<(Timestamp, String)>,
}

/// A trigger with this many errors in a row (connect, read, submit) is unhealthy.
pub const UNHEALTHY_AFTER: u64 = 3;

impl TriggerStatsSnapshot {
    /// False while the trigger keeps failing (see [`UNHEALTHY_AFTER`]); `last_error` says why.
    pub fn healthy(&self) -> bool {
        self.failing < UNHEALTHY_AFTER
    }
}

impl TriggerStats {
    pub fn count_event(&self) {
        self.count_events(1);
    }
    pub fn count_events(&self, n: u64) {
        self.events.fetch_add(n, Ordering::Relaxed);
    }
    pub fn count_shed(&self) {
        self.shed.fetch_add(1, Ordering::Relaxed);
    }
    pub fn count_rejected(&self) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
    }
    pub fn count_restart(&self) {
        self.restarts.fetch_add(1, Ordering::Relaxed);
    }
    /// The source works again (connected, read, recorded): clears the failure streak.
    pub fn record_success(&self) {
        self.failing.store(0, Ordering::Relaxed);
    }
    pub fn set_lag(&self, lag: u64) {
        self.lag.store(lag, Ordering::Relaxed);
    }
    /// Counts an error (also in the failure streak) and keeps its message as the last one.
    pub fn record_error(&self, message: &str) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        self.failing.fetch_add(1, Ordering::Relaxed);
        *self
            .last_error
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) =
            Some((Timestamp::now(), message.to_string()));
    }
    pub fn snapshot(&self) -> TriggerStatsSnapshot {
        TriggerStatsSnapshot {
            events: self.events.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            shed: self.shed.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
            restarts: self.restarts.load(Ordering::Relaxed),
            lag: self.lag.load(Ordering::Relaxed),
            failing: self.failing.load(Ordering::Relaxed),
            last_error: self
                .last_error
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .clone(),
        }
    }
}

/// Lets one warning through per period; counts the ones it holds back.
#[derive(Debug)]
pub struct WarnLimiter {
    period: Duration,
    state: Mutex<(Option<Instant>, u64)>,
}

impl WarnLimiter {
    pub fn new(period: Duration) -> WarnLimiter {
        WarnLimiter {
            period,
            state: Mutex::new((None, 0)),
        }
    }

    /// Whether to log now.
    pub fn allow(&self) -> bool {
        self.allow_counting().is_some()
    }

    /// `Some(suppressed)` when a warning may be logged now, with how many were held back
    /// since the last one.
    pub fn allow_counting(&self) -> Option<u64> {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = Instant::now();
        match state.0 {
            Some(last) if now.duration_since(last) < self.period => {
                state.1 += 1;
                None
            }
            _ => {
                let suppressed = state.1;
                *state = (Some(now), 0);
                Some(suppressed)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_lets_one_through_per_period() {
        let limiter = WarnLimiter::new(Duration::from_secs(3600));
        assert_eq!(limiter.allow_counting(), Some(0));
        assert!(!limiter.allow());
        assert!(!limiter.allow());
        let zero = WarnLimiter::new(Duration::ZERO);
        assert!(zero.allow() && zero.allow());
    }

    #[test]
    fn stats_snapshot() {
        let stats = TriggerStats::default();
        stats.count_event();
        stats.record_error("broken");
        let snap = stats.snapshot();
        assert_eq!((snap.events, snap.errors), (1, 1));
        assert_eq!(snap.last_error.clone().unwrap().1, "broken");
        assert!(snap.healthy());
        stats.record_error("still broken");
        stats.record_error("broken for good");
        assert!(!stats.snapshot().healthy());
        stats.record_success();
        assert!(stats.snapshot().healthy());
    }
}
