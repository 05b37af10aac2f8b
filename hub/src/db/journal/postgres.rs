//! The journal's statements on PostgreSQL. A group is written with a fixed number of
//! statements whatever its size: rows travel as bound arrays and are `UNNEST`ed server-side.
//! The touched executions are locked (`FOR UPDATE`, in id order so two hubs never deadlock)
//! before they are checked, which is what makes the owner check a fence.

use std::collections::HashMap;

use reactor_core::engine::{ExecutionId, ExecutionRecord, Fact, Timestamp};
use reactor_core::store::{Retention, StoreError, prefix_end};
use sqlx::postgres::PgPool;
use sqlx::{PgConnection, Row as _};

use super::plan::{self, Plan, Stored};
use super::{Bind, ExecutionFilter, Failure, PRUNE_CHUNK, age_cut, decode_fact, decode_record, io};

/// The database clock in Unix milliseconds: leases compare against one clock, not each
/// hub's.
pub(crate) const NOW_MS: &str = "(EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT";

pub(super) async fn commit(
    pool: &PgPool,
    group: &[Vec<plan::Encoded>],
    me: &str,
) -> Result<Vec<Result<(), StoreError>>, Failure> {
    if plan::creates_only(group) {
        let plan = plan::plan(group, HashMap::new(), me);
        if plan.updates.is_empty() && plan.meta_delete.is_empty() {
            match insert_new(pool, &plan).await {
                Ok(()) => return Ok(plan.outcomes),
                // An id that exists already: plan against the stored rows below, which
                // refuses that batch alone (`AlreadyExists`).
                Err(err) if is_unique_violation(&err) => {}
                // A refused statement wrote nothing; anything else (the connection lost
                // mid-statement) leaves the outcome unknown.
                Err(err @ sqlx::Error::Database(_)) => return Err(Failure::Rolledback(err)),
                Err(err) => return Err(Failure::Commit(err)),
            }
        }
    }
    let mut tx = pool.begin().await.map_err(Failure::Rolledback)?;
    let plan = async {
        let stored = load(&mut tx, plan::touched(group)).await?;
        let plan = plan::plan(group, stored, me);
        if !plan.is_empty() {
            apply(&mut tx, &plan).await?;
        }
        Ok::<_, sqlx::Error>(plan)
    }
    .await
    .map_err(Failure::Rolledback)?;
    tx.commit().await.map_err(Failure::Commit)?;
    Ok(plan.outcomes)
}

