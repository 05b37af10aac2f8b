//! The `nats` trigger: a core NATS subject (optionally in a queue group), or a JetStream
//! stream read through a durable pull consumer.
//!
//! **Core** (`subject:` + optional `queue:`): at most once — core NATS keeps nothing for a
//! subscriber that is away. Queue groups spread messages over the hubs subscribed with the
//! same `queue`. Event: type `nats`, source `reactor:nats/{subject}`, `data` = the payload
//! parsed as JSON when it parses, else text, else base64; `meta` = `{subject, queue,
//! headers, reply, encoding}`.
//!
//! **JetStream** (`stream:` + `durable:`, `subject:` filtering the stream): the durable pull
//! consumer (created when missing: explicit acks, `ack_wait` 30 s, delivering from the start
//! of the stream) hands out batches; each message is submitted with the de-duplication key
//! `nats/{stream}/{stream sequence}` and acknowledged (double ack: confirmed by the server)
//! only after the execution is durably recorded; the acknowledgements of one batch are
//! confirmed while the next batch is recorded (one round in flight), and the next pull runs
//! while a batch is recorded, so neither round trip adds to the recording time. Marks are
//! forgotten once every pull issued before the acks were confirmed has been recorded (a
//! message whose `ack_wait` ran out may have been redelivered into such a pull). A message that could not be recorded is
//! negatively acknowledged and comes again; a message recorded but not acknowledged when the
//! hub died is redelivered after `ack_wait` — to this hub or another one bound to the same
//! durable — and starts nothing new (a first delivery, `delivered` 1, writes its mark
//! without reading the store first: only redeliveries look for one). `meta` adds `{stream,
//! consumer, stream_sequence, consumer_sequence, delivered, pending}`; `lag` (trigger
//! stats) is the consumer's pending count.
//!
//! The client reconnects by itself (with backoff) and resubscribes; disconnections count as
//! trigger errors, a working connection clears the failure streak.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::pull};
use async_nats::{Client, ConnectOptions, HeaderMap};
use async_trait::async_trait;
use futures::StreamExt;
use reactor_core::engine::{DedupeMark, Event, Submission};
use reactor_core::flow;
use reactor_core::trigger::{Trigger, TriggerContext, TriggerError, TriggerStats};
use serde_json::{Map, Value, json};
use tracing::{debug, info, warn};

use crate::connections::{Connections, Resolved};
use crate::payload::decode_payload;
use crate::retry::{self, Backoff, Failure, handled};

/// Messages asked for (and submitted concurrently) per pull.
const BATCH: usize = 512;
/// How long one pull waits for messages.
const PULL_WAIT: Duration = Duration::from_secs(1);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A running `nats` trigger.
#[derive(Debug)]
pub struct NatsTrigger {
    subject: String,
    queue: Option<String>,
    jetstream: Option<(String, String)>,
    connection: Resolved,
    ack_wait: Duration,
    stop_before_ack: Option<u64>,
}

impl NatsTrigger {
    pub fn new(
        spec: &flow::NatsTrigger,
        connections: &Connections,
    ) -> Result<NatsTrigger, TriggerError> {
        let connection = connections.resolve(&spec.connection, "nats", &["nats", "tls"])?;
        if spec.subject.is_empty() || spec.subject.contains(char::is_whitespace) {
            return Err(TriggerError::Settings(format!(
                "nats subject {:?} must be non-empty without spaces",
                spec.subject
            )));
        }
        let jetstream = match (&spec.stream, &spec.durable) {
            (Some(stream), Some(durable)) => Some((stream.clone(), durable.clone())),
            (Some(_), None) => {
                return Err(TriggerError::Settings(
                    "a JetStream nats trigger needs durable (the consumer name) beside stream"
                        .into(),
                ));
            }
            (None, _) => None,
        };
        if jetstream.is_some() && spec.queue.is_some() {
            return Err(TriggerError::Settings(
                "queue applies to core NATS; JetStream spreads work by the durable consumer".into(),
            ));
        }
        Ok(NatsTrigger {
            subject: spec.subject.clone(),
            queue: spec.queue.clone(),
            jetstream,
            connection,
            ack_wait: Duration::from_secs(30),
            stop_before_ack: None,
        })
    }

    /// How long JetStream waits for an ack before redelivering (default 30 s). Applies when
    /// the durable consumer is created.
    pub fn with_ack_wait(mut self, ack_wait: Duration) -> NatsTrigger {
        self.ack_wait = ack_wait;
        self
    }

