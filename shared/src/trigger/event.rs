//! The internal event bus: `emit` steps (and, on the hub, events streamed from devices) start
//! every workflow whose `event` trigger matches.
//!
//! [`EventRouter`] is the runtime's [`EventBus`]. It is built before the [`Runtime`] (which
//! takes the bus at construction), then [`EventRouter::attach`]ed to it. The runtime itself
//! offers each emitted event to local `wait` steps after `publish` returns.
//!
//! Matching: `type` is a glob over the event type, `source` (optional) a glob over the event
//! source (`reactor:workflow/<name>` for emits); `*` matches any run of characters, `?` one.
//! A workflow receives its own events when they match: a workflow that re-emits what it
//! matches loops, as it would in any event system.
//!
//! Overload policy: *block*, with a bound. `publish` submits to every matching workflow and
//! returns once each execution is durably recorded, so an `emit` step finishes only after
//! its events are safe (at-least-once: a failure part way makes the step fail and retry,
//! and the workflows that already got the event may get it again; `event.id` is the same
//! each time, for de-duplication). At most [`ROUTER_MAX_IN_FLIGHT`] publishes route at once;
//! the others wait. Because an emitting execution holds an execution slot while it waits
//! for slots for the executions it starts, a publish that cannot finish within
//! [`ROUTE_TIMEOUT`] fails with a retryable error instead of waiting forever: when every
//! slot is held by emitters, something must give.
//!
//! The runtime holds the router and the attached router holds the runtime: call
//! [`EventRouter::detach`] at shutdown to break the cycle.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Semaphore;

use crate::engine::machine::glob_match;
use crate::engine::{Event, EventBus, Runtime, SubmitError};
use crate::flow::{TriggerKind, TriggerSpec};
use crate::{Map, Value};

use super::{TriggerStats, WarnLimiter};

/// Publishes routed at once; more wait for a turn.
pub const ROUTER_MAX_IN_FLIGHT: usize = 256;
/// Longest a publish waits for a turn and for the runtime to record its executions.
pub const ROUTE_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug)]
struct Subscription {
    event_type: String,
    source: Option<String>,
    stats: Arc<TriggerStats>,
}

impl Subscription {
    fn matches(&self, event: &Event) -> bool {
        glob_match(&self.event_type, &event.event_type)
            && self
                .source
                .as_deref()
                .is_none_or(|pattern| glob_match(pattern, &event.source))
    }
}

/// Routes events to the workflows whose `event` triggers match.
pub struct EventRouter {
    runtime: RwLock<Option<Runtime>>,
    subscriptions: RwLock<HashMap<Arc<str>, Vec<Subscription>>>,
    forward: Option<Arc<dyn EventBus>>,
    in_flight: Semaphore,
    timeout: Duration,
    warn: WarnLimiter,
}

impl std::fmt::Debug for EventRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventRouter")
            .field("subscriptions", &self.subscriptions)
            .field("forward", &self.forward.is_some())
            .finish_non_exhaustive()
    }
}

impl Default for EventRouter {
    fn default() -> Self {
        EventRouter::new(None)
    }
}

impl EventRouter {
    /// A router with nothing attached. `forward` also receives every published event
    /// (MQTT for events with a topic, the hub link), after local routing.
    pub fn new(forward: Option<Arc<dyn EventBus>>) -> EventRouter {
        EventRouter {
            runtime: RwLock::new(None),
            subscriptions: RwLock::default(),
            forward,
            in_flight: Semaphore::new(ROUTER_MAX_IN_FLIGHT),
            timeout: ROUTE_TIMEOUT,
            warn: WarnLimiter::new(Duration::from_secs(60)),
        }
    }

    /// Overrides [`ROUTE_TIMEOUT`].
    pub fn with_timeout(mut self, timeout: Duration) -> EventRouter {
        self.timeout = timeout;
        self
    }

    /// Sets the runtime events are submitted to. Until then, published events reach no
    /// workflow (they are still forwarded).
    pub fn attach(&self, runtime: Runtime) {
        *self.runtime.write().unwrap_or_else(|p| p.into_inner()) = Some(runtime);
    }

    /// Forgets the runtime (shutdown), breaking the runtime ↔ router reference cycle.
    pub fn detach(&self) {
        self.runtime
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .take();
    }

