//! [`Leader`]: which hub process runs the singleton work (cron ticks, later CDC slots).
//!
//! PostgreSQL: the leader is the process holding a session-level advisory lock
//! ([`LEADER_LOCK`]) on a connection of its own, opened for this and kept for the process'
//! life (never a pooled one: a pooled connection would hand the lock to whoever borrows it
//! next). Non-leaders retry `pg_try_advisory_lock` every `retry`; the leader checks its
//! connection at the same pace. When the leader dies or loses its connection the server
//! releases the lock and the next retry of another hub takes it: singleton work moves
//! within about `retry` (plus TCP timeouts for a silent network cut).
//!
//! SQLite: one hub per database (see [`HubInstance`](super::HubInstance)), always leader.
//!
//! The state is published on a watch channel: singleton tasks run while
//! [`Leadership::leading`] is true and stop when it turns false.

use std::time::Duration;

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::Database;

/// The advisory lock key of hub leadership ("REACTOR1" in ASCII).
pub const LEADER_LOCK: i64 = 0x5245_4143_544f_5231;

/// Who leads, as this process sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leadership {
    /// This process leads: run the singleton work.
    pub leading: bool,
    /// The leading instance's id, when known.
    pub leader: Option<String>,
}

/// The leadership of one hub instance (see the module docs). Dropping it gives leadership up.
#[derive(Debug)]
pub struct Leader {
    state: watch::Receiver<Leadership>,
    task: Option<JoinHandle<()>>,
}

impl Leader {
    /// Starts competing for leadership as `instance`, retrying every `retry`.
    pub fn start(db: &Database, instance: &str, retry: Duration) -> Leader {
        match db {
            Database::Sqlite(_) => {
                let (_, state) = watch::channel(Leadership {
                    leading: true,
                    leader: Some(instance.to_string()),
                });
                Leader { state, task: None }
            }
            Database::Postgres(pool) => {
                let (sender, state) = watch::channel(Leadership {
                    leading: false,
                    leader: None,
                });
                let options = (*pool.connect_options())
                    .clone()
                    .application_name(&format!("reactor-hub:{instance}"));
                let task = tokio::spawn(compete(options, instance.to_string(), retry, sender));
                Leader {
                    state,
                    task: Some(task),
                }
            }
        }
    }

    /// The current leadership and its changes.
    pub fn watch(&self) -> watch::Receiver<Leadership> {
        self.state.clone()
    }

    /// Whether this process leads now.
    pub fn is_leader(&self) -> bool {
        self.state.borrow().leading
    }

    /// Waits until this process leads.
    pub async fn until_leading(&self) {
        let mut state = self.state.clone();
        // An error means the task ended: leadership cannot come any more.
        let _ = state.wait_for(|s| s.leading).await;
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            // Dropping the task's connection ends the session: the server frees the lock.
            task.abort();
        }
    }
}

async fn compete(
    options: PgConnectOptions,
    me: String,
    retry: Duration,
    state: watch::Sender<Leadership>,
) {
    let mut conn: Option<PgConnection> = None;
    let mut leading = false;
    loop {
        if conn.is_none() {
            match options.connect().await {
                Ok(fresh) => conn = Some(fresh),
                Err(error) => tracing::warn!(%error, "leader election: cannot connect"),
            }
        }
        let next = match conn.as_mut() {
            Some(c) if leading => c.ping().await.map(|()| (true, Some(me.clone()))),
            Some(c) => try_lead(c, &me).await,
            None => Err(sqlx::Error::PoolTimedOut),
        };
        let (now_leading, leader) = match next {
            Ok(next) => next,
            Err(error) => {
                if leading {
                    tracing::warn!(%error, "leader lost its database session: stepping down");
                }
                // The session (and the lock with it) is gone or unusable.
                if let Some(c) = conn.take() {
                    let _ = c.close_hard().await;
                }
                (false, None)
            }
        };
        if now_leading != leading {
            tracing::info!(instance = %me, leading = now_leading, "hub leadership changed");
        }
        leading = now_leading;
        state.send_if_modified(|current| {
            let next = Leadership {
                leading: now_leading,
                leader: leader.clone(),
            };
            let changed = *current != next;
            *current = next;
            changed
        });
        if state.is_closed() {
            break;
        }
        tokio::time::sleep(retry).await;
    }
}

/// One attempt to take the lock; on failure names the holder (from its application name).
async fn try_lead(
    conn: &mut PgConnection,
    me: &str,
) -> Result<(bool, Option<String>), sqlx::Error> {
    let took: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(LEADER_LOCK)
        .fetch_one(&mut *conn)
        .await?;
    if took {
        return Ok((true, Some(me.to_string())));
    }
    let holder: Option<String> = sqlx::query_scalar(
        "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
         WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 \
           AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
           AND l.classid::bigint = $1 AND l.objid::bigint = $2 LIMIT 1",
    )
    .bind(LEADER_LOCK >> 32)
    .bind(LEADER_LOCK & 0xffff_ffff)
    .fetch_optional(&mut *conn)
    .await?;
    let leader = holder.and_then(|name| name.strip_prefix("reactor-hub:").map(str::to_string));
    Ok((false, leader))
}
