//! One device's MQTT session, terminated by the gateway after CONNECT was accepted: one
//! task and one descriptor per device.
//!
//! - From the device: PUBLISH QoS 0/1 on its own uplink topics (forwarded on its pool
//!   connection; the PUBACK follows the broker's); QoS 2 is refused (the connection closes:
//!   no part of the fleet publishes QoS 2). SUBSCRIBE to its own downlink topics (granted
//!   at most QoS 1), UNSUBSCRIBE, PINGREQ, PUBACK (of what the gateway delivered),
//!   DISCONNECT. A topic or filter outside its prefix, a second CONNECT or a packet only a
//!   server sends closes the connection at once (nothing of the packet is forwarded).
//! - To the device: what the router hands over for its subscribed channels, with packet
//!   ids of this session; more than [`MAX_UNACKED`] deliveries without PUBACK, a write that
//!   does not finish within [`WRITE_TIMEOUT`] or a full queue end the session (slow).
//! - Keep-alive: nothing received for 1.5 × the CONNECT's keep-alive ends the session.
//! - The last will is published (on the device's pool connection, after everything the
//!   device sent) whenever the session ends without DISCONNECT — except when the same
//!   device connected again (takeover: it is online) or the hub is stopping.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::BytesMut;
use reactor_core::sync::{Channel, DeviceId, parse_topic};
use rumqttc::mqttbytes::v4::{
    LastWill, Packet, PubAck, Publish, SubAck, SubscribeReasonCode, UnsubAck,
};
use rumqttc::mqttbytes::{Error as MqttError, QoS};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use super::upstream::{AckTo, Forward, Handle, Kick, Pool, ToSession};
use super::{GatewayStats, check_packet};
use crate::fleet::broker::MAX_PACKET;

/// Messages queued for one session at most; one more ends it (slow device).
pub const QUEUE: usize = 128;
/// QoS 1 deliveries to a device without its PUBACK at most; one more ends the session.
pub const MAX_UNACKED: u32 = 256;
/// A write to a device that takes longer than this ends the session (slow device).
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Read buffer room at least (an idle session holds about this much).
const READ_MIN: usize = 512;
/// Queued messages written to the device per write call at most.
const WRITE_BATCH: usize = 32;

/// How a session ended.
#[derive(Debug)]
pub enum End {
    /// DISCONNECT from the device: no will.
    Disconnect,
    /// Hub shutdown: no will.
    Stopped,
    /// Kicked by the router or the pool.
    Kicked(Kick),
    /// The device closed the connection (or it broke) without DISCONNECT.
    Closed(std::io::Error),
    /// Nothing received within 1.5 × keep-alive.
    KeepAlive,
    /// A write did not finish within [`WRITE_TIMEOUT`], or too many unacknowledged
    /// deliveries.
    Slow(&'static str),
    /// A refused topic or filter.
    Topic(String),
    /// A malformed or unsupported packet.
    Protocol(String),
}

impl End {
    /// Whether the device's will is published.
    pub fn fires_will(&self) -> bool {
        !matches!(
            self,
            End::Disconnect | End::Stopped | End::Kicked(Kick::Takeover)
        )
    }
}

/// A device's live session.
pub struct Session<'a> {
    pub id: DeviceId,
    pub handle: Arc<Handle>,
    pub pool: &'a Pool,
    pub slot: usize,
    pub stats: &'a GatewayStats,
    /// The CONNECT's keep-alive, in seconds (0: none).
    pub keep_alive: u16,
    /// Granted QoS per downlink channel (ack, bundle, cmd); `None`: not subscribed.
    subscribed: [Option<QoS>; 3],
    next_pkid: u16,
    unacked: u32,
}

fn downlink_index(channel: Channel) -> Option<usize> {
    match channel {
        Channel::Ack => Some(0),
        Channel::Bundle => Some(1),
        Channel::Cmd => Some(2),
        _ => None,
    }
}