/// The group's new executions, journal facts and meta values in ONE statement. For a group
/// that only creates executions (the common case: an event's execution written once,
/// finished or with its first facts) it runs outside an explicit transaction: a single
/// statement is atomic and durable at its return, one round trip instead of five (BEGIN, the
/// locking load, two inserts, COMMIT). Otherwise it is part of the group's transaction.
async fn insert_new<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    plan: &Plan,
) -> Result<(), sqlx::Error> {
    if plan.inserts.is_empty() && plan.facts.is_empty() && plan.meta_put.is_empty() {
        return Ok(());
    }
    let rows: Vec<_> = plan
        .inserts
        .iter()
        .filter_map(|row| row.summary.as_ref().map(|summary| (row, summary)))
        .collect();
    sqlx::query(
        "WITH e AS (\
           INSERT INTO executions \
           (id, workflow, status, created_at, finished_at, device, owner, next_seq, record) \
           SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::int8[], $5::int8[], \
                                $6::text[], $7::text[], $8::int4[], $9::text[])), \
         j AS (\
           INSERT INTO journal (execution, seq, fact) \
           SELECT * FROM UNNEST($10::text[], $11::int4[], $12::text[])), \
         m AS (\
           INSERT INTO meta (key, value) SELECT * FROM UNNEST($13::text[], $14::bytea[]) \
           ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value) \
         SELECT 1",
    )
    .bind(rows.iter().map(|(r, _)| r.id.clone()).collect::<Vec<_>>())
    .bind(
        rows.iter()
            .map(|(_, s)| s.workflow.clone())
            .collect::<Vec<_>>(),
    )
    .bind(
        rows.iter()
            .map(|(_, s)| s.status.to_string())
            .collect::<Vec<_>>(),
    )
    .bind(rows.iter().map(|(_, s)| s.created_at).collect::<Vec<_>>())
    .bind(rows.iter().map(|(_, s)| s.finished_at).collect::<Vec<_>>())
    .bind(
        rows.iter()
            .map(|(_, s)| s.device.clone())
            .collect::<Vec<_>>(),
    )
    .bind(
        rows.iter()
            .map(|(r, _)| r.owner.clone())
            .collect::<Vec<_>>(),
    )
    .bind(
        rows.iter()
            .map(|(r, _)| seq32(r.next_seq))
            .collect::<Vec<_>>(),
    )
    .bind(rows.iter().map(|(_, s)| &*s.record).collect::<Vec<_>>())
    .bind(plan.facts.iter().map(|f| f.0.clone()).collect::<Vec<_>>())
    .bind(plan.facts.iter().map(|f| seq32(f.1)).collect::<Vec<_>>())
    .bind(plan.facts.iter().map(|f| &*f.2).collect::<Vec<_>>())
    .bind(
        plan.meta_put
            .iter()
            .map(|m| m.0.clone())
            .collect::<Vec<_>>(),
    )
    .bind(
        plan.meta_put
            .iter()
            .map(|m| m.1.clone())
            .collect::<Vec<_>>(),
    )
    .execute(executor)
    .await?;
    Ok(())
}

fn is_unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.code().as_deref() == Some("23505"))
}

async fn load(
    conn: &mut PgConnection,
    ids: Vec<String>,
) -> Result<HashMap<String, Stored>, sqlx::Error> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let rows = sqlx::query(
        "SELECT id, next_seq, owner, finished_at IS NOT NULL FROM executions \
         WHERE id = ANY($1) ORDER BY id FOR UPDATE",
    )
    .bind(ids)
    .fetch_all(&mut *conn)
    .await?;
    let mut stored = HashMap::with_capacity(rows.len());
    for row in rows {
        let next_seq: i32 = row.try_get(1)?;
        stored.insert(
            row.try_get::<String, _>(0)?,
            Stored {
                next_seq: u32::try_from(next_seq).unwrap_or(0),
                owner: row.try_get(2)?,
                finished: row.try_get(3)?,
            },
        );
    }
    Ok(stored)
}

fn seq32(seq: i64) -> i32 {
    i32::try_from(seq).unwrap_or(i32::MAX)
}

