//! A broker connection driven by hand over rumqttc's MQTT 3.1.1 codec: the `mqtt` trigger's
//! (served here) and the `mqtt.publish` publisher's (served in `publisher.rs`).
//!
//! Why not rumqttc's `EventLoop`: it writes at most one queued request (a manual PUBACK) per
//! turn and picks that turn at random against a read of up to ten incoming packets. Under a
//! sustained QoS 1 stream the socket is always readable, so acknowledgements fell ~10:1
//! behind deliveries. Mosquitto counts unacknowledged messages against
//! `max_queued_messages` (and, once a client has a backlog, 2.0.11 sends the whole backlog
//! regardless of `max_inflight_messages`), so past ~1,000 unacknowledged messages it dropped
//! new ones for the trigger's session — silently for the agent (a NOTICE in the broker's log
//! only). Issue 3 lost 416 of 30,000 readings that way.
//!
//! Here every turn first writes *all* queued outgoing packets (acknowledgements, SUBSCRIBE,
//! PINGREQ, DISCONNECT) in one buffer, then reads whatever arrived and decodes every complete
//! packet. PUBREL is answered with PUBCOMP at once (the QoS 2 message was acknowledged with
//! PUBREC only after it was recorded). The read side is bounded by the trigger's channel:
//! while the trigger is busy the loop stops reading and TCP pushes back on the broker.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use rumqttc::mqttbytes::v4::{
    Connect, Login, Packet, PubAck, PubComp, PubRec, Publish, SubAck, Subscribe, Unsubscribe,
};
use rumqttc::mqttbytes::{Error as CodecError, QoS};
use rumqttc::tokio_rustls;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::connection::{self, CONNECT_TIMEOUT_SECS};
use super::settings::{MqttSettings, Tls};

/// What the trigger asks the link to send.
#[derive(Debug)]
pub enum Outbound {
    Subscribe {
        filter: String,
        qos: QoS,
    },
    /// Drop a subscription the persistent session may still hold (the UNSUBACK is ignored).
    Unsubscribe {
        filter: String,
    },
    /// Acknowledge a delivered message: PUBACK (QoS 1) or PUBREC (QoS 2).
    Ack {
        qos: QoS,
        pkid: u16,
    },
    Disconnect,
}

/// What the link reports to the trigger.
#[derive(Debug)]
pub enum Inbound {
    Connected { session_present: bool },
    Lost,
    Message(Publish),
    SubAck(SubAck),
}

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("connecting to {0} timed out")]
    ConnectTimeout(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("MQTT protocol error: {0}")]
    Protocol(String),
    #[error("the broker refused the connection: {0}")]
    Refused(String),
    #[error("the broker did not answer a ping within the keep-alive")]
    PingTimeout,
    #[error("the broker closed the connection")]
    Closed,
}

trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

/// One open connection.
pub struct Connection {
    stream: Box<dyn Stream>,
    read: BytesMut,
    write: BytesMut,
    max_packet: usize,
    keep_alive: Duration,
    next_pkid: u16,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection").finish_non_exhaustive()
    }
}

/// How a connection ended from the trigger's side.
#[derive(Debug)]
pub enum Ended {
    /// A DISCONNECT was written on request.
    Disconnected,
    /// The trigger went away (its channels closed).
    Abandoned,
}

impl Connection {
    /// TCP (+ TLS) + CONNECT/CONNACK within the connect timeout; returns the link and whether
    /// the broker kept a session.
    pub async fn connect(
        settings: &MqttSettings,
        client_id: &str,
        clean_session: bool,
    ) -> Result<(Connection, bool), LinkError> {
        let timeout = Duration::from_secs(CONNECT_TIMEOUT_SECS);
        tokio::time::timeout(
            timeout,
            Connection::handshake(settings, client_id, clean_session),
        )
        .await
        .map_err(|_| LinkError::ConnectTimeout(settings.url.clone()))?
    }

