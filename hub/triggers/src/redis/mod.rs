//! The `redis` trigger: pub/sub channels and patterns, or a stream read by a consumer group.
//!
//! **Pub/sub** (`channel:`; a name holding `*`, `?` or `[` is a pattern, `PSUBSCRIBE`):
//! at most once — Redis keeps nothing for a subscriber that is away or slow (a subscriber
//! that falls behind its output buffer limit is disconnected by the server). Event: type
//! `redis`, source `reactor:redis/{channel}`, `data` = the message parsed as JSON when it
//! parses, else text, else base64; `meta` = `{channel, pattern, encoding}`.
//!
//! **Streams** (`stream:` + `group:` + optional `consumer:`, default the hub's instance
//! name): `XREADGROUP`, and `XACK` only after the execution is durably recorded. Exactly
//! once across a crash: each execution is submitted with a de-duplication mark keyed
//! `redis/{stream}/{group}/{id}` by its (first) entry, so an entry recorded but not
//! acknowledged when the hub died — read again from this consumer's pending list on
//! restart, or claimed by another consumer — starts nothing new (`recovery`). On every
//! (re)connection the consumer first re-reads its own pending entries (`XREADGROUP … 0`),
//! and every `claim_every` it takes over entries left pending by other consumers for longer
//! than `claim_idle` (`XAUTOCLAIM`): a consumer that died for good does not strand its
//! entries. The group is created at the end of the stream (`$`, `MKSTREAM`) when missing.
//! Event: type `redis`, source `reactor:redis/{stream}`, `data` = the entry's fields (values
//! as text), `meta` = `{stream, group, consumer, id}`. `lag` (trigger stats) is the group's
//! pending count plus its lag where Redis reports it.
//!
//! With `batch: { size, wait }` (streams) one execution takes up to `size` entries, read for
//! at most `wait` after the first (`crate::batch`), under one mark that lists its entries:
//! an entry redelivered in any split — its consumer's pending list re-read, or a dead
//! consumer's entries claimed a few at a time — is found in it and acknowledged, never
//! batched again. Batch event: `data` = the entries' `{data, meta}`, `meta` = `{stream,
//! group, consumer, first_id, last_id, count}`.
//!
//! While one batch of new entries is being recorded the next is already read (without
//! blocking), so Redis round trips overlap the journal's commits.

use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use reactor_core::engine::Event;
use reactor_core::flow::{self, Batch, RedisSource};
use reactor_core::trigger::{Trigger, TriggerContext, TriggerError};
use redis::{AsyncConnectionConfig, Client, RedisError};
use serde_json::{Value, json};
use tracing::{info, warn};

use crate::connections::{Connections, Resolved};
use crate::payload::decode_payload;
use crate::retry::{self, Backoff, Failure};

mod recovery;
mod stream;

use stream::StreamReader;

/// Entries read (and submitted concurrently) per round trip.
const BATCH: usize = 512;
/// How long one blocking read waits for new entries.
const BLOCK: Duration = Duration::from_secs(1);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A running `redis` trigger.
#[derive(Debug)]
pub struct RedisTrigger {
    source: RedisSource,
    connection: Resolved,
    consumer: String,
    claim_idle: Duration,
    claim_every: Duration,
    batch: Option<Batch>,
    /// [`Batch::MAX_BYTES`]; lower in tests.
    batch_bytes: usize,
    stop_before_ack: Option<u64>,
}

impl RedisTrigger {
    pub fn new(
        spec: &flow::RedisTrigger,
        connections: &Connections,
    ) -> Result<RedisTrigger, TriggerError> {
        let connection = connections.resolve(&spec.connection, "redis", &["redis", "rediss"])?;
        Client::open(connection.address.as_str()).map_err(|e| {
            TriggerError::Settings(format!("redis url {}: {e}", connection.display))
        })?;
        let consumer = match &spec.source {
            RedisSource::Stream {
                consumer: Some(consumer),
                ..
            } => consumer.clone(),
            _ => connections.instance().to_string(),
        };
        if let RedisSource::Channel(channel)
        | RedisSource::Stream {
            stream: channel, ..
        } = &spec.source
            && channel.is_empty()
        {
            return Err(TriggerError::Settings(
                "the redis channel or stream name is empty".into(),
            ));
        }
        Ok(RedisTrigger {
            source: spec.source.clone(),
            connection,
            consumer,
            claim_idle: Duration::from_secs(60),
            claim_every: Duration::from_secs(30),
            batch: spec.batch,
            batch_bytes: Batch::MAX_BYTES,
            stop_before_ack: None,
        })
    }

