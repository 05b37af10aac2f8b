//! Bundle renewal, run by the leader with the rollout driver: devices refuse an expired
//! bundle, so every bundle some device should run — or a running rollout will dispatch — is
//! re-signed before it expires ([`crate::fleet::bundles::renew`]: same target, same
//! workflows, a new version, a new expiry, the current signing key).
//!
//! A bundle is due once less than `fraction` of its validity is left (`[fleet]
//! bundle_renew_below`, ⅓ by default: a 30-day bundle is renewed after 20 days). A pass:
//!
//! 1. every due bundle among the desired versions and the running rollouts' bundles is
//!    re-signed; the devices that should run it get the renewal instead (`fleet_desired`,
//!    which every hub's delivery sends), and a rollout whose bundle it was now names the
//!    renewal (so its later stages dispatch it; devices reporting it count as applied).
//! 2. A running rollout whose bundle is older than the desired version of one of its
//!    pending devices (possible once a renewal gave that device a higher version) has its
//!    bundle renewed too, so that dispatching it never hands a device a lower version,
//!    which the device would refuse.
//!
//! No rollout is needed for a renewal: the content is the one the device already runs
//! (docs/fleet.md, "Bundle renewal").
//!
//! 3. After a pass that renewed something, the superseded bundles nothing references any
//!    more are pruned ([`bundles::prune`], keeping the newest [`bundles::KEEP_PER_TARGET`]
//!    of each target), so renewals do not grow `fleet_bundles` without bound.

use reactor_core::engine::Timestamp;
use sqlx::Row;

use super::state;
use crate::db::Database;
use crate::fleet::bundles::{self, BundleBuildError};
use crate::fleet::registry::on_pool;
use reactor_core::sync::bundle::BundleSigner;

/// Longest time between two passes (a pass is also due when the earliest bundle is).
pub const CHECK_EVERY_MS: i64 = 5_000;

/// What a pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Pass {
    /// (old version, renewal), in the order they were made.
    pub renewed: Vec<(u64, u64)>,
    /// When the next pass is due (ms since the epoch).
    pub next_at: i64,
    /// Superseded bundles deleted after the renewals.
    pub pruned: u64,
}

/// One renewal pass at `now` (ms) with renewal at less than `fraction` of validity left.
pub async fn pass(
    db: &Database,
    signer: &BundleSigner,
    fraction: f64,
    now: i64,
) -> Result<Pass, BundleBuildError> {
    let mut out = Pass {
        renewed: Vec::new(),
        next_at: now + CHECK_EVERY_MS,
        pruned: 0,
    };
    let mut versions = bundles::desired_versions(db).await?;
    for (_, version) in running(db).await? {
        if !versions.contains(&version) {
            versions.push(version);
        }
    }
    versions.sort_unstable();
    for (version, created, expires) in bundles::validity(db, &versions).await? {
        let due = bundles::renewal_due(created, expires, fraction);
        if now < due {
            out.next_at = out.next_at.min(due);
            continue;
        }
        if let Some(renewal) = renew(db, signer, version, expires, now).await? {
            out.renewed.push((version, renewal));
        }
    }
    // Step 2: running rollouts behind one of their pending devices.
    for (rollout, version) in behind(db).await? {
        tracing::info!(%rollout, version, "a pending device of the rollout has a newer bundle: the rollout's bundle is renewed");
        if let Some(renewal) = renew(db, signer, version, i64::MAX, now).await? {
            out.renewed.push((version, renewal));
        }
    }
    // Step 3: renewals supersede bundles; what nothing references any more goes.
    if !out.renewed.is_empty() {
        out.pruned = bundles::prune(db, bundles::KEEP_PER_TARGET).await?;
        if out.pruned > 0 {
            tracing::info!(
                pruned = out.pruned,
                keep = bundles::KEEP_PER_TARGET,
                "superseded bundles pruned"
            );
        }
    }
    Ok(out)
}

/// Renews `version` and moves its devices and rollouts to the renewal.
async fn renew(
    db: &Database,
    signer: &BundleSigner,
    version: u64,
    expires: i64,
    now: i64,
) -> Result<Option<u64>, BundleBuildError> {
    let Some(renewal) = bundles::renew(db, signer, version).await? else {
        return Ok(None);
    };
    let devices = bundles::replace_desired(db, version, renewal).await?;
    let rollouts = rename_rollout_bundle(db, version, renewal).await?;
    if expires <= now {
        tracing::warn!(
            version,
            renewal,
            devices,
            "a desired bundle had expired before its renewal (was the leader down?)"
        );
    }
    tracing::info!(version, renewal, devices, rollouts, "bundle renewed");
    Ok(Some(renewal))
}

/// Running rollouts: (id, bundle version).
async fn running(db: &Database) -> Result<Vec<(String, u64)>, sqlx::Error> {
    on_pool!(db, pool => {
        sqlx::query("SELECT id, bundle_version FROM rollouts WHERE state = $1")
            .bind(state::RUNNING)
            .fetch_all(pool)
            .await?
            .into_iter()
            .map(|row| {
                Ok((
                    row.try_get::<String, _>(0)?,
                    u64::try_from(row.try_get::<i64, _>(1)?).unwrap_or(0),
                ))
            })
            .collect()
    })
}

/// Running rollouts with a pending device whose desired version is above the rollout's.
async fn behind(db: &Database) -> Result<Vec<(String, u64)>, sqlx::Error> {
    on_pool!(db, pool => {
        sqlx::query(
            "SELECT r.id, r.bundle_version FROM rollouts r WHERE r.state = $1 AND EXISTS \
             (SELECT 1 FROM rollout_devices m JOIN fleet_desired f ON f.device_id = m.device_id \
             WHERE m.rollout_id = r.id AND m.state = $2 AND f.version > r.bundle_version)",
        )
        .bind(state::RUNNING)
        .bind(super::device_state::PENDING)
        .fetch_all(pool)
        .await?
        .into_iter()
        .map(|row| {
            Ok((
                row.try_get::<String, _>(0)?,
                u64::try_from(row.try_get::<i64, _>(1)?).unwrap_or(0),
            ))
        })
        .collect()
    })
}

/// Rollouts whose bundle was `from` name its renewal `to` (finished ones too: their view of
/// late devices compares reported versions with it).
async fn rename_rollout_bundle(db: &Database, from: u64, to: u64) -> Result<u64, sqlx::Error> {
    let now = Timestamp::now().millis();
    on_pool!(db, pool => {
        Ok(sqlx::query(
            "UPDATE rollouts SET bundle_version = $2, updated_at = $3 WHERE bundle_version = $1",
        )
        .bind(i64::try_from(from).unwrap_or(i64::MAX))
        .bind(i64::try_from(to).unwrap_or(i64::MAX))
        .bind(now)
        .execute(pool)
        .await?
        .rows_affected())
    })
}
