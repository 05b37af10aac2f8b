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

/// Undecodable data on disk is reported as `Corrupt`, never a panic.
#[tokio::test]
async fn undecodable_values_are_corrupt() {
    use crate::engine::ExecutionStatus;
    use crate::store::conformance::{create, id, record};
    use crate::store::{Store, StoreError};

    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("corrupt.redb");
    let cases: [&[u8]; 4] = [b"", b"\x01{not json", b"\x09{}", b"\x01{\"id\":1}"];
    for (n, bytes) in (1u64..).zip(cases) {
        {
            let db = ::redb::Database::create(&path).expect("create");
            super::tables::init(&db).expect("init");
            super::tables::put_raw_record(&db, id(n), bytes).expect("plant");
        }
        let store = RedbStore::open(&path, RedbOptions::default()).expect("open");
        let err = store.execution(id(n)).await.expect_err("bad record");
        assert!(matches!(err, StoreError::Corrupt(_)), "{err}");
        let err = store.journal(id(n)).await.expect_err("bad fact");
        assert!(matches!(err, StoreError::Corrupt(_)), "{err}");
        let err = store.unfinished().await.expect_err("bad unfinished");
        assert!(matches!(err, StoreError::Corrupt(_)), "{err}");
        // An update needs the old record: refused, and the store keeps working.
        let err = store
            .write(vec![crate::store::StoreWrite::Update(record(
                id(n),
                "w",
                ExecutionStatus::Failed,
            ))])
            .await
            .expect_err("update over a corrupt record");
        assert!(matches!(err, StoreError::Corrupt(_)), "{err}");
        store
            .write(vec![create(record(
                id(100 + n),
                "w",
                ExecutionStatus::Running,
            ))])
            .await
            .expect("other writes still work");
        store.close().await.expect("close");
    }
}
