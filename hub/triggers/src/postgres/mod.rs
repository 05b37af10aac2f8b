//! The `postgres` trigger: change capture from a logical replication slot (`mode: cdc`,
//! the default) or polling by a monotonic column (`mode: poll`).
//!
//! **CDC** reads a logical slot with the `test_decoding` plugin (it ships with the server:
//! no extension to install, and its text output carries column names and types) through
//! plain SQL: `pg_logical_slot_peek_changes` returns whole transactions (up to about 500
//! changes per read), every row change of the trigger's table and operations is submitted
//! with the de-duplication key `pg/{slot}/{lsn}/{n}` (`n` numbers changes sharing one WAL
//! record, e.g. multi-row inserts), and only once all are recorded is the slot advanced
//! (`pg_replication_slot_advance` to the last LSN read). A hub that dies in between
//! leaves the slot where it was: the changes come again and start nothing new. The server
//! makes a slot's advance durable only at its next checkpoint, so before advancing, the
//! trigger stores the LSN it advances to (`cdc/{workflow}/postgres/{slot}/recorded`):
//! transactions committed at or before it, handed out again by a server that lost the
//! advance, are skipped, and the marks are forgotten right after the advance (see
//! docs/triggers.md).
//!
//! Reading a mark per change is a store round trip each; the slot hands out transactions in
//! commit order, so the trigger stores the highest commit LSN it ever submitted
//! (`cdc/{workflow}/postgres/{slot}/submitted`, written before the batch that raises it is
//! submitted) and submits the changes of later-committed transactions as first deliveries
//! ([`DedupeMark::first`]: the mark is written, not read first). Only a replay — changes at or
//! below that LSN — reads marks. (A change's own LSN would not do: a transaction that
//! commits later can hold changes with lower LSNs than one that committed before it.)
//!
//! The slot is created when missing, named `reactor_{hash of workflow and table}` (or
//! [`PostgresTrigger::with_slot`]). Needs `wal_level = logical`, a user with the REPLICATION
//! attribute (or superuser), and `REPLICA IDENTITY FULL` on the table for `old` values of
//! updates and deletes (otherwise `old` holds the key columns, or is absent). A slot keeps WAL
//! until it is read: drop the slot of a removed workflow (`SELECT
//! pg_drop_replication_slot('…')`).
//!
//! Event: type `postgres`, source `reactor:postgres/{schema}.{table}`, `data` =
//! `{operation, table, new, old}` (rows as `{column: value}`; numbers, booleans and JSON
//! columns typed, the rest as PostgreSQL's text), `meta` = `{mode, schema, table, lsn, xid,
//! slot}`.
//!
//! **Poll** runs `SELECT … WHERE column > last ORDER BY column LIMIT 500` every `every`;
//! each row is submitted with the key `pgpoll/{table}/{value}`, then the last value is stored
//! (in the runtime's store). It starts at the table's current maximum (only rows that appear
//! later). The column must grow with every insert or update to report (a sequence, or a
//! version column set from a sequence); rows sharing a value with one already passed are
//! not seen. Event `data` = `{operation: "upsert", table, new, old: null}` (polling cannot
//! tell inserts from updates and does not see deletes); `meta` = `{mode, table, column,
//! position}`.
//!
//! Both modes run only while this hub leads (see [`crate::Leader`]): one hub at a time reads
//! the slot or polls.

pub mod decoding;

use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::StreamExt as _;
use reactor_core::engine::{DedupeMark, Event, Submission};
use reactor_core::flow::{self, CaptureMode, PollSettings};
use reactor_core::trigger::{Trigger, TriggerContext, TriggerError};
use serde_json::{Value, json};
use sqlx::postgres::{PgConnectOptions, PgConnection};
// Dynamic SQL only ever holds identifiers checked by `sql::check_identifier`, quoted.
use sqlx::{AssertSqlSafe, ConnectOptions as _, Connection as _};
use tracing::{debug, info, warn};

