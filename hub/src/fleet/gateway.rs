//! The device-facing MQTT endpoint (`serve --mqtt-listen ADDR`): the hub's own MQTT 3.1.1
//! front in front of the embedded broker, because rumqttd has no per-topic ACL.
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
//! 2. the gateway opens its own connection to the broker with the internal login and the
//!    client id `d%{device}` (a `%` no device id can contain, and rumqttd refuses `/`), so a
//!    device can never take the hub's or another device's session; the broker's packets go
//!    back to the device as they are.
//! 3. every packet from the device is decoded before it is forwarded: PUBLISH only to its
//!    own `status`, `events`, `executions`; SUBSCRIBE only to exactly its own `ack`,
//!    `bundle`, `cmd` (no wildcards); a second CONNECT is refused. Any other topic or filter
//!    closes the connection at once (nothing of the packet reaches the broker).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use reactor_core::sync::topics::Direction;
use reactor_core::sync::{Channel, DeviceId, parse_topic};
use rumqttc::mqttbytes::v4::{ConnAck, ConnectReturnCode, Login, Packet};
use rumqttc::mqttbytes::{Error as MqttError, Protocol};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

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
}

/// Where the gateway forwards to and how it checks devices.
#[derive(Debug, Clone)]
pub struct Gateway {
    pub db: Database,
    pub upstream: SocketAddr,
    pub login: InternalLogin,
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
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

impl Gateway {
    /// Accepts device connections on `listener` until `stop` fires.
    pub async fn serve(self, listener: TcpListener, stop: CancellationToken) {
        let gateway = Arc::new(self);
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
            let Ok(slot) = gateway.slots.clone().try_acquire_owned() else {
                let refused = gateway.stats.refused_full.fetch_add(1, Ordering::Relaxed);
                if refused.is_multiple_of(1_000) {
                    tracing::warn!(%peer, refused = refused + 1, capacity = gateway.capacity, "device endpoint full: connection closed");
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
                    match &gateway.tls {
                        None => gateway.connection(socket).await,
                        Some(acceptor) => {
                            let handshake =
                                tokio::time::timeout(CONNECT_TIMEOUT, acceptor.0.accept(socket))
                                    .await;
                            match handshake {
                                Ok(Ok(stream)) => gateway.connection(stream).await,
                                Ok(Err(error)) => {
                                    gateway.stats.refused_tls.fetch_add(1, Ordering::Relaxed);
                                    Err(Refusal::Tls(error.to_string()))
                                }
                                Err(_) => {
                                    gateway.stats.refused_tls.fetch_add(1, Ordering::Relaxed);
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
                                Refusal::Io(_) => tracing::debug!(%peer, %error, "device connection ended"),
                                _ => tracing::warn!(%peer, %error, "device connection refused"),
                            }
                        }
                    }
                }
            });
        }
    }

    async fn connection<S>(&self, mut device: S) -> Result<(), Refusal>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let mut buffer = BytesMut::with_capacity(4096);
        let first = tokio::time::timeout(CONNECT_TIMEOUT, read_packet(&mut device, &mut buffer))
            .await
            .map_err(|_| Refusal::Connect("no CONNECT in time"))??;
        let Packet::Connect(mut connect) = first else {
            return Err(Refusal::Connect("the first packet is not CONNECT"));
        };
        let id = match self.check_connect(&connect).await {
            Ok(id) => id,
            Err((code, why)) => {
                self.stats.refused_connect.fetch_add(1, Ordering::Relaxed);
                let mut out = BytesMut::new();
                if (ConnAck {
                    session_present: false,
                    code,
                })
                .write(&mut out)
                .is_ok()
                {
                    let _ = device.write_all(&out).await;
                }
                return Err(Refusal::Connect(why));
            }
        };
        let mut upstream = TcpStream::connect(self.upstream).await?;
        let _ = upstream.set_nodelay(true);
        connect.client_id = format!("d%{}", id.as_str());
        connect.login = Some(Login::new(
            self.login.username.clone(),
            self.login.password.clone(),
        ));
        write_packet(&mut upstream, &Packet::Connect(connect)).await?;
        self.stats.accepted.fetch_add(1, Ordering::Relaxed);

        let (mut device_read, mut device_write) = tokio::io::split(device);
        let (mut upstream_read, mut upstream_write) = upstream.into_split();
        let down = tokio::spawn(async move {
            let _ = tokio::io::copy(&mut upstream_read, &mut device_write).await;
            let _ = device_write.shutdown().await;
        });
        let result = async {
            loop {
                let packet = read_packet(&mut device_read, &mut buffer).await?;
                check_packet(&id, &packet).inspect_err(|_| {
                    self.stats.refused_topic.fetch_add(1, Ordering::Relaxed);
                })?;
                let mut out = BytesMut::new();
                packet
                    .write(&mut out, MAX_PACKET)
                    .map_err(|e| Refusal::Malformed(e.to_string()))?;
                upstream_write.write_all(&out).await?;
                if matches!(packet, Packet::Disconnect) {
                    return Ok(());
                }
            }
        }
        .await;
        down.abort();
        let _ = upstream_write.shutdown().await;
        result
    }

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

async fn read_packet<R>(stream: &mut R, buffer: &mut BytesMut) -> Result<Packet, Refusal>
where
    R: AsyncRead + Unpin,
{
    loop {
        match Packet::read(buffer, MAX_PACKET) {
            Ok(packet) => return Ok(packet),
            Err(MqttError::InsufficientBytes(_)) => {}
            Err(error) => return Err(Refusal::Malformed(error.to_string())),
        }
        if stream.read_buf(buffer).await? == 0 {
            return Err(Refusal::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
    }
}

async fn write_packet(stream: &mut TcpStream, packet: &Packet) -> Result<(), Refusal> {
    let mut out = BytesMut::new();
    packet
        .write(&mut out, MAX_PACKET)
        .map_err(|e| Refusal::Malformed(e.to_string()))?;
    stream.write_all(&out).await?;
    Ok(())
}
