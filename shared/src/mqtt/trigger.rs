//! The `mqtt` trigger: subscribes to a topic filter and starts an execution per message.
//!
//! Overload policy: *block*. For QoS 1 and 2 a message is acknowledged to the broker (PUBACK,
//! or PUBREC for QoS 2) only after [`TriggerContext::submit`] returned — the execution is
//! durably recorded, or it was skipped by `if`/`unless` or dropped by `concurrency` (both are
//! handled outcomes). The delivery guarantee is therefore *at least once*, also for QoS 2:
//! - a message whose submit failed (store error, shutdown) is not acknowledged; the broker
//!   sends it again on the next connection. After a store error the trigger drops the
//!   connection on purpose (and reconnects with backoff) so that the redelivery happens;
//! - a message whose submit succeeded but whose ack did not reach the broker (the link broke
//!   in between) is delivered again and starts a second execution. QoS 2's exactly-once holds
//!   between broker and client only; the engine does not deduplicate by packet id;
//! - an event that `if`/`unless` cannot even evaluate (`SubmitError::Expression`) is a poison
//!   message: redelivering it cannot help, so it is logged and acknowledged.
//!
//! Sessions are persistent (`clean_session = false` unless the connection says otherwise) with
//! a client id stable per device, workflow and trigger index, so QoS ≥ 1 messages published
//! while the agent was away are queued by the broker and arrive after reconnecting. QoS 0
//! messages are never queued.
//!
//! Pipeline: the connection (`super::link`) runs in its own future and hands messages over a
//! channel of `inflight` capacity; every turn it first writes all queued acknowledgements. Up
//! to `inflight` submissions run at once and are acknowledged in completion order (MQTT allows any order for QoS 1 acks; QoS 2 PUBRECs go
//! in the order given, and the broker's PUBREL/PUBCOMP follow per packet id).
//! While every slot is taken, the channel fills and the connection stops reading: TCP pushes
//! back on the broker. The connection keeps pinging meanwhile, so a busy runtime does not
//! lose the link; if the link drops, unacked messages are redelivered (QoS 0 messages still
//! buffered are lost).
//!
//! Event: type `mqtt`, source `reactor:mqtt/{topic}`, `data` = the payload parsed as JSON when
//! it parses, else the UTF-8 text, else the base64 (standard alphabet, padded) of the bytes;
//! `meta` = `{topic, filter, qos, retain, dup, pkid, broker, encoding}` with `encoding` one of
//! `json`, `text`, `base64`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use rumqttc::{Publish, QoS, SubscribeReasonCode};
use serde_json::json;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::connection::{self, Backoff, Throttle, WARN_EVERY};
use super::link::{Connection, Ended, Inbound, LinkError, Outbound};
use super::settings::{MqttBrokers, MqttSettings, validate_filter};
use crate::Value;
use crate::engine::{Event, Submission, SubmitError};
use crate::flow;
use crate::trigger::{Trigger, TriggerContext, TriggerError};

/// How long shutdown waits for submissions in flight to finish (and be acknowledged).
pub const DRAIN_GRACE: Duration = Duration::from_secs(5);
/// How long shutdown waits for the DISCONNECT to be written.
const DISCONNECT_GRACE: Duration = Duration::from_secs(2);
/// Extra room in the link's request channel beyond one ack per slot (subscribe, disconnect).
const REQUEST_SLACK: usize = 8;
/// How often acks that did not fit in the link's request channel are tried again.
const RETRY_TICK: Duration = Duration::from_millis(50);

/// A running subscription for one `mqtt` trigger entry.
#[derive(Debug)]
pub struct MqttTrigger {
    filter: String,
    qos: QoS,
    settings: Arc<MqttSettings>,
    client_id: String,
}

