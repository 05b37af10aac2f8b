//! Bundles the hub signs (table `fleet_bundles`, migration 0008) and the bundle each device
//! should run (`fleet_desired`).
//!
//! A bundle is built from workflow texts that reactor-core's parser and validator accepted
//! (an invalid one is refused with `path:line:col` problems before anything is signed), gets
//! the next fleet-wide version (the highest stored + 1; a concurrent insert of the same
//! version loses the primary key race and retries with the next), is signed with the fleet's
//! key and stored with its bytes, so every hub can deliver it and a restarted hub sends the
//! very same bytes again.
//!
//! Versions never go backwards on a device, so a rollback is a **new, higher version**
//! carrying an earlier bundle's workflows ([`sign_and_store`] with `purpose = "rollback"`).
//!
//! Bundles carry an expiry and devices refuse expired ones, so the leader re-signs every
//! desired bundle before it expires ([`renew`]: same target and workflows, a new version, a
//! new expiry, the current key; `purpose = "renewal"`; driven by
//! [`super::rollout::renewal`]). Delivery never sends a bundle whose expiry has passed
//! ([`deliverable`]).
//!
//! Superseded bundles are pruned ([`prune`], by the leader after a renewal pass that renewed
//! something): a bundle goes once nothing references it — no device's desired or reported
//! version, no rollout's bundle, no rollout device's previous or rollback version — and at
//! least [`KEEP_PER_TARGET`] newer bundles of its target exist (kept for audit). The newest
//! bundle is therefore never deleted, so `MAX(version)` and the next version never go back.

use std::time::Duration;

use reactor_core::dsl::Diagnostic;
use reactor_core::engine::Timestamp;
use reactor_core::sync::bundle::{BundleSigner, BundleSpec, MAX_BUNDLE_BYTES, WorkflowText};
use sqlx::Row;

use super::registry::{Labels, on_pool};
use crate::db::Database;

/// Most workflows in one bundle (the manifest's bound).
pub const MAX_WORKFLOWS: usize = reactor_core::sync::bundle::MAX_WORKFLOWS;
/// How long a bundle may be accepted after it was signed, unless the request says otherwise.
pub const DEFAULT_EXPIRY: Duration = Duration::from_secs(30 * 24 * 3600);
/// Shortest validity a bundle may be given (renewal re-signs it within that time).
pub const MIN_EXPIRY: Duration = Duration::from_secs(1);
/// Newest bundles of each target that pruning keeps even when nothing references them.
pub const KEEP_PER_TARGET: u32 = 5;
/// Attempts at taking the next version when other hubs insert concurrently.
const VERSION_ATTEMPTS: usize = 8;

/// Failures building or storing a bundle.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BundleBuildError {
    /// Workflows that do not parse or validate (every problem, with path, line and column).
    #[error("{} workflow problem(s)", .0.len())]
    Invalid(Vec<Diagnostic>),
    #[error("{0}")]
    Refused(String),
    #[error("the signed bundle is {len} bytes; devices accept at most {max}")]
    TooLarge { len: usize, max: usize },
    #[error("database error: {0}")]
    Sql(#[from] sqlx::Error),
}

/// Parses and validates each workflow text (`workflows[i]` is its path in problems) and
/// returns them named by their `name:`. Names must be unique.
pub fn validate(texts: &[String]) -> Result<Vec<WorkflowText>, BundleBuildError> {
    if texts.len() > MAX_WORKFLOWS {
        return Err(BundleBuildError::Refused(format!(
            "{} workflows; a bundle holds at most {MAX_WORKFLOWS}",
            texts.len()
        )));
    }
    let mut problems = Vec::new();
    let mut out: Vec<WorkflowText> = Vec::with_capacity(texts.len());
    for (index, text) in texts.iter().enumerate() {
        let path = format!("workflows[{index}]");
        match reactor_core::dsl::parse_workflow(&path, text) {
            Ok(workflow) => {
                let name = workflow.name.to_string();
                if out.iter().any(|w| w.name == name) {
                    problems.push(Diagnostic {
                        path,
                        line: 1,
                        column: 1,
                        message: format!("a workflow named {name:?} is already in the bundle"),
                        help: Some("workflow names in a bundle are unique".into()),
                    });
                    continue;
                }
                out.push(WorkflowText {
                    name,
                    text: text.clone(),
                });
            }
            Err(diagnostics) => problems.extend(diagnostics),
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(BundleBuildError::Invalid(problems))
    }
}

/// What a new bundle is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Rollout,
    Rollback,
    /// The same content re-signed before it expires.
    Renewal,
}

