//! [`HubInstance`]: one hub process's identity and its lease in `hub_instances`.
//!
//! A hub registers at start and renews its lease (`lease_until`) every few seconds. While the
//! lease holds, its unfinished executions are its own; once it lapses (the process died or
//! lost the database) other hubs adopt them (see [`SqlStore`](super::SqlStore)). On
//! PostgreSQL the database's clock decides, so hubs with skewed clocks still agree.
//!
//! SQLite serves one hub: registering takes an exclusive lock on `hub.db.lock` next to the
//! database file for the life of the instance (a second `serve` on the same data folder is
//! refused) and forgets every other instance, whose executions are then this one's to adopt
//! at once — a restart after a crash resumes without waiting for the old lease to lapse.

use std::fs::File;
use std::sync::Arc;
use std::time::Duration;

use reactor_core::engine::Timestamp;
use tokio::task::JoinHandle;

use super::journal::postgres_now;
use super::{Database, DbError};

/// A lease lapsed this long ago lets the instance's row be deleted (kept meanwhile for
/// operators).
const FORGET_AFTER_MS: i64 = 24 * 3_600_000;

/// One hub process's registration (see the module docs).
#[derive(Debug)]
pub struct HubInstance {
    id: String,
    lease: Duration,
    db: Database,
    /// SQLite only: the data folder's lock, held while this value lives.
    _lock: Option<File>,
}

impl HubInstance {
    /// Registers a new instance (a fresh ULID) holding a lease of `lease` from now.
    pub async fn register(db: &Database, lease: Duration) -> Result<HubInstance, DbError> {
        let id = ulid::Ulid::new().to_string();
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "unknown".into());
        let pid = i64::from(std::process::id());
        let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
        let mut lock = None;
        match db {
            Database::Sqlite(pool) => {
                let path = pool.connect_options().get_filename().to_path_buf();
                let lock_path = path.with_extension("db.lock");
                let file = File::options()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(&lock_path)
                    .map_err(|source| DbError::DataDir {
                        path: lock_path.clone(),
                        source,
                    })?;
                file.try_lock()
                    .map_err(|_| DbError::Busy(path.display().to_string()))?;
                lock = Some(file);
                let now = Timestamp::now().millis();
                let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
                sqlx::query("DELETE FROM hub_instances")
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(
                    "INSERT INTO hub_instances (id, host, pid, started_at, heartbeat_at, lease_until) \
                     VALUES (?1, ?2, ?3, ?4, ?4, ?5)",
                )
                .bind(&id)
                .bind(&host)
                .bind(pid)
                .bind(now)
                .bind(now.saturating_add(lease_ms))
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
            }
            Database::Postgres(pool) => {
                let now = postgres_now();
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "INSERT INTO hub_instances (id, host, pid, started_at, heartbeat_at, lease_until) \
                     VALUES ($1, $2, $3, {now}, {now}, {now} + $4)"
                )))
                .bind(&id)
                .bind(&host)
                .bind(i32::try_from(pid).unwrap_or(i32::MAX))
                .bind(lease_ms)
                .execute(pool)
                .await?;
            }
        }
        Ok(HubInstance {
            id,
            lease,
            db: db.clone(),
            _lock: lock,
        })
    }

    /// This instance's id (the `owner` of the executions it runs).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The lease each heartbeat grants.
    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// Renews the lease for another [`lease`](Self::lease) from now, and forgets instances
    /// whose lease lapsed a day ago.
    pub async fn heartbeat(&self) -> Result<(), DbError> {
        let lease_ms = i64::try_from(self.lease.as_millis()).unwrap_or(i64::MAX);
        match &self.db {
            Database::Sqlite(pool) => {
                let now = Timestamp::now().millis();
                sqlx::query(
                    "UPDATE hub_instances SET heartbeat_at = ?2, lease_until = ?3 WHERE id = ?1",
                )
                .bind(&self.id)
                .bind(now)
                .bind(now.saturating_add(lease_ms))
                .execute(pool)
                .await?;
            }
            Database::Postgres(pool) => {
                let now = postgres_now();
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "UPDATE hub_instances SET heartbeat_at = {now}, lease_until = {now} + $2 \
                     WHERE id = $1"
                )))
                .bind(&self.id)
                .bind(lease_ms)
                .execute(pool)
                .await?;
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DELETE FROM hub_instances WHERE lease_until < {now} - $1 \
                     AND NOT EXISTS (SELECT 1 FROM executions e \
                                     WHERE e.owner = hub_instances.id AND e.finished_at IS NULL)"
                )))
                .bind(FORGET_AFTER_MS)
                .execute(pool)
                .await?;
            }
        }
        Ok(())
    }

    /// Renews the lease every `every` (a third of the lease is a good pace) until the handle
    /// is aborted or the instance dropped. Failures are logged and retried at the next tick:
    /// a hub cut off from its database for longer than its lease loses its executions.
    pub fn spawn_heartbeat(self: &Arc<Self>, every: Duration) -> JoinHandle<()> {
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let Some(instance) = me.upgrade() else { break };
                if let Err(error) = instance.heartbeat().await {
                    tracing::warn!(instance = %instance.id, %error, "lease renewal failed");
                }
            }
        })
    }

    /// Gives the lease up (graceful shutdown): other hubs adopt what is left at once.
    pub async fn release(&self) -> Result<(), DbError> {
        match &self.db {
            Database::Sqlite(pool) => {
                sqlx::query("UPDATE hub_instances SET lease_until = 0 WHERE id = ?1")
                    .bind(&self.id)
                    .execute(pool)
                    .await?;
            }
            Database::Postgres(pool) => {
                sqlx::query("UPDATE hub_instances SET lease_until = 0 WHERE id = $1")
                    .bind(&self.id)
                    .execute(pool)
                    .await?;
            }
        }
        Ok(())
    }
}
