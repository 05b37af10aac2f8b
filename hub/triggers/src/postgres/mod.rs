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
//! leaves the slot where it was: the changes come again and start nothing new. Because the
//! server makes a slot's advance durable only at its next checkpoint, the marks are
//! forgotten 15 minutes after the advance (see docs/triggers.md).
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
use reactor_core::engine::{DedupeMark, Event, Submission};
use reactor_core::flow::{self, CaptureMode, PollSettings};
use reactor_core::trigger::{Trigger, TriggerContext, TriggerError};
use serde_json::{Value, json};
use sqlx::postgres::{PgConnectOptions, PgConnection};
// Dynamic SQL only ever holds identifiers checked by `sql::check_identifier`, quoted.
use sqlx::{AssertSqlSafe, ConnectOptions as _, Connection as _};
use tracing::{debug, info};

use self::decoding::{Change, Line};
use crate::connections::{Connections, Resolved};
use crate::retry::{self, Backoff, Failure, Leader, handled};
use crate::sql::{self, Forgetting, TableName};

/// Changes asked for per read (whole transactions are returned, so possibly more).
const BATCH: i32 = 500;
/// Rows per poll query.
const POLL_LIMIT: i64 = 500;
/// How often an idle slot is read again.
const IDLE: Duration = Duration::from_millis(200);
/// Marks outlive a slot advance this long (several default checkpoint intervals).
const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);
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
    forget_after: Duration,
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
            forget_after: FORGET_AFTER,
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
        let mut forgetting = Forgetting::new(self.forget_after);
        loop {
            if !leader.wait_leading(&context.cancel).await {
                return Ok(());
            }
            let session = async {
                let mut conn = self.connect(&context.workflow).await?;
                match self.mode {
                    CaptureMode::Cdc => {
                        self.cdc(
                            &context,
                            &mut conn,
                            &mut backoff,
                            &mut recorded,
                            &mut forgetting,
                        )
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
        forgetting: &mut Forgetting,
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
        let mut next_lag = Instant::now();
        loop {
            forgetting.flush(&context.runtime, &context.workflow).await;
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
            .bind(BATCH)
            .fetch_all(&mut *conn)
            .await
            .map_err(db_error("peek changes"))?;
            let Some(last_lsn) = rows.last().map(|row| row.0.clone()) else {
                if !retry::pause(&context.cancel, IDLE).await {
                    return Ok(());
                }
                continue;
            };
            let mut changes = Vec::new();
            let mut previous_lsn = String::new();
            let mut same_lsn = 0usize;
            for (lsn, xid, data) in &rows {
                if *lsn == previous_lsn {
                    same_lsn += 1;
                } else {
                    previous_lsn.clone_from(lsn);
                    same_lsn = 0;
                }
                let change = match decoding::parse(data) {
                    Ok(Line::Change(change)) => change,
                    Ok(_) => continue,
                    Err(error) => {
                        return Err(Failure::Fatal(TriggerError::Source(format!(
                            "postgres: cannot decode change at {lsn}: {error}"
                        ))));
                    }
                };
                if change.schema != schema
                    || change.table != table
                    || !self.operations.contains(&change.operation)
                {
                    continue;
                }
                let key = format!("pg/{slot}/{lsn}/{same_lsn}");
                changes.push((key, lsn.clone(), xid.clone(), change));
            }
            let submissions = changes.iter().map(|(key, lsn, xid, change)| {
                let mark = DedupeMark::new(key.clone(), json!({"slot": slot, "lsn": lsn}));
                let event = cdc_event(change, lsn, xid.as_deref(), &slot);
                async move { context.submit_once(event, mark).await }
            });
            let results = futures::future::join_all(submissions).await;
            let mut complete = true;
            let mut keys = Vec::with_capacity(changes.len());
            for ((key, ..), result) in changes.iter().zip(results) {
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
            forgetting.push(keys);
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