    /// Crash tests: once `recorded` messages are recorded, stop with an error instead of
    /// acknowledging them — what a hub killed between record and ack leaves behind.
    pub fn stop_before_ack(mut self, recorded: u64) -> NatsTrigger {
        self.stop_before_ack = Some(recorded);
        self
    }

    async fn connect(&self, stats: Arc<TriggerStats>) -> Result<Client, Failure> {
        let mut options = ConnectOptions::new()
            .connection_timeout(CONNECT_TIMEOUT)
            .event_callback(move |event| {
                let stats = stats.clone();
                async move {
                    match event {
                        async_nats::Event::Connected => stats.record_success(),
                        async_nats::Event::Disconnected | async_nats::Event::Closed => {
                            stats.record_error(&format!("nats: {event}"));
                        }
                        async_nats::Event::ServerError(_) | async_nats::Event::ClientError(_) => {
                            stats.record_error(&format!("nats: {event}"));
                        }
                        _ => {}
                    }
                }
            });
        if let Some(token) = &self.connection.token {
            options = options.token(token.clone());
        }
        if let (Some(user), Some(password)) = (&self.connection.username, &self.connection.password)
        {
            options = options.user_and_password(user.clone(), password.clone());
        }
        // Credentials go through the options above, never the URL.
        let address = self.connection.display.clone();
        options
            .connect(address.as_str())
            .await
            .map_err(|e| Failure::Retry(format!("nats connect {address}: {e}")))
    }
}

#[async_trait]
impl Trigger for NatsTrigger {
    fn kind(&self) -> &'static str {
        "nats"
    }

    async fn run(self: Box<Self>, context: TriggerContext) -> Result<(), TriggerError> {
        let mut backoff = Backoff::default();
        let mut recorded = 0u64;
        loop {
            let session = tokio::select! {
                biased;
                () = context.cancel.cancelled() => return Ok(()),
                client = self.connect(context.stats.clone()) => client,
            };
            let session = match session {
                Ok(client) => {
                    let result = match &self.jetstream {
                        None => self.core(&context, &client, &mut backoff).await,
                        Some((stream, durable)) => {
                            let mut reader = Reader {
                                trigger: &self,
                                context: &context,
                                stream,
                                durable,
                                recorded: &mut recorded,
                            };
                            reader.run(client.clone(), &mut backoff).await
                        }
                    };
                    // Acks already sent are flushed by the client before it goes.
                    let _ = client.flush().await;
                    result
                }
                Err(error) => Err(error),
            };
            match session {
                Ok(()) => return Ok(()),
                Err(Failure::Fatal(error)) => return Err(error),
                Err(Failure::Retry(message)) => {
                    if !retry::failed(&context, &mut backoff, "nats", &message).await {
                        return Ok(());
                    }
                }
            }
        }
    }
}

impl NatsTrigger {
    async fn core(
        &self,
        context: &TriggerContext,
        client: &Client,
        backoff: &mut Backoff,
    ) -> Result<(), Failure> {
        let subscribed = match &self.queue {
            Some(queue) => {
                client
                    .queue_subscribe(self.subject.clone(), queue.clone())
                    .await
            }
            None => client.subscribe(self.subject.clone()).await,
        };
        let mut subscriber =
            subscribed.map_err(|e| Failure::Retry(format!("nats subscribe: {e}")))?;
        // The subscription is registered once the server has seen it.
        client
            .flush()
            .await
            .map_err(|e| Failure::Retry(format!("nats flush: {e}")))?;
        info!(workflow = %context.workflow, nats = %self.connection.display, subject = %self.subject,
            queue = ?self.queue, "NATS subscribed");
        backoff.reset();
        context.stats.record_success();
        loop {
            let message = tokio::select! {
                biased;
                () = context.cancel.cancelled() => {
                    let _ = subscriber.unsubscribe().await;
                    return Ok(());
                }
                message = subscriber.next() => message,
            };
            let Some(message) = message else {
                return Err(Failure::Retry("nats: the subscription ended".into()));
            };
            let (data, encoding) = decode_payload(&message.payload);
            let mut event = Event::new("nats", &format!("reactor:nats/{}", message.subject), data);
            event.meta = json!({
                "subject": message.subject.as_str(),
                "queue": self.queue,
                "headers": headers(message.headers.as_ref()),
                "reply": message.reply.as_ref().map(|r| r.as_str()),
                "encoding": encoding,
            });
            if let Err(error) = context.submit(event).await {
                warn!(workflow = %context.workflow, subject = %message.subject, %error,
                    "NATS message not recorded (core NATS is at most once)");
            }
        }
    }
}

/// Reads one JetStream durable consumer.
struct Reader<'a> {
    trigger: &'a NatsTrigger,
    context: &'a TriggerContext,
    stream: &'a str,
    durable: &'a str,
    recorded: &'a mut u64,
}

