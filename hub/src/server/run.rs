//! `reactor-hub serve`: start-up wiring and graceful shutdown.
//!
//! Start: config → logs → database (open + migrations) → runtime on the SQL journal →
//! HTTP listener (`/healthz` says 503 until ready) → workflows stored in the database are
//! loaded → unfinished executions recovered → triggers started (singleton triggers only on
//! the leader, [`crate::triggers`]) → workflow sync and adoption loop
//! ([`super::cluster`]) → ready.
//!
//! Stop (SIGTERM/SIGINT), in STYLE.md's order: the server stops accepting and triggers stop
//! → running executions checkpoint (`Runtime::shutdown`) → the event router lets go of the
//! runtime → the database closes (pending writes flushed) → exit 0.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use reactor_core::action::exec::{Allowlist, ExecConfig};
use reactor_core::action::http::HttpConfig;
use reactor_core::action::{BuiltinConfig, builtin_registry};
use reactor_core::deploy::ActiveWorkflows;
use reactor_core::engine::{EventBus, Fanout, Runtime, RuntimeConfig};
use reactor_core::store::{Retention, Store};
use reactor_core::trigger::TriggerStats;
use reactor_core::trigger::{EventRouter, HttpRoutes, LightTriggers, Supervisor, TriggerFactory};
use reactor_hub_triggers::{Connections, HubTriggers};
use tokio_util::sync::CancellationToken;

use super::{HubState, Server, TokenCache};
use crate::alerts::Alerts;
use crate::config::{HubConfig, ServeFlags};
use crate::db::{Database, HubInstance, Leader, SqlStore};
use crate::metrics::{EngineMetrics, Telemetry};
use crate::secrets::SecretStore;
use crate::stream::LiveStream;
use crate::triggers::LeaderTriggers;

/// How long tasks get to stop on their own before they are aborted.
const GRACE: Duration = Duration::from_secs(5);
/// How long running executions get to reach a step boundary.
const CHECKPOINT_GRACE: Duration = Duration::from_secs(10);
/// This hub's lease on its unfinished executions, and how often it is renewed.
const LEASE: Duration = Duration::from_secs(15);
const HEARTBEAT: Duration = Duration::from_secs(5);
/// How often a follower tries to take the leadership (and the leader checks its session).
const LEADER_RETRY: Duration = Duration::from_secs(1);
/// Meta-key prefix of the runtime's copy of workflow versions (the journal's meta table).
const META_PREFIX: &str = "hub.workflow";

/// Entry point of `serve`: exit 0 after a clean stop, 2 for a refused configuration, 1 for a
/// start-up failure.
pub fn run(flags: &ServeFlags) -> ExitCode {
    let config = match HubConfig::load(flags, std::env::vars()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("{error}");
            return ExitCode::from(2);
        }
    };
    reactor_core::process::init_logging(config.log_format, "info");
    crate::fleet::raise_open_files_limit();
    reactor_core::process::run_daemon("reactor-hub", None, serve(config))
}

