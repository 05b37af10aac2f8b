//! JetStream: a stream read through a durable pull consumer (created when missing: explicit
//! acks, `ack_wait` 30 s, delivering from the start of the stream, filtered by `subject`).
//!
//! *Pulls.* A pull takes what is waiting (up to 512 messages, or with `batch:` up to
//! [`batch::IN_FLIGHT`] batches' worth); when nothing is, it waits up to a second for the
//! next message and takes what came with it — so a lone message starts at once instead of
//! when the pull expires. With `batch:` a pull that has less than a batch keeps gathering
//! until the batch is full or `wait` has passed. The next pull runs while a pull's messages
//! are recorded, and their acknowledgements are confirmed while the next pull's are, so
//! neither round trip adds to the recording time.
//!
//! *Executions and marks.* Without `batch:` each message is its own execution, de-duplicated
//! by `nats/{stream}/{stream sequence}`; with it, a run of messages (in stream order) is one
//! execution whose mark is keyed like its first message and lists every sequence of the run
//! (`position.sequences`). A first delivery (`delivered` 1) writes its mark without reading
//! the store. JetStream redelivers any subset of what it handed out, in any split, after
//! `ack_wait`; so before running redeliveries the reader loads every mark of the stream
//! ([`crate::recorded`]) and acknowledges, without running them, the messages a mark
//! covers — a single message's or a batch's, whichever this workflow wrote.
//!
//! *Acknowledgements.* Double acks (confirmed by the server), only after the execution is
//! durably recorded. A message that could not be recorded is negatively acknowledged and
//! comes again soon; one recorded but not acknowledged when the hub died is redelivered
//! after `ack_wait` — to this hub or another one bound to the same durable — and starts
//! nothing new. While a pull is being recorded for longer than half of `ack_wait` (a stalled
//! store), its messages are reported in progress (`+WPI`), so the server does not hand them
//! to another hub meanwhile. Marks are forgotten once every pull issued before the acks were
//! confirmed has been recorded (a message whose `ack_wait` ran out may have been redelivered
//! into such a pull); a recovered batch's mark once every message of it was acknowledged
//! in one pull, otherwise once the consumer's ack floor (every message up to it acknowledged,
//! by any hub) passes the batch's last message.
//!
//! `meta` of a message adds `{stream, consumer, stream_sequence, consumer_sequence,
//! delivered, pending}`; a batch's `meta` is `{stream, consumer, first_sequence,
//! last_sequence, count}`. `lag` (trigger stats) is the consumer's pending count.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::{Duration, Instant};

use async_nats::Client;
use async_nats::jetstream::{self, AckKind, consumer::pull};
use futures::StreamExt;
use reactor_core::engine::{DedupeMark, Event, Submission, SubmitError};
use reactor_core::flow::Batch;
use reactor_core::trigger::{TriggerContext, TriggerError};
use serde_json::{Value, json};
use tracing::{debug, info};

use super::{NatsTrigger, headers};
use crate::batch;
use crate::payload::decode_payload;
use crate::recorded::Recorded;
use crate::retry::{self, Backoff, Failure, handled};

/// Messages asked for per pull without `batch:` (and submitted side by side).
const PULL_MAX: usize = 512;
/// How long a pull waits when nothing is waiting (default).
pub(super) const PULL_WAIT: Duration = Duration::from_secs(1);
/// Bytes asked for per pull at most: NATS's largest payload setting, so the server never
/// refuses a message as too large for the pull, while a pull's memory stays bounded.
const PULL_MAX_BYTES: usize = 64 * 1024 * 1024;
/// How often the consumer's ack floor is asked for while recovered batches' marks wait
/// for it.
const FLOOR_EVERY: Duration = Duration::from_secs(1);
/// A `batch:` pull stops gathering when less than this is left of `wait`.
const MIN_GATHER: Duration = Duration::from_millis(5);

type Consumer = jetstream::consumer::Consumer<pull::Config>;

/// Reads one JetStream durable consumer for one connection; the counters outlive it.
pub(super) struct Reader<'a> {
    pub(super) trigger: &'a NatsTrigger,
    pub(super) context: &'a TriggerContext,
    pub(super) stream: &'a str,
    pub(super) durable: &'a str,
    /// Messages recorded (crash tests stop after so many).
    pub(super) recorded: &'a mut u64,
}