    async fn handshake(
        settings: &MqttSettings,
        client_id: &str,
        clean_session: bool,
    ) -> Result<(Connection, bool), LinkError> {
        let tcp = tokio::net::TcpStream::connect((settings.host.as_str(), settings.port)).await?;
        tcp.set_nodelay(true)?;
        let stream: Box<dyn Stream> = match &settings.tls {
            Tls::None => Box::new(tcp),
            Tls::Rustls { ca_file } => {
                let config =
                    connection::tls_config(ca_file.as_deref()).map_err(LinkError::Protocol)?;
                let name = rustls::pki_types::ServerName::try_from(settings.host.clone())
                    .map_err(|e| LinkError::Protocol(format!("server name: {e}")))?;
                let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
                Box::new(connector.connect(name, tcp).await?)
            }
        };
        let mut link = Connection {
            stream,
            read: BytesMut::with_capacity(8 * 1024),
            write: BytesMut::with_capacity(4 * 1024),
            max_packet: settings.max_packet_size,
            keep_alive: settings.keep_alive,
            next_pkid: 0,
        };
        let mut connect = Connect::new(client_id);
        connect.keep_alive = u16::try_from(settings.keep_alive.as_secs()).unwrap_or(u16::MAX);
        connect.clean_session = clean_session;
        if let Some(username) = &settings.username {
            let password = settings
                .password
                .as_ref()
                .map(|p| p.expose().to_string())
                .unwrap_or_default();
            connect.login = Some(Login::new(username.clone(), password));
        }
        link.encode(&Packet::Connect(connect))?;
        link.flush().await?;
        match link.next_packet().await? {
            Packet::ConnAck(ack) => match ack.code {
                rumqttc::mqttbytes::v4::ConnectReturnCode::Success => {
                    Ok((link, ack.session_present))
                }
                code => Err(LinkError::Refused(format!("{code:?}"))),
            },
            other => Err(LinkError::Protocol(format!(
                "expected CONNACK, got {other:?}"
            ))),
        }
    }

    /// Queues `packet` for the next [`Connection::flush`]. A packet that does not encode
    /// (too large, say) leaves nothing queued.
    pub(super) fn encode(&mut self, packet: &Packet) -> Result<(), LinkError> {
        let before = self.write.len();
        packet
            .write(&mut self.write, self.max_packet)
            .map(|_| ())
            .map_err(|e| {
                self.write.truncate(before);
                LinkError::Protocol(e.to_string())
            })
    }

    /// Whether packets are queued for the next flush.
    pub(super) fn has_queued(&self) -> bool {
        !self.write.is_empty()
    }

    /// Whether a PINGREQ is due: the keep-alive agreed in CONNECT, zero meaning none (MQTT
    /// 3.1.1 §3.1.2.10: the broker then never times the client out).
    pub(super) fn pings(&self) -> bool {
        !self.keep_alive.is_zero()
    }

    /// When the next PINGREQ is due: a keep-alive from now.
    pub(super) fn next_ping(&self) -> tokio::time::Instant {
        tokio::time::Instant::now() + self.keep_alive
    }

    /// Reads what the socket has into the read buffer; a closed socket is an error.
    /// Cancel safe: it either reads into the buffer or reads nothing.
    pub(super) async fn read_some(&mut self) -> Result<(), LinkError> {
        if self.stream.read_buf(&mut self.read).await? == 0 {
            return Err(LinkError::Closed);
        }
        Ok(())
    }

    /// Writes everything queued, in one write.
    pub(super) async fn flush(&mut self) -> Result<(), LinkError> {
        if !self.write.is_empty() {
            self.stream.write_all(&self.write).await?;
            self.stream.flush().await?;
            self.write.clear();
        }
        Ok(())
    }

    /// The next complete packet already read, if any.
    pub(super) fn decode(&mut self) -> Result<Option<Packet>, LinkError> {
        match Packet::read(&mut self.read, self.max_packet) {
            Ok(packet) => Ok(Some(packet)),
            Err(CodecError::InsufficientBytes(_)) => Ok(None),
            Err(error) => Err(LinkError::Protocol(error.to_string())),
        }
    }

    async fn next_packet(&mut self) -> Result<Packet, LinkError> {
        loop {
            if let Some(packet) = self.decode()? {
                return Ok(packet);
            }
            self.read_some().await?;
        }
    }

