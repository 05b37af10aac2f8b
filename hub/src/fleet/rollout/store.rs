//! Rollouts in SQL: creation with the device snapshot, reads for the API and the driver,
//! and the state changes the driver makes.

use reactor_core::engine::Timestamp;
use serde_json::{Value, json};
use sqlx::Row;

use super::{Gate, Strategy, device_state, state};
use crate::db::Database;
use crate::fleet::registry::{Labels, on_pool};

/// A rollout row.
#[derive(Debug, Clone)]
pub struct Rollout {
    pub id: String,
    pub state: String,
    pub bundle_version: u64,
    pub selector: Labels,
    pub strategy: Strategy,
    pub gate: Gate,
    pub auto_rollback: bool,
    pub stage: usize,
    pub stage_started_at: Option<i64>,
    pub reason: Option<String>,
    pub created_by: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub finished_at: Option<i64>,
}

impl Rollout {
    pub fn json(&self, total: usize) -> Value {
        json!({
            "id": self.id,
            "state": self.state,
            "bundle_version": self.bundle_version,
            "selector": self.selector,
            "strategy": self.strategy,
            "stages": self.strategy.stages(total),
            "gate": self.gate,
            "auto_rollback": self.auto_rollback,
            "stage": self.stage,
            "reason": self.reason,
            "created_by": self.created_by,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "finished_at": self.finished_at,
        })
    }
}

/// A device of a rollout, with what the device last reported (table `devices`).
#[derive(Debug, Clone)]
pub struct Member {
    pub device: String,
    pub position: i64,
    pub previous_version: Option<u64>,
    pub state: String,
    pub stage: Option<usize>,
    pub sent_at: Option<i64>,
    pub applied_at: Option<i64>,
    pub rollback_version: Option<u64>,
    /// Health snapshot taken when the gate judged the device.
    pub judged: Option<(i64, i64)>,
    pub online: bool,
    pub reported_version: Option<u64>,
    /// The latest reported health: failed, total.
    pub health: Option<(i64, i64)>,
}

impl Member {
    pub fn json(&self) -> Value {
        json!({
            "device": self.device,
            "state": self.state,
            "stage": self.stage,
            "previous_version": self.previous_version,
            "rollback_version": self.rollback_version,
            "sent_at": self.sent_at,
            "applied_at": self.applied_at,
            "online": self.online,
            "bundle_version": self.reported_version,
            "health": self.health.map(|(failed, total)| json!({"failed": failed, "total": total})),
            "judged_health": self.judged.map(|(failed, total)| json!({"failed": failed, "total": total})),
        })
    }
}

fn to_u64(value: Option<i64>) -> Option<u64> {
    value.and_then(|v| u64::try_from(v).ok())
}

macro_rules! rollout_from_row {
    ($row:expr) => {{
        let row = $row;
        let selector: String = row.try_get("selector")?;
        let strategy: String = row.try_get("strategy")?;
        let gate: String = row.try_get("gate")?;
        Rollout {
            id: row.try_get("id")?,
            state: row.try_get("state")?,
            bundle_version: u64::try_from(row.try_get::<i64, _>("bundle_version")?).unwrap_or(0),
            selector: serde_json::from_str(&selector).unwrap_or_default(),
            strategy: serde_json::from_str(&strategy).unwrap_or_default(),
            gate: serde_json::from_str(&gate).unwrap_or_default(),
            auto_rollback: row.try_get::<i64, _>("auto_rollback")? != 0,
            stage: usize::try_from(row.try_get::<i64, _>("stage")?).unwrap_or(0),
            stage_started_at: row.try_get("stage_started_at")?,
            reason: row.try_get("reason")?,
            created_by: row.try_get("created_by")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
            finished_at: row.try_get("finished_at")?,
        }
    }};
}

const ROLLOUT_COLUMNS: &str = "id, state, bundle_version, selector, strategy, gate, auto_rollback, \
     stage, stage_started_at, reason, created_by, created_at, updated_at, finished_at";

/// A new rollout to insert.
#[derive(Debug, Clone)]
pub struct NewRollout {
    pub id: String,
    pub bundle_version: u64,
    pub selector: Labels,
    pub strategy: Strategy,
    pub gate: Gate,
    pub auto_rollback: bool,
    pub created_by: Option<String>,
}

