//! The hub's trigger factory: which triggers run on every hub and which on the leader only.
//!
//! Several hubs on one PostgreSQL share the work. Triggers whose source hands each event to
//! one consumer of a group (Kafka, NATS, Redis consumer groups) or that belong to the process
//! (`startup`) run on every hub. Singleton triggers — `cron`, `interval`, the database
//! triggers (`postgres`, `mysql`: one replication slot or one poller), `mqtt` (a plain
//! subscription would deliver every message to every hub), `file`, plugins — run only on
//! the hub holding [`Leader`](crate::db::Leader)'s lock: [`LeaderGated`] waits for
//! leadership, runs the trigger while it lasts, and stops it when leadership is lost; the new
//! leader starts its own copy. `http` and `event` triggers have no task (the listener and the
//! event router serve them on every hub).
//!
//! Hand-over: cron keeps its last fired tick in the journal's meta table, which all hubs
//! share, so the new leader fires one catch-up event for the ticks missed during the
//! hand-over (DSL.md's catch-up rule) and never a tick the old leader already marked. A
//! leader killed between recording a tick's execution and writing its mark could have that
//! tick fired again by its successor — only when the successor takes over within the same
//! tick (the catch-up fires the *latest* due tick); the event id (`cron:<workflow>:<tick>`)
//! is the same, so a workflow can de-duplicate.

use std::sync::Arc;

use async_trait::async_trait;
use reactor_core::flow::{TriggerKind, TriggerSpec};
use reactor_core::trigger::{Trigger, TriggerContext, TriggerError, TriggerFactory};
use tokio::sync::watch;

use crate::db::Leadership;

/// Whether a trigger of this kind must run on one hub only.
pub fn singleton(kind: &TriggerKind) -> bool {
    !matches!(
        kind,
        TriggerKind::Http(_)
            | TriggerKind::Event { .. }
            | TriggerKind::Startup
            | TriggerKind::Kafka(_)
            | TriggerKind::Nats(_)
            | TriggerKind::Redis(_)
    )
}

/// Wraps a factory: the singleton triggers it builds run only while this hub leads.
pub struct LeaderTriggers {
    inner: Arc<dyn TriggerFactory>,
    leadership: watch::Receiver<Leadership>,
}

impl std::fmt::Debug for LeaderTriggers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaderTriggers")
            .field("leading", &self.leadership.borrow().leading)
            .finish_non_exhaustive()
    }
}

impl LeaderTriggers {
    /// Gates what `inner` builds on `leadership` ([`crate::db::Leader::watch`]).
    pub fn new(
        inner: Arc<dyn TriggerFactory>,
        leadership: watch::Receiver<Leadership>,
    ) -> LeaderTriggers {
        LeaderTriggers { inner, leadership }
    }
}

impl TriggerFactory for LeaderTriggers {
    fn build(
        &self,
        workflow: &str,
        index: usize,
        spec: &TriggerSpec,
    ) -> Result<Option<Box<dyn Trigger>>, TriggerError> {
        let Some(trigger) = self.inner.build(workflow, index, spec)? else {
            return Ok(None);
        };
        if !singleton(&spec.kind) {
            return Ok(Some(trigger));
        }
        Ok(Some(Box::new(LeaderGated {
            first: Some(trigger),
            rebuild: Rebuild {
                factory: self.inner.clone(),
                workflow: workflow.to_string(),
                index,
                spec: spec.clone(),
            },
            leadership: self.leadership.clone(),
        })))
    }
}

/// How to build the trigger again for the next term of leadership.
struct Rebuild {
    factory: Arc<dyn TriggerFactory>,
    workflow: String,
    index: usize,
    spec: TriggerSpec,
}

/// A singleton trigger that runs while this hub leads (see the module docs).
pub struct LeaderGated {
    first: Option<Box<dyn Trigger>>,
    rebuild: Rebuild,
    leadership: watch::Receiver<Leadership>,
}

