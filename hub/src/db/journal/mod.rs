//! [`SqlStore`]: the execution journal ([`Store`]) in the hub's SQL database, SQLite or
//! PostgreSQL, for the same engine the agent runs.
//!
//! Layout (migration `0001_journal`): `executions` holds one row per execution — the record
//! as JSON plus the columns lists filter on (`workflow`, `status`, `created_at`,
//! `finished_at`, `device`) and the bookkeeping (`next_seq`, `owner`); `journal` holds the
//! facts as JSON keyed by (execution, seq); `meta` the small runtime values.
//!
//! Group commit: every `write` goes to a writer task (one on SQLite, [`POSTGRES_WRITERS`] on
//! PostgreSQL, where groups touching one execution serialise on its row lock), which takes
//! the batches already queued (up to [`MAX_GROUP`]) and applies them in ONE transaction: one SQL round of a few
//! statements per group (PostgreSQL binds arrays and `UNNEST`s them), one fsync. Each batch
//! is checked against the stored state first (see [`plan`]), so a refused batch leaves no
//! trace and does not hold back the others. If the database fails a statement before the
//! commit, the group is retried batch by batch so one bad batch cannot fail its neighbours;
//! a failed COMMIT answers `Io` to all (the outcome is unknown, as the trait says).
//!
//! Ownership: each execution has an `owner`, the [`HubInstance`](super::HubInstance) that
//! runs it. `Create` makes this instance the owner; writes to an unfinished execution owned by
//! another instance are refused (fencing). [`Store::unfinished`] claims, atomically, this
//! instance's unfinished executions plus those whose owner's lease expired (PostgreSQL:
//! `FOR UPDATE SKIP LOCKED`; SQLite: one `BEGIN IMMEDIATE` transaction), so two hubs never
//! both adopt one.

pub(crate) mod checkpoint;
pub(crate) mod marks;
pub(crate) mod plan;
mod postgres;
mod sqlite;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use async_trait::async_trait;
use reactor_core::engine::{ExecutionId, ExecutionRecord, ExecutionStatus, Fact, Timestamp};
use reactor_core::store::{ExecutionQuery, Retention, Store, StoreError, StoreWrite};
use tokio::sync::{mpsc, oneshot};

use self::plan::Encoded;
use super::Database;

/// Most batches committed in one transaction.
pub const MAX_GROUP: usize = 512;

/// Writer tasks on PostgreSQL: groups commit in parallel on separate connections (rows are
/// locked, so groups touching one execution still apply one after the other). SQLite has a
/// single writer lock and gets one writer task.
pub const POSTGRES_WRITERS: usize = 4;

/// Writes waiting for the writer task; writers beyond this wait (backpressure).
pub const QUEUE_CAPACITY: usize = 4096;

/// Finished executions removed per prune transaction (short transactions keep the writer
/// and other hubs moving).
pub const PRUNE_CHUNK: usize = 1000;

/// Which executions to list: [`ExecutionQuery`] plus the hub API's filters. Newest first.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ExecutionFilter {
    pub workflow: Option<String>,
    pub status: Option<ExecutionStatus>,
    pub device: Option<String>,
    /// Created at or after this time.
    pub since: Option<Timestamp>,
    /// Created before this time.
    pub until: Option<Timestamp>,
    /// Only ids lower than this (the cursor of the previous page).
    pub before: Option<ExecutionId>,
    /// At most this many; `0` means no limit.
    pub limit: usize,
}

impl From<&ExecutionQuery> for ExecutionFilter {
    fn from(query: &ExecutionQuery) -> Self {
        ExecutionFilter {
            workflow: query.workflow.clone(),
            status: query.status,
            before: query.before,
            limit: query.limit,
            ..ExecutionFilter::default()
        }
    }
}

/// A [`Store`] in the hub's SQL database, owned by one hub instance.
#[derive(Debug)]
pub struct SqlStore {
    shared: Arc<Shared>,
    sender: mpsc::Sender<Request>,
}

#[derive(Debug)]
struct Shared {
    db: Database,
    instance: String,
    commits: AtomicU64,
    batches: AtomicU64,
    /// Time the writer task spent committing, in nanoseconds.
    busy_nanos: AtomicU64,
    /// SQLite: the WAL checkpoint task, told of every commit.
    checkpoints: Option<checkpoint::Checkpoints>,
    /// When marks were last examined for age (ms since the epoch; `i64::MIN`: never).
    marks_pruned_at: AtomicI64,
}

struct Request {
    batch: Vec<Encoded>,
    reply: oneshot::Sender<Result<(), StoreError>>,
}

