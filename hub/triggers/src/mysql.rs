//! The `mysql` trigger (MariaDB and MySQL): change capture from the binary log (`mode:
//! cdc`, the default) or polling by a monotonic column (`mode: poll`).
//!
//! **CDC** connects as a replica (`COM_BINLOG_DUMP`, a server id derived from the workflow
//! and table) and decodes ROW events with their column names (`binlog_row_metadata = FULL`;
//! without it, names come from `information_schema`). Changes are gathered per transaction;
//! every row of the trigger's table and operations is submitted with the de-duplication key
//! `mysql/{file}/{pos}/{n}` (the rows event's binlog position and the row's index in it),
//! and only once all are recorded is the binlog position — the end of the last complete
//! transaction — stored in the runtime's store (`cdc/{workflow}/mysql/{table}`). A restart
//! resumes there: changes recorded but not yet covered by a stored position come again and
//! start nothing new (rows past the highest position ever submitted, stored before they are
//! submitted, skip the mark lookup: see [`crate::sql::HighWater`]). The first start begins
//! at the current end of the binlog (`SHOW MASTER STATUS`): only later changes are
//! reported. Needs `log_bin`, `binlog_format = ROW`, `binlog_row_image = FULL` (for
//! complete `old` rows) and a user with `REPLICATION SLAVE` and `REPLICATION CLIENT`
//! (scripts/services sets up the test server). Binlog files purged before the hub read them
//! are lost: keep `binlog_expire_logs_seconds` above the longest outage.
//!
//! Event: type `mysql`, source `reactor:mysql/{database}.{table}`, `data` = `{operation,
//! table, new, old}` (numbers typed, JSON columns parsed, dates as text, binary as base64),
//! `meta` = `{mode, database, table, file, pos}`.
//!
//! **Poll** works as the `postgres` trigger's poll (position stored in the runtime's store,
//! start at the current maximum, `data.operation = "upsert"`).
//!
//! Both modes run only while this hub leads (see [`crate::Leader`]).

use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use futures::StreamExt;
use mysql_async::binlog::events::{EventData, RowsEventData};
use mysql_async::binlog::row::BinlogRow;
use mysql_async::binlog::value::BinlogValue;
use mysql_async::consts::ColumnType;
use mysql_async::prelude::Queryable;
use mysql_async::{BinlogStreamRequest, Conn, Opts, OptsBuilder, Row, Value as MyValue};
use reactor_core::engine::{DedupeMark, Event, Submission};
use reactor_core::flow::{self, CaptureMode, PollSettings};
use reactor_core::trigger::{Trigger, TriggerContext, TriggerError};
use serde_json::{Map, Value, json};
use tracing::{debug, info};

use crate::connections::{Connections, Resolved};
use crate::retry::{self, Backoff, Failure, Leader, handled};
use crate::sql::{self, TableName};

/// Row changes gathered before they are submitted together.
const BATCH: usize = 500;
/// How long a batch waits for more binlog events after its first.
const GATHER: Duration = Duration::from_millis(5);
const POLL_LIMIT: usize = 500;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A binlog position as one number, ordered as the binlog is: the file's sequence number
/// (the digits after its last `.`) above the offset. 0 (before everything) when the name has
/// no such number or either part is out of range.
fn binlog_number(file: &str, pos: u64) -> u64 {
    let sequence = file
        .rsplit_once('.')
        .and_then(|(_, n)| n.parse::<u64>().ok());
    match sequence {
        Some(sequence) if sequence <= u64::from(u32::MAX) && pos <= u64::from(u32::MAX) => {
            sequence << 32 | pos
        }
        _ => 0,
    }
}

/// A running `mysql` trigger.
#[derive(Debug)]
pub struct MysqlTrigger {
    table: TableName,
    mode: CaptureMode,
    operations: Vec<&'static str>,
    poll: Option<PollSettings>,
    connection: Resolved,
    opts: Opts,
    leader: Leader,
    stop_before_ack: Option<u64>,
}

