//! The rollout state machine, driven by the leader hub only (every [`TICK`], or at once
//! when woken). Each step reads the rollout and its devices from SQL and writes the next
//! state back, so a new leader resumes where the last one stopped.
//!
//! `running`, stage `s` (cumulative device counts from [`super::Strategy::stages`]):
//! 1. **Dispatch**: devices up to the stage's count still `pending` → `sent`, and the
//!    rollout's bundle becomes their desired bundle (`fleet_desired`; every hub's delivery
//!    sends it to the devices connected to it).
//! 2. **Watch**: a device reporting the version (its status) → `applied`. The health of the
//!    online devices that applied — failed / total executions of their status window, which
//!    agents restart when a bundle is applied — is summed. Above `max_failure_rate` (with at
//!    least `min_executions`) the gate **fails at once**; each device above the rate is
//!    marked `failed_health`.
//! 3. **Pass** when every online device of the stage applied, `observe` has passed since the
//!    last one did, the rate is within bounds and `min_executions` were reported: the next
//!    stage, or `completed` after the last. Devices offline at dispatch stay `sent` and
//!    converge when they reconnect (they do not hold the rollout up).
//! 4. An online device that has not applied within `stage_timeout` → `timed_out`, and the
//!    gate fails (a refused bundle looks like this: the device keeps reporting its version).
//!
//! A failed gate: `auto_rollback` → `rollback_requested`, else `aborted` (pending devices →
//! `skipped`; the others keep the bundle). Rollback: every device that was sent the bundle
//! gets a **new, higher version** carrying its previous bundle's workflows (one rollback
//! bundle per distinct previous version; none before → an empty bundle, which removes the
//! rollout's workflows) → `rolling_back`; reporting it → `rolled_back`. The rollout is
//! `rolled_back` once no online device is still rolling back.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use reactor_core::engine::Timestamp;
use reactor_core::sync::bundle::BundleSigner;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use super::store::{self, Member, Rollout};
use super::{device_state, state};
use crate::db::{Database, Leadership};
use crate::fleet::bundles::{self, Purpose};
use crate::fleet::delivery::Delivery;

/// How often active rollouts are stepped.
pub const TICK: Duration = Duration::from_millis(250);

/// What the driver needs.
#[derive(Debug, Clone)]
pub struct Driver {
    pub db: Database,
    pub signer: Arc<BundleSigner>,
    /// This hub's delivery, woken after assignments (other hubs poll).
    pub delivery: Option<Delivery>,
    pub wake: Arc<Notify>,
    /// Renew a desired bundle once less than this fraction of its validity is left
    /// (`[fleet] bundle_renew_below`; 0: never). See [`super::renewal`].
    pub renew_below: f64,
}

