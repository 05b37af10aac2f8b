//! `cron` triggers: fire at each tick of a 6-field schedule (seconds first) in a time zone.
//!
//! Event: type `cron`, id `cron:<workflow>:<tick ms>` (the same for the same tick, so a
//! workflow can de-duplicate), source `reactor:cron`, data `{scheduled: RFC 3339 in the
//! trigger's zone, tick: n}` where `n` counts this run's events from 1, meta `{schedule,
//! timezone, catch_up, missed?}`.
//!
//! Durable catch-up policy:
//! - The last fired tick is stored with `StoreWrite::PutMeta` under
//!   `trigger/cron/<workflow>/<timezone>/<normalized schedule>`. Keying by the schedule
//!   rather than the trigger's position keeps the mark when triggers are reordered, and
//!   drops it when the schedule changes (a new schedule owes nothing for the old one).
//! - On the first start (no mark) the current time is stored as the mark and nothing fires.
//! - On a later start, if ticks came due while the trigger was not running, ONE catch-up
//!   event fires for the most recent of them, with `meta.catch_up = true` and
//!   `meta.missed` = how many ticks it stands for. Never a storm.
//! - The same happens while running when a tick is late by more than one period (the
//!   runtime blocked `submit` for a long time, the clock jumped): the due ticks coalesce.
//! - Order: submit with a de-dup mark for the tick (written with the execution), then write the
//!   last-tick mark, then drop the de-dup mark.
//!   A crash between the first two writes makes the restarted trigger (or the hub's next
//!   leader) see that tick as due again; its de-dup mark skips it: each tick starts **one**
//!   execution. A tick whose last-tick mark is written is never due again: the schedule
//!   restarts strictly after the mark.
//! - Sleeps are capped at [`MAX_SLEEP`] and the wall clock is re-read after each, so clock
//!   corrections and suspends are noticed within that time.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};
use serde_json::json;

use crate::engine::{DedupeMark, Event, SubmitError};
use crate::flow::CronTrigger;
use crate::store::StoreWrite;

use super::cron_tz::Zone;
use super::{Trigger, TriggerContext, TriggerError};

/// Longest single sleep before the wall clock is read again.
pub const MAX_SLEEP: Duration = Duration::from_secs(30);
/// Counting missed ticks stops here (a per-second schedule down for a day); `meta.missed`
/// then says at least this many.
const MAX_COUNTED: u64 = 100_000;

/// A running `cron` trigger.
#[derive(Debug)]
pub struct CronSchedule {
    settings: CronTrigger,
    schedule: cron::Schedule,
    timezone: Zone,
}

impl CronSchedule {
    pub fn new(settings: &CronTrigger) -> Result<CronSchedule, TriggerError> {
        let schedule = cron::Schedule::from_str(&settings.normalized).map_err(|e| {
            TriggerError::Settings(format!("cron schedule {:?}: {e}", settings.schedule))
        })?;
        // Read from the device's zoneinfo (see `cron_tz`): a zone removed since validation
        // is refused here with the same message.
        let timezone =
            Zone::named(&settings.timezone).map_err(|e| TriggerError::Settings(e.to_string()))?;
        Ok(CronSchedule {
            settings: settings.clone(),
            schedule,
            timezone,
        })
    }

    /// The store key of the last fired tick.
    pub fn mark_key(&self, workflow: &str) -> String {
        format!(
            "trigger/cron/{workflow}/{}/{}",
            self.settings.timezone, self.settings.normalized
        )
    }

    /// The ticks in (`after`, `until`]: how many (capped) and the latest.
    fn due(&self, after: DateTime<Utc>, until: DateTime<Utc>) -> (u64, Option<DateTime<Utc>>) {
        let mut count = 0;
        let mut latest = None;
        for tick in self.schedule.after(&after.with_timezone(&self.timezone)) {
            let tick = tick.with_timezone(&Utc);
            if tick > until || count >= MAX_COUNTED {
                break;
            }
            count += 1;
            latest = Some(tick);
        }
        if count >= MAX_COUNTED {
            // Too many to walk: the latest is the last tick before `until`, found by
            // stepping back from it.
            latest = self
                .schedule
                .after(&(until - chrono::Duration::days(1)).with_timezone(&self.timezone))
                .map(|t| t.with_timezone(&Utc))
                .take_while(|t| *t <= until)
                .last()
                .or(latest);
        }
        (count, latest)
    }

