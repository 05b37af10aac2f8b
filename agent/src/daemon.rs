//! `reactor-agent run`: wiring, the task supervisor and graceful shutdown.
//!
//! Start: config → logs → journal (DATA/journal.redb) → runtime → workflows (embedded, then
//! the folder) → recovery of unfinished executions → triggers → HTTP server → hot reload.
//! `/healthz` answers 200 once all of that is done and every trigger runs.
//!
//! Stop (SIGTERM/SIGINT), in STYLE.md's order: triggers stop and the server stops accepting
//! (in-flight sync requests are answered 503; their executions continue after a restart) →
//! executions checkpoint (`Runtime::shutdown`) → the MQTT publisher disconnects (after the
//! runtime, so publishing steps get their acks; see [`crate::mqtt`]) → the journal closes →
//! exit 0.

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use reactor_core::action::exec::{Allowlist, ExecConfig};
use reactor_core::action::{BuiltinConfig, builtin_registry};
use reactor_core::deploy::ActiveWorkflows;
use reactor_core::engine::EventBus;
use reactor_core::engine::{Runtime, RuntimeConfig};
use reactor_core::store::{RedbOptions, RedbStore, Retention, Store};
use reactor_core::trigger::{EventRouter, HttpRoutes, Supervisor, TaskState, TriggerStats};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::config::{AgentConfig, RunFlags};
use crate::metrics::{MeteredStore, Metrics};
use crate::mqtt::{MqttForward, SharedPublisher};

/// How long tasks get to stop on their own before they are aborted.
const GRACE: Duration = Duration::from_secs(5);
/// How long running executions get to reach a step boundary.
const CHECKPOINT_GRACE: Duration = Duration::from_secs(10);
/// Name of the journal file in the data folder.
pub const JOURNAL_FILE: &str = "journal.redb";

/// What the HTTP server's handlers share.
#[derive(Debug, Clone)]
pub struct AgentState {
    pub runtime: Runtime,
    pub workflows: Arc<ActiveWorkflows>,
    pub metrics: Arc<Metrics>,
    /// Set once start-up is complete (workflows loaded, recovery done, triggers started).
    pub ready: Arc<AtomicBool>,
    /// Fires when shutdown begins: handlers stop waiting for executions.
    pub stopping: CancellationToken,
}

impl AgentState {
    /// Whether `/healthz` answers 200.
    pub fn healthy(&self) -> bool {
        self.ready.load(Ordering::Acquire)
            && !self.stopping.is_cancelled()
            && self.waiting_triggers().is_empty()
    }

    /// Whether events may start executions: start-up (recovery included) is complete.
    pub fn accepting(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Triggers with a task that is not running (restarting after an error, or given up).
    /// A trigger whose task finished (`startup`) counts as running.
    pub fn waiting_triggers(&self) -> Vec<String> {
        let states: HashMap<String, TaskState> = self
            .workflows
            .supervisor()
            .tasks()
            .into_iter()
            .map(|(name, state, _)| (name, state))
            .collect();
        self.workflows
            .triggers()
            .into_iter()
            .filter(|t| {
                t.task.as_ref().is_some_and(|task| {
                    !matches!(
                        states.get(task),
                        Some(TaskState::Running | TaskState::Finished)
                    )
                })
            })
            .map(|t| t.label)
            .collect()
    }
}

/// Entry point of `run`: exit 0 after a clean stop, 2 for a refused configuration, 1 for a
/// start-up failure.
pub fn run(flags: &RunFlags) -> ExitCode {
    let config = match AgentConfig::load(flags, std::env::vars()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("{error}");
            return ExitCode::from(2);
        }
    };
    reactor_core::process::init_logging(config.log_format, "info");
    reactor_core::process::run_daemon("reactor-agent", Some(config.workers), serve(config))
}

