//! Delivery: what the hub sends to the devices connected to it — their desired bundle and
//! their pending commands — over a client of its own on the embedded broker.
//!
//! Every hub runs one (each has its own embedded broker, so it can reach only the devices
//! connected to it; the rollout driver, on the leader only, just writes `fleet_desired`).
//! The client subscribes to `reactor/v1/d/+/status` and keeps, per device seen on this
//! broker, presence and the reported bundle version (highest status seq wins, as in
//! ingest). A device gets its desired bundle when:
//!
//! - its desired version changes (polled from `fleet_desired` every [`TICK`]) while it is
//!   online here with an older version;
//! - an `Online` status arrives reporting an older version (a device that was offline, or a
//!   hub that restarted, converges on reconnect);
//! - it is still behind [`RESEND_AFTER`] after the last send (a frame the agent dropped).
//!
//! Bundles are published QoS 1 **retained** on `d/{id}/bundle` (the protocol's channel
//! rule), so a device reconnecting to the same broker has it at once; the retained copy is
//! lost with the embedded broker on a hub restart, which the status rule covers. A bundle
//! delivered twice is harmless: the agent answers `AlreadyActive`.
//!
//! When a device's desired version changes while it is offline (a renewal, a later stage),
//! the new bundle is still published retained to it if this hub has seen it, so the copy
//! its broker holds for its reconnection is never an older (possibly expired) one. A bundle
//! whose expiry has passed is never sent (devices refuse it; its renewal replaces it).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reactor_core::sync::messages::{BundleFrame, Message, Presence};
use reactor_core::sync::{Channel, DeviceId, Envelope, Frame, Seq, decode, encode};
use rumqttc::{AsyncClient, Event as MqttEvent, Packet, QoS};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::broker::{BrokerError, BrokerTarget};
use super::{bundles, commands};
use crate::db::Database;

/// How often desired versions and due commands are polled.
pub const TICK: Duration = Duration::from_millis(200);
/// A device still behind this long after a send gets its bundle again.
pub const RESEND_AFTER: Duration = Duration::from_secs(15);
/// Full re-read of `fleet_desired` (besides the incremental polls).
const FULL_EVERY: Duration = Duration::from_secs(30);
/// Desired rows are polled from this long before the previous poll (clock skew between
/// hubs and commits that land late).
const POLL_OVERLAP_MS: i64 = 2_000;
/// Encoded bundle frames kept in memory.
const FRAME_CACHE: usize = 16;

/// What this hub knows of a device connected to its broker.
#[derive(Debug, Clone, Copy, Default)]
struct Seen {
    online: bool,
    bundle: Option<u64>,
    seq: u64,
}

#[derive(Debug, Default)]
struct State {
    seen: HashMap<String, Seen>,
    desired: HashMap<String, u64>,
    /// Last bundle send per device: version and when.
    sent: HashMap<String, (u64, Instant)>,
    /// Encoded bundle frames with their expiry (ms since the epoch).
    frames: HashMap<u64, (Arc<Vec<u8>>, i64)>,
    /// Expired desired versions already logged (once per version, not per device and send).
    expired_logged: std::collections::HashSet<u64>,
}

/// Counters, for logs and tests.
#[derive(Debug, Default)]
pub struct DeliveryStats {
    pub bundles_sent: std::sync::atomic::AtomicU64,
    pub commands_sent: std::sync::atomic::AtomicU64,
}

/// The running delivery; cheap to clone.
#[derive(Debug, Clone)]
pub struct Delivery {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    db: Database,
    client: AsyncClient,
    state: Mutex<State>,
    wake: Notify,
    /// Devices whose status said they are behind, for the sender task (the event loop must
    /// keep polling, so it never publishes itself). A set: one entry per device however many
    /// statuses arrive before the sender gets to it.
    reported: Mutex<HashSet<String>>,
    reported_wake: Notify,
    stats: DeliveryStats,
}

impl Delivery {
    /// Polls now instead of at the next tick (a new command, a new assignment).
    pub fn wake(&self) {
        self.inner.wake.notify_one();
    }

    pub fn stats(&self) -> &DeliveryStats {
        &self.inner.stats
    }
}