impl MqttTrigger {
    /// Builds the trigger for `spec`. `purpose` makes the client id unique and stable:
    /// `{workflow}.{trigger index}` (the device is the connection's client-id prefix).
    pub fn new(
        spec: &flow::MqttTrigger,
        brokers: &MqttBrokers,
        purpose: &str,
    ) -> Result<MqttTrigger, TriggerError> {
        validate_filter(&spec.topic).map_err(TriggerError::Settings)?;
        if spec.qos > 2 {
            return Err(TriggerError::Settings(format!(
                "qos must be 0, 1 or 2, not {}",
                spec.qos
            )));
        }
        let settings = brokers
            .resolve(spec.broker.as_deref(), spec.connection.as_deref())
            .map_err(|e| TriggerError::Settings(e.to_string()))?;
        Ok(MqttTrigger {
            filter: spec.topic.clone(),
            qos: connection::qos_from_u8(spec.qos),
            client_id: settings.client_id(purpose),
            settings,
        })
    }

    /// Replaces the derived client id (tests; a deployment that pins ids).
    pub fn with_client_id(mut self, client_id: impl Into<String>) -> MqttTrigger {
        self.client_id = client_id.into();
        self
    }

    pub fn client_id(&self) -> &str {
        &self.client_id
    }
}

/// A finished submission, with the connection it arrived on.
struct Done {
    publish: Publish,
    generation: u64,
    result: Result<Submission, SubmitError>,
}

type Submitting = Pin<Box<dyn Future<Output = Done> + Send>>;

#[async_trait]
impl Trigger for MqttTrigger {
    fn kind(&self) -> &'static str {
        "mqtt"
    }

    async fn run(self: Box<Self>, context: TriggerContext) -> Result<(), TriggerError> {
        let limit = usize::from(self.settings.inflight.max(1));
        let (outbound_tx, outbound_rx) = mpsc::channel(limit + REQUEST_SLACK);
        let (links_tx, links_rx) = mpsc::channel(limit);
        let stop_link = CancellationToken::new();
        let link_done = CancellationToken::new();
        let reconnect = Arc::new(Notify::new());
        let link = LinkLoop {
            settings: self.settings.clone(),
            client_id: self.client_id.clone(),
            outbound: outbound_rx,
            links: links_tx,
            stop: stop_link.clone(),
            reconnect: reconnect.clone(),
        };
        let subscriber = Subscriber {
            trigger: &self,
            context: &context,
            outbound: outbound_tx,
            links: links_rx,
            reconnect,
            limit,
            generation: 0,
            connected: false,
            subscribe_due: false,
            acks_due: Vec::new(),
            in_flight: FuturesUnordered::new(),
            submit_errors: Throttle::new(WARN_EVERY),
        };
        info!(
            workflow = %context.workflow,
            broker = %self.settings.url,
            client_id = %self.client_id,
            filter = %self.filter,
            "MQTT trigger starting"
        );
        let ((), result) = tokio::join!(
            async {
                link.run().await;
                link_done.cancel();
            },
            async {
                let mut subscriber = subscriber;
                let result = subscriber.run().await;
                // Give the acks and the DISCONNECT (queued by the subscriber) a moment to be
                // written; what still arrives is not acknowledged and comes back next session.
                let links = &mut subscriber.links;
                let discard = async { while links.recv().await.is_some() {} };
                tokio::select! {
                    biased;
                    () = link_done.cancelled() => {}
                    () = tokio::time::sleep(DISCONNECT_GRACE) => {}
                    () = discard => {}
                }
                stop_link.cancel();
                result
            }
        );
        result
    }
}

/// Owns the broker connection ([`Connection`]): connects, serves it, reconnects with backoff.
struct LinkLoop {
    settings: Arc<MqttSettings>,
    client_id: String,
    outbound: mpsc::Receiver<Outbound>,
    links: mpsc::Sender<Inbound>,
    stop: CancellationToken,
    /// Drop the connection now (so the broker redelivers what was not acknowledged).
    reconnect: Arc<Notify>,
}