impl<'a> Session<'a> {
    pub fn new(
        id: DeviceId,
        handle: Arc<Handle>,
        pool: &'a Pool,
        slot: usize,
        stats: &'a GatewayStats,
        keep_alive: u16,
    ) -> Session<'a> {
        Session {
            id,
            handle,
            pool,
            slot,
            stats,
            keep_alive,
            subscribed: [None; 3],
            next_pkid: 1,
            unacked: 0,
        }
    }

    /// Serves the device until the session ends; `buffer` holds what was read after CONNECT.
    pub async fn run<S>(
        &mut self,
        device: &mut S,
        buffer: &mut BytesMut,
        queue: &mut tokio::sync::mpsc::Receiver<ToSession>,
        stop: &CancellationToken,
    ) -> End
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let idle = (self.keep_alive > 0)
            .then(|| Duration::from_millis(u64::from(self.keep_alive) * 1_500));
        let far = Duration::from_secs(365 * 24 * 3600);
        let mut deadline = tokio::time::Instant::now() + idle.unwrap_or(far);
        let mut out = BytesMut::new();
        let kick = self.handle.kick.clone();
        loop {
            // Every complete packet already read first.
            loop {
                match Packet::read(buffer, MAX_PACKET) {
                    Ok(packet) => {
                        if let Some(end) = self.on_packet(packet, &mut out, &kick).await {
                            // What was answered so far still goes out (best effort).
                            let _ = self.flush(device, &mut out, &kick).await;
                            return end;
                        }
                    }
                    Err(MqttError::InsufficientBytes(missing)) => {
                        super::make_room(buffer, missing, READ_MIN);
                        break;
                    }
                    Err(error) => return End::Protocol(error.to_string()),
                }
            }
            if !out.is_empty()
                && let Err(end) = self.flush(device, &mut out, &kick).await
            {
                return end;
            }
            tokio::select! {
                biased;
                () = kick.cancelled() => return End::Kicked(self.handle.reason()),
                () = stop.cancelled() => return End::Stopped,
                read = device.read_buf(buffer) => match read {
                    Ok(0) => return End::Closed(std::io::ErrorKind::UnexpectedEof.into()),
                    Ok(_) => {
                        if let Some(idle) = idle {
                            deadline = tokio::time::Instant::now() + idle;
                        }
                    }
                    Err(error) => return End::Closed(error),
                },
                message = queue.recv() => {
                    let Some(message) = message else {
                        return End::Kicked(self.handle.reason());
                    };
                    let mut next = Some(message);
                    let mut batched = 0;
                    while let Some(message) = next.take() {
                        if let Err(end) = self.on_message(message, &mut out) {
                            return end;
                        }
                        batched += 1;
                        if batched < WRITE_BATCH {
                            next = queue.try_recv().ok();
                        }
                    }
                }
                () = tokio::time::sleep_until(deadline), if idle.is_some() => return End::KeepAlive,
            }
        }
    }

    /// Handles one packet from the device; `Some` ends the session.
    async fn on_packet(
        &mut self,
        packet: Packet,
        out: &mut BytesMut,
        kick: &CancellationToken,
    ) -> Option<End> {
        if let Err(refusal) = check_packet(&self.id, &packet) {
            self.stats.refused_topic.fetch_add(1, Ordering::Relaxed);
            return Some(End::Topic(refusal.to_string()));
        }
        match packet {
            Packet::Publish(publish) => {
                let ack = match publish.qos {
                    QoS::AtMostOnce => None,
                    QoS::AtLeastOnce if publish.pkid != 0 => Some(AckTo {
                        session: self.handle.clone(),
                        pkid: publish.pkid,
                    }),
                    QoS::AtLeastOnce => {
                        return Some(self.protocol("a QoS 1 PUBLISH with packet id 0"));
                    }
                    QoS::ExactlyOnce => {
                        return Some(self.protocol("QoS 2 PUBLISH is not supported"));
                    }
                };
                let forward = Forward {
                    topic: publish.topic,
                    payload: publish.payload,
                    qos: publish.qos,
                    retain: publish.retain,
                    ack,
                };
                tokio::select! {
                    sent = self.pool.send(self.slot, forward) => {
                        if let Err(error) = sent {
                            return Some(End::Closed(std::io::Error::other(error.to_string())));
                        }
                    }
                    () = kick.cancelled() => return Some(End::Kicked(self.handle.reason())),
                }
            }
            Packet::Subscribe(subscribe) => {
                let mut codes = Vec::with_capacity(subscribe.filters.len());
                for filter in &subscribe.filters {
                    // check_packet let only this device's own downlink topics through.
                    let granted = if filter.qos == QoS::AtMostOnce {
                        QoS::AtMostOnce
                    } else {
                        QoS::AtLeastOnce
                    };
                    if let Some(index) = parse_topic(&filter.path)
                        .ok()
                        .and_then(|(_, channel)| downlink_index(channel))
                    {
                        self.subscribed[index] = Some(granted);
                    }
                    codes.push(SubscribeReasonCode::Success(granted));
                }
                if let Err(end) = encode(&Packet::SubAck(SubAck::new(subscribe.pkid, codes)), out) {
                    return Some(end);
                }
            }
            Packet::Unsubscribe(unsubscribe) => {
                for topic in &unsubscribe.topics {
                    if let Some(index) = parse_topic(topic)
                        .ok()
                        .filter(|(device, _)| device == &self.id)
                        .and_then(|(_, channel)| downlink_index(channel))
                    {
                        self.subscribed[index] = None;
                    }
                }
                if let Err(end) = encode(&Packet::UnsubAck(UnsubAck::new(unsubscribe.pkid)), out) {
                    return Some(end);
                }
            }
            Packet::PubAck(_) => self.unacked = self.unacked.saturating_sub(1),
            // Only for QoS 2 flows, which never start here.
            Packet::PubRec(_) | Packet::PubRel(_) | Packet::PubComp(_) => {}
            Packet::PingReq => {
                if let Err(end) = encode(&Packet::PingResp, out) {
                    return Some(end);
                }
            }
            Packet::Disconnect => return Some(End::Disconnect),
            Packet::Connect(_) => return Some(self.protocol("a second CONNECT")),
            // check_packet refused every other packet.
            _ => return Some(self.protocol("a packet only a server sends")),
        }
        None
    }

    fn protocol(&self, why: &str) -> End {
        self.stats.refused_protocol.fetch_add(1, Ordering::Relaxed);
        End::Protocol(why.to_string())
    }

    /// Encodes a queued message for the device into `out`.
    fn on_message(&mut self, message: ToSession, out: &mut BytesMut) -> Result<(), End> {
        match message {
            ToSession::PubAck(pkid) => encode(&Packet::PubAck(PubAck::new(pkid)), out),
            ToSession::Deliver(publish) => {
                let Publish {
                    qos,
                    retain,
                    topic,
                    payload,
                    ..
                } = *publish;
                let granted = parse_topic(&topic)
                    .ok()
                    .filter(|(device, _)| device == &self.id)
                    .and_then(|(_, channel)| downlink_index(channel))
                    .and_then(|index| self.subscribed[index]);
                let Some(granted) = granted else {
                    // Not subscribed (yet, or any more): as a broker, nothing to deliver.
                    self.stats.undeliverable.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                };
                let qos = if qos == QoS::AtMostOnce || granted == QoS::AtMostOnce {
                    QoS::AtMostOnce
                } else {
                    QoS::AtLeastOnce
                };
                let mut publish = Publish::from_bytes(topic, qos, payload);
                publish.retain = retain;
                if qos == QoS::AtLeastOnce {
                    self.unacked += 1;
                    if self.unacked > MAX_UNACKED {
                        self.stats.dropped_slow.fetch_add(1, Ordering::Relaxed);
                        return Err(End::Slow("too many deliveries without PUBACK"));
                    }
                    publish.pkid = self.next_pkid;
                    self.next_pkid = self.next_pkid.checked_add(1).unwrap_or(1);
                }
                encode(&Packet::Publish(publish), out)
            }
        }
    }

    /// Writes `out` to the device (within [`WRITE_TIMEOUT`]) and clears it.
    async fn flush<S>(
        &self,
        device: &mut S,
        out: &mut BytesMut,
        kick: &CancellationToken,
    ) -> Result<(), End>
    where
        S: AsyncWrite + Unpin,
    {
        let write = async {
            device.write_all(out).await?;
            device.flush().await
        };
        let result = tokio::select! {
            result = tokio::time::timeout(WRITE_TIMEOUT, write) => result,
            () = kick.cancelled() => return Err(End::Kicked(self.handle.reason())),
        };
        out.clear();
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(End::Closed(error)),
            Err(_) => {
                self.stats.dropped_slow.fetch_add(1, Ordering::Relaxed);
                Err(End::Slow("a write did not finish in time"))
            }
        }
    }

    /// Publishes the device's will on its pool connection (after what it sent).
    pub async fn publish_will(&self, will: LastWill) {
        let qos = match will.qos {
            QoS::AtMostOnce => QoS::AtMostOnce,
            _ => QoS::AtLeastOnce,
        };
        let forward = Forward {
            topic: will.topic,
            payload: will.message,
            qos,
            retain: will.retain,
            ack: None,
        };
        if self.pool.send(self.slot, forward).await.is_ok() {
            self.stats.wills.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn encode(packet: &Packet, out: &mut BytesMut) -> Result<(), End> {
    packet
        .write(out, MAX_PACKET)
        .map(|_| ())
        .map_err(|e| End::Protocol(e.to_string()))
}