use self::decoding::{Change, Line};
use crate::connections::{Connections, Resolved};
use crate::retry::{self, Backoff, Failure, Leader, handled};
use crate::sql::{self, TableName};

/// Changes asked for per read (whole transactions are returned, so possibly more). Large,
/// because every read decodes the WAL again from the slot's `restart_lsn`, which trails
/// the read position by up to one standby snapshot of the server's (logged every 15 s
/// under load, at checkpoints, or when a slot is created): the fewer the reads, the less
/// WAL is decoded more than once. See docs/triggers.md. Fewer when rows are large: see
/// [`peek_size`].
pub const PEEK: i32 = 10_000;
/// A read is sized to hold about this many bytes of decoded changes.
const PEEK_BYTES: usize = 16 * 1024 * 1024;
/// The fewest changes asked for per read.
const PEEK_MIN: i32 = 100;
/// Changes of one read being recorded at a time (bounds the memory of a large read).
const SUBMITTING: usize = 512;
/// Rows per poll query.
const POLL_LIMIT: i64 = 500;
/// How often an idle slot is read again.
const IDLE: Duration = Duration::from_millis(200);
const LAG_EVERY: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A running `postgres` trigger.
#[derive(Debug)]
pub struct PostgresTrigger {
    table: TableName,
    mode: CaptureMode,
    operations: Vec<&'static str>,
    poll: Option<PollSettings>,
    connection: Resolved,
    options: PgConnectOptions,
    leader: Leader,
    slot: Option<String>,
    stop_before_ack: Option<u64>,
}

impl PostgresTrigger {
    pub fn new(
        spec: &flow::SqlTrigger,
        connections: &Connections,
    ) -> Result<PostgresTrigger, TriggerError> {
        let connection =
            connections.resolve(&spec.connection, "postgres", &["postgres", "postgresql"])?;
        let options: PgConnectOptions = connection.address.parse().map_err(|e| {
            TriggerError::Settings(format!("postgres url {}: {e}", connection.display))
        })?;
        let table = TableName::parse(&spec.table)?;
        let operations: Vec<&'static str> = spec
            .operations
            .iter()
            .map(|o| sql::operation_name(*o))
            .collect();
        let poll = match spec.mode {
            CaptureMode::Poll => {
                if !operations.iter().any(|o| *o != "delete") {
                    return Err(TriggerError::Settings(
                        "mode poll sees new and changed rows, not deletes: use mode cdc for deletes".into(),
                    ));
                }
                Some(sql::poll_settings(spec.poll.as_ref())?)
            }
            CaptureMode::Cdc => None,
        };
        Ok(PostgresTrigger {
            table,
            mode: spec.mode,
            operations,
            poll,
            options: options.log_statements(tracing::log::LevelFilter::Trace),
            connection,
            leader: connections.leader(),
            slot: None,
            stop_before_ack: None,
        })
    }

    /// Uses slot `name` instead of the derived one (CDC).
    pub fn with_slot(mut self, name: impl Into<String>) -> PostgresTrigger {
        self.slot = Some(name.into());
        self
    }

    /// Crash tests: once `recorded` changes are recorded, stop with an error instead of
    /// advancing the slot (or the poll position).
    pub fn stop_before_ack(mut self, recorded: u64) -> PostgresTrigger {
        self.stop_before_ack = Some(recorded);
        self
    }

    /// The slot a CDC trigger of `workflow` on `table` uses unless told otherwise.
    pub fn slot_name(workflow: &str, table: &str) -> String {
        format!(
            "reactor_{:016x}",
            sql::fnv(format!("{workflow}\n{table}").as_bytes())
        )
    }

