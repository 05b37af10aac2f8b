//! The fleet, hub side: the device registry and enrollment, the bundle-signing key, the
//! device-facing MQTT endpoint in front of the embedded broker, and ingestion of device
//! frames. See docs/fleet.md for the design and docs/sync-protocol.md for the wire format.
//!
//! - [`registry`]: devices, one-time enrollment tokens, credentials (hashes only).
//! - [`keys`]: the bundle-signing key, generated at first start, stored sealed.
//! - [`api`]: `POST /api/v1/enroll` (token only) and `GET /api/v1/devices`.
//! - [`cli`]: `reactor-hub device add|list`.
//! - [`broker`]: the embedded rumqttd, reachable only with the hub's internal login.
//! - [`gateway`]: the device-facing MQTT endpoint: identity and per-device topic checks; it
//!   terminates device sessions and shares a few connections to the broker.
//! - [`tls`]: the device endpoint's certificate (rustls, ring).
//! - [`provision`]: device logins and ACLs on an external Mosquitto (dynamic security).
//! - [`records`]: batched inserts of device records for ingest.
//! - [`ingest`]: the hub's client on the broker: device frames stored once, acks, presence,
//!   device events into the hub's workflows.
//! - [`bundles`]: signed bundles (validated, versioned fleet-wide) and each device's desired one.
//! - [`delivery`]: this hub's client sending devices their desired bundle and commands.
//! - [`rollout`]: staged rollouts with a health gate and rollback (leader-driven).
//! - [`commands`]: hub → device commands and their answers.

pub mod api;
pub mod broker;
pub mod bundles;
pub mod cli;
pub mod commands;
pub mod delivery;
pub mod gateway;
pub mod ingest;
pub mod keys;
pub mod provision;
pub mod records;
pub mod registry;
pub mod rollout;
pub mod tls;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::FleetConfig;
use crate::db::Database;

/// Most device connections the device endpoint holds.
pub const MAX_DEVICES: usize = 20_000;
/// Connections the embedded broker is sized for: the gateway's pool and the hub's own
/// clients (ingest, delivery), never devices.
const BROKER_CONNECTIONS: usize = 64;

/// Starts what `serve`'s fleet flags ask for, until `stop` fires, and returns where the hub's
/// own MQTT clients connect (`None`: no broker configured):
/// - `--mqtt-listen ADDR`: the embedded broker and the device endpoint on ADDR (TLS when a
///   certificate is configured);
/// - `--mqtt-broker URL`: nothing starts here; the hub is a client of that broker.
pub async fn start_endpoint(
    config: &FleetConfig,
    db: &Database,
    stop: CancellationToken,
) -> anyhow::Result<Option<broker::BrokerTarget>> {
    use anyhow::Context as _;
    if let Some(url) = &config.external_broker {
        let target = broker::BrokerTarget::external(url)?;
        tracing::info!(host = %target.host, port = target.port, tls = target.tls, "fleet uses an external MQTT broker");
        return Ok(Some(target));
    }
    let Some(listen) = config.mqtt_listen else {
        return Ok(None);
    };
    let tls = match &config.tls {
        Some(files) => Some(
            files
                .acceptor()
                .context("the device endpoint's TLS certificate")?,
        ),
        None => None,
    };
    let broker = broker::EmbeddedBroker::start(BROKER_CONNECTIONS)?;
    broker.ready(Duration::from_secs(10)).await?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen} for MQTT"))?;
    tracing::info!(%listen, tls = tls.is_some(), "device MQTT endpoint listening");
    let capacity = device_capacity();
    tracing::info!(capacity, "device connections the endpoint holds at most");
    let gateway = gateway::Gateway {
        capacity,
        slots: Arc::new(tokio::sync::Semaphore::new(capacity)),
        db: db.clone(),
        upstream: broker.addr,
        login: broker.login.clone(),
        pool_size: gateway::pool_size(),
        stats: Arc::default(),
        tls,
    };
    tokio::spawn(gateway.serve(listener, stop));
    Ok(Some(broker::BrokerTarget::embedded(&broker)))
}

/// Descriptors kept for everything but device connections (database, files, HTTP clients).
const RESERVED_FDS: u64 = 512;

/// Device connections the endpoint may hold: each costs one descriptor in this process (its
/// socket; the gateway terminates the session), within the open-files soft limit less
/// [`RESERVED_FDS`], and at most [`MAX_DEVICES`].
pub fn device_capacity() -> usize {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(u64::MAX);
    let by_fds = limit.saturating_sub(RESERVED_FDS);
    usize::try_from(by_fds)
        .unwrap_or(usize::MAX)
        .min(MAX_DEVICES)
}

/// Raises the soft limit of open files to the hard limit (each device connection through the
/// endpoint holds one descriptor in this process). Logs what it got.
pub fn raise_open_files_limit() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current == limit.maximum {
        tracing::debug!(open_files = ?limit.current, "open-files limit already at its maximum");
        return;
    }
    let raised = Rlimit {
        current: limit.maximum,
        maximum: limit.maximum,
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => {
            tracing::info!(from = ?limit.current, to = ?limit.maximum, "raised the open-files limit")
        }
        Err(error) => {
            tracing::warn!(%error, current = ?limit.current, "could not raise the open-files limit")
        }
    }
}