impl Reader<'_> {
    async fn run(&mut self, client: Client, backoff: &mut Backoff) -> Result<(), Failure> {
        let js = jetstream::new(client);
        let stream = js
            .get_stream(self.stream)
            .await
            .map_err(|e| Failure::Retry(format!("JetStream stream {:?}: {e}", self.stream)))?;
        let consumer: jetstream::consumer::Consumer<pull::Config> = stream
            .get_or_create_consumer(
                self.durable,
                pull::Config {
                    durable_name: Some(self.durable.to_string()),
                    filter_subject: self.trigger.subject.clone(),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    ack_wait: self.trigger.ack_wait,
                    ..pull::Config::default()
                },
            )
            .await
            .map_err(|e| Failure::Retry(format!("JetStream consumer {:?}: {e}", self.durable)))?;
        info!(workflow = %self.context.workflow, nats = %self.trigger.connection.display,
            stream = self.stream, durable = self.durable, subject = %self.trigger.subject,
            "JetStream consumer reading");
        backoff.reset();
        self.context.stats.record_success();
        // The acknowledgements of the previous batch, confirmed while this one is pulled and
        // recorded (at most one round in flight).
        let mut acking: Option<Acking> = None;
        let result = self.read(&consumer, &mut acking).await;
        // Whatever ended the session, what was recorded is still acknowledged; no pull of
        // this session is left, so the marks can go once the acks are confirmed.
        let acked = match acking {
            Some(round) => round
                .await
                .unwrap_or_else(|e| Err(Failure::Retry(format!("JetStream acks: {e}"))))
                .map(|keys| retry::forget_soon(self.context, keys)),
            None => Ok(()),
        };
        result.and(acked)
    }

    async fn read(
        &mut self,
        consumer: &jetstream::consumer::Consumer<pull::Config>,
        acking: &mut Option<Acking>,
    ) -> Result<(), Failure> {
        // Keys of confirmed acks. A pull issued before a round of acks was confirmed may
        // carry redeliveries of those messages (their ack_wait ran out first): the marks
        // stay until that pull is recorded too, i.e. one more round.
        let mut confirmed: VecDeque<Vec<String>> = VecDeque::new();
        let mut pulling = tokio::spawn(pull(consumer.clone()));
        let result = loop {
            let pulled = tokio::select! {
                biased;
                () = self.context.cancel.cancelled() => break Ok(()),
                pulled = &mut pulling => pulled,
            };
            let messages = match pulled {
                Ok(Ok(messages)) => messages,
                Ok(Err(failure)) => break Err(failure),
                Err(error) => break Err(Failure::Retry(format!("JetStream pull: {error}"))),
            };
            // The next pull runs while this batch is recorded.
            pulling = tokio::spawn(pull(consumer.clone()));
            if messages.is_empty() {
                continue;
            }
            let recorded = match self.record(messages).await {
                Ok(recorded) => recorded,
                Err(failure) => break Err(failure),
            };
            if let Some(previous) = acking.take() {
                match previous.await {
                    Ok(Ok(keys)) => confirmed.push_back(keys),
                    Ok(Err(failure)) => break Err(failure),
                    Err(error) => break Err(Failure::Retry(format!("JetStream acks: {error}"))),
                }
                while confirmed.len() > 1 {
                    retry::forget_soon(self.context, confirmed.pop_front().unwrap_or_default());
                }
            }
            *acking = Some(tokio::spawn(acknowledge(recorded)));
        };
        // Cancel safety: messages of an abandoned pull are redelivered after ack_wait; copies
        // of acknowledged messages in it never come again, so the marks can go.
        pulling.abort();
        for keys in confirmed {
            retry::forget_soon(self.context, keys);
        }
        result
    }

    /// Submits `messages`; NAKs those not recorded; returns the recorded ones (with their
    /// de-duplication keys) to acknowledge.
    async fn record(
        &mut self,
        messages: Vec<jetstream::Message>,
    ) -> Result<Vec<(jetstream::Message, String)>, Failure> {
        let this = &*self;
        let submissions = messages.iter().map(|message| async move {
            let Ok(info) = message.info() else {
                return None;
            };
            let key = format!("nats/{}/{}", info.stream, info.stream_sequence);
            let mut mark = DedupeMark::new(
                key.clone(),
                json!({"stream": info.stream, "stream_sequence": info.stream_sequence}),
            );
            // The consumer hands this message out for the first time: no execution of it can
            // have been recorded, so its mark is written without reading the store.
            if info.delivered == 1 {
                mark = mark.first();
            }
            let pending = info.pending;
            let event = this.event_for(message, &info);
            let result = this.context.submit_once(event, mark).await;
            Some((key, pending, result))
        });
        let results = futures::future::join_all(submissions).await;
        let mut to_ack = Vec::with_capacity(messages.len());
        let mut lag = None;
        for (message, outcome) in messages.into_iter().zip(results) {
            let Some((key, pending, result)) = outcome else {
                // Not a JetStream message (no ack subject): nothing to record or ack.
                continue;
            };
            lag = Some(pending);
            if handled(&self.context.workflow, &key, &result) {
                if matches!(result, Ok(Submission::Accepted(_))) {
                    *self.recorded += 1;
                }
                to_ack.push((message, key));
            } else {
                // Not recorded: ask for it again soon rather than after ack_wait.
                let _ = message
                    .ack_with(AckKind::Nak(Some(Duration::from_millis(500))))
                    .await;
            }
        }
        if let Some(lag) = lag {
            self.context.stats.set_lag(lag);
        }
        if let Some(limit) = self.trigger.stop_before_ack
            && *self.recorded >= limit
        {
            return Err(Failure::Fatal(TriggerError::Source(format!(
                "stopped before acknowledging {} recorded messages (crash test)",
                to_ack.len()
            ))));
        }
        Ok(to_ack)
    }

    fn event_for(
        &self,
        message: &jetstream::Message,
        info: &jetstream::message::Info<'_>,
    ) -> Event {
        let (data, encoding) = decode_payload(&message.payload);
        let mut event = Event::new("nats", &format!("reactor:nats/{}", message.subject), data);
        event.meta = json!({
            "subject": message.subject.as_str(),
            "headers": headers(message.headers.as_ref()),
            "encoding": encoding,
            "stream": info.stream,
            "consumer": info.consumer,
            "stream_sequence": info.stream_sequence,
            "consumer_sequence": info.consumer_sequence,
            "delivered": info.delivered,
            "pending": info.pending,
        });
        event
    }
}

