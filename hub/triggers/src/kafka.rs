//! The `kafka` trigger: a consumer-group member on one or more topics.
//!
//! The group (`group:`, default `reactor-{workflow}`) spreads partitions over the hubs
//! consuming with it. Offsets are never committed automatically: after a batch of messages
//! is submitted, the offset after the last message recorded in an unbroken run from the
//! start of the batch is committed per partition (synchronously), so a commit never covers a
//! message that is not durably recorded. Each message is submitted with the de-duplication
//! key `kafka/{topic}/{partition}/{offset}`: a message recorded but not committed when the hub
//! died (or when a rebalance moved its partition) is consumed again by whoever owns the
//! partition next, and starts nothing new. When a message cannot be recorded, the prefix
//! before it is committed and the consumer is rebuilt, which resumes at the committed offset.
//!
//! With `batch: { size, wait }` one execution takes up to `size` messages of one partition
//! (`crate::batch`), gathered for at most `wait`; its single mark, keyed like its first
//! message's, holds the offset range (`{topic, partition, offset, last}`). A partition is
//! consumed by one group member at a time and resumes at its committed offset, the end of a
//! recorded batch: a redelivered run starts with a recorded batch's first message, whose
//! mark says how far the batch reached, and everything up to there is skipped and committed.
//! Batch event: `data` = the messages' `{data, meta}`, `meta` = `{topic, partition,
//! first_offset, last_offset, count}`. Without `batch:` the first message a session gets
//! from each partition is looked up the same way, so a workflow switched back from batches
//! to one execution per message resumes after a recorded batch, not inside it — also when
//! a rebalance hands a partition back within a session (another member may have recorded
//! batches in it meanwhile): every partition a rebalance assigns is looked up again.
//!
//! `from: earliest|latest` applies when the group has no committed offset for a partition.
//! Event: type `kafka`, source `reactor:kafka/{topic}`, `data` = the value parsed as JSON when
//! it parses, else text, else base64 (`null` for a tombstone); `meta` = `{topic, partition,
//! offset, key, headers, timestamp, encoding}` (key and header values as text, base64 when
//! not UTF-8). `lag` (trigger stats) is the sum over the partitions seen of high watermark −
//! next offset, refreshed every few seconds.
//!
//! librdkafka reconnects to brokers by itself; transport errors are counted as trigger errors
//! and a received message clears the failure streak. Connection properties (TLS, SASL) come
//! from the connection's `options` (librdkafka property names) and `username`/`password`
//! (`sasl.username`/`sasl.password`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use base64::Engine as _;
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};
use reactor_core::engine::SubmitError;
use reactor_core::engine::{DedupeMark, Event, Submission};
use reactor_core::flow::{self, Batch, KafkaStart};
use reactor_core::trigger::{Trigger, TriggerContext, TriggerError, TriggerStats};
use serde_json::{Map, Value, json};
use tracing::{debug, info, warn};

use crate::batch;
use crate::connections::{Connections, Resolved};
use crate::payload::decode_payload;
use crate::retry::{self, Backoff, Failure, handled};

/// Messages gathered (and submitted concurrently) per batch.
const BATCH: usize = 256;
/// How long a batch waits for more messages after its first.
const GATHER: Duration = Duration::from_millis(5);
const LAG_EVERY: Duration = Duration::from_secs(5);

type KafkaConsumer = StreamConsumer<Reporter>;

/// Counts librdkafka's client errors (brokers down, authentication …) as trigger errors:
/// they arrive on librdkafka's error callback, not through `recv`. Notes the partitions
/// rebalances assign, for the session to forget what it learnt about them.
struct Reporter {
    stats: Arc<TriggerStats>,
    assigned: Mutex<Vec<(String, i32)>>,
}