impl SqlStore {
    /// A store writing as the hub instance `instance` (an id registered with
    /// [`HubInstance::register`](super::HubInstance::register)). Starts the writer task: call
    /// inside a tokio runtime. The database must be migrated.
    pub fn new(db: Database, instance: impl Into<String>) -> SqlStore {
        let checkpoints = match &db {
            Database::Sqlite(pool) => Some(checkpoint::Checkpoints::start(pool.clone())),
            Database::Postgres(_) => None,
        };
        let shared = Arc::new(Shared {
            db,
            instance: instance.into(),
            commits: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            busy_nanos: AtomicU64::new(0),
            checkpoints,
            marks_pruned_at: AtomicI64::new(i64::MIN),
        });
        let (sender, receiver) = mpsc::channel(QUEUE_CAPACITY);
        let receiver = Arc::new(tokio::sync::Mutex::new(receiver));
        let writers = match shared.db {
            Database::Sqlite(_) => 1,
            Database::Postgres(_) => POSTGRES_WRITERS,
        };
        for _ in 0..writers {
            tokio::spawn(writer(Arc::clone(&shared), Arc::clone(&receiver)));
        }
        SqlStore { shared, sender }
    }

    /// The hub instance this store writes as.
    pub fn instance(&self) -> &str {
        &self.shared.instance
    }

    pub fn database(&self) -> &Database {
        &self.shared.db
    }

    /// Transactions committed by the writer task (each holds one or more batches).
    pub fn commits(&self) -> u64 {
        self.shared.commits.load(Ordering::Relaxed)
    }

    /// Batches committed (refused ones excluded).
    pub fn batches(&self) -> u64 {
        self.shared.batches.load(Ordering::Relaxed)
    }

    /// Time the writer tasks spent committing groups, summed (busy / wall time = their
    /// utilisation; above 100% on PostgreSQL when groups commit in parallel).
    pub fn writer_busy(&self) -> std::time::Duration {
        std::time::Duration::from_nanos(self.shared.busy_nanos.load(Ordering::Relaxed))
    }

    /// Executions matching `filter`, newest first (the API's list).
    pub async fn list(&self, filter: &ExecutionFilter) -> Result<Vec<ExecutionRecord>, StoreError> {
        match &self.shared.db {
            Database::Sqlite(pool) => sqlite::list(pool, filter).await,
            Database::Postgres(pool) => postgres::list(pool, filter).await,
        }
    }
}

/// A writer task: group-commits queued batches until every [`SqlStore`] handle is gone.
/// Several writers share the queue; each takes what is queued when its turn comes.
async fn writer(shared: Arc<Shared>, receiver: Arc<tokio::sync::Mutex<mpsc::Receiver<Request>>>) {
    loop {
        let mut group = Vec::new();
        let mut replies = Vec::new();
        {
            let mut receiver = receiver.lock().await;
            let Some(first) = receiver.recv().await else {
                break;
            };
            group.push(first.batch);
            replies.push(first.reply);
            while group.len() < MAX_GROUP {
                match receiver.try_recv() {
                    Ok(request) => {
                        group.push(request.batch);
                        replies.push(request.reply);
                    }
                    Err(_) => break,
                }
            }
        }
        let started = std::time::Instant::now();
        let outcomes = commit_group(&shared, &group).await;
        let busy = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        shared.busy_nanos.fetch_add(busy, Ordering::Relaxed);
        if let Some(checkpoints) = &shared.checkpoints {
            checkpoints.wrote();
        }
        for (reply, outcome) in replies.into_iter().zip(outcomes) {
            let _ = reply.send(outcome);
        }
    }
}

/// Why a group did not commit.
#[derive(Debug)]
pub(crate) enum Failure {
    /// A statement failed before COMMIT: the transaction was rolled back, nothing written.
    Rolledback(sqlx::Error),
    /// COMMIT itself failed: the outcome is unknown.
    Commit(sqlx::Error),
}

async fn commit_group(shared: &Shared, group: &[Vec<Encoded>]) -> Vec<Result<(), StoreError>> {
    let attempt = |group| commit_once(shared, group);
    let outcomes = match attempt(group).await {
        Ok(outcomes) => {
            shared.commits.fetch_add(1, Ordering::Relaxed);
            outcomes
        }
        Err(Failure::Rolledback(err)) if group.len() > 1 => {
            tracing::warn!(error = %err, batches = group.len(), "group commit failed; retrying batch by batch");
            let mut outcomes = Vec::with_capacity(group.len());
            for batch in group {
                let outcome = match attempt(std::slice::from_ref(batch)).await {
                    Ok(mut one) => {
                        shared.commits.fetch_add(1, Ordering::Relaxed);
                        one.pop().unwrap_or(Ok(()))
                    }
                    Err(Failure::Rolledback(err) | Failure::Commit(err)) => Err(io("write", &err)),
                };
                outcomes.push(outcome);
            }
            outcomes
        }
        Err(Failure::Rolledback(err) | Failure::Commit(err)) => {
            tracing::error!(error = %err, batches = group.len(), "journal commit failed");
            let err = io("commit", &err);
            group.iter().map(|_| Err(err.clone())).collect()
        }
    };
    let committed = outcomes.iter().filter(|o| o.is_ok()).count();
    shared
        .batches
        .fetch_add(committed as u64, Ordering::Relaxed);
    outcomes
}

