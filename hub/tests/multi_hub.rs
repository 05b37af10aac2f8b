//! Several hubs on one PostgreSQL database: a hub that dies mid-work has its executions
//! adopted by another (each completes once, finished steps never re-run), two hubs adopting
//! at once never take the same execution, and leadership moves when the leader goes.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use reactor_core::action::{
    Action, ActionContext, ActionError, ActionSpec, Effect, builtin_registry, builtin_specs,
};
use reactor_core::dsl::Parser;
use reactor_core::engine::{
    Environment, Event, ExecutionStatus, Fact, Runtime, RuntimeConfig, Submission,
};
use reactor_core::store::conformance::{create, id, record};
use reactor_core::store::{Store, StoreWrite};
use reactor_hub::db::testing::TempPostgres;
use reactor_hub::db::{Database, ExecutionFilter, HubInstance, Leader, SqlStore};
use serde_json::{Value, json};

const LEASE: Duration = Duration::from_millis(1_500);

static COUNT_SPEC: ActionSpec = ActionSpec {
    kind: "count",
    description: "records which hub ran which idempotency key",
    effect: Effect::SideEffect,
    settings: &[],
};

/// (idempotency key) → the hubs that ran it, in order.
type Runs = Arc<Mutex<HashMap<String, Vec<&'static str>>>>;

struct Count {
    hub: &'static str,
    runs: Runs,
}

#[async_trait]
impl Action for Count {
    fn spec(&self) -> &'static ActionSpec {
        &COUNT_SPEC
    }
    async fn execute(&self, _input: Value, context: &ActionContext) -> Result<Value, ActionError> {
        self.runs
            .lock()
            .map_err(|_| ActionError::permanent("poisoned"))?
            .entry(context.idempotency_key.clone())
            .or_default()
            .push(self.hub);
        Ok(json!({}))
    }
}

const WORKFLOW: &str = r#"
reactor: 1
name: adopt
steps:
  - id: first
    action: count
  - id: nap
    sleep: 3s
  - id: second
    action: count
"#;

struct Hub {
    runtime: Runtime,
    store: Arc<SqlStore>,
    _instance: Arc<HubInstance>,
    heartbeat: tokio::task::JoinHandle<()>,
}