/// Starts delivery on `broker` (the embedded one or an external broker); it stops when
/// `stop` fires.
pub fn start(
    broker: &BrokerTarget,
    db: Database,
    stop: CancellationToken,
) -> Result<Delivery, BrokerError> {
    let mut options = broker.options(&format!("reactor-hub-delivery-{}", ulid::Ulid::new()))?;
    options.set_keep_alive(Duration::from_secs(30));
    options.set_clean_session(true);
    options.set_inflight(500);
    let (client, mut events) = AsyncClient::new(options, 4_096);
    let delivery = Delivery {
        inner: Arc::new(Inner {
            db,
            client: client.clone(),
            state: Mutex::default(),
            wake: Notify::new(),
            reported: Mutex::default(),
            reported_wake: Notify::new(),
            stats: DeliveryStats::default(),
        }),
    };
    let loop_stop = stop.clone();
    let inner = delivery.inner.clone();
    tokio::spawn(async move {
        loop {
            let event = tokio::select! {
                () = loop_stop.cancelled() => break,
                event = events.poll() => event,
            };
            match event {
                Ok(MqttEvent::Incoming(Packet::ConnAck(_))) => {
                    if let Err(error) = client
                        .subscribe(Channel::Status.hub_filter(), QoS::AtLeastOnce)
                        .await
                    {
                        tracing::error!(%error, "delivery could not subscribe to statuses");
                    }
                }
                Ok(MqttEvent::Incoming(Packet::Publish(publish))) => {
                    if let Some(device) = inner.status(&publish.topic, &publish.payload) {
                        inner.report_behind(device);
                    }
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(%error, "fleet delivery lost the broker; reconnecting");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        let _ = client.try_disconnect();
    });
    let inner = delivery.inner.clone();
    tokio::spawn(async move {
        let mut polled_at: i64 = 0;
        let mut full_at = Instant::now();
        let mut last_resend = Instant::now();
        loop {
            let full = polled_at == 0 || full_at.elapsed() >= FULL_EVERY;
            let since = if full { 0 } else { polled_at - POLL_OVERLAP_MS };
            let now = reactor_core::engine::Timestamp::now().millis();
            match bundles::desired_since(&inner.db, since).await {
                Ok(rows) => {
                    polled_at = now;
                    if full {
                        full_at = Instant::now();
                    }
                    let changed = inner.merge_desired(rows);
                    for device in changed {
                        inner.check(&device, false, true).await;
                    }
                }
                Err(error) => tracing::warn!(%error, "reading desired bundles failed"),
            }
            if last_resend.elapsed() >= RESEND_AFTER {
                last_resend = Instant::now();
                for device in inner.behind() {
                    inner.check(&device, false, false).await;
                }
            }
            inner.commands().await;
            let deadline = tokio::time::Instant::now() + TICK;
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = inner.wake.notified() => break,
                    () = tokio::time::sleep_until(deadline) => break,
                    () = inner.reported_wake.notified() => {
                        for device in inner.take_reported() {
                            inner.check(&device, true, false).await;
                        }
                    }
                }
            }
        }
    });
    Ok(delivery)
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Hands `device` (online and behind) to the sender task.
    fn report_behind(&self, device: String) {
        self.reported
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(device);
        self.reported_wake.notify_one();
    }

    /// The devices reported behind since the last call.
    fn take_reported(&self) -> HashSet<String> {
        std::mem::take(
            &mut *self
                .reported
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Records a status; returns the device when it is online and behind its desired bundle.
    fn status(&self, topic: &str, payload: &[u8]) -> Option<String> {
        let (device, channel) = reactor_core::sync::parse_topic(topic).ok()?;
        if channel != Channel::Status || payload.is_empty() {
            return None;
        }
        let Ok(Frame::Message(Envelope {
            seq,
            message: Message::Status(status),
            ..
        })) = decode(payload)
        else {
            return None;
        };
        let mut state = self.lock();
        let id = device.as_str().to_string();
        let seen = state.seen.entry(id.clone()).or_default();
        if seq.0 <= seen.seq && seen.seq != 0 {
            return None;
        }
        *seen = Seen {
            online: status.presence == Presence::Online,
            bundle: status.bundle_version,
            seq: seq.0,
        };
        let seen = *seen;
        let desired = state.desired.get(&id).copied()?;
        (seen.online && seen.bundle.is_none_or(|v| v < desired)).then_some(id)
    }

    /// Takes desired rows in; returns the devices whose desired version changed.
    fn merge_desired(&self, rows: Vec<(String, u64, i64)>) -> Vec<String> {
        let mut state = self.lock();
        let mut changed = Vec::new();
        for (device, version, _) in rows {
            if state.desired.insert(device.clone(), version) != Some(version) {
                changed.push(device);
            }
        }
        changed
    }

    /// Devices online here and behind, whose last send is older than [`RESEND_AFTER`].
    fn behind(&self) -> Vec<String> {
        let state = self.lock();
        state
            .seen
            .iter()
            .filter(|(id, seen)| {
                let Some(desired) = state.desired.get(*id) else {
                    return false;
                };
                seen.online
                    && seen.bundle.is_none_or(|v| v < *desired)
                    && state
                        .sent
                        .get(*id)
                        .is_none_or(|(_, at)| at.elapsed() >= RESEND_AFTER)
            })
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Sends `device` its desired bundle if it is online here and behind. A status that
    /// says the device is (again) behind (`fresh`) sends even right after a send: the
    /// device reconnected and may have missed it. `offline_too` (the desired version just
    /// changed): also to a device seen here offline, once per version, to replace the
    /// retained copy it will get when it reconnects.
    async fn check(&self, device: &str, fresh: bool, offline_too: bool) {
        let version = {
            let state = self.lock();
            let (Some(seen), Some(&desired)) = (state.seen.get(device), state.desired.get(device))
            else {
                return;
            };
            if seen.bundle.is_some_and(|v| v >= desired) {
                return;
            }
            let retain_only = !seen.online
                && offline_too
                && state
                    .sent
                    .get(device)
                    .is_none_or(|(sent, _)| *sent != desired);
            if !seen.online && !retain_only {
                return;
            }
            if !fresh
                && let Some((sent, at)) = state.sent.get(device)
                && *sent == desired
                && at.elapsed() < RESEND_AFTER
            {
                return;
            }
            desired
        };
        let Some((frame, expires)) = self.frame(version).await else {
            return;
        };
        if expires <= reactor_core::engine::Timestamp::now().millis() {
            if self.lock().expired_logged.insert(version) {
                tracing::warn!(
                    device,
                    version,
                    "a desired bundle has expired: sent to no device (its renewal replaces it; bundle_renew_below = 0?)"
                );
            }
            return;
        }
        let Ok(id) = DeviceId::parse(device) else {
            return;
        };
        match self
            .client
            .publish(
                id.topic(Channel::Bundle),
                QoS::AtLeastOnce,
                true,
                frame.to_vec(),
            )
            .await
        {
            Ok(()) => {
                self.stats
                    .bundles_sent
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.lock()
                    .sent
                    .insert(device.to_string(), (version, Instant::now()));
                tracing::debug!(device, version, "bundle sent");
            }
            Err(error) => tracing::warn!(device, version, %error, "bundle not sent"),
        }
    }

    /// The bundle frame of `version` (cached) and the bundle's expiry.
    async fn frame(&self, version: u64) -> Option<(Arc<Vec<u8>>, i64)> {
        if let Some(frame) = self.lock().frames.get(&version) {
            return Some(frame.clone());
        }
        let (bytes, expires) = match bundles::deliverable(&self.db, version).await {
            Ok(Some(found)) => found,
            Ok(None) => {
                tracing::error!(version, "a desired bundle is not stored");
                return None;
            }
            Err(error) => {
                tracing::warn!(version, %error, "reading a bundle failed");
                return None;
            }
        };
        let envelope = Envelope::new(Seq(version), Message::Bundle(BundleFrame { bytes }));
        let frame = match encode(&envelope) {
            Ok(frame) => Arc::new(frame),
            Err(error) => {
                tracing::error!(version, %error, "a bundle frame did not encode");
                return None;
            }
        };
        let mut state = self.lock();
        if state.frames.len() >= FRAME_CACHE
            && let Some(&oldest) = state.frames.keys().min()
        {
            state.frames.remove(&oldest);
        }
        state.frames.insert(version, (frame.clone(), expires));
        Some((frame, expires))
    }

    /// Publishes due commands to the devices online here.
    async fn commands(&self) {
        let due = match commands::due(&self.db).await {
            Ok(due) => due,
            Err(error) => {
                tracing::warn!(%error, "reading due commands failed");
                return;
            }
        };
        for command in due {
            let online = self
                .lock()
                .seen
                .get(&command.device)
                .is_some_and(|seen| seen.online);
            if !online {
                continue;
            }
            let Ok(id) = DeviceId::parse(&command.device) else {
                continue;
            };
            let Ok(wire) = command.command.to_wire(command.seq) else {
                continue;
            };
            let envelope = Envelope::new(Seq(command.seq), Message::Command(wire));
            let Ok(frame) = encode(&envelope) else {
                continue;
            };
            match self
                .client
                .publish(id.topic(Channel::Cmd), QoS::AtLeastOnce, false, frame)
                .await
            {
                Ok(()) => {
                    self.stats
                        .commands_sent
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if let Err(error) =
                        commands::mark_sent(&self.db, &command.device, command.seq).await
                    {
                        tracing::warn!(%error, "could not mark a command sent");
                    }
                }
                Err(error) => tracing::warn!(device = %command.device, %error, "command not sent"),
            }
        }
    }
}