/// The ids of enrolled devices carrying every `selector` label, online ones first (so the
/// canary is made of devices that can answer), then by id; with each one's previous bundle
/// (its desired version, else the reported one).
pub async fn targets(
    db: &Database,
    selector: &Labels,
) -> Result<Vec<(String, Option<u64>)>, sqlx::Error> {
    on_pool!(db, pool => {
    let rows = sqlx::query(
            "SELECT d.id, d.labels, d.online, d.bundle_version, f.version AS desired \
             FROM devices d LEFT JOIN fleet_desired f ON f.device_id = d.id \
             WHERE d.credential_hash IS NOT NULL ORDER BY d.online DESC, d.id",
        )
        .fetch_all(pool)
        .await?;
    let mut out = Vec::new();
    for row in rows {
        let labels: String = row.try_get("labels")?;
        let labels: Labels = serde_json::from_str(&labels).unwrap_or_default();
        if selector.iter().all(|(k, v)| labels.get(k) == Some(v)) {
            let desired: Option<i64> = row.try_get("desired")?;
            let reported: Option<i64> = row.try_get("bundle_version")?;
            out.push((row.try_get("id")?, to_u64(desired.or(reported))));
        }
    }
    Ok(out)
    })
}

/// Inserts the rollout and its devices (all `pending`) in one transaction.
pub async fn insert(
    db: &Database,
    rollout: &NewRollout,
    devices: &[(String, Option<u64>)],
) -> Result<(), sqlx::Error> {
    let now = Timestamp::now().millis();
    let version = i64::try_from(rollout.bundle_version).unwrap_or(i64::MAX);
    on_pool!(db, pool => {
        let mut tx = crate::db::begin_write(pool).await?;
        sqlx::query(
            "INSERT INTO rollouts (id, state, bundle_version, selector, strategy, gate, \
             auto_rollback, stage, created_by, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, 0, $8, $9, $9)",
        )
        .bind(&rollout.id)
        .bind(state::RUNNING)
        .bind(version)
        .bind(serde_json::to_string(&rollout.selector).unwrap_or_default())
        .bind(serde_json::to_string(&rollout.strategy).unwrap_or_default())
        .bind(serde_json::to_string(&rollout.gate).unwrap_or_default())
        .bind(i64::from(rollout.auto_rollback))
        .bind(&rollout.created_by)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        for (position, (device, previous)) in devices.iter().enumerate() {
            sqlx::query(
                "INSERT INTO rollout_devices (rollout_id, device_id, position, previous_version, \
                 state, updated_at) VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(&rollout.id)
            .bind(device)
            .bind(position as i64)
            .bind(previous.and_then(|v| i64::try_from(v).ok()))
            .bind(device_state::PENDING)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
    });
    Ok(())
}

/// One rollout.
pub async fn get(db: &Database, id: &str) -> Result<Option<Rollout>, sqlx::Error> {
    let sql = format!("SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE id = $1");
    on_pool!(db, pool => {
        match sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(pool).await? {
            Some(row) => Ok(Some(rollout_from_row!(row))),
            None => Ok(None),
        }
    })
}

/// Rollouts, newest first (`active_only`: those still driven).
pub async fn list(
    db: &Database,
    active_only: bool,
    limit: i64,
) -> Result<Vec<Rollout>, sqlx::Error> {
    let filter = if active_only {
        format!(
            "WHERE state IN ('{}', '{}', '{}')",
            state::ACTIVE[0],
            state::ACTIVE[1],
            state::ACTIVE[2]
        )
    } else {
        String::new()
    };
    let sql = format!(
        "SELECT {ROLLOUT_COLUMNS} FROM rollouts {filter} ORDER BY created_at DESC, id DESC LIMIT $1"
    );
    on_pool!(db, pool => {
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(limit).fetch_all(pool).await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            out.push(rollout_from_row!(row));
        }
        Ok(out)
    })
}

/// The rollout's devices by position, with what each last reported.
pub async fn members(db: &Database, id: &str) -> Result<Vec<Member>, sqlx::Error> {
    on_pool!(db, pool => {
    let rows = sqlx::query(
            "SELECT r.device_id, r.position, r.previous_version, r.state, r.stage, r.sent_at, \
             r.applied_at, r.rollback_version, r.health_failed AS judged_failed, \
             r.health_total AS judged_total, d.online, d.bundle_version, d.health_failed, \
             d.health_total FROM rollout_devices r LEFT JOIN devices d ON d.id = r.device_id \
             WHERE r.rollout_id = $1 ORDER BY r.position",
        )
        .bind(id)
        .fetch_all(pool)
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let judged = match (
            row.try_get::<Option<i64>, _>("judged_failed")?,
            row.try_get::<Option<i64>, _>("judged_total")?,
        ) {
            (Some(f), Some(t)) => Some((f, t)),
            _ => None,
        };
        let health = match (
            row.try_get::<Option<i64>, _>("health_failed")?,
            row.try_get::<Option<i64>, _>("health_total")?,
        ) {
            (Some(f), Some(t)) => Some((f, t)),
            _ => None,
        };
        out.push(Member {
            device: row.try_get("device_id")?,
            position: row.try_get("position")?,
            previous_version: to_u64(row.try_get("previous_version")?),
            state: row.try_get("state")?,
            stage: row
                .try_get::<Option<i64>, _>("stage")?
                .and_then(|s| usize::try_from(s).ok()),
            sent_at: row.try_get("sent_at")?,
            applied_at: row.try_get("applied_at")?,
            rollback_version: to_u64(row.try_get("rollback_version")?),
            judged,
            online: row.try_get::<Option<i64>, _>("online")?.unwrap_or(0) != 0,
            reported_version: to_u64(row.try_get("bundle_version")?),
            health,
        });
    }
    Ok(out)
    })
}