    async fn read_mark(&self, context: &TriggerContext, key: &str) -> Option<DateTime<Utc>> {
        match context.runtime.store().meta(key).await {
            Ok(Some(bytes)) => {
                let millis = <[u8; 8]>::try_from(bytes.as_slice())
                    .ok()
                    .map(i64::from_be_bytes);
                let mark = millis.and_then(|m| Utc.timestamp_millis_opt(m).single());
                if mark.is_none() {
                    tracing::warn!(workflow = %context.workflow, trigger = "cron", key, "ignoring an unreadable cron mark");
                }
                mark
            }
            Ok(None) => None,
            Err(error) => {
                tracing::warn!(workflow = %context.workflow, trigger = "cron", %error, "reading the cron mark failed; no catch-up");
                None
            }
        }
    }

    /// Stores `tick` as the last fired one; `false` when the store refused it (logged).
    async fn write_mark(&self, context: &TriggerContext, key: &str, tick: DateTime<Utc>) -> bool {
        let write = StoreWrite::PutMeta {
            key: key.to_string(),
            value: Some(tick.timestamp_millis().to_be_bytes().to_vec()),
        };
        match context.runtime.store().write(vec![write]).await {
            Ok(()) => true,
            Err(error) => {
                context.stats.record_error(&error.to_string());
                tracing::warn!(workflow = %context.workflow, trigger = "cron", %error, "storing the cron mark failed; the tick may fire again after a restart");
                false
            }
        }
    }

    /// `missed`: `Some(count)` for a catch-up event standing for `count` due ticks.
    fn event(&self, workflow: &str, tick: DateTime<Utc>, n: u64, missed: Option<u64>) -> Event {
        let scheduled = tick
            .with_timezone(&self.timezone)
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let mut event = Event::new(
            "cron",
            "reactor:cron",
            json!({ "scheduled": scheduled, "tick": n }),
        );
        event.id = format!("cron:{workflow}:{}", tick.timestamp_millis());
        event.meta = json!({
            "schedule": self.settings.schedule,
            "timezone": self.settings.timezone,
            "catch_up": missed.is_some(),
        });
        if let Some(missed) = missed {
            event.meta["missed"] = json!(missed);
        }
        event
    }

    /// Submits the event for `tick`, then stores the mark. `Ok(false)`: the runtime is
    /// shutting down.
    async fn fire(
        &self,
        context: &TriggerContext,
        key: &str,
        event: Event,
        tick: DateTime<Utc>,
    ) -> Result<bool, TriggerError> {
        // The tick's de-dup mark is written with its execution, so a process that dies
        // between the two writes (or a new leader catching up on the same tick) cannot fire it
        // twice; once the last-tick mark covers it, the de-dup mark is dropped.
        let once = format!("cron/{}", tick.timestamp_millis());
        let mark = DedupeMark::new(once.clone(), json!(tick.to_rfc3339()));
        match context.submit_once(event, mark).await {
            Ok(_) => {
                if self.write_mark(context, key, tick).await
                    && let Err(error) = context
                        .runtime
                        .forget_marks(&context.workflow, &[once])
                        .await
                {
                    tracing::warn!(workflow = %context.workflow, trigger = "cron", %error, "dropping the tick's de-dup mark failed; it is pruned with old marks");
                }
                Ok(true)
            }
            Err(SubmitError::ShuttingDown) => Ok(false),
            Err(error) => Err(TriggerError::Source(format!(
                "submitting the cron event: {error}"
            ))),
        }
    }
}

