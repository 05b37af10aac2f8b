//! The `nats` trigger: a core NATS subject (optionally in a queue group), or a JetStream
//! stream read through a durable pull consumer ([`jetstream`]).
//!
//! **Core** (`subject:` + optional `queue:`): at most once — core NATS keeps nothing for a
//! subscriber that is away. Queue groups spread messages over the hubs subscribed with the
//! same `queue`. Event: type `nats`, source `reactor:nats/{subject}`, `data` = the payload
//! parsed as JSON when it parses, else text, else base64; `meta` = `{subject, queue,
//! headers, reply, encoding}`.
//!
//! **JetStream** (`stream:` + `durable:`, `subject:` filtering the stream): at least once
//! from the server, exactly once into executions — see [`jetstream`].
//!
//! The client reconnects by itself (with backoff) and resubscribes; disconnections count as
//! trigger errors, a working connection clears the failure streak.

mod jetstream;

use std::sync::Arc;
use std::time::Duration;

use async_nats::{Client, ConnectOptions, HeaderMap};
use async_trait::async_trait;
use futures::StreamExt;
use reactor_core::engine::Event;
use reactor_core::flow::{self, Batch};
use reactor_core::trigger::{Trigger, TriggerContext, TriggerError, TriggerStats};
use serde_json::{Map, Value, json};
use tracing::{info, warn};

use crate::connections::{Connections, Resolved};
use crate::payload::decode_payload;
use crate::retry::{self, Backoff, Failure};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A running `nats` trigger.
#[derive(Debug)]
pub struct NatsTrigger {
    subject: String,
    queue: Option<String>,
    jetstream: Option<(String, String)>,
    connection: Resolved,
    /// JetStream: one execution per batch of messages.
    batch: Option<Batch>,
    /// A batch closes at this many bytes of messages ([`Batch::MAX_BYTES`]; tests lower it).
    batch_bytes: usize,
    ack_wait: Duration,
    /// How long a JetStream pull waits when no message is waiting.
    pull_wait: Duration,
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
        if jetstream.is_none() && spec.batch.is_some() {
            return Err(TriggerError::Settings(
                "batch applies to JetStream (stream + durable), not core subjects".into(),
            ));
        }
        Ok(NatsTrigger {
            subject: spec.subject.clone(),
            queue: spec.queue.clone(),
            jetstream,
            connection,
            batch: spec.batch,
            batch_bytes: Batch::MAX_BYTES,
            ack_wait: Duration::from_secs(30),
            pull_wait: jetstream::PULL_WAIT,
            stop_before_ack: None,
        })
    }

    /// How long JetStream waits for an ack before redelivering (default 30 s). Applies when
    /// the durable consumer is created.
    pub fn with_ack_wait(mut self, ack_wait: Duration) -> NatsTrigger {
        self.ack_wait = ack_wait;
        self
    }

    /// How long a JetStream pull waits when no message is waiting (default 1 s): each wait
    /// ends as soon as a message comes, so this only decides how often an idle consumer
    /// asks again.
    pub fn with_pull_wait(mut self, wait: Duration) -> NatsTrigger {
        self.pull_wait = wait;
        self
    }

    /// Tests: close batches at `bytes` instead of [`Batch::MAX_BYTES`].
    pub fn with_batch_bytes(mut self, bytes: usize) -> NatsTrigger {
        self.batch_bytes = bytes;
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
                            let mut reader = jetstream::Reader {
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
