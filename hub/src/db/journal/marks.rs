//! Pruning of de-duplication marks: the `dedupe/{workflow}/{key}` meta rows written with each
//! execution a broker or database trigger submits ([`Runtime::submit_once`]).
//!
//! A trigger deletes the marks of a batch as soon as the source took its acknowledgement
//! (Kafka commit, JetStream ack, `XACK`, stored binlog or poll position; PostgreSQL CDC 15
//! minutes after the slot advance). A mark outlives that only when the hub died between the
//! acknowledgement and the delete — the delete is not waited for — or when its workflow was
//! removed while a batch was in flight. Those leftovers would pile up forever: every prune
//! also removes marks recorded more than [`MARK_MAX_AGE`] ago.
//!
//! Why 7 days: a mark must live as long as its message can come again, i.e. as long as the
//! message can sit recorded but unacknowledged. Every trigger acknowledges within seconds of
//! recording, so that window is the longest hub outage (a hub down for a week comes back to
//! redeliveries of what it had recorded) bounded by what the source still holds: Kafka's
//! default log retention is 7 days, JetStream and Redis streams keep unacknowledged
//! messages until acknowledged, replication slots and binlogs until read. 7 days also
//! matches the default retention of finished executions, so a mark never outlives the
//! execution it names by default. A mark whose value does not decode is kept and reported
//! (the submission it guards fails loudly instead of running twice).
//!
//! Pruning examines every mark (their age is inside the value), so it runs at most every
//! [`MARK_PRUNE_EVERY`], not with every prune of executions.
//!
//! [`Runtime::submit_once`]: reactor_core::engine::Runtime::submit_once

use std::time::Duration;

use reactor_core::engine::{MarkRecord, Timestamp};
use sqlx::{PgPool, SqlitePool};

use crate::db::Database;

/// Marks recorded longer ago than this are pruned (see the module docs).
pub const MARK_MAX_AGE: Duration = Duration::from_secs(7 * 86_400);

/// Marks are examined for age at most this often (a prune comes every 1,024 executions by
/// default, and each examines every mark: with a trigger keeping many marks, doing it every
/// time made pruning quadratic). A week's window does not need a finer grain.
pub const MARK_PRUNE_EVERY: Duration = Duration::from_secs(10 * 60);

/// Marks examined per round trip.
const CHUNK: i64 = 1000;

/// The first key after every `dedupe/…` key (`0` follows `/`).
const PREFIX: &str = "dedupe/";
const PAST_PREFIX: &str = "dedupe0";

/// Deletes the marks recorded before `now − max_age`; returns how many went.
pub async fn prune_marks(
    db: &Database,
    now: Timestamp,
    max_age: Duration,
) -> Result<usize, sqlx::Error> {
    let cut = now
        .millis()
        .saturating_sub(i64::try_from(max_age.as_millis()).unwrap_or(i64::MAX));
    let mut after = PREFIX.to_string();
    let mut removed = 0;
    loop {
        let rows = match db {
            Database::Sqlite(pool) => sqlite_page(pool, &after).await?,
            Database::Postgres(pool) => postgres_page(pool, &after).await?,
        };
        let Some((last, _)) = rows.last() else { break };
        after = last.clone();
        let full = rows.len() as i64 == CHUNK;
        let old: Vec<String> = rows
            .into_iter()
            .filter_map(
                |(key, value)| match serde_json::from_slice::<MarkRecord>(&value) {
                    Ok(mark) => (mark.at.millis() < cut).then_some(key),
                    Err(error) => {
                        tracing::warn!(key, %error, "an unreadable de-duplication mark is kept");
                        None
                    }
                },
            )
            .collect();
        if !old.is_empty() {
            removed += match db {
                Database::Sqlite(pool) => sqlite_delete(pool, &old).await?,
                Database::Postgres(pool) => postgres_delete(pool, &old).await?,
            };
        }
        if !full {
            break;
        }
    }
    if removed > 0 {
        tracing::info!(removed, "old de-duplication marks pruned");
    }
    Ok(removed)
}

async fn sqlite_page(
    pool: &SqlitePool,
    after: &str,
) -> Result<Vec<(String, Vec<u8>)>, sqlx::Error> {
    sqlx::query_as("SELECT key, value FROM meta WHERE key > ?1 AND key < ?2 ORDER BY key LIMIT ?3")
        .bind(after)
        .bind(PAST_PREFIX)
        .bind(CHUNK)
        .fetch_all(pool)
        .await
}

async fn postgres_page(pool: &PgPool, after: &str) -> Result<Vec<(String, Vec<u8>)>, sqlx::Error> {
    // COLLATE "C": byte order, so the prefix range is exact whatever the database's locale.
    sqlx::query_as(
        "SELECT key, value FROM meta WHERE key COLLATE \"C\" > $1 AND key COLLATE \"C\" < $2 \
         ORDER BY key COLLATE \"C\" LIMIT $3",
    )
    .bind(after)
    .bind(PAST_PREFIX)
    .bind(CHUNK)
    .fetch_all(pool)
    .await
}

async fn sqlite_delete(pool: &SqlitePool, keys: &[String]) -> Result<usize, sqlx::Error> {
    let keys = serde_json::to_string(keys).unwrap_or_else(|_| "[]".into());
    let done = sqlx::query("DELETE FROM meta WHERE key IN (SELECT value FROM json_each(?1))")
        .bind(keys)
        .execute(pool)
        .await?;
    Ok(usize::try_from(done.rows_affected()).unwrap_or(usize::MAX))
}

async fn postgres_delete(pool: &PgPool, keys: &[String]) -> Result<usize, sqlx::Error> {
    let done = sqlx::query("DELETE FROM meta WHERE key = ANY($1)")
        .bind(keys)
        .execute(pool)
        .await?;
    Ok(usize::try_from(done.rows_affected()).unwrap_or(usize::MAX))
}
