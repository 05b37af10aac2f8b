//! RedbStore: the conformance suite, redb-specific checks, fault injection and crash tests.

use std::path::PathBuf;

use async_trait::async_trait;

use super::{RedbOptions, RedbStore};
use crate::store::conformance::Harness;

/// Fresh stores in a temporary directory; `reopen` drops the store and opens its file again.
#[derive(Debug)]
pub(super) struct RedbHarness {
    dir: tempfile::TempDir,
    count: usize,
    current: Option<PathBuf>,
}

impl RedbHarness {
    pub(super) fn new() -> RedbHarness {
        RedbHarness {
            dir: tempfile::tempdir().expect("temp dir"),
            count: 0,
            current: None,
        }
    }
}

#[async_trait]
impl Harness for RedbHarness {
    type Store = RedbStore;
    async fn fresh(&mut self) -> RedbStore {
        self.count += 1;
        let path = self.dir.path().join(format!("journal-{}.redb", self.count));
        self.current = Some(path.clone());
        RedbStore::open(path, RedbOptions::default()).expect("open")
    }
    async fn reopen(&mut self, store: RedbStore) -> Option<RedbStore> {
        store.close().await.expect("close");
        drop(store);
        let path = self.current.clone()?;
        Some(RedbStore::open(path, RedbOptions::default()).expect("reopen"))
    }
}

mod conformance {
    crate::store_conformance_tests!(super::RedbHarness::new());
}