/// A binlog position: file and offset.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BinlogPosition {
    pub file: String,
    pub pos: u64,
}

impl MysqlTrigger {
    pub fn new(
        spec: &flow::SqlTrigger,
        connections: &Connections,
    ) -> Result<MysqlTrigger, TriggerError> {
        let connection = connections.resolve(&spec.connection, "mysql", &["mysql", "mariadb"])?;
        let url = connection.address.replacen("mariadb://", "mysql://", 1);
        let opts = Opts::from_url(&url).map_err(|e| {
            TriggerError::Settings(format!("mysql url {}: {e}", connection.display))
        })?;
        let table = TableName::parse(&spec.table)?;
        if table.schema.is_none() && opts.db_name().is_none() {
            return Err(TriggerError::Settings(
                "mysql table needs a database: `database.table`, or a database in the url".into(),
            ));
        }
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
        Ok(MysqlTrigger {
            table,
            mode: spec.mode,
            operations,
            poll,
            connection,
            opts,
            leader: connections.leader(),
            stop_before_ack: None,
        })
    }

    /// Crash tests: once `recorded` changes are recorded, stop with an error instead of
    /// storing the binlog (or poll) position.
    pub fn stop_before_ack(mut self, recorded: u64) -> MysqlTrigger {
        self.stop_before_ack = Some(recorded);
        self
    }

    /// The stored CDC position's key for `workflow`.
    pub fn position_key(&self, workflow: &str) -> String {
        format!("cdc/{workflow}/mysql/{}", self.table.quoted('`'))
    }

    fn database(&self) -> String {
        self.table
            .schema
            .clone()
            .or_else(|| self.opts.db_name().map(str::to_string))
            .unwrap_or_default()
    }

    async fn connect(&self) -> Result<Conn, Failure> {
        let opts = OptsBuilder::from_opts(self.opts.clone());
        tokio::time::timeout(CONNECT_TIMEOUT, Conn::new(opts))
            .await
            .map_err(|_| {
                Failure::Retry(format!(
                    "mysql connect {}: timed out",
                    self.connection.display
                ))
            })?
            .map_err(|e| Failure::Retry(format!("mysql connect {}: {e}", self.connection.display)))
    }
}

fn db_error(what: &str) -> impl Fn(mysql_async::Error) -> Failure + '_ {
    move |error| Failure::Retry(format!("mysql {what}: {error}"))
}

#[async_trait]
impl Trigger for MysqlTrigger {
    fn kind(&self) -> &'static str {
        "mysql"
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
                match self.mode {
                    CaptureMode::Cdc => self.cdc(&context, &mut backoff, &mut recorded).await,
                    CaptureMode::Poll => self.poll(&context, &mut backoff, &mut recorded).await,
                }
            };
            let outcome = tokio::select! {
                biased;
                () = context.cancel.cancelled() => return Ok(()),
                () = leader.lost() => {
                    info!(workflow = %context.workflow, "no longer leading: mysql trigger paused");
                    continue;
                }
                outcome = session => outcome,
            };
            match outcome {
                Ok(()) => return Ok(()),
                Err(Failure::Fatal(error)) => return Err(error),
                Err(Failure::Retry(message)) => {
                    if !retry::failed(&context, &mut backoff, "mysql", &message).await {
                        return Ok(());
                    }
                }
            }
        }
    }
}

/// Changes of finished transactions not yet submitted, where the last one ends, and the
/// highest position ever submitted.
struct Finished {
    ready: Vec<Pending>,
    boundary: Option<BinlogPosition>,
    submitted: sql::HighWater,
}

/// One row change waiting for its transaction to end.
struct Pending {
    key: String,
    event: Event,
    /// Where its rows event sits in the binlog ([`binlog_number`]).
    position: u64,
}

