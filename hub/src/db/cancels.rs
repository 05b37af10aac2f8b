//! Cancel requests (table `cancel_requests`, migration 0009): how a cancel reaches an
//! execution that another hub of the same database runs.
//!
//! `POST /api/v1/executions/{id}/cancel` first asks this hub's runtime; when the execution is
//! unfinished but not running here (another hub owns it, or it waits for adoption after its
//! owner died), the API records a request and answers 202. Every hub's cluster loop
//! ([`crate::server::cluster`]) reads the requests and delivers those it can: the owner's
//! runtime takes the cancel and the row goes; a row whose execution has finished (or was
//! pruned) goes too. An execution adopted after its owner died is cancelled by its adopter
//! on the next pass, so a request outlives the hub that was running the execution.

use reactor_core::engine::{ExecutionId, Timestamp};
use sqlx::Row;

use super::{Database, on_pool};

/// Requests read per pass (the oldest first).
pub const BATCH: i64 = 256;

/// A recorded cancel request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CancelRequest {
    pub execution: ExecutionId,
    pub reason: String,
    pub requested_at: Timestamp,
}

/// Records a request to cancel `execution` (a second request for it keeps the first).
pub async fn request(db: &Database, execution: ExecutionId, reason: &str) -> sqlx::Result<()> {
    let now = Timestamp::now().millis();
    on_pool!(db, pool => {
        sqlx::query(
            "INSERT INTO cancel_requests (execution, reason, requested_at) VALUES ($1, $2, $3) \
             ON CONFLICT (execution) DO NOTHING",
        )
        .bind(execution.to_string())
        .bind(reason)
        .bind(now)
        .execute(pool)
        .await?;
    });
    Ok(())
}

/// The oldest [`BATCH`] requests. A row whose id does not parse (written by hand) is
/// removed.
pub async fn pending(db: &Database) -> sqlx::Result<Vec<CancelRequest>> {
    let rows = on_pool!(db, pool => {
        sqlx::query(
            "SELECT execution, reason, requested_at FROM cancel_requests \
             ORDER BY requested_at LIMIT $1",
        )
        .bind(BATCH)
        .fetch_all(pool)
        .await?
        .into_iter()
        .map(|row| {
            (
                row.get::<String, _>(0),
                row.get::<String, _>(1),
                row.get::<i64, _>(2),
            )
        })
        .collect::<Vec<_>>()
    });
    let mut requests = Vec::with_capacity(rows.len());
    for (id, reason, at) in rows {
        match id.parse() {
            Ok(execution) => requests.push(CancelRequest {
                execution,
                reason,
                requested_at: Timestamp(at),
            }),
            Err(_) => {
                tracing::warn!(id, "dropping a cancel request for a malformed execution id");
                remove_text(db, &id).await?;
            }
        }
    }
    Ok(requests)
}

/// Removes the request for `execution` (delivered, or its execution finished).
pub async fn remove(db: &Database, execution: ExecutionId) -> sqlx::Result<()> {
    remove_text(db, &execution.to_string()).await
}

async fn remove_text(db: &Database, execution: &str) -> sqlx::Result<()> {
    on_pool!(db, pool => {
        sqlx::query("DELETE FROM cancel_requests WHERE execution = $1")
            .bind(execution)
            .execute(pool)
            .await?;
    });
    Ok(())
}