impl Reporter {
    /// The partitions assigned since the last call.
    fn take_assigned(&self) -> Vec<(String, i32)> {
        std::mem::take(&mut *self.assigned.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

impl ClientContext for Reporter {
    fn error(&self, error: KafkaError, reason: &str) {
        self.stats
            .record_error(&format!("kafka: {error}: {reason}"));
        debug!(%error, reason, "librdkafka error");
    }
}

impl ConsumerContext for Reporter {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(partitions) = rebalance {
            let mut assigned = self.assigned.lock().unwrap_or_else(PoisonError::into_inner);
            assigned.extend(
                partitions
                    .elements()
                    .iter()
                    .map(|p| (p.topic().to_string(), p.partition())),
            );
        }
    }
}

/// A running `kafka` trigger.
#[derive(Debug)]
pub struct KafkaTrigger {
    topics: Vec<String>,
    group: Option<String>,
    from: KafkaStart,
    batch: Option<Batch>,
    /// [`Batch::MAX_BYTES`]; lower in tests.
    batch_bytes: usize,
    connection: Resolved,
    stop_before_ack: Option<u64>,
}

impl KafkaTrigger {
    pub fn new(
        spec: &flow::KafkaTrigger,
        connections: &Connections,
    ) -> Result<KafkaTrigger, TriggerError> {
        let connection = connections.resolve(&spec.connection, "kafka", &[])?;
        if spec.topics.is_empty() {
            return Err(TriggerError::Settings(
                "the kafka trigger needs at least one topic".into(),
            ));
        }
        for topic in &spec.topics {
            if topic.is_empty()
                || topic.len() > 249
                || !topic
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
            {
                return Err(TriggerError::Settings(format!(
                    "kafka topic {topic:?} must be 1-249 characters of a-z, A-Z, 0-9, '.', '_', '-'"
                )));
            }
        }
        Ok(KafkaTrigger {
            topics: spec.topics.clone(),
            group: spec.group.clone(),
            from: spec.from,
            batch: spec.batch,
            batch_bytes: Batch::MAX_BYTES,
            connection,
            stop_before_ack: None,
        })
    }

    /// Crash tests: once `recorded` messages are recorded, stop with an error instead of
    /// committing — what a hub killed between record and commit leaves behind.
    pub fn stop_before_ack(mut self, recorded: u64) -> KafkaTrigger {
        self.stop_before_ack = Some(recorded);
        self
    }

    /// Tests: a batch closes at `bytes` instead of [`Batch::MAX_BYTES`].
    pub fn with_batch_bytes(mut self, bytes: usize) -> KafkaTrigger {
        self.batch_bytes = bytes;
        self
    }

    fn consumer(
        &self,
        workflow: &str,
        stats: Arc<TriggerStats>,
    ) -> Result<KafkaConsumer, KafkaError> {
        let mut config = ClientConfig::new();
        let group = self
            .group
            .clone()
            .unwrap_or_else(|| format!("reactor-{workflow}"));
        config
            .set("bootstrap.servers", &self.connection.address)
            .set("group.id", &group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            .set(
                "auto.offset.reset",
                match self.from {
                    KafkaStart::Earliest => "earliest",
                    KafkaStart::Latest => "latest",
                },
            );
        for (key, value) in &self.connection.options {
            config.set(key, value);
        }
        if let Some(user) = &self.connection.username {
            config.set("sasl.username", user);
        }
        if let Some(password) = &self.connection.password {
            config.set("sasl.password", password);
        }
        let consumer: KafkaConsumer = config.create_with_context(Reporter {
            stats,
            assigned: Mutex::default(),
        })?;
        let topics: Vec<&str> = self.topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics)?;
        Ok(consumer)
    }
}

#[async_trait]
impl Trigger for KafkaTrigger {
    fn kind(&self) -> &'static str {
        "kafka"
    }

    async fn run(self: Box<Self>, context: TriggerContext) -> Result<(), TriggerError> {
        let mut backoff = Backoff::default();
        let mut recorded = 0u64;
        loop {
            let session = match self.consumer(&context.workflow, context.stats.clone()) {
                Ok(consumer) => {
                    info!(workflow = %context.workflow, brokers = %self.connection.display,
                        topics = ?self.topics, "Kafka consumer subscribed");
                    let mut session = Session {
                        trigger: &self,
                        context: &context,
                        consumer: Arc::new(consumer),
                        recorded: &mut recorded,
                        next_offsets: HashMap::new(),
                        covered: HashMap::new(),
                        checked: HashSet::new(),
                        next_lag: Instant::now() + LAG_EVERY,
                    };
                    let result = session.run(&mut backoff).await;
                    // Leave the group cleanly so its partitions move at once.
                    let consumer = session.consumer.clone();
                    drop(session);
                    let _ = tokio::task::spawn_blocking(move || consumer.unsubscribe()).await;
                    result
                }
                Err(KafkaError::ClientCreation(message)) => {
                    return Err(TriggerError::Settings(format!(
                        "kafka client settings: {message}"
                    )));
                }
                Err(error) => Err(Failure::Retry(format!("kafka: {error}"))),
            };
            match session {
                Ok(()) => return Ok(()),
                Err(Failure::Fatal(error)) => return Err(error),
                Err(Failure::Retry(message)) => {
                    if !retry::failed(&context, &mut backoff, "kafka", &message).await {
                        return Ok(());
                    }
                }
            }
        }
    }
}

struct Session<'a> {
    trigger: &'a KafkaTrigger,
    context: &'a TriggerContext,
    consumer: Arc<KafkaConsumer>,
    recorded: &'a mut u64,
    /// (topic, partition) → the offset after the last message seen, for `lag`.
    next_offsets: HashMap<(String, i32), i64>,
    /// (topic, partition) → the last offset a recorded batch covers, learnt from its mark
    /// (`batch:` only): messages up to it are skipped.
    covered: HashMap<(String, i32), i64>,
    /// Partitions whose first message this session has looked up since they were last
    /// assigned (one execution per message: see `submit_each`).
    checked: HashSet<(String, i32)>,
    next_lag: Instant,
}

