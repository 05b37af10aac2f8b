//! Ingest: the hub's own MQTT client on the embedded broker, subscribed to every device's
//! uplink (`reactor/v1/d/+/{status,events,executions}`).
//!
//! - **Event and execution batches** are stored once by `(device, seq)` (tables
//!   `device_events`, `device_executions`) in one transaction per batch, which also advances
//!   the device's contiguous seq `H` (`devices.acked_seq`: every seq ≤ `H` is stored or
//!   covered by a gap notice). After the commit the hub publishes `Ack { highest: H }` on
//!   `d/{device}/ack`. A re-sent batch stores nothing and is acked again.
//! - **Gap notices** are stored (`device_gaps`) and fill their range when computing `H`.
//! - **Status frames** (and the broker's last will, `Offline`) update presence, last seen,
//!   versions and health, only when their seq is higher than the stored one.
//! - **Stored events feed the hub's workflows** through an [`EventSink`] after the commit
//!   (`routing`: the hub event, delivery marks, the sweeper for undelivered events).
//!
//! Frames are handled by [`SHARDS`] workers, a device always on the same one, so one
//! device's frames are handled in arrival order and never concurrently.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use reactor_core::Value;
use reactor_core::engine::Timestamp;
use reactor_core::sync::messages::{
    Ack, DeviceEvent, ExecutionReport, GapNotice, GapReason, Outcome, Presence, Status,
};
use reactor_core::sync::{Channel, DeviceId, Envelope, Frame, Message, Seq, decode, encode};
use rumqttc::{AsyncClient, Event as MqttEvent, Packet, QoS};
use sqlx::Row;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::broker::{BrokerError, BrokerTarget};
use super::records::{insert_events, insert_executions};
use super::registry::on_pool;
use crate::db::Database;

mod routing;
pub use routing::{EventSink, WorkflowSink};
use routing::{Fresh, hub_event};

/// Workers handling frames (a device always goes to the same one).
pub const SHARDS: usize = 4;
/// Frames waiting per worker before the MQTT loop waits (back-pressure on the broker).
const QUEUE: usize = 256;
/// Undelivered events older than this are routed again by the sweeper (a worker routes its
/// own events within the router's timeout, well under this).
const SWEEP_AFTER: Duration = Duration::from_secs(30);
/// How often the sweeper looks for undelivered events.
const SWEEP_EVERY: Duration = Duration::from_secs(10);
/// Seqs read per step when advancing `H`.
const ADVANCE_PAGE: i64 = 10_000;

/// Counters, for logs, metrics and tests.
#[derive(Debug, Default)]
pub struct IngestStats {
    /// Events newly stored (duplicates not counted).
    pub events_stored: AtomicU64,
    /// Records (events and executions) received again and dropped.
    pub duplicates: AtomicU64,
    /// Execution summaries newly stored.
    pub executions_stored: AtomicU64,
    pub gaps: AtomicU64,
    pub statuses: AtomicU64,
    pub acks_sent: AtomicU64,
    /// Events handed to the workflows.
    pub routed: AtomicU64,
    pub route_failures: AtomicU64,
    /// Frames with a newer version or an unknown kind (skipped, not acked).
    pub unsupported: AtomicU64,
    /// Frames that did not decode, came on the wrong channel, or from an unknown device.
    pub refused: AtomicU64,
    pub command_results: AtomicU64,
}

/// Failures while storing a frame.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("seq {0} does not fit the database")]
    SeqRange(u64),
    #[error("database error: {0}")]
    Sql(#[from] sqlx::Error),
}

/// The running ingest.
#[derive(Debug, Clone)]
pub struct Ingest {
    pub stats: Arc<IngestStats>,
    /// The hub's publishing client on the broker (acks; frames to devices).
    pub client: AsyncClient,
}

