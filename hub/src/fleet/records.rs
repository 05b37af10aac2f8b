//! Batched writes of device records for [`super::ingest`]: one multi-row
//! `INSERT … ON CONFLICT (device_id, seq) DO NOTHING RETURNING seq` per [`ROWS_PER_INSERT`]
//! records instead of one statement per record, and one `UPDATE` marking a batch's events
//! delivered instead of one per event.
//!
//! `RETURNING` (SQLite ≥ 3.35, PostgreSQL) gives exactly the seqs this statement stored, so
//! de-duplication by `(device, seq)` stays the database's job and a re-sent batch stores
//! nothing. The statements run on both backends (`$n` placeholders come from
//! [`sqlx::QueryBuilder`]), inside the batch's transaction (the caller's `$tx`).

/// Rows per multi-row statement: 500 × 11 parameters stays far below SQLite's
/// 32,766-variable and PostgreSQL's 65,535-parameter limits, and one statement is a few
/// hundred kilobytes at most.
pub const ROWS_PER_INSERT: usize = 500;

/// Inserts `$events` (`&[DeviceEvent]`, seqs `$first..`) of `$device` received at `$now`,
/// inside transaction `$tx`; evaluates to the seqs newly stored (`Vec<i64>`, ascending).
macro_rules! insert_events {
    ($tx:expr, $device:expr, $first:expr, $events:expr, $now:expr) => {{
        let mut stored: Vec<i64> = Vec::with_capacity($events.len());
        for (chunk_index, chunk) in $events
            .chunks($crate::fleet::records::ROWS_PER_INSERT)
            .enumerate()
        {
            let base = $first + (chunk_index * $crate::fleet::records::ROWS_PER_INSERT) as i64;
            let mut insert = sqlx::QueryBuilder::new(
                "INSERT INTO device_events (device_id, seq, event_id, event_type, source, time, \
                 data, meta, received_at) ",
            );
            insert.push_values(chunk.iter().enumerate(), |mut row, (offset, event)| {
                row.push_bind($device.as_str())
                    .push_bind(base + offset as i64)
                    .push_bind(event.id.as_str())
                    .push_bind(event.event_type.as_str())
                    .push_bind(event.source.as_str())
                    .push_bind(event.time.millis())
                    .push_bind(event.data.as_str())
                    .push_bind(event.meta.as_str())
                    .push_bind($now);
            });
            insert.push(" ON CONFLICT (device_id, seq) DO NOTHING RETURNING seq");
            for row in insert.build().fetch_all(&mut *$tx).await? {
                stored.push(sqlx::Row::try_get::<i64, _>(&row, 0)?);
            }
        }
        stored.sort_unstable();
        stored
    }};
}
pub(crate) use insert_events;

/// Inserts `$rows` (`&[(ExecutionReport, String)]`: a report and its trace as JSON, seqs
/// `$first..`) of `$device` received at `$now`, inside `$tx`; evaluates to how many were
/// newly stored.
macro_rules! insert_executions {
    ($tx:expr, $device:expr, $first:expr, $rows:expr, $now:expr) => {{
        let mut stored: u64 = 0;
        for (chunk_index, chunk) in $rows
            .chunks($crate::fleet::records::ROWS_PER_INSERT)
            .enumerate()
        {
            let base = $first + (chunk_index * $crate::fleet::records::ROWS_PER_INSERT) as i64;
            let mut insert = sqlx::QueryBuilder::new(
                "INSERT INTO device_executions (device_id, seq, execution_id, workflow, \
                 workflow_version, outcome, started_at, finished_at, error, trace, received_at) ",
            );
            insert.push_values(
                chunk.iter().enumerate(),
                |mut row, (offset, (report, trace))| {
                    row.push_bind($device.as_str())
                        .push_bind(base + offset as i64)
                        .push_bind(
                            reactor_core::engine::ExecutionId::from(report.execution).to_string(),
                        )
                        .push_bind(report.workflow.as_str())
                        .push_bind(i64::from(report.workflow_version))
                        .push_bind(outcome_name(report.outcome))
                        .push_bind(report.started_at.millis())
                        .push_bind(report.finished_at.map(Timestamp::millis))
                        .push_bind(report.error.as_deref())
                        .push_bind(trace.as_str())
                        .push_bind($now);
                },
            );
            insert.push(" ON CONFLICT (device_id, seq) DO NOTHING RETURNING seq");
            stored += insert.build().fetch_all(&mut *$tx).await?.len() as u64;
        }
        stored
    }};
}
pub(crate) use insert_executions;

/// Marks the events `$seqs` (`&[i64]`) of `$device` delivered at `$now` on `$pool`, one
/// statement per [`ROWS_PER_INSERT`] seqs; evaluates to `Result<(), sqlx::Error>`.
macro_rules! mark_routed {
    ($pool:expr, $device:expr, $seqs:expr, $now:expr) => {{
        let mut result: Result<(), sqlx::Error> = Ok(());
        for chunk in $seqs.chunks($crate::fleet::records::ROWS_PER_INSERT) {
            let mut update = sqlx::QueryBuilder::new("UPDATE device_events SET routed_at = ");
            update
                .push_bind($now)
                .push(" WHERE device_id = ")
                .push_bind($device.as_str())
                .push(" AND seq IN (");
            let mut list = update.separated(", ");
            for seq in chunk {
                list.push_bind(*seq);
            }
            update.push(")");
            if let Err(error) = update.build().execute($pool).await {
                result = Err(error);
                break;
            }
        }
        result
    }};
}
pub(crate) use mark_routed;