/// What became of a message, or of a batch of one partition's messages.
struct Outcome {
    partition: (String, i32),
    /// The offset after the last message it covers.
    next: i64,
    /// Its de-duplication key.
    key: String,
    messages: u64,
    result: Result<Submission, SubmitError>,
}

impl Session<'_> {
    async fn run(&mut self, backoff: &mut Backoff) -> Result<(), Failure> {
        loop {
            let first = tokio::select! {
                biased;
                () = self.context.cancel.cancelled() => return Ok(()),
                // Cancel safety: an unreturned message stays in librdkafka's queue; anything
                // not committed is consumed again by the next owner of its partition.
                message = self.consumer.recv() => message.map(|m| m.detach()),
            };
            let first = match first {
                Ok(message) => message,
                Err(error) => {
                    // Transport errors are informational: librdkafka reconnects by itself.
                    self.context.stats.record_error(&format!("kafka: {error}"));
                    debug!(%error, "Kafka consumer error");
                    if matches!(error, KafkaError::MessageConsumptionFatal(_)) {
                        return Err(Failure::Retry(format!("kafka: {error}")));
                    }
                    continue;
                }
            };
            backoff.reset();
            self.context.stats.record_success();
            let (size, wait) = match self.trigger.batch {
                Some(batch) => (batch.size, batch.wait),
                None => (BATCH, GATHER),
            };
            // With `batch:` a gather also ends at the byte cap, so that one partition's run
            // (an execution) stays under it.
            let max_bytes = match self.trigger.batch {
                Some(_) => self.trigger.batch_bytes,
                None => usize::MAX,
            };
            let mut bytes = message_bytes(&first);
            let mut batch = vec![first];
            let deadline = tokio::time::Instant::now() + wait;
            while batch.len() < size
                && bytes < max_bytes
                && self.receive(&mut batch, &mut bytes, Some(deadline)).await
            {}
            // With `batch:`, more batches when their messages are waiting already: they are
            // recorded side by side (`batch::IN_FLIGHT`), each its own execution.
            if let Some(batch_size) = self.trigger.batch.map(|b| b.size) {
                let (most, most_bytes) = (
                    crate::batch::ahead(batch_size),
                    max_bytes.saturating_mul(crate::batch::IN_FLIGHT),
                );
                while batch.len() < most
                    && bytes < most_bytes
                    && self.receive(&mut batch, &mut bytes, None).await
                {}
            }
            for message in &batch {
                self.next_offsets.insert(
                    (message.topic().to_string(), message.partition()),
                    message.offset() + 1,
                );
            }
            // A partition assigned again may hold batches another member recorded meanwhile
            // (drained in either mode, so the list never grows).
            for partition in self.consumer.context().take_assigned() {
                self.checked.remove(&partition);
            }
            let outcomes = match self.trigger.batch {
                Some(_) => self.submit_batches(batch).await?,
                None => self.submit_each(batch).await?,
            };
            self.acknowledge(outcomes).await?;
            if Instant::now() >= self.next_lag {
                self.next_lag = Instant::now() + LAG_EVERY;
                self.update_lag().await;
            }
        }
    }

    /// Adds the next message to `batch` (and its size to `bytes`) if one comes before
    /// `deadline` — with `None`, only one already waiting in librdkafka's queue. False when
    /// none came (or the consumer reported an error: the gather ends there).
    async fn receive(
        &self,
        batch: &mut Vec<OwnedMessage>,
        bytes: &mut usize,
        deadline: Option<tokio::time::Instant>,
    ) -> bool {
        let next = match deadline {
            Some(deadline) => tokio::time::timeout_at(deadline, self.consumer.recv()).await,
            None => tokio::time::timeout(Duration::ZERO, self.consumer.recv()).await,
        };
        match next {
            Ok(Ok(message)) => {
                let message = message.detach();
                *bytes += message_bytes(&message);
                batch.push(message);
                true
            }
            Ok(Err(_)) | Err(_) => false,
        }
    }

    /// One execution per message. The first time this session sees a partition, it looks
    /// up the batches recorded there first (see `skip_recorded`): a workflow switched from
    /// `batch:` back to one execution per message resumes after them, not inside them.
    async fn submit_each(&mut self, batch: Vec<OwnedMessage>) -> Result<Vec<Outcome>, Failure> {
        let mut outcomes = Vec::new();
        let mut fresh = Vec::new();
        for (partition, mut run) in by_partition(batch) {
            let lookup = self.checked.insert(partition.clone());
            self.skip_recorded(&partition, &mut run, &mut outcomes, lookup)
                .await?;
            fresh.extend(run);
        }
        let context = self.context;
        let submissions = fresh.iter().map(|message| {
            let key = message_key(message);
            let mark = DedupeMark::new(
                key.clone(),
                json!({"topic": message.topic(), "partition": message.partition(), "offset": message.offset()}),
            );
            let event = event_for(message);
            async move {
                Outcome {
                    partition: (message.topic().to_string(), message.partition()),
                    next: message.offset() + 1,
                    key,
                    messages: 1,
                    result: context.submit_once(event, mark).await,
                }
            }
        });
        outcomes.extend(futures::future::join_all(submissions).await);
        Ok(outcomes)
    }

    /// `batch:` — one execution per partition's run of messages, after skipping what
    /// recorded batches cover (see the module docs).
    async fn submit_batches(&mut self, batch: Vec<OwnedMessage>) -> Result<Vec<Outcome>, Failure> {
        let mut outcomes = Vec::new();
        let mut fresh = Vec::new();
        let size = self.trigger.batch.map_or(usize::MAX, |batch| batch.size);
        for (partition, mut run) in by_partition(batch) {
            self.skip_recorded(&partition, &mut run, &mut outcomes, true)
                .await?;
            // Runs longer than a batch (several taken at once) go as several batches, in
            // order, so a failed one stops the commit before the ones after it.
            for run in crate::batch::split(run, size, self.trigger.batch_bytes, message_bytes) {
                fresh.push((partition.clone(), run));
            }
        }
        let submissions = fresh
            .into_iter()
            .map(|(partition, run)| self.submit_run(partition, run));
        outcomes.extend(futures::future::join_all(submissions).await);
        Ok(outcomes)
    }

    /// Drops from a partition's `run` what recorded batches cover: first what this session
    /// learnt, then — with `lookup` — while the run starts with a message whose mark is
    /// recorded, up to the `last` offset the mark names (a single message's mark covers just
    /// itself). Each skipped range becomes an outcome, so its offset is committed.
    async fn skip_recorded(
        &mut self,
        partition: &(String, i32),
        run: &mut Vec<OwnedMessage>,
        outcomes: &mut Vec<Outcome>,
        lookup: bool,
    ) -> Result<(), Failure> {
        loop {
            if let Some(&covered) = self.covered.get(partition) {
                run.retain(|message| message.offset() > covered);
            }
            let Some(first) = run.first().filter(|_| lookup) else {
                return Ok(());
            };
            let key = message_key(first);
            let mark = self
                .context
                .runtime
                .mark(&self.context.workflow, &key)
                .await
                .map_err(|e| Failure::Retry(format!("kafka: reading a batch mark: {e}")))?;
            let Some(mark) = mark else { return Ok(()) };
            let last = mark.position["last"].as_i64().unwrap_or(first.offset());
            let skipped = run.iter().take_while(|m| m.offset() <= last).count();
            self.covered.insert(partition.clone(), last);
            outcomes.push(Outcome {
                partition: partition.clone(),
                next: last + 1,
                key,
                messages: skipped as u64,
                result: Ok(Submission::Accepted(mark.execution)),
            });
        }
    }

    fn submit_run(
        &self,
        partition: (String, i32),
        run: Vec<OwnedMessage>,
    ) -> impl Future<Output = Outcome> + use<'_> {
        let (first, last) = (run[0].offset(), run[run.len() - 1].offset());
        let key = message_key(&run[0]);
        let (topic, number) = (&partition.0, partition.1);
        let mark = DedupeMark::new(
            key.clone(),
            json!({"topic": topic, "partition": number, "offset": first, "last": last}),
        );
        let meta = json!({
            "topic": topic,
            "partition": number,
            "first_offset": first,
            "last_offset": last,
            "count": run.len(),
        });
        let messages = run.len();
        let items = run
            .iter()
            .map(|message| {
                let (data, meta) = parts(message);
                batch::item(data, meta)
            })
            .collect();
        let event = batch::event("kafka", &format!("reactor:kafka/{topic}"), items, meta);
        let context = self.context;
        async move {
            Outcome {
                partition,
                next: last + 1,
                key,
                messages: messages as u64,
                result: context.submit_batch(event, mark, messages).await,
            }
        }
    }

    /// Commits, per partition, the offset after the last outcome recorded in an unbroken
    /// run; then forgets the committed marks.
    async fn acknowledge(&mut self, outcomes: Vec<Outcome>) -> Result<(), Failure> {
        let context = self.context;
        let mut commit: BTreeMap<(String, i32), i64> = BTreeMap::new();
        let mut broken: BTreeMap<(String, i32), ()> = BTreeMap::new();
        let mut keys = Vec::with_capacity(outcomes.len());
        for outcome in outcomes {
            if broken.contains_key(&outcome.partition) {
                continue;
            }
            if handled(&context.workflow, &outcome.key, &outcome.result) {
                if matches!(outcome.result, Ok(Submission::Accepted(_))) {
                    *self.recorded += outcome.messages;
                }
                commit.insert(outcome.partition, outcome.next);
                keys.push(outcome.key);
            } else {
                broken.insert(outcome.partition, ());
            }
        }
        if let Some(limit) = self.trigger.stop_before_ack
            && *self.recorded >= limit
        {
            return Err(Failure::Fatal(TriggerError::Source(format!(
                "stopped before committing {} recorded messages (crash test)",
                keys.len()
            ))));
        }
        if !commit.is_empty() {
            let mut list = TopicPartitionList::new();
            for ((topic, partition), offset) in &commit {
                list.add_partition_offset(topic, *partition, Offset::Offset(*offset))
                    .map_err(|e| Failure::Retry(format!("kafka commit: {e}")))?;
            }
            let consumer = self.consumer.clone();
            let committed =
                tokio::task::spawn_blocking(move || consumer.commit(&list, CommitMode::Sync))
                    .await
                    .map_err(|e| Failure::Retry(format!("kafka commit: {e}")))?;
            match committed {
                Ok(()) => {
                    // Committed offsets are never consumed again by the group: marks can go.
                    retry::forget_soon(context, keys);
                }
                Err(error) => {
                    // E.g. the partition moved in a rebalance: its next owner consumes from
                    // the last commit, and the marks de-duplicate what this hub recorded.
                    warn!(workflow = %context.workflow, %error, "Kafka commit failed");
                    return Err(Failure::Retry(format!("kafka commit: {error}")));
                }
            }
        }
        if !broken.is_empty() {
            return Err(Failure::Retry(
                "kafka: a message was not recorded; resuming from the last commit".into(),
            ));
        }
        Ok(())
    }

    async fn update_lag(&self) {
        let consumer = self.consumer.clone();
        let positions: Vec<((String, i32), i64)> = self
            .next_offsets
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        let lag = tokio::task::spawn_blocking(move || {
            let mut lag = 0u64;
            for ((topic, partition), next) in positions {
                if let Ok((_, high)) =
                    consumer.fetch_watermarks(&topic, partition, Duration::from_secs(1))
                {
                    lag += u64::try_from(high - next).unwrap_or(0);
                }
            }
            lag
        })
        .await
        .unwrap_or(0);
        self.context.stats.set_lag(lag);
    }
}

