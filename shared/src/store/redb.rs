//! [`RedbStore`]: the agent's journal in one redb file and its write-ahead log.
//!
//! One std thread named `reactor-store` owns the [`Database`] and takes commands over a
//! bounded channel ([`COMMAND_CAPACITY`]; a full queue makes writers wait: backpressure).
//!
//! Group commit: the thread takes a write, then drains every write already queued (up to
//! [`MAX_GROUP`] batches) into ONE write transaction, makes it durable (below), and only then
//! answers each writer. On an SD card a sync costs milliseconds, so sharing it is what makes
//! many concurrent executions affordable.
//!
//! Reads go through the same thread, each in its own read transaction run between commits.
//! Reads queued while a group is gathered run after its commit (they see every write queued
//! before them), except meta lookups (`meta`: de-duplication and cron marks), which run
//! before it: they see every write acknowledged before they were sent, and their callers go
//! on during the fsync.
//! That keeps one owner of the database (so it can be reopened after an I/O error without
//! coordinating with readers); reads are short next to a commit's fsync, and the big one
//! (`unfinished`) runs at startup before traffic.
//!
//! Durability: a group is committed to redb without a sync and made durable by one
//! sequential append to the write-ahead log beside the file (`journal.wal` for
//! `journal.redb`; see `wal.rs`); every `wal::CHECKPOINT_GROUPS` groups a group is committed
//! durably instead and the log starts over. Opening replays what the log holds beyond redb's
//! durable state. Other parts of the file can log their writes the same way
//! ([`RedbStore::write_logged`]: the fleet outbox's appends); writes that do neither (pruning
//! alone, the outbox's acks and expiry) commit durably on their own.
//!
//! Failures: a batch refused by validation gets its error and the others of its group commit.
//! A commit that fails with an I/O error answers `Io` to every writer of the group — the
//! outcome of such a batch is unknown (the fsync may have reached the disk), as with any
//! database — and the thread drops the database and reopens it (redb refuses every operation
//! after an I/O error and repairs on open). If reopening fails, the store is closed: every
//! later call gets [`StoreError::Closed`].
//!
//! Pruning rides on group commits: a `prune` call becomes the thread's pending prune, and
//! every group commit while it is pending also removes a slice of the executions beyond the
//! retention (a little more than the group wrote, so pruning outpaces any load) in the same
//! transaction. When no write is queued the thread prunes on its own, [`tables::PRUNE_CHUNK`]
//! per transaction. The caller is answered when nothing is left beyond the retention. So
//! retention costs no commits of its own under load, and no group waits behind a long purge.
//!
//! File growth: pages freed by `prune` are reused by later commits, so a journal under a
//! steady retention stays at a steady size. The file does not shrink by itself; compaction
//! (`Database::compact`) is only worth it after a one-off mass deletion and is not done here.

mod codec;
#[cfg(test)]
mod crash_tests;
#[cfg(test)]
mod fault;
mod reads;
mod row;
mod tables;
#[cfg(test)]
mod tests;
mod wal;
#[cfg(test)]
mod wal_tests;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ::redb::backends::FileBackend;
use ::redb::{Builder, Database, DatabaseError, StorageBackend, WriteTransaction};
use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};

use self::tables::Context;
use self::wal::{Wal, WalOpener};
use super::{ExecutionQuery, Retention, Store, StoreError, StoreWrite};
use crate::engine::{ExecutionId, ExecutionRecord, Fact, Timestamp};

/// Commands waiting for the store thread. Writers beyond this wait for room.
pub const COMMAND_CAPACITY: usize = 1024;

/// Most batches group-committed in one transaction (bounds the latency of the first writer
/// and the size of one transaction).
pub const MAX_GROUP: usize = 256;

/// How [`RedbStore::open`] opens the file.
#[derive(Clone, Debug)]
pub struct RedbOptions {
    /// redb's page cache. redb's default (1 GiB) is far too much for a small device. The
    /// default, 4 MiB, holds the journal's hot pages (the right edges of its B-trees); the
    /// kernel's page cache keeps the rest of the file. Measured under the throughput
    /// workloads, 16 MiB cost 5–6 MiB more RSS than 4 MiB for no more throughput
    /// (docs/performance.md, "Session 6").
    pub cache_size: usize,
    /// A commit slower than this is logged as a warning.
    pub slow_commit: Duration,
}

