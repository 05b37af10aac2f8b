//! A stream read through a consumer group: new entries, this consumer's pending ones after
//! a (re)connection, and entries claimed from dead consumers (module docs of `redis`).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use reactor_core::engine::{DedupeMark, Event, Submission};
use reactor_core::trigger::{Submitting, TriggerContext, TriggerError};
use redis::streams::{StreamAutoClaimReply, StreamId, StreamReadReply};
use redis::{RedisError, Value as RedisValue};
use serde_json::{Value, json};
use tracing::info;

use super::recovery;
use super::{BLOCK, RedisTrigger};
use crate::batch;
use crate::payload::decode_payload;
use crate::recorded::{Recorded, Recovered};
use crate::retry::{self, Backoff, Failure, handled};

/// The entries of an `XREADGROUP` reply.
fn ids(reply: Option<StreamReadReply>) -> Vec<StreamId> {
    reply
        .map(|r| r.keys.into_iter().flat_map(|k| k.ids).collect())
        .unwrap_or_default()
}

/// One session of a stream consumer (a connection); the counters outlive it.
pub(super) struct StreamReader<'a> {
    pub(super) trigger: &'a RedisTrigger,
    pub(super) context: &'a TriggerContext,
    pub(super) stream: &'a str,
    pub(super) group: &'a str,
    /// Entries recorded (crash tests stop after so many).
    pub(super) recorded: &'a mut u64,
    pub(super) backoff: &'a mut Backoff,
}