/// A gather's messages by partition, each partition's in arrival (= offset) order.
fn by_partition(batch: Vec<OwnedMessage>) -> Vec<((String, i32), Vec<OwnedMessage>)> {
    let mut runs: Vec<((String, i32), Vec<OwnedMessage>)> = Vec::new();
    for message in batch {
        let partition = (message.topic().to_string(), message.partition());
        match runs.iter_mut().find(|(p, _)| *p == partition) {
            Some((_, run)) => run.push(message),
            None => runs.push((partition, vec![message])),
        }
    }
    runs
}

/// What a message weighs in a batch: payload and key.
fn message_bytes(message: &OwnedMessage) -> usize {
    message.payload().map_or(0, <[u8]>::len) + message.key().map_or(0, <[u8]>::len)
}

/// A message's de-duplication key.
fn message_key(message: &OwnedMessage) -> String {
    format!(
        "kafka/{}/{}/{}",
        message.topic(),
        message.partition(),
        message.offset()
    )
}

/// The event for one message (see the module docs for the shape).
pub fn event_for(message: &OwnedMessage) -> Event {
    let (data, meta) = parts(message);
    let mut event = Event::new("kafka", &format!("reactor:kafka/{}", message.topic()), data);
    event.meta = meta;
    event
}

/// A message's `data` and `meta`.
fn parts(message: &OwnedMessage) -> (Value, Value) {
    let (data, encoding) = match message.payload() {
        Some(payload) => decode_payload(payload),
        None => (Value::Null, "null"),
    };
    let mut headers = Map::new();
    if let Some(list) = message.headers() {
        for header in list.iter() {
            headers.insert(
                header.key.to_string(),
                header.value.map(text).unwrap_or(Value::Null),
            );
        }
    }
    let meta = json!({
        "topic": message.topic(),
        "partition": message.partition(),
        "offset": message.offset(),
        "key": message.key().map(text),
        "headers": headers,
        "timestamp": message.timestamp().to_millis(),
        "encoding": encoding,
    });
    (data, meta)
}

/// Bytes as text, or base64 when they are not UTF-8.
fn text(bytes: &[u8]) -> Value {
    match std::str::from_utf8(bytes) {
        Ok(text) => Value::String(text.to_string()),
        Err(_) => Value::String(base64::engine::general_purpose::STANDARD.encode(bytes)),
    }
}