impl MysqlTrigger {
    async fn cdc(
        &self,
        context: &TriggerContext,
        backoff: &mut Backoff,
        recorded: &mut u64,
    ) -> Result<(), Failure> {
        let database = self.database();
        let position_key = self.position_key(&context.workflow);
        let submitted =
            sql::HighWater::load(&context.runtime, format!("{position_key}/submitted")).await?;
        let mut conn = self.connect().await?;
        let names: Vec<String> = conn
            .exec(
                "SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? \
                 ORDER BY ORDINAL_POSITION",
                (&database, &self.table.table),
            )
            .await
            .map_err(db_error("column names"))?;
        let json_columns = json_columns(&mut conn, &database, &self.table.table).await;
        let start = match sql::load_position(&context.runtime, &position_key)
            .await
            .map_err(Failure::Retry)?
        {
            Some(stored) => serde_json::from_value::<BinlogPosition>(stored).map_err(|e| {
                Failure::Fatal(TriggerError::Source(format!("stored binlog position: {e}")))
            })?,
            None => {
                let row: Option<Row> = conn
                    .query_first("SHOW MASTER STATUS")
                    .await
                    .map_err(db_error("master status"))?;
                let row = row.ok_or_else(|| {
                    Failure::Fatal(TriggerError::Settings(
                        "mysql change capture needs the binary log (log_bin) on the server".into(),
                    ))
                })?;
                let file: String = row.get(0).unwrap_or_default();
                let pos: u64 = row.get(1).unwrap_or(4);
                let start = BinlogPosition { file, pos };
                sql::save_position(&context.runtime, &position_key, &json!(start))
                    .await
                    .map_err(Failure::Retry)?;
                start
            }
        };
        let format: Option<(String,)> = conn
            .query_first("SELECT @@binlog_format")
            .await
            .map_err(db_error("binlog format"))?;
        if format.as_ref().map(|f| f.0.as_str()) != Some("ROW") {
            return Err(Failure::Fatal(TriggerError::Settings(format!(
                "mysql change capture needs binlog_format = ROW, not {:?}",
                format.map(|f| f.0)
            ))));
        }
        let server_id = 1_000 + (sql::fnv(position_key.as_bytes()) % 1_000_000_000) as u32;
        let request = BinlogStreamRequest::new(server_id)
            .with_filename(start.file.as_bytes())
            .with_pos(start.pos);
        let mut stream = conn
            .get_binlog_stream(request)
            .await
            .map_err(db_error("binlog stream"))?;
        info!(workflow = %context.workflow, mysql = %self.connection.display, table = %self.table.quoted('`'),
            file = %start.file, pos = start.pos, "mysql change capture reading");
        backoff.reset();
        context.stats.record_success();
        let mut file = start.file.clone();
        // Changes of the open transaction; changes of finished ones not yet submitted.
        let mut open: Vec<Pending> = Vec::new();
        let mut finished = Finished {
            ready: Vec::new(),
            boundary: None,
            submitted,
        };
        loop {
            let waiting = !finished.ready.is_empty() || finished.boundary.is_some();
            let next = if waiting {
                tokio::time::timeout(GATHER, stream.next()).await.ok()
            } else {
                Some(tokio::select! {
                    biased;
                    () = context.cancel.cancelled() => return Ok(()),
                    next = stream.next() => next,
                })
            };
            match next {
                None => {
                    self.flush(context, &position_key, &mut finished, recorded)
                        .await?;
                    continue;
                }
                Some(None) => return Err(Failure::Retry("mysql: the binlog stream ended".into())),
                Some(Some(Err(error))) => {
                    return Err(Failure::Retry(format!("mysql binlog: {error}")));
                }
                Some(Some(Ok(event))) => {
                    let log_pos = u64::from(event.header().log_pos());
                    let data = event
                        .read_data()
                        .map_err(|e| Failure::Retry(format!("mysql binlog event: {e}")))?;
                    match data {
                        // The artificial rotate that opens the stream (log_pos 0) names the file
                        // asked for; it is read before the checksum setting is known, so its
                        // name may carry the checksum bytes: only real rotates switch files.
                        Some(EventData::RotateEvent(rotate)) if log_pos != 0 => {
                            file = rotate.name().into_owned();
                            finished.boundary = Some(BinlogPosition {
                                file: file.clone(),
                                pos: rotate.position(),
                            });
                        }
                        // A transaction ends with XID (transactional engines) or with a query
                        // other than BEGIN (COMMIT of other engines, DDL).
                        Some(EventData::XidEvent(_)) => {
                            finished.ready.append(&mut open);
                            finished.boundary = Some(BinlogPosition {
                                file: file.clone(),
                                pos: log_pos,
                            });
                        }
                        Some(EventData::QueryEvent(query)) if query.query().trim() != "BEGIN" => {
                            finished.ready.append(&mut open);
                            finished.boundary = Some(BinlogPosition {
                                file: file.clone(),
                                pos: log_pos,
                            });
                        }
                        Some(EventData::RowsEvent(rows)) => {
                            let Some(tme) = stream.get_tme(rows.table_id()) else {
                                continue;
                            };
                            if tme.database_name() != database
                                || tme.table_name() != self.table.table
                            {
                                continue;
                            }
                            let operation = match &rows {
                                RowsEventData::WriteRowsEvent(_)
                                | RowsEventData::WriteRowsEventV1(_) => "insert",
                                RowsEventData::UpdateRowsEvent(_)
                                | RowsEventData::UpdateRowsEventV1(_)
                                | RowsEventData::PartialUpdateRowsEvent(_) => "update",
                                RowsEventData::DeleteRowsEvent(_)
                                | RowsEventData::DeleteRowsEventV1(_) => "delete",
                            };
                            if !self.operations.contains(&operation) {
                                continue;
                            }
                            // The rows event starts where its header says it ends minus its size.
                            let at = log_pos.saturating_sub(u64::from(event.header().event_size()));
                            for (index, row) in rows.rows(tme).enumerate() {
                                let (before, after) = row.map_err(|e| {
                                    Failure::Retry(format!("mysql rows event: {e}"))
                                })?;
                                let key = format!("mysql/{file}/{at}/{index}");
                                let mut event = Event::new(
                                    "mysql",
                                    &format!("reactor:mysql/{database}.{}", self.table.table),
                                    json!({
                                        "operation": operation,
                                        "table": self.table.table,
                                        "new": after.as_ref().map(|r| binlog_row(r, &names, &json_columns)),
                                        "old": before.as_ref().map(|r| binlog_row(r, &names, &json_columns)),
                                    }),
                                );
                                event.meta = json!({
                                    "mode": "cdc", "database": database, "table": self.table.table,
                                    "file": file, "pos": at,
                                });
                                open.push(Pending {
                                    key,
                                    event,
                                    position: binlog_number(&file, at),
                                });
                            }
                        }
                        _ => {}
                    }
                    if finished.ready.len() >= BATCH {
                        self.flush(context, &position_key, &mut finished, recorded)
                            .await?;
                    }
                }
            }
        }
    }

