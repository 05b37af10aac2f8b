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
//! Parallel sessions (`sessions: N`, default 1): the trigger opens N broker sessions that
//! subscribe to `$share/{group}/{filter}` (the group named after the first session's client
//! id), and the broker hands each message to one of them. Each session has its own client id
//! (`{first}` and `{first}s1` … `{first}s{N-1}`, from the device id, stable across restarts),
//! its own persistent session and its own in-flight window at the broker (Mosquitto sends a
//! client at most `max_inflight_messages`, 20, unacknowledged QoS 1 messages): N sessions keep
//! N times as many messages in flight while each is still acknowledged only once recorded.
//! Order across the topic is not kept (it is not kept within one session either: submissions
//! run concurrently). The first session drops the other form of its subscription (plain
//! filter ↔ `$share/…`), which its persistent session keeps from a run with another count.
//! When `sessions` is lowered, the sessions dropped still belong to the group at the broker,
//! which keeps queueing messages for them; so the number of sessions run is recorded in the
//! journal (`trigger/mqtt/{first client id}/sessions`), and the next run connects each dropped
//! session once more to unsubscribe it and to record and acknowledge what was queued for it.
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
use crate::flow::{self, MAX_MQTT_SESSIONS};
use crate::store::StoreWrite;
use crate::trigger::{Trigger, TriggerContext, TriggerError};

/// How long shutdown waits for submissions in flight to finish (and be acknowledged).
pub const DRAIN_GRACE: Duration = Duration::from_secs(5);
/// How long shutdown waits for the DISCONNECT to be written.
const DISCONNECT_GRACE: Duration = Duration::from_secs(2);
/// Extra room in the link's request channel beyond one ack per slot (subscribe, disconnect).
const REQUEST_SLACK: usize = 8;
/// How often acks that did not fit in the link's request channel are tried again.
const RETRY_TICK: Duration = Duration::from_millis(50);
/// A retiring session ends once the broker sent it nothing for this long (after connecting,
/// the broker sends what it queued for the session at once).
const RETIRE_IDLE: Duration = Duration::from_secs(2);

