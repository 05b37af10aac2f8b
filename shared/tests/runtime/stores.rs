//! Test stores wrapping the memory store: a stale `unfinished()`, `Create`s held back.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use reactor_core::engine::{ExecutionId, ExecutionRecord, ExecutionStatus, Fact, Timestamp};
use reactor_core::store::{ExecutionQuery, MemoryStore, Retention, Store, StoreError, StoreWrite};

/// What `Store::unfinished` answers.
type Unfinished = Vec<(ExecutionRecord, Vec<Fact>)>;

/// `Store` for a test wrapper: the given methods, and the read side handed to its `inner`
/// store unchanged.
macro_rules! store_wrapper {
    ($wrapper:ty { $($method:item)* }) => {
        #[async_trait]
        impl Store for $wrapper {
            $($method)*
            async fn execution(&self, id: ExecutionId) -> Result<Option<ExecutionRecord>, StoreError> {
                self.inner.execution(id).await
            }
            async fn journal(&self, id: ExecutionId) -> Result<Vec<Fact>, StoreError> {
                self.inner.journal(id).await
            }
            async fn executions(
                &self,
                query: &ExecutionQuery,
            ) -> Result<Vec<ExecutionRecord>, StoreError> {
                self.inner.executions(query).await
            }
            async fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
                self.inner.meta(key).await
            }
            async fn meta_prefix(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
                self.inner.meta_prefix(prefix).await
            }
            async fn prune(&self, retention: Retention, now: Timestamp) -> Result<usize, StoreError> {
                self.inner.prune(retention, now).await
            }
        }
    };
}

/// A store whose `unfinished()` can be made to answer an old snapshot: the list a shared
/// store returned just before executions finished (as periodic adoption sees it).
pub(crate) struct StaleUnfinished {
    pub(crate) inner: MemoryStore,
    pub(crate) snapshot: Mutex<Option<Unfinished>>,
}

store_wrapper!(StaleUnfinished {
    async fn write(&self, batch: Vec<StoreWrite>) -> Result<(), StoreError> {
        self.inner.write(batch).await
    }
    async fn unfinished(&self) -> Result<Unfinished, StoreError> {
        let snapshot = self.snapshot.lock().unwrap().clone();
        match snapshot {
            Some(old) => Ok(old),
            None => self.inner.unfinished().await,
        }
    }
});

/// The memory store, holding back the writes of `Create`s with the status `held` until
/// released — and then applying each, or failing it as a broken disk would. Like the redb
/// store's thread, a write goes on once handed over, whether or not its caller still waits.
pub(crate) struct HeldCreate {
    inner: Arc<MemoryStore>,
    held: ExecutionStatus,
    /// Permits to let held writes go on; each carries whether the write succeeds.
    release: Arc<tokio::sync::Mutex<tokio::sync::mpsc::Receiver<bool>>>,
}

impl HeldCreate {
    pub(crate) fn new(held: ExecutionStatus) -> (HeldCreate, tokio::sync::mpsc::Sender<bool>) {
        let (release, receiver) = tokio::sync::mpsc::channel(4);
        let store = HeldCreate {
            inner: Arc::new(MemoryStore::new()),
            held,
            release: Arc::new(tokio::sync::Mutex::new(receiver)),
        };
        (store, release)
    }
}

store_wrapper!(HeldCreate {
    async fn write(&self, batch: Vec<StoreWrite>) -> Result<(), StoreError> {
        let held = batch.iter().any(|write| {
            matches!(write, StoreWrite::Create { record, .. } if record.status == self.held)
        });
        let (inner, release) = (self.inner.clone(), self.release.clone());
        tokio::spawn(async move {
            if held && !release.lock().await.recv().await.unwrap_or(true) {
                return Err(StoreError::Io("disk failed (test)".into()));
            }
            inner.write(batch).await
        })
        .await
        .expect("the write task ran")
    }
    async fn unfinished(&self) -> Result<Vec<(ExecutionRecord, Vec<Fact>)>, StoreError> {
        self.inner.unfinished().await
    }
});
