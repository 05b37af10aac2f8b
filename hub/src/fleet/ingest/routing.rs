//! Stored device events into the hub's workflows: after a batch's commit, each newly stored
//! event goes to an [`EventSink`] (the hub's `event` triggers and waiting executions) as a hub
//! event with `meta.device` / `meta.device_labels` (the expression context's `device`), and
//! the delivered rows get `routed_at` in one statement. Events left undelivered (routing
//! failed, or the hub died between commit and routing) are routed again by the sweeper.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_trait::async_trait;
use reactor_core::Value;
use reactor_core::engine::{Event, Timestamp};
use reactor_core::sync::DeviceId;
use reactor_core::sync::messages::DeviceEvent;
use sqlx::Row;

use super::Worker;
use crate::fleet::records::mark_routed;
use crate::fleet::registry::on_pool;

/// Where stored device events go: the hub's `event` triggers (and waits).
#[async_trait]
pub trait EventSink: Send + Sync + 'static {
    /// Hands `event` to every matching workflow; an error leaves it for the sweeper.
    async fn deliver(&self, event: &Event) -> Result<(), String>;
}

/// The hub's workflows as an [`EventSink`]: `event` triggers start executions (as
/// `POST /api/v1/events` does) and executions waiting in a `wait` see the event.
#[derive(Debug, Clone)]
pub struct WorkflowSink(pub Arc<reactor_core::deploy::ActiveWorkflows>);

#[async_trait]
impl EventSink for WorkflowSink {
    async fn deliver(&self, event: &Event) -> Result<(), String> {
        self.0.events().route(event).await?;
        self.0.runtime().deliver(event).await;
        Ok(())
    }
}

/// An event stored by this call, to route after the commit.
pub(super) struct Fresh {
    pub(super) seq: i64,
    pub(super) event: Event,
}

impl Worker {
    /// Hands stored events to the workflows, then marks the delivered ones in one statement
    /// (an event not delivered, or not marked, is left for the sweeper).
    pub(super) async fn route(&self, device: &DeviceId, fresh: Vec<Fresh>) {
        let Some(sink) = &self.sink else {
            return;
        };
        let mut delivered = Vec::with_capacity(fresh.len());
        for Fresh { seq, event } in fresh {
            match sink.deliver(&event).await {
                Ok(()) => {
                    self.stats.routed.fetch_add(1, Ordering::Relaxed);
                    delivered.push(seq);
                }
                Err(error) => {
                    self.stats.route_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(device = %device, seq, %error, "a device event was not delivered; retried later");
                }
            }
        }
        if delivered.is_empty() {
            return;
        }
        let now = Timestamp::now().millis();
        let marked = on_pool!(&self.db, pool => mark_routed!(pool, device, delivered, now));
        if let Err(error) = marked {
            tracing::warn!(device = %device, events = delivered.len(), %error, "could not mark device events delivered");
        }
    }

    /// Routes stored events not delivered after `age` (failed, or the hub stopped between
    /// commit and routing).
    pub(super) async fn sweep(&self, age: Duration) -> Result<(), sqlx::Error> {
        if self.sink.is_none() {
            return Ok(());
        }
        let before = Timestamp::now().millis() - i64::try_from(age.as_millis()).unwrap_or(0);
        let rows = on_pool!(&self.db, pool => {
            sqlx::query(
                "SELECT e.device_id, e.seq, e.event_id, e.event_type, e.source, e.time, e.data, \
                 e.meta, d.labels FROM device_events e JOIN devices d ON d.id = e.device_id \
                 WHERE e.routed_at IS NULL AND e.received_at < $1 \
                 ORDER BY e.device_id, e.seq LIMIT 1000",
            )
            .bind(before)
            .fetch_all(pool)
            .await?
            .into_iter()
            .map(|row| {
                Ok::<_, sqlx::Error>((
                    row.try_get::<String, _>("device_id")?,
                    row.try_get::<i64, _>("seq")?,
                    row.try_get::<String, _>("event_id")?,
                    row.try_get::<String, _>("event_type")?,
                    row.try_get::<String, _>("source")?,
                    row.try_get::<i64, _>("time")?,
                    row.try_get::<String, _>("data")?,
                    row.try_get::<String, _>("meta")?,
                    row.try_get::<String, _>("labels")?,
                ))
            })
            .collect::<Result<Vec<_>, _>>()?
        });
        // Rows come ordered by device: route each device's run, marked in one statement.
        let mut run: Option<(DeviceId, Vec<Fresh>)> = None;
        for (device, seq, id, event_type, source, time, data, meta, labels) in rows {
            let Ok(device) = DeviceId::parse(&device) else {
                continue;
            };
            if let Some((current, fresh)) = run.take_if(|(current, _)| *current != device) {
                self.route(&current, fresh).await;
            }
            let labels: Value = serde_json::from_str(&labels).unwrap_or(Value::Null);
            let event = build_event(
                &device,
                &labels,
                seq,
                id,
                event_type,
                source,
                Timestamp(time),
                serde_json::from_str(&data).unwrap_or(Value::Null),
                serde_json::from_str(&meta).unwrap_or(Value::Null),
            );
            run.get_or_insert_with(|| (device, Vec::new()))
                .1
                .push(Fresh { seq, event });
        }
        if let Some((device, fresh)) = run {
            self.route(&device, fresh).await;
        }
        Ok(())
    }
}

pub(super) fn hub_event(device: &DeviceId, labels: &Value, seq: i64, event: &DeviceEvent) -> Event {
    build_event(
        device,
        labels,
        seq,
        event.id.clone(),
        event.event_type.clone(),
        event.source.clone(),
        event.time,
        event.data.to_value().unwrap_or(Value::Null),
        event.meta.to_value().unwrap_or(Value::Null),
    )
}

/// The hub-side event for a stored device event: the device's own attributes, and in `meta`
/// the device id and labels (what `device` shows expressions), its seq and its own meta.
#[allow(clippy::too_many_arguments)]
fn build_event(
    device: &DeviceId,
    labels: &Value,
    seq: i64,
    id: String,
    event_type: String,
    source: String,
    time: Timestamp,
    data: Value,
    meta: Value,
) -> Event {
    let labels = match labels {
        Value::Object(_) => labels.clone(),
        _ => Value::Object(reactor_core::Map::new()),
    };
    Event {
        id,
        event_type,
        source,
        time: time.to_rfc3339(),
        data,
        meta: serde_json::json!({
            "device": device.as_str(),
            "device_labels": labels,
            "device_seq": seq,
            "device_meta": meta,
        }),
    }
}