    /// Installs the `event` triggers among `triggers` as `workflow`'s subscriptions,
    /// replacing the previous ones (hot reload). Other trigger types are ignored.
    pub fn replace(&self, workflow: &str, triggers: &[TriggerSpec]) {
        let subscriptions: Vec<Subscription> = triggers
            .iter()
            .filter_map(|t| match &t.kind {
                TriggerKind::Event { event_type, source } => Some(Subscription {
                    event_type: event_type.clone(),
                    source: source.clone(),
                    stats: Arc::default(),
                }),
                _ => None,
            })
            .collect();
        let mut table = self
            .subscriptions
            .write()
            .unwrap_or_else(|p| p.into_inner());
        if subscriptions.is_empty() {
            table.remove(workflow);
        } else {
            table.insert(Arc::from(workflow), subscriptions);
        }
    }

    pub fn remove(&self, workflow: &str) {
        self.subscriptions
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(workflow);
    }

    /// Counters per subscription: (workflow, type glob, stats).
    pub fn stats(&self) -> Vec<(Arc<str>, String, Arc<TriggerStats>)> {
        let table = self.subscriptions.read().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<_> = table
            .iter()
            .flat_map(|(wf, subs)| {
                subs.iter()
                    .map(|s| (wf.clone(), s.event_type.clone(), s.stats.clone()))
            })
            .collect();
        out.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        out
    }

    /// The workflows `event` goes to, each with the stats of its first matching trigger.
    fn targets(&self, event: &Event) -> Vec<(Arc<str>, Arc<TriggerStats>)> {
        let table = self.subscriptions.read().unwrap_or_else(|p| p.into_inner());
        let mut targets: Vec<_> = table
            .iter()
            .filter_map(|(wf, subs)| {
                subs.iter()
                    .find(|s| s.matches(event))
                    .map(|s| (wf.clone(), s.stats.clone()))
            })
            .collect();
        targets.sort_by(|a, b| a.0.cmp(&b.0));
        targets
    }

    /// Submits `event` to every matching workflow; returns how many were handed the event.
    /// Fails after trying all of them if any submission failed or the bound was hit.
    pub async fn route(&self, event: &Event) -> Result<usize, String> {
        let Some(runtime) = self
            .runtime
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        else {
            return Ok(0);
        };
        let targets = self.targets(event);
        if targets.is_empty() {
            return Ok(0);
        }
        let routing = async {
            let _turn = self
                .in_flight
                .acquire()
                .await
                .map_err(|_| "the event router is closed".to_string())?;
            let mut delivered = 0;
            let mut failure = None;
            for (workflow, stats) in targets {
                let submitted = runtime
                    .submit(&workflow, event.clone(), Value::Object(Map::new()))
                    .await;
                match submitted {
                    Ok(_) => {
                        stats.count_event();
                        delivered += 1;
                    }
                    // Removed between matching and submitting.
                    Err(SubmitError::UnknownWorkflow(_)) => {}
                    Err(error) => {
                        stats.record_error(&error.to_string());
                        if self.warn.allow() {
                            tracing::warn!(workflow = %workflow, trigger = "event", event_type = %event.event_type, %error, "routing an event failed");
                        }
                        failure = Some(format!("starting workflow {workflow}: {error}"));
                    }
                }
            }
            match failure {
                Some(message) => Err(message),
                None => Ok(delivered),
            }
        };
        tokio::time::timeout(self.timeout, routing)
            .await
            .unwrap_or_else(|_| {
                Err(format!(
                    "the runtime did not accept the event within {:?} (all execution slots busy)",
                    self.timeout
                ))
            })
    }
}

