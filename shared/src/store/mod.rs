//! The journal store: where executions and their facts are kept durably.
//!
//! Every implementation (redb on the agent, in-memory for tests and `exec`, SQL on the hub)
//! passes the one conformance suite in [`conformance`].
//!
//! Implementations:
//! - [`MemoryStore`]: maps behind a mutex; tests and `reactor-agent exec`.
//! - [`RedbStore`] (feature `redb`): one redb file owned by a dedicated store thread that
//!   group-commits every queued batch in one durable transaction.
//!
//! Invariants every implementation keeps (and [`conformance`] checks):
//! - A batch is applied entirely or not at all, and is durable when `write` returns `Ok`.
//! - A journal is contiguous: `Create` writes seq 0, each `Append` must carry the next seq of
//!   an existing execution, otherwise the whole batch is refused (nothing is written).
//! - Running and queued executions are never pruned.

use std::time::Duration;

use async_trait::async_trait;

use crate::engine::{ExecutionId, ExecutionRecord, ExecutionStatus, Fact, Timestamp};

mod batch;
pub mod conformance;
mod memory;
#[cfg(test)]
mod model_tests;
#[cfg(feature = "redb")]
mod redb;

pub use self::memory::MemoryStore;
#[cfg(feature = "redb")]
pub(crate) use self::redb::Logged;
#[cfg(feature = "redb")]
pub use self::redb::{RedbOptions, RedbStore};

/// One write; a batch of writes is applied atomically.
#[allow(
    clippy::large_enum_variant,
    reason = "writes live briefly in a batch; boxing would change the API others code against"
)]
#[derive(Clone, Debug, PartialEq)]
pub enum StoreWrite {
    /// A new execution with its summary and its first fact (`Fact::Started`, sequence 0).
    Create {
        record: ExecutionRecord,
        started: Fact,
    },
    /// Appends a fact at `seq` (1, 2, … in order) to an existing execution's journal.
    Append {
        id: ExecutionId,
        seq: u32,
        fact: Fact,
    },
    /// Replaces an execution's summary (status change, finish).
    Update(ExecutionRecord),
    /// Sets a small runtime value (cron last tick, de-dup marks, …). `None` deletes it.
    PutMeta { key: String, value: Option<Vec<u8>> },
}

/// Which executions to list, newest first.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ExecutionQuery {
    pub workflow: Option<String>,
    pub status: Option<ExecutionStatus>,
    /// Only executions with an id lower than this (the cursor of the previous page).
    pub before: Option<ExecutionId>,
    /// At most this many executions; `0` means no limit.
    pub limit: usize,
}

/// How long finished executions are kept. Running and queued ones are never pruned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    /// Keep at most this many finished executions (the newest).
    pub keep: usize,
    /// Drop finished executions older than this. Age counts from `finished_at` (from
    /// `created_at` for a finished record without one).
    pub max_age: Option<Duration>,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            keep: 10_000,
            max_age: Some(Duration::from_secs(7 * 86_400)),
        }
    }
}

/// Store failures. `Corrupt` means data on disk did not decode: it is reported, never
/// trusted.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("storage I/O failed: {0}")]
    Io(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("execution {0} does not exist")]
    NotFound(ExecutionId),
    #[error("the store is closed")]
    Closed,
    /// `Create` for an id that is already stored; the batch was not applied.
    #[error("execution {0} already exists")]
    AlreadyExists(ExecutionId),
    /// `Append` with a sequence number that is not the next one; the batch was not applied.
    #[error("journal of execution {execution}: expected seq {expected}, got {got}")]
    OutOfOrder {
        execution: ExecutionId,
        expected: u32,
        got: u32,
    },
    /// A write that breaks the journal's shape (e.g. `Create` whose fact is not `Started`).
    #[error("invalid write: {0}")]
    InvalidWrite(String),
}

/// A durable journal of executions.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Applies `batch` atomically and returns once it is durable. Concurrent callers are
    /// group-committed: many batches share one commit.
    ///
    /// A batch that breaks the journal's order (`NotFound`, `AlreadyExists`, `OutOfOrder`,
    /// `InvalidWrite`) is refused whole and nothing of it is written. After `Io` the outcome
    /// is unknown (the commit may have reached the disk): re-read before retrying.
    async fn write(&self, batch: Vec<StoreWrite>) -> Result<(), StoreError>;

    /// Whether [`Store::write_returning`] gives every applied batch back (a store that moves
    /// the batch through a channel and back has it anyway). `false` unless a store says so.
    fn returns_batches(&self) -> bool {
        false
    }

    /// [`Store::write`], giving the batch back when [`Store::returns_batches`] says so (the
    /// writes as they were given, once the outcome is known; always on `Ok`), otherwise an
    /// empty list. A writer that still needs a value it writes (the driver's final record)
    /// moves it in and takes it back instead of cloning it.
    async fn write_returning(
        &self,
        batch: Vec<StoreWrite>,
    ) -> (Result<(), StoreError>, Vec<StoreWrite>) {
        (self.write(batch).await, Vec::new())
    }

    /// Executions that are not finished (running and queued), oldest first, with their
    /// journals: what recovery replays after a restart.
    async fn unfinished(&self) -> Result<Vec<(ExecutionRecord, Vec<Fact>)>, StoreError>;

    async fn execution(&self, id: ExecutionId) -> Result<Option<ExecutionRecord>, StoreError>;

    /// The journal of one execution, in order.
    async fn journal(&self, id: ExecutionId) -> Result<Vec<Fact>, StoreError>;

    async fn executions(&self, query: &ExecutionQuery) -> Result<Vec<ExecutionRecord>, StoreError>;

    async fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// Every meta value whose key starts with `prefix`, in byte order of the keys. For small
    /// key spaces read on rare paths (a trigger's recovery looks up the de-duplication marks
    /// of one source with it); it reads them all at once.
    async fn meta_prefix(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError>;

    /// Removes finished executions (and their journals) beyond `retention`; returns how many.
    ///
    /// Finished executions are ordered by (`finished_at`, id); the oldest beyond `keep` and
    /// those older than `max_age` at `now` are removed. Never running or queued ones.
    async fn prune(&self, retention: Retention, now: Timestamp) -> Result<usize, StoreError>;
}

/// The first key after every key that starts with `prefix`, in byte order (`None`: no such
/// key, the range is open-ended): the prefix with its last character raised by one, after
/// dropping trailing characters that cannot be raised. For range scans by prefix.
pub fn prefix_end(prefix: &str) -> Option<String> {
    let mut end: Vec<char> = prefix.chars().collect();
    while let Some(last) = end.pop() {
        // The next scalar value; the surrogate gap is skipped.
        let next = (u32::from(last) + 1..=u32::from(char::MAX)).find_map(char::from_u32);
        if let Some(next) = next {
            end.push(next);
            return Some(end.into_iter().collect());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn a_prefix_ends_at_its_last_character_raised() {
        assert_eq!(prefix_end("dedupe/").as_deref(), Some("dedupe0"));
        assert_eq!(prefix_end("a\u{10FFFF}").as_deref(), Some("b"));
        assert_eq!(prefix_end("a\u{D7FF}").as_deref(), Some("a\u{E000}"));
        assert_eq!(prefix_end("\u{10FFFF}"), None);
        assert_eq!(prefix_end(""), None);
    }
}
