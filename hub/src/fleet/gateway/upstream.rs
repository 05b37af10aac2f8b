//! The gateway's side on the embedded broker: a small fixed pool of MQTT connections shared
//! by every device session, and the router that hands messages for a device to its session.
//!
//! - Each device is hashed to one pool connection (the same one on every connection of that
//!   device), so everything a device publishes — its will included — reaches the broker in
//!   the order it was sent.
//! - A QoS 1 publish gets a pool packet id; the device's PUBACK is sent only once the
//!   broker acknowledged that id ([`Forward::ack`]). At most [`MAX_INFLIGHT`] per connection.
//! - Connection 0 also subscribes to the hub → device channels of every device
//!   (`reactor/v1/d/+/ack|bundle|cmd`); each message goes to the session of its device
//!   through that session's bounded queue. No session here: dropped (counted); a full queue:
//!   the session is dropped (counted) — one slow device never holds up the others. A device's
//!   session starts only while that subscription stands (its SUBACK came), so a device's
//!   SUBACK means the hub's messages for it reach it.
//! - A pool connection that fails ends the sessions hashed to it (their unacknowledged
//!   publishes could never be acknowledged); it reconnects with a backoff.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use reactor_core::sync::topics::Direction;
use reactor_core::sync::{Channel, parse_topic};
use rumqttc::mqttbytes::QoS;
use rumqttc::mqttbytes::v4::{
    Connect, ConnectReturnCode, Login, Packet, PubAck, Publish, Subscribe, SubscribeFilter,
};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::{GatewayStats, Refusal, read_packet};
use crate::fleet::broker::{InternalLogin, MAX_PACKET};

/// Publishes in flight (sent, not yet acknowledged by the broker) per pool connection.
pub const MAX_INFLIGHT: usize = 4_096;
/// Forwarded publishes waiting for their pool connection (sessions wait when it is full).
const REQUEST_QUEUE: usize = 1_024;
/// Keep-alive announced to the broker; a PINGREQ goes out every third of it.
const KEEP_ALIVE_SECS: u16 = 60;
/// Packets written to the broker per write call at most.
const WRITE_BATCH: usize = 64;
/// PUBACKs the reader may have queued for the writer.
const CONTROL_QUEUE: usize = 1_024;

/// A message for a session.
#[derive(Debug)]
pub enum ToSession {
    /// A hub → device publish from the broker.
    Deliver(Box<Publish>),
    /// The broker acknowledged the device's publish with this (device) packet id.
    PubAck(u16),
}

/// Why a session was ended from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kick {
    /// The pool connection it was hashed to failed.
    UpstreamLost = 0,
    /// The same device connected again.
    Takeover = 1,
    /// Its queue overflowed.
    Slow = 2,
}

/// The router's and the pool's hold on a live session.
#[derive(Debug)]
pub struct Handle {
    pub tx: mpsc::Sender<ToSession>,
    pub kick: CancellationToken,
    reason: AtomicU8,
}

impl Handle {
    pub fn new(tx: mpsc::Sender<ToSession>, kick: CancellationToken) -> Handle {
        Handle {
            tx,
            kick,
            reason: AtomicU8::new(Kick::UpstreamLost as u8),
        }
    }

    /// Ends the session for `reason`.
    pub fn kick(&self, reason: Kick) {
        self.reason.store(reason as u8, Ordering::Relaxed);
        self.kick.cancel();
    }

    /// Why the session was kicked (meaningful once `kick` fired).
    pub fn reason(&self) -> Kick {
        match self.reason.load(Ordering::Relaxed) {
            1 => Kick::Takeover,
            2 => Kick::Slow,
            _ => Kick::UpstreamLost,
        }
    }

    /// Queues `message`; a full queue ends the session (counted) and returns false.
    fn offer(&self, message: ToSession, stats: &GatewayStats) -> bool {
        match self.tx.try_send(message) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                if !self.kick.is_cancelled() {
                    stats.dropped_slow.fetch_add(1, Ordering::Relaxed);
                }
                self.kick(Kick::Slow);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
}

/// Live sessions by device id.
#[derive(Debug, Default)]
pub struct Router {
    sessions: Mutex<HashMap<String, Arc<Handle>>>,
}

impl Router {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Handle>>> {
        self.sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Registers `handle` for `device`; the session it replaces (if any) is kicked.
    pub fn insert(&self, device: &str, handle: Arc<Handle>) {
        let previous = self.lock().insert(device.to_string(), handle);
        if let Some(previous) = previous {
            previous.kick(Kick::Takeover);
        }
    }