/// Why a step failed.
#[derive(Debug, thiserror::Error)]
pub enum DriveError {
    #[error("database error: {0}")]
    Sql(#[from] sqlx::Error),
    #[error(transparent)]
    Bundle(#[from] bundles::BundleBuildError),
}

fn ms(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

impl Driver {
    /// Steps active rollouts while this hub leads, until `stop`.
    pub async fn run(self, mut leadership: watch::Receiver<Leadership>, stop: CancellationToken) {
        // A closed channel means leadership no longer changes (SQLite: always the leader).
        let mut watching = true;
        let mut renew_at = 0i64;
        loop {
            if leadership.borrow().leading {
                if let Err(error) = self.tick().await {
                    tracing::warn!(%error, "rollout step failed; retried");
                }
                self.renew(&mut renew_at).await;
            } else {
                // A new leader checks at once.
                renew_at = 0;
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(TICK) => {}
                changed = leadership.changed(), if watching => watching = changed.is_ok(),
            }
        }
    }

    /// A bundle renewal pass when one is due (`renew_at`, ms; updated).
    async fn renew(&self, renew_at: &mut i64) {
        let now = Timestamp::now().millis();
        if self.renew_below <= 0.0 || now < *renew_at {
            return;
        }
        match super::renewal::pass(&self.db, &self.signer, self.renew_below, now).await {
            Ok(pass) => {
                *renew_at = pass.next_at;
                if !pass.renewed.is_empty()
                    && let Some(delivery) = &self.delivery
                {
                    delivery.wake();
                }
            }
            Err(error) => {
                tracing::warn!(%error, "bundle renewal failed; retried");
                *renew_at = now + 1_000;
            }
        }
    }

    /// One pass over every active rollout.
    pub async fn tick(&self) -> Result<(), DriveError> {
        store::refresh(&self.db).await?;
        for rollout in store::list(&self.db, true, 100).await? {
            match rollout.state.as_str() {
                state::RUNNING => self.running(&rollout).await?,
                state::ROLLBACK_REQUESTED => self.roll_back(&rollout).await?,
                state::ROLLING_BACK => self.rolling_back(&rollout).await?,
                _ => {}
            }
        }
        Ok(())
    }

    async fn running(&self, rollout: &Rollout) -> Result<(), DriveError> {
        let members = store::members(&self.db, &rollout.id).await?;
        let stages = rollout.strategy.stages(members.len());
        let Some(&upto) = stages.get(rollout.stage) else {
            store::set_state(
                &self.db,
                &rollout.id,
                &[state::RUNNING],
                state::COMPLETED,
                None,
            )
            .await?;
            return Ok(());
        };
        let now = Timestamp::now().millis();
        let Some(started) = rollout.stage_started_at else {
            return self.dispatch(rollout, &members, upto, now).await;
        };
        let gate = &rollout.gate;
        // Health of the online devices that took the bundle (any stage so far).
        let (mut failed, mut total, mut judged) = (0i64, 0i64, 0usize);
        let mut verdicts = Vec::new();
        for member in &members {
            if !matches!(
                member.state.as_str(),
                device_state::APPLIED | device_state::FAILED_HEALTH
            ) || !member.online
                || member.reported_version < Some(rollout.bundle_version)
            {
                continue;
            }
            let Some((f, t)) = member.health else {
                continue;
            };
            failed += f;
            total += t;
            judged += 1;
            let over = t > 0
                && u64::try_from(t).unwrap_or(0) >= gate.min_executions.max(1)
                && f as f64 / t as f64 > gate.max_failure_rate;
            let to = if over {
                device_state::FAILED_HEALTH
            } else {
                device_state::APPLIED
            };
            // Written when the verdict changes (or on first judgement), not every tick.
            if member.state != to || member.judged.is_none() {
                verdicts.push((member.device.clone(), to, f, t));
            }
        }
        store::judge(&self.db, &rollout.id, &verdicts).await?;
        let rate = if total > 0 {
            failed as f64 / total as f64
        } else {
            0.0
        };
        if total > 0
            && u64::try_from(total).unwrap_or(0) >= gate.min_executions
            && rate > gate.max_failure_rate
        {
            let reason = format!(
                "health gate failed at stage {}: {failed} of {total} executions failed ({:.1} % > {:.1} %) on {judged} device(s)",
                rollout.stage,
                rate * 100.0,
                gate.max_failure_rate * 100.0
            );
            return self.fail(rollout, &reason).await;
        }
        let waiting: Vec<&Member> = members
            .iter()
            .filter(|m| m.state == device_state::SENT && m.online)
            .collect();
        let timed_out = now - started >= ms(gate.stage_timeout);
        if !waiting.is_empty() {
            if timed_out {
                let late: Vec<String> = waiting.iter().map(|m| m.device.clone()).collect();
                store::set_members(
                    &self.db,
                    &rollout.id,
                    &late,
                    device_state::TIMED_OUT,
                    None,
                    None,
                )
                .await?;
                let reason = format!(
                    "{} online device(s) did not apply bundle {} within {} (first: {})",
                    late.len(),
                    rollout.bundle_version,
                    reactor_core::flow::format_duration(gate.stage_timeout),
                    late[0]
                );
                return self.fail(rollout, &reason).await;
            }
            return Ok(());
        }
        let last_applied = members
            .iter()
            .filter(|m| m.stage == Some(rollout.stage))
            .filter_map(|m| m.applied_at)
            .max()
            .unwrap_or(started)
            .max(started);
        if now - last_applied < ms(gate.observe) {
            return Ok(());
        }
        if u64::try_from(total).unwrap_or(0) < gate.min_executions {
            if timed_out {
                let reason = format!(
                    "health gate failed at stage {}: only {total} executions reported within {} (min_executions {})",
                    rollout.stage,
                    reactor_core::flow::format_duration(gate.stage_timeout),
                    gate.min_executions
                );
                return self.fail(rollout, &reason).await;
            }
            return Ok(());
        }
        if rollout.stage + 1 >= stages.len() {
            store::set_state(
                &self.db,
                &rollout.id,
                &[state::RUNNING],
                state::COMPLETED,
                None,
            )
            .await?;
            tracing::info!(rollout = %rollout.id, version = rollout.bundle_version, devices = members.len(), "rollout completed");
        } else {
            store::set_stage(&self.db, &rollout.id, rollout.stage + 1, None).await?;
            tracing::info!(rollout = %rollout.id, stage = rollout.stage, failed, total, "rollout stage passed");
            self.wake.notify_one();
        }
        Ok(())
    }

    /// Sends the stage's devices the bundle and records the dispatch time.
    async fn dispatch(
        &self,
        rollout: &Rollout,
        members: &[Member],
        upto: usize,
        now: i64,
    ) -> Result<(), DriveError> {
        let devices = members
            .iter()
            .filter(|m| m.position < upto as i64 && m.state == device_state::PENDING)
            .count();
        store::dispatch(&self.db, rollout, upto, now).await?;
        if let Some(delivery) = &self.delivery {
            delivery.wake();
        }
        tracing::info!(rollout = %rollout.id, stage = rollout.stage, devices, version = rollout.bundle_version, "rollout stage dispatched");
        Ok(())
    }

    async fn fail(&self, rollout: &Rollout, reason: &str) -> Result<(), DriveError> {
        tracing::warn!(rollout = %rollout.id, reason, "rollout stopped");
        let to = if rollout.auto_rollback {
            state::ROLLBACK_REQUESTED
        } else {
            state::ABORTED
        };
        store::set_state(&self.db, &rollout.id, &[state::RUNNING], to, Some(reason)).await?;
        if rollout.auto_rollback {
            self.wake.notify_one();
        }
        Ok(())
    }

    /// Builds one rollback bundle per previous version and assigns it to every device that
    /// was sent the rollout's bundle.
    async fn roll_back(&self, rollout: &Rollout) -> Result<(), DriveError> {
        let members = store::members(&self.db, &rollout.id).await?;
        let mut groups: BTreeMap<Option<u64>, Vec<String>> = BTreeMap::new();
        for member in &members {
            if matches!(
                member.state.as_str(),
                device_state::SENT
                    | device_state::APPLIED
                    | device_state::FAILED_HEALTH
                    | device_state::TIMED_OUT
            ) {
                groups
                    .entry(member.previous_version)
                    .or_default()
                    .push(member.device.clone());
            }
        }
        for (previous, devices) in groups {
            let workflows = match previous {
                Some(version) => bundles::workflows(&self.db, version)
                    .await?
                    .unwrap_or_default(),
                None => Vec::new(),
            };
            let version = bundles::sign_and_store(
                &self.db,
                &self.signer,
                &rollout.selector,
                &workflows,
                bundles::DEFAULT_EXPIRY,
                Some(&rollout.id),
                Purpose::Rollback,
            )
            .await?;
            let desired: Vec<(String, u64)> =
                devices.iter().map(|d| (d.clone(), version)).collect();
            bundles::assign(&self.db, &desired).await?;
            store::set_members(
                &self.db,
                &rollout.id,
                &devices,
                device_state::ROLLING_BACK,
                None,
                Some(version),
            )
            .await?;
            tracing::warn!(rollout = %rollout.id, version, previous, devices = devices.len(), "rollback bundle assigned");
        }
        store::set_state(
            &self.db,
            &rollout.id,
            &[state::ROLLBACK_REQUESTED],
            state::ROLLING_BACK,
            None,
        )
        .await?;
        if let Some(delivery) = &self.delivery {
            delivery.wake();
        }
        Ok(())
    }

    /// `rolled_back` once no online device is still rolling back.
    async fn rolling_back(&self, rollout: &Rollout) -> Result<(), DriveError> {
        let members = store::members(&self.db, &rollout.id).await?;
        let waiting = members
            .iter()
            .any(|m| m.state == device_state::ROLLING_BACK && m.online);
        if !waiting {
            store::set_state(
                &self.db,
                &rollout.id,
                &[state::ROLLING_BACK],
                state::ROLLED_BACK,
                None,
            )
            .await?;
            tracing::info!(rollout = %rollout.id, "rollout rolled back");
        }
        Ok(())
    }
}