    /// Connects as `application_name` `reactor/{workflow}/{table}` (visible in
    /// `pg_stat_activity`).
    async fn connect(&self, workflow: &str) -> Result<PgConnection, Failure> {
        let mut name = format!("reactor/{workflow}/{}", self.table.table);
        name.truncate(63);
        let options = self.options.clone().application_name(&name);
        tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(&options))
            .await
            .map_err(|_| {
                Failure::Retry(format!(
                    "postgres connect {}: timed out",
                    self.connection.display
                ))
            })?
            .map_err(|e| {
                Failure::Retry(format!("postgres connect {}: {e}", self.connection.display))
            })
    }

    fn qualified(&self) -> (String, String) {
        (
            self.table.schema.clone().unwrap_or_else(|| "public".into()),
            self.table.table.clone(),
        )
    }
}

#[async_trait]
impl Trigger for PostgresTrigger {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    async fn run(self: Box<Self>, context: TriggerContext) -> Result<(), TriggerError> {
        let mut backoff = Backoff::default();
        let mut leader = self.leader.clone();
        let mut recorded = 0u64;
        loop {
            if !leader.wait_leading(&context.cancel).await {
                return Ok(());
            }
            let session = async {
                let mut conn = self.connect(&context.workflow).await?;
                match self.mode {
                    CaptureMode::Cdc => {
                        self.cdc(&context, &mut conn, &mut backoff, &mut recorded)
                            .await
                    }
                    CaptureMode::Poll => {
                        self.poll(&context, &mut conn, &mut backoff, &mut recorded)
                            .await
                    }
                }
            };
            let outcome = tokio::select! {
                biased;
                () = context.cancel.cancelled() => return Ok(()),
                () = leader.lost() => {
                    info!(workflow = %context.workflow, "no longer leading: postgres trigger paused");
                    continue;
                }
                outcome = session => outcome,
            };
            match outcome {
                Ok(()) => return Ok(()),
                Err(Failure::Fatal(error)) => return Err(error),
                Err(Failure::Retry(message)) => {
                    if !retry::failed(&context, &mut backoff, "postgres", &message).await {
                        return Ok(());
                    }
                }
            }
        }
    }
}

fn db_error(what: &str) -> impl Fn(sqlx::Error) -> Failure + '_ {
    move |error| Failure::Retry(format!("postgres {what}: {error}"))
}