/// What a pull gathers.
#[derive(Clone, Copy, Debug)]
struct Gather {
    /// Messages at most.
    max: usize,
    /// `batch:` — a pull with fewer messages than this keeps gathering for at most this
    /// long.
    fill: Option<(usize, Duration)>,
    /// How long to wait when nothing is waiting.
    idle: Duration,
}

impl Gather {
    /// Pulls for `batch` (or one execution per message) from a consumer that hands out at
    /// most `max_ack_pending` unacknowledged messages (≤ 0: no limit) and redelivers after
    /// `ack_wait`.
    ///
    /// A pull never asks for more than `max_ack_pending`: the server would hand out that
    /// many and then hold the rest of the request until acknowledgements free room — which
    /// only come once this pull is recorded — and finally fill it with redeliveries of its
    /// own messages when `ack_wait` ran out. Gathering stops at half of `ack_wait` for the
    /// same reason.
    fn new(
        batch: Option<Batch>,
        max_ack_pending: i64,
        ack_wait: Duration,
        idle: Duration,
    ) -> Gather {
        let cap = usize::try_from(max_ack_pending)
            .ok()
            .filter(|&n| n > 0)
            .unwrap_or(usize::MAX);
        match batch {
            Some(batch) => Gather {
                max: batch::ahead(batch.size).min(cap),
                fill: Some((batch.size.min(cap), batch.wait.min(ack_wait / 2))),
                idle,
            },
            None => Gather {
                max: PULL_MAX.min(cap),
                fill: None,
                idle,
            },
        }
    }

    /// The `max_ack_pending` of a consumer this trigger creates: room for two pulls (one
    /// recorded while the next is pulled), at least the server's default.
    fn max_ack_pending(batch: Option<Batch>) -> i64 {
        let pull = batch.map_or(PULL_MAX, |b| batch::ahead(b.size));
        i64::try_from(2 * pull).unwrap_or(i64::MAX).max(1000)
    }
}

/// The outcome of recording one pull: the messages to acknowledge (indices into the pull)
/// and the keys of the marks that can go once they are.
struct Outcome {
    acks: Vec<usize>,
    keys: Vec<String>,
    /// Recovered batches' marks some of whose messages were not in the pull: (key, highest
    /// sequence). They go once the consumer's ack floor passes that sequence.
    partial: Vec<(String, u64)>,
}