/// Sets the rollout's state (and reason, and `finished_at` for a final state).
pub async fn set_state(
    db: &Database,
    id: &str,
    from: &[&str],
    to: &str,
    reason: Option<&str>,
) -> Result<bool, sqlx::Error> {
    let now = Timestamp::now().millis();
    let finished =
        matches!(to, state::COMPLETED | state::ROLLED_BACK | state::ABORTED).then_some(now);
    let from_list = from
        .iter()
        .map(|s| format!("'{s}'"))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "UPDATE rollouts SET state = $2, reason = COALESCE($3, reason), updated_at = $4, \
         finished_at = COALESCE($5, finished_at) WHERE id = $1 AND state IN ({from_list})"
    );
    let done = on_pool!(db, pool => {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .bind(to)
            .bind(reason)
            .bind(now)
            .bind(finished)
            .execute(pool)
            .await?
            .rows_affected()
    });
    if to == state::ABORTED || to == state::ROLLING_BACK {
        skip_pending(db, id).await?;
    }
    Ok(done == 1)
}

/// Pending devices of a stopped rollout → `skipped`.
async fn skip_pending(db: &Database, id: &str) -> Result<(), sqlx::Error> {
    let now = Timestamp::now().millis();
    on_pool!(db, pool => {
        sqlx::query(
            "UPDATE rollout_devices SET state = $2, updated_at = $3 WHERE rollout_id = $1 AND state = $4",
        )
        .bind(id)
        .bind(device_state::SKIPPED)
        .bind(now)
        .bind(device_state::PENDING)
        .execute(pool)
        .await?;
    });
    Ok(())
}

/// Moves to stage `stage` (not dispatched yet) or records the dispatch time.
pub async fn set_stage(
    db: &Database,
    id: &str,
    stage: usize,
    started_at: Option<i64>,
) -> Result<(), sqlx::Error> {
    let now = Timestamp::now().millis();
    on_pool!(db, pool => {
        sqlx::query(
            "UPDATE rollouts SET stage = $2, stage_started_at = $3, updated_at = $4 WHERE id = $1",
        )
        .bind(id)
        .bind(stage as i64)
        .bind(started_at)
        .bind(now)
        .execute(pool)
        .await?;
    });
    Ok(())
}

