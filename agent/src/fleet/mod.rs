//! The agent's side of the fleet: enrollment, the durable outbox feed, and the connection to
//! the hub's broker (docs/fleet.md, protocol in docs/sync-protocol.md).
//!
//! - [`enroll`]: `reactor-agent enroll` and the enrollment file in the data folder.
//! - [`feed`]: what goes up (every execution summary, every emitted event) and how it
//!   enters the outbox (`reactor_core::outbox`, in the journal's redb file).
//! - [`client`]: the MQTT connection: status + last will, drain in order, acks, resends.
//! - [`inbound`]: signed bundles (verified before any YAML is parsed) and commands.
//!
//! [`Fleet::prepare`] runs before the runtime exists (it wraps the journal and the event bus);
//! [`Fleet::start`] runs once the workflows are loaded (it re-applies the accepted bundle and
//! spawns the two tasks); [`Fleet::stop`] runs before the journal closes.

pub mod client;
pub mod enroll;
pub mod feed;
pub mod inbound;

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use reactor_core::deploy::ActiveWorkflows;
use reactor_core::engine::EventBus;
use reactor_core::outbox::{Outbox, OutboxLimits};
use reactor_core::store::{RedbStore, Store};
use reactor_core::sync::bundle::BundleVerifier;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{FleetTuning, OutboxConfig};
use client::{Client, ClientConfig, StatusSource};
use enroll::Enrollment;
use feed::{Feed, FleetBus, FleetStore, Health};

/// How often the outbox's age bound is enforced besides appends.
const EXPIRE_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// A device enrolled in a fleet, between `prepare` and `stop`.
#[derive(Debug)]
pub struct Fleet {
    enrollment: Enrollment,
    outbox: Outbox,
    feed: Feed,
    health: Arc<Health>,
    tuning: FleetTuning,
    cancel: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Fleet {
    /// `None` when the data folder holds no enrollment. Opens the outbox in the journal file.
    pub async fn prepare(
        data: &Path,
        redb: Arc<RedbStore>,
        limits: OutboxConfig,
        tuning: FleetTuning,
    ) -> anyhow::Result<Option<Fleet>> {
        let Some(enrollment) = Enrollment::load(data)? else {
            return Ok(None);
        };
        let outbox = Outbox::open(
            redb,
            OutboxLimits {
                max_bytes: limits.max_bytes,
                max_age: limits.max_age,
                policy: limits.policy,
            },
        )
        .await
        .context("opening the fleet outbox")?;
        let stats = outbox.stats().await?;
        tracing::info!(
            device = %enrollment.device_id,
            broker = %enrollment.broker.url,
            outbox_records = stats.records,
            outbox_bytes = stats.bytes,
            dropped = stats.dropped(),
            "enrolled in a fleet"
        );
        Ok(Some(Fleet {
            enrollment,
            feed: Feed::new(outbox.clone()),
            outbox,
            health: Arc::new(Health::new(tuning.health_window)),
            tuning,
            cancel: CancellationToken::new(),
            tasks: Vec::new(),
        }))
    }

    /// The journal, with finished executions feeding the outbox.
    pub fn wrap_store(&self, store: Arc<dyn Store>) -> Arc<dyn Store> {
        Arc::new(FleetStore::new(
            store,
            self.feed.clone(),
            self.health.clone(),
        ))
    }

    /// The event bus, with emitted events feeding the outbox.
    pub fn wrap_bus(&self, bus: Arc<dyn EventBus>) -> Arc<dyn EventBus> {
        Arc::new(FleetBus::new(bus, self.feed.clone()))
    }

    /// Re-applies the accepted bundle, then connects (in the background).
    pub async fn start(
        &mut self,
        store: Arc<dyn Store>,
        workflows: Arc<ActiveWorkflows>,
        mut config: ClientConfig,
    ) -> anyhow::Result<()> {
        config.status_every = self.tuning.status_every;
        let key = self.enrollment.validate()?;
        let device = self.enrollment.device()?;
        let status = Arc::new(StatusSource {
            bundle_version: std::sync::Mutex::new(None),
            health: self.health.clone(),
        });
        let mut handler = inbound::Handler {
            verifier: BundleVerifier::new(vec![key]),
            labels: self.enrollment.labels.clone(),
            store: store.clone(),
            workflows,
            status: status.clone(),
            applied: None,
        };
        handler.reopen().await?;
        let client = Client {
            enrollment: self.enrollment.clone(),
            device,
            outbox: self.outbox.clone(),
            store,
            config,
            status,
        };
        // The age bound also applies while nothing is appended.
        let outbox = self.outbox.clone();
        let cancel = self.cancel.clone();
        self.tasks.push(tokio::spawn(async move {
            let mut every = tokio::time::interval(EXPIRE_EVERY);
            loop {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    _ = every.tick() => {
                        match outbox.expire(reactor_core::engine::Timestamp::now()).await {
                            Ok(0) => {}
                            Ok(dropped) => tracing::warn!(dropped, "outbox records expired before reaching the hub"),
                            Err(error) => tracing::warn!(%error, "outbox expiry failed"),
                        }
                    }
                }
            }
        }));
        let (inbound_tx, inbound_rx) = mpsc::channel(64);
        let (outgoing_tx, outgoing_rx) = mpsc::channel(64);
        self.tasks.push(tokio::spawn(handler.run(
            inbound_rx,
            outgoing_tx,
            self.cancel.clone(),
        )));
        self.tasks.push(tokio::spawn(client.run(
            inbound_tx,
            outgoing_rx,
            self.cancel.clone(),
        )));
        Ok(())
    }

    /// Says offline, disconnects and waits for both tasks.
    pub async fn stop(self, grace: std::time::Duration) {
        self.cancel.cancel();
        for task in self.tasks {
            if tokio::time::timeout(grace, task).await.is_err() {
                tracing::warn!("fleet task did not stop in time");
            }
        }
    }
}
