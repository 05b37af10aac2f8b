//! ActiveWorkflows over the memory store: versions, replacement, removal, trigger tasks.

use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::store::{Store, StoreError};
use crate::trigger::testing::{memory, runtime, wait_for};
use crate::trigger::{LightTriggers, TaskState};

fn active(store: Arc<dyn Store>) -> ActiveWorkflows {
    let runtime = runtime(store, &[]);
    let events = Arc::new(EventRouter::new(None));
    events.attach(runtime.clone());
    ActiveWorkflows::new(
        runtime.clone(),
        Arc::new(HttpRoutes::new(runtime)),
        events,
        Arc::new(Supervisor::default()),
        Arc::new(LightTriggers),
    )
    .with_meta_prefix("test.workflow")
}

fn text(name: &str, version: u32, trigger: &str, value: u32) -> String {
    format!(
        "reactor: 1\nname: {name}\nversion: {version}\ntriggers: [{trigger}]\nsteps:\n  - action: transform\n    with: {{ value: {value} }}\n"
    )
}

fn parse(text: &str) -> Workflow {
    crate::dsl::parse_workflow("t.yaml", text).unwrap_or_else(|d| panic!("{d:?}"))
}

async fn install(set: &ActiveWorkflows, text: &str, origin: Origin) -> Installed {
    set.install(parse(text), text, origin).await.unwrap()
}

#[tokio::test]
async fn versions_follow_the_text_and_survive_a_restart() {
    let store = memory();
    let file = Origin::File("/w/a.yaml".into());
    let set = active(store.clone());
    let v1 = text("a", 1, "{ http: { path: /a } }", 1);
    assert_eq!(install(&set, &v1, file.clone()).await, Installed::New(1));
    assert_eq!(
        install(&set, &v1, file.clone()).await,
        Installed::Unchanged(1)
    );
    // Changed text, `version` not grown: bumped.
    let edited = text("a", 1, "{ http: { path: /a } }", 2);
    assert_eq!(
        install(&set, &edited, file.clone()).await,
        Installed::New(2)
    );
    // A grown `version` is taken as it is.
    let v5 = text("a", 5, "{ http: { path: /a } }", 3);
    assert_eq!(install(&set, &v5, file.clone()).await, Installed::New(5));
    assert_eq!(set.version("a"), Some(5));
    assert_eq!(set.list().len(), 1);
    assert_eq!(set.list()[0].version, 5);
    // Every version stays loaded for running executions.
    for version in [1, 2, 5] {
        assert!(set.runtime().workflow("a", Some(version)).is_some());
    }
    assert_eq!(
        store.meta("test.workflow.a.v2").await.unwrap().as_deref(),
        Some(edited.as_bytes())
    );

    // A new process over the same store: the same text keeps its version; new text bumps.
    let again = active(store.clone());
    assert_eq!(install(&again, &v5, file.clone()).await, Installed::New(5));
    let again = active(store);
    assert_eq!(install(&again, &edited, file).await, Installed::New(6));
}

#[tokio::test]
async fn another_origin_replaces_and_remove_stops_routing() {
    let set = active(memory());
    let body = text("b", 1, "{ http: { path: /b } }", 1);
    install(&set, &body, Origin::Embedded("b.yaml".into())).await;
    assert_eq!(set.origin("b"), Some(Origin::Embedded("b.yaml".into())));
    assert_eq!(set.routes().stats().len(), 1);
    let api = Origin::Api("deploy-1".into());
    assert_eq!(install(&set, &body, api.clone()).await, Installed::New(1));
    assert_eq!(set.origins(), vec![("b".to_string(), api)]);
    let triggers = set.triggers();
    assert_eq!(triggers.len(), 1);
    assert_eq!(
        (triggers[0].kind, triggers[0].task.as_deref()),
        ("http", None)
    );
    assert!(set.remove("b").await);
    assert!(!set.remove("b").await);
    assert!(!set.is_active("b"));
    assert!(set.routes().stats().is_empty());
    assert!(set.list().is_empty());
}

#[tokio::test]
async fn trigger_tasks_run_only_once_started_and_stop_on_replace() {
    let set = active(memory());
    let ticking = text("c", 1, "{ interval: { every: 50ms } }", 1);
    install(&set, &ticking, Origin::Database("c".into())).await;
    let task = set.triggers()[0].task.clone().unwrap();
    assert_eq!(task, "trigger c#0");
    assert!(set.supervisor().names().is_empty(), "not live before start");
    set.start();
    assert_eq!(set.supervisor().names(), vec![task]);
    let runs = wait_for(set.runtime(), "c", 2, Duration::from_secs(10)).await;
    assert!(runs.len() >= 2, "interval fired {} times", runs.len());
    // Replaced by a version without a task: the old task is stopped.
    install(
        &set,
        &text("c", 2, "{ http: { path: /c } }", 1),
        Origin::Database("c".into()),
    )
    .await;
    assert!(set.supervisor().names().is_empty());
    // A new install while live starts its task at once.
    install(&set, &text("d", 1, "startup", 1), Origin::Api("x".into())).await;
    assert_eq!(set.supervisor().names(), ["trigger d#0"]);
    assert_eq!(
        wait_for(set.runtime(), "d", 1, Duration::from_secs(10))
            .await
            .len(),
        1
    );
    let states = set.supervisor().tasks();
    assert!(matches!(
        states[0].1,
        TaskState::Running | TaskState::Finished
    ));
    set.supervisor().shutdown(Duration::from_secs(1)).await;
    set.runtime().shutdown().await;
}