/// A running subscription for one `mqtt` trigger entry.
#[derive(Debug)]
pub struct MqttTrigger {
    filter: String,
    qos: QoS,
    settings: Arc<MqttSettings>,
    /// One per broker session (`sessions:`); the first is the id a single-session trigger
    /// has, so raising `sessions` keeps that session and what the broker queued for it.
    client_ids: Vec<String>,
    /// What the ids derive from: `{workflow}.{index}`, or a pinned first id.
    purpose: String,
    pinned: bool,
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
        let sessions = spec.sessions.clamp(1, MAX_MQTT_SESSIONS);
        if sessions > 1 && (spec.topic.starts_with("$share/") || spec.topic.starts_with("$queue/"))
        {
            return Err(TriggerError::Settings(format!(
                "topic {:?} is already a shared subscription; with sessions the trigger makes one itself",
                spec.topic
            )));
        }
        let settings = brokers
            .resolve(spec.broker.as_deref(), spec.connection.as_deref())
            .map_err(|e| TriggerError::Settings(e.to_string()))?;
        let mut trigger = MqttTrigger {
            filter: spec.topic.clone(),
            qos: connection::qos_from_u8(spec.qos),
            client_ids: Vec::new(),
            purpose: purpose.to_string(),
            pinned: false,
            settings,
        };
        trigger.client_ids = (0..usize::from(sessions))
            .map(|i| trigger.session_id(i))
            .collect();
        Ok(trigger)
    }

    /// The client id of session `index` (also of sessions beyond `sessions`, to retire them).
    fn session_id(&self, index: usize) -> String {
        match (self.pinned, index) {
            (true, 0) => self.purpose.clone(),
            (true, i) => format!("{}s{i}", self.purpose),
            (false, 0) => self.settings.client_id(&self.purpose),
            (false, i) => self.settings.client_id(&format!("{}s{i}", self.purpose)),
        }
    }

    /// The store key under which the number of sessions last run is kept.
    fn sessions_key(&self) -> String {
        format!("trigger/mqtt/{}/sessions", self.client_ids[0])
    }

    /// Replaces the derived client ids (tests; a deployment that pins ids): `client_id` for
    /// the first session, `{client_id}s{i}` for the others.
    pub fn with_client_id(mut self, client_id: impl Into<String>) -> MqttTrigger {
        self.purpose = client_id.into();
        self.pinned = true;
        self.client_ids = (0..self.client_ids.len())
            .map(|i| self.session_id(i))
            .collect();
        self
    }

    /// The first session's client id.
    pub fn client_id(&self) -> &str {
        &self.client_ids[0]
    }

    /// Every session's client id.
    pub fn client_ids(&self) -> &[String] {
        &self.client_ids
    }

    /// What session `index` subscribes to, and what it unsubscribes from. One session
    /// subscribes to the filter itself. Several subscribe to `$share/{group}/{filter}` (the
    /// broker hands each message to one of them; Mosquitto ≥ 1.6 does so for MQTT 3.1.1
    /// clients too), the group named after the first session's client id. The first session
    /// drops the other form, which its persistent session keeps from a run with a different
    /// `sessions` (it would otherwise get every message twice).
    pub(super) fn plan(&self, index: usize) -> Plan {
        let shared = self.shared_filter();
        let (subscribe, unsubscribe) = match (self.client_ids.len(), index) {
            (1, _) => (self.filter.clone(), Some(shared)),
            (_, 0) => (shared, Some(self.filter.clone())),
            (_, _) => (shared, None),
        };
        Plan {
            client_id: self.client_ids[index].clone(),
            subscribe: Some(subscribe),
            unsubscribe,
            shown: if self.client_ids.len() == 1 {
                self.filter.clone()
            } else {
                format!(
                    "{} (shared, session {} of {})",
                    self.filter,
                    index + 1,
                    self.client_ids.len()
                )
            },
        }
    }

    /// A session an earlier run had and this one has not: it leaves the group and hands
    /// over what the broker had queued for it, then ends.
    fn retiring_plan(&self, index: usize) -> Plan {
        Plan {
            client_id: self.session_id(index),
            subscribe: None,
            unsubscribe: Some(self.shared_filter()),
            shown: format!("{} (retiring shared session {})", self.filter, index + 1),
        }
    }

    fn shared_filter(&self) -> String {
        let group: String = self.client_ids[0]
            .chars()
            .map(|c| if matches!(c, '/' | '+' | '#') { '_' } else { c })
            .collect();
        format!("$share/{group}/{}", self.filter)
    }
}

/// What one broker session does.
pub(super) struct Plan {
    client_id: String,
    /// `None`: a retiring session (subscribes to nothing, ends once idle).
    pub(super) subscribe: Option<String>,
    pub(super) unsubscribe: Option<String>,
    /// For logs.
    shown: String,
}

/// The number of sessions recorded by an earlier run, if any.
async fn recorded_sessions(context: &TriggerContext, key: &str) -> Option<usize> {
    match context.runtime.store().meta(key).await {
        Ok(Some(bytes)) => <[u8; 2]>::try_from(bytes.as_slice())
            .ok()
            .map(|b| usize::from(u16::from_be_bytes(b)))
            .filter(|&n| (1..=usize::from(MAX_MQTT_SESSIONS)).contains(&n)),
        Ok(None) => None,
        Err(error) => {
            warn!(workflow = %context.workflow, %error, "reading the MQTT trigger's session count failed");
            None
        }
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
        let count = self.client_ids.len();
        let key = self.sessions_key();
        // A read at start; the count is written only when it changed and is not the first
        // run of a single-session trigger (no journal write at its start).
        let recorded = recorded_sessions(&context, &key).await;
        let retiring: Vec<Plan> = match recorded {
            Some(before) if before > count => {
                (count..before).map(|i| self.retiring_plan(i)).collect()
            }
            _ => Vec::new(),
        };
        if count == 1 && retiring.is_empty() {
            return self.run_session(self.plan(0), &context).await;
        }
        // Each session keeps its own inflight window at the broker (Mosquitto:
        // max_inflight_messages per client), acknowledging only recorded messages. One that
        // fails stops the others, which drain and disconnect as at shutdown.
        let mut sessions = context.clone();
        sessions.cancel = context.cancel.child_token();
        let sessions = &sessions;
        let this = &self;
        let active = futures::future::join_all((0..count).map(|i| async move {
            let result = this.run_session(this.plan(i), sessions).await;
            if result.is_err() {
                sessions.cancel.cancel();
            }
            result
        }));
        let retire = async {
            let retired = futures::future::join_all(
                retiring
                    .into_iter()
                    .map(|plan| this.run_session(plan, sessions)),
            )
            .await;
            let done = retired.iter().all(Result::is_ok) && !sessions.cancel.is_cancelled();
            if done && recorded.unwrap_or(1) != count {
                let write = StoreWrite::PutMeta {
                    key: key.clone(),
                    value: Some((count as u16).to_be_bytes().to_vec()),
                };
                if let Err(error) = sessions.runtime.store().write(vec![write]).await {
                    warn!(workflow = %sessions.workflow, %error,
                        "recording the MQTT trigger's session count failed");
                }
            }
        };
        let (results, ()) = tokio::join!(active, retire);
        results.into_iter().find(Result::is_err).unwrap_or(Ok(()))
    }
}

