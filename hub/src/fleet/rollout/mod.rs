//! Staged rollouts of signed bundles to groups of devices (tables `rollouts`,
//! `rollout_devices`, migration 0008). Design in docs/fleet.md, "Rollouts".
//!
//! - [`api`]: `POST /api/v1/rollouts` (validate, sign the bundle, snapshot the target
//!   devices), `GET /api/v1/rollouts`, `GET /api/v1/rollouts/{id}` (per-device state),
//!   `POST /api/v1/rollouts/{id}/abort`.
//! - [`driver`]: the state machine, run by the leader only: canary, then percentage steps,
//!   each gated on the devices' reported execution failure rate; a failed gate rolls back
//!   (a new, higher bundle version carrying each device's previous workflows).
//! - [`renewal`]: desired bundles re-signed before they expire (leader only, with the driver).
//!
//! Everything lives in SQL, so a restarted (or newly elected) leader resumes where the last
//! one stopped.

pub mod api;
pub mod driver;
pub mod renewal;
pub mod store;

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Rollout states.
pub mod state {
    /// Stages are being dispatched and gated.
    pub const RUNNING: &str = "running";
    /// Every stage passed.
    pub const COMPLETED: &str = "completed";
    /// The gate failed (or an operator asked): the leader builds the rollback bundles.
    pub const ROLLBACK_REQUESTED: &str = "rollback_requested";
    /// Rollback bundles assigned; waiting for the online devices to report them.
    pub const ROLLING_BACK: &str = "rolling_back";
    /// Every online device that had taken the bundle reports its rollback version.
    pub const ROLLED_BACK: &str = "rolled_back";
    /// Stopped without rollback: devices keep what they have, pending ones are skipped.
    pub const ABORTED: &str = "aborted";
    /// States in which a rollout is still being driven.
    pub const ACTIVE: [&str; 3] = [RUNNING, ROLLBACK_REQUESTED, ROLLING_BACK];
}

/// Per-device states within a rollout.
pub mod device_state {
    /// Not dispatched yet (a later stage).
    pub const PENDING: &str = "pending";
    /// The rollout's bundle is the device's desired bundle; not reported yet.
    pub const SENT: &str = "sent";
    /// The device reports the rollout's bundle version (or a higher one).
    pub const APPLIED: &str = "applied";
    /// Applied, and its own failure rate is above the gate's.
    pub const FAILED_HEALTH: &str = "failed_health";
    /// Online but did not report the version within the stage timeout.
    pub const TIMED_OUT: &str = "timed_out";
    /// A rollback bundle is its desired bundle; not reported yet.
    pub const ROLLING_BACK: &str = "rolling_back";
    /// Reports the rollback bundle's version.
    pub const ROLLED_BACK: &str = "rolled_back";
    /// Never dispatched: the rollout stopped before its stage.
    pub const SKIPPED: &str = "skipped";
}

/// How a rollout proceeds: `canary` devices first, then cumulative percentages of the
/// target devices (the last step is always 100).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Strategy {
    #[serde(default = "default_canary")]
    pub canary: usize,
    #[serde(default = "default_steps")]
    pub steps: Vec<f64>,
}

fn default_canary() -> usize {
    1
}

fn default_steps() -> Vec<f64> {
    vec![10.0, 50.0, 100.0]
}

impl Default for Strategy {
    fn default() -> Self {
        Strategy {
            canary: default_canary(),
            steps: default_steps(),
        }
    }
}

impl Strategy {
    /// Refuses percentages outside (0, 100] or not increasing.
    pub fn check(&self) -> Result<(), String> {
        let mut last = 0.0;
        for &step in &self.steps {
            if !(step > last && step <= 100.0) {
                return Err(format!(
                    "steps are increasing percentages in (0, 100]; {step} after {last}"
                ));
            }
            last = step;
        }
        Ok(())
    }

    /// Cumulative device counts per stage (stage 0 = the canary) for `n` devices; the last
    /// stage covers every device, and no stage is empty.
    pub fn stages(&self, n: usize) -> Vec<usize> {
        let mut out = Vec::new();
        let mut push = |count: usize| {
            let count = count.min(n);
            if count > 0 && out.last().is_none_or(|&last| count > last) {
                out.push(count);
            }
        };
        push(self.canary);
        for &step in &self.steps {
            let count = (n as f64 * step / 100.0).ceil() as usize;
            push(count.max(1));
        }
        push(n);
        out
    }
}

/// The health gate: devices' reported execution failure rate over their window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gate {
    /// Failed / total executions, summed over the online devices that took the bundle; the
    /// gate fails above it (a device above it is marked `failed_health`).
    #[serde(default = "default_rate")]
    pub max_failure_rate: f64,
    /// Executions the devices must have reported before the gate can pass; below it the
    /// stage waits (until `stage_timeout`, then fails).
    #[serde(default)]
    pub min_executions: u64,
    /// How long a stage is watched after its last device applied the bundle.
    #[serde(default = "default_observe", with = "duration_text")]
    pub observe: Duration,
    /// How long a stage may take from dispatch to pass before it fails.
    #[serde(default = "default_stage_timeout", with = "duration_text")]
    pub stage_timeout: Duration,
}

fn default_rate() -> f64 {
    0.05
}

fn default_observe() -> Duration {
    Duration::from_secs(60)
}

fn default_stage_timeout() -> Duration {
    Duration::from_secs(600)
}

impl Default for Gate {
    fn default() -> Self {
        Gate {
            max_failure_rate: default_rate(),
            min_executions: 0,
            observe: default_observe(),
            stage_timeout: default_stage_timeout(),
        }
    }
}

impl Gate {
    pub fn check(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.max_failure_rate) {
            return Err("max_failure_rate is between 0 and 1".into());
        }
        if self.stage_timeout <= self.observe {
            return Err("stage_timeout must be longer than observe".into());
        }
        Ok(())
    }
}

/// Durations as text (`30s`, `5m`) in JSON.
mod duration_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&reactor_core::flow::format_duration(*value))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        reactor_core::flow::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_are_cumulative_and_end_with_everyone() {
        let strategy = Strategy {
            canary: 5,
            steps: vec![25.0, 50.0, 100.0],
        };
        assert_eq!(strategy.stages(100), vec![5, 25, 50, 100]);
        assert_eq!(strategy.stages(3), vec![3]);
        assert_eq!(strategy.stages(0), Vec::<usize>::new());
        let no_canary = Strategy {
            canary: 0,
            steps: vec![10.0],
        };
        assert_eq!(no_canary.stages(7), vec![1, 7]);
        assert!(
            Strategy {
                canary: 1,
                steps: vec![50.0, 20.0]
            }
            .check()
            .is_err()
        );
        assert!(
            Strategy {
                canary: 1,
                steps: vec![0.0]
            }
            .check()
            .is_err()
        );
        let gate: Gate = serde_json::from_value(serde_json::json!({"observe": "2s"})).unwrap();
        assert_eq!(gate.observe, Duration::from_secs(2));
        assert!(gate.check().is_ok());
    }
}