/// Starts ingest on `broker` (embedded or external); it stops when `stop` fires. `sink`
/// receives stored events.
pub fn start(
    broker: &BrokerTarget,
    db: Database,
    sink: Option<Arc<dyn EventSink>>,
    stop: CancellationToken,
) -> Result<Ingest, BrokerError> {
    let suffix = ulid::Ulid::new().to_string();
    let mut options = broker.options(&format!("reactor-hub-ingest-{suffix}"))?;
    options.set_keep_alive(Duration::from_secs(30));
    options.set_clean_session(true);
    let (client, mut events) = AsyncClient::new(options, 1_000);
    // Acks (and whatever else the hub publishes to devices) go through a client of their own,
    // whose event loop never waits for the workers: when the workers fall behind, the
    // receiving loop stops reading (back-pressure on the broker) while acks keep flowing —
    // otherwise acks queue behind the back-pressure, are dropped, and devices resend into an
    // ingest that is already behind.
    let mut publisher_options = broker.options(&format!("reactor-hub-publish-{suffix}"))?;
    publisher_options.set_keep_alive(Duration::from_secs(30));
    publisher_options.set_clean_session(true);
    let (publisher, mut publisher_events) = AsyncClient::new(publisher_options, 10_000);
    let publisher_stop = stop.clone();
    tokio::spawn(async move {
        loop {
            let event = tokio::select! {
                () = publisher_stop.cancelled() => break,
                event = publisher_events.poll() => event,
            };
            if let Err(error) = event {
                tracing::warn!(%error, "the fleet publisher lost the broker; reconnecting");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    });
    let stats = Arc::new(IngestStats::default());
    let worker = Arc::new(Worker {
        db,
        sink,
        client: publisher.clone(),
        stats: stats.clone(),
    });
    let mut shards = Vec::with_capacity(SHARDS);
    for _ in 0..SHARDS {
        let (tx, mut rx) = mpsc::channel::<(String, bytes::Bytes)>(QUEUE);
        shards.push(tx);
        let worker = worker.clone();
        tokio::spawn(async move {
            while let Some((topic, payload)) = rx.recv().await {
                worker.handle(&topic, &payload).await;
            }
        });
    }
    let subscriber = client.clone();
    let loop_stop = stop.clone();
    tokio::spawn(async move {
        loop {
            let event = tokio::select! {
                () = loop_stop.cancelled() => break,
                event = events.poll() => event,
            };
            match event {
                Ok(MqttEvent::Incoming(Packet::ConnAck(_))) => {
                    for channel in [Channel::Status, Channel::Events, Channel::Executions] {
                        if let Err(error) = subscriber
                            .subscribe(channel.hub_filter(), QoS::AtLeastOnce)
                            .await
                        {
                            tracing::error!(%error, "ingest could not subscribe");
                        }
                    }
                    tracing::info!("fleet ingest connected to the broker");
                }
                Ok(MqttEvent::Incoming(Packet::Publish(publish))) => {
                    let shard = shard_of(&publish.topic);
                    if shards[shard]
                        .send((publish.topic.clone(), publish.payload))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(%error, "fleet ingest lost the broker; reconnecting");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        let _ = subscriber.try_disconnect();
    });
    let sweeper = worker.clone();
    tokio::spawn(async move {
        loop {
            if let Err(error) = sweeper.sweep(SWEEP_AFTER).await {
                tracing::warn!(%error, "routing undelivered device events failed");
            }
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(SWEEP_EVERY) => {}
            }
        }
    });
    Ok(Ingest {
        stats,
        client: publisher,
    })
}

/// The worker a topic's device goes to (by the device level of the topic).
fn shard_of(topic: &str) -> usize {
    let device = topic.split('/').nth(3).unwrap_or(topic);
    let mut hasher = DefaultHasher::new();
    device.hash(&mut hasher);
    usize::try_from(hasher.finish() % SHARDS as u64).unwrap_or(0)
}

/// The device's `acked_seq` and labels (JSON) inside transaction `$tx`, locking the row on
/// PostgreSQL (`$lock`: `" FOR UPDATE"` or `""`). `None` for an unknown device.
macro_rules! device_row {
    ($tx:expr, $device:expr, $lock:expr) => {{
        let sql = format!(
            "SELECT acked_seq, labels FROM devices WHERE id = $1{}",
            $lock
        );
        match sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind($device.as_str())
            .fetch_optional(&mut *$tx)
            .await?
        {
            None => None,
            Some(row) => {
                let acked: i64 = row.try_get(0)?;
                let labels: String = row.try_get(1)?;
                Some((
                    acked,
                    serde_json::from_str::<Value>(&labels).unwrap_or(Value::Null),
                ))
            }
        }
    }};
}

/// The highest `H ≥ acked` such that every seq in `acked + 1 ..= H` is stored (event or
/// execution) or covered by a gap notice; saves it with the last-seen time `$now`.
macro_rules! advance {
    ($tx:expr, $device:expr, $acked:expr, $now:expr) => {{
        let gaps: Vec<(i64, i64)> = sqlx::query(
            "SELECT seq_from, seq_to FROM device_gaps WHERE device_id = $1 AND seq_to > $2 \
             ORDER BY seq_from",
        )
        .bind($device.as_str())
        .bind($acked)
        .fetch_all(&mut *$tx)
        .await?
        .iter()
        .map(|row| Ok::<_, sqlx::Error>((row.try_get(0)?, row.try_get(1)?)))
        .collect::<Result<_, _>>()?;
        let mut highest: i64 = $acked;
        loop {
            let seqs: Vec<i64> = sqlx::query(
                "SELECT seq FROM device_events WHERE device_id = $1 AND seq > $2 \
                 UNION ALL SELECT seq FROM device_executions WHERE device_id = $1 AND seq > $2 \
                 ORDER BY seq LIMIT $3",
            )
            .bind($device.as_str())
            .bind(highest)
            .bind(ADVANCE_PAGE)
            .fetch_all(&mut *$tx)
            .await?
            .iter()
            .map(|row| row.try_get(0))
            .collect::<Result<_, _>>()?;
            let full = seqs.len() as i64 == ADVANCE_PAGE;
            let (reached, exhausted) = walk(highest, &seqs, &gaps);
            let moved = reached != highest;
            highest = reached;
            if !(full && moved && exhausted) {
                break;
            }
        }
        sqlx::query("UPDATE devices SET acked_seq = $2, last_seen = $3 WHERE id = $1")
            .bind($device.as_str())
            .bind(highest)
            .bind($now)
            .execute(&mut *$tx)
            .await?;
        highest
    }};
}

/// Walks `seqs` (sorted) and `gaps` up from `highest` while the next seq is present; returns
/// the last contiguous seq and whether every seq of the page was consumed.
fn walk(mut highest: i64, seqs: &[i64], gaps: &[(i64, i64)]) -> (i64, bool) {
    let mut next = seqs.iter().copied().peekable();
    loop {
        while next.next_if(|&seq| seq <= highest).is_some() {}
        if next.next_if_eq(&(highest + 1)).is_some() {
            highest += 1;
            continue;
        }
        if let Some(&(_, to)) = gaps
            .iter()
            .find(|&&(from, to)| from <= highest + 1 && to > highest)
        {
            highest = to;
            continue;
        }
        break;
    }
    (highest, next.peek().is_none())
}

struct Worker {
    db: Database,
    sink: Option<Arc<dyn EventSink>>,
    client: AsyncClient,
    stats: Arc<IngestStats>,
}

impl Worker {
    async fn handle(&self, topic: &str, payload: &[u8]) {
        let refuse = |why: &dyn std::fmt::Display| {
            self.stats.refused.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%topic, reason = %why, "device frame refused");
        };
        let (device, channel) = match reactor_core::sync::parse_topic(topic) {
            Ok(parsed) => parsed,
            Err(error) => return refuse(&error),
        };
        let envelope = match decode(payload) {
            Ok(Frame::Message(envelope)) => envelope,
            Ok(Frame::Unsupported(unsupported)) => {
                self.stats.unsupported.fetch_add(1, Ordering::Relaxed);
                tracing::info!(device = %device, version = unsupported.version, kind = unsupported.kind, "unsupported frame skipped");
                return;
            }
            Err(error) => return refuse(&error),
        };
        if envelope.kind().channel() != channel {
            return refuse(&format!("{:?} on {channel}", envelope.kind()));
        }
        let seq = envelope.seq;
        let result = match envelope.message {
            Message::Status(status) => self.status(&device, seq, &status).await.map(|_| None),
            Message::EventBatch(batch) => self.events(&device, batch.first, &batch.events).await,
            Message::ExecutionBatch(batch) => {
                self.executions(&device, batch.first, &batch.executions)
                    .await
            }
            Message::Gap(gap) => self.gap(&device, &gap).await,
            Message::CommandResult(result) => {
                self.stats.command_results.fetch_add(1, Ordering::Relaxed);
                tracing::info!(device = %device, command = %seq, outcome = ?result.outcome, "command result");
                super::commands::record_result(&self.db, device.as_str(), seq.0, &result)
                    .await
                    .map(|_| None)
                    .map_err(IngestError::from)
            }
            other => return refuse(&format!("{:?} is not sent by devices", other.kind())),
        };
        match result {
            Ok(Some(highest)) => self.ack(&device, highest),
            Ok(None) => {}
            Err(IngestError::Sql(error)) => {
                tracing::warn!(device = %device, %error, "storing a device frame failed; the device will resend");
            }
            Err(error) => refuse(&error),
        }
    }

    /// Publishes `Ack { highest }` (not retained; a lost ack costs a resend).
    fn ack(&self, device: &DeviceId, highest: i64) {
        let Ok(highest) = u64::try_from(highest) else {
            return;
        };
        if highest == 0 {
            return;
        }
        let envelope = Envelope::new(
            Seq(highest),
            Message::Ack(Ack {
                highest: Seq(highest),
            }),
        );
        match encode(&envelope) {
            Ok(frame) => {
                match self.client.try_publish(
                    device.topic(Channel::Ack),
                    QoS::AtLeastOnce,
                    false,
                    frame,
                ) {
                    Ok(()) => {
                        self.stats.acks_sent.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(error) => {
                        tracing::debug!(device = %device, %error, "ack not sent (the device resends)");
                    }
                }
            }
            Err(error) => tracing::error!(%error, "an ack did not encode"),
        }
    }

    async fn status(
        &self,
        device: &DeviceId,
        seq: Seq,
        status: &Status,
    ) -> Result<(), IngestError> {
        self.stats.statuses.fetch_add(1, Ordering::Relaxed);
        let seq = db_seq(seq)?;
        let online = i64::from(status.presence == Presence::Online);
        let bundle = match status.bundle_version {
            Some(version) => Some(db_seq(Seq(version))?),
            None => None,
        };
        let now = Timestamp::now().millis();
        let health = status.health;
        on_pool!(&self.db, pool => {
            sqlx::query(
                "UPDATE devices SET online = $2, status_seq = $3, agent_version = $4, \
                 bundle_version = $5, health_failed = $6, health_total = $7, health_window = $8, \
                 last_seen = $9 WHERE id = $1 AND status_seq < $3",
            )
            .bind(device.as_str())
            .bind(online)
            .bind(seq)
            .bind(&status.agent_version)
            .bind(bundle)
            .bind(i64::from(health.executions_failed))
            .bind(i64::from(health.executions_total))
            .bind(i64::from(health.window_secs))
            .bind(now)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Stores an event batch; returns the seq to ack (`None`: unknown device).
    async fn events(
        &self,
        device: &DeviceId,
        first: Seq,
        events: &[DeviceEvent],
    ) -> Result<Option<i64>, IngestError> {
        let first = db_seq(first)?;
        db_seq(Seq(first as u64 + events.len() as u64))?;
        let now = Timestamp::now().millis();
        let (highest, stored, labels) = on_pool!(&self.db, pool => {
            let mut tx = crate::db::begin_write(pool).await?;
            let Some((acked, labels)) = device_row!(tx, device, lock_clause(&self.db)) else {
                return Ok(None);
            };
            let stored = insert_events!(tx, device, first, events, now);
            let highest = advance!(tx, device, acked, now);
            tx.commit().await?;
            (highest, stored, labels)
        });
        self.stats
            .duplicates
            .fetch_add((events.len() - stored.len()) as u64, Ordering::Relaxed);
        self.stats
            .events_stored
            .fetch_add(stored.len() as u64, Ordering::Relaxed);
        if self.sink.is_some() {
            let fresh = stored
                .iter()
                .filter_map(|&seq| {
                    let event = events.get(usize::try_from(seq - first).ok()?)?;
                    Some(Fresh {
                        seq,
                        event: hub_event(device, &labels, seq, event),
                    })
                })
                .collect();
            self.route(device, fresh).await;
        }
        Ok(Some(highest))
    }

    /// Stores an execution batch; returns the seq to ack.
    async fn executions(
        &self,
        device: &DeviceId,
        first: Seq,
        executions: &[ExecutionReport],
    ) -> Result<Option<i64>, IngestError> {
        let first = db_seq(first)?;
        db_seq(Seq(first as u64 + executions.len() as u64))?;
        let now = Timestamp::now().millis();
        let rows: Vec<(&ExecutionReport, String)> = executions
            .iter()
            .map(|report| {
                let trace =
                    serde_json::to_string(&trace_json(report)).unwrap_or_else(|_| "[]".into());
                (report, trace)
            })
            .collect();
        let (highest, stored) = on_pool!(&self.db, pool => {
            let mut tx = crate::db::begin_write(pool).await?;
            let Some((acked, _)) = device_row!(tx, device, lock_clause(&self.db)) else {
                return Ok(None);
            };
            let stored = insert_executions!(tx, device, first, rows, now);
            let highest = advance!(tx, device, acked, now);
            tx.commit().await?;
            (highest, stored)
        });
        self.stats
            .duplicates
            .fetch_add(executions.len() as u64 - stored, Ordering::Relaxed);
        self.stats
            .executions_stored
            .fetch_add(stored, Ordering::Relaxed);
        Ok(Some(highest))
    }

    /// Records a gap notice; returns the seq to ack.
    async fn gap(&self, device: &DeviceId, gap: &GapNotice) -> Result<Option<i64>, IngestError> {
        let (from, to) = (db_seq(gap.from)?, db_seq(gap.to)?);
        let count = i64::try_from(gap.count).map_err(|_| IngestError::SeqRange(gap.count))?;
        let now = Timestamp::now().millis();
        let highest = on_pool!(&self.db, pool => {
            let mut tx = crate::db::begin_write(pool).await?;
            let Some((acked, _)) = device_row!(tx, device, lock_clause(&self.db)) else {
                return Ok(None);
            };
            let inserted = sqlx::query(
                "INSERT INTO device_gaps (device_id, seq_from, seq_to, reason, dropped, received_at) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (device_id, seq_from) DO NOTHING",
            )
            .bind(device.as_str())
            .bind(from)
            .bind(to)
            .bind(gap_reason(gap.reason))
            .bind(count)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            if inserted.rows_affected() == 1 {
                self.stats.gaps.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(device = %device, from, to, dropped = count, reason = gap_reason(gap.reason), "device reported dropped records");
            }
            let highest = advance!(tx, device, acked, now);
            tx.commit().await?;
            highest
        });
        Ok(Some(highest))
    }
}

/// Row locking for [`device_row!`]: PostgreSQL locks the device row (several hubs may share
/// the database); SQLite transactions are serialised already.
fn lock_clause(db: &Database) -> &'static str {
    match db {
        Database::Postgres(_) => " FOR UPDATE",
        Database::Sqlite(_) => "",
    }
}

/// A seq as the database stores it (`BIGINT`).
fn db_seq(seq: Seq) -> Result<i64, IngestError> {
    i64::try_from(seq.0).map_err(|_| IngestError::SeqRange(seq.0))
}

fn outcome_name(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Running => "running",
        Outcome::Succeeded => "succeeded",
        Outcome::Failed => "failed",
        Outcome::Cancelled => "cancelled",
        Outcome::Skipped => "skipped",
    }
}

fn gap_reason(reason: GapReason) -> &'static str {
    match reason {
        GapReason::OutboxFull => "outbox_full",
        GapReason::Expired => "expired",
        GapReason::Corrupt => "corrupt",
    }
}

fn trace_json(report: &ExecutionReport) -> Value {
    Value::Array(
        report
            .trace
            .iter()
            .map(|step| {
                serde_json::json!({
                    "step": step.step,
                    "outcome": outcome_name(step.outcome),
                    "started_at": step.started_at.millis(),
                    "finished_at": step.finished_at.map(Timestamp::millis),
                    "attempts": step.attempts,
                    "error": step.error,
                })
            })
            .collect(),
    )
}

/// Per-device stored counts (events, executions, gaps), for tests and diagnostics.
pub async fn counts(
    db: &Database,
    device: &str,
) -> Result<HashMap<&'static str, i64>, sqlx::Error> {
    let mut out = HashMap::new();
    for (name, table) in [
        ("events", "device_events"),
        ("executions", "device_executions"),
        ("gaps", "device_gaps"),
    ] {
        let sql = format!("SELECT COUNT(*) FROM {table} WHERE device_id = $1");
        let count: i64 = on_pool!(db, pool => {
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(device)
                .fetch_one(pool)
                .await?
                .try_get(0)?
        });
        out.insert(name, count);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::walk;

    #[test]
    fn walk_stops_at_holes_and_crosses_gaps() {
        assert_eq!(walk(0, &[1, 2, 3], &[]), (3, true));
        assert_eq!(walk(0, &[2, 3], &[]), (0, false));
        assert_eq!(walk(0, &[1, 2, 6, 7], &[(3, 5)]), (7, true));
        assert_eq!(walk(0, &[1, 2, 9], &[(3, 5)]), (5, false));
        // Seqs at or below the start are skipped; overlapping gaps are fine.
        assert_eq!(walk(4, &[3, 4, 5], &[(1, 8)]), (8, true));
        assert_eq!(walk(0, &[], &[(1, 4), (5, 6)]), (6, true));
    }
}
