//! The workflows the agent serves: where each came from (a file in the workflows folder or
//! the binary), which version it runs as, and its running triggers.
//!
//! Versions: a workflow's version is its file's `version`, unless the content changed while
//! `version` did not grow — then the agent bumps it to the loaded version + 1 and logs it. The
//! (version, content hash) of each name and the text of each version are kept in the
//! journal's meta table, so a restart gives unchanged content the same version, and an
//! execution started under a version that was edited since still recovers with its own
//! version's text.
//!
//! Invariants: at most one active source per workflow name (a file beats an embedded
//! workflow of the same name); replacing a workflow stops its old triggers before starting
//! the new ones; a workflow that stops being active keeps its versions in the runtime's
//! catalog so running executions finish on them.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reactor_core::engine::Runtime;
use reactor_core::flow::{TriggerKind, Workflow};
use reactor_core::mqtt::MqttBrokers;
use reactor_core::store::StoreWrite;
use reactor_core::trigger::{EventRouter, HttpRoutes, Supervisor, TriggerContext, TriggerStats};

/// How long a replaced workflow's triggers get to stop before they are aborted.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// Where a workflow came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    File(std::path::PathBuf),
    Embedded(&'static str),
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::File(path) => write!(f, "{}", path.display()),
            Origin::Embedded(name) => write!(f, "embedded:{name}"),
        }
    }
}

/// One trigger of an active workflow, for `/healthz` and `/metrics`.
#[derive(Debug, Clone)]
pub struct TriggerInfo {
    pub workflow: String,
    pub kind: &'static str,
    /// `workflow#index`, the index in the file's `triggers:` list.
    pub label: String,
    /// The supervisor task running it (`None`: routed by the HTTP server or the event
    /// router, or not available in this build).
    pub task: Option<String>,
}

struct Active {
    origin: Origin,
    hash: u64,
    version: u32,
    workflow: Arc<Workflow>,
    triggers: Vec<TriggerInfo>,
}

/// The set of active workflows. Cheap to share behind an `Arc`.
pub struct Workflows {
    runtime: Runtime,
    routes: Arc<HttpRoutes>,
    events: Arc<EventRouter>,
    supervisor: Arc<Supervisor>,
    /// The brokers `mqtt` triggers connect to.
    brokers: Arc<MqttBrokers>,
    active: Mutex<BTreeMap<String, Active>>,
    /// Until [`Workflows::start`], trigger tasks are not spawned: at start-up every workflow
    /// is loaded (so a `startup` trigger's emitted event finds its `event` subscribers) and
    /// recovery has run before any trigger fires.
    live: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Workflows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workflows").finish_non_exhaustive()
    }
}