impl PostgresTrigger {
    async fn cdc(
        &self,
        context: &TriggerContext,
        conn: &mut PgConnection,
        backoff: &mut Backoff,
        recorded: &mut u64,
    ) -> Result<(), Failure> {
        let slot = self
            .slot
            .clone()
            .unwrap_or_else(|| Self::slot_name(&context.workflow, &self.table.quoted('"')));
        let existing: Option<(String,)> =
            sqlx::query_as("SELECT plugin::text FROM pg_replication_slots WHERE slot_name = $1")
                .bind(&slot)
                .fetch_optional(&mut *conn)
                .await
                .map_err(db_error("slot lookup"))?;
        match existing {
            Some((plugin,)) if plugin != "test_decoding" => {
                return Err(Failure::Fatal(TriggerError::Settings(format!(
                    "replication slot {slot} uses {plugin}, not test_decoding"
                ))));
            }
            Some(_) => {}
            None => {
                sqlx::query("SELECT pg_create_logical_replication_slot($1, 'test_decoding')")
                    .bind(&slot)
                    .execute(&mut *conn)
                    .await
                    .map_err(|e| match &e {
                        sqlx::Error::Database(db) if db.code().as_deref() == Some("55000") => {
                            Failure::Fatal(TriggerError::Settings(format!(
                                "postgres change capture needs wal_level = logical: {e}"
                            )))
                        }
                        _ => Failure::Retry(format!("postgres create slot {slot}: {e}")),
                    })?;
                info!(workflow = %context.workflow, slot, "postgres replication slot created");
            }
        }
        info!(workflow = %context.workflow, postgres = %self.connection.display, slot,
            table = %self.table.quoted('"'), "postgres change capture reading");
        backoff.reset();
        context.stats.record_success();
        let (schema, table) = self.qualified();
        let mut acknowledged = sql::HighWater::load(
            &context.runtime,
            format!("cdc/{}/postgres/{slot}/recorded", context.workflow),
        )
        .await?;
        let mut submitted = sql::HighWater::load(
            &context.runtime,
            format!("cdc/{}/postgres/{slot}/submitted", context.workflow),
        )
        .await?;
        // Positions past the server's own are another server's (the database was moved to a
        // new cluster, whose LSNs start again): they would skip its changes.
        let (current,): (String,) = sqlx::query_as("SELECT pg_current_wal_lsn()::text")
            .fetch_one(&mut *conn)
            .await
            .map_err(db_error("current WAL position"))?;
        let current = lsn_number(&current).unwrap_or(u64::MAX);
        if acknowledged.is_past(current) || submitted.is_past(current) {
            warn!(workflow = %context.workflow, slot, "stored change-capture positions are past \
                the server's WAL (another server?): they are dropped");
            acknowledged.forget();
            submitted.forget();
        }
        let mut next_lag = Instant::now();
        let mut peek = PEEK;
        loop {
            if Instant::now() >= next_lag {
                next_lag = Instant::now() + LAG_EVERY;
                let lag: Option<(Option<i64>,)> = sqlx::query_as(
                    "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint \
                     FROM pg_replication_slots WHERE slot_name = $1",
                )
                .bind(&slot)
                .fetch_optional(&mut *conn)
                .await
                .map_err(db_error("lag"))?;
                if let Some((Some(bytes),)) = lag {
                    context.stats.set_lag(u64::try_from(bytes).unwrap_or(0));
                }
            }
            let rows: Vec<(String, Option<String>, String)> = sqlx::query_as(
                "SELECT lsn::text, xid::text, data FROM pg_logical_slot_peek_changes($1, NULL, $2, \
                 'include-xids', '1', 'skip-empty-xacts', '1')",
            )
            .bind(&slot)
            .bind(peek)
            .fetch_all(&mut *conn)
            .await
            .map_err(db_error("peek changes"))?;
            peek = peek_size(&rows);
            let Some(last_lsn) = rows.last().map(|row| row.0.clone()) else {
                if !retry::pause(&context.cancel, IDLE).await {
                    return Ok(());
                }
                continue;
            };
            let mut changes = read_changes(&rows, &slot, (&schema, &table), &self.operations)?;
            // A slot whose advance the server lost (it becomes durable only at a checkpoint)
            // hands out transactions recorded and acknowledged before: they start nothing.
            let acknowledged_at = acknowledged.get().unwrap_or(0);
            changes.retain(|change| change.commit == 0 || change.commit > acknowledged_at);
            // Transactions committed after every one this slot ever submitted are first
            // deliveries (commit order is the slot's order).
            let high = changes.iter().map(|c| c.commit).max().unwrap_or(0);
            // Unknown: this batch looks every mark up.
            let submitted_before = submitted.get().unwrap_or(u64::MAX);
            submitted.raise(&context.runtime, high).await?;
            // By index: a closure over `&Pending` trips the `Send` check of the trait's future.
            let submissions = (0..changes.len()).map(|n| {
                let pending = &changes[n];
                let mut mark = DedupeMark::new(
                    pending.key.clone(),
                    json!({"slot": slot, "lsn": pending.lsn}),
                );
                if pending.commit > submitted_before {
                    mark = mark.first();
                }
                let event = cdc_event(&pending.change, pending.lsn, pending.xid, &slot);
                async move { context.submit_once(event, mark).await }
            });
            let results: Vec<_> = futures::stream::iter(submissions)
                .buffered(SUBMITTING)
                .collect()
                .await;
            let mut complete = true;
            let mut keys = Vec::with_capacity(changes.len());
            for (Pending { key, .. }, result) in changes.iter().zip(results) {
                if handled(&context.workflow, key, &result) {
                    if matches!(result, Ok(Submission::Accepted(_))) {
                        *recorded += 1;
                    }
                    keys.push(key.clone());
                } else {
                    complete = false;
                }
            }
            if !complete {
                return Err(Failure::Retry(
                    "postgres: a change was not recorded; the slot stays".into(),
                ));
            }
            if let Some(limit) = self.stop_before_ack
                && *recorded >= limit
            {
                return Err(Failure::Fatal(TriggerError::Source(format!(
                    "stopped before advancing the slot past {} recorded changes (crash test)",
                    keys.len()
                ))));
            }
            // Everything up to the batch's last commit is recorded: stored before the slot
            // moves, so the marks can go at once (a crash of the server that loses the advance
            // replays transactions this position skips).
            acknowledged
                .raise(&context.runtime, lsn_number(&last_lsn).unwrap_or(0))
                .await?;
            // The last row is a COMMIT whose LSN is the end of its commit record: advancing
            // the slot there skips every transaction of the batch, and nothing after it.
            // `pg_replication_slot_advance` (PostgreSQL 11+) moves the slot without running
            // the output plugin over the batch a second time.
            sqlx::query("SELECT end_lsn::text FROM pg_replication_slot_advance($1, $2::pg_lsn)")
                .bind(&slot)
                .bind(&last_lsn)
                .execute(&mut *conn)
                .await
                .map_err(db_error("advance slot"))?;
            debug!(slot, lsn = %last_lsn, changes = keys.len(), "postgres slot advanced");
            retry::forget_soon(context, keys);
        }
    }

