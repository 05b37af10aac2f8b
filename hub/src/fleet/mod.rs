//! The fleet, hub side: the device registry and enrollment, the bundle-signing key, the
//! device-facing MQTT endpoint in front of the embedded broker, and ingestion of device
//! frames. See docs/fleet.md for the design and docs/sync-protocol.md for the wire format.
//!
//! - [`registry`]: devices, one-time enrollment tokens, credentials (hashes only).
//! - [`keys`]: the bundle-signing key, generated at first start, stored sealed.
//! - [`api`]: `POST /api/v1/enroll` (token only) and `GET /api/v1/devices`.
//! - [`cli`]: `reactor-hub device add|list`.
//! - [`broker`]: the embedded rumqttd, reachable only with the hub's internal login.
//! - [`gateway`]: the device-facing MQTT endpoint: identity and per-device topic checks.
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
pub mod registry;
pub mod rollout;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::FleetConfig;
use crate::db::Database;

/// Most device connections the embedded broker is sized for.
pub const MAX_DEVICES: usize = 20_000;

/// Starts the embedded broker and the device endpoint when `--mqtt-listen` is set; they stop
/// accepting when `stop` fires. Returns the broker (for the hub's own client), if started.
pub async fn start_endpoint(
    config: &FleetConfig,
    db: &Database,
    stop: CancellationToken,
) -> anyhow::Result<Option<broker::EmbeddedBroker>> {
    use anyhow::Context as _;
    let Some(listen) = config.mqtt_listen else {
        return Ok(None);
    };
    let broker = broker::EmbeddedBroker::start(MAX_DEVICES)?;
    broker.ready(Duration::from_secs(10)).await?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen} for MQTT"))?;
    tracing::info!(%listen, "device MQTT endpoint listening");
    let gateway = gateway::Gateway {
        db: db.clone(),
        upstream: broker.addr,
        login: broker.login.clone(),
        stats: Arc::default(),
    };
    tokio::spawn(gateway.serve(listener, stop));
    Ok(Some(broker))
}
