//! `interval` triggers: fire every `every`, the first time one period after the start.
//!
//! Event: type `interval`, source `reactor:interval`, data `{tick: n}` (counted from 1 for
//! each run of the trigger), meta `{every_ms}`. Not durable: a restart starts a new period.
//! Block policy: the next tick is not awaited while `submit` waits; ticks missed meanwhile
//! coalesce into one and the schedule shifts (`MissedTickBehavior::Delay`).

use std::time::Duration;

use async_trait::async_trait;
use serde_json::json;
use tokio::time::{Instant, MissedTickBehavior};

use crate::engine::{Event, SubmitError};

use super::{Trigger, TriggerContext, TriggerError};

/// A running `interval` trigger.
#[derive(Debug)]
pub struct Interval {
    every: Duration,
}

impl Interval {
    pub fn new(every: Duration) -> Result<Interval, TriggerError> {
        if every.is_zero() {
            return Err(TriggerError::Settings(
                "interval every must be longer than zero".into(),
            ));
        }
        Ok(Interval { every })
    }
}

#[async_trait]
impl Trigger for Interval {
    fn kind(&self) -> &'static str {
        "interval"
    }

    async fn run(self: Box<Self>, context: TriggerContext) -> Result<(), TriggerError> {
        let mut ticks = tokio::time::interval_at(Instant::now() + self.every, self.every);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let every_ms = u64::try_from(self.every.as_millis()).unwrap_or(u64::MAX);
        let mut n: u64 = 0;
        loop {
            tokio::select! {
                biased;
                // Cancel-safe: `Interval::tick` loses nothing when dropped.
                () = context.cancel.cancelled() => return Ok(()),
                _ = ticks.tick() => {}
            }
            n += 1;
            let mut event = Event::new("interval", "reactor:interval", json!({ "tick": n }));
            event.meta = json!({ "every_ms": every_ms });
            // Not raced against cancel: an event half submitted must finish being recorded.
            match context.submit(event).await {
                Ok(_) => {}
                Err(SubmitError::ShuttingDown) => return Ok(()),
                Err(error) => {
                    return Err(TriggerError::Source(format!(
                        "submitting the interval event: {error}"
                    )));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::trigger::testing::{executions, memory, runtime, wait_for};

    const TICKER: &str = r#"
reactor: 1
name: ticker
triggers:
  - interval: { every: 50ms }
steps:
  - action: transform
    with: { value: "${{ event.data.tick }}" }
"#;

    #[tokio::test]
    async fn fires_after_each_period() {
        let runtime = runtime(memory(), &[TICKER]);
        let context = TriggerContext::new("ticker", runtime.clone(), CancellationToken::new());
        let cancel = context.cancel.clone();
        let stats = context.stats.clone();
        let started = Instant::now();
        let task =
            tokio::spawn(Box::new(Interval::new(Duration::from_millis(50)).unwrap()).run(context));
        let list = wait_for(&runtime, "ticker", 3, Duration::from_secs(5)).await;
        let elapsed = started.elapsed();
        cancel.cancel();
        task.await.unwrap().unwrap();
        assert!(list.len() >= 3);
        // Three ticks, the first one period after the start.
        assert!(elapsed >= Duration::from_millis(150), "{elapsed:?}");
        let mut ticks = Vec::new();
        for record in executions(&runtime, "ticker").await {
            let done = runtime.wait(record.id).await.unwrap();
            ticks.push(done.output.as_u64().unwrap());
        }
        assert_eq!(ticks[..3], [1, 2, 3]);
        assert_eq!(stats.snapshot().events, ticks.len() as u64);
        runtime.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_before_the_first_period() {
        let runtime = runtime(memory(), &[TICKER]);
        let context = TriggerContext::new("ticker", runtime.clone(), CancellationToken::new());
        let cancel = context.cancel.clone();
        let stats = context.stats.clone();
        let task =
            tokio::spawn(Box::new(Interval::new(Duration::from_secs(3600)).unwrap()).run(context));
        tokio::time::sleep(Duration::from_secs(3599)).await;
        assert_eq!(stats.snapshot().events, 0);
        tokio::time::sleep(Duration::from_secs(2)).await;
        for _ in 0..100 {
            if stats.snapshot().events == 1 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(stats.snapshot().events, 1);
        cancel.cancel();
        task.await.unwrap().unwrap();
        assert!(Interval::new(Duration::ZERO).is_err());
    }
}