    async fn poll(
        &self,
        context: &TriggerContext,
        conn: &mut PgConnection,
        backoff: &mut Backoff,
        recorded: &mut u64,
    ) -> Result<(), Failure> {
        let poll = self.poll.as_ref().ok_or_else(|| {
            Failure::Fatal(TriggerError::Settings("poll settings missing".into()))
        })?;
        let table = self.table.quoted('"');
        let column = format!("\"{}\"", poll.column);
        let position_key = format!(
            "poll/{}/postgres/{}/{}",
            context.workflow, table, poll.column
        );
        let mut position = sql::load_position(&context.runtime, &position_key)
            .await
            .map_err(Failure::Retry)?;
        if position.is_none() {
            // First run: start after what is there now.
            let (max,): (Option<String>,) = sqlx::query_as(AssertSqlSafe(format!(
                "SELECT to_jsonb(max(t.{column}))::text FROM {table} t"
            )))
            .fetch_one(&mut *conn)
            .await
            .map_err(db_error("poll start"))?;
            let start = max
                .map(|m| serde_json::from_str(&m).unwrap_or(Value::Null))
                .unwrap_or(Value::Null);
            sql::save_position(&context.runtime, &position_key, &start)
                .await
                .map_err(Failure::Retry)?;
            position = Some(start);
        }
        let mut position = position.unwrap_or(Value::Null);
        let query = format!(
            "SELECT row_to_json(t)::text, to_jsonb(t.{column})::text FROM {table} t \
             WHERE $1::jsonb IS NULL OR t.{column} > (jsonb_populate_record(NULL::{table}, \
             jsonb_build_object('{col}', $1::jsonb))).{column} ORDER BY t.{column} LIMIT {POLL_LIMIT}",
            col = poll.column
        );
        info!(workflow = %context.workflow, postgres = %self.connection.display, table, column = %poll.column,
            "postgres poll running");
        backoff.reset();
        context.stats.record_success();
        let prefix = format!("pgpoll/{table}");
        loop {
            let bound = (!position.is_null()).then(|| position.to_string());
            let rows: Vec<(String, String)> = sqlx::query_as(AssertSqlSafe(query.as_str()))
                .bind(bound)
                .fetch_all(&mut *conn)
                .await
                .map_err(db_error("poll"))?;
            let full = rows.len() as i64 == POLL_LIMIT;
            let rows: Vec<(Value, Value)> = rows
                .into_iter()
                .map(|(row, at)| {
                    (
                        serde_json::from_str(&row).unwrap_or(Value::Null),
                        serde_json::from_str(&at).unwrap_or(Value::Null),
                    )
                })
                .collect();
            let submissions = rows.iter().map(|(row, at)| {
                let key = sql::poll_key(&prefix, at);
                let mark = DedupeMark::new(key, json!({"table": table, "column": poll.column, "position": at}));
                let mut event = Event::new(
                    "postgres",
                    &format!("reactor:postgres/{}", self.table.quoted('"').replace('"', "")),
                    json!({"operation": "upsert", "table": self.table.table, "new": row, "old": null}),
                );
                event.meta = json!({"mode": "poll", "table": self.table.table, "column": poll.column, "position": at});
                async move { context.submit_once(event, mark).await }
            });
            let results = futures::future::join_all(submissions).await;
            let batch = sql::PolledBatch {
                source: "postgres",
                prefix: &prefix,
                position_key: &position_key,
                stop_before_ack: self.stop_before_ack,
            };
            if let Some(reached) = batch
                .record(context, recorded, rows.iter().map(|(_, at)| at), results)
                .await?
            {
                position = reached;
            }
            if !full && !retry::pause(&context.cancel, poll.every).await {
                return Ok(());
            }
        }
    }
}