/// One pull of up to [`BATCH`] messages (waits at most [`PULL_WAIT`]).
async fn pull(
    consumer: jetstream::consumer::Consumer<pull::Config>,
) -> Result<Vec<jetstream::Message>, Failure> {
    let mut batch = consumer
        .batch()
        .max_messages(BATCH)
        .expires(PULL_WAIT)
        .messages()
        .await
        .map_err(|e| Failure::Retry(format!("JetStream pull: {e}")))?;
    let mut messages = Vec::new();
    while let Some(next) = batch.next().await {
        match next {
            Ok(message) => messages.push(message),
            Err(error) => {
                if messages.is_empty() {
                    return Err(Failure::Retry(format!("JetStream pull: {error}")));
                }
                break;
            }
        }
    }
    Ok(messages)
}

/// A round of acknowledgements in flight: the keys of the confirmed ones.
type Acking = tokio::task::JoinHandle<Result<Vec<String>, Failure>>;

/// Double-acks (server-confirmed) recorded messages; returns the keys of the confirmed ones
/// (their marks go once the next batch is recorded). Runs while the next batch is pulled
/// and recorded.
async fn acknowledge(recorded: Vec<(jetstream::Message, String)>) -> Result<Vec<String>, Failure> {
    let acks = recorded.iter().map(|(message, key)| async move {
        match message.double_ack().await {
            Ok(()) => Some(key.clone()),
            Err(error) => {
                // Unconfirmed: JetStream may redeliver it; its mark de-duplicates it.
                debug!(%error, key, "JetStream ack not confirmed");
                None
            }
        }
    });
    let acked: Vec<String> = futures::future::join_all(acks)
        .await
        .into_iter()
        .flatten()
        .collect();
    if acked.len() < recorded.len() {
        // The confirmed ones' marks stay until pruned: nothing is lost, one batch's worth of
        // marks lingers.
        return Err(Failure::Retry("JetStream acks were not confirmed".into()));
    }
    Ok(acked)
}

/// Headers as `{name: value}` (several values: a list).
fn headers(headers: Option<&HeaderMap>) -> Value {
    let Some(headers) = headers else {
        return Value::Object(Map::new());
    };
    let mut out = Map::new();
    for (name, values) in headers.iter() {
        let values: Vec<Value> = values
            .iter()
            .map(|v| Value::String(v.as_str().to_string()))
            .collect();
        let value = match values.len() {
            1 => values.into_iter().next().unwrap_or(Value::Null),
            _ => Value::Array(values),
        };
        out.insert(name.to_string(), value);
    }
    Value::Object(out)
}