impl Default for RedbOptions {
    fn default() -> Self {
        RedbOptions {
            cache_size: 4 * 1024 * 1024,
            slow_commit: Duration::from_millis(500),
        }
    }
}

/// Opens (or reopens) the database; called on the caller's thread first, then on the store
/// thread after an I/O error.
type Opener = Box<dyn FnMut() -> Result<Database, DatabaseError> + Send>;

/// Work for the store thread. A `Run` job answers its caller itself and returns whether it
/// hit an I/O error (the thread then reopens the database).
enum Command {
    Write {
        batch: tables::Encoded,
        reply: WriteReply,
    },
    Run(Job),
    /// A write to other tables of the file made durable through the log (see
    /// [`RedbStore::write_logged`]).
    Logged {
        entry: Vec<u8>,
        job: LoggedJob,
    },
    /// A read that may run before the commit of the group being gathered: it sees every
    /// write acknowledged before it was sent, none of that group (meta lookups).
    Peek(Job),
    Prune {
        retention: Retention,
        now: Timestamp,
        reply: oneshot::Sender<Result<usize, StoreError>>,
    },
    Close(oneshot::Sender<()>),
}

/// Answers a writer, and hands its batch back so that the writer's thread frees it: the
/// store thread stays on its own work, and memory goes back to the allocator arena it came
/// from.
type WriteReply = oneshot::Sender<(Result<(), StoreError>, tables::Encoded)>;

/// A prune in progress on the store thread (see the module docs).
struct Pruning {
    retention: Retention,
    now: Timestamp,
    removed: usize,
    /// Every caller whose prune this one covers (a later call took over its settings).
    replies: Vec<oneshot::Sender<Result<usize, StoreError>>>,
}

/// Executions a group commit prunes beyond the batches it carries: with at least one more
/// removal than batches written, pruning always catches up.
const PRUNE_SLACK: usize = 16;

/// A read (or maintenance) job run on the store thread; returns whether the database must be
/// reopened after an I/O error.
type Job = Box<dyn FnOnce(&Database) -> bool + Send>;

/// A logged write: applies itself in the transaction it is given (or, given an error, answers
/// it and returns `None`); on success returns how to answer once the write is durable.
type LoggedJob = Box<dyn FnOnce(Result<&WriteTransaction, StoreError>) -> Option<Answer> + Send>;

/// Answers a logged write's caller with the outcome of making it durable.
type Answer = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

/// A write to tables beside the journal's that goes through the write-ahead log: its entry
/// holds what replaying it needs.
#[derive(Debug)]
pub(crate) enum Logged {
    /// The fleet outbox's append (`outbox::tables::encode_append`).
    #[cfg_attr(not(feature = "outbox"), allow(dead_code))]
    OutboxAppend(Vec<u8>),
}

/// A [`Store`] in one redb file, served by a dedicated thread (see the module docs).
#[derive(Debug)]
pub struct RedbStore {
    /// `None` once dropped; dropping the last sender lets the thread finish its queue and exit.
    sender: Option<mpsc::Sender<Command>>,
    thread: Option<JoinHandle<()>>,
    path: Option<PathBuf>,
    stats: Arc<Stats>,
}

/// Counters kept by the store thread (for metrics and benchmarks).
#[derive(Debug, Default)]
struct Stats {
    commits: AtomicU64,
    checkpoints: AtomicU64,
    batches: AtomicU64,
}