/// One transaction for `group`.
async fn commit_once(
    shared: &Shared,
    group: &[Vec<Encoded>],
) -> Result<Vec<Result<(), StoreError>>, Failure> {
    let me = shared.instance.as_str();
    match &shared.db {
        Database::Sqlite(pool) => sqlite::commit(pool, group, me).await,
        Database::Postgres(pool) => postgres::commit(pool, group, me).await,
    }
}

/// Maps a database error to the store's error, naming what was being done.
pub(crate) fn io(context: &str, err: &sqlx::Error) -> StoreError {
    match err {
        sqlx::Error::PoolClosed => StoreError::Closed,
        other => StoreError::Io(format!("{context}: {other}")),
    }
}

pub(crate) fn decode_record(id: &str, json: &str) -> Result<ExecutionRecord, StoreError> {
    serde_json::from_str(json)
        .map_err(|err| StoreError::Corrupt(format!("record of execution {id}: {err}")))
}

pub(crate) fn decode_fact(id: &str, seq: i64, json: &str) -> Result<Fact, StoreError> {
    serde_json::from_str(json)
        .map_err(|err| StoreError::Corrupt(format!("fact {seq} of execution {id}: {err}")))
}

/// Groups (execution id, fact) rows, ordered by execution, into each record's journal.
pub(crate) fn with_journals(
    records: Vec<(String, ExecutionRecord)>,
    facts: Vec<(String, Fact)>,
) -> Vec<(ExecutionRecord, Vec<Fact>)> {
    let mut journals: std::collections::HashMap<String, Vec<Fact>> =
        std::collections::HashMap::new();
    for (id, fact) in facts {
        journals.entry(id).or_default().push(fact);
    }
    records
        .into_iter()
        .map(|(id, record)| {
            let journal = journals.remove(&id).unwrap_or_default();
            (record, journal)
        })
        .collect()
}

/// The database clock in Unix milliseconds, as SQL for PostgreSQL.
pub(crate) fn postgres_now() -> &'static str {
    postgres::NOW_MS
}

/// Finished executions with `finished_at` below this are older than `retention.max_age`.
pub(crate) fn age_cut(retention: Retention, now: Timestamp) -> Option<i64> {
    retention.max_age.map(|age| {
        now.millis()
            .saturating_sub(i64::try_from(age.as_millis()).unwrap_or(i64::MAX))
    })
}

#[async_trait]
impl Store for SqlStore {
    async fn write(&self, batch: Vec<StoreWrite>) -> Result<(), StoreError> {
        self.write_returning(batch).await.0
    }

    fn returns_batches(&self) -> bool {
        true
    }

    /// Encoded here, on the caller's thread (the writer only executes statements); the
    /// writes go back to the caller with the outcome, so a finished record need not be
    /// copied to be written.
    async fn write_returning(
        &self,
        batch: Vec<StoreWrite>,
    ) -> (Result<(), StoreError>, Vec<StoreWrite>) {
        let encoded = match plan::encode(&batch) {
            Ok(encoded) => encoded,
            Err(error) => return (Err(error), batch),
        };
        let (reply, answer) = oneshot::channel();
        let request = Request {
            batch: encoded,
            reply,
        };
        if self.sender.send(request).await.is_err() {
            return (Err(StoreError::Closed), batch);
        }
        let outcome = answer.await.unwrap_or(Err(StoreError::Closed));
        (outcome, batch)
    }

    async fn unfinished(&self) -> Result<Vec<(ExecutionRecord, Vec<Fact>)>, StoreError> {
        let me = self.shared.instance.as_str();
        match &self.shared.db {
            Database::Sqlite(pool) => sqlite::claim_unfinished(pool, me).await,
            Database::Postgres(pool) => postgres::claim_unfinished(pool, me).await,
        }
    }

    async fn execution(&self, id: ExecutionId) -> Result<Option<ExecutionRecord>, StoreError> {
        match &self.shared.db {
            Database::Sqlite(pool) => sqlite::execution(pool, id).await,
            Database::Postgres(pool) => postgres::execution(pool, id).await,
        }
    }

    async fn journal(&self, id: ExecutionId) -> Result<Vec<Fact>, StoreError> {
        match &self.shared.db {
            Database::Sqlite(pool) => sqlite::journal(pool, id).await,
            Database::Postgres(pool) => postgres::journal(pool, id).await,
        }
    }

