//! The journal's statements on SQLite. Write transactions start with `BEGIN IMMEDIATE`: they
//! take the file's write lock up front, so a read-then-write transaction never fails on a
//! lock upgrade.
//!
//! Every statement is a round trip to the connection's worker thread, so a group is written
//! with few of them whatever its size: rows go in multi-row statements of a few fixed shapes
//! (the prepared-statement cache stays small), keys and small columns in one JSON array read
//! by `json_each`.

use std::collections::HashMap;

use reactor_core::engine::{ExecutionId, ExecutionRecord, Fact, Timestamp};
use reactor_core::store::{Retention, StoreError, prefix_end};
use sqlx::sqlite::SqlitePool;
use sqlx::{Row as _, Sqlite, SqliteConnection, Transaction};

use super::plan::{self, Plan, Stored};
use super::{Bind, ExecutionFilter, Failure, PRUNE_CHUNK, age_cut, decode_fact, decode_record, io};

async fn begin(pool: &SqlitePool) -> Result<Transaction<'static, Sqlite>, sqlx::Error> {
    pool.begin_with("BEGIN IMMEDIATE").await
}

pub(super) async fn commit(
    pool: &SqlitePool,
    group: &[Vec<plan::Encoded>],
    me: &str,
) -> Result<Vec<Result<(), StoreError>>, Failure> {
    let mut tx = begin(pool).await.map_err(Failure::Rolledback)?;
    let plan = async {
        let stored = load(&mut tx, &plan::touched(group)).await?;
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

async fn load(
    conn: &mut SqliteConnection,
    ids: &[String],
) -> Result<HashMap<String, Stored>, sqlx::Error> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let ids = json(ids);
    let rows = sqlx::query(
        "SELECT id, next_seq, owner, finished_at IS NOT NULL FROM executions \
         WHERE id IN (SELECT value FROM json_each(?1))",
    )
    .bind(ids)
    .fetch_all(&mut *conn)
    .await?;
    let mut stored = HashMap::with_capacity(rows.len());
    for row in rows {
        let next_seq: i64 = row.try_get(1)?;
        stored.insert(
            row.try_get::<String, _>(0)?,
            Stored {
                next_seq: u32::try_from(next_seq).unwrap_or(u32::MAX),
                owner: row.try_get(2)?,
                finished: row.try_get(3)?,
            },
        );
    }
    Ok(stored)
}

/// A JSON array for `json_each` (plain strings and numbers: it cannot fail).
fn json<T: serde::Serialize + ?Sized>(values: &T) -> String {
    serde_json::to_string(values).unwrap_or_else(|_| "[]".into())
}

/// Rows per multi-row INSERT, largest first: a few fixed shapes keep the prepared-statement
/// cache small while a big group needs few statements (each one is a round trip to the
/// connection's worker thread).
const INSERT_SHAPES: [usize; 4] = [64, 16, 4, 1];

/// Splits `len` rows into statement shapes from [`INSERT_SHAPES`].
fn shapes(mut len: usize) -> Vec<usize> {
    let mut out = Vec::new();
    for shape in INSERT_SHAPES {
        while len >= shape {
            out.push(shape);
            len -= shape;
        }
    }
    out
}

/// `INSERT INTO {head} VALUES (?, …), …` for `rows` rows of `columns` values.
fn insert_sql(head: &str, columns: usize, rows: usize) -> String {
    let row = format!("({})", vec!["?"; columns].join(", "));
    format!("INSERT INTO {head} VALUES {}", vec![row; rows].join(", "))
}

const EXECUTION_COLUMNS: &str =
    "executions (id, workflow, status, created_at, finished_at, device, owner, next_seq, record)";

/// Writes execution rows in multi-row statements: plain inserts for new executions; for
/// stored ones an upsert whose conflict path (always taken: the rows were loaded under the
/// write lock) updates everything but `device`, which comes from the start event and stays.
async fn put_executions(
    conn: &mut SqliteConnection,
    rows: &[(&plan::Row, &plan::Summary)],
    update: bool,
) -> Result<(), sqlx::Error> {
    let mut rest = rows;
    for shape in shapes(rows.len()) {
        let (chunk, tail) = rest.split_at(shape);
        rest = tail;
        let mut sql = insert_sql(EXECUTION_COLUMNS, 9, shape);
        if update {
            sql.push_str(
                " ON CONFLICT (id) DO UPDATE SET workflow = excluded.workflow, \
                 status = excluded.status, created_at = excluded.created_at, \
                 finished_at = excluded.finished_at, owner = excluded.owner, \
                 next_seq = excluded.next_seq, record = excluded.record",
            );
        }
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (row, summary) in chunk {
            query = query
                .bind(&row.id)
                .bind(&summary.workflow)
                .bind(summary.status)
                .bind(summary.created_at)
                .bind(summary.finished_at)
                .bind(&summary.device)
                .bind(&row.owner)
                .bind(row.next_seq)
                .bind(&summary.record);
        }
        query.execute(&mut *conn).await?;
    }
    Ok(())
}

/// The rows that carry a new summary, with it.
fn with_summary(rows: &[plan::Row]) -> Vec<(&plan::Row, &plan::Summary)> {
    rows.iter()
        .filter_map(|row| row.summary.as_ref().map(|summary| (row, summary)))
        .collect()
}

async fn apply(conn: &mut SqliteConnection, plan: &Plan) -> Result<(), sqlx::Error> {
    put_executions(conn, &with_summary(&plan.inserts), false).await?;
    put_executions(conn, &with_summary(&plan.updates), true).await?;
    // Stored executions that only got facts: their owner and next seq.
    let appended: Vec<(&str, i64, &str)> = plan
        .updates
        .iter()
        .filter(|row| row.summary.is_none())
        .map(|row| (row.id.as_str(), row.next_seq, row.owner.as_str()))
        .collect();
    if !appended.is_empty() {
        sqlx::query(
            "UPDATE executions SET next_seq = u.value ->> 1, owner = u.value ->> 2 \
             FROM json_each(?1) AS u WHERE executions.id = u.value ->> 0",
        )
        .bind(json(&appended))
        .execute(&mut *conn)
        .await?;
    }
    let mut rest = plan.facts.as_slice();
    for shape in shapes(plan.facts.len()) {
        let (chunk, tail) = rest.split_at(shape);
        rest = tail;
        let sql = insert_sql("journal (execution, seq, fact)", 3, shape);
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (id, seq, fact) in chunk {
            query = query.bind(id).bind(seq).bind(fact);
        }
        query.execute(&mut *conn).await?;
    }
    let mut rest = plan.meta_put.as_slice();
    for shape in shapes(plan.meta_put.len()) {
        let (chunk, tail) = rest.split_at(shape);
        rest = tail;
        let mut sql = insert_sql("meta (key, value)", 2, shape);
        sql.push_str(" ON CONFLICT (key) DO UPDATE SET value = excluded.value");
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (key, value) in chunk {
            query = query.bind(key).bind(value);
        }
        query.execute(&mut *conn).await?;
    }
    if !plan.meta_delete.is_empty() {
        sqlx::query("DELETE FROM meta WHERE key IN (SELECT value FROM json_each(?1))")
            .bind(json(&plan.meta_delete))
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// Claims this instance's unfinished executions and those of instances whose lease expired
/// (or that are gone), then reads them with their journals — one write transaction, so two
/// processes on one file never both claim an execution.
pub(super) async fn claim_unfinished(
    pool: &SqlitePool,
    me: &str,
) -> Result<Vec<(ExecutionRecord, Vec<Fact>)>, StoreError> {
    let claimed = async {
        let mut tx = begin(pool).await?;
        sqlx::query(
            "UPDATE executions SET owner = ?1 WHERE finished_at IS NULL \
             AND (owner IS NULL OR (owner <> ?1 AND NOT EXISTS \
                 (SELECT 1 FROM hub_instances h WHERE h.id = executions.owner AND h.lease_until >= ?2)))",
        )
        .bind(me)
        .bind(Timestamp::now().millis())
        .execute(&mut *tx)
        .await?;
        let records = sqlx::query(
            "SELECT id, record FROM executions WHERE finished_at IS NULL AND owner = ?1 ORDER BY id",
        )
        .bind(me)
        .fetch_all(&mut *tx)
        .await?;
        let facts = sqlx::query(
            "SELECT j.execution, j.seq, j.fact FROM journal j JOIN executions e ON e.id = j.execution \
             WHERE e.finished_at IS NULL AND e.owner = ?1 ORDER BY j.execution, j.seq",
        )
        .bind(me)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok::<_, sqlx::Error>((records, facts))
    }
    .await
    .map_err(|err| io("claim unfinished executions", &err))?;
    let (records, facts) = claimed;
    let mut decoded = Vec::with_capacity(records.len());
    for row in records {
        let id: String = row.try_get(0).map_err(|e| io("read", &e))?;
        let json: String = row.try_get(1).map_err(|e| io("read", &e))?;
        let record = decode_record(&id, &json)?;
        decoded.push((id, record));
    }
    let mut journal = Vec::with_capacity(facts.len());
    for row in facts {
        let id: String = row.try_get(0).map_err(|e| io("read", &e))?;
        let seq: i64 = row.try_get(1).map_err(|e| io("read", &e))?;
        let json: String = row.try_get(2).map_err(|e| io("read", &e))?;
        let fact = decode_fact(&id, seq, &json)?;
        journal.push((id, fact));
    }
    Ok(super::with_journals(decoded, journal))
}

pub(super) async fn execution(
    pool: &SqlitePool,
    id: ExecutionId,
) -> Result<Option<ExecutionRecord>, StoreError> {
    let id = id.to_string();
    let json: Option<String> = sqlx::query_scalar("SELECT record FROM executions WHERE id = ?1")
        .bind(&id)
        .fetch_optional(pool)
        .await
        .map_err(|err| io("read execution", &err))?;
    json.map(|json| decode_record(&id, &json)).transpose()
}

pub(super) async fn journal(pool: &SqlitePool, id: ExecutionId) -> Result<Vec<Fact>, StoreError> {
    let id = id.to_string();
    let rows: Vec<(i64, String)> =
        sqlx::query_as("SELECT seq, fact FROM journal WHERE execution = ?1 ORDER BY seq")
            .bind(&id)
            .fetch_all(pool)
            .await
            .map_err(|err| io("read journal", &err))?;
    rows.iter()
        .map(|(seq, json)| decode_fact(&id, *seq, json))
        .collect()
}

pub(super) async fn meta(pool: &SqlitePool, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
    sqlx::query_scalar("SELECT value FROM meta WHERE key = ?1")
        .bind(key)
        .fetch_optional(pool)
        .await
        .map_err(|err| io("read meta", &err))
}

/// Meta rows by key prefix (SQLite compares text bytewise: the range is exact).
pub(super) async fn meta_prefix(
    pool: &SqlitePool,
    prefix: &str,
) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
    let query = match prefix_end(prefix) {
        Some(end) => {
            sqlx::query_as("SELECT key, value FROM meta WHERE key >= ?1 AND key < ?2 ORDER BY key")
                .bind(prefix)
                .bind(end)
        }
        None => {
            sqlx::query_as("SELECT key, value FROM meta WHERE key >= ?1 ORDER BY key").bind(prefix)
        }
    };
    query
        .fetch_all(pool)
        .await
        .map_err(|err| io("scan meta", &err))
}

pub(super) async fn list(
    pool: &SqlitePool,
    filter: &ExecutionFilter,
) -> Result<Vec<ExecutionRecord>, StoreError> {
    let (sql, binds) = super::list_sql(filter, |n| format!("?{n}"));
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

/// Removes finished executions beyond `retention`, [`PRUNE_CHUNK`] per transaction, then
/// gives the freed pages back to the file system (`incremental_vacuum`, then a truncating
/// WAL checkpoint) so the files stay bounded under a steady retention.
pub(super) async fn prune(
    pool: &SqlitePool,
    retention: Retention,
    now: Timestamp,
) -> Result<usize, StoreError> {
    let removed = prune_rows(pool, retention, now)
        .await
        .map_err(|err| io("prune", &err))?;
    if removed > 0 {
        sqlx::query("PRAGMA incremental_vacuum")
            .execute(pool)
            .await
            .map_err(|err| io("incremental vacuum", &err))?;
        // The deletes went through the WAL; with the checkpoints off the writer's path
        // (`checkpoint.rs`) nothing else would give its space back: copy it into the file
        // and truncate it, once per prune (writers wait for that one checkpoint).
        sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(pool)
            .await
            .map_err(|err| io("checkpoint", &err))?;
    }
    Ok(removed)
}

async fn prune_rows(
    pool: &SqlitePool,
    retention: Retention,
    now: Timestamp,
) -> Result<usize, sqlx::Error> {
    let keep = i64::try_from(retention.keep).unwrap_or(i64::MAX);
    // The newest finished execution beyond `keep`: it and everything older go.
    let cut: Option<(i64, String)> = sqlx::query_as(
        "SELECT finished_at, id FROM executions WHERE finished_at IS NOT NULL \
         ORDER BY finished_at DESC, id DESC LIMIT 1 OFFSET ?1",
    )
    .bind(keep)
    .fetch_optional(pool)
    .await?;
    let (cut_time, cut_id) = cut.unwrap_or((i64::MIN, String::new()));
    let old = age_cut(retention, now).unwrap_or(i64::MIN);
    let mut removed = 0;
    loop {
        let mut tx = begin(pool).await?;
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM executions WHERE finished_at IS NOT NULL \
             AND ((finished_at, id) <= (?1, ?2) OR finished_at < ?3) \
             ORDER BY finished_at, id LIMIT ?4",
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
        let ids_json = json(&ids);
        sqlx::query("DELETE FROM journal WHERE execution IN (SELECT value FROM json_each(?1))")
            .bind(&ids_json)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM executions WHERE id IN (SELECT value FROM json_each(?1))")
            .bind(&ids_json)
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

#[cfg(test)]
mod tests {
    use super::{insert_sql, shapes};

    #[test]
    fn groups_are_cut_into_few_statement_shapes() {
        assert_eq!(shapes(0), Vec::<usize>::new());
        assert_eq!(shapes(3), vec![1, 1, 1]);
        assert_eq!(shapes(150), vec![64, 64, 16, 4, 1, 1]);
        assert_eq!(shapes(150).iter().sum::<usize>(), 150);
        assert_eq!(
            insert_sql("t (a, b)", 2, 2),
            "INSERT INTO t (a, b) VALUES (?, ?), (?, ?)"
        );
    }
}