#[async_trait]
impl Trigger for CronSchedule {
    fn kind(&self) -> &'static str {
        "cron"
    }

    async fn run(self: Box<Self>, context: TriggerContext) -> Result<(), TriggerError> {
        let workflow = context.workflow.clone();
        let key = self.mark_key(&workflow);
        let mut fired: u64 = 0;
        let start = Utc::now();
        let mut cursor = match self.read_mark(&context, &key).await {
            None => {
                self.write_mark(&context, &key, start).await;
                start
            }
            Some(mark) => match self.due(mark, start) {
                (count, Some(latest)) => {
                    tracing::info!(workflow = %workflow, trigger = "cron", missed = count, "firing one catch-up event for the ticks missed while stopped");
                    fired += 1;
                    let event = self.event(&workflow, latest, fired, Some(count));
                    if !self.fire(&context, &key, event, latest).await? {
                        return Ok(());
                    }
                    latest
                }
                (_, None) => mark.max(start),
            },
        };
        loop {
            let Some(next) = self
                .schedule
                .after(&cursor.with_timezone(&self.timezone))
                .next()
            else {
                tracing::info!(workflow = %workflow, trigger = "cron", "the schedule has no further ticks");
                context.cancel.cancelled().await;
                return Ok(());
            };
            let next = next.with_timezone(&Utc);
            loop {
                let wait = (next - Utc::now()).to_std().unwrap_or(Duration::ZERO);
                if wait.is_zero() {
                    break;
                }
                tokio::select! {
                    biased;
                    // Cancel-safe: nothing is in flight while sleeping.
                    () = context.cancel.cancelled() => return Ok(()),
                    () = tokio::time::sleep(wait.min(MAX_SLEEP)) => {}
                }
            }
            if context.cancel.is_cancelled() {
                return Ok(());
            }
            // Late by more than a period: coalesce what came due into one event.
            let (count, latest) = self.due(cursor, Utc::now());
            let tick = latest.unwrap_or(next);
            fired += 1;
            let missed = (count > 1).then_some(count);
            if missed.is_some() {
                tracing::info!(workflow = %workflow, trigger = "cron", missed = count, "ticks came due while blocked; firing once");
            }
            let event = self.event(&workflow, tick, fired, missed);
            // Not raced against cancel: submit returns once the execution is recorded, and
            // stopping half way would lose the mark of a tick that was submitted.
            if !self.fire(&context, &key, event, tick).await? {
                return Ok(());
            }
            cursor = tick;
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::flow::TriggerKind;
    use crate::trigger::testing::{memory, runtime, started_events, wait_for};

    fn workflow(schedule: &str) -> String {
        format!(
            r#"
reactor: 1
name: ticker
triggers:
  - cron: "{schedule}"
steps:
  - id: echo
    action: transform
    with: {{ value: 1 }}
"#
        )
    }

    fn trigger(runtime: &crate::engine::Runtime) -> CronSchedule {
        let wf = runtime.workflow("ticker", None).unwrap();
        match &wf.triggers[0].kind {
            TriggerKind::Cron(c) => CronSchedule::new(c).unwrap(),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn fires_every_second_with_real_time() {
        let runtime = runtime(memory(), &[&workflow("* * * * * *")]);
        let cron = trigger(&runtime);
        let key = cron.mark_key("ticker");
        let context = TriggerContext::new("ticker", runtime.clone(), CancellationToken::new());
        let cancel = context.cancel.clone();
        let task = tokio::spawn(Box::new(cron).run(context));
        let list = wait_for(&runtime, "ticker", 2, Duration::from_millis(2600)).await;
        cancel.cancel();
        task.await.unwrap().unwrap();
        assert!(list.len() >= 2, "{} executions", list.len());
        let events = started_events(&runtime, "ticker").await;
        assert_eq!(events[0].event_type, "cron");
        assert_eq!(events[0].data["tick"], 1);
        assert_eq!(events[1].data["tick"], 2);
        assert_eq!(events[0].meta["catch_up"], false);
        assert_eq!(events[0].meta["timezone"], "UTC");
        let first = DateTime::parse_from_rfc3339(events[0].data["scheduled"].as_str().unwrap())
            .unwrap()
            .with_timezone(&Utc);
        let second = DateTime::parse_from_rfc3339(events[1].data["scheduled"].as_str().unwrap())
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!((second - first).num_seconds(), 1);
        assert_eq!(
            events[0].id,
            format!("cron:ticker:{}", first.timestamp_millis())
        );
        let mark = runtime.store().meta(&key).await.unwrap().unwrap();
        assert!(i64::from_be_bytes(mark.try_into().unwrap()) >= second.timestamp_millis());
        runtime.shutdown().await;
    }

    async fn run_briefly(runtime: &crate::engine::Runtime) {
        let context = TriggerContext::new("ticker", runtime.clone(), CancellationToken::new());
        let cancel = context.cancel.clone();
        let task = tokio::spawn(Box::new(trigger(runtime)).run(context));
        tokio::time::sleep(Duration::from_millis(300)).await;
        cancel.cancel();
        task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn one_catch_up_event_for_ticks_missed_while_down_and_never_twice() {
        let store = memory();
        // Hourly: the next real tick is almost surely more than the test's length away.
        let runtime = runtime(store.clone(), &[&workflow("0 0 * * * *")]);
        let key = trigger(&runtime).mark_key("ticker");
        let now = Utc::now().timestamp();
        let this_hour = now - now.rem_euclid(3600);
        // Just after the tick of five hours ago: five ticks came due since.
        let mark = Utc.timestamp_opt(this_hour - 5 * 3600 + 1, 0).unwrap();
        store
            .write(vec![StoreWrite::PutMeta {
                key: key.clone(),
                value: Some(mark.timestamp_millis().to_be_bytes().to_vec()),
            }])
            .await
            .unwrap();
        run_briefly(&runtime).await;
        let events = started_events(&runtime, "ticker").await;
        assert_eq!(events.len(), 1, "one catch-up event, not a storm");
        let event = &events[0];
        assert_eq!(event.meta["catch_up"], true);
        assert_eq!(event.meta["missed"], 5);
        let scheduled = DateTime::parse_from_rfc3339(event.data["scheduled"].as_str().unwrap())
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            scheduled.timestamp(),
            this_hour,
            "the most recent missed tick"
        );
        assert_eq!(event.id, format!("cron:ticker:{}", this_hour * 1000));
        // A restart right after: the mark covers that tick, nothing fires again.
        run_briefly(&runtime).await;
        assert_eq!(started_events(&runtime, "ticker").await.len(), 1);
        runtime.shutdown().await;
    }

    #[tokio::test]
    async fn first_start_stores_a_mark_and_fires_nothing() {
        let store = memory();
        let runtime = runtime(store.clone(), &[&workflow("0 0 * * * *")]);
        let key = trigger(&runtime).mark_key("ticker");
        run_briefly(&runtime).await;
        assert!(started_events(&runtime, "ticker").await.is_empty());
        assert!(store.meta(&key).await.unwrap().is_some());
        runtime.shutdown().await;
    }

    #[test]
    fn settings_errors_and_time_zones() {
        let bad = CronTrigger {
            schedule: "x".into(),
            normalized: "x".into(),
            timezone: "UTC".into(),
        };
        assert!(matches!(
            CronSchedule::new(&bad),
            Err(TriggerError::Settings(_))
        ));
        let zone = CronTrigger {
            schedule: "0 0 9 * * *".into(),
            normalized: "0 0 9 * * *".into(),
            timezone: "Europe/Paris".into(),
        };
        let cron = CronSchedule::new(&zone).unwrap();
        let after = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let until = Utc.with_ymd_and_hms(2026, 1, 3, 0, 0, 0).unwrap();
        let (count, latest) = cron.due(after, until);
        assert_eq!(count, 2);
        // 09:00 in Paris is 08:00 UTC in winter.
        assert_eq!(
            latest,
            Some(Utc.with_ymd_and_hms(2026, 1, 2, 8, 0, 0).unwrap())
        );
        let event = cron.event("w", latest.unwrap(), 3, None);
        assert_eq!(event.data["scheduled"], "2026-01-02T09:00:00+01:00");
        assert_eq!(event.meta["schedule"], "0 0 9 * * *");
    }
}
