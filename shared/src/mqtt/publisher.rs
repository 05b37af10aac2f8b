//! [`RumqttPublisher`]: the runtime's [`MqttPublisher`] over one shared client per broker.
//!
//! - Lazy: a broker's connection starts with its first message and then stays up, reconnecting
//!   with backoff (warnings rate-limited).
//! - Bounded: each connection takes at most [`PUBLISH_QUEUE`] waiting messages; beyond that a
//!   `publish` waits for room (backpressure on the steps). When a message is neither queued
//!   nor confirmed within the publish timeout, `publish` answers
//!   [`PublishError::Unavailable`] (retryable). While disconnected, messages wait in the queue
//!   (until their timeout).
//! - Confirmed: QoS 0 returns once the message is written to the socket; QoS 1 once the broker's
//!   PUBACK arrived, QoS 2 once its PUBCOMP arrived — so a step succeeds only when the broker has
//!   the message. Packet ids are learnt from rumqttc's outgoing notifications, which come in
//!   the order requests were handed to it.
//! - Clean session: if the link breaks before the ack, every waiting message fails as
//!   `Unavailable` and rumqttc forgets it (nothing is retransmitted behind the step's back); the
//!   step's retry sends it again, so a subscriber may see it twice (QoS 1 is at least once).
//! - Rejected (permanent): unknown broker, a topic that is empty, has wildcards or NUL, a
//!   message larger than the connection's `max_packet_size`, a `broker` URL that does not parse.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rumqttc::{AsyncClient, Event as MqttEvent, EventLoop, Outgoing, Packet};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info, info_span, warn};

use super::connection::{self, Backoff, CONNECT_TIMEOUT_SECS, Throttle, WARN_EVERY};
use super::settings::{MqttBrokers, MqttSettings};
use crate::action::mqtt_publish::{MqttMessage, MqttPublisher, PublishError, Qos};

/// Messages waiting for a connection, per broker.
pub const PUBLISH_QUEUE: usize = 64;
/// Default time a `publish` waits for the broker's confirmation.
pub const DEFAULT_PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);
/// Events between rumqttc's loop and the dispatcher.
const EVENTS_CAPACITY: usize = 64;

/// Publishes through one rumqttc client per broker; see the module docs.
#[derive(Debug)]
pub struct RumqttPublisher {
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

impl RumqttPublisher {
    pub fn new(brokers: MqttBrokers) -> RumqttPublisher {
        RumqttPublisher {
            brokers,
            timeout: DEFAULT_PUBLISH_TIMEOUT,
            connections: Mutex::default(),
            tasks: TaskTracker::new(),
            stop: CancellationToken::new(),
        }
    }

