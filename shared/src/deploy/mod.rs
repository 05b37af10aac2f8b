//! Deployment: the set of *active* workflows of a runtime — which text of each name is live,
//! where it came from, which version it runs as, and its running triggers.
//!
//! [`ActiveWorkflows`] is shared by the agent (workflows from a folder and from the binary) and
//! the hub (workflows deployed through its API and kept in its database): both install,
//! replace and remove workflows here, and the triggers of the active ones start and stop
//! through the runtime's [`Supervisor`] (tasks), [`HttpRoutes`] (`http`) and [`EventRouter`]
//! (`event`). Which triggers exist is pluggable: a [`TriggerFactory`] builds them
//! ([`crate::trigger::LightTriggers`] in core; `crate::mqtt::MqttTriggers` adds `mqtt`; the
//! hub adds its brokers and databases, and leader gating by wrapping what it builds).
//!
//! Versions and their texts are kept in the store's meta table (`versions`): a restart gives
//! unchanged text the same version; an execution started under a version that was edited
//! since recovers with its own version's text ([`ActiveWorkflows::load_needed_versions`]).
//!
//! Invariants: at most one active origin per workflow name (conflicts between origins are
//! the caller's policy); replacing a workflow stops its old triggers before starting the new
//! ones; a workflow that stops being active keeps its versions in the runtime's catalog so
//! running executions finish on them; until [`ActiveWorkflows::start`] no trigger task runs
//! (at start-up every workflow is loaded and recovery has run before any trigger fires).

mod origin;
mod versions;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::engine::Runtime;
use crate::flow::{TriggerKind, Workflow};
use crate::store::{StoreError, StoreWrite};
use crate::trigger::{EventRouter, HttpRoutes, Supervisor, TriggerFactory};

pub use self::origin::Origin;
use self::versions::VersionKeys;
pub use self::versions::content_hash;

/// How long a replaced workflow's triggers get to stop before they are aborted.
pub const STOP_GRACE: Duration = Duration::from_secs(2);
/// The default meta-key prefix of stored versions (see [`ActiveWorkflows::with_meta_prefix`]).
pub const DEFAULT_META_PREFIX: &str = "workflow";

/// One trigger of an active workflow, for health and metrics.
#[derive(Debug, Clone)]
pub struct TriggerInfo {
    pub workflow: String,
    pub kind: &'static str,
    /// `workflow#index`, the index in the workflow's `triggers:` list.
    pub label: String,
    /// The supervisor task running it (`None`: routed by the HTTP server or the event
    /// router, or not available with this factory).
    pub task: Option<String>,
}

/// What became of an install.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Installed {
    /// Same text, version and origin as the active one: nothing changed.
    Unchanged(u32),
    /// Now active as this version; its triggers (re)started.
    New(u32),
}

/// Why an install failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeployError {
    #[error("recording workflow {workflow} v{version}: {source}")]
    Store {
        workflow: String,
        version: u32,
        #[source]
        source: StoreError,
    },
    #[error("reading the stored versions of unfinished executions: {0}")]
    Recover(#[source] StoreError),
}

struct Active {
    origin: Origin,
    hash: u64,
    version: u32,
    workflow: Arc<Workflow>,
    triggers: Vec<TriggerInfo>,
}

/// The set of active workflows. Cheap to share behind an `Arc`.
pub struct ActiveWorkflows {
    runtime: Runtime,
    routes: Arc<HttpRoutes>,
    events: Arc<EventRouter>,
    supervisor: Arc<Supervisor>,
    factory: Arc<dyn TriggerFactory>,
    keys: VersionKeys,
    stop_grace: Duration,
    active: Mutex<BTreeMap<String, Active>>,
    /// Until [`ActiveWorkflows::start`], trigger tasks are not spawned.
    live: AtomicBool,
}