    /// Entries pending at a dead consumer for longer than `idle` are claimed, checked every
    /// `every` (defaults: 60 s and 30 s).
    pub fn with_claim(mut self, idle: Duration, every: Duration) -> RedisTrigger {
        self.claim_idle = idle;
        self.claim_every = every;
        self
    }

    /// Crash tests: once `recorded` entries are recorded, stop with an error instead of
    /// acknowledging them — what a hub killed between record and ack leaves behind.
    pub fn stop_before_ack(mut self, recorded: u64) -> RedisTrigger {
        self.stop_before_ack = Some(recorded);
        self
    }

    /// Tests: a batch closes at `bytes` instead of [`Batch::MAX_BYTES`].
    pub fn with_batch_bytes(mut self, bytes: usize) -> RedisTrigger {
        self.batch_bytes = bytes;
        self
    }

    pub fn consumer(&self) -> &str {
        &self.consumer
    }

    /// Entries per read: a batch, or what one round trip carries.
    fn count(&self) -> usize {
        self.batch.map_or(BATCH, |batch| batch.size)
    }

    /// Entries per read-ahead of new entries: with `batch:`, several batches.
    fn ahead(&self) -> usize {
        self.batch
            .map_or(BATCH, |batch| crate::batch::ahead(batch.size))
    }

    async fn connect(&self) -> Result<redis::aio::MultiplexedConnection, RedisError> {
        let client = Client::open(self.connection.address.as_str())?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            // Blocking reads wait longer than any default response timeout.
            .set_response_timeout(None);
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        // A recognisable name (CLIENT LIST), per consumer.
        let name: String = format!("reactor-{}", self.consumer)
            .chars()
            .map(|c| if c.is_ascii_graphic() { c } else { '_' })
            .collect();
        redis::cmd("CLIENT")
            .arg("SETNAME")
            .arg(name)
            .query_async::<()>(&mut conn)
            .await?;
        Ok(conn)
    }
}

#[async_trait]
impl Trigger for RedisTrigger {
    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn run(self: Box<Self>, context: TriggerContext) -> Result<(), TriggerError> {
        let mut backoff = Backoff::default();
        let mut recorded = 0u64;
        loop {
            let session = match &self.source {
                RedisSource::Channel(channel) => self.pubsub(&context, channel, &mut backoff).await,
                RedisSource::Stream { stream, group, .. } => {
                    let mut reader = StreamReader {
                        trigger: &self,
                        context: &context,
                        stream,
                        group,
                        recorded: &mut recorded,
                        backoff: &mut backoff,
                    };
                    reader.run().await
                }
            };
            match session {
                Ok(()) => return Ok(()),
                Err(Failure::Fatal(error)) => return Err(error),
                Err(Failure::Retry(message)) => {
                    if !retry::failed(&context, &mut backoff, "redis", &message).await {
                        return Ok(());
                    }
                }
            }
        }
    }
}

impl From<RedisError> for Failure {
    fn from(error: RedisError) -> Self {
        Failure::Retry(format!("redis: {error}"))
    }
}

impl RedisTrigger {
    async fn pubsub(
        &self,
        context: &TriggerContext,
        channel: &str,
        backoff: &mut Backoff,
    ) -> Result<(), Failure> {
        let client = Client::open(self.connection.address.as_str())?;
        let mut pubsub = tokio::time::timeout(CONNECT_TIMEOUT, client.get_async_pubsub())
            .await
            .map_err(|_| Failure::Retry("redis: connect timed out".into()))??;
        let pattern = channel.contains(['*', '?', '[']);
        if pattern {
            pubsub.psubscribe(channel).await?;
        } else {
            pubsub.subscribe(channel).await?;
        }
        info!(workflow = %context.workflow, redis = %self.connection.display, channel, pattern,
            "redis subscribed");
        backoff.reset();
        context.stats.record_success();
        let mut messages = pubsub.on_message();
        loop {
            let message = tokio::select! {
                biased;
                () = context.cancel.cancelled() => return Ok(()),
                message = messages.next() => message,
            };
            let Some(message) = message else {
                return Err(Failure::Retry(
                    "redis: the subscription connection closed".into(),
                ));
            };
            let (data, encoding) = decode_payload(message.get_payload_bytes());
            let name = message.get_channel_name().to_string();
            let mut event = Event::new("redis", &format!("reactor:redis/{name}"), data);
            event.meta = json!({
                "channel": name,
                "pattern": if pattern { Value::String(channel.to_string()) } else { Value::Null },
                "encoding": encoding,
            });
            if let Err(error) = context.submit(event).await {
                warn!(workflow = %context.workflow, channel = %name, %error,
                    "redis message not recorded (pub/sub is at most once)");
            }
        }
    }
}