impl RedbStore {
    /// Opens or creates the journal at `path`. Blocks while redb opens the file (and repairs it
    /// after a crash): call it at startup or from `spawn_blocking`.
    /// The write-ahead log is the file beside it with the extension `wal`.
    pub fn open(path: impl AsRef<Path>, options: RedbOptions) -> Result<RedbStore, StoreError> {
        let path = path.as_ref().to_path_buf();
        let file = path.clone();
        let cache = options.cache_size;
        let opener: Opener = Box::new(move || Builder::new().set_cache_size(cache).create(&file));
        let log = path.with_extension("wal");
        let wal_opener: WalOpener = Box::new(move || {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&log)?;
            let backend = FileBackend::new(file).map_err(std::io::Error::other)?;
            Ok(Box::new(backend) as Box<dyn StorageBackend>)
        });
        let mut store = RedbStore::open_with(opener, wal_opener, options)?;
        store.path = Some(path);
        Ok(store)
    }

    /// Opens with any database and log openers (tests use a fault-injecting backend).
    fn open_with(
        mut opener: Opener,
        mut wal_opener: WalOpener,
        options: RedbOptions,
    ) -> Result<RedbStore, StoreError> {
        let (db, wal, lsn) = open_files(&mut opener, &mut wal_opener)?;
        let (sender, receiver) = mpsc::channel(COMMAND_CAPACITY);
        let stats = Arc::new(Stats::default());
        let worker = StoreThread {
            db: Some(db),
            wal: Some(wal),
            lsn,
            opener,
            wal_opener,
            options,
            stats: Arc::clone(&stats),
            last_slow_warning: None,
            slow_since_warning: 0,
            pruning: None,
        };
        let thread = std::thread::Builder::new()
            .name("reactor-store".into())
            .spawn(move || worker.run(receiver))
            .map_err(|err| StoreError::Io(format!("start the store thread: {err}")))?;
        Ok(RedbStore {
            sender: Some(sender),
            thread: Some(thread),
            path: None,
            stats,
        })
    }

    /// Write transactions committed so far (each holds one or more batches).
    pub fn commits(&self) -> u64 {
        self.stats.commits.load(Ordering::Relaxed)
    }

    /// Group commits that were durable in redb itself (checkpoints of the write-ahead log).
    pub fn checkpoints(&self) -> u64 {
        self.stats.checkpoints.load(Ordering::Relaxed)
    }

    /// Batches committed so far (refused ones excluded).
    pub fn batches(&self) -> u64 {
        self.stats.batches.load(Ordering::Relaxed)
    }

    /// The file this store was opened from.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Finishes every queued command, then stops the store thread. Later calls get `Closed`.
    pub async fn close(&self) -> Result<(), StoreError> {
        let (reply, done) = oneshot::channel();
        self.send(Command::Close(reply)).await?;
        // An error here means the thread already stopped: closed either way.
        let _ = done.await;
        Ok(())
    }

    async fn send(&self, command: Command) -> Result<(), StoreError> {
        let sender = self.sender.as_ref().ok_or(StoreError::Closed)?;
        sender.send(command).await.map_err(|_| StoreError::Closed)
    }

    /// Runs `read` on the store thread and returns its answer. Crate-visible so that other
    /// tables in the same file (the fleet outbox) share the one owner of the database.
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        read: impl FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.job(read, Command::Run).await
    }

    /// Runs `apply` in a write transaction of its own on the store thread and answers once it
    /// is durable — through the write-ahead log like a journal group, with `entry` as its
    /// record, so a crash before the next checkpoint replays it. `apply` must do on replay
    /// exactly what it did (`entry` carries every input it depends on). An error from
    /// `apply` rolls its transaction back.
    #[cfg_attr(not(feature = "outbox"), allow(dead_code))]
    pub(crate) async fn write_logged<T: Send + 'static>(
        &self,
        entry: Logged,
        apply: impl FnOnce(&WriteTransaction) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let entry = match entry {
            Logged::OutboxAppend(body) => {
                let mut entry = Vec::with_capacity(1 + body.len());
                entry.push(wal::OUTBOX_APPEND);
                entry.extend_from_slice(&body);
                entry
            }
        };
        let (reply, answer) = oneshot::channel();
        let job: LoggedJob = Box::new(move |txn| match txn.and_then(apply) {
            Ok(value) => Some(Box::new(move |durable: Result<(), StoreError>| {
                let _ = reply.send(durable.map(|()| value));
            })),
            Err(error) => {
                let _ = reply.send(Err(error));
                None
            }
        });
        self.send(Command::Logged { entry, job }).await?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Like [`RedbStore::run`], as a [`Command::Peek`].
    async fn peek<T: Send + 'static>(
        &self,
        read: impl FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.job(read, Command::Peek).await
    }

    async fn job<T: Send + 'static>(
        &self,
        read: impl FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
        kind: fn(Job) -> Command,
    ) -> Result<T, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.send(kind(Box::new(move |db| {
            let result = read(db);
            let io_failed = matches!(result, Err(StoreError::Io(_)));
            let _ = reply.send(result);
            io_failed
        })))
        .await?;
        answer.await.map_err(|_| StoreError::Closed)?
    }
}