#[tokio::test]
async fn a_trigger_the_factory_cannot_build_is_skipped() {
    let runtime = runtime(memory(), &[]);
    let refuse: Arc<dyn TriggerFactory> = Arc::new(
        |_: &str, _: usize, spec: &crate::flow::TriggerSpec| match spec.kind {
            TriggerKind::Startup => Err(crate::trigger::TriggerError::Unsupported("startup")),
            _ => crate::trigger::build_light(spec),
        },
    );
    let set = ActiveWorkflows::new(
        runtime.clone(),
        Arc::new(HttpRoutes::new(runtime.clone())),
        Arc::new(EventRouter::new(None)),
        Arc::new(Supervisor::default()),
        refuse,
    );
    install(&set, &text("e", 1, "startup", 1), Origin::Api("x".into())).await;
    assert!(set.is_active("e"));
    assert_eq!(set.triggers()[0].task, None);
    set.start();
    assert!(set.supervisor().names().is_empty());
}

#[tokio::test]
async fn needed_versions_load_from_the_store() {
    let store = memory();
    let set = active(store.clone());
    let sleeping = |value: u32| {
        format!(
            "reactor: 1\nname: f\nversion: 1\ntriggers: [{{ http: {{ path: /f }} }}]\nsteps:\n  - sleep: 1h\n  - action: transform\n    with: {{ value: {value} }}\n"
        )
    };
    let v1 = sleeping(1);
    install(&set, &v1, Origin::File("/w/f.yaml".into())).await;
    let event = crate::engine::Event::new("t", "s", serde_json::json!({}));
    set.runtime()
        .submit("f", event, serde_json::json!({}))
        .await
        .unwrap();
    set.runtime().shutdown().await;
    drop(set);

    // The file changed while the process was down: the new process activates v2 and loads
    // v1's stored text for the unfinished execution.
    let fresh = active(store);
    let v2 = sleeping(2);
    assert_eq!(
        install(&fresh, &v2, Origin::File("/w/f.yaml".into())).await,
        Installed::New(2)
    );
    assert!(fresh.runtime().workflow("f", Some(1)).is_none());
    fresh.load_needed_versions().await.unwrap();
    let loaded = fresh.runtime().workflow("f", Some(1)).expect("v1 loaded");
    assert_eq!(loaded.version, 1);
    assert_eq!(fresh.list()[0].version, 2, "v1 is loaded, not active");
    fresh.runtime().shutdown().await;
}

/// Counts durable writes (each is one commit, one fsync on redb).
#[derive(Debug, Default)]
struct CountingStore {
    inner: crate::store::MemoryStore,
    writes: std::sync::atomic::AtomicUsize,
}

#[async_trait::async_trait]
impl Store for CountingStore {
    async fn write(&self, batch: Vec<crate::store::StoreWrite>) -> Result<(), StoreError> {
        self.writes
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.write(batch).await
    }
    async fn unfinished(
        &self,
    ) -> Result<Vec<(crate::engine::ExecutionRecord, Vec<crate::engine::Fact>)>, StoreError> {
        self.inner.unfinished().await
    }
    async fn execution(
        &self,
        id: crate::engine::ExecutionId,
    ) -> Result<Option<crate::engine::ExecutionRecord>, StoreError> {
        self.inner.execution(id).await
    }
    async fn journal(
        &self,
        id: crate::engine::ExecutionId,
    ) -> Result<Vec<crate::engine::Fact>, StoreError> {
        self.inner.journal(id).await
    }
    async fn executions(
        &self,
        query: &crate::store::ExecutionQuery,
    ) -> Result<Vec<crate::engine::ExecutionRecord>, StoreError> {
        self.inner.executions(query).await
    }
    async fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.meta(key).await
    }
    async fn meta_prefix(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.inner.meta_prefix(prefix).await
    }
    async fn prune(
        &self,
        retention: crate::store::Retention,
        now: crate::engine::Timestamp,
    ) -> Result<usize, StoreError> {
        self.inner.prune(retention, now).await
    }
}

#[tokio::test]
async fn a_start_records_all_new_versions_in_one_write_and_a_restart_in_none() {
    let store = Arc::new(CountingStore::default());
    let writes = || store.writes.load(std::sync::atomic::Ordering::SeqCst);
    let batch = |texts: &[String]| -> Vec<(Workflow, String, Origin)> {
        texts
            .iter()
            .enumerate()
            .map(|(i, t)| {
                (
                    parse(t),
                    t.clone(),
                    Origin::File(format!("/w/{i}.yaml").into()),
                )
            })
            .collect()
    };
    let texts: Vec<String> = (0..10)
        .map(|i| text(&format!("w{i}"), 1, "{ http: { path: /x } }", i))
        .collect();
    let set = active(store.clone());
    let installed = set.install_many(batch(&texts)).await.unwrap();
    assert_eq!(installed, vec![Installed::New(1); 10]);
    assert_eq!(writes(), 1, "ten new versions, one write");
    assert_eq!(set.list().len(), 10);

    // A restart with the same texts: every version is stored already.
    let again = active(store.clone());
    again.install_many(batch(&texts)).await.unwrap();
    assert_eq!(writes(), 1, "nothing new, nothing written");
    assert_eq!(again.version("w3"), Some(1));

    // One changed text: one write, one bump; the rest unchanged.
    let mut changed = texts.clone();
    changed[3] = text("w3", 1, "{ http: { path: /x } }", 99);
    let installed = again.install_many(batch(&changed)).await.unwrap();
    assert_eq!(installed[3], Installed::New(2));
    assert_eq!(installed[4], Installed::Unchanged(1));
    assert_eq!(writes(), 2);
    assert_eq!(
        store.meta("test.workflow.w3.v2").await.unwrap().as_deref(),
        Some(changed[3].as_bytes())
    );
}
