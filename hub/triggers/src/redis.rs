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
//! once across a crash: each entry is submitted with the de-duplication key
//! `redis/{stream}/{group}/{id}`, so an entry recorded but not acknowledged when the hub died
//! — read again from this consumer's pending list on restart, or claimed by another
//! consumer — starts nothing new. On every (re)connection the consumer first re-reads its
//! own pending entries (`XREADGROUP … 0`), and every `claim_every` it takes over entries left
//! pending by other consumers for longer than `claim_idle` (`XAUTOCLAIM`): a consumer that
//! died for good does not strand its entries. The group is created at the end of the stream
//! (`$`, `MKSTREAM`) when missing. Event: type `redis`, source `reactor:redis/{stream}`,
//! `data` = the entry's fields (values as text), `meta` = `{stream, group, consumer, id}`.
//! `lag` (trigger stats) is the group's pending count plus its lag where Redis reports it.
//! With `batch: { size, wait }` (streams) one execution takes up to `size` entries, read
//! for at most `wait` after the first (`crate::batch`); each entry still gets its own mark
//! (written with the execution), so an entry redelivered in any split — its consumer's
//! pending list re-read, or a dead consumer's entries claimed a few at a time — is found
//! and acknowledged, never batched again. Re-read and claimed entries are looked up one by
//! one before batching; new entries need no lookup. Batch event: `data` = the entries'
//! `{data, meta}`, `meta` = `{stream, group, consumer, first_id, last_id, count}`.
//!
//! While one batch of new entries is being recorded the next is already read (without
//! blocking), so Redis round trips overlap the journal's commits.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::StreamExt;
use reactor_core::engine::{DedupeMark, Event, Submission, SubmitError};
use reactor_core::flow::{self, Batch, RedisSource};
use reactor_core::trigger::{Trigger, TriggerContext, TriggerError};
use redis::streams::{StreamAutoClaimReply, StreamId, StreamReadReply};
use redis::{AsyncConnectionConfig, Client, RedisError, Value as RedisValue};
use serde_json::{Value, json};
use tracing::{info, warn};

use crate::batch;
use crate::connections::{Connections, Resolved};
use crate::payload::decode_payload;
use crate::retry::{self, Backoff, Failure, handled};

/// The entries of an `XREADGROUP` reply.
fn ids(reply: Option<StreamReadReply>) -> Vec<StreamId> {
    reply
        .map(|r| r.keys.into_iter().flat_map(|k| k.ids).collect())
        .unwrap_or_default()
}

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

struct StreamReader<'a> {
    trigger: &'a RedisTrigger,
    context: &'a TriggerContext,
    stream: &'a str,
    group: &'a str,
    recorded: &'a mut u64,
    backoff: &'a mut Backoff,
}