impl Purpose {
    fn as_str(self) -> &'static str {
        match self {
            Purpose::Rollout => "rollout",
            Purpose::Rollback => "rollback",
            Purpose::Renewal => "renewal",
        }
    }
}

/// Signs `workflows` for devices carrying `target` under the next fleet-wide version and
/// stores it; returns the version.
pub async fn sign_and_store(
    db: &Database,
    signer: &BundleSigner,
    target: &Labels,
    workflows: &[WorkflowText],
    expires_in: Duration,
    rollout: Option<&str>,
    purpose: Purpose,
) -> Result<u64, BundleBuildError> {
    let created = Timestamp::now();
    let expires = Timestamp(
        created
            .millis()
            .saturating_add(i64::try_from(expires_in.as_millis()).unwrap_or(i64::MAX)),
    );
    let target_json = serde_json::to_string(target).unwrap_or_else(|_| "{}".into());
    let workflows_json = serde_json::to_string(workflows).unwrap_or_else(|_| "[]".into());
    let mut last_error = None;
    for _ in 0..VERSION_ATTEMPTS {
        let next: i64 = on_pool!(db, pool => {
            sqlx::query("SELECT COALESCE(MAX(version), 0) + 1 FROM fleet_bundles")
                .fetch_one(pool)
                .await?
                .try_get(0)?
        });
        let version = u64::try_from(next).unwrap_or(1);
        let bytes = signer.sign(BundleSpec {
            version,
            target: target.clone(),
            created,
            expires,
            workflows: workflows.to_vec(),
            endorsements: Vec::new(),
        });
        // The bundle frame adds a few bytes of envelope; devices refuse bundles over 1 MiB.
        if bytes.len() > MAX_BUNDLE_BYTES {
            return Err(BundleBuildError::TooLarge {
                len: bytes.len(),
                max: MAX_BUNDLE_BYTES,
            });
        }
        let inserted = on_pool!(db, pool => {
            sqlx::query(
                "INSERT INTO fleet_bundles (version, target, workflows, bytes, created_at, \
                 expires_at, rollout_id, purpose) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                 ON CONFLICT (version) DO NOTHING",
            )
            .bind(next)
            .bind(&target_json)
            .bind(&workflows_json)
            .bind(&bytes)
            .bind(created.millis())
            .bind(expires.millis())
            .bind(rollout)
            .bind(purpose.as_str())
            .execute(pool)
            .await
            .map(|done| done.rows_affected())
        });
        match inserted {
            Ok(1) => return Ok(version),
            Ok(_) => {}
            Err(error) => last_error = Some(error),
        }
    }
    Err(match last_error {
        Some(error) => BundleBuildError::Sql(error),
        None => BundleBuildError::Refused(
            "could not take a bundle version: other hubs kept taking them".into(),
        ),
    })
}

/// The signed bytes of bundle `version`.
pub async fn bytes(db: &Database, version: u64) -> Result<Option<Vec<u8>>, sqlx::Error> {
    let version = i64::try_from(version).unwrap_or(i64::MAX);
    on_pool!(db, pool => {
        sqlx::query("SELECT bytes FROM fleet_bundles WHERE version = $1")
            .bind(version)
            .fetch_optional(pool)
            .await?
            .map(|row| row.try_get::<Vec<u8>, _>(0))
            .transpose()
    })
}

/// The signed bytes of bundle `version` with its expiry (ms since the epoch), or `None` when it
/// is not stored. Delivery checks the expiry before every send.
pub async fn deliverable(
    db: &Database,
    version: u64,
) -> Result<Option<(Vec<u8>, i64)>, sqlx::Error> {
    let version = i64::try_from(version).unwrap_or(i64::MAX);
    on_pool!(db, pool => {
        sqlx::query("SELECT bytes, expires_at FROM fleet_bundles WHERE version = $1")
            .bind(version)
            .fetch_optional(pool)
            .await?
            .map(|row| Ok((row.try_get::<Vec<u8>, _>(0)?, row.try_get::<i64, _>(1)?)))
            .transpose()
    })
}

/// When a bundle valid from `created` to `expires` (ms) is due for renewal: once less than
/// `fraction` of its validity is left. A bundle without validity is due at once.
pub fn renewal_due(created: i64, expires: i64, fraction: f64) -> i64 {
    let validity = expires.saturating_sub(created).max(0);
    let left = (validity as f64 * fraction.clamp(0.0, 1.0)) as i64;
    expires.saturating_sub(left)
}