    async fn executions(&self, query: &ExecutionQuery) -> Result<Vec<ExecutionRecord>, StoreError> {
        self.list(&ExecutionFilter::from(query)).await
    }

    async fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        match &self.shared.db {
            Database::Sqlite(pool) => sqlite::meta(pool, key).await,
            Database::Postgres(pool) => postgres::meta(pool, key).await,
        }
    }

    async fn meta_prefix(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        match &self.shared.db {
            Database::Sqlite(pool) => sqlite::meta_prefix(pool, prefix).await,
            Database::Postgres(pool) => postgres::meta_prefix(pool, prefix).await,
        }
    }

    /// Removes finished executions beyond `retention` (returns how many), then — at most
    /// every [`marks::MARK_PRUNE_EVERY`] — the de-duplication marks older than
    /// [`marks::MARK_MAX_AGE`].
    async fn prune(&self, retention: Retention, now: Timestamp) -> Result<usize, StoreError> {
        let removed = match &self.shared.db {
            Database::Sqlite(pool) => sqlite::prune(pool, retention, now).await,
            Database::Postgres(pool) => postgres::prune(pool, retention, now).await,
        }?;
        let every = i64::try_from(marks::MARK_PRUNE_EVERY.as_millis()).unwrap_or(i64::MAX);
        let last = self.shared.marks_pruned_at.load(Ordering::Relaxed);
        // Also when the clock went back.
        let due = now.millis() < last || now.millis() >= last.saturating_add(every);
        if due {
            self.shared
                .marks_pruned_at
                .store(now.millis(), Ordering::Relaxed);
            marks::prune_marks(&self.shared.db, now, marks::MARK_MAX_AGE)
                .await
                .map_err(|err| io("prune de-duplication marks", &err))?;
        }
        Ok(removed)
    }
}

/// SQL text for the list filter, shared by both backends: `placeholder(n)` renders the
/// n-th bind (1-based).
pub(crate) fn list_sql(
    filter: &ExecutionFilter,
    placeholder: impl Fn(usize) -> String,
) -> (String, Vec<Bind>) {
    // Two steps: pick the page's ids from the indexes (covering: a time window sorts ids
    // only), then fetch those records — never sort whole rows.
    let mut sql = String::from("SELECT id FROM executions");
    let mut binds = Vec::new();
    let mut conditions = Vec::new();
    let mut push = |column: &str, op: &str, bind: Bind, binds: &mut Vec<Bind>| {
        binds.push(bind);
        conditions.push(format!("{column} {op} {}", placeholder(binds.len())));
    };
    if let Some(workflow) = &filter.workflow {
        push("workflow", "=", Bind::Text(workflow.clone()), &mut binds);
    }
    if let Some(status) = filter.status {
        push(
            "status",
            "=",
            Bind::Text(status.as_str().into()),
            &mut binds,
        );
    }
    if let Some(device) = &filter.device {
        push("device", "=", Bind::Text(device.clone()), &mut binds);
    }
    if let Some(since) = filter.since {
        push("created_at", ">=", Bind::Int(since.millis()), &mut binds);
    }
    if let Some(until) = filter.until {
        push("created_at", "<", Bind::Int(until.millis()), &mut binds);
        // Implied bound on the key, so "newest first" starts at `until` instead of scanning
        // everything newer: an id's time is never later than its execution's `created_at`
        // (ids are minted before the record; a child's derived id carries its parent's
        // time). The margin covers a wall clock stepping back.
        let bound = until.plus(ID_TIME_MARGIN).millis();
        let bound = ulid::Ulid::from_parts(u64::try_from(bound).unwrap_or(0), 0);
        push("id", "<", Bind::Text(bound.to_string()), &mut binds);
    }
    if let Some(before) = filter.before {
        push("id", "<", Bind::Text(before.to_string()), &mut binds);
    }
    if !conditions.is_empty() {
        sql.push_str(" WHERE ");
        sql.push_str(&conditions.join(" AND "));
    }
    sql.push_str(" ORDER BY id DESC");
    if filter.limit > 0 {
        binds.push(Bind::Int(i64::try_from(filter.limit).unwrap_or(i64::MAX)));
        sql.push_str(&format!(" LIMIT {}", placeholder(binds.len())));
    }
    let sql = format!("SELECT id, record FROM executions WHERE id IN ({sql}) ORDER BY id DESC");
    (sql, binds)
}

/// How much later than an execution's `created_at` its id's time may be (clock steps).
const ID_TIME_MARGIN: std::time::Duration = std::time::Duration::from_secs(60);

/// A value bound to a dynamically built statement.
#[derive(Clone, Debug)]
pub(crate) enum Bind {
    Text(String),
    Int(i64),
}
