//! [`BrokerPublisher`]: the runtime's [`MqttPublisher`] over one connection per broker.
//!
//! - Lazy: a broker's connection starts with its first message and then stays up, reconnecting
//!   with backoff (warnings rate-limited).
//! - Bounded: each connection takes at most [`PUBLISH_QUEUE`] waiting messages; beyond that a
//!   `publish` waits for room (backpressure on the steps). When a message is neither queued
//!   nor confirmed within the publish timeout, `publish` answers
//!   [`PublishError::Unavailable`] (retryable). While disconnected, messages wait in the queue
//!   (until their timeout). At most the connection's `inflight` messages are unconfirmed at
//!   once.
//! - Confirmed: QoS 0 returns once the message is written to the socket; QoS 1 once the broker's
//!   PUBACK arrived, QoS 2 once its PUBCOMP arrived — so a step succeeds only when the broker has
//!   the message.
//! - Batched: one task owns the socket (the same hand-driven [`Connection`] as the trigger's)
//!   and writes every message queued meanwhile in one write, so a burst of steps costs a
//!   syscall per turn, not per message; packet ids are its own.
//! - Clean session: if the link breaks before the ack, every waiting message fails as
//!   `Unavailable` and is forgotten (nothing is retransmitted behind the step's back); the
//!   step's retry sends it again, so a subscriber may see it twice (QoS 1 is at least once).
//! - Rejected (permanent): unknown broker, a topic that is empty, has wildcards or NUL, a
//!   message larger than the connection's `max_packet_size`, a `broker` URL that does not
//!   parse, a TLS setting that cannot work (an unreadable `ca_file`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rumqttc::mqttbytes::v4::{Packet, PubAck, PubComp, PubRec, PubRel, Publish};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info, info_span, warn};

use super::connection::{self, Backoff, Throttle, WARN_EVERY};
use super::link::{Connection, LinkError};
use super::settings::{MqttBrokers, MqttSettings};
use crate::action::mqtt_publish::{MqttMessage, MqttPublisher, PublishError, Qos};

/// Messages waiting for a connection, per broker.
pub const PUBLISH_QUEUE: usize = 64;
/// Default time a `publish` waits for the broker's confirmation.
pub const DEFAULT_PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);

/// Publishes over one hand-driven connection per broker; see the module docs.
#[derive(Debug)]
pub struct BrokerPublisher {
    brokers: MqttBrokers,
    timeout: Duration,
    connections: Mutex<HashMap<String, mpsc::Sender<Request>>>,
    tasks: TaskTracker,
    stop: CancellationToken,
}

#[derive(Debug)]
struct Request {
    message: MqttMessage,
    reply: oneshot::Sender<Result<(), PublishError>>,
}

impl BrokerPublisher {
    pub fn new(brokers: MqttBrokers) -> BrokerPublisher {
        BrokerPublisher {
            brokers,
            timeout: DEFAULT_PUBLISH_TIMEOUT,
            connections: Mutex::default(),
            tasks: TaskTracker::new(),
            stop: CancellationToken::new(),
        }
    }

    pub fn with_timeout(mut self, timeout: Duration) -> BrokerPublisher {
        self.timeout = timeout;
        self
    }

    /// Stops every connection (after the triggers and executions, per the shutdown order) and
    /// waits up to `grace` for them to disconnect.
    pub async fn shutdown(&self, grace: Duration) {
        self.stop.cancel();
        self.tasks.close();
        let _ = tokio::time::timeout(grace, self.tasks.wait()).await;
    }