    /// Submits the changes of finished transactions, then stores the position after them.
    async fn flush(
        &self,
        context: &TriggerContext,
        position_key: &str,
        finished: &mut Finished,
        recorded: &mut u64,
    ) -> Result<(), Failure> {
        let batch = std::mem::take(&mut finished.ready);
        // The binlog is written in commit order: rows past every one submitted before are
        // first deliveries.
        let high = batch.iter().map(|p| p.position).max().unwrap_or(0);
        // Unknown: this batch looks every mark up.
        let submitted_before = finished.submitted.get().unwrap_or(u64::MAX);
        finished.submitted.raise(&context.runtime, high).await?;
        let submissions = batch.iter().map(|pending| {
            let mut mark = DedupeMark::new(pending.key.clone(), pending.event.meta.clone());
            if pending.position > submitted_before {
                mark = mark.first();
            }
            context.submit_once(pending.event.clone(), mark)
        });
        let results = futures::future::join_all(submissions).await;
        let mut keys = Vec::with_capacity(batch.len());
        for (pending, result) in batch.iter().zip(results) {
            if !handled(&context.workflow, &pending.key, &result) {
                return Err(Failure::Retry(
                    "mysql: a change was not recorded; resuming from the stored position".into(),
                ));
            }
            if matches!(result, Ok(Submission::Accepted(_))) {
                *recorded += 1;
            }
            keys.push(pending.key.clone());
        }
        if let Some(limit) = self.stop_before_ack
            && *recorded >= limit
        {
            return Err(Failure::Fatal(TriggerError::Source(
                "stopped before storing the binlog position (crash test)".into(),
            )));
        }
        if let Some(position) = finished.boundary.take() {
            sql::save_position(&context.runtime, position_key, &json!(position))
                .await
                .map_err(Failure::Retry)?;
            debug!(file = %position.file, pos = position.pos, changes = keys.len(), "mysql position stored");
            // Changes before a stored position are never read again: their marks can go
            // (without waiting: the delete rides the next group commit).
            retry::forget_soon(context, keys);
        }
        Ok(())
    }