impl Drop for RedbStore {
    fn drop(&mut self) {
        // The thread answers everything still queued, then sees the channel closed.
        self.sender.take();
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the store thread panicked");
        }
    }
}

#[async_trait]
impl Store for RedbStore {
    async fn write(&self, batch: Vec<StoreWrite>) -> Result<(), StoreError> {
        self.write_returning(batch).await.0
    }

    fn returns_batches(&self) -> bool {
        true
    }

    async fn write_returning(
        &self,
        batch: Vec<StoreWrite>,
    ) -> (Result<(), StoreError>, Vec<StoreWrite>) {
        // Encoded here, on the writer's thread: the store thread only inserts.
        let batch = tables::Encoded::new(batch);
        let (reply, answer) = oneshot::channel();
        if let Err(error) = self.send(Command::Write { batch, reply }).await {
            return (Err(error), Vec::new());
        }
        match answer.await {
            Ok((outcome, batch)) => (outcome, batch.into_writes()),
            Err(_) => (Err(StoreError::Closed), Vec::new()),
        }
    }

    async fn unfinished(&self) -> Result<Vec<(ExecutionRecord, Vec<Fact>)>, StoreError> {
        self.run(reads::unfinished).await
    }

    async fn execution(&self, id: ExecutionId) -> Result<Option<ExecutionRecord>, StoreError> {
        self.run(move |db| reads::execution(db, id)).await
    }

    async fn journal(&self, id: ExecutionId) -> Result<Vec<Fact>, StoreError> {
        self.run(move |db| reads::journal(db, id)).await
    }

    async fn executions(&self, query: &ExecutionQuery) -> Result<Vec<ExecutionRecord>, StoreError> {
        let query = query.clone();
        self.run(move |db| reads::executions(db, &query)).await
    }

    async fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let key = key.to_string();
        // A peek: a keyed submission's mark lookup does not wait for the commit of a group
        // its own write cannot be part of (its key's earlier holder was acknowledged).
        self.peek(move |db| reads::meta(db, &key)).await
    }

    async fn meta_prefix(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let prefix = prefix.to_string();
        self.run(move |db| reads::meta_prefix(db, &prefix)).await
    }

    async fn prune(&self, retention: Retention, now: Timestamp) -> Result<usize, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Prune {
            retention,
            now,
            reply,
        })
        .await?;
        answer.await.map_err(|_| StoreError::Closed)?
    }
}

/// The state owned by the store thread.
struct StoreThread {
    /// `None` after an I/O error that reopening could not repair: the store is closed.
    db: Option<Database>,
    /// `None` exactly when `db` is.
    wal: Option<Wal>,
    /// The LSN of the last group committed.
    lsn: u64,
    opener: Opener,
    wal_opener: WalOpener,
    options: RedbOptions,
    stats: Arc<Stats>,
    /// Slow-commit warnings are rate-limited: a slow SD card must not fill itself with logs.
    last_slow_warning: Option<Instant>,
    slow_since_warning: u64,
    pruning: Option<Pruning>,
}

/// At most one slow-commit warning per this interval.
const SLOW_WARNING_INTERVAL: Duration = Duration::from_secs(60);