impl Reader<'_> {
    pub(super) async fn run(
        &mut self,
        client: Client,
        backoff: &mut Backoff,
    ) -> Result<(), Failure> {
        let js = jetstream::new(client);
        let stream = js
            .get_stream(self.stream)
            .await
            .map_err(|e| Failure::Retry(format!("JetStream stream {:?}: {e}", self.stream)))?;
        let consumer: Consumer = stream
            .get_or_create_consumer(
                self.durable,
                pull::Config {
                    durable_name: Some(self.durable.to_string()),
                    filter_subject: self.trigger.subject.clone(),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    ack_wait: self.trigger.ack_wait,
                    max_ack_pending: Gather::max_ack_pending(self.trigger.batch),
                    ..pull::Config::default()
                },
            )
            .await
            .map_err(|e| Failure::Retry(format!("JetStream consumer {:?}: {e}", self.durable)))?;
        info!(workflow = %self.context.workflow, nats = %self.trigger.connection.display,
            stream = self.stream, durable = self.durable, subject = %self.trigger.subject,
            batch = ?self.trigger.batch, "JetStream consumer reading");
        backoff.reset();
        self.context.stats.record_success();
        // The acknowledgements of the previous pull, confirmed while this one is pulled and
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
        consumer: &Consumer,
        acking: &mut Option<Acking>,
    ) -> Result<(), Failure> {
        // Keys of confirmed acks, with the last pull issued before they were confirmed: a
        // pull issued before may carry redeliveries of those messages (their ack_wait ran
        // out first), so the marks stay until that pull is recorded too — one more round
        // while messages flow, one more (empty) pull when idle.
        let mut confirmed: VecDeque<(u64, Vec<String>)> = VecDeque::new();
        let config = &consumer.cached_info().config;
        let gather = Gather::new(
            self.trigger.batch,
            config.max_ack_pending,
            config.ack_wait,
            self.trigger.pull_wait,
        );
        // The consumer's own `ack_wait` (a durable created elsewhere may have another).
        let report_every = (config.ack_wait / 2).max(Duration::from_millis(500));
        let mut issued = 0u64;
        // Recovered batches' marks waiting for the ack floor; when it was last asked.
        let mut below_floor: Vec<(String, u64)> = Vec::new();
        let mut floor_asked = Instant::now();
        let mut pulling = tokio::spawn(pull(consumer.clone(), gather));
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
            let this_pull = issued;
            // The next pull runs while these messages are recorded.
            pulling = tokio::spawn(pull(consumer.clone(), gather));
            issued += 1;
            let recorded = if messages.is_empty() {
                None
            } else {
                let progress = in_progress(&messages, report_every);
                let recorded = tokio::select! {
                    recorded = self.record(&messages) => recorded,
                    never = progress => match never {},
                };
                match recorded {
                    Ok(recorded) => Some(recorded),
                    Err(failure) => break Err(failure),
                }
            };
            if let Some(previous) = acking.take() {
                match previous.await {
                    Ok(Ok(keys)) => confirmed.push_back((issued, keys)),
                    Ok(Err(failure)) => break Err(failure),
                    Err(error) => break Err(Failure::Retry(format!("JetStream acks: {error}"))),
                }
            }
            if !below_floor.is_empty() && floor_asked.elapsed() >= FLOOR_EVERY {
                floor_asked = Instant::now();
                match consumer.get_info().await {
                    Ok(info) => {
                        let floor = info.ack_floor.stream_sequence;
                        let (acked, waiting) = std::mem::take(&mut below_floor)
                            .into_iter()
                            .partition(|(_, highest)| *highest <= floor);
                        below_floor = waiting;
                        let keys: Vec<String> = acked.into_iter().map(|(key, _)| key).collect();
                        confirmed.push_back((issued, keys));
                    }
                    Err(error) => debug!(%error, "JetStream consumer info"),
                }
            }
            while let Some((_, keys)) = confirmed.pop_front_if(|(last, _)| *last <= this_pull) {
                retry::forget_soon(self.context, keys);
            }
            if let Some(mut recorded) = recorded {
                below_floor.append(&mut recorded.partial);
                *acking = Some(tokio::spawn(acknowledge(messages, recorded)));
            }
        };
        // Cancel safety: messages of an abandoned pull are redelivered after ack_wait; copies
        // of acknowledged messages in it never come again, so the marks can go.
        pulling.abort();
        for (_, keys) in confirmed {
            retry::forget_soon(self.context, keys);
        }
        result
    }

    /// Submits the messages of one pull; NAKs those not recorded; returns the recorded ones
    /// and those found recorded before, to acknowledge.
    async fn record(&mut self, messages: &[jetstream::Message]) -> Result<Outcome, Failure> {
        // Not JetStream messages (no ack subject) are neither recorded nor acknowledged.
        let pulled: Vec<usize> = (0..messages.len())
            .filter(|&i| messages[i].info().is_ok())
            .collect();
        let sequence = |&i: &usize| info(&messages[i]).stream_sequence.to_string();
        let mut repeated = Vec::new();
        let (pulled, mut recovered) = if pulled.iter().any(|&i| info(&messages[i]).delivered > 1) {
            // A redelivery can share a pull with its first delivery (a pull held open past
            // `ack_wait`): it runs once, and both are acknowledged.
            let mut seen = std::collections::HashSet::with_capacity(pulled.len());
            let (pulled, again): (Vec<usize>, Vec<usize>) = pulled
                .into_iter()
                .partition(|&i| seen.insert(info(&messages[i]).stream_sequence));
            repeated = again;
            Recorded::load(self.context, &self.key(""), "sequences")
                .await?
                .split(pulled, sequence)
        } else {
            (pulled, Default::default())
        };
        let runs = match self.trigger.batch {
            Some(batch) => batch::split(pulled, batch.size, self.trigger.batch_bytes, |&i| {
                message_bytes(&messages[i])
            }),
            None => pulled.into_iter().map(|i| vec![i]).collect(),
        };
        let this = &*self;
        let submitted =
            futures::future::join_all(runs.iter().map(|run| this.submit(messages, run))).await;
        let (whole, partial) = recovered.whole_marks();
        let partial = partial
            .into_iter()
            .filter_map(|(key, sequences)| {
                let highest = sequences
                    .iter()
                    .filter_map(|s| s.parse::<u64>().ok())
                    .max()?;
                Some((key, highest))
            })
            .collect();
        self.context.runtime.stats().deduplicated.fetch_add(
            recovered.items.len() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        let mut done = Outcome {
            acks: recovered.items,
            keys: whole,
            partial,
        };
        let mut complete = true;
        for (run, (key, result)) in runs.into_iter().zip(submitted) {
            if handled(&self.context.workflow, &key, &result) {
                if matches!(result, Ok(Submission::Accepted(_))) {
                    *self.recorded += run.len() as u64;
                }
                done.acks.extend(run);
                done.keys.push(key);
            } else {
                complete = false;
                // Not recorded: ask for them again soon rather than after ack_wait.
                for i in run {
                    let _ = messages[i]
                        .ack_with(AckKind::Nak(Some(Duration::from_millis(500))))
                        .await;
                }
            }
        }
        if complete {
            // Their first delivery is recorded (or was before).
            done.acks.extend(repeated);
        }
        if let Some(last) = messages.iter().rev().find_map(|m| m.info().ok()) {
            self.context.stats.set_lag(last.pending);
        }
        if let Some(limit) = self.trigger.stop_before_ack
            && *self.recorded >= limit
        {
            return Err(Failure::Fatal(TriggerError::Source(format!(
                "stopped before acknowledging {} recorded messages (crash test)",
                done.acks.len()
            ))));
        }
        Ok(done)
    }

    /// A message's de-duplication key (`key("")`: the prefix of every mark of the stream).
    fn key(&self, sequence: &str) -> String {
        format!("nats/{}/{sequence}", self.stream)
    }

    /// One execution for `run` (indices into `messages`, in stream order): the message's
    /// own event, or with `batch:` the batch's.
    async fn submit(
        &self,
        messages: &[jetstream::Message],
        run: &[usize],
    ) -> (String, Result<Submission, SubmitError>) {
        let first = info(&messages[run[0]]);
        let key = self.key(&first.stream_sequence.to_string());
        // Handed out for the first time: no execution of them can have been recorded, so
        // the mark is written without reading the store.
        let fresh = run.iter().all(|&i| info(&messages[i]).delivered == 1);
        if self.trigger.batch.is_none() {
            let position =
                json!({"stream": first.stream, "stream_sequence": first.stream_sequence});
            let mut mark = DedupeMark::new(key.clone(), position);
            if fresh {
                mark = mark.first();
            }
            let (data, meta) = parts(&messages[run[0]]);
            let mut event = Event::new("nats", &source(&messages[run[0]]), data);
            event.meta = meta;
            return (key, self.context.submit_once(event, mark).await);
        }
        let sequences: Vec<u64> = run
            .iter()
            .map(|&i| info(&messages[i]).stream_sequence)
            .collect();
        let last = sequences[sequences.len() - 1];
        let position = json!({"stream": first.stream, "stream_sequence": first.stream_sequence,
            "last": last, "count": run.len(), "sequences": sequences});
        let mut mark = DedupeMark::new(key.clone(), position);
        if fresh {
            mark = mark.first();
        }
        let meta = json!({
            "stream": first.stream,
            "consumer": first.consumer,
            "first_sequence": first.stream_sequence,
            "last_sequence": last,
            "count": run.len(),
        });
        let items = run
            .iter()
            .map(|&i| {
                let (data, meta) = parts(&messages[i]);
                batch::item(data, meta)
            })
            .collect();
        let event = batch::event("nats", &source(&messages[run[0]]), items, meta);
        let result = self.context.submit_batch(event, mark, run.len()).await;
        (key, result)
    }
}