/// What became of an install.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Installed {
    /// Same content as the active version: nothing changed.
    Unchanged(u32),
    New(u32),
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// FNV-1a: stable across builds and platforms (the hash is stored).
pub fn content_hash(text: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

fn version_key(name: &str) -> String {
    format!("agent.workflow.{name}")
}

fn text_key(name: &str, version: u32) -> String {
    format!("agent.workflow.{name}.v{version}")
}

impl Workflows {
    pub fn new(
        runtime: Runtime,
        routes: Arc<HttpRoutes>,
        events: Arc<EventRouter>,
        supervisor: Arc<Supervisor>,
        brokers: MqttBrokers,
    ) -> Workflows {
        Workflows {
            runtime,
            routes,
            events,
            supervisor,
            brokers: Arc::new(brokers),
            active: Mutex::default(),
            live: false.into(),
        }
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

    /// The active source of `name`, if any.
    pub fn origin(&self, name: &str) -> Option<Origin> {
        lock(&self.active).get(name).map(|a| a.origin.clone())
    }

    /// Names of the active workflows with the file they came from.
    pub fn origins(&self) -> Vec<(String, Origin)> {
        lock(&self.active)
            .iter()
            .map(|(name, a)| (name.clone(), a.origin.clone()))
            .collect()
    }

    pub fn is_active(&self, name: &str) -> bool {
        lock(&self.active).contains_key(name)
    }

    /// The newest version of every active workflow.
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

    pub fn triggers(&self) -> Vec<TriggerInfo> {
        lock(&self.active)
            .values()
            .flat_map(|a| a.triggers.iter().cloned())
            .collect()
    }

    /// Loads `workflow` (parsed from `text`) as the active version of its name and (re)starts
    /// its triggers. The version is decided here (see the module docs).
    pub async fn install(
        &self,
        mut workflow: Workflow,
        text: &str,
        origin: Origin,
    ) -> anyhow::Result<Installed> {
        let name = workflow.name.to_string();
        let hash = content_hash(text);
        let previous = lock(&self.active).get(&name).map(|a| (a.version, a.hash));
        let previous = match previous {
            Some(p) => Some(p),
            None => self.stored_version(&name).await,
        };
        let version = match previous {
            Some((version, old_hash)) if old_hash == hash => version,
            Some((version, _)) if workflow.version <= version => {
                tracing::info!(
                    workflow = %name,
                    file_version = workflow.version,
                    version = version + 1,
                    "content changed but `version` did not grow: version bumped"
                );
                version + 1
            }
            _ => workflow.version,
        };
        let unchanged = lock(&self.active)
            .get(&name)
            .is_some_and(|a| a.hash == hash && a.version == version && a.origin == origin);
        if unchanged {
            return Ok(Installed::Unchanged(version));
        }
        workflow.version = version;
        let record = format!("{version} {hash:016x}").into_bytes();
        self.runtime
            .store()
            .write(vec![
                StoreWrite::PutMeta {
                    key: version_key(&name),
                    value: Some(record),
                },
                StoreWrite::PutMeta {
                    key: text_key(&name, version),
                    value: Some(text.as_bytes().to_vec()),
                },
            ])
            .await?;
        self.stop(&name).await;
        self.runtime.load(workflow.clone());
        let workflow = Arc::new(workflow);
        let triggers = self.start_triggers(&workflow);
        if self.live.load(std::sync::atomic::Ordering::Acquire) {
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
            if self.supervisor.stop(task, STOP_GRACE).await == Some(true) {
                tracing::warn!(task, "trigger did not stop in time and was aborted");
            }
        }
        true
    }

    /// The stored (version, hash) of `name`, from an earlier run.
    async fn stored_version(&self, name: &str) -> Option<(u32, u64)> {
        let bytes = self.runtime.store().meta(&version_key(name)).await.ok()??;
        let text = String::from_utf8(bytes).ok()?;
        let (version, hash) = text.split_once(' ')?;
        Some((version.parse().ok()?, u64::from_str_radix(hash, 16).ok()?))
    }

    /// Loads the stored text of versions that unfinished executions need but that are not
    /// loaded (the file changed while the agent was down). Call before `Runtime::recover`.
    pub async fn load_needed_versions(&self) -> anyhow::Result<()> {
        let unfinished = self.runtime.store().unfinished().await?;
        for (record, _) in unfinished {
            if self
                .runtime
                .workflow(&record.workflow, Some(record.version))
                .is_some()
            {
                continue;
            }
            let key = text_key(&record.workflow, record.version);
            let Some(bytes) = self.runtime.store().meta(&key).await? else {
                continue;
            };
            let text = String::from_utf8_lossy(&bytes);
            let source = format!("journal:{}@v{}", record.workflow, record.version);
            match reactor_core::dsl::parse_workflow(&source, &text) {
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
            match crate::mqtt::build_trigger(&self.brokers, &name, index, spec) {
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
        let name = workflow.name.to_string();
        for (index, (spec, info)) in workflow.triggers.iter().zip(infos).enumerate() {
            let Some(task) = &info.task else { continue };
            let brokers = self.brokers.clone();
            let stats = Arc::new(TriggerStats::default());
            let runtime = self.runtime.clone();
            let spec = spec.clone();
            let workflow_name = name.clone();
            let task_stats = stats.clone();
            self.supervisor.spawn(task, stats, move |cancel| {
                let context = TriggerContext {
                    stats: task_stats.clone(),
                    ..TriggerContext::new(&workflow_name, runtime.clone(), cancel)
                };
                let built = crate::mqtt::build_trigger(&brokers, &workflow_name, index, &spec);
                async move {
                    match built? {
                        Some(trigger) => trigger.run(context).await,
                        None => Ok(()),
                    }
                }
            });
        }
    }

    /// Starts the trigger tasks of every loaded workflow; later installs start theirs at once.
    pub fn start(&self) {
        self.live.store(true, std::sync::atomic::Ordering::Release);
        let active: Vec<(Arc<Workflow>, Vec<TriggerInfo>)> = lock(&self.active)
            .values()
            .map(|a| (a.workflow.clone(), a.triggers.clone()))
            .collect();
        for (workflow, triggers) in active {
            self.spawn_tasks(&workflow, &triggers);
        }
    }
}

/// Loads the workflows compiled into the binary and those of `dir`; the folder's win over
/// embedded ones of the same name. Problems are logged as validator lines and skipped.
pub async fn load_all(
    workflows: &Workflows,
    dir: Option<&std::path::Path>,
    files: &mut HashMap<std::path::PathBuf, u64>,
) -> anyhow::Result<()> {
    let from_dir = match dir {
        Some(dir) => crate::reload::scan(dir),
        None => Vec::new(),
    };
    let dir_names: Vec<String> = from_dir
        .iter()
        .filter_map(|f| f.workflow.as_ref().map(|w| w.name.to_string()))
        .collect();
    for (file, text) in crate::embedded::WORKFLOWS {
        let source = format!("embedded:{file}");
        match reactor_core::dsl::parse_workflow(&source, text) {
            Ok(workflow) if dir_names.contains(&workflow.name.to_string()) => {
                tracing::info!(workflow = %workflow.name, "the workflows folder overrides the embedded workflow");
            }
            Ok(workflow) => {
                workflows
                    .install(workflow, text, Origin::Embedded(file))
                    .await?;
            }
            Err(problems) => {
                for problem in problems {
                    tracing::error!(%problem, "invalid embedded workflow skipped");
                }
            }
        }
    }
    crate::reload::apply(workflows, from_dir, files).await
}