    /// Removes `device`'s entry if it is still `handle`.
    pub fn remove(&self, device: &str, handle: &Arc<Handle>) {
        let mut sessions = self.lock();
        if sessions
            .get(device)
            .is_some_and(|current| Arc::ptr_eq(current, handle))
        {
            sessions.remove(device);
        }
    }

    fn get(&self, device: &str) -> Option<Arc<Handle>> {
        self.lock().get(device).cloned()
    }
}

/// Where the broker's acknowledgement of a forwarded publish goes.
#[derive(Debug)]
pub struct AckTo {
    pub session: Arc<Handle>,
    pub pkid: u16,
}

/// A device's publish (or its will) on its way to the broker.
#[derive(Debug)]
pub struct Forward {
    pub topic: String,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// Who gets the PUBACK (QoS 1 from a device); `None` for QoS 0 and wills.
    pub ack: Option<AckTo>,
}

/// One pool connection as sessions see it.
#[derive(Debug)]
struct Slot {
    requests: mpsc::Sender<Forward>,
    /// Cancelled when the current broker connection fails; sessions hold child tokens.
    generation: Mutex<CancellationToken>,
}

/// The pool; cheap to share.
#[derive(Debug)]
pub struct Pool {
    slots: Vec<Slot>,
    /// Whether connection 0's subscription to the hub → device channels is in place (its
    /// SUBACK came and the connection still stands).
    downlink: watch::Sender<bool>,
}

impl Pool {
    /// Starts `size` connections to the broker at `addr` (connection 0 also carries the
    /// hub → device messages to `router`), until `stop`.
    pub fn start(
        addr: SocketAddr,
        login: &InternalLogin,
        size: usize,
        router: Arc<Router>,
        stats: Arc<GatewayStats>,
        stop: &CancellationToken,
    ) -> Arc<Pool> {
        let size = size.max(1);
        let mut slots = Vec::with_capacity(size);
        let mut receivers = Vec::with_capacity(size);
        for _ in 0..size {
            let (tx, rx) = mpsc::channel(REQUEST_QUEUE);
            slots.push(Slot {
                requests: tx,
                generation: Mutex::new(CancellationToken::new()),
            });
            receivers.push(rx);
        }
        let pool = Arc::new(Pool {
            slots,
            downlink: watch::Sender::new(false),
        });
        let run = ulid::Ulid::new().to_string();
        for (index, requests) in receivers.into_iter().enumerate() {
            let link = Link {
                addr,
                login: login.clone(),
                client_id: format!("gw%{index}-{run}"),
                subscriber: index == 0,
                router: router.clone(),
                stats: stats.clone(),
                pool: pool.clone(),
                index,
            };
            tokio::spawn(link.run(requests, stop.clone()));
        }
        pool
    }

    /// Returns once the hub → device channels are subscribed at the broker. A device must
    /// not be told it is subscribed before: what the broker carried for it meanwhile would
    /// reach nobody.
    pub async fn downlink_ready(&self) {
        let mut ready = self.downlink.subscribe();
        // Only fails when the pool is gone, and then nothing waits on it.
        let _ = ready.wait_for(|ready| *ready).await;
    }

    /// The pool connection of `device`.
    pub fn slot_of(&self, device: &str) -> usize {
        let mut hasher = DefaultHasher::new();
        device.hash(&mut hasher);
        usize::try_from(hasher.finish() % self.slots.len() as u64).unwrap_or(0)
    }

    /// A token cancelled when pool connection `slot` fails.
    pub fn session_token(&self, slot: usize) -> CancellationToken {
        self.slots[slot]
            .generation
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .child_token()
    }

    /// Queues `forward` on pool connection `slot` (waits while that queue is full).
    pub async fn send(&self, slot: usize, forward: Forward) -> Result<(), Refusal> {
        self.slots[slot]
            .requests
            .send(forward)
            .await
            .map_err(|_| Refusal::Io(std::io::ErrorKind::BrokenPipe.into()))
    }

