//! The device-facing MQTT endpoint (`serve --mqtt-listen ADDR`): the hub's own MQTT 3.1.1
//! front in front of the embedded broker, because rumqttd has no per-topic ACL. It
//! terminates every device's session itself, so a device costs the hub one descriptor (its
//! socket) and one task; the broker sees only a small fixed pool of gateway connections
//! ([`upstream`]).
//!
//! With `--mqtt-tls-cert` / `--mqtt-tls-key` the endpoint speaks TLS only ([`super::tls`]):
//! a client that does not complete a TLS handshake within [`CONNECT_TIMEOUT`] is dropped.
//!
//! Per connection:
//! 1. the first packet must be CONNECT (3.1.1), within [`CONNECT_TIMEOUT`], at most
//!    [`MAX_PACKET`] bytes; the client id must be a valid [`DeviceId`], the username must
//!    equal it and the password must be that device's current credential (registry); a last
//!    will may only be the device's own `status` topic. Otherwise CONNACK with a refusal code
//!    and the connection closes.
//! 2. the session is registered under the device id (a session of the same device that was
//!    still open ends: takeover, no will) and CONNACK accepts it (never a stored session:
//!    every session is clean; devices use clean sessions).
//! 3. every packet from the device is decoded and checked ([`check_packet`]): PUBLISH only to
//!    its own `status`, `events`, `executions`; SUBSCRIBE only to exactly its own `ack`,
//!    `bundle`, `cmd` (no wildcards). Any other topic or filter closes the connection at once
//!    (nothing of the packet reaches the broker). The rest is [`session`].
//!
//! Hub → device messages for a device that is not connected here are dropped: the hub's
//! senders resend on their own (docs/fleet.md, "Connections and scale").

mod session;
mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use reactor_core::sync::topics::Direction;
use reactor_core::sync::{Channel, DeviceId, parse_topic};
use rumqttc::mqttbytes::v4::{ConnAck, ConnectReturnCode, Packet};
use rumqttc::mqttbytes::{Error as MqttError, Protocol};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use self::session::{End, Session};
use self::upstream::{Handle, Pool, Router};

use super::broker::{InternalLogin, MAX_PACKET};
use crate::db::Database;

/// How long a new connection has to send CONNECT.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Counters, for logs, metrics and tests.
#[derive(Debug, Default)]
pub struct GatewayStats {
    pub accepted: AtomicU64,
    pub refused_connect: AtomicU64,
    pub refused_topic: AtomicU64,
    /// Connections closed at once because the endpoint held its capacity.
    pub refused_full: AtomicU64,
    /// TLS handshakes that failed or timed out (plain MQTT on the TLS port, bad clients).
    pub refused_tls: AtomicU64,
    /// Sessions closed for a malformed or unsupported packet (QoS 2, a second CONNECT, …).
    pub refused_protocol: AtomicU64,
    /// Device sessions open now.
    pub sessions: AtomicU64,
    /// Sessions ended because nothing came within 1.5 x their keep-alive.
    pub expired_keepalive: AtomicU64,
    /// Sessions ended because the device did not keep up (full queue, stalled write, too many
    /// deliveries without PUBACK).
    pub dropped_slow: AtomicU64,
    /// Last wills published for devices.
    pub wills: AtomicU64,
    /// Hub → device messages dropped: the device is not connected here or not subscribed.
    pub undeliverable: AtomicU64,
    /// Pool connections to the broker that failed (their sessions ended).
    pub upstream_lost: AtomicU64,
}

/// Where the gateway forwards to and how it checks devices.
#[derive(Debug, Clone)]
pub struct Gateway {
    pub db: Database,
    /// The embedded broker.
    pub upstream: SocketAddr,
    pub login: InternalLogin,
    /// Connections to the broker shared by all device sessions ([`pool_size`]).
    pub pool_size: usize,
    pub stats: Arc<GatewayStats>,
    /// Device connections held at most (see [`super::device_capacity`]).
    pub capacity: usize,
    /// One permit per connection held.
    pub slots: Arc<tokio::sync::Semaphore>,
    /// TLS on the device side (`--mqtt-tls-cert`); plain TCP when `None`.
    pub tls: Option<super::tls::Acceptor>,
}