/// The changes of `rows` (whole transactions) this trigger reports, each with the
/// commit LSN of its transaction.
fn read_changes<'r>(
    rows: &'r [(String, Option<String>, String)],
    slot: &str,
    (schema, table): (&str, &str),
    operations: &[&str],
) -> Result<Vec<Pending<'r>>, Failure> {
    let mut changes: Vec<Pending<'r>> = Vec::new();
    let mut transaction_start = 0;
    let mut previous_lsn = "";
    let mut same_lsn = 0usize;
    for (lsn, xid, data) in rows {
        if lsn == previous_lsn {
            same_lsn += 1;
        } else {
            previous_lsn = lsn;
            same_lsn = 0;
        }
        let change = match decoding::parse(data) {
            Ok(Line::Change(change)) => change,
            Ok(Line::Commit) => {
                let commit = lsn_number(lsn).unwrap_or(0);
                for pending in &mut changes[transaction_start..] {
                    pending.commit = commit;
                }
                transaction_start = changes.len();
                continue;
            }
            Ok(_) => continue,
            Err(error) => {
                return Err(Failure::Fatal(TriggerError::Source(format!(
                    "postgres: cannot decode change at {lsn}: {error}"
                ))));
            }
        };
        if change.schema != schema
            || change.table != table
            || !operations.contains(&change.operation)
        {
            continue;
        }
        changes.push(Pending {
            key: format!("pg/{slot}/{lsn}/{same_lsn}"),
            lsn,
            xid: xid.as_deref(),
            // Until its COMMIT is seen: 0, i.e. "may have been submitted before".
            commit: 0,
            change,
        });
    }
    Ok(changes)
}

/// How many changes to ask for next, from the size of the rows of the last read: [`PEEK`],
/// or fewer so that a read of rows this large stays near [`PEEK_BYTES`].
fn peek_size(rows: &[(String, Option<String>, String)]) -> i32 {
    if rows.is_empty() {
        return PEEK;
    }
    let bytes: usize = rows
        .iter()
        .map(|(lsn, _, data)| lsn.len() + data.len())
        .sum();
    let average = (bytes / rows.len()).max(1);
    i32::try_from(PEEK_BYTES / average)
        .unwrap_or(PEEK)
        .clamp(PEEK_MIN, PEEK)
}

/// A row change read from the slot, to submit.
struct Pending<'r> {
    key: String,
    lsn: &'r str,
    xid: Option<&'r str>,
    /// The commit LSN of its transaction (0 when unknown).
    commit: u64,
    change: Box<Change>,
}