impl StreamReader<'_> {
    pub(super) async fn run(&mut self) -> Result<(), Failure> {
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
        // New entries whose executions are being recorded, acknowledged while the next
        // ones are started (two groups in flight).
        let mut in_flight: Option<Group> = None;
        loop {
            if self.context.cancel.is_cancelled() {
                self.settle(&mut conn, &mut in_flight).await?;
                return Ok(());
            }
            if Instant::now() >= next_lag {
                next_lag = Instant::now() + Duration::from_secs(2);
                self.update_lag(&mut conn).await;
            }
            if Instant::now() >= next_claim {
                next_claim = Instant::now() + self.trigger.claim_every;
                if !self.settle(&mut conn, &mut in_flight).await? {
                    backlog = true;
                }
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
                // Nothing read ahead: the stream has gone quiet; what is in flight is
                // acknowledged before waiting.
                if !self.settle(&mut conn, &mut in_flight).await? {
                    backlog = true;
                    continue;
                }
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
            // New entries: their executions start, then the previous group's are awaited
            // and acknowledged while the next entries are read — so Redis, the trigger, the
            // executions and the journal's writer work side by side, two groups in flight;
            // with `batch:` up to `batch::IN_FLIGHT` batches are read at once and recorded
            // together. Not blocking: a blocked read would hold this connection's XACK back
            // until it returned. (Not in the backlog: reading from "0" again would return
            // the same entries.)
            let complete = if backlog {
                self.process(&mut conn, entries, false).await?
            } else {
                if !self.full(&entries) && !self.settle(&mut conn, &mut in_flight).await? {
                    // A short group gathers for up to `wait`: what is in flight does not
                    // wait for it.
                    backlog = true;
                    continue;
                }
                let entries = self.gather(&mut conn, entries).await?;
                let group = self.start(entries, true).await?;
                let previous = in_flight.replace(group);
                let mut reader = conn.clone();
                let read = self.read_command_sized(">", None, self.trigger.ahead());
                let next = async move {
                    read.query_async::<Option<StreamReadReply>>(&mut reader)
                        .await
                        .map(ids)
                };
                let finished = async {
                    match previous {
                        Some(previous) => self.finish(&mut conn, previous).await,
                        None => Ok(true),
                    }
                };
                let (complete, next) = tokio::join!(finished, next);
                let complete = complete?;
                ahead = Some(next?).filter(|next| !next.is_empty());
                if !complete {
                    // Not everything was recorded: the group started after it is settled
                    // too before our pending entries are read again.
                    self.settle(&mut conn, &mut in_flight).await?;
                }
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

    /// Whether `entries` go without gathering more: always without `batch:`, else once
    /// they fill a batch (by count or bytes).
    fn full(&self, entries: &[StreamId]) -> bool {
        self.trigger.batch.is_none_or(|batch| {
            entries.len() >= batch.size
                || entries.iter().map(entry_bytes).sum::<usize>() >= self.trigger.batch_bytes
        })
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
        while !self.full(&entries) {
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
    /// have been recorded before; otherwise (re-read or claimed) the marks say which were,
    /// and those are acknowledged without running again.
    async fn process(
        &mut self,
        conn: &mut redis::aio::MultiplexedConnection,
        entries: Vec<StreamId>,
        fresh: bool,
    ) -> Result<bool, Failure> {
        let group = self.start(entries, fresh).await?;
        self.finish(conn, group).await
    }

    /// Starts the executions of `entries` (each on a task of its own) — those no mark
    /// covers, for entries that are not `fresh`.
    async fn start(&self, entries: Vec<StreamId>, fresh: bool) -> Result<Group, Failure> {
        let (entries, recovered) = if fresh {
            (entries, Default::default())
        } else {
            Recorded::load(self.context, &self.key(""), "ids")
                .await?
                .split(entries, |entry| entry.id.clone())
        };
        let submitted = match self.trigger.batch {
            Some(batch) => {
                // Moved, not copied: the entries' fields move into the batch event.
                let runs = batch::split(entries, batch.size, self.trigger.batch_bytes, entry_bytes);
                self.submit_runs(runs, fresh)
            }
            None => self.submit_each(entries, fresh),
        };
        Ok(Group {
            submitted,
            recovered,
        })
    }

    /// Waits for a started group, then acknowledges what is recorded; false when some entry
    /// was not recorded (it stays pending).
    async fn finish(
        &mut self,
        conn: &mut redis::aio::MultiplexedConnection,
        group: Group,
    ) -> Result<bool, Failure> {
        let Group {
            submitted,
            recovered,
        } = group;
        let mut acks = recovered.ids.clone();
        self.context
            .runtime
            .stats()
            .deduplicated
            .fetch_add(acks.len() as u64, Ordering::Relaxed);
        let mut keys = Vec::with_capacity(submitted.len());
        let mut complete = true;
        for (ids, key, submitting) in submitted {
            let result = submitting.result().await;
            if handled(&self.context.workflow, &ids[0], &result) {
                if matches!(result, Ok(Submission::Accepted(_))) {
                    *self.recorded += ids.len() as u64;
                }
                acks.extend(ids);
                keys.push(key);
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
        // Acknowledged entries are never delivered again: their marks can go — a recovered
        // batch's once none of its entries is pending anywhere in the group.
        keys.extend(recovery::settled(recovered, conn, self.stream, self.group).await?);
        retry::forget_soon(self.context, keys);
        if !complete {
            retry::pause(&self.context.cancel, Duration::from_millis(500)).await;
        }
        Ok(complete)
    }

    /// Finishes the group in flight, if any; false when some entry was not recorded.
    async fn settle(
        &mut self,
        conn: &mut redis::aio::MultiplexedConnection,
        in_flight: &mut Option<Group>,
    ) -> Result<bool, Failure> {
        match in_flight.take() {
            Some(group) => self.finish(conn, group).await,
            None => Ok(true),
        }
    }

    /// An entry's de-duplication key; `key("")` is the prefix of every mark of this stream
    /// and group.
    fn key(&self, id: &str) -> String {
        format!("redis/{}/{}/{id}", self.stream, self.group)
    }

    /// The mark of an entry or run keyed `key`: `fresh` ones (read with `>`) are first
    /// deliveries, whose marks cannot exist yet.
    fn mark(key: &str, position: Value, fresh: bool) -> DedupeMark {
        let mark = DedupeMark::new(key, position);
        if fresh { mark.first() } else { mark }
    }

    /// One execution per entry, each with its own mark.
    fn submit_each(&self, entries: Vec<StreamId>, fresh: bool) -> Vec<Submitted> {
        entries
            .into_iter()
            .map(|entry| {
                let key = self.key(&entry.id);
                let position = json!({"stream": self.stream, "id": entry.id});
                let mark = Self::mark(&key, position, fresh);
                let id = entry.id.clone();
                let event = self.event_for(entry);
                (vec![id], key, self.context.start_batch(event, mark, 1))
            })
            .collect()
    }

    /// One execution per run of entries, with one mark keyed like its first entry whose
    /// position lists every entry of the run (`ids`): what recovery looks entries up in.
    fn submit_runs(&self, runs: Vec<Vec<StreamId>>, fresh: bool) -> Vec<Submitted> {
        let submissions = runs.into_iter().map(|run| {
            let ids: Vec<String> = run.iter().map(|entry| entry.id.clone()).collect();
            let (first, last) = (&ids[0], &ids[ids.len() - 1]);
            let key = self.key(first);
            let position = json!({"stream": self.stream, "id": first, "last": last,
                "count": ids.len(), "ids": ids});
            let mark = Self::mark(&key, position, fresh);
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
            let started = self.context.start_batch(event, mark, ids.len());
            (ids, key, started)
        });
        submissions.collect()
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

/// A started execution: the entries it holds (their ids), the key of the mark to forget
/// once they are acknowledged, its submission.
type Submitted = (Vec<String>, String, Submitting);

/// Entries whose executions were started and are not acknowledged yet, and the entries
/// found recorded before (acknowledged with them).
struct Group {
    submitted: Vec<Submitted>,
    recovered: Recovered<StreamId>,
}

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