impl std::fmt::Debug for ActiveWorkflows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActiveWorkflows")
            .field("active", &lock(&self.active).keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl ActiveWorkflows {
    /// An empty set over `runtime`; triggers are built by `factory`.
    pub fn new(
        runtime: Runtime,
        routes: Arc<HttpRoutes>,
        events: Arc<EventRouter>,
        supervisor: Arc<Supervisor>,
        factory: Arc<dyn TriggerFactory>,
    ) -> ActiveWorkflows {
        ActiveWorkflows {
            runtime,
            routes,
            events,
            supervisor,
            factory,
            keys: VersionKeys::new(DEFAULT_META_PREFIX),
            stop_grace: STOP_GRACE,
            active: Mutex::default(),
            live: AtomicBool::new(false),
        }
    }

    /// Stores versions under meta keys `{prefix}.{name}` and `{prefix}.{name}.v{version}`
    /// (the agent keeps its historical `agent.workflow`).
    pub fn with_meta_prefix(mut self, prefix: &str) -> ActiveWorkflows {
        self.keys = VersionKeys::new(prefix);
        self
    }

    /// How long a replaced or removed workflow's trigger tasks get to stop.
    pub fn with_stop_grace(mut self, grace: Duration) -> ActiveWorkflows {
        self.stop_grace = grace;
        self
    }

    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    pub fn routes(&self) -> &HttpRoutes {
        &self.routes
    }

    pub fn events(&self) -> &EventRouter {
        &self.events
    }

    pub fn supervisor(&self) -> &Supervisor {
        &self.supervisor
    }

    /// The active origin of `name`, if any.
    pub fn origin(&self, name: &str) -> Option<Origin> {
        lock(&self.active).get(name).map(|a| a.origin.clone())
    }

    /// Names of the active workflows with their origin, by name.
    pub fn origins(&self) -> Vec<(String, Origin)> {
        lock(&self.active)
            .iter()
            .map(|(name, a)| (name.clone(), a.origin.clone()))
            .collect()
    }

    pub fn is_active(&self, name: &str) -> bool {
        lock(&self.active).contains_key(name)
    }

    /// The active version of `name`.
    pub fn version(&self, name: &str) -> Option<u32> {
        lock(&self.active).get(name).map(|a| a.version)
    }

    /// The active version of every active workflow.
    pub fn list(&self) -> Vec<Arc<Workflow>> {
        let active = lock(&self.active);
        self.runtime
            .workflows()
            .into_iter()
            .filter(|w| {
                active
                    .get(w.name.as_str())
                    .is_some_and(|a| a.version == w.version)
            })
            .collect()
    }

    /// The triggers of every active workflow.
    pub fn triggers(&self) -> Vec<TriggerInfo> {
        lock(&self.active)
            .values()
            .flat_map(|a| a.triggers.iter().cloned())
            .collect()
    }

    /// Makes `workflow` (parsed from `text`) the active version of its name and (re)starts
    /// its triggers. The version is decided here (see `versions`) and recorded durably before
    /// the workflow goes live.
    pub async fn install(
        &self,
        mut workflow: Workflow,
        text: &str,
        origin: Origin,
    ) -> Result<Installed, DeployError> {
        let name = workflow.name.to_string();
        let hash = content_hash(text);
        let previous = lock(&self.active).get(&name).map(|a| (a.version, a.hash));
        let previous = match previous {
            Some(p) => Some(p),
            None => self.stored_version(&name).await,
        };
        let version = versions::decide(previous, hash, workflow.version);
        if previous.is_some_and(|(v, h)| h != hash && workflow.version <= v) {
            tracing::info!(
                workflow = %name,
                file_version = workflow.version,
                version,
                "content changed but `version` did not grow: version bumped"
            );
        }
        let unchanged = lock(&self.active)
            .get(&name)
            .is_some_and(|a| a.hash == hash && a.version == version && a.origin == origin);
        if unchanged {
            return Ok(Installed::Unchanged(version));
        }
        workflow.version = version;
        self.runtime
            .store()
            .write(vec![
                StoreWrite::PutMeta {
                    key: self.keys.active(&name),
                    value: Some(versions::encode_active(version, hash)),
                },
                StoreWrite::PutMeta {
                    key: self.keys.text(&name, version),
                    value: Some(text.as_bytes().to_vec()),
                },
            ])
            .await
            .map_err(|source| DeployError::Store {
                workflow: name.clone(),
                version,
                source,
            })?;
        self.stop(&name).await;
        self.runtime.load(workflow.clone());
        let workflow = Arc::new(workflow);
        let triggers = self.start_triggers(&workflow);
        if self.live.load(Ordering::Acquire) {
            self.spawn_tasks(&workflow, &triggers);
        }
        tracing::info!(workflow = %name, version, source = %origin, triggers = triggers.len(), "workflow active");
        lock(&self.active).insert(
            name,
            Active {
                origin,
                hash,
                version,
                workflow,
                triggers,
            },
        );
        Ok(Installed::New(version))
    }

    /// Stops offering `name`: its triggers stop; running executions finish on their version.
    /// `false` if it was not active.
    pub async fn remove(&self, name: &str) -> bool {
        let removed = self.stop(name).await;
        if removed {
            tracing::info!(workflow = %name, "workflow removed: its triggers stopped");
        }
        removed
    }

    async fn stop(&self, name: &str) -> bool {
        self.routes.remove(name);
        self.events.remove(name);
        let Some(active) = lock(&self.active).remove(name) else {
            return false;
        };
        for task in active.triggers.iter().filter_map(|t| t.task.as_deref()) {
            if self.supervisor.stop(task, self.stop_grace).await == Some(true) {
                tracing::warn!(task, "trigger did not stop in time and was aborted");
            }
        }
        true
    }

    /// The stored (version, hash) of `name`, from an earlier run.
    async fn stored_version(&self, name: &str) -> Option<(u32, u64)> {
        let bytes = self
            .runtime
            .store()
            .meta(&self.keys.active(name))
            .await
            .ok()??;
        versions::decode_active(&bytes)
    }

    /// Loads the stored text of versions that unfinished executions need but that are not
    /// loaded (the text changed while the process was down). Call before `Runtime::recover`.
    pub async fn load_needed_versions(&self) -> Result<(), DeployError> {
        let store = self.runtime.store();
        let unfinished = store.unfinished().await.map_err(DeployError::Recover)?;
        for (record, _) in unfinished {
            if self
                .runtime
                .workflow(&record.workflow, Some(record.version))
                .is_some()
            {
                continue;
            }
            let key = self.keys.text(&record.workflow, record.version);
            let Some(bytes) = store.meta(&key).await.map_err(DeployError::Recover)? else {
                continue;
            };
            let text = String::from_utf8_lossy(&bytes);
            let source = format!("journal:{}@v{}", record.workflow, record.version);
            match crate::dsl::parse_workflow(&source, &text) {
                Ok(mut workflow) => {
                    workflow.version = record.version;
                    self.runtime.load(workflow);
                }
                Err(problems) => {
                    for problem in problems {
                        tracing::warn!(%problem, "stored workflow version no longer parses");
                    }
                }
            }
        }
        Ok(())
    }

    /// Routes `http` and `event` triggers at once; builds the others once to learn whether
    /// they have a task (a build error is logged: the workflow runs without that trigger).
    fn start_triggers(&self, workflow: &Workflow) -> Vec<TriggerInfo> {
        let name = workflow.name.to_string();
        let mut http = Vec::new();
        let mut infos = Vec::new();
        for (index, spec) in workflow.triggers.iter().enumerate() {
            let mut info = TriggerInfo {
                workflow: name.clone(),
                kind: spec.type_name(),
                label: format!("{name}#{index}"),
                task: None,
            };
            if let TriggerKind::Http(trigger) = &spec.kind {
                http.push(trigger.clone());
            }
            match self.factory.build(&name, index, spec) {
                Ok(None) => {}
                Ok(Some(_)) => info.task = Some(format!("trigger {}", info.label)),
                Err(error) => {
                    tracing::warn!(trigger = %info.label, %error, "trigger not started; the workflow runs without it");
                }
            }
            infos.push(info);
        }
        if let Err(error) = self.routes.replace(&name, &http) {
            tracing::error!(workflow = %name, %error, "http triggers not installed");
        }
        self.events.replace(&name, &workflow.triggers);
        infos
    }

    fn spawn_tasks(&self, workflow: &Workflow, infos: &[TriggerInfo]) {
        let name = workflow.name.as_str();
        for (index, (spec, info)) in workflow.triggers.iter().zip(infos).enumerate() {
            let Some(task) = &info.task else { continue };
            let spawned = self.supervisor.spawn_trigger(
                task,
                name,
                index,
                &self.runtime,
                spec,
                self.factory.clone(),
            );
            if let Err(error) = spawned {
                tracing::warn!(trigger = %info.label, %error, "trigger not started; the workflow runs without it");
            }
        }
    }

    /// Starts the trigger tasks of every active workflow; later installs start theirs at once.
    pub fn start(&self) {
        self.live.store(true, Ordering::Release);
        let active: Vec<(Arc<Workflow>, Vec<TriggerInfo>)> = lock(&self.active)
            .values()
            .map(|a| (a.workflow.clone(), a.triggers.clone()))
            .collect();
        for (workflow, triggers) in active {
            self.spawn_tasks(&workflow, &triggers);
        }
    }
}

#[cfg(test)]
mod tests;
