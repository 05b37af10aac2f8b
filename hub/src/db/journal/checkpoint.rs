//! WAL checkpoints for the SQLite journal, off the writer's path.
//!
//! SQLite copies the write-ahead log back into the database file in a checkpoint, which by
//! default runs inside the commit that pushes the log past 1,000 pages: every few dozen
//! commits one of them also writes a few MiB and fsyncs the database file, and the single
//! writer waits for it. Here the log is checkpointed by its own task on another connection
//! shortly after writes (`PASSIVE`: it never blocks the writer, and the writer never waits
//! for it); the connections' own automatic checkpoint stays only as a backstop at
//! [`AUTOCHECKPOINT_PAGES`] (set in [`Database::open_sqlite`](crate::db::Database)), reached
//! when this task falls far behind.

use std::time::Duration;

use sqlx::sqlite::SqlitePool;
use tokio::sync::mpsc;

/// The automatic checkpoint threshold of every connection, in pages (64 MiB of 4 KiB pages):
/// far above what the checkpoint task lets the log reach.
pub const AUTOCHECKPOINT_PAGES: u32 = 16_384;

/// How long after a commit the log is checkpointed: commits meanwhile share the checkpoint.
const CHECKPOINT_DELAY: Duration = Duration::from_millis(50);

/// Tells the checkpoint task that the log grew. Dropping it ends the task.
#[derive(Debug)]
pub(super) struct Checkpoints {
    wrote: mpsc::Sender<()>,
}

impl Checkpoints {
    /// Starts the checkpoint task for `pool` (call inside a tokio runtime).
    pub(super) fn start(pool: SqlitePool) -> Checkpoints {
        let (wrote, mut written) = mpsc::channel(1);
        tokio::spawn(async move {
            while written.recv().await.is_some() {
                tokio::time::sleep(CHECKPOINT_DELAY).await;
                // A signal sent during the sleep is covered by this checkpoint.
                let _ = written.try_recv();
                if let Err(error) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
                    .execute(&pool)
                    .await
                {
                    tracing::debug!(%error, "WAL checkpoint failed; the next commit retries");
                }
            }
        });
        Checkpoints { wrote }
    }

    /// Notes a commit (never waits).
    pub(super) fn wrote(&self) {
        let _ = self.wrote.try_send(());
    }
}