    async fn poll(
        &self,
        context: &TriggerContext,
        backoff: &mut Backoff,
        recorded: &mut u64,
    ) -> Result<(), Failure> {
        let poll = self.poll.as_ref().ok_or_else(|| {
            Failure::Fatal(TriggerError::Settings("poll settings missing".into()))
        })?;
        let mut conn = self.connect().await?;
        let table = self.table.quoted('`');
        let column = format!("`{}`", poll.column);
        let position_key = format!("poll/{}/mysql/{}/{}", context.workflow, table, poll.column);
        let mut position = match sql::load_position(&context.runtime, &position_key)
            .await
            .map_err(Failure::Retry)?
        {
            Some(position) => position,
            None => {
                let rows: Vec<Row> = conn
                    .query(format!(
                        "SELECT {column} FROM {table} ORDER BY {column} DESC LIMIT 1"
                    ))
                    .await
                    .map_err(db_error("poll start"))?;
                let start = rows
                    .into_iter()
                    .next()
                    .map(|row| {
                        row_values(row, &[])
                            .into_iter()
                            .next()
                            .map(|(_, v)| v)
                            .unwrap_or(Value::Null)
                    })
                    .unwrap_or(Value::Null);
                sql::save_position(&context.runtime, &position_key, &start)
                    .await
                    .map_err(Failure::Retry)?;
                start
            }
        };
        info!(workflow = %context.workflow, mysql = %self.connection.display, table, column = %poll.column,
            "mysql poll running");
        backoff.reset();
        context.stats.record_success();
        let prefix = format!("mypoll/{table}");
        let database = self.database();
        let json_columns = json_columns(&mut conn, &database, &self.table.table).await;
        loop {
            let rows: Vec<Row> = if position.is_null() {
                conn.query(format!("SELECT * FROM {table} ORDER BY {column} LIMIT {POLL_LIMIT}")).await
            } else {
                conn.exec(
                    format!("SELECT * FROM {table} WHERE {column} > ? ORDER BY {column} LIMIT {POLL_LIMIT}"),
                    (json_param(&position),),
                )
                .await
            }
            .map_err(db_error("poll"))?;
            let full = rows.len() == POLL_LIMIT;
            let rows: Vec<(Map<String, Value>, Value)> = rows
                .into_iter()
                .map(|row| {
                    let values: Map<String, Value> =
                        row_values(row, &json_columns).into_iter().collect();
                    let at = values.get(&poll.column).cloned().unwrap_or(Value::Null);
                    (values, at)
                })
                .collect();
            let submissions = rows.iter().map(|(row, at)| {
                let mark = DedupeMark::new(sql::poll_key(&prefix, at), json!({"table": table, "position": at}));
                let mut event = Event::new(
                    "mysql",
                    &format!("reactor:mysql/{database}.{}", self.table.table),
                    json!({"operation": "upsert", "table": self.table.table, "new": row, "old": null}),
                );
                event.meta = json!({"mode": "poll", "database": database, "table": self.table.table,
                    "column": poll.column, "position": at});
                context.submit_once(event, mark)
            });
            let results = futures::future::join_all(submissions).await;
            let batch = sql::PolledBatch {
                source: "mysql",
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

/// MariaDB's `JSON` is `LONGTEXT` with a `json_valid` check, sent as text: the columns to
/// parse as JSON. (MySQL has a real JSON type and no such checks; any error means none.)
async fn json_columns(conn: &mut Conn, database: &str, table: &str) -> Vec<String> {
    conn.exec(
        "SELECT CONSTRAINT_NAME FROM information_schema.CHECK_CONSTRAINTS \
         WHERE CONSTRAINT_SCHEMA = ? AND TABLE_NAME = ? AND CHECK_CLAUSE LIKE 'json\\_valid(%'",
        (database, table),
    )
    .await
    .unwrap_or_default()
}

/// `to_json`, with MariaDB JSON columns parsed.
fn column_json(
    name: &str,
    value: &MyValue,
    column_type: ColumnType,
    json_columns: &[String],
) -> Value {
    if json_columns.iter().any(|c| c == name) {
        to_json(value, ColumnType::MYSQL_TYPE_JSON)
    } else {
        to_json(value, column_type)
    }
}

/// A binlog row as `{column: value}`; `@i` names (no row metadata) come from `names`.
fn binlog_row(row: &BinlogRow, names: &[String], json_columns: &[String]) -> Value {
    let mut out = Map::new();
    for (index, column) in row.columns_ref().iter().enumerate() {
        let mut name = column.name_str().into_owned();
        if let Some(position) = name.strip_prefix('@').and_then(|n| n.parse::<usize>().ok())
            && let Some(real) = names.get(position)
        {
            name.clone_from(real);
        }
        let value = match row.as_ref(index) {
            None => Value::Null,
            Some(BinlogValue::Value(value)) => {
                column_json(&name, value, column.column_type(), json_columns)
            }
            Some(other) => match MyValue::try_from(other.clone()) {
                Ok(value) => to_json(&value, ColumnType::MYSQL_TYPE_JSON),
                Err(_) => Value::Null,
            },
        };
        out.insert(name, value);
    }
    Value::Object(out)
}

/// A result row as (column, value) pairs.
fn row_values(row: Row, json_columns: &[String]) -> Vec<(String, Value)> {
    let columns = row.columns();
    let values = row.unwrap();
    columns
        .iter()
        .zip(values)
        .map(|(column, value)| {
            let name = column.name_str().into_owned();
            let value = column_json(&name, &value, column.column_type(), json_columns);
            (name, value)
        })
        .collect()
}

/// A MySQL value as JSON, by column type.
fn to_json(value: &MyValue, column_type: ColumnType) -> Value {
    match value {
        MyValue::NULL => Value::Null,
        MyValue::Int(n) => json!(n),
        MyValue::UInt(n) => json!(n),
        MyValue::Float(n) => json!(n),
        MyValue::Double(n) => json!(n),
        MyValue::Bytes(bytes) => {
            let text = std::str::from_utf8(bytes);
            match (column_type, text) {
                (ColumnType::MYSQL_TYPE_JSON, Ok(text)) => {
                    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string()))
                }
                (
                    ColumnType::MYSQL_TYPE_NEWDECIMAL
                    | ColumnType::MYSQL_TYPE_DECIMAL
                    | ColumnType::MYSQL_TYPE_LONGLONG
                    | ColumnType::MYSQL_TYPE_LONG
                    | ColumnType::MYSQL_TYPE_INT24
                    | ColumnType::MYSQL_TYPE_SHORT
                    | ColumnType::MYSQL_TYPE_TINY
                    | ColumnType::MYSQL_TYPE_DOUBLE
                    | ColumnType::MYSQL_TYPE_FLOAT,
                    Ok(text),
                ) => serde_json::from_str::<serde_json::Number>(text)
                    .map(Value::Number)
                    .unwrap_or_else(|_| Value::String(text.to_string())),
                (_, Ok(text)) => Value::String(text.to_string()),
                (_, Err(_)) => {
                    Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
                }
            }
        }
        MyValue::Date(y, m, d, h, mi, s, us) => {
            if column_type == ColumnType::MYSQL_TYPE_DATE {
                Value::String(format!("{y:04}-{m:02}-{d:02}"))
            } else if *us > 0 {
                Value::String(format!(
                    "{y:04}-{m:02}-{d:02} {h:02}:{mi:02}:{s:02}.{us:06}"
                ))
            } else {
                Value::String(format!("{y:04}-{m:02}-{d:02} {h:02}:{mi:02}:{s:02}"))
            }
        }
        MyValue::Time(negative, days, h, m, s, us) => {
            let hours = u64::from(*days) * 24 + u64::from(*h);
            let sign = if *negative { "-" } else { "" };
            let frac = if *us > 0 {
                format!(".{us:06}")
            } else {
                String::new()
            };
            Value::String(format!("{sign}{hours:02}:{m:02}:{s:02}{frac}"))
        }
    }
}

/// A stored position as a query parameter.
fn json_param(value: &Value) -> MyValue {
    match value {
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => MyValue::Int(i),
            (None, Some(u), _) => MyValue::UInt(u),
            (_, _, Some(f)) => MyValue::Double(f),
            _ => MyValue::Bytes(n.to_string().into_bytes()),
        },
        Value::String(text) => MyValue::Bytes(text.clone().into_bytes()),
        Value::Bool(b) => MyValue::Int(i64::from(*b)),
        other => MyValue::Bytes(other.to_string().into_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binlog_positions_order_by_file_then_offset() {
        let early = binlog_number("mysql-bin.000009", 4_000_000);
        let later = binlog_number("mysql-bin.000010", 4);
        assert!(0 < early && early < later);
        // Past six digits the names grow longer; the number still orders them.
        assert!(binlog_number("mysql-bin.999999", 9) < binlog_number("mysql-bin.1000000", 4));
        assert_eq!(binlog_number("mysql-bin", 4), 0);
        assert_eq!(binlog_number("mysql-bin.000001", 1 << 40), 0);
    }

    #[test]
    fn values_by_type() {
        assert_eq!(
            to_json(
                &MyValue::Bytes(b"12.50".to_vec()),
                ColumnType::MYSQL_TYPE_NEWDECIMAL
            ),
            json!(12.50)
        );
        assert_eq!(
            to_json(
                &MyValue::Bytes(b"{\"a\":1}".to_vec()),
                ColumnType::MYSQL_TYPE_JSON
            ),
            json!({"a": 1})
        );
        assert_eq!(
            to_json(
                &MyValue::Bytes(b"hi".to_vec()),
                ColumnType::MYSQL_TYPE_VARCHAR
            ),
            json!("hi")
        );
        assert_eq!(
            to_json(&MyValue::Bytes(vec![0xff]), ColumnType::MYSQL_TYPE_BLOB),
            json!("/w==")
        );
        assert_eq!(
            to_json(
                &MyValue::Date(2026, 11, 30, 13, 5, 0, 0),
                ColumnType::MYSQL_TYPE_DATETIME
            ),
            json!("2026-11-30 13:05:00")
        );
        assert_eq!(
            to_json(
                &MyValue::Time(true, 1, 2, 3, 4, 0),
                ColumnType::MYSQL_TYPE_TIME
            ),
            json!("-26:03:04")
        );
        assert_eq!(json_param(&json!(7)), MyValue::Int(7));
    }
}