impl std::fmt::Debug for LeaderGated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaderGated")
            .field("workflow", &self.rebuild.workflow)
            .field("index", &self.rebuild.index)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Trigger for LeaderGated {
    fn kind(&self) -> &'static str {
        self.first.as_ref().map_or("singleton", |t| t.kind())
    }

    async fn run(mut self: Box<Self>, context: TriggerContext) -> Result<(), TriggerError> {
        let mut leadership = self.leadership.clone();
        loop {
            // Wait to lead (or to be stopped).
            tokio::select! {
                biased;
                () = context.cancel.cancelled() => return Ok(()),
                led = async { leadership.wait_for(|l| l.leading).await.is_ok() } => {
                    if !led {
                        // The election ended (shutdown): no term will come.
                        context.cancel.cancelled().await;
                        return Ok(());
                    }
                }
            }
            let trigger = match self.first.take() {
                Some(trigger) => trigger,
                None => {
                    let r = &self.rebuild;
                    r.factory
                        .build(&r.workflow, r.index, &r.spec)?
                        .ok_or(TriggerError::Unsupported("singleton"))?
                }
            };
            tracing::info!(workflow = %context.workflow, trigger = trigger.kind(), "this hub leads: singleton trigger started");
            let term = context.cancel.child_token();
            let mut inner = context.clone();
            inner.cancel = term.clone();
            let mut running = Box::pin(trigger.run(inner));
            let lost = tokio::select! {
                result = &mut running => {
                    // Finished or failed on its own (the supervisor restarts a failure).
                    return result;
                }
                () = async {
                    // A closed channel (SQLite's fixed leadership, or shutdown) never changes.
                    if leadership.wait_for(|l| !l.leading).await.is_err() {
                        std::future::pending::<()>().await;
                    }
                } => true,
                () = context.cancel.cancelled() => false,
            };
            term.cancel();
            let result = running.await;
            if !lost {
                return result;
            }
            tracing::info!(workflow = %context.workflow, "leadership lost: singleton trigger stopped");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use reactor_core::action::builtin_registry;
    use reactor_core::engine::{Environment, Runtime, RuntimeConfig};
    use reactor_core::store::{MemoryStore, Store};
    use reactor_core::trigger::{LightTriggers, Supervisor};

    fn spec(text: &str) -> (reactor_core::flow::Workflow, TriggerSpec) {
        let workflow = reactor_core::dsl::parse_workflow("t.yaml", text).unwrap();
        let spec = workflow.triggers[0].clone();
        (workflow, spec)
    }

    #[test]
    fn which_kinds_are_singletons() {
        let kinds = [
            ("cron: \"* * * * * *\"", true),
            ("interval: { every: 1s }", true),
            ("startup", false),
            ("http: { path: /x }", false),
            ("event: { type: a.b }", false),
        ];
        for (trigger, expected) in kinds {
            let text = format!(
                "reactor: 1\nname: k\ntriggers:\n  - {trigger}\nsteps:\n  - action: transform\n    with: {{ value: 1 }}\n"
            );
            let (_, spec) = spec(&text);
            assert_eq!(singleton(&spec.kind), expected, "{trigger}");
        }
    }

    /// An interval trigger fires only while leading, stops when leadership goes, and starts
    /// again when it comes back.
    #[tokio::test]
    async fn singleton_triggers_follow_leadership() {
        let text = "reactor: 1\nname: tick\ntriggers:\n  - interval: { every: 20ms }\nsteps:\n  - action: transform\n    with: { value: 1 }\n";
        let (workflow, spec) = spec(text);
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let runtime = Runtime::new(
            store.clone(),
            builtin_registry(Default::default()),
            Environment::empty(),
            RuntimeConfig::default(),
        );
        runtime.load(workflow);
        let (leader, leadership) = watch::channel(Leadership {
            leading: false,
            leader: None,
        });
        let factory: Arc<dyn TriggerFactory> =
            Arc::new(LeaderTriggers::new(Arc::new(LightTriggers), leadership));
        let supervisor = Supervisor::default();
        supervisor
            .spawn_trigger("t", "tick", 0, &runtime, &spec, factory)
            .unwrap()
            .expect("a task");
        let count = || async {
            store
                .executions(&reactor_core::store::ExecutionQuery::default())
                .await
                .unwrap()
                .len()
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(count().await, 0, "a follower fires nothing");
        let lead = |leading| Leadership {
            leading,
            leader: None,
        };
        leader.send(lead(true)).unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let led = count().await;
        assert!(led >= 3, "fired {led} times while leading");
        leader.send(lead(false)).unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let stopped = count().await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            count().await,
            stopped,
            "nothing fires after leadership is lost"
        );
        leader.send(lead(true)).unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(count().await > stopped, "the next term starts it again");
        supervisor.shutdown(Duration::from_secs(1)).await;
        runtime.shutdown().await;
    }

    /// SQLite's leadership never changes (its sender is gone): the trigger just runs.
    #[tokio::test]
    async fn a_fixed_leadership_runs_the_trigger_once_and_for_all() {
        let text = "reactor: 1\nname: tick\ntriggers:\n  - interval: { every: 20ms }\nsteps:\n  - action: transform\n    with: { value: 1 }\n";
        let (workflow, spec) = spec(text);
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let runtime = Runtime::new(
            store.clone(),
            builtin_registry(Default::default()),
            Environment::empty(),
            RuntimeConfig::default(),
        );
        runtime.load(workflow);
        let (_, leadership) = watch::channel(Leadership {
            leading: true,
            leader: None,
        });
        let factory: Arc<dyn TriggerFactory> =
            Arc::new(LeaderTriggers::new(Arc::new(LightTriggers), leadership));
        let supervisor = Supervisor::default();
        supervisor
            .spawn_trigger("t", "tick", 0, &runtime, &spec, factory)
            .unwrap()
            .expect("a task");
        tokio::time::sleep(Duration::from_millis(400)).await;
        let runs = store
            .executions(&reactor_core::store::ExecutionQuery::default())
            .await
            .unwrap()
            .len();
        assert!(runs >= 5, "fired {runs} times");
        assert!(matches!(
            supervisor.tasks()[0].1,
            reactor_core::trigger::TaskState::Running
        ));
        supervisor.shutdown(Duration::from_secs(1)).await;
        runtime.shutdown().await;
    }
}
