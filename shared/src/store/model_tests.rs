//! Property test: random batches against every store give the same answers as a plain model.
//!
//! The model is deliberately naive (copy the state, apply write by write, keep the copy only
//! if every write was valid) so that it shares nothing with the stores' validation.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::conformance::{append, create, id, record};
use super::{ExecutionQuery, MemoryStore, Retention, Store, StoreWrite};
use crate::engine::{ExecutionStatus, Timestamp};

const EXECUTIONS: u8 = 6;
const META_KEYS: u8 = 3;

#[derive(Clone, Debug)]
enum Op {
    Create(u8, ExecutionStatus),
    /// Appends at the next seq plus `skew` (0 is valid).
    Append(u8, u8),
    Update(u8, ExecutionStatus),
    Meta(u8, Option<u8>),
}

#[derive(Clone, Debug)]
enum Step {
    Batch(Vec<Op>),
    Prune(u8),
}

fn status() -> impl Strategy<Value = ExecutionStatus> {
    prop_oneof![
        Just(ExecutionStatus::Queued),
        Just(ExecutionStatus::Running),
        Just(ExecutionStatus::Succeeded),
        Just(ExecutionStatus::Failed),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => (0..EXECUTIONS, status()).prop_map(|(n, s)| Op::Create(n, s)),
        3 => (0..EXECUTIONS, prop_oneof![4 => Just(0u8), 1 => 1u8..3]).prop_map(|(n, k)| Op::Append(n, k)),
        1 => (0..EXECUTIONS, status()).prop_map(|(n, s)| Op::Update(n, s)),
        1 => (0..META_KEYS, proptest::option::of(any::<u8>())).prop_map(|(k, v)| Op::Meta(k, v)),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => proptest::collection::vec(op(), 1..4).prop_map(Step::Batch),
        1 => (0u8..4).prop_map(Step::Prune),
    ]
}

#[derive(Clone, Debug, Default, PartialEq)]
struct Model {
    /// n → (status, journal length)
    executions: BTreeMap<u8, (ExecutionStatus, u32)>,
    meta: BTreeMap<u8, u8>,
}

fn workflow(n: u8) -> &'static str {
    if n.is_multiple_of(2) { "even" } else { "odd" }
}

impl Model {
    /// Applies `ops` if all are valid; returns the writes and whether they are valid.
    fn batch(&mut self, ops: &[Op]) -> (Vec<StoreWrite>, bool) {
        let mut next = self.clone();
        let mut valid = true;
        let mut writes = Vec::new();
        for op in ops {
            match *op {
                Op::Create(n, s) => {
                    writes.push(create(record(id(n.into()), workflow(n), s)));
                    valid &= next.executions.insert(n, (s, 1)).is_none();
                }
                Op::Append(n, skew) => {
                    let len = next.executions.get(&n).map_or(1, |e| e.1);
                    writes.push(append(id(n.into()), len + u32::from(skew)));
                    match next.executions.get_mut(&n) {
                        Some(entry) if skew == 0 => entry.1 += 1,
                        _ => valid = false,
                    }
                }
                Op::Update(n, s) => {
                    writes.push(StoreWrite::Update(record(id(n.into()), workflow(n), s)));
                    match next.executions.get_mut(&n) {
                        Some(entry) => entry.0 = s,
                        None => valid = false,
                    }
                }
                Op::Meta(k, v) => {
                    writes.push(StoreWrite::PutMeta {
                        key: format!("k{k}"),
                        value: v.map(|v| vec![v]),
                    });
                    match v {
                        Some(v) => next.meta.insert(k, v),
                        None => next.meta.remove(&k),
                    };
                }
            }
        }
        if valid {
            *self = next;
        }
        (writes, valid)
    }

    /// Finished ones finish at their creation time (see `record`), so the oldest are the
    /// lowest `n`.
    fn prune(&mut self, keep: usize) -> usize {
        let finished: Vec<u8> = self
            .executions
            .iter()
            .filter(|(_, e)| e.0.is_finished())
            .map(|(n, _)| *n)
            .collect();
        let excess = finished.len().saturating_sub(keep);
        for n in &finished[..excess] {
            self.executions.remove(n);
        }
        excess
    }
}

/// Everything observable about the model's keys, read from a store.
async fn observe(store: &impl Store) -> Model {
    let mut model = Model::default();
    for n in 0..EXECUTIONS {
        if let Some(rec) = store.execution(id(n.into())).await.expect("execution") {
            let len = store.journal(id(n.into())).await.expect("journal").len();
            model
                .executions
                .insert(n, (rec.status, u32::try_from(len).expect("small")));
        }
    }
    for k in 0..META_KEYS {
        if let Some(v) = store.meta(&format!("k{k}")).await.expect("meta") {
            model.meta.insert(k, v[0]);
        }
    }
    let listed = store
        .executions(&ExecutionQuery::default())
        .await
        .expect("executions");
    assert_eq!(
        listed.len(),
        model.executions.len(),
        "executions() lists every record"
    );
    let unfinished = store.unfinished().await.expect("unfinished");
    let expected = model
        .executions
        .values()
        .filter(|e| !e.0.is_finished())
        .count();
    assert_eq!(unfinished.len(), expected, "unfinished()");
    model
}

async fn run(steps: &[Step], store: &impl Store) -> Result<(), TestCaseError> {
    let mut model = Model::default();
    for step in steps {
        match step {
            Step::Batch(ops) => {
                let (writes, valid) = model.batch(ops);
                let result = store.write(writes).await;
                prop_assert_eq!(result.is_ok(), valid, "{:?} → {:?}", ops, result);
            }
            Step::Prune(keep) => {
                let retention = Retention {
                    keep: usize::from(*keep),
                    max_age: None,
                };
                let removed = store.prune(retention, Timestamp(0)).await.expect("prune");
                prop_assert_eq!(removed, model.prune(usize::from(*keep)));
            }
        }
        prop_assert_eq!(&observe(store).await, &model);
    }
    Ok(())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn memory_store_matches_model(steps in proptest::collection::vec(step(), 1..16)) {
        runtime().block_on(run(&steps, &MemoryStore::new()))?;
    }

    #[cfg(feature = "redb")]
    #[test]
    fn redb_store_matches_model(steps in proptest::collection::vec(step(), 1..16)) {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = super::RedbStore::open(dir.path().join("model.redb"), super::RedbOptions::default())
            .expect("open");
        runtime().block_on(run(&steps, &store))?;
    }
}