async fn serve(config: AgentConfig) -> anyhow::Result<()> {
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        device = %config.device.id,
        data = %config.data.display(),
        config = ?config.file,
        outbox_max_bytes = config.outbox.max_bytes,
        outbox_max_age = ?config.outbox.max_age,
        mqtt = config.mqtt_default.as_deref().unwrap_or("none"),
        "reactor-agent starting"
    );
    std::fs::create_dir_all(&config.data)
        .with_context(|| format!("cannot create the data folder {}", config.data.display()))?;
    let journal_path = config.data.join(JOURNAL_FILE);
    let redb = Arc::new(
        RedbStore::open(&journal_path, RedbOptions::default())
            .with_context(|| format!("cannot open the journal {}", journal_path.display()))?,
    );
    let metrics = Arc::new(Metrics::with_journal(redb.clone()));
    let mut store: Arc<dyn Store> = Arc::new(MeteredStore::new(redb.clone(), metrics.clone()));
    // Enrolled in a fleet: finished executions and emitted events also feed the outbox.
    let mut fleet =
        crate::fleet::Fleet::prepare(&config.data, redb.clone(), config.outbox, config.fleet)
            .await?;
    if let Some(fleet) = &fleet {
        store = fleet.wrap_store(store);
    }
    let mut actions = builtin_registry(BuiltinConfig {
        exec: ExecConfig {
            allow: Allowlist::Only(config.exec_allow.clone()),
            ..ExecConfig::default()
        },
        ..BuiltinConfig::default()
    });
    // One publisher for `mqtt.publish` and `emit` with `topic`; it connects on first use.
    let publisher = SharedPublisher::new(config.mqtt.clone());
    actions.register(Arc::new(publisher.action()));
    let device = json!({ "id": config.device.id, "labels": config.device.labels });
    let mut environment = reactor_core::cli::environment_from_process(&config.env_allow);
    environment.device = device;
    // Events emitted by workflows reach `event` triggers through the router; it must be the
    // runtime's bus before the runtime is shared, and learns the runtime right after.
    // Emitted events with a `topic` are also published to MQTT (the router's forward hook).
    let forward: Arc<dyn EventBus> = Arc::new(MqttForward::new(publisher.clone()));
    let events = Arc::new(EventRouter::new(Some(forward)));
    let mut bus: Arc<dyn EventBus> = events.clone();
    if let Some(fleet) = &fleet {
        bus = fleet.wrap_bus(bus);
    }
    let runtime = Runtime::new(
        store,
        actions,
        environment,
        RuntimeConfig {
            max_running: config.max_running,
            retention: Retention {
                keep: config.retention.keep,
                max_age: Some(config.retention.max_age),
            },
            ..RuntimeConfig::default()
        },
    )
    .with_bus(bus);
    events.attach(runtime.clone());
    let supervisor = Arc::new(Supervisor::default());
    let routes = Arc::new(HttpRoutes::new(runtime.clone()));
    let workflows = Arc::new(crate::workflows::active_set(
        runtime.clone(),
        routes,
        events.clone(),
        supervisor.clone(),
        config.mqtt.clone(),
    ));
    let state = AgentState {
        runtime: runtime.clone(),
        workflows: workflows.clone(),
        metrics,
        ready: Arc::default(),
        stopping: CancellationToken::new(),
    };

    // Listen first so a port conflict fails fast; /healthz says 503 until ready.
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    tracing::info!(listen = %config.listen, "HTTP server listening");
    let server = tokio::spawn(crate::server::serve(
        listener,
        state.clone(),
        config.max_body,
        state.stopping.clone(),
    ));

    let mut files = HashMap::new();
    crate::workflows::load_all(&workflows, config.workflows.as_deref(), &mut files).await?;
    // The accepted fleet bundle's workflows are active before recovery, like the folder's.
    if let Some(fleet) = &mut fleet {
        fleet
            .start(
                runtime.store().clone(),
                workflows.clone(),
                Default::default(),
            )
            .await?;
    }
    workflows.load_needed_versions().await?;
    let recovered = runtime
        .recover()
        .await
        .context("recovering unfinished executions")?;
    if recovered > 0 {
        tracing::info!(executions = recovered, "resumed unfinished executions");
    }
    workflows.start();
    if let Some(dir) = config.workflows.clone() {
        let workflows = workflows.clone();
        let mut files = Some(files);
        supervisor.spawn("reload", Arc::new(TriggerStats::default()), move |cancel| {
            // A restarted watcher starts from an empty map: unchanged files install as
            // `Unchanged`, so nothing restarts needlessly.
            let files = files.take().unwrap_or_default();
            let watch = crate::reload::watch(workflows.clone(), dir.clone(), files, cancel);
            async move {
                watch.await;
                Ok(())
            }
        });
    }
    state.ready.store(true, Ordering::Release);
    tracing::info!(workflows = workflows.list().len(), "reactor-agent ready");

    reactor_core::process::shutdown_signal().await;
    tracing::info!("stopping: triggers and HTTP first");
    state.stopping.cancel();
    let report = supervisor.shutdown(GRACE).await;
    if !report.forced.is_empty() {
        tracing::warn!(tasks = ?report.forced, "tasks did not stop in time and were aborted");
    }
    match tokio::time::timeout(GRACE, server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(error))) => tracing::warn!(%error, "HTTP server stopped with an error"),
        Ok(Err(error)) => tracing::warn!(%error, "HTTP server task failed"),
        Err(_) => tracing::warn!("HTTP server did not stop in time"),
    }
    tracing::info!("checkpointing running executions");
    if tokio::time::timeout(CHECKPOINT_GRACE, runtime.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            "executions did not reach a checkpoint in time; they resume from their journal"
        );
    }
    events.detach();
    if let Some(fleet) = fleet {
        tracing::info!("disconnecting from the fleet hub");
        fleet.stop(GRACE).await;
    }
    // After the runtime (steps publishing while executions checkpointed got their acks),
    // before the journal: see crate::mqtt.
    tracing::info!("disconnecting MQTT publishers");
    publisher.shutdown(GRACE).await;
    drop(state);
    redb.close().await.context("closing the journal")?;
    tracing::info!("reactor-agent stopped");
    Ok(())
}