async fn serve(config: HubConfig) -> anyhow::Result<()> {
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        data = %config.data.display(),
        database = %config.database.as_ref().map_or_else(|| "sqlite (data folder)".to_string(), ToString::to_string),
        config = ?config.file,
        "reactor-hub starting"
    );
    let db = Database::open(
        config.database.as_ref().map(|url| url.expose()),
        &config.data,
    )
    .await
    .context("opening the database")?;
    db.migrate().await.context("migrating the database")?;
    // Refuses to start when the key file is readable by others or the key is malformed.
    let environment = reactor_core::cli::environment_from_process(&config.env_allow);
    let process_secrets = match &environment.secrets {
        reactor_core::Value::Object(map) => map.clone(),
        _ => reactor_core::Map::new(),
    };
    let secrets = SecretStore::open(db.clone(), &config.data)
        .context("the secrets key")?
        .with_process_secrets(process_secrets);
    let instance = Arc::new(
        HubInstance::register(&db, LEASE)
            .await
            .context("registering this hub instance")?,
    );
    let heartbeat = instance.spawn_heartbeat(HEARTBEAT);
    let leader = Leader::start(&db, instance.id(), LEADER_RETRY);
    let sql = Arc::new(SqlStore::new(db.clone(), instance.id()));
    let store: Arc<dyn Store> = sql.clone();
    let actions = builtin_registry(BuiltinConfig {
        exec: ExecConfig {
            allow: Allowlist::Only(config.exec_allow.clone()),
            ..ExecConfig::default()
        },
        http: HttpConfig::guarded(&config.http_allow).context("http.allow")?,
        ..BuiltinConfig::default()
    });
    let events = Arc::new(EventRouter::new(None));
    let bus: Arc<dyn EventBus> = events.clone();
    let runtime = Runtime::new(
        store,
        actions,
        environment,
        RuntimeConfig {
            max_running: config.max_running,
            retention: Retention {
                keep: config.retention_keep,
                max_age: Some(config.retention_max_age),
            },
            ..RuntimeConfig::default()
        },
    )
    .with_bus(bus);
    let engine_metrics = Arc::new(EngineMetrics::new());
    let live = LiveStream::new();
    let runtime = runtime.with_observer(Arc::new(Fanout(vec![
        engine_metrics.clone(),
        Arc::new(live.clone()),
    ])));
    secrets
        .sync_runtime(&runtime)
        .await
        .context("decrypting the secrets")?;
    events.attach(runtime.clone());
    let supervisor = Arc::new(Supervisor::default());
    let routes = Arc::new(HttpRoutes::new(runtime.clone()));
    // Broker and database triggers first (credentials resolved from the hub's secrets at
    // build time), then core's light triggers; singletons gated on leadership around both.
    let secrets_of = runtime.clone();
    let connections = Connections::new(
        config.connections.clone(),
        Arc::new(move |name: &str| {
            secrets_of
                .environment()
                .secrets
                .get(name)
                .and_then(|value| value.as_str())
                .map(str::to_owned)
        }),
    )
    .with_instance(consumer_name(
        &reactor_hub_triggers::host_name(),
        &config.data,
    ));
    let source_triggers: Arc<dyn TriggerFactory> =
        Arc::new(HubTriggers::new(Arc::new(connections)).with_fallback(Arc::new(LightTriggers)));
    let workflows = Arc::new(
        ActiveWorkflows::new(
            runtime.clone(),
            routes,
            events.clone(),
            supervisor.clone(),
            Arc::new(LeaderTriggers::new(source_triggers, leader.watch())),
        )
        .with_meta_prefix(META_PREFIX),
    );
    let state = HubState {
        db: db.clone(),
        store: sql.clone(),
        runtime: runtime.clone(),
        workflows: workflows.clone(),
        tokens: Arc::new(TokenCache::default()),
        deploy: Arc::default(),
        max_body: config.max_body,
        ready: Arc::default(),
        stopping: CancellationToken::new(),
    };

    // Listen first so a port conflict fails fast; /healthz says 503 until ready.
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    tracing::info!(listen = %config.listen, "HTTP server listening");
    let telemetry = Arc::new(
        Telemetry::new(
            engine_metrics,
            runtime.clone(),
            Some(workflows.clone()),
            config.data.clone(),
        )
        .with_journal(sql.clone()),
    );
    telemetry.register_gauge(
        "reactor_stream_subscribers",
        "Clients connected to the live stream (/api/v1/stream).",
        live.subscribers(),
    );
    let alerts = Arc::new(Alerts::new(
        db.clone(),
        telemetry.clone(),
        live.clone(),
        runtime.clone(),
        Some(workflows.clone()),
    ));
    let signer = crate::fleet::keys::load_or_create(
        &db,
        &crate::secrets::cipher::Cipher::new(
            &crate::secrets::key::SecretKey::load(&config.data).context("the secrets key")?,
        ),
    )
    .await
    .context("the fleet's bundle-signing key")?;
    let provision = crate::fleet::provision::Provisioner::start(
        config.fleet.provision,
        config
            .fleet
            .external_broker
            .as_deref()
            .map(crate::fleet::broker::BrokerTarget::external)
            .transpose()?
            .as_ref(),
        config.fleet.provision_login.clone(),
    )
    .await
    .context("device provisioning on the external broker")?;
    let enroll = crate::fleet::api::enroll_router(crate::fleet::api::EnrollState {
        db: db.clone(),
        signer: signer.clone(),
        broker: config.fleet.broker_url(),
        ca_pem: match &config.fleet.tls {
            Some(files) => Some(files.trust_pem().context("the device endpoint's CA")?),
            None => None,
        },
        provision: Arc::new(provision),
    });
    let fleet_broker = crate::fleet::start_endpoint(&config.fleet, &db, state.stopping.clone())
        .await
        .context("the device MQTT endpoint")?;
    let delivery = fleet_broker
        .as_ref()
        .map(|broker| crate::fleet::delivery::start(broker, db.clone(), state.stopping.clone()))
        .transpose()
        .context("bundle and command delivery")?;
    let rollout_wake = Arc::new(tokio::sync::Notify::new());
    let app = Server::new(state.clone())
        .with_routes(crate::fleet::api::routes())
        .with_routes(crate::fleet::rollout::api::routes(
            crate::fleet::rollout::api::RolloutApi {
                signer: signer.clone(),
                wake: rollout_wake.clone(),
            },
        ))
        .with_routes(crate::fleet::commands::routes(delivery.clone()))
        .with_routes(crate::secrets::api::routes(secrets.clone()))
        .with_routes(crate::metrics::routes(telemetry.clone()))
        .with_routes(crate::stream::routes(live.clone(), state.stopping.clone()))
        .with_routes(crate::alerts::api::routes(alerts.clone()))
        .router();
    let app = enroll.merge(app);
    // Rollouts are driven by the leader only (state in SQL: a new leader resumes them).
    tokio::spawn(
        crate::fleet::rollout::driver::Driver {
            db: db.clone(),
            signer: signer.clone(),
            delivery,
            wake: rollout_wake,
            renew_below: config.fleet.bundle_renew_below,
        }
        .run(leader.watch(), state.stopping.clone()),
    );
    spawn_ops_tasks(&supervisor, &runtime, secrets, live, telemetry);
    let stopping = state.stopping.clone();
    let server = tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .with_graceful_shutdown(async move { stopping.cancelled().await })
        .await
    });

    super::cluster::sync_workflows(&state).await?;
    let recovered = super::cluster::adopt(&state).await?;
    if recovered > 0 {
        tracing::info!(executions = recovered, "resumed unfinished executions");
    }
    workflows.start();
    // Device frames are ingested once the workflows they may start are active.
    let _ingest = fleet_broker
        .as_ref()
        .map(|broker| {
            crate::fleet::ingest::start(
                broker,
                db.clone(),
                Some(Arc::new(crate::fleet::ingest::WorkflowSink(
                    workflows.clone(),
                ))),
                state.stopping.clone(),
            )
        })
        .transpose()
        .context("fleet ingest")?;
    let cluster = super::cluster::spawn(state.clone());
    supervisor.spawn(
        "hub.alerts",
        Arc::new(TriggerStats::default()),
        move |stop| {
            let alerts = alerts.clone();
            async move {
                alerts.run(stop).await;
                Ok(())
            }
        },
    );
    state.ready.store(true, Ordering::Release);
    tracing::info!(workflows = workflows.list().len(), "reactor-hub ready");

    reactor_core::process::shutdown_signal().await;
    tracing::info!("stopping: HTTP server and triggers first");
    state.stopping.cancel();
    if tokio::time::timeout(GRACE, cluster).await.is_err() {
        tracing::warn!("workflow sync and adoption did not stop in time");
    }
    let report = supervisor.shutdown(GRACE).await;
    // Singleton triggers have stopped: give the leadership up at once.
    drop(leader);
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
    drop(fleet_broker);
    drop(state);
    drop(workflows);
    drop(runtime);
    drop(sql);
    heartbeat.abort();
    if let Err(error) = instance.release().await {
        tracing::warn!(%error, "could not release this hub's lease");
    }
    db.close().await;
    tracing::info!("reactor-hub stopped");
    Ok(())
}