async fn apply(conn: &mut PgConnection, plan: &Plan) -> Result<(), sqlx::Error> {
    insert_new(&mut *conn, plan).await?;
    if !plan.updates.is_empty() {
        let rows = &plan.updates;
        let summary = |f: &dyn Fn(&plan::Summary) -> Option<String>| {
            rows.iter()
                .map(|r| r.summary.as_ref().and_then(f))
                .collect::<Vec<Option<String>>>()
        };
        sqlx::query(
            "UPDATE executions AS e SET \
               workflow = COALESCE(u.workflow, e.workflow), \
               status = COALESCE(u.status, e.status), \
               created_at = COALESCE(u.created_at, e.created_at), \
               finished_at = CASE WHEN u.record IS NULL THEN e.finished_at ELSE u.finished_at END, \
               record = COALESCE(u.record, e.record), \
               owner = u.owner, next_seq = u.next_seq \
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::int8[], $5::int8[], \
                         $6::text[], $7::int4[], $8::text[]) \
                  AS u(id, workflow, status, created_at, finished_at, owner, next_seq, record) \
             WHERE e.id = u.id",
        )
        .bind(rows.iter().map(|r| r.id.clone()).collect::<Vec<_>>())
        .bind(summary(&|s| Some(s.workflow.clone())))
        .bind(summary(&|s| Some(s.status.to_string())))
        .bind(
            rows.iter()
                .map(|r| r.summary.as_ref().map(|s| s.created_at))
                .collect::<Vec<_>>(),
        )
        .bind(
            rows.iter()
                .map(|r| r.summary.as_ref().and_then(|s| s.finished_at))
                .collect::<Vec<_>>(),
        )
        .bind(rows.iter().map(|r| r.owner.clone()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| seq32(r.next_seq)).collect::<Vec<_>>())
        .bind(
            rows.iter()
                .map(|r| r.summary.as_ref().map(|s| &*s.record))
                .collect::<Vec<_>>(),
        )
        .execute(&mut *conn)
        .await?;
    }
    if !plan.meta_delete.is_empty() {
        sqlx::query("DELETE FROM meta WHERE key = ANY($1)")
            .bind(plan.meta_delete.clone())
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// Claims this instance's unfinished executions and those whose owner's lease expired (or
/// whose owner is gone) with `FOR UPDATE SKIP LOCKED` — rows another hub is claiming or
/// writing are skipped, never claimed twice — then reads them with their journals.
pub(super) async fn claim_unfinished(
    pool: &PgPool,
    me: &str,
) -> Result<Vec<(ExecutionRecord, Vec<Fact>)>, StoreError> {
    let claimed = async {
        let mut tx = pool.begin().await?;
        let claim = format!(
            "WITH claimable AS ( \
               SELECT e.id FROM executions e LEFT JOIN hub_instances h ON h.id = e.owner \
               WHERE e.finished_at IS NULL \
                 AND (e.owner = $1 OR e.owner IS NULL OR h.id IS NULL OR h.lease_until < {NOW_MS}) \
               ORDER BY e.id FOR UPDATE OF e SKIP LOCKED) \
             UPDATE executions SET owner = $1 FROM claimable \
             WHERE executions.id = claimable.id RETURNING executions.id, executions.record"
        );
        let mut records: Vec<(String, String)> = sqlx::query_as(sqlx::AssertSqlSafe(claim))
            .bind(me)
            .fetch_all(&mut *tx)
            .await?;
        records.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let ids: Vec<String> = records.iter().map(|r| r.0.clone()).collect();
        let facts: Vec<(String, i32, String)> = sqlx::query_as(
            "SELECT execution, seq, fact FROM journal WHERE execution = ANY($1) \
             ORDER BY execution, seq",
        )
        .bind(ids)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok::<_, sqlx::Error>((records, facts))
    }
    .await
    .map_err(|err| io("claim unfinished executions", &err))?;
    let (records, facts) = claimed;
    let mut decoded = Vec::with_capacity(records.len());
    for (id, json) in records {
        let record = decode_record(&id, &json)?;
        decoded.push((id, record));
    }
    let mut journal = Vec::with_capacity(facts.len());
    for (id, seq, json) in facts {
        let fact = decode_fact(&id, i64::from(seq), &json)?;
        journal.push((id, fact));
    }
    Ok(super::with_journals(decoded, journal))
}

pub(super) async fn execution(
    pool: &PgPool,
    id: ExecutionId,
) -> Result<Option<ExecutionRecord>, StoreError> {
    let id = id.to_string();
    let json: Option<String> = sqlx::query_scalar("SELECT record FROM executions WHERE id = $1")
        .bind(&id)
        .fetch_optional(pool)
        .await
        .map_err(|err| io("read execution", &err))?;
    json.map(|json| decode_record(&id, &json)).transpose()
}

pub(super) async fn journal(pool: &PgPool, id: ExecutionId) -> Result<Vec<Fact>, StoreError> {
    let id = id.to_string();
    let rows: Vec<(i32, String)> =
        sqlx::query_as("SELECT seq, fact FROM journal WHERE execution = $1 ORDER BY seq")
            .bind(&id)
            .fetch_all(pool)
            .await
            .map_err(|err| io("read journal", &err))?;
    rows.iter()
        .map(|(seq, json)| decode_fact(&id, i64::from(*seq), json))
        .collect()
}

pub(super) async fn meta(pool: &PgPool, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
    sqlx::query_scalar("SELECT value FROM meta WHERE key = $1")
        .bind(key)
        .fetch_optional(pool)
        .await
        .map_err(|err| io("read meta", &err))
}

/// Meta rows by key prefix; `COLLATE "C"` compares bytes whatever the database's locale.
pub(super) async fn meta_prefix(
    pool: &PgPool,
    prefix: &str,
) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
    let query = match prefix_end(prefix) {
        Some(end) => sqlx::query_as(
            "SELECT key, value FROM meta WHERE key COLLATE \"C\" >= $1 \
             AND key COLLATE \"C\" < $2 ORDER BY key COLLATE \"C\"",
        )
        .bind(prefix)
        .bind(end),
        None => sqlx::query_as(
            "SELECT key, value FROM meta WHERE key COLLATE \"C\" >= $1 ORDER BY key COLLATE \"C\"",
        )
        .bind(prefix),
    };
    query
        .fetch_all(pool)
        .await
        .map_err(|err| io("scan meta", &err))
}

pub(super) async fn list(
    pool: &PgPool,
    filter: &ExecutionFilter,
) -> Result<Vec<ExecutionRecord>, StoreError> {
    let (sql, binds) = super::list_sql(filter, |n| format!("${n}"));
    let mut query = sqlx::query_as::<_, (String, String)>(sqlx::AssertSqlSafe(sql));
    for bind in binds {
        query = match bind {
            Bind::Text(text) => query.bind(text),
            Bind::Int(int) => query.bind(int),
        };
    }
    let rows = query
        .fetch_all(pool)
        .await
        .map_err(|err| io("list executions", &err))?;
    rows.iter()
        .map(|(id, json)| decode_record(id, json))
        .collect()
}

/// Removes finished executions beyond `retention`, [`PRUNE_CHUNK`] per transaction.
/// Autovacuum reclaims the space.
pub(super) async fn prune(
    pool: &PgPool,
    retention: Retention,
    now: Timestamp,
) -> Result<usize, StoreError> {
    prune_rows(pool, retention, now)
        .await
        .map_err(|err| io("prune", &err))
}

async fn prune_rows(
    pool: &PgPool,
    retention: Retention,
    now: Timestamp,
) -> Result<usize, sqlx::Error> {
    let keep = i64::try_from(retention.keep).unwrap_or(i64::MAX);
    let cut: Option<(i64, String)> = sqlx::query_as(
        "SELECT finished_at, id FROM executions WHERE finished_at IS NOT NULL \
         ORDER BY finished_at DESC, id DESC LIMIT 1 OFFSET $1",
    )
    .bind(keep)
    .fetch_optional(pool)
    .await?;
    let (cut_time, cut_id) = cut.unwrap_or((i64::MIN, String::new()));
    let old = age_cut(retention, now).unwrap_or(i64::MIN);
    let mut removed = 0;
    loop {
        let mut tx = pool.begin().await?;
        // Locked and re-checked in the transaction that deletes: a retry that reopens one
        // meanwhile (finished_at back to NULL) keeps it.
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM executions WHERE finished_at IS NOT NULL \
             AND ((finished_at, id) <= ($1, $2) OR finished_at < $3) \
             ORDER BY finished_at, id LIMIT $4 FOR UPDATE SKIP LOCKED",
        )
        .bind(cut_time)
        .bind(&cut_id)
        .bind(old)
        .bind(i64::try_from(PRUNE_CHUNK).unwrap_or(i64::MAX))
        .fetch_all(&mut *tx)
        .await?;
        if ids.is_empty() {
            tx.rollback().await?;
            break;
        }
        sqlx::query("DELETE FROM journal WHERE execution = ANY($1)")
            .bind(&ids)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM executions WHERE id = ANY($1)")
            .bind(&ids)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        removed += ids.len();
        if ids.len() < PRUNE_CHUNK {
            break;
        }
    }
    Ok(removed)
}