impl StreamReader<'_> {
    async fn run(&mut self) -> Result<(), Failure> {
        let mut conn = tokio::select! {
            biased;
            () = self.context.cancel.cancelled() => return Ok(()),
            conn = self.trigger.connect() => conn?,
        };
        let created: Result<(), RedisError> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(self.stream)
            .arg(self.group)
            .arg("$")
            .arg("MKSTREAM")
            .query_async(&mut conn)
            .await;
        match created {
            Ok(()) => info!(
                stream = self.stream,
                group = self.group,
                "redis consumer group created"
            ),
            Err(error) if error.code() == Some("BUSYGROUP") => {}
            Err(error) => return Err(error.into()),
        }
        info!(workflow = %self.context.workflow, redis = %self.trigger.connection.display,
            stream = self.stream, group = self.group, consumer = %self.trigger.consumer,
            "redis stream consumer reading");
        self.backoff.reset();
        self.context.stats.record_success();
        // Our own pending entries first: delivered before a crash or a lost connection.
        let mut backlog = true;
        let mut next_claim = Instant::now();
        let mut next_lag = Instant::now();
        // A batch read while the previous one was recorded.
        let mut ahead: Option<Vec<StreamId>> = None;
        loop {
            if self.context.cancel.is_cancelled() {
                return Ok(());
            }
            if Instant::now() >= next_lag {
                next_lag = Instant::now() + Duration::from_secs(2);
                self.update_lag(&mut conn).await;
            }
            if Instant::now() >= next_claim {
                next_claim = Instant::now() + self.trigger.claim_every;
                self.claim(&mut conn).await?;
                continue;
            }
            let entries = if backlog {
                let reply = self.read(&mut conn, "0", None).await?;
                if reply.is_empty() {
                    backlog = false;
                    continue;
                }
                reply
            } else if let Some(entries) = ahead.take() {
                entries
            } else {
                let read = self.read(&mut conn, ">", Some(BLOCK));
                tokio::select! {
                    biased;
                    // Entries delivered by a read abandoned here stay pending for this
                    // consumer and are read again (backlog) next time.
                    () = self.context.cancel.cancelled() => return Ok(()),
                    reply = read => reply?,
                }
            };
            if entries.is_empty() {
                continue;
            }
            // New entries: the next batch is read while this one is recorded, so Redis, the
            // trigger and the journal work side by side. Not blocking: a blocked read would
            // hold this connection's XACK back until it returned. (Not in the backlog:
            // reading from "0" again would return the same entries.)
            let complete = if backlog {
                self.process(&mut conn, entries, false).await?
            } else {
                let entries = self.gather(&mut conn, entries).await?;
                let mut reader = conn.clone();
                let read = self.read_command(">", None);
                let next = async move {
                    read.query_async::<Option<StreamReadReply>>(&mut reader)
                        .await
                        .map(ids)
                };
                let (complete, next) = tokio::join!(self.process(&mut conn, entries, true), next);
                let complete = complete?;
                ahead = Some(next?).filter(|next| !next.is_empty());
                complete
            };
            if !complete {
                // Not everything was recorded: read our pending entries again (those read
                // ahead included: they are pending too).
                backlog = true;
                ahead = None;
            }
        }
    }

    fn read_command(&self, from: &str, block: Option<Duration>) -> redis::Cmd {
        self.read_command_sized(from, block, self.trigger.count())
    }

    fn read_command_sized(&self, from: &str, block: Option<Duration>, count: usize) -> redis::Cmd {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(self.group)
            .arg(&self.trigger.consumer)
            .arg("COUNT")
            .arg(count);
        if let Some(block) = block {
            cmd.arg("BLOCK").arg(block.as_millis() as u64);
        }
        cmd.arg("STREAMS").arg(self.stream).arg(from);
        cmd
    }

    async fn read(
        &self,
        conn: &mut redis::aio::MultiplexedConnection,
        from: &str,
        block: Option<Duration>,
    ) -> Result<Vec<StreamId>, RedisError> {
        let reply: Option<StreamReadReply> =
            self.read_command(from, block).query_async(conn).await?;
        Ok(ids(reply))
    }

    /// Takes over entries idle at other (dead) consumers.
    async fn claim(&mut self, conn: &mut redis::aio::MultiplexedConnection) -> Result<(), Failure> {
        let mut start = "0-0".to_string();
        // Bounded: one claim round handles at most 16 batches, the rest waits for the next.
        for _ in 0..16 {
            let reply: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
                .arg(self.stream)
                .arg(self.group)
                .arg(&self.trigger.consumer)
                .arg(self.trigger.claim_idle.as_millis() as u64)
                .arg(&start)
                .arg("COUNT")
                .arg(self.trigger.count())
                .query_async(conn)
                .await?;
            if !reply.deleted_ids.is_empty() {
                // Trimmed away before anyone recorded them: nothing left to run.
                self.ack(conn, &reply.deleted_ids).await?;
            }
            if !reply.claimed.is_empty() {
                info!(workflow = %self.context.workflow, stream = self.stream,
                    claimed = reply.claimed.len(), "redis entries claimed from idle consumers");
                self.process(conn, reply.claimed, false).await?;
            }
            if reply.next_stream_id == "0-0" || self.context.cancel.is_cancelled() {
                break;
            }
            start = reply.next_stream_id;
        }
        Ok(())
    }

    /// `batch:` — new entries fewer than a batch: read more until the batch is full or its
    /// `wait` is over.
    async fn gather(
        &self,
        conn: &mut redis::aio::MultiplexedConnection,
        mut entries: Vec<StreamId>,
    ) -> Result<Vec<StreamId>, Failure> {
        let Some(batch) = self.trigger.batch else {
            return Ok(entries);
        };
        let deadline = Instant::now() + batch.wait;
        let full = |entries: &[StreamId]| {
            entries.len() >= batch.size
                || entries.iter().map(entry_bytes).sum::<usize>() >= self.trigger.batch_bytes
        };
        while !full(&entries) {
            let left = deadline.saturating_duration_since(Instant::now());
            // BLOCK 0 would wait for ever: the last stretch is one read that does not block.
            let block = (left >= Duration::from_millis(1)).then_some(left);
            // Only what the batch still has room for.
            let read = self.read_command_sized(">", block, batch.size - entries.len());
            let reply: Option<StreamReadReply> = tokio::select! {
                biased;
                () = self.context.cancel.cancelled() => return Ok(entries),
                reply = read.query_async(conn) => reply?,
            };
            let more = ids(reply);
            if more.is_empty() {
                break;
            }
            entries.extend(more);
        }
        Ok(entries)
    }

    /// Submits `entries`, then acknowledges what is recorded. False when some entry was not
    /// recorded (it stays pending). `fresh`: delivered for the first time (`>`), so none can
    /// have been recorded before.
    async fn process(
        &mut self,
        conn: &mut redis::aio::MultiplexedConnection,
        entries: Vec<StreamId>,
        fresh: bool,
    ) -> Result<bool, Failure> {
        let (recorded, mut acks, mut keys) = match self.trigger.batch {
            Some(batch) if fresh => {
                // Moved, not copied: the entries' fields move into the batch event.
                let runs = batch::split(entries, batch.size, self.trigger.batch_bytes, entry_bytes);
                (self.submit_runs(runs).await, Vec::new(), Vec::new())
            }
            Some(batch) => self.recover_runs(entries, batch.size).await?,
            None => (self.submit_each(entries).await, Vec::new(), Vec::new()),
        };
        let mut complete = true;
        for (ids, key, result) in recorded {
            if handled(&self.context.workflow, &ids[0], &result) {
                if matches!(result, Ok(Submission::Accepted(_))) {
                    *self.recorded += ids.len() as u64;
                }
                acks.extend(ids);
                keys.extend(key);
            } else {
                complete = false;
            }
        }
        if let Some(limit) = self.trigger.stop_before_ack
            && *self.recorded >= limit
        {
            return Err(Failure::Fatal(TriggerError::Source(format!(
                "stopped before acknowledging {} recorded entries (crash test)",
                acks.len()
            ))));
        }
        self.ack(conn, &acks).await?;
        // Acknowledged entries are never delivered again: their marks can go.
        retry::forget_soon(self.context, keys);
        if !complete {
            retry::pause(&self.context.cancel, Duration::from_millis(500)).await;
        }
        Ok(complete)
    }

    fn key(&self, id: &str) -> String {
        format!("redis/{}/{}/{id}", self.stream, self.group)
    }

    fn mark(&self, id: &str) -> DedupeMark {
        DedupeMark::new(self.key(id), json!({"stream": self.stream, "id": id}))
    }

    /// One execution per entry: (its id, its mark keys, the outcome) each.
    async fn submit_each(&self, entries: Vec<StreamId>) -> Vec<Submitted> {
        let submissions = entries.into_iter().map(|entry| {
            let mark = self.mark(&entry.id);
            let key = mark.key.clone();
            let id = entry.id.clone();
            let event = self.event_for(entry);
            async move {
                let result = self.context.submit_once(event, mark).await;
                (vec![id], vec![key], result)
            }
        });
        futures::future::join_all(submissions).await
    }

    /// One execution per run of entries, a mark per entry: the batch's, under each entry's
    /// key.
    async fn submit_runs(&self, runs: Vec<Vec<StreamId>>) -> Vec<Submitted> {
        let submissions = runs.into_iter().map(|run| {
            let ids: Vec<String> = run.iter().map(|entry| entry.id.clone()).collect();
            let (first, last) = (&ids[0], &ids[ids.len() - 1]);
            let mark = DedupeMark::new(
                self.key(first),
                json!({"stream": self.stream, "id": first, "last": last, "count": ids.len()}),
            );
            let others: Vec<String> = ids[1..].iter().map(|id| self.key(id)).collect();
            let mut keys = Vec::with_capacity(ids.len());
            keys.push(mark.key.clone());
            keys.extend(others.iter().cloned());
            let meta = json!({
                "stream": self.stream,
                "group": self.group,
                "consumer": self.trigger.consumer,
                "first_id": first,
                "last_id": last,
                "count": ids.len(),
            });
            let items = run
                .into_iter()
                .map(|entry| {
                    let (data, meta) = self.take_parts(entry);
                    batch::item(data, meta)
                })
                .collect();
            let event = batch::event(
                "redis",
                &format!("reactor:redis/{}", self.stream),
                items,
                meta,
            );
            async move {
                let messages = ids.len();
                let result = self
                    .context
                    .submit_batch(event, mark, others, messages)
                    .await;
                (ids, keys, result)
            }
        });
        futures::future::join_all(submissions).await
    }

    /// Re-read or claimed entries under `batch:`: each is looked up first; a recorded one
    /// is acknowledged (returned in the acks and its mark in the keys), the others are
    /// batched in order. A lookup that fails ends the round: nothing is acknowledged and
    /// the session starts again.
    async fn recover_runs(
        &self,
        entries: Vec<StreamId>,
        size: usize,
    ) -> Result<(Vec<Submitted>, Vec<String>, Vec<String>), Failure> {
        let mut acks = Vec::new();
        let mut keys = Vec::new();
        let mut unrecorded = Vec::new();
        for entry in entries {
            let key = self.key(&entry.id);
            let mark = self
                .context
                .runtime
                .mark(&self.context.workflow, &key)
                .await
                .map_err(|e| Failure::Retry(format!("redis: reading a mark: {e}")))?;
            if mark.is_some() {
                acks.push(entry.id);
                keys.push(key);
                continue;
            }
            unrecorded.push(entry);
        }
        let runs = batch::split(unrecorded, size, self.trigger.batch_bytes, entry_bytes);
        Ok((self.submit_runs(runs).await, acks, keys))
    }

    async fn ack(
        &self,
        conn: &mut redis::aio::MultiplexedConnection,
        ids: &[String],
    ) -> Result<(), RedisError> {
        if ids.is_empty() {
            return Ok(());
        }
        redis::cmd("XACK")
            .arg(self.stream)
            .arg(self.group)
            .arg(ids)
            .query_async::<i64>(conn)
            .await?;
        Ok(())
    }

    async fn update_lag(&self, conn: &mut redis::aio::MultiplexedConnection) {
        let groups: Result<Vec<BTreeMap<String, RedisValue>>, RedisError> = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(self.stream)
            .query_async(conn)
            .await;
        let Ok(groups) = groups else { return };
        for group in groups {
            let name = group
                .get("name")
                .and_then(|v| redis::from_redis_value_ref::<String>(v).ok());
            if name.as_deref() != Some(self.group) {
                continue;
            }
            let number = |field: &str| {
                group
                    .get(field)
                    .and_then(|v| redis::from_redis_value_ref::<u64>(v).ok())
                    .unwrap_or(0)
            };
            self.context
                .stats
                .set_lag(number("pending") + number("lag"));
        }
    }

    fn event_for(&self, entry: StreamId) -> Event {
        let (data, meta) = self.take_parts(entry);
        let mut event = Event::new("redis", &format!("reactor:redis/{}", self.stream), data);
        event.meta = meta;
        event
    }

    /// An entry's `data` and `meta`, taking the entry: field names and text values move.
    fn take_parts(&self, entry: StreamId) -> (Value, Value) {
        let meta = self.meta(&entry.id);
        let data: serde_json::Map<String, Value> = entry
            .map
            .into_iter()
            .map(|(field, value)| (field, field_value(value)))
            .collect();
        (Value::Object(data), meta)
    }

    fn meta(&self, id: &str) -> Value {
        json!({
            "stream": self.stream,
            "group": self.group,
            "consumer": self.trigger.consumer,
            "id": id,
        })
    }
}

/// Entries (their ids), the marks to forget once they are acknowledged, and the outcome of
/// the execution that holds them.
type Submitted = (Vec<String>, Vec<String>, Result<Submission, SubmitError>);

/// What an entry weighs in a batch: its field names and values.
fn entry_bytes(entry: &StreamId) -> usize {
    entry
        .map
        .iter()
        .map(|(field, value)| {
            field.len()
                + match value {
                    RedisValue::BulkString(bytes) => bytes.len(),
                    RedisValue::SimpleString(text) => text.len(),
                    _ => 8,
                }
        })
        .sum()
}

/// A field's value as text (base64 when it is not UTF-8).
fn field_value(value: RedisValue) -> Value {
    match value {
        RedisValue::BulkString(bytes) => match String::from_utf8(bytes) {
            Ok(text) => Value::String(text),
            Err(error) => decode_payload(error.as_bytes()).0,
        },
        RedisValue::SimpleString(text) => Value::String(text),
        RedisValue::Int(n) => json!(n),
        RedisValue::Nil => Value::Null,
        other => Value::String(format!("{other:?}")),
    }
}