/// `16/B374D848` → its 64-bit position.
fn lsn_number(text: &str) -> Option<u64> {
    let (high, low) = text.split_once('/')?;
    let high = u64::from_str_radix(high, 16).ok()?;
    let low = u64::from_str_radix(low, 16).ok()?;
    (high <= u64::from(u32::MAX) && low <= u64::from(u32::MAX)).then_some(high << 32 | low)
}

fn cdc_event(change: &Change, lsn: &str, xid: Option<&str>, slot: &str) -> Event {
    let mut event = Event::new(
        "postgres",
        &format!("reactor:postgres/{}.{}", change.schema, change.table),
        json!({
            "operation": change.operation,
            "table": change.table,
            "new": change.new,
            "old": change.old,
        }),
    );
    event.meta = json!({
        "mode": "cdc",
        "schema": change.schema,
        "table": change.table,
        "lsn": lsn,
        "xid": xid,
        "slot": slot,
    });
    event
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(lsn: &str, xid: &str, data: &str) -> (String, Option<String>, String) {
        (lsn.into(), Some(xid.into()), data.into())
    }

    #[test]
    fn reads_shrink_for_large_rows() {
        let rows = |size: usize| vec![row("0/1", "1", &"x".repeat(size)); 3];
        assert_eq!(peek_size(&[]), PEEK);
        assert_eq!(peek_size(&rows(100)), PEEK);
        // 64 KiB rows: about 16 MiB a read.
        assert_eq!(peek_size(&rows(64 * 1024 - 3)), 256);
        assert_eq!(peek_size(&rows(10 * 1024 * 1024)), PEEK_MIN);
    }

    #[test]
    fn lsns_read_as_positions() {
        assert_eq!(lsn_number("0/1D9C518"), Some(0x1D9C518));
        assert_eq!(lsn_number("16/B374D848"), Some(0x16_B374_D848));
        assert_eq!(lsn_number("FFFFFFFF/FFFFFFFF"), Some(u64::MAX));
        for bad in ["", "12", "x/1", "1/", "100000000/0"] {
            assert_eq!(lsn_number(bad), None, "{bad}");
        }
    }

    /// Two transactions interleaved in the WAL come out in commit order: the later-committed
    /// one's row has the lower LSN, so only the commit LSN orders transactions.
    #[test]
    fn each_change_carries_its_transactions_commit() {
        let rows = [
            row("0/200", "8", "BEGIN 8"),
            row("0/200", "8", "table public.t: INSERT: id[integer]:2"),
            row("0/200", "8", "table public.t: INSERT: id[integer]:3"),
            row("0/210", "8", "table public.other: INSERT: id[integer]:9"),
            row("0/260", "8", "COMMIT 8"),
            row("0/260", "7", "BEGIN 7"),
            row("0/100", "7", "table public.t: DELETE: id[integer]:1"),
            row("0/280", "7", "COMMIT 7"),
            row("0/290", "9", "BEGIN 9"),
            row("0/290", "9", "table public.t: INSERT: id[integer]:4"),
        ];
        let all = ["insert", "update", "delete"];
        let Ok(changes) = read_changes(&rows, "s", ("public", "t"), &all) else {
            panic!("rows decode");
        };
        let seen: Vec<(&str, &str, u64)> = changes
            .iter()
            .map(|c| (c.key.as_str(), c.xid.unwrap_or(""), c.commit))
            .collect();
        assert_eq!(
            seen,
            [
                ("pg/s/0/200/1", "8", 0x260),
                ("pg/s/0/200/2", "8", 0x260),
                ("pg/s/0/100/0", "7", 0x280),
                // No COMMIT read for it: treated as possibly submitted before.
                ("pg/s/0/290/1", "9", 0),
            ]
        );
        let Ok(inserts) = read_changes(&rows, "s", ("public", "t"), &["insert"]) else {
            panic!("rows decode");
        };
        assert_eq!(inserts.len(), 3);
        assert!(inserts.iter().all(|c| c.change.operation == "insert"));
    }
}