/// Why a device's connection ended.
#[derive(Debug, thiserror::Error)]
enum Refusal {
    #[error("connect refused: {0}")]
    Connect(&'static str),
    #[error("topic refused: {0}")]
    Topic(String),
    #[error("malformed packet: {0}")]
    Malformed(String),
    #[error("TLS handshake failed: {0}")]
    Tls(String),
    #[error("session ended: {0}")]
    Ended(String),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// Pool connections to the broker: one per core, 2 to 8.
pub fn pool_size() -> usize {
    std::thread::available_parallelism()
        .map_or(2, std::num::NonZeroUsize::get)
        .clamp(2, 8)
}

/// The gateway while it serves.
struct Running {
    gateway: Gateway,
    pool: Arc<Pool>,
    router: Arc<Router>,
}

impl Gateway {
    /// Accepts device connections on `listener` until `stop` fires.
    pub async fn serve(self, listener: TcpListener, stop: CancellationToken) {
        let router = Arc::new(Router::default());
        let pool = Pool::start(
            self.upstream,
            &self.login,
            self.pool_size,
            router.clone(),
            self.stats.clone(),
            &stop,
        );
        let gateway = Arc::new(Running {
            gateway: self,
            pool,
            router,
        });
        loop {
            let accepted = tokio::select! {
                () = stop.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            let (socket, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "MQTT accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            // Past the capacity the connection is closed at once: the process must never run
            // out of descriptors (the broker's own accept loop does not survive that).
            let Ok(slot) = gateway.gateway.slots.clone().try_acquire_owned() else {
                let refused = gateway
                    .gateway
                    .stats
                    .refused_full
                    .fetch_add(1, Ordering::Relaxed);
                if refused.is_multiple_of(1_000) {
                    tracing::warn!(%peer, refused = refused + 1, capacity = gateway.gateway.capacity, "device endpoint full: connection closed");
                }
                drop(socket);
                continue;
            };
            let gateway = gateway.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let _slot = slot;
                let _ = socket.set_nodelay(true);
                let result = async {
                    match &gateway.gateway.tls {
                        None => gateway.connection(socket, &stop).await,
                        Some(acceptor) => {
                            let handshake =
                                tokio::time::timeout(CONNECT_TIMEOUT, acceptor.0.accept(socket))
                                    .await;
                            match handshake {
                                Ok(Ok(stream)) => gateway.connection(stream, &stop).await,
                                Ok(Err(error)) => {
                                    gateway
                                        .gateway
                                        .stats
                                        .refused_tls
                                        .fetch_add(1, Ordering::Relaxed);
                                    Err(Refusal::Tls(error.to_string()))
                                }
                                Err(_) => {
                                    gateway
                                        .gateway
                                        .stats
                                        .refused_tls
                                        .fetch_add(1, Ordering::Relaxed);
                                    Err(Refusal::Tls("no handshake in time".into()))
                                }
                            }
                        }
                    }
                };
                tokio::select! {
                    () = stop.cancelled() => {}
                    result = result => {
                        if let Err(error) = result {
                            match error {
                                Refusal::Io(_) | Refusal::Ended(_) => tracing::debug!(%peer, %error, "device connection ended"),
                                _ => tracing::warn!(%peer, %error, "device connection refused"),
                            }
                        }
                    }
                }
            });
        }
    }
}

impl Running {
    /// One device connection: CONNECT checked, then its session until it ends.
    async fn connection<S>(&self, mut device: S, stop: &CancellationToken) -> Result<(), Refusal>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        // A device's session starts only while the hub → device channels are subscribed
        // (at start, and while connection 0 reconnects): a device that got its SUBACK before
        // that would miss what is sent to it meanwhile.
        self.pool.downlink_ready().await;
        let gateway = &self.gateway;
        let mut buffer = BytesMut::new();
        let first =
            tokio::time::timeout(CONNECT_TIMEOUT, read_packet(&mut device, &mut buffer, 1024))
                .await
                .map_err(|_| Refusal::Connect("no CONNECT in time"))??;
        let Packet::Connect(connect) = first else {
            return Err(Refusal::Connect("the first packet is not CONNECT"));
        };
        let id = match gateway.check_connect(&connect).await {
            Ok(id) => id,
            Err((code, why)) => {
                gateway
                    .stats
                    .refused_connect
                    .fetch_add(1, Ordering::Relaxed);
                let _ = write_connack(&mut device, code).await;
                return Err(Refusal::Connect(why));
            }
        };
        let slot = self.pool.slot_of(id.as_str());
        let (tx, mut queue) = tokio::sync::mpsc::channel(session::QUEUE);
        let handle = Arc::new(Handle::new(tx, self.pool.session_token(slot)));
        self.router.insert(id.as_str(), handle.clone());
        gateway.stats.sessions.fetch_add(1, Ordering::Relaxed);
        let mut session = Session::new(
            id,
            handle.clone(),
            &self.pool,
            slot,
            &gateway.stats,
            connect.keep_alive,
        );
        let end = match write_connack(&mut device, ConnectReturnCode::Success).await {
            Ok(()) => {
                gateway.stats.accepted.fetch_add(1, Ordering::Relaxed);
                session
                    .run(&mut device, &mut buffer, &mut queue, stop)
                    .await
            }
            Err(error) => End::Closed(error),
        };
        self.router.remove(session.id.as_str(), &handle);
        gateway.stats.sessions.fetch_sub(1, Ordering::Relaxed);
        if matches!(end, End::KeepAlive) {
            gateway
                .stats
                .expired_keepalive
                .fetch_add(1, Ordering::Relaxed);
        }
        if end.fires_will()
            && let Some(will) = connect.last_will
        {
            session.publish_will(will).await;
        }
        // A device that stopped reading must not hold the task (TLS writes a close_notify).
        let _ = tokio::time::timeout(Duration::from_secs(1), device.shutdown()).await;
        match end {
            End::Disconnect | End::Stopped | End::Kicked(upstream::Kick::Takeover) => Ok(()),
            End::Closed(error) => Err(Refusal::Io(error)),
            End::Kicked(kick) => Err(Refusal::Ended(format!("{kick:?}"))),
            End::KeepAlive => Err(Refusal::Ended("keep-alive expired".into())),
            End::Slow(why) => Err(Refusal::Ended(why.into())),
            End::Topic(why) => Err(Refusal::Topic(why)),
            End::Protocol(why) => Err(Refusal::Malformed(why)),
        }
    }
}

impl Gateway {
    /// The device a CONNECT may open, or the CONNACK code to refuse it with.
    async fn check_connect(
        &self,
        connect: &rumqttc::mqttbytes::v4::Connect,
    ) -> Result<DeviceId, (ConnectReturnCode, &'static str)> {
        if connect.protocol != Protocol::V4 {
            return Err((
                ConnectReturnCode::RefusedProtocolVersion,
                "only MQTT 3.1.1 is spoken",
            ));
        }
        let id = DeviceId::parse(&connect.client_id).map_err(|_| {
            (
                ConnectReturnCode::BadClientId,
                "client id is not a device id",
            )
        })?;
        let Some(login) = &connect.login else {
            return Err((ConnectReturnCode::NotAuthorized, "no credentials"));
        };
        if login.username != connect.client_id {
            return Err((
                ConnectReturnCode::BadUserNamePassword,
                "username differs from the client id",
            ));
        }
        match super::registry::authenticate(&self.db, id.as_str(), &login.password).await {
            Ok(true) => {}
            Ok(false) => {
                return Err((
                    ConnectReturnCode::BadUserNamePassword,
                    "unknown device or wrong credential",
                ));
            }
            Err(error) => {
                tracing::warn!(%error, "device authentication failed on the database");
                return Err((
                    ConnectReturnCode::ServiceUnavailable,
                    "database unavailable",
                ));
            }
        }
        if let Some(will) = &connect.last_will
            && will.topic != id.topic(Channel::Status)
        {
            return Err((
                ConnectReturnCode::NotAuthorized,
                "the last will may only be the device's own status",
            ));
        }
        Ok(id)
    }
}

/// Whether device `id` may send `packet`.
fn check_packet(id: &DeviceId, packet: &Packet) -> Result<(), Refusal> {
    match packet {
        Packet::Publish(publish) => {
            let allowed = matches!(parse_topic(&publish.topic), Ok((device, channel))
                if &device == id && channel.direction() == Direction::AgentToHub);
            if allowed {
                Ok(())
            } else {
                Err(Refusal::Topic(format!("publish to {:?}", publish.topic)))
            }
        }
        Packet::Subscribe(subscribe) => {
            for filter in &subscribe.filters {
                let allowed = matches!(parse_topic(&filter.path), Ok((device, channel))
                    if &device == id && channel.direction() == Direction::HubToAgent);
                if !allowed {
                    return Err(Refusal::Topic(format!("subscribe to {:?}", filter.path)));
                }
            }
            Ok(())
        }
        Packet::Unsubscribe(_)
        | Packet::PubAck(_)
        | Packet::PubRec(_)
        | Packet::PubRel(_)
        | Packet::PubComp(_)
        | Packet::PingReq
        | Packet::Disconnect => Ok(()),
        other => Err(Refusal::Malformed(format!(
            "{:?} is not sent by clients",
            std::mem::discriminant(other)
        ))),
    }
}

/// The next packet from `stream`; reads go in chunks of at least `min` bytes.
async fn read_packet<R>(
    stream: &mut R,
    buffer: &mut BytesMut,
    min: usize,
) -> Result<Packet, Refusal>
where
    R: AsyncRead + Unpin,
{
    loop {
        match Packet::read(buffer, MAX_PACKET) {
            Ok(packet) => return Ok(packet),
            Err(MqttError::InsufficientBytes(missing)) => make_room(buffer, missing, min),
            Err(error) => return Err(Refusal::Malformed(error.to_string())),
        }
        if stream.read_buf(buffer).await? == 0 {
            return Err(Refusal::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
    }
}

/// Makes room in `buffer` for the `missing` bytes of the packet being read (at least `min`),
/// so a large packet is read in few calls and an idle session keeps a small buffer.
fn make_room(buffer: &mut BytesMut, missing: usize, min: usize) {
    let want = missing.clamp(min, MAX_PACKET);
    if buffer.capacity() - buffer.len() < want {
        buffer.reserve(want);
    }
}

async fn write_connack<S>(device: &mut S, code: ConnectReturnCode) -> std::io::Result<()>
where
    S: AsyncWrite + Unpin,
{
    let mut out = BytesMut::new();
    ConnAck {
        session_present: false,
        code,
    }
    .write(&mut out)
    .map_err(|e| std::io::Error::other(e.to_string()))?;
    device.write_all(&out).await?;
    device.flush().await
}