impl LinkLoop {
    async fn run(mut self) {
        let mut backoff = Backoff::default();
        let mut failures = Throttle::new(WARN_EVERY);
        loop {
            let connected = tokio::select! {
                biased;
                () = self.stop.cancelled() => return,
                connected = Connection::connect(&self.settings, &self.client_id, self.settings.clean_session) => connected,
            };
            let error = match connected {
                Ok((connection, session_present)) => {
                    backoff.reset();
                    failures.reset();
                    info!(broker = %self.settings.url, client_id = %self.client_id,
                        session_present, "MQTT connected");
                    // Requests queued for the previous connection (acks of its deliveries)
                    // are not sent on this one: the broker redelivers those messages.
                    while self.outbound.try_recv().is_ok() {}
                    if !send(
                        &self.links,
                        &self.stop,
                        Inbound::Connected { session_present },
                    )
                    .await
                    {
                        return;
                    }
                    let served = tokio::select! {
                        biased;
                        () = self.stop.cancelled() => return,
                        // Cancel safety: the connection is dropped on purpose.
                        () = self.reconnect.notified() => Err(LinkError::Protocol(
                            "dropped so that the broker redelivers unrecorded messages".into(),
                        )),
                        served = connection.serve(&mut self.outbound, &self.links) => served,
                    };
                    match served {
                        Ok(Ended::Disconnected | Ended::Abandoned) => return,
                        Err(error) => {
                            if !send(&self.links, &self.stop, Inbound::Lost).await {
                                return;
                            }
                            error
                        }
                    }
                }
                Err(error) => error,
            };
            let delay = backoff.next_delay();
            if let Some(suppressed) = failures.allow() {
                warn!(broker = %self.settings.url, client_id = %self.client_id,
                    error = %error, retry_in = ?delay, suppressed,
                    "MQTT connection failed; reconnecting");
            }
            tokio::select! {
                biased;
                () = self.stop.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }
}

/// False when the trigger is gone or stopping.
async fn send(links: &mpsc::Sender<Inbound>, stop: &CancellationToken, link: Inbound) -> bool {
    tokio::select! {
        biased;
        () = stop.cancelled() => false,
        // Cancel safety: an unsent link is dropped only when stopping.
        sent = links.send(link) => sent.is_ok(),
    }
}

/// Submits messages and acknowledges them.
struct Subscriber<'a> {
    trigger: &'a MqttTrigger,
    context: &'a TriggerContext,
    outbound: mpsc::Sender<Outbound>,
    links: mpsc::Receiver<Inbound>,
    reconnect: Arc<Notify>,
    limit: usize,
    /// Counts connections; an ack is sent only on the connection its message came on.
    generation: u64,
    connected: bool,
    subscribe_due: bool,
    /// Acks that did not fit in the link's request channel yet (at most `limit`).
    acks_due: Vec<Publish>,
    in_flight: FuturesUnordered<Submitting>,
    submit_errors: Throttle,
}

impl Subscriber<'_> {
    async fn run(&mut self) -> Result<(), TriggerError> {
        let mut drain_until: Option<tokio::time::Instant> = None;
        loop {
            self.flush_requests();
            if let Some(deadline) = drain_until
                && (self.in_flight.is_empty() || tokio::time::Instant::now() >= deadline)
            {
                break;
            }
            let due = self.subscribe_due || !self.acks_due.is_empty();
            let draining = drain_until.is_some();
            tokio::select! {
                biased;
                () = self.context.cancel.cancelled(), if !draining => {
                    drain_until = Some(tokio::time::Instant::now() + DRAIN_GRACE);
                }
                // Cancel safety: `FuturesUnordered::next` keeps unfinished futures in the set.
                Some(done) = self.in_flight.next(), if !self.in_flight.is_empty() => {
                    self.finished(done);
                }
                // Cancel safety: `recv` loses nothing when dropped.
                link = self.links.recv(), if draining || self.in_flight.len() < self.limit => {
                    match link {
                        Some(link) => self.on_link(link, draining)?,
                        None => return Err(TriggerError::Source("the MQTT connection task stopped".into())),
                    }
                }
                () = tokio::time::sleep(RETRY_TICK), if due => {}
                () = tokio::time::sleep_until(drain_until.unwrap_or_else(tokio::time::Instant::now)), if draining => {}
            }
        }
        let unfinished = self.in_flight.len();
        if unfinished > 0 {
            warn!(workflow = %self.context.workflow, unfinished,
                "MQTT trigger stopped with submissions unfinished; the broker will redeliver them");
        }
        self.flush_requests();
        // The session stays at the broker (persistent): queued messages wait for the next run.
        let _ = self.outbound.try_send(Outbound::Disconnect);
        Ok(())
    }