    /// Ends the sessions on `slot` and starts a new generation for the next connection.
    fn next_generation(&self, slot: usize) {
        let mut generation = self.slots[slot]
            .generation
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        generation.cancel();
        *generation = CancellationToken::new();
    }
}

/// One pool connection's task.
struct Link {
    addr: SocketAddr,
    login: InternalLogin,
    client_id: String,
    subscriber: bool,
    router: Arc<Router>,
    stats: Arc<GatewayStats>,
    pool: Arc<Pool>,
    index: usize,
}

/// Publishes sent on one broker connection and not yet acknowledged, by pool packet id.
#[derive(Default)]
struct Inflight {
    entries: Mutex<HashMap<u16, Option<AckTo>>>,
    room: Notify,
}

impl Inflight {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u16, Option<AckTo>>> {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Link {
    async fn run(self, mut requests: mpsc::Receiver<Forward>, stop: CancellationToken) {
        let mut delay = Duration::from_millis(50);
        loop {
            let connected = tokio::select! {
                () = stop.cancelled() => return,
                connected = self.connect() => connected,
            };
            match connected {
                Ok((stream, buffer)) => {
                    delay = Duration::from_millis(50);
                    let error = tokio::select! {
                        () = stop.cancelled() => return,
                        error = self.serve(stream, buffer, &mut requests) => error,
                    };
                    if self.subscriber {
                        self.pool.downlink.send_replace(false);
                    }
                    self.stats.upstream_lost.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(link = self.index, %error, "gateway lost its broker connection: its device sessions end");
                    self.pool.next_generation(self.index);
                }
                Err(error) => {
                    tracing::warn!(link = self.index, %error, "gateway could not connect to the broker")
                }
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }

    /// Connects and logs in (CONNACK accepted); subscribes when this is the subscriber.
    /// Returns the stream and what was read after the CONNACK.
    async fn connect(&self) -> Result<(TcpStream, BytesMut), Refusal> {
        let mut stream = TcpStream::connect(self.addr).await?;
        let _ = stream.set_nodelay(true);
        let mut connect = Connect::new(self.client_id.clone());
        connect.keep_alive = KEEP_ALIVE_SECS;
        connect.clean_session = true;
        connect.login = Some(Login::new(
            self.login.username.clone(),
            self.login.password.clone(),
        ));
        let mut out = BytesMut::new();
        encode(&Packet::Connect(connect), &mut out)?;
        if self.subscriber {
            let filters = [Channel::Ack, Channel::Bundle, Channel::Cmd]
                .map(|channel| SubscribeFilter::new(channel.hub_filter(), QoS::AtLeastOnce));
            let mut subscribe = Subscribe::new_many(filters);
            subscribe.pkid = 1;
            encode(&Packet::Subscribe(subscribe), &mut out)?;
        }
        stream.write_all(&out).await?;
        let mut buffer = BytesMut::new();
        let answer = tokio::time::timeout(
            super::CONNECT_TIMEOUT,
            read_packet(&mut stream, &mut buffer, 4096),
        )
        .await
        .map_err(|_| Refusal::Connect("no CONNACK from the broker in time"))??;
        match answer {
            Packet::ConnAck(ack) if ack.code == ConnectReturnCode::Success => {}
            _ => return Err(Refusal::Connect("the broker refused the gateway")),
        }
        Ok((stream, buffer))
    }

    /// Runs one broker connection until it fails.
    async fn serve(
        &self,
        stream: TcpStream,
        buffer: BytesMut,
        requests: &mut mpsc::Receiver<Forward>,
    ) -> Refusal {
        let (read, write) = stream.into_split();
        let inflight = Inflight::default();
        // The reader's PUBACKs for the writer. The broker's in-flight window bounds them
        // already; the channel's bound makes the reader wait (and stop reading) if the
        // writer ever falls that far behind.
        let (control_tx, control_rx) = mpsc::channel::<Packet>(CONTROL_QUEUE);
        tokio::select! {
            error = self.writer(write, requests, control_rx, &inflight) => error,
            error = self.reader(read, buffer, control_tx, &inflight) => error,
        }
    }

    /// Forwards queued publishes (and the reader's PUBACKs, and pings) to the broker.
    async fn writer(
        &self,
        mut write: OwnedWriteHalf,
        requests: &mut mpsc::Receiver<Forward>,
        mut control: mpsc::Receiver<Packet>,
        inflight: &Inflight,
    ) -> Refusal {
        let mut next_pkid: u16 = 1;
        let mut ping = tokio::time::interval(Duration::from_secs(u64::from(KEEP_ALIVE_SECS) / 3));
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut out = BytesMut::new();
        loop {
            let full = inflight.lock().len() >= MAX_INFLIGHT;
            tokio::select! {
                forward = requests.recv(), if !full => {
                    let Some(forward) = forward else {
                        return Refusal::Io(std::io::ErrorKind::BrokenPipe.into());
                    };
                    let mut next = Some(forward);
                    let mut batched = 0;
                    while let Some(forward) = next.take() {
                        if let Err(error) = self.publish(forward, &mut next_pkid, inflight, &mut out) {
                            return error;
                        }
                        batched += 1;
                        if batched < WRITE_BATCH && inflight.lock().len() < MAX_INFLIGHT {
                            next = requests.try_recv().ok();
                        }
                    }
                }
                packet = control.recv() => {
                    let Some(packet) = packet else {
                        return Refusal::Io(std::io::ErrorKind::BrokenPipe.into());
                    };
                    if let Err(error) = encode(&packet, &mut out) {
                        return error;
                    }
                    while let Ok(packet) = control.try_recv() {
                        if let Err(error) = encode(&packet, &mut out) {
                            return error;
                        }
                    }
                }
                () = inflight.room.notified(), if full => continue,
                _ = ping.tick() => {
                    if let Err(error) = encode(&Packet::PingReq, &mut out) {
                        return error;
                    }
                }
            }
            if let Err(error) = write.write_all(&out).await {
                return error.into();
            }
            out.clear();
        }
    }

    /// Encodes `forward` into `out`, registering its packet id (QoS 1) in `inflight`.
    fn publish(
        &self,
        forward: Forward,
        next_pkid: &mut u16,
        inflight: &Inflight,
        out: &mut BytesMut,
    ) -> Result<(), Refusal> {
        let mut publish = Publish::from_bytes(forward.topic, forward.qos, forward.payload);
        publish.retain = forward.retain;
        if forward.qos != QoS::AtMostOnce {
            let mut entries = inflight.lock();
            while entries.contains_key(next_pkid) || *next_pkid == 0 {
                *next_pkid = next_pkid.wrapping_add(1);
            }
            publish.pkid = *next_pkid;
            *next_pkid = next_pkid.wrapping_add(1);
            entries.insert(publish.pkid, forward.ack);
        }
        encode(&Packet::Publish(publish), out)
    }

    /// Reads the broker's packets: acknowledgements, and (subscriber) hub → device messages.
    async fn reader(
        &self,
        mut read: OwnedReadHalf,
        mut buffer: BytesMut,
        control: mpsc::Sender<Packet>,
        inflight: &Inflight,
    ) -> Refusal {
        loop {
            let packet = match read_packet(&mut read, &mut buffer, 64 * 1024).await {
                Ok(packet) => packet,
                Err(error) => return error,
            };
            match packet {
                Packet::PubAck(ack) => {
                    let entry = inflight.lock().remove(&ack.pkid);
                    inflight.room.notify_one();
                    if let Some(Some(to)) = entry {
                        to.session.offer(ToSession::PubAck(to.pkid), &self.stats);
                    }
                }
                Packet::Publish(publish) => {
                    if publish.qos != QoS::AtMostOnce
                        && control
                            .send(Packet::PubAck(PubAck::new(publish.pkid)))
                            .await
                            .is_err()
                    {
                        return Refusal::Io(std::io::ErrorKind::BrokenPipe.into());
                    }
                    self.route(publish);
                }
                Packet::SubAck(ack)
                    if ack.return_codes.iter().any(|code| {
                        matches!(code, rumqttc::mqttbytes::v4::SubscribeReasonCode::Failure)
                    }) =>
                {
                    return Refusal::Connect("the broker refused the gateway's subscription");
                }
                Packet::SubAck(_) if self.subscriber => {
                    self.pool.downlink.send_replace(true);
                }
                _ => {}
            }
        }
    }

    /// Hands a hub → device message to its device's session, if it is connected here.
    fn route(&self, publish: Publish) {
        let device = match parse_topic(&publish.topic) {
            Ok((device, channel)) if channel.direction() == Direction::HubToAgent => device,
            _ => return,
        };
        match self.router.get(device.as_str()) {
            Some(session) => {
                session.offer(ToSession::Deliver(Box::new(publish)), &self.stats);
            }
            None => {
                self.stats.undeliverable.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

fn encode(packet: &Packet, out: &mut BytesMut) -> Result<(), Refusal> {
    packet
        .write(out, MAX_PACKET)
        .map(|_| ())
        .map_err(|e| Refusal::Malformed(e.to_string()))
}

#[cfg(test)]
#[path = "upstream_tests.rs"]
mod tests;