/// The secrets watch (changes by the CLI or another hub) and the live stream's pump,
/// supervised like triggers.
fn spawn_ops_tasks(
    supervisor: &Supervisor,
    runtime: &Runtime,
    secrets: SecretStore,
    live: LiveStream,
    telemetry: Arc<Telemetry>,
) {
    let runtime = runtime.clone();
    supervisor.spawn(
        "hub.secrets",
        Arc::new(TriggerStats::default()),
        move |stop| {
            let (secrets, runtime) = (secrets.clone(), runtime.clone());
            async move {
                secrets
                    .watch(runtime, crate::secrets::WATCH_PERIOD, stop)
                    .await;
                Ok(())
            }
        },
    );
    supervisor.spawn(
        "hub.stream",
        Arc::new(TriggerStats::default()),
        move |stop| {
            let (live, telemetry) = (live.clone(), telemetry.clone());
            async move {
                live.run(Some(telemetry), stop).await;
                Ok(())
            }
        },
    );
}

/// A consumer name (Redis stream consumers) that stays the same across restarts of this hub —
/// so a restarted hub re-reads its own pending entries at once — and differs between hubs on
/// one host (their data folders differ).
fn consumer_name(host: &str, data: &std::path::Path) -> String {
    let folder = std::fs::canonicalize(data).unwrap_or_else(|_| data.to_path_buf());
    let digest = ring::digest::digest(&ring::digest::SHA256, folder.to_string_lossy().as_bytes());
    let short: String = digest.as_ref()[..4]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    format!("{host}-{short}")
}

#[cfg(test)]
mod consumer_tests {
    use super::consumer_name;

    #[test]
    fn consumer_names_are_stable_per_folder_and_differ_between_folders() {
        let a = consumer_name("box", std::path::Path::new("/nonexistent/a"));
        assert_eq!(
            a,
            consumer_name("box", std::path::Path::new("/nonexistent/a"))
        );
        assert_ne!(
            a,
            consumer_name("box", std::path::Path::new("/nonexistent/b"))
        );
        assert!(a.starts_with("box-") && a.len() == "box-".len() + 8, "{a}");
    }
}