#[async_trait]
impl EventBus for EventRouter {
    async fn publish(&self, event: &Event, topic: Option<&str>) -> Result<(), String> {
        self.route(event).await?;
        if let Some(forward) = &self.forward {
            forward.publish(event, topic).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use serde_json::json;

    use super::*;
    use crate::action::builtin_registry;
    use crate::engine::{Environment, ExecutionStatus, RuntimeConfig};
    use crate::trigger::testing::{load, memory, wait_for};

    const EMITTER: &str = r#"
reactor: 1
name: shop
steps:
  - emit: { type: order.paid, data: { order: 42 } }
"#;

    const LISTENER: &str = r#"
reactor: 1
name: billing
triggers:
  - event: { type: "order.*" }
steps:
  - id: got
    action: transform
    with: { value: "${{ event.data.order }}" }
output: { order: "${{ event.data.order }}", type: "${{ event.type }}", source: "${{ event.source }}" }
"#;

    const ELSEWHERE: &str = r#"
reactor: 1
name: elsewhere
triggers:
  - event: { type: "order.*", source: "device:*" }
  - event: { type: "shipping.*" }
steps:
  - action: transform
    with: { value: 1 }
"#;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<(String, Option<String>)>>);

    #[async_trait]
    impl EventBus for Recorder {
        async fn publish(&self, event: &Event, topic: Option<&str>) -> Result<(), String> {
            self.0
                .lock()
                .unwrap()
                .push((event.event_type.clone(), topic.map(str::to_string)));
            Ok(())
        }
    }

    fn setup(forward: Option<Arc<dyn EventBus>>) -> (Arc<EventRouter>, Runtime) {
        let router = Arc::new(EventRouter::new(forward));
        let runtime = Runtime::new(
            memory(),
            builtin_registry(Default::default()),
            Environment::empty(),
            RuntimeConfig::default(),
        )
        .with_bus(router.clone());
        router.attach(runtime.clone());
        load(&runtime, &[EMITTER, LISTENER, ELSEWHERE]);
        for wf in runtime.workflows() {
            router.replace(wf.name.as_str(), &wf.triggers);
        }
        (router, runtime)
    }

    #[tokio::test]
    async fn emitted_event_starts_matching_workflows() {
        let recorder = Arc::new(Recorder::default());
        let (router, runtime) = setup(Some(recorder.clone()));
        let id = match runtime
            .submit("shop", Event::new("manual", "test", json!({})), json!({}))
            .await
            .unwrap()
        {
            crate::engine::Submission::Accepted(id) => id,
            other => panic!("{other:?}"),
        };
        let shop = runtime.wait(id).await.unwrap();
        assert_eq!(shop.status, ExecutionStatus::Succeeded);
        // The emit step finished only after billing's execution was recorded.
        let billing = wait_for(&runtime, "billing", 1, Duration::from_secs(5)).await;
        assert_eq!(billing.len(), 1);
        let done = runtime.wait(billing[0].id).await.unwrap();
        assert_eq!(done.status, ExecutionStatus::Succeeded);
        assert_eq!(done.output["order"], 42);
        assert_eq!(done.output["type"], "order.paid");
        assert_eq!(done.output["source"], "reactor:workflow/shop");
        assert!(
            crate::trigger::testing::executions(&runtime, "elsewhere")
                .await
                .is_empty()
        );
        assert_eq!(
            *recorder.0.lock().unwrap(),
            [("order.paid".to_string(), None)]
        );
        let stats = router.stats();
        let billing_stats = stats.iter().find(|(wf, _, _)| &**wf == "billing").unwrap();
        assert_eq!(billing_stats.2.snapshot().events, 1);
        router.detach();
        runtime.shutdown().await;
    }

    #[tokio::test]
    async fn a_publish_that_cannot_be_accepted_in_time_fails() {
        let router = Arc::new(EventRouter::new(None).with_timeout(Duration::from_millis(200)));
        let runtime = Runtime::new(
            memory(),
            builtin_registry(Default::default()),
            Environment::empty(),
            RuntimeConfig {
                max_running: 1,
                ..RuntimeConfig::default()
            },
        )
        .with_bus(router.clone());
        router.attach(runtime.clone());
        load(
            &runtime,
            &[LISTENER, "reactor: 1\nname: hog\nsteps:\n  - sleep: 30s\n"],
        );
        router.replace(
            "billing",
            &runtime.workflow("billing", None).unwrap().triggers,
        );
        runtime
            .submit("hog", Event::new("manual", "test", json!({})), json!({}))
            .await
            .unwrap();
        assert!(runtime.saturated());
        let event = Event::new("order.paid", "test", json!({ "order": 1 }));
        let error = router.route(&event).await.unwrap_err();
        assert!(error.contains("did not accept"), "{error}");
        router.detach();
        runtime.shutdown().await;
    }

    #[tokio::test]
    async fn source_globs_replace_and_remove() {
        let (router, runtime) = setup(None);
        let event = Event::new("order.paid", "device:pump-1", json!({ "order": 7 }));
        assert_eq!(router.route(&event).await.unwrap(), 2);
        let other = Event::new("shipping.sent", "reactor:workflow/x", json!(null));
        assert_eq!(router.route(&other).await.unwrap(), 1);
        router.remove("elsewhere");
        assert_eq!(router.route(&event).await.unwrap(), 1);
        let billing = runtime.workflow("billing", None).unwrap();
        router.replace("billing", &[]);
        assert_eq!(router.route(&event).await.unwrap(), 0);
        router.replace("billing", &billing.triggers);
        assert_eq!(router.route(&event).await.unwrap(), 1);
        router.detach();
        assert_eq!(router.route(&event).await.unwrap(), 0);
        runtime.shutdown().await;
    }
}