    fn on_link(&mut self, link: Inbound, draining: bool) -> Result<(), TriggerError> {
        match link {
            Inbound::Connected { session_present } => {
                self.generation += 1;
                self.connected = true;
                // Always (re)subscribe: harmless when the session kept the subscription, needed
                // when it did not (new or expired session, clean_session).
                self.subscribe_due = true;
                self.acks_due.clear();
                debug!(workflow = %self.context.workflow, session_present, "MQTT subscribing");
            }
            Inbound::Lost => {
                self.connected = false;
                // Acks of the old connection must not be sent on the next one: the broker
                // redelivers those messages instead.
                self.acks_due.clear();
            }
            Inbound::SubAck(ack) => {
                for code in ack.return_codes {
                    match code {
                        SubscribeReasonCode::Failure => {
                            return Err(TriggerError::Source(format!(
                                "the broker {} refused the subscription to {:?}",
                                self.trigger.settings.url, self.trigger.filter
                            )));
                        }
                        SubscribeReasonCode::Success(granted) if granted != self.trigger.qos => {
                            warn!(workflow = %self.context.workflow, filter = %self.trigger.filter,
                                requested = connection::qos_number(self.trigger.qos),
                                granted = connection::qos_number(granted),
                                "MQTT broker granted a lower QoS");
                        }
                        SubscribeReasonCode::Success(_) => {
                            info!(workflow = %self.context.workflow, filter = %self.trigger.filter,
                                "MQTT subscribed");
                        }
                    }
                }
            }
            Inbound::Message(publish) => {
                if draining {
                    // Not acknowledged: a QoS ≥ 1 message comes back on the next session.
                    return Ok(());
                }
                let event = event_for(&publish, &self.trigger.filter, &self.trigger.settings.url);
                let context = self.context.clone();
                let generation = self.generation;
                self.in_flight.push(Box::pin(async move {
                    let result = context.submit(event).await;
                    Done {
                        publish,
                        generation,
                        result,
                    }
                }));
            }
        }
        Ok(())
    }

    fn finished(&mut self, done: Done) {
        let Done {
            publish,
            generation,
            result,
        } = done;
        let ack = match &result {
            Ok(Submission::Accepted(id)) => {
                debug!(workflow = %self.context.workflow, execution = %id,
                    topic = %publish.topic, pkid = publish.pkid, "MQTT message accepted");
                true
            }
            Ok(Submission::Skipped | Submission::Dropped) => true,
            Err(error @ SubmitError::Expression { .. }) => {
                error!(workflow = %self.context.workflow, topic = %publish.topic, error = %error,
                    "MQTT message cannot start the workflow; acknowledging it so it is not redelivered forever");
                true
            }
            Err(error) => {
                if let Some(suppressed) = self.submit_errors.allow() {
                    warn!(workflow = %self.context.workflow, topic = %publish.topic,
                        error = %error, suppressed,
                        "MQTT message not recorded; not acknowledged, the broker will redeliver it");
                }
                if matches!(error, SubmitError::Store(_)) && publish.qos != QoS::AtMostOnce {
                    // The broker only redelivers on a new connection.
                    self.reconnect.notify_one();
                }
                false
            }
        };
        if ack && publish.qos != QoS::AtMostOnce && self.connected && generation == self.generation
        {
            self.acks_due.push(publish);
        }
    }