    /// The queue of `settings`' connection, started on first use.
    fn connection(&self, settings: &Arc<MqttSettings>) -> mpsc::Sender<Request> {
        let mut connections = self
            .connections
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(sender) = connections.get(&settings.url)
            && !sender.is_closed()
        {
            return sender.clone();
        }
        let (sender, receiver) = mpsc::channel(PUBLISH_QUEUE);
        connections.insert(settings.url.clone(), sender.clone());
        let client_id = settings.client_id("publisher");
        let span = info_span!("mqtt_publisher", broker = %settings.url, client_id = %client_id);
        let task = run_connection(
            settings.clone(),
            client_id,
            receiver,
            self.stop.child_token(),
        );
        // Supervised by `tasks`/`stop`: `shutdown` cancels and waits for it.
        self.tasks.spawn(task.instrument(span));
        sender
    }
}

impl Drop for BrokerPublisher {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[async_trait]
impl MqttPublisher for BrokerPublisher {
    async fn publish(&self, message: MqttMessage) -> Result<(), PublishError> {
        let settings = self
            .brokers
            .resolve(message.broker.as_deref(), None)
            .map_err(|e| PublishError::Rejected(e.to_string()))?;
        check(&message, &settings)?;
        let (reply, answer) = oneshot::channel();
        // Backpressure: a full queue makes the step wait for room (within the same timeout
        // as the broker's confirmation) instead of failing at once under a burst.
        let deadline = tokio::time::Instant::now() + self.timeout;
        let queued = tokio::time::timeout_at(
            deadline,
            self.connection(&settings).send(Request { message, reply }),
        )
        .await;
        match queued {
            Ok(Ok(())) => {}
            Ok(Err(_closed)) => {
                return Err(PublishError::Unavailable(
                    "the MQTT publisher is shutting down".into(),
                ));
            }
            Err(_) => {
                return Err(PublishError::Unavailable(format!(
                    "the publish queue for {} stayed full for {:?}",
                    settings.url, self.timeout
                )));
            }
        }
        match tokio::time::timeout_at(deadline, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(PublishError::Unavailable(
                "the MQTT connection stopped".into(),
            )),
            Err(_) => Err(PublishError::Unavailable(format!(
                "{} did not confirm within {:?} (not connected, or slow)",
                settings.url, self.timeout
            ))),
        }
    }
}

/// What can never be published, whatever the connection's state.
fn check(message: &MqttMessage, settings: &MqttSettings) -> Result<(), PublishError> {
    let topic = &message.topic;
    if topic.is_empty() || topic.len() > 65535 || topic.contains(['+', '#', '\0']) {
        return Err(PublishError::Rejected(format!(
            "invalid topic {topic:?} (empty, wildcard, NUL or too long)"
        )));
    }
    // Fixed header (≤ 5) + topic length prefix + topic + packet id.
    let size = message.payload.len() + topic.len() + 2 + 2 + 5;
    if size > settings.max_packet_size {
        return Err(PublishError::Rejected(format!(
            "the message is {size} bytes; the connection's max_packet_size is {}",
            settings.max_packet_size
        )));
    }
    Ok(())
}

/// Keeps one broker connection up (reconnecting with backoff) and serves the queue on it.
async fn run_connection(
    settings: Arc<MqttSettings>,
    client_id: String,
    mut requests: mpsc::Receiver<Request>,
    stop: CancellationToken,
) {
    let mut backoff = Backoff::default();
    let mut failures = Throttle::new(WARN_EVERY);
    if let Err(error) = connection::check_tls(&settings) {
        warn!(error = %error, "MQTT publisher cannot connect");
        fail_all(requests, &error).await;
        return;
    }
    let mut waiting = Waiting::new(settings.inflight);
    loop {
        let connected = tokio::select! {
            biased;
            () = stop.cancelled() => return,
            connected = Connection::connect(&settings, &client_id, true) => connected,
        };
        let error = match connected {
            Ok((mut link, _)) => {
                backoff.reset();
                failures.reset();
                info!("MQTT publisher connected");
                let served = serve(&mut link, &mut requests, &mut waiting, &stop).await;
                waiting.fail_all(
                    "the MQTT connection was lost before the broker confirmed the message \
                     (it may have been delivered)",
                );
                match served {
                    Ok(()) => return,
                    Err(error) => error,
                }
            }
            Err(error) => error,
        };
        let delay = backoff.next_delay();
        if let Some(suppressed) = failures.allow() {
            warn!(error = %error, retry_in = ?delay, suppressed,
                "MQTT publisher connection failed; reconnecting");
        }
        // Meanwhile requests wait in the queue, each until its own timeout.
        tokio::select! {
            biased;
            () = stop.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// Refuses every request, now and until the publisher stops (a broker that can never be
/// reached as configured).
async fn fail_all(mut requests: mpsc::Receiver<Request>, why: &str) {
    requests.close();
    while let Some(request) = requests.recv().await {
        let _ = request
            .reply
            .send(Err(PublishError::Rejected(why.to_string())));
    }
}

/// Serves one connection: every turn writes all queued messages the in-flight limit allows
/// (and the PUBRELs and pings due) in one write, then answers the callers the broker has
/// confirmed. Returns `Ok` once stopped (after a DISCONNECT) and the link's error when it
/// fails.
async fn serve(
    link: &mut Connection,
    requests: &mut mpsc::Receiver<Request>,
    waiting: &mut Waiting,
    stop: &CancellationToken,
) -> Result<(), LinkError> {
    let pings = link.pings();
    let mut ping_due = link.next_ping();
    let mut ping_outstanding = false;
    loop {
        while waiting.has_room() {
            let Ok(request) = requests.try_recv() else {
                break;
            };
            waiting.queue(link, request);
        }
        link.flush().await?;
        waiting.written();
        while let Some(packet) = link.decode()? {
            match packet {
                Packet::PubAck(PubAck { pkid }) | Packet::PubComp(PubComp { pkid }) => {
                    waiting.confirm(pkid);
                }
                Packet::PubRec(PubRec { pkid }) => {
                    link.encode(&Packet::PubRel(PubRel::new(pkid)))?
                }
                Packet::PingResp => ping_outstanding = false,
                Packet::Disconnect => return Err(LinkError::Closed),
                _ => {}
            }
        }
        if link.has_queued() {
            continue; // PUBRELs to write
        }
        tokio::select! {
            biased;
            () = stop.cancelled() => {
                link.encode(&Packet::Disconnect)?;
                return link.flush().await;
            }
            // Cancel safety: `recv` loses nothing when dropped.
            request = requests.recv(), if waiting.has_room() => match request {
                Some(request) => waiting.queue(link, request),
                None => {
                    link.encode(&Packet::Disconnect)?;
                    return link.flush().await;
                }
            },
            read = link.read_some() => read?,
            () = tokio::time::sleep_until(ping_due), if pings => {
                if ping_outstanding {
                    return Err(LinkError::PingTimeout);
                }
                link.encode(&Packet::PingReq)?;
                ping_outstanding = true;
                ping_due = link.next_ping();
            }
        }
    }
}

type Reply = oneshot::Sender<Result<(), PublishError>>;

/// The messages of one connection between being queued on the link and being confirmed.
struct Waiting {
    /// QoS ≥ 1, written or queued, by packet id: answered at PUBACK (QoS 1) or PUBCOMP (2).
    unconfirmed: HashMap<u16, Reply>,
    /// QoS 0, queued: answered once written.
    unwritten: Vec<Reply>,
    /// Most unconfirmed messages at once (the connection's `inflight`).
    limit: usize,
    last_pkid: u16,
}

impl Waiting {
    fn new(limit: u16) -> Waiting {
        Waiting {
            unconfirmed: HashMap::new(),
            unwritten: Vec::new(),
            limit: usize::from(limit.max(1)),
            last_pkid: 0,
        }
    }

    fn has_room(&self) -> bool {
        self.unconfirmed.len() < self.limit
    }

    /// Encodes `request`'s message on `link` for the next flush. One that does not encode
    /// is refused on its own; the connection goes on.
    fn queue(&mut self, link: &mut Connection, request: Request) {
        if request.reply.is_closed() {
            return; // the caller gave up (timeout, cancellation)
        }
        let MqttMessage {
            topic,
            payload,
            qos,
            retain,
            ..
        } = request.message;
        let mut publish = Publish::new(topic, connection::to_rumqttc(qos), payload);
        publish.retain = retain;
        if qos != Qos::AtMostOnce {
            publish.pkid = self.next_pkid();
        }
        let pkid = publish.pkid;
        if let Err(error) = link.encode(&Packet::Publish(publish)) {
            let _ = request
                .reply
                .send(Err(PublishError::Rejected(error.to_string())));
            return;
        }
        match qos {
            Qos::AtMostOnce => self.unwritten.push(request.reply),
            _ => {
                self.unconfirmed.insert(pkid, request.reply);
            }
        }
    }

    /// A packet id no unconfirmed message holds (there are at most `limit` < 65,535).
    fn next_pkid(&mut self) -> u16 {
        loop {
            self.last_pkid = self.last_pkid.checked_add(1).unwrap_or(1);
            if !self.unconfirmed.contains_key(&self.last_pkid) {
                return self.last_pkid;
            }
        }
    }

    /// Everything queued was written: QoS 0 messages are done.
    fn written(&mut self) {
        for reply in self.unwritten.drain(..) {
            let _ = reply.send(Ok(()));
        }
    }

    fn confirm(&mut self, pkid: u16) {
        if let Some(reply) = self.unconfirmed.remove(&pkid) {
            let _ = reply.send(Ok(()));
        }
    }

    fn fail_all(&mut self, why: &str) {
        let error = || Err(PublishError::Unavailable(why.to_string()));
        for reply in self.unwritten.drain(..) {
            let _ = reply.send(error());
        }
        for (_, reply) in self.unconfirmed.drain() {
            let _ = reply.send(error());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_can_never_be_published() {
        let settings = MqttSettings::from_url("mqtt://h", "d").unwrap();
        let message = |topic: &str, size: usize| MqttMessage {
            broker: None,
            topic: topic.into(),
            payload: vec![0; size],
            qos: Qos::AtLeastOnce,
            retain: false,
        };
        check(&message("a/b", 10), &settings).unwrap();
        assert!(matches!(
            check(&message("a/+", 10), &settings),
            Err(PublishError::Rejected(_))
        ));
        assert!(matches!(
            check(&message("a", settings.max_packet_size), &settings),
            Err(PublishError::Rejected(_))
        ));
    }

    /// `keep_alive = "0s"` turns pings off (MQTT 3.1.1 §3.1.2.10), for the publisher's
    /// connection and the trigger's: each is served quietly instead of failing at once for
    /// a ping "due" every instant.
    #[tokio::test]
    async fn no_keep_alive_means_no_pings() {
        let prefix = format!("ka{}", &ulid::Ulid::new().to_string()[18..]);
        let mut settings = MqttSettings::from_url("mqtt://127.0.0.1:1883", &prefix).unwrap();
        settings.keep_alive = Duration::ZERO;
        let quiet = Duration::from_millis(500);

        let (mut link, _) = Connection::connect(&settings, &settings.client_id("p"), true)
            .await
            .expect("connect");
        let (_requests_tx, mut requests) = mpsc::channel(1);
        let mut waiting = Waiting::new(1);
        let stop = CancellationToken::new();
        let served =
            tokio::time::timeout(quiet, serve(&mut link, &mut requests, &mut waiting, &stop)).await;
        assert!(served.is_err(), "the publisher's link ended: {served:?}");

        let (link, _) = Connection::connect(&settings, &settings.client_id("t"), true)
            .await
            .expect("connect");
        let (_outbound_tx, mut outbound) = mpsc::channel(1);
        let (inbound, _inbound_rx) = mpsc::channel(1);
        let served = tokio::time::timeout(quiet, link.serve(&mut outbound, &inbound)).await;
        assert!(served.is_err(), "the trigger's link ended: {served:?}");
    }
}