/// Changes devices' state; `stage`, `rollback_version` and the judged health are set
/// when given.
pub async fn set_members(
    db: &Database,
    id: &str,
    devices: &[String],
    to: &str,
    stage: Option<usize>,
    rollback_version: Option<u64>,
) -> Result<(), sqlx::Error> {
    let now = Timestamp::now().millis();
    let sent = (to == device_state::SENT).then_some(now);
    on_pool!(db, pool => {
        let mut tx = crate::db::begin_write(pool).await?;
        for device in devices {
            sqlx::query(
                "UPDATE rollout_devices SET state = $3, stage = COALESCE($4, stage), \
                 rollback_version = COALESCE($5, rollback_version), \
                 sent_at = COALESCE($6, sent_at), updated_at = $7 \
                 WHERE rollout_id = $1 AND device_id = $2",
            )
            .bind(id)
            .bind(device)
            .bind(to)
            .bind(stage.map(|s| s as i64))
            .bind(rollback_version.and_then(|v| i64::try_from(v).ok()))
            .bind(sent)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
    });
    Ok(())
}

/// Records devices' health as the gate judged it, with their new state: (device, state,
/// failed, total), in one transaction.
pub async fn judge(
    db: &Database,
    id: &str,
    verdicts: &[(String, &str, i64, i64)],
) -> Result<(), sqlx::Error> {
    if verdicts.is_empty() {
        return Ok(());
    }
    let now = Timestamp::now().millis();
    on_pool!(db, pool => {
        let mut tx = crate::db::begin_write(pool).await?;
        for (device, to, failed, total) in verdicts {
            sqlx::query(
                "UPDATE rollout_devices SET state = $3, health_failed = $4, health_total = $5, \
                 updated_at = $6 WHERE rollout_id = $1 AND device_id = $2",
            )
            .bind(id)
            .bind(device)
            .bind(*to)
            .bind(failed)
            .bind(total)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
    });
    Ok(())
}

/// Dispatches the rollout's current stage in one transaction: its devices (position below
/// `upto`) still pending get the rollout's bundle as their desired bundle and turn `sent`;
/// the stage's dispatch time is recorded.
pub async fn dispatch(
    db: &Database,
    rollout: &Rollout,
    upto: usize,
    now: i64,
) -> Result<(), sqlx::Error> {
    let version = i64::try_from(rollout.bundle_version).unwrap_or(i64::MAX);
    let upto = i64::try_from(upto).unwrap_or(i64::MAX);
    let stage = rollout.stage as i64;
    on_pool!(db, pool => {
        let mut tx = crate::db::begin_write(pool).await?;
        sqlx::query(
            "INSERT INTO fleet_desired (device_id, version, assigned_at) \
             SELECT device_id, $2, $3 FROM rollout_devices \
             WHERE rollout_id = $1 AND state = $4 AND position < $5 \
             ON CONFLICT (device_id) DO UPDATE SET version = excluded.version, \
             assigned_at = excluded.assigned_at",
        )
        .bind(&rollout.id)
        .bind(version)
        .bind(now)
        .bind(device_state::PENDING)
        .bind(upto)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE rollout_devices SET state = $2, stage = $3, sent_at = $4, updated_at = $4 \
             WHERE rollout_id = $1 AND state = $5 AND position < $6",
        )
        .bind(&rollout.id)
        .bind(device_state::SENT)
        .bind(stage)
        .bind(now)
        .bind(device_state::PENDING)
        .bind(upto)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE rollouts SET stage_started_at = $2, updated_at = $2 WHERE id = $1",
        )
        .bind(&rollout.id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
    });
    Ok(())
}

/// Devices that now report the version they were waiting for: `sent` → `applied` (the
/// rollout's version or higher), `rolling_back` → `rolled_back` (the rollback version or
/// higher). Covers finished rollouts too, so devices that were offline converge in the view.
pub async fn refresh(db: &Database) -> Result<u64, sqlx::Error> {
    let now = Timestamp::now().millis();
    on_pool!(db, pool => {
        let applied = sqlx::query(
            "UPDATE rollout_devices SET state = $1, applied_at = $2, updated_at = $2 \
             WHERE state = $3 AND (SELECT d.bundle_version FROM devices d \
             WHERE d.id = rollout_devices.device_id) >= (SELECT r.bundle_version FROM rollouts r \
             WHERE r.id = rollout_devices.rollout_id)",
        )
        .bind(device_state::APPLIED)
        .bind(now)
        .bind(device_state::SENT)
        .execute(pool)
        .await?
        .rows_affected();
        let rolled = sqlx::query(
            "UPDATE rollout_devices SET state = $1, updated_at = $2 \
             WHERE state = $3 AND (SELECT d.bundle_version FROM devices d \
             WHERE d.id = rollout_devices.device_id) >= rollback_version",
        )
        .bind(device_state::ROLLED_BACK)
        .bind(now)
        .bind(device_state::ROLLING_BACK)
        .execute(pool)
        .await?
        .rows_affected();
        Ok(applied + rolled)
    })
}

/// Counts of devices per state.
pub fn counts(members: &[Member]) -> Value {
    let mut counts = serde_json::Map::new();
    for member in members {
        let entry = counts.entry(member.state.clone()).or_insert(json!(0));
        *entry = json!(entry.as_u64().unwrap_or(0) + 1);
    }
    Value::Object(counts)
}