    /// Hands due requests to the link without waiting: waiting here could deadlock with the
    /// link, which may be waiting to hand us a message.
    fn flush_requests(&mut self) {
        if self.subscribe_due {
            let subscribe = Outbound::Subscribe {
                filter: self.trigger.filter.clone(),
                qos: self.trigger.qos,
            };
            match self.outbound.try_send(subscribe) {
                Ok(()) => self.subscribe_due = false,
                Err(mpsc::error::TrySendError::Full(_)) => {}
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    debug!("MQTT subscribe not queued: the link stopped");
                    self.subscribe_due = false;
                }
            }
        }
        let mut sent = 0;
        for publish in &self.acks_due {
            let ack = Outbound::Ack {
                qos: publish.qos,
                pkid: publish.pkid,
            };
            if self.outbound.try_send(ack).is_err() {
                break;
            }
            sent += 1;
        }
        self.acks_due.drain(..sent);
    }
}

/// The event for one message (see the module docs for the shape).
pub fn event_for(publish: &Publish, filter: &str, broker: &str) -> Event {
    let (data, encoding) = decode_payload(&publish.payload);
    let mut event = Event::new("mqtt", &format!("reactor:mqtt/{}", publish.topic), data);
    event.meta = json!({
        "topic": publish.topic,
        "filter": filter,
        "qos": connection::qos_number(publish.qos),
        "retain": publish.retain,
        "dup": publish.dup,
        "pkid": publish.pkid,
        "broker": broker,
        "encoding": encoding,
    });
    event
}

/// JSON if it parses, else UTF-8 text, else base64; with the name of the encoding used.
pub fn decode_payload(payload: &[u8]) -> (Value, &'static str) {
    if let Ok(value) = serde_json::from_slice::<Value>(payload) {
        return (value, "json");
    }
    match std::str::from_utf8(payload) {
        Ok(text) => (Value::String(text.to_string()), "text"),
        Err(_) => (
            Value::String(base64::engine::general_purpose::STANDARD.encode(payload)),
            "base64",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_decode_as_json_text_or_base64() {
        assert_eq!(
            decode_payload(br#"{"temp": 31.5}"#),
            (json!({"temp": 31.5}), "json")
        );
        assert_eq!(decode_payload(b"42"), (json!(42), "json"));
        assert_eq!(decode_payload(b"on"), (json!("on"), "text"));
        assert_eq!(decode_payload(b""), (json!(""), "text"));
        assert_eq!(
            decode_payload(&[0xff, 0x00, 0x10]),
            (json!("/wAQ"), "base64")
        );
    }

    #[test]
    fn event_has_type_source_and_meta() {
        let mut publish = Publish::new("sensors/a/temp", QoS::AtLeastOnce, b"{\"t\":1}".to_vec());
        publish.pkid = 7;
        let event = event_for(&publish, "sensors/+/temp", "mqtt://127.0.0.1:1883");
        assert_eq!(event.event_type, "mqtt");
        assert_eq!(event.source, "reactor:mqtt/sensors/a/temp");
        assert_eq!(event.data, json!({"t": 1}));
        assert_eq!(
            event.meta,
            json!({"topic": "sensors/a/temp", "filter": "sensors/+/temp", "qos": 1,
                "retain": false, "dup": false, "pkid": 7, "broker": "mqtt://127.0.0.1:1883",
                "encoding": "json"})
        );
    }

    #[test]
    fn builds_from_spec_with_clear_errors() {
        let brokers = MqttBrokers::with_default(
            MqttSettings::from_url("mqtt://127.0.0.1:1883", "dev").unwrap(),
        );
        let spec = |topic: &str, connection: Option<&str>| flow::MqttTrigger {
            topic: topic.into(),
            qos: 1,
            broker: None,
            connection: connection.map(str::to_string),
        };
        let trigger = MqttTrigger::new(&spec("a/+/b", None), &brokers, "wf.0").unwrap();
        assert_eq!(trigger.client_id(), "dev-wf.0");
        let err = MqttTrigger::new(&spec("a/#/b", None), &brokers, "wf.0").unwrap_err();
        assert!(err.to_string().contains("# must be a whole level"), "{err}");
        let err = MqttTrigger::new(&spec("a", Some("plant")), &brokers, "wf.0").unwrap_err();
        assert!(
            err.to_string()
                .contains("no MQTT connection named \"plant\""),
            "{err}"
        );
    }
}