/// Validity (created, expires; ms) of each of `versions` that is stored.
pub async fn validity(
    db: &Database,
    versions: &[u64],
) -> Result<Vec<(u64, i64, i64)>, sqlx::Error> {
    let mut out = Vec::with_capacity(versions.len());
    for &version in versions {
        let Ok(key) = i64::try_from(version) else {
            continue;
        };
        let row: Option<(i64, i64)> = on_pool!(db, pool => {
            sqlx::query("SELECT created_at, expires_at FROM fleet_bundles WHERE version = $1")
                .bind(key)
                .fetch_optional(pool)
                .await?
                .map(|row| Ok::<_, sqlx::Error>((row.try_get(0)?, row.try_get(1)?)))
                .transpose()?
        });
        if let Some((created, expires)) = row {
            out.push((version, created, expires));
        }
    }
    Ok(out)
}

/// The distinct versions some device should run.
pub async fn desired_versions(db: &Database) -> Result<Vec<u64>, sqlx::Error> {
    on_pool!(db, pool => {
        sqlx::query("SELECT DISTINCT version FROM fleet_desired")
            .fetch_all(pool)
            .await?
            .into_iter()
            .map(|row| row.try_get::<i64, _>(0).map(|v| u64::try_from(v).unwrap_or(0)))
            .collect()
    })
}

/// Re-signs bundle `version`: same target, same workflows, same rollout, the same length of
/// validity from now, the signer's (current) key, the next fleet-wide version. Returns the
/// new version, or `None` when `version` is not stored.
pub async fn renew(
    db: &Database,
    signer: &BundleSigner,
    version: u64,
) -> Result<Option<u64>, BundleBuildError> {
    let key = i64::try_from(version).unwrap_or(i64::MAX);
    let row = on_pool!(db, pool => {
        sqlx::query(
            "SELECT target, workflows, created_at, expires_at, rollout_id FROM fleet_bundles \
             WHERE version = $1",
        )
        .bind(key)
        .fetch_optional(pool)
        .await?
        .map(|row| {
            Ok::<_, sqlx::Error>((
                row.try_get::<String, _>(0)?,
                row.try_get::<String, _>(1)?,
                row.try_get::<i64, _>(2)?,
                row.try_get::<i64, _>(3)?,
                row.try_get::<Option<String>, _>(4)?,
            ))
        })
        .transpose()?
    });
    let Some((target, workflows, created, expires, rollout)) = row else {
        return Ok(None);
    };
    let target: Labels = serde_json::from_str(&target)
        .map_err(|e| BundleBuildError::Refused(format!("bundle {version}'s target: {e}")))?;
    let workflows: Vec<WorkflowText> = serde_json::from_str(&workflows)
        .map_err(|e| BundleBuildError::Refused(format!("bundle {version}'s workflows: {e}")))?;
    let validity =
        Duration::from_millis(u64::try_from(expires - created).unwrap_or(0)).max(MIN_EXPIRY);
    sign_and_store(
        db,
        signer,
        &target,
        &workflows,
        validity,
        rollout.as_deref(),
        Purpose::Renewal,
    )
    .await
    .map(Some)
}

/// Every device whose desired bundle is `from` gets `to` instead (a renewal: same content).
pub async fn replace_desired(db: &Database, from: u64, to: u64) -> Result<u64, sqlx::Error> {
    let now = Timestamp::now().millis();
    on_pool!(db, pool => {
        Ok(sqlx::query(
            "UPDATE fleet_desired SET version = $2, assigned_at = $3 WHERE version = $1",
        )
        .bind(i64::try_from(from).unwrap_or(i64::MAX))
        .bind(i64::try_from(to).unwrap_or(i64::MAX))
        .bind(now)
        .execute(pool)
        .await?
        .rows_affected())
    })
}

/// Deletes the bundles nothing references any more (see the module docs), keeping the
/// newest `keep` of each target (`target` as stored: the same labels serialise the same);
/// returns how many were deleted. One statement: each bundle is checked and deleted in it.
/// `keep` is at least 1: the newest bundle must stay (the next version is `MAX + 1`, and a
/// version reused after a device accepted it would be refused as not newer).
pub async fn prune(db: &Database, keep: u32) -> Result<u64, sqlx::Error> {
    let keep = keep.max(1);
    on_pool!(db, pool => {
        Ok(sqlx::query(
            "DELETE FROM fleet_bundles WHERE version IN (SELECT b.version FROM fleet_bundles b              WHERE (SELECT COUNT(*) FROM fleet_bundles n WHERE n.target = b.target              AND n.version > b.version) >= $1              AND NOT EXISTS (SELECT 1 FROM fleet_desired f WHERE f.version = b.version)              AND NOT EXISTS (SELECT 1 FROM devices d WHERE d.bundle_version = b.version)              AND NOT EXISTS (SELECT 1 FROM rollouts r WHERE r.bundle_version = b.version)              AND NOT EXISTS (SELECT 1 FROM rollout_devices m              WHERE m.previous_version = b.version OR m.rollback_version = b.version))",
        )
        .bind(i64::from(keep))
        .execute(pool)
        .await?
        .rows_affected())
    })
}