/// What a message's reply subject says; only called on messages whose `info()` parsed.
fn info(message: &jetstream::Message) -> jetstream::message::Info<'_> {
    message
        .info()
        .expect("a pulled JetStream message names its stream position")
}

fn source(message: &jetstream::Message) -> String {
    format!("reactor:nats/{}", message.subject)
}

/// A message's `data` and `meta`, as its own event holds them.
fn parts(message: &jetstream::Message) -> (Value, Value) {
    let info = info(message);
    let (data, encoding) = decode_payload(&message.payload);
    let meta = json!({
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
    (data, meta)
}

/// What a message weighs in a batch: its payload, subject and headers.
fn message_bytes(message: &jetstream::Message) -> usize {
    let headers = message.headers.as_ref().map_or(0, |headers| {
        headers
            .iter()
            .map(|(name, values)| {
                values
                    .iter()
                    .map(|v| AsRef::<str>::as_ref(name).len() + v.as_str().len())
                    .sum::<usize>()
            })
            .sum()
    });
    message.payload.len() + message.subject.len() + headers
}

/// Reports `messages` in progress every `every` while they are being recorded: a stalled
/// store must not make the server hand them to another hub as well.
async fn in_progress(messages: &[jetstream::Message], every: Duration) -> Infallible {
    loop {
        tokio::time::sleep(every).await;
        for message in messages {
            let _ = message.ack_with(AckKind::Progress).await;
        }
        debug!(
            messages = messages.len(),
            "JetStream messages reported in progress"
        );
    }
}

/// One pull (see the module docs): what is waiting, else the next message and what came
/// with it; with `batch:` gathered up to a batch or its `wait`.
async fn pull(consumer: Consumer, gather: Gather) -> Result<Vec<jetstream::Message>, Failure> {
    let started = Instant::now();
    let mut messages = fetch(&consumer, gather.max, None).await?;
    if messages.is_empty() {
        messages = fetch(&consumer, 1, Some(gather.idle)).await?;
        if messages.is_empty() || gather.max == 1 {
            return Ok(messages);
        }
        messages.extend(fetch(&consumer, gather.max - 1, None).await?);
    }
    if let Some((size, wait)) = gather.fill {
        let bytes: usize = messages.iter().map(message_bytes).sum();
        let left = (started + wait).saturating_duration_since(Instant::now());
        if messages.len() < size && bytes < Batch::MAX_BYTES && left >= MIN_GATHER {
            messages.extend(fetch(&consumer, size - messages.len(), Some(left)).await?);
        }
    }
    Ok(messages)
}

/// One pull request for up to `max` messages: what is waiting now (`wait` none), or what
/// arrives within `wait`.
async fn fetch(
    consumer: &Consumer,
    max: usize,
    wait: Option<Duration>,
) -> Result<Vec<jetstream::Message>, Failure> {
    let request = match wait {
        None => {
            consumer
                .fetch()
                .max_messages(max)
                .max_bytes(PULL_MAX_BYTES)
                .messages()
                .await
        }
        Some(wait) => {
            consumer
                .batch()
                .max_messages(max)
                .max_bytes(PULL_MAX_BYTES)
                .expires(wait)
                .messages()
                .await
        }
    };
    let mut batch = request.map_err(|e| Failure::Retry(format!("JetStream pull: {e}")))?;
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

/// A round of acknowledgements in flight: the keys of the marks that can go.
type Acking = tokio::task::JoinHandle<Result<Vec<String>, Failure>>;

/// Double-acks (server-confirmed) the recorded messages of a pull; returns the keys of
/// their marks when every ack is confirmed (they go once the next pull is recorded). Runs
/// while the next pull is recorded.
async fn acknowledge(
    messages: Vec<jetstream::Message>,
    recorded: Outcome,
) -> Result<Vec<String>, Failure> {
    let acks = recorded.acks.iter().map(|&i| {
        let message = &messages[i];
        async move {
            match message.double_ack().await {
                Ok(()) => true,
                Err(error) => {
                    // Unconfirmed: JetStream may redeliver it; its mark de-duplicates it.
                    debug!(%error, subject = %message.subject, "JetStream ack not confirmed");
                    false
                }
            }
        }
    });
    let confirmed = futures::future::join_all(acks).await;
    if !confirmed.iter().all(|&ok| ok) {
        // The marks stay until pruned: nothing is lost, one pull's worth of marks lingers.
        return Err(Failure::Retry("JetStream acks were not confirmed".into()));
    }
    Ok(recorded.keys)
}