    pub fn with_timeout(mut self, timeout: Duration) -> RumqttPublisher {
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

impl Drop for RumqttPublisher {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[async_trait]
impl MqttPublisher for RumqttPublisher {
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

/// What rumqttc's loop tells the dispatcher.
#[derive(Debug)]
enum Note {
    Connected,
    Lost,
    /// A publish was written with this packet id (0 for QoS 0).
    Sent(u16),
    /// A publish collided with an unacknowledged packet id and waits for it.
    Collided(u16),
    Acked(u16),
}

async fn run_connection(
    settings: Arc<MqttSettings>,
    client_id: String,
    requests: mpsc::Receiver<Request>,
    stop: CancellationToken,
) {
    let options = match connection::options(&settings, &client_id, true) {
        Ok(options) => options,
        Err(error) => {
            warn!(error = %error, "MQTT publisher cannot connect");
            fail_all(requests, &error).await;
            return;
        }
    };
    let (client, mut eventloop) = AsyncClient::new(options, PUBLISH_QUEUE);
    let mut network = eventloop.network_options();
    network.set_connection_timeout(CONNECT_TIMEOUT_SECS);
    eventloop.set_network_options(network);
    let (notes_tx, notes_rx) = mpsc::channel(EVENTS_CAPACITY);
    let link_stop = CancellationToken::new();
    let dispatcher = Dispatcher {
        client,
        requests,
        notes: notes_rx,
        connected: false,
        unsent: VecDeque::new(),
        unacked: HashMap::new(),
        collided: None,
    };
    tokio::join!(link(eventloop, notes_tx, link_stop.clone()), async {
        dispatcher.run(stop).await;
        link_stop.cancel();
    });
}

async fn fail_all(mut requests: mpsc::Receiver<Request>, why: &str) {
    requests.close();
    while let Some(request) = requests.recv().await {
        let _ = request
            .reply
            .send(Err(PublishError::Rejected(why.to_string())));
    }
}

/// Polls rumqttc's event loop (never cancelled mid-poll except at shutdown) and reconnects.
async fn link(mut eventloop: EventLoop, notes: mpsc::Sender<Note>, stop: CancellationToken) {
    let mut backoff = Backoff::default();
    let mut failures = Throttle::new(WARN_EVERY);
    let mut connected = false;
    loop {
        let polled = tokio::select! {
            biased;
            () = stop.cancelled() => return,
            // Cancel safety: dropped only at shutdown, with the connection.
            polled = eventloop.poll() => polled,
        };
        let note = match polled {
            Ok(MqttEvent::Incoming(Packet::ConnAck(_))) => {
                backoff.reset();
                failures.reset();
                connected = true;
                info!("MQTT publisher connected");
                Note::Connected
            }
            Ok(MqttEvent::Outgoing(Outgoing::Publish(pkid))) => Note::Sent(pkid),
            Ok(MqttEvent::Outgoing(Outgoing::AwaitAck(pkid))) => Note::Collided(pkid),
            Ok(MqttEvent::Incoming(Packet::PubAck(ack))) => Note::Acked(ack.pkid),
            Ok(MqttEvent::Incoming(Packet::PubComp(comp))) => Note::Acked(comp.pkid),
            Ok(_) => continue,
            Err(error) => {
                let delay = backoff.next_delay();
                if let Some(suppressed) = failures.allow() {
                    warn!(error = %error, retry_in = ?delay, suppressed,
                        "MQTT publisher connection failed; reconnecting");
                }
                if std::mem::take(&mut connected) && notes.send(Note::Lost).await.is_err() {
                    return;
                }
                tokio::select! {
                    biased;
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(delay) => {}
                }
                continue;
            }
        };
        tokio::select! {
            biased;
            () = stop.cancelled() => return,
            // Cancel safety: a note is lost only at shutdown.
            sent = notes.send(note) => if sent.is_err() { return },
        }
    }
}

type Reply = oneshot::Sender<Result<(), PublishError>>;

/// Hands requests to rumqttc and answers them when their packet ids are confirmed.
struct Dispatcher {
    client: AsyncClient,
    requests: mpsc::Receiver<Request>,
    notes: mpsc::Receiver<Note>,
    connected: bool,
    /// Handed to rumqttc, packet id not known yet; in hand-over order.
    unsent: VecDeque<(Qos, Reply)>,
    /// Written, waiting for PUBACK (QoS 1) or PUBCOMP (QoS 2).
    unacked: HashMap<u16, Reply>,
    /// A publish rumqttc holds back until `pkid` is acknowledged.
    collided: Option<(u16, Reply)>,
}

impl Dispatcher {
    async fn run(mut self, stop: CancellationToken) {
        loop {
            tokio::select! {
                biased;
                () = stop.cancelled() => break,
                // Cancel safety: `recv` loses nothing when dropped.
                note = self.notes.recv() => match note {
                    Some(note) => self.on_note(note),
                    None => break,
                },
                // Cancel safety: as above. Only while connected, and only as many as rumqttc's
                // request channel holds, so `try_publish` never meets a full channel.
                request = self.requests.recv(), if self.connected && self.unsent.len() < PUBLISH_QUEUE => {
                    let Some(request) = request else { break };
                    self.hand_over(request);
                }
            }
        }
        self.fail_waiting("the MQTT publisher stopped");
        let _ = self.client.try_disconnect();
    }

    fn hand_over(&mut self, request: Request) {
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
        match self
            .client
            .try_publish(topic, connection::to_rumqttc(qos), retain, payload)
        {
            Ok(()) => self.unsent.push_back((qos, request.reply)),
            Err(error) => {
                let _ = request
                    .reply
                    .send(Err(PublishError::Unavailable(error.to_string())));
            }
        }
    }

    fn on_note(&mut self, note: Note) {
        match note {
            Note::Connected => self.connected = true,
            Note::Lost => {
                self.connected = false;
                self.fail_waiting(
                    "the MQTT connection was lost before the broker confirmed the message \
                     (it may have been delivered)",
                );
            }
            Note::Sent(pkid) => {
                // While a publish is held back rumqttc takes no new requests, so the next
                // `Sent` with its packet id is that publish going out.
                if let Some((held, reply)) = self.collided.take() {
                    if held == pkid {
                        self.unacked.insert(pkid, reply);
                        return;
                    }
                    self.collided = Some((held, reply));
                }
                if let Some((qos, reply)) = self.unsent.pop_front() {
                    if qos == Qos::AtMostOnce {
                        let _ = reply.send(Ok(()));
                    } else {
                        self.unacked.insert(pkid, reply);
                    }
                }
            }
            Note::Collided(pkid) => {
                if let Some((_, reply)) = self.unsent.pop_front() {
                    self.collided = Some((pkid, reply));
                }
            }
            Note::Acked(pkid) => {
                if let Some(reply) = self.unacked.remove(&pkid) {
                    let _ = reply.send(Ok(()));
                }
            }
        }
    }

    fn fail_waiting(&mut self, why: &str) {
        let error = || Err(PublishError::Unavailable(why.to_string()));
        for (_, reply) in self.unsent.drain(..) {
            let _ = reply.send(error());
        }
        for (_, reply) in self.unacked.drain() {
            let _ = reply.send(error());
        }
        if let Some((_, reply)) = self.collided.take() {
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
}