async fn hub(url: &str, name: &'static str, runs: &Runs) -> Hub {
    let db = Database::open(Some(url), std::path::Path::new("unused"))
        .await
        .expect("open");
    db.migrate().await.expect("migrate");
    let instance = Arc::new(HubInstance::register(&db, LEASE).await.expect("register"));
    let heartbeat = instance.spawn_heartbeat(LEASE / 3);
    let store = Arc::new(SqlStore::new(db, instance.id()));
    let mut actions = builtin_registry(Default::default());
    actions.register(Arc::new(Count {
        hub: name,
        runs: Arc::clone(runs),
    }));
    let mut specs = builtin_specs();
    specs.push(&COUNT_SPEC);
    let workflow = Parser::new()
        .with_actions(specs)
        .parse("adopt.yaml", WORKFLOW)
        .expect("workflow");
    let runtime = Runtime::new(
        store.clone(),
        actions,
        Environment::empty(),
        RuntimeConfig::default(),
    );
    runtime.load(workflow);
    Hub {
        runtime,
        store,
        _instance: instance,
        heartbeat,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_hubs_executions_are_adopted_and_complete_once() {
    const EXECUTIONS: usize = 40;
    let database = TempPostgres::create("multihub").await.expect("database");
    let runs: Runs = Arc::default();
    let a = hub(database.url(), "a", &runs).await;
    let b = hub(database.url(), "b", &runs).await;
    let mut ids = Vec::new();
    for n in 0..EXECUTIONS {
        let submitted = a
            .runtime
            .submit(
                "adopt",
                Event::new("manual", "test", json!({ "n": n })),
                json!({}),
            )
            .await
            .expect("submit");
        let Submission::Accepted(id) = submitted else {
            panic!("not accepted: {submitted:?}")
        };
        ids.push(id);
    }
    // Hub A dies mid-work, once at least half of the first steps ran (a loaded machine may
    // be slow to start them): its executions are asleep in `nap`; its lease stops.
    let firsts = || {
        runs.lock()
            .unwrap()
            .keys()
            .filter(|key| key.contains("first"))
            .count()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while firsts() < EXECUTIONS / 2 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    a.heartbeat.abort();
    a.runtime.shutdown().await;
    let a_store = Arc::clone(&a.store);
    drop(a);
    // What A had finished, taken while nobody writes.
    let mut finished_by_a = HashSet::new();
    for id in &ids {
        for fact in a_store.journal(*id).await.expect("journal") {
            if let Fact::EffectFinished { key, .. } = fact
                && let Some(step) = key.strip_suffix("@1")
                && ["first", "second"].contains(&step)
            {
                finished_by_a.insert(format!("{id}:{step}"));
            }
        }
    }
    // Died mid-work: most had their first step done and were asleep; none had finished.
    assert!(
        finished_by_a.len() >= EXECUTIONS / 2 && finished_by_a.len() <= EXECUTIONS,
        "{} steps finished by A",
        finished_by_a.len()
    );
    // B adopts nothing while A's lease holds...
    assert_eq!(b.runtime.recover().await.expect("recover"), 0);
    // ...and everything once it lapses; B recovers periodically, as the hub does.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        b.runtime.recover().await.expect("recover");
        let done = b
            .store
            .list(&ExecutionFilter {
                status: Some(ExecutionStatus::Succeeded),
                ..ExecutionFilter::default()
            })
            .await
            .expect("list");
        if done.len() == EXECUTIONS {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {EXECUTIONS} completed",
            done.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let runs = runs.lock().expect("runs").clone();
    for id in &ids {
        for step in ["first", "second"] {
            let key = format!("{id}:{step}");
            let ran = &runs[&key];
            if finished_by_a.contains(&key) {
                assert_eq!(ran, &vec!["a"], "{key}: a finished step never re-runs");
            } else {
                // Not finished when A died: B runs it once (after A, if A had it in flight).
                assert_eq!(ran.last(), Some(&"b"), "{key}: {ran:?}");
                assert_eq!(
                    ran.iter().filter(|h| **h == "b").count(),
                    1,
                    "{key}: {ran:?}"
                );
                assert!(ran.len() <= 2, "{key}: {ran:?}");
            }
        }
        let record = b.store.execution(*id).await.expect("read").expect("exists");
        assert_eq!(record.status, ExecutionStatus::Succeeded);
        let journal = b.store.journal(*id).await.expect("journal");
        let ends = journal
            .iter()
            .filter(|f| matches!(f, Fact::EffectFinished { .. }))
            .count();
        assert_eq!(ends, 2, "each step's end journaled once");
    }
    b.runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hubs_adopting_at_once_never_take_the_same_execution() {
    const ORPHANS: u64 = 300;
    let database = TempPostgres::create("claim").await.expect("database");
    let db = Database::open(Some(database.url()), std::path::Path::new("unused"))
        .await
        .expect("open");
    db.migrate().await.expect("migrate");
    // A dead hub (its lease already lapsed) left orphans.
    let dead = HubInstance::register(&db, Duration::from_millis(1))
        .await
        .expect("register");
    let orphaned = SqlStore::new(db.clone(), dead.id());
    let batch: Vec<StoreWrite> = (0..ORPHANS)
        .map(|n| create(record(id(n), "w", ExecutionStatus::Running)))
        .collect();
    orphaned.write(batch).await.expect("write");
    tokio::time::sleep(Duration::from_millis(20)).await;
    // Live hubs whose leases outlast the test (no heartbeat here): what is raced for is
    // the dead hub's orphans, never each other's.
    let live = Duration::from_secs(120);
    let b_instance = HubInstance::register(&db, live).await.expect("register");
    let c_instance = HubInstance::register(&db, live).await.expect("register");
    let b = SqlStore::new(db.clone(), b_instance.id());
    let c = SqlStore::new(db.clone(), c_instance.id());
    let mut taken_b = HashSet::new();
    let mut taken_c = HashSet::new();
    // Several rounds racing: each claim returns the caller's own plus newly adopted ones.
    for _ in 0..5 {
        let (by_b, by_c) = tokio::join!(b.unfinished(), c.unfinished());
        taken_b.extend(by_b.expect("b").into_iter().map(|(r, _)| r.id));
        taken_c.extend(by_c.expect("c").into_iter().map(|(r, _)| r.id));
    }
    assert!(taken_b.is_disjoint(&taken_c), "an execution adopted twice");
    assert_eq!(taken_b.len() + taken_c.len(), ORPHANS as usize);
    // The dead hub's late writes are refused (fenced).
    let late = orphaned
        .write(vec![reactor_core::store::conformance::append(id(0), 1)])
        .await;
    assert!(late.is_err(), "a hub that lost its lease cannot write");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leadership_moves_when_the_leader_goes() {
    let database = TempPostgres::create("leader").await.expect("database");
    let db = Database::open(Some(database.url()), std::path::Path::new("unused"))
        .await
        .expect("open");
    let retry = Duration::from_millis(100);
    let first = Leader::start(&db, "first", retry);
    tokio::time::timeout(Duration::from_secs(10), first.until_leading())
        .await
        .expect("first leads");
    let second = Leader::start(&db, "second", retry);
    let mut seen = second.watch();
    tokio::time::timeout(
        Duration::from_secs(10),
        seen.wait_for(|s| s.leader.as_deref() == Some("first")),
    )
    .await
    .expect("second sees first leading")
    .expect("watch");
    assert!(!second.is_leader());
    assert!(first.is_leader());
    drop(first);
    tokio::time::timeout(Duration::from_secs(10), second.until_leading())
        .await
        .expect("second takes over");
    assert_eq!(second.watch().borrow().leader.as_deref(), Some("second"));
}