/// The workflows of bundle `version` (what a rollback to it carries again).
pub async fn workflows(
    db: &Database,
    version: u64,
) -> Result<Option<Vec<WorkflowText>>, sqlx::Error> {
    let version = i64::try_from(version).unwrap_or(i64::MAX);
    let text: Option<String> = on_pool!(db, pool => {
        sqlx::query("SELECT workflows FROM fleet_bundles WHERE version = $1")
            .bind(version)
            .fetch_optional(pool)
            .await?
            .map(|row| row.try_get::<String, _>(0))
            .transpose()?
    });
    Ok(text.map(|text| serde_json::from_str(&text).unwrap_or_default()))
}

/// Makes `version` the bundle each of `devices` should run (delivered by every hub's
/// [`super::delivery`] to the devices connected to it).
pub async fn assign(db: &Database, devices: &[(String, u64)]) -> Result<(), sqlx::Error> {
    let now = Timestamp::now().millis();
    on_pool!(db, pool => {
        let mut tx = crate::db::begin_write(pool).await?;
        for (device, version) in devices {
            sqlx::query(
                "INSERT INTO fleet_desired (device_id, version, assigned_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (device_id) DO UPDATE SET version = excluded.version, \
                 assigned_at = excluded.assigned_at",
            )
            .bind(device)
            .bind(i64::try_from(*version).unwrap_or(i64::MAX))
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
    });
    Ok(())
}

/// Desired versions assigned at or after `since` (all with `since = 0`).
pub async fn desired_since(
    db: &Database,
    since: i64,
) -> Result<Vec<(String, u64, i64)>, sqlx::Error> {
    on_pool!(db, pool => {
        sqlx::query(
            "SELECT device_id, version, assigned_at FROM fleet_desired WHERE assigned_at >= $1",
        )
        .bind(since)
        .fetch_all(pool)
        .await?
        .into_iter()
        .map(|row| {
            Ok((
                row.try_get::<String, _>(0)?,
                u64::try_from(row.try_get::<i64, _>(1)?).unwrap_or(0),
                row.try_get::<i64, _>(2)?,
            ))
        })
        .collect()
    })
}

/// The version device `id` should run, if any.
pub async fn desired(db: &Database, id: &str) -> Result<Option<u64>, sqlx::Error> {
    on_pool!(db, pool => {
        sqlx::query("SELECT version FROM fleet_desired WHERE device_id = $1")
            .bind(id)
            .fetch_optional(pool)
            .await?
            .map(|row| row.try_get::<i64, _>(0).map(|v| u64::try_from(v).unwrap_or(0)))
            .transpose()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_workflows_are_refused_with_their_position() {
        let good =
            "reactor: 1\nname: a\ntriggers:\n  - event: { type: x }\nsteps:\n  - return: 1\n";
        let bad = "reactor: 1\nname: b\ntriggers:\n  - event: { type: x }\nsteps:\n  - nope: 1\n";
        assert_eq!(validate(&[good.into()]).unwrap()[0].name, "a");
        let Err(BundleBuildError::Invalid(problems)) = validate(&[good.into(), bad.into()]) else {
            panic!("accepted an invalid workflow");
        };
        assert!(
            problems.iter().all(|p| p.path == "workflows[1]"),
            "{problems:?}"
        );
        assert!(problems[0].line >= 1);
        let Err(BundleBuildError::Invalid(dup)) = validate(&[good.into(), good.into()]) else {
            panic!("accepted two workflows of one name");
        };
        assert!(dup[0].message.contains("already"), "{dup:?}");
    }

    #[test]
    fn renewal_is_due_when_the_fraction_left_is_reached() {
        // Valid 0..=3000 ms: a third left at 2000.
        assert_eq!(renewal_due(0, 3000, 1.0 / 3.0), 2000);
        assert_eq!(renewal_due(1000, 7000, 0.5), 4000);
        // 0 renews only once expired; out-of-range fractions are clamped.
        assert_eq!(renewal_due(0, 3000, 0.0), 3000);
        assert_eq!(renewal_due(0, 3000, 2.0), 0);
        // A bundle that expired before it was created is due at its expiry.
        assert_eq!(renewal_due(5000, 1000, 0.5), 1000);
    }
}