impl StoreThread {
    fn run(mut self, mut receiver: mpsc::Receiver<Command>) {
        let mut next = None;
        loop {
            let command = match next.take() {
                Some(command) => command,
                // A pending prune works in the gaps: only when nothing is queued.
                None if self.pruning.is_some() => match receiver.try_recv() {
                    Ok(command) => command,
                    Err(mpsc::error::TryRecvError::Empty) => {
                        self.prune_alone();
                        continue;
                    }
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        while self.pruning.is_some() {
                            self.prune_alone();
                        }
                        break;
                    }
                },
                None => match receiver.blocking_recv() {
                    Some(command) => command,
                    None => break,
                },
            };
            match command {
                Command::Write { batch, reply } => {
                    let mut group = vec![batch];
                    let mut replies = vec![reply];
                    let (mut reads, mut peeks) = (Vec::new(), Vec::new());
                    // Group commit: take every write already queued. Reads queued meanwhile
                    // run right after the commit, so each still sees every write queued
                    // before it (a queued execution's `Create` for the task that starts it
                    // when a slot frees); peeks run before it, on the last commit, and their
                    // callers go on during the fsync. `Close` ends the group.
                    while group.len() < MAX_GROUP {
                        match receiver.try_recv() {
                            Ok(Command::Write { batch, reply }) => {
                                group.push(batch);
                                replies.push(reply);
                            }
                            Ok(Command::Run(job)) => reads.push(job),
                            Ok(Command::Peek(job)) => peeks.push(job),
                            Ok(other) => {
                                next = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    for job in peeks {
                        self.run_job(job);
                    }
                    self.commit(group, replies);
                    for job in reads {
                        self.run_job(job);
                    }
                }
                Command::Run(job) | Command::Peek(job) => self.run_job(job),
                Command::Logged { entry, job } => self.logged(&entry, job),
                Command::Prune {
                    retention,
                    now,
                    reply,
                } => match &mut self.pruning {
                    Some(pruning) => {
                        // The newer settings cover the older call too.
                        pruning.retention = retention;
                        pruning.now = now;
                        pruning.replies.push(reply);
                    }
                    None => {
                        self.pruning = Some(Pruning {
                            retention,
                            now,
                            removed: 0,
                            replies: vec![reply],
                        });
                    }
                },
                Command::Close(reply) => {
                    while self.pruning.is_some() {
                        self.prune_alone();
                    }
                    self.checkpoint();
                    let _ = reply.send(());
                    break;
                }
            }
        }
        self.checkpoint();
        // Dropping the database here (on this thread) releases the file.
        self.db = None;
        self.wal = None;
    }

    /// Makes every group durable in redb, so the next open replays nothing.
    fn checkpoint(&mut self) {
        if let (Some(db), Some(wal)) = (&self.db, &mut self.wal)
            && wal.groups() > 0
        {
            match tables::checkpoint(db, self.lsn) {
                Ok(()) => {
                    wal.restart();
                    self.stats.checkpoints.fetch_add(1, Ordering::Relaxed);
                }
                // The log still holds the groups: the next open replays them.
                Err(err) => tracing::warn!(error = %err, "journal checkpoint at close failed"),
            }
        }
    }

    /// One prune transaction of its own (no group commit to ride on).
    fn prune_alone(&mut self) {
        let Some(pruning) = &self.pruning else {
            return;
        };
        let slice = tables::PruneSlice {
            retention: pruning.retention,
            now: pruning.now,
            max: tables::PRUNE_CHUNK,
        };
        let result = match &self.db {
            Some(db) => tables::prune(db, slice),
            None => Err(StoreError::Closed),
        };
        self.pruned(result, slice.max);
    }

    /// Accounts for a prune slice; answers the callers once nothing is left (or on error).
    fn pruned(&mut self, result: Result<usize, StoreError>, max: usize) {
        let Some(pruning) = &mut self.pruning else {
            return;
        };
        let answer = match result {
            Ok(removed) => {
                pruning.removed += removed;
                if removed == max {
                    return;
                }
                Ok(pruning.removed)
            }
            Err(error) => Err(error),
        };
        let io_failed = matches!(answer, Err(StoreError::Io(_)));
        if let Some(pruning) = self.pruning.take() {
            for reply in pruning.replies {
                let _ = reply.send(answer.clone());
            }
        }
        if io_failed {
            self.reopen();
        }
    }

    fn run_job(&mut self, job: Job) {
        match &self.db {
            Some(db) => {
                if job(db) {
                    self.reopen();
                }
            }
            // Dropping the job drops its reply sender: the caller sees `Closed`.
            None => drop(job),
        }
    }

    fn commit(&mut self, group: Vec<tables::Encoded>, replies: Vec<WriteReply>) {
        let Some(db) = &self.db else {
            for (reply, batch) in replies.into_iter().zip(group) {
                let _ = reply.send((Err(StoreError::Closed), batch));
            }
            return;
        };
        let started = Instant::now();
        let prune = self.pruning.as_ref().map(|pruning| tables::PruneSlice {
            retention: pruning.retention,
            now: pruning.now,
            max: group.len() + PRUNE_SLACK,
        });
        let lsn = self.lsn + 1;
        let durable = self.wal.as_ref().is_none_or(|wal| {
            wal.wants_checkpoint(Wal::payload_len(group.iter().map(tables::Encoded::logged)))
        });
        let committed = tables::commit_group(db, &group, prune, tables::Commit { lsn, durable })
            .and_then(|(outcomes, pruned)| {
                self.lsn = lsn;
                let accepted = group
                    .iter()
                    .zip(&outcomes)
                    .filter(|(_, outcome)| outcome.is_ok())
                    .map(|(batch, _)| batch.logged());
                self.make_durable(lsn, durable, accepted)?;
                Ok((outcomes, pruned))
            });
        match committed {
            Ok((outcomes, pruned)) => {
                let elapsed = started.elapsed();
                let committed = outcomes.iter().filter(|outcome| outcome.is_ok()).count();
                self.stats.commits.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .batches
                    .fetch_add(committed as u64, Ordering::Relaxed);
                if elapsed > self.options.slow_commit {
                    self.slow_commit(elapsed, group.len());
                }
                for ((reply, outcome), batch) in replies.into_iter().zip(outcomes).zip(group) {
                    let _ = reply.send((outcome, batch));
                }
                if let Some(slice) = prune {
                    self.pruned(Ok(pruned), slice.max);
                }
            }
            Err(err) => {
                tracing::error!(error = %err, batches = group.len(), "journal commit failed");
                let io_failed = matches!(err, StoreError::Io(_));
                for (reply, batch) in replies.into_iter().zip(group) {
                    let _ = reply.send((Err(err.clone()), batch));
                }
                if prune.is_some() {
                    // The prune's part of the transaction is gone with it; its callers learn why.
                    if let Some(pruning) = self.pruning.take() {
                        for reply in pruning.replies {
                            let _ = reply.send(Err(err.clone()));
                        }
                    }
                }
                if io_failed {
                    self.reopen();
                }
            }
        }
    }

    /// Makes transaction `lsn`, just committed, durable: by the commit itself (a checkpoint:
    /// the log starts over) or by appending `entries` to the log.
    fn make_durable<'a>(
        &mut self,
        lsn: u64,
        durable: bool,
        entries: impl Iterator<Item = &'a [u8]>,
    ) -> Result<(), StoreError> {
        let Some(wal) = &mut self.wal else {
            return Err(StoreError::Closed);
        };
        if durable {
            wal.restart();
            self.stats.checkpoints.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        // The transaction is visible in redb but not durable: on error its outcome is unknown
        // (the reopen either keeps it or not), as with a failed commit.
        wal.append(lsn, entries)
            .map_err(|err| StoreError::Io(format!("write-ahead log: {err}")))
    }

    /// A logged write ([`RedbStore::write_logged`]): its own transaction, made durable like a
    /// group.
    fn logged(&mut self, entry: &[u8], job: LoggedJob) {
        let (Some(db), Some(wal)) = (&self.db, &self.wal) else {
            // Dropping the job drops its reply sender: the caller sees `Closed`.
            return;
        };
        let lsn = self.lsn + 1;
        let durable = wal.wants_checkpoint(Wal::payload_len(std::iter::once(entry)));
        let txn = match tables::begin_group(db, tables::Commit { lsn, durable }) {
            Ok(txn) => txn,
            Err(error) => {
                let io_failed = matches!(error, StoreError::Io(_));
                job(Err(error));
                if io_failed {
                    self.reopen();
                }
                return;
            }
        };
        let Some(answer) = job(Ok(&txn)) else {
            let _ = txn.abort();
            return;
        };
        let result = txn.commit().context("commit logged write").and_then(|()| {
            self.lsn = lsn;
            self.make_durable(lsn, durable, std::iter::once(entry))
        });
        let io_failed = matches!(result, Err(StoreError::Io(_)));
        answer(result);
        if io_failed {
            self.reopen();
        }
    }

    fn slow_commit(&mut self, elapsed: Duration, batches: usize) {
        self.slow_since_warning += 1;
        if self
            .last_slow_warning
            .is_some_and(|last| last.elapsed() < SLOW_WARNING_INTERVAL)
        {
            return;
        }
        tracing::warn!(
            elapsed_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
            batches,
            slow_commits = self.slow_since_warning,
            "slow journal commit (slow_commits counts those since the last warning)"
        );
        self.last_slow_warning = Some(Instant::now());
        self.slow_since_warning = 0;
    }

    /// After an I/O error redb refuses further work: drop the database and open it again
    /// (redb repairs it from the last durable commit). On failure the store is closed.
    fn reopen(&mut self) {
        self.db = None;
        self.wal = None;
        match open_files(&mut self.opener, &mut self.wal_opener) {
            Ok((db, wal, lsn)) => {
                tracing::warn!("journal database reopened after an I/O error");
                self.db = Some(db);
                self.wal = Some(wal);
                self.lsn = lsn;
            }
            Err(err) => {
                tracing::error!(error = %err, "cannot reopen the journal database: store closed");
            }
        }
    }
}

/// Opens the database and its log and replays the log (see [`recover`]).
fn open_files(
    opener: &mut Opener,
    wal_opener: &mut WalOpener,
) -> Result<(Database, Wal, u64), StoreError> {
    let db = opener().map_err(|err| tables::redb_error("open database", err))?;
    let durable = tables::init(&db)?;
    let file =
        wal_opener().map_err(|err| StoreError::Io(format!("open the write-ahead log: {err}")))?;
    let mut wal = Wal::new(file);
    let lsn = recover(&db, &mut wal, durable)?;
    Ok((db, wal, lsn))
}

/// Replays the log's records beyond redb's durable state (`durable`, its LSN), each committed
/// as it first was, then checkpoints; returns the LSN the journal is at. A journal that had no LSN (new, or written
/// before the log existed) owns no record of the file, which is emptied.
fn recover(db: &Database, wal: &mut Wal, durable: Option<u64>) -> Result<u64, StoreError> {
    let io = |err: std::io::Error| StoreError::Io(format!("read the write-ahead log: {err}"));
    let Some(durable) = durable else {
        wal.clear().map_err(io)?;
        return Ok(0);
    };
    let records = wal.recover(durable).map_err(io)?;
    let Some(&(last, _)) = records.last() else {
        wal.restart();
        return Ok(durable);
    };
    let corrupt = |lsn: u64| {
        move |codec::Malformed(why)| {
            StoreError::Corrupt(format!("write-ahead log record {lsn}: {why}"))
        }
    };
    // Each record again as it was first committed, without a sync; then one checkpoint.
    let mut batches = 0;
    for (lsn, payload) in &records {
        let commit = tables::Commit {
            lsn: *lsn,
            durable: false,
        };
        let mut group = Vec::new();
        let mut others = Vec::new();
        for entry in wal::entries(payload).map_err(corrupt(*lsn))? {
            match entry.split_first() {
                Some((&wal::JOURNAL_BATCH, body)) => {
                    let writes = wal::decode_batch(body).map_err(corrupt(*lsn))?;
                    group.push(tables::Encoded::new(writes));
                }
                Some((&kind, body)) => others.push((kind, body)),
                None => return Err(corrupt(*lsn)(codec::Malformed("empty entry"))),
            }
        }
        // A record holds a group's batches (possibly none: all were refused) or one logged
        // write; should one hold both, the batches go first, as they were queued first.
        if !group.is_empty() || others.is_empty() {
            batches += group.len();
            let (outcomes, _) = tables::commit_group(db, &group, None, commit)?;
            for error in outcomes.iter().filter_map(|outcome| outcome.as_ref().err()) {
                // Accepted once against the same state, so this is a bug; the rest applies.
                tracing::error!(%error, "a batch of the write-ahead log was refused on replay");
            }
        }
        for (kind, body) in others {
            let txn = tables::begin_group(db, commit)?;
            replay_entry(&txn, kind, body)?;
            txn.commit().context("commit a replayed write")?;
        }
    }
    tables::checkpoint(db, last)?;
    tracing::info!(
        records = records.len(),
        batches,
        "journal: replayed the write-ahead log"
    );
    wal.restart();
    Ok(last)
}

/// Replays a logged write of another part of the file.
fn replay_entry(txn: &WriteTransaction, kind: u8, body: &[u8]) -> Result<(), StoreError> {
    match kind {
        #[cfg(feature = "outbox")]
        wal::OUTBOX_APPEND => crate::outbox::replay_append(txn, body),
        _ => {
            let _ = (txn, body);
            Err(StoreError::Corrupt(format!(
                "write-ahead log entry of unknown kind {kind}"
            )))
        }
    }
}
