//! `startup` triggers: fire once when the trigger starts, then idle until cancelled.
//!
//! Event: type `startup`, source `reactor:startup`, data `{}`. "Once when the runtime
//! starts" is the caller's half of the contract: start `startup` triggers when the process
//! starts, not again when a workflow is reloaded. The supervisor restarts this trigger only
//! if the submission failed, so the event is not lost and not repeated after success.

use async_trait::async_trait;
use serde_json::json;

use crate::engine::{Event, SubmitError};

use super::{Trigger, TriggerContext, TriggerError};

/// A running `startup` trigger.
#[derive(Debug, Default)]
pub struct Startup;

#[async_trait]
impl Trigger for Startup {
    fn kind(&self) -> &'static str {
        "startup"
    }

    async fn run(self: Box<Self>, context: TriggerContext) -> Result<(), TriggerError> {
        if context.cancel.is_cancelled() {
            return Ok(());
        }
        let event = Event::new("startup", "reactor:startup", json!({}));
        match context.submit(event).await {
            Ok(_) | Err(SubmitError::ShuttingDown) => {}
            Err(error) => {
                return Err(TriggerError::Source(format!(
                    "submitting the startup event: {error}"
                )));
            }
        }
        context.cancel.cancelled().await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::trigger::testing::{memory, runtime, wait_for};

    #[tokio::test]
    async fn fires_once() {
        let runtime = runtime(
            memory(),
            &[
                "reactor: 1\nname: boot\ntriggers: [startup]\nsteps:\n  - action: transform\n    with: { value: \"${{ event.type }}\" }\n",
            ],
        );
        let context = TriggerContext::new("boot", runtime.clone(), CancellationToken::new());
        let cancel = context.cancel.clone();
        let task = tokio::spawn(Box::new(Startup).run(context));
        let list = wait_for(&runtime, "boot", 1, Duration::from_secs(5)).await;
        assert_eq!(list.len(), 1);
        let done = runtime.wait(list[0].id).await.unwrap();
        assert_eq!(done.output, "startup");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(wait_for(&runtime, "boot", 2, Duration::ZERO).await.len(), 1);
        cancel.cancel();
        task.await.unwrap().unwrap();
        runtime.shutdown().await;
    }
}