impl MqttTrigger {
    /// Runs one broker session until `context.cancel` (or an error; a retiring session also
    /// ends once the broker has nothing more for it).
    async fn run_session(&self, plan: Plan, context: &TriggerContext) -> Result<(), TriggerError> {
        let Plan {
            client_id,
            subscribe: subscription,
            unsubscribe: unsubscription,
            shown,
        } = plan;
        let client_id = &client_id;
        let limit = usize::from(self.settings.inflight.max(1));
        let (outbound_tx, outbound_rx) = mpsc::channel(limit + REQUEST_SLACK);
        let (links_tx, links_rx) = mpsc::channel(limit);
        let stop_link = CancellationToken::new();
        let link_done = CancellationToken::new();
        let reconnect = Arc::new(Notify::new());
        let link = LinkLoop {
            settings: self.settings.clone(),
            client_id: client_id.clone(),
            outbound: outbound_rx,
            links: links_tx,
            stop: stop_link.clone(),
            reconnect: reconnect.clone(),
        };
        let subscriber = Subscriber {
            trigger: self,
            context,
            subscription,
            unsubscription,
            last_message: tokio::time::Instant::now(),
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
            client_id = %client_id,
            filter = %shown,
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
    /// The filter subscribed to (`$share/…` with several sessions; none when retiring) and
    /// the one dropped.
    subscription: Option<String>,
    unsubscription: Option<String>,
    /// When the last message arrived (a retiring session ends once idle).
    last_message: tokio::time::Instant,
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
            let idle = self.subscription.is_none()
                && self.connected
                && !draining
                && !due
                && self.in_flight.is_empty();
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
                () = tokio::time::sleep_until(self.last_message + RETIRE_IDLE), if idle => {
                    let now = tokio::time::Instant::now();
                    if now >= self.last_message + RETIRE_IDLE {
                        info!(workflow = %self.context.workflow, "MQTT session retired");
                        drain_until = Some(now);
                    }
                }
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
                self.last_message = tokio::time::Instant::now();
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
                                self.trigger.settings.url, self.subscription
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
                self.last_message = tokio::time::Instant::now();
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
            let subscribe = match &self.subscription {
                Some(filter) => Outbound::Subscribe {
                    filter: filter.clone(),
                    qos: self.trigger.qos,
                },
                // Retiring: only the UNSUBSCRIBE below.
                None => Outbound::Unsubscribe {
                    filter: self.unsubscription.clone().unwrap_or_default(),
                },
            };
            let retiring = self.subscription.is_none();
            match self.outbound.try_send(subscribe) {
                Ok(()) => {
                    self.subscribe_due = false;
                    // After the SUBSCRIBE, so the session is never without the subscription.
                    if let Some(filter) = self.unsubscription.clone().filter(|_| !retiring)
                        && self
                            .outbound
                            .try_send(Outbound::Unsubscribe { filter })
                            .is_err()
                    {
                        debug!("MQTT unsubscribe of the other filter form not queued");
                    }
                }
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
            sessions: 1,
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