    fn pkid(&mut self) -> u16 {
        self.next_pkid = self.next_pkid.checked_add(1).unwrap_or(1);
        self.next_pkid
    }

    fn queue(&mut self, outbound: Outbound) -> Result<bool, LinkError> {
        match outbound {
            Outbound::Subscribe { filter, qos } => {
                let mut subscribe = Subscribe::new(filter, qos);
                subscribe.pkid = self.pkid();
                self.encode(&Packet::Subscribe(subscribe))?;
            }
            Outbound::Unsubscribe { filter } => {
                let mut unsubscribe = Unsubscribe::new(filter);
                unsubscribe.pkid = self.pkid();
                self.encode(&Packet::Unsubscribe(unsubscribe))?;
            }
            Outbound::Ack { qos, pkid } => match qos {
                QoS::AtMostOnce => {}
                QoS::AtLeastOnce => self.encode(&Packet::PubAck(PubAck::new(pkid)))?,
                QoS::ExactlyOnce => self.encode(&Packet::PubRec(PubRec::new(pkid)))?,
            },
            Outbound::Disconnect => {
                self.encode(&Packet::Disconnect)?;
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Serves the connection until it fails, a DISCONNECT is sent, or the trigger goes away.
    /// `inbound` is bounded: while it is full the link stops reading (but keeps writing what
    /// `outbound` brings, so acknowledgements still flow).
    pub async fn serve(
        mut self,
        outbound: &mut mpsc::Receiver<Outbound>,
        inbound: &mpsc::Sender<Inbound>,
    ) -> Result<Ended, LinkError> {
        let pings = self.pings();
        let mut ping_due = self.next_ping();
        let mut ping_outstanding = false;
        // A packet read but not yet handed over (the channel was full).
        let mut held: Option<Inbound> = None;
        loop {
            // Everything queued goes out first, in one write.
            let mut disconnect = false;
            while let Ok(request) = outbound.try_recv() {
                disconnect |= self.queue(request)?;
            }
            self.flush().await?;
            if disconnect {
                return Ok(Ended::Disconnected);
            }
            // Hand over every complete packet already read, as far as the channel takes them.
            while held.is_none() {
                let Some(packet) = self.decode()? else { break };
                match packet {
                    Packet::Publish(publish) => held = Some(Inbound::Message(publish)),
                    Packet::SubAck(ack) => held = Some(Inbound::SubAck(ack)),
                    Packet::PubRel(rel) => self.encode(&Packet::PubComp(PubComp::new(rel.pkid)))?,
                    Packet::PingResp => ping_outstanding = false,
                    Packet::Disconnect => return Err(LinkError::Closed),
                    _ => {}
                }
                if let Some(item) = held.take() {
                    match inbound.try_send(item) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(item)) => held = Some(item),
                        Err(mpsc::error::TrySendError::Closed(_)) => return Ok(Ended::Abandoned),
                    }
                }
            }
            if !self.write.is_empty() {
                continue; // PUBCOMPs to write
            }
            let reading = held.is_none();
            tokio::select! {
                biased;
                request = outbound.recv() => match request {
                    Some(request) => {
                        if self.queue(request)? {
                            self.flush().await?;
                            return Ok(Ended::Disconnected);
                        }
                    }
                    None => return Ok(Ended::Abandoned),
                },
                // Cancel safety: `reserve` takes nothing from the channel until used.
                permit = inbound.reserve(), if !reading => match permit {
                    Ok(permit) => {
                        if let Some(item) = held.take() {
                            permit.send(item);
                        }
                    }
                    Err(_) => return Ok(Ended::Abandoned),
                },
                // Cancel safety: see `read_some`.
                read = self.read_some(), if reading => read?,
                () = tokio::time::sleep_until(ping_due), if pings => {
                    // An unanswered ping fails the link only if we were reading: while the
                    // trigger is busy the answer may sit unread in the socket.
                    if ping_outstanding && reading {
                        return Err(LinkError::PingTimeout);
                    }
                    self.encode(&Packet::PingReq)?;
                    ping_outstanding = true;
                    ping_due = self.next_ping();
                }
            }
        }
    }
}
