//! Shared by the source tests: a real runtime over the memory store, workflows from YAML,
//! triggers run the way the hub runs them.

#![allow(dead_code, reason = "each test file uses part of this")]

use std::sync::Arc;
use std::time::Duration;

use reactor_core::action::builtin_registry;
use reactor_core::engine::{Environment, Event, ExecutionRecord, Fact, Runtime, RuntimeConfig};
use reactor_core::flow::TriggerSpec;
use reactor_core::store::{ExecutionQuery, MemoryStore, Store};
use reactor_core::trigger::{Trigger, TriggerContext, TriggerError};
use reactor_hub_triggers::Connections;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A unique suffix for names on shared servers (tests run in parallel, also with others).
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        ulid::Ulid::new().to_string().to_lowercase()
    )
}

/// A runtime over a fresh memory store, with `yaml` loaded.
pub fn runtime(yaml: &str) -> Runtime {
    runtime_over(Arc::new(MemoryStore::new()), yaml)
}

pub fn runtime_over(store: Arc<dyn Store>, yaml: &str) -> Runtime {
    let runtime = Runtime::new(
        store,
        builtin_registry(Default::default()),
        Environment::empty(),
        RuntimeConfig::default(),
    );
    let workflow = reactor_core::dsl::parse_workflow("test.yaml", yaml)
        .unwrap_or_else(|d| panic!("workflow does not parse: {d:?}"));
    runtime.load(workflow);
    runtime
}

/// The first trigger entry of the workflow `name`.
pub fn spec(runtime: &Runtime, name: &str) -> TriggerSpec {
    runtime.workflow(name, None).unwrap().triggers[0].clone()
}

/// Builds the trigger of `name` with `connections`.
pub fn build(runtime: &Runtime, name: &str, connections: &Connections) -> Box<dyn Trigger> {
    reactor_hub_triggers::build(&spec(runtime, name), connections)
        .unwrap()
        .expect("a hub trigger")
}

/// Starts the only trigger of `yaml` (workflow `orders`) against a server that is not there,
/// waits until it reports itself unhealthy and returns its last error.
pub async fn unhealthy_error(yaml: &str) -> String {
    let runtime = runtime(yaml);
    let running = Running::start(
        &runtime,
        "orders",
        build(&runtime, "orders", &Connections::default()),
    );
    let stats = running.context.stats.clone();
    assert!(
        eventually(|| {
            let s = stats.clone();
            async move { !s.snapshot().healthy() }
        })
        .await,
        "the trigger never became unhealthy"
    );
    let (_, error) = stats
        .snapshot()
        .last_error
        .expect("an unhealthy trigger has an error");
    running.stop().await.unwrap();
    error
}

/// A trigger running on its own task.
pub struct Running {
    pub context: TriggerContext,
    pub handle: JoinHandle<Result<(), TriggerError>>,
}

impl Running {
    pub fn start(runtime: &Runtime, workflow: &str, trigger: Box<dyn Trigger>) -> Running {
        let context = TriggerContext::new(workflow, runtime.clone(), CancellationToken::new());
        let handle = tokio::spawn(trigger.run(context.clone()));
        Running { context, handle }
    }

    /// Waits (at most a minute) for the trigger to return on its own: a crash test's
    /// trigger made to stop before acknowledging.
    pub async fn ended(self) -> Result<(), TriggerError> {
        tokio::time::timeout(Duration::from_secs(60), self.handle)
            .await
            .expect("the trigger stops on its own")
            .expect("the trigger task does not panic")
    }

    /// Cancels and waits for the trigger to return.
    pub async fn stop(self) -> Result<(), TriggerError> {
        self.context.cancel.cancel();
        tokio::time::timeout(Duration::from_secs(20), self.handle)
            .await
            .expect("the trigger stops when cancelled")
            .expect("the trigger task does not panic")
    }
}

/// Executions of `workflow`, oldest first.
pub async fn executions(runtime: &Runtime, workflow: &str) -> Vec<ExecutionRecord> {
    let mut list = runtime
        .store()
        .executions(&ExecutionQuery {
            workflow: Some(workflow.to_string()),
            ..ExecutionQuery::default()
        })
        .await
        .unwrap();
    list.reverse();
    list
}

/// The events that started `workflow`'s executions, oldest first.
pub async fn events(runtime: &Runtime, workflow: &str) -> Vec<Event> {
    let mut out = Vec::new();
    for record in executions(runtime, workflow).await {
        let journal = runtime.store().journal(record.id).await.unwrap();
        if let Some(Fact::Started { event, .. }) = journal.first() {
            out.push(event.clone());
        }
    }
    out
}

/// Waits until `workflow` has at least `count` executions; returns their events.
pub async fn wait_events(runtime: &Runtime, workflow: &str, count: usize) -> Vec<Event> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let list = events(runtime, workflow).await;
        if list.len() >= count || tokio::time::Instant::now() >= deadline {
            return list;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `check` until it is true or 30 s pass; returns its last answer.
pub async fn eventually<F, Fut>(mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A 1-step workflow named `name` with `trigger` (YAML flow mapping of the trigger entry).
pub fn workflow(name: &str, trigger: &str) -> String {
    format!(
        "reactor: 1\nname: {name}\ntriggers:\n  - {trigger}\nsteps:\n  - action: transform\n    with: {{ value: \"${{{{ event.data }}}}\" }}\n"
    )
}

/// A TCP relay to a real server whose connections a test can cut (servers like NATS offer
/// no per-connection kill to an unprivileged client).
pub struct Relay {
    pub port: u16,
    connections: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
    accept: JoinHandle<()>,
}

impl Relay {
    pub async fn start(upstream: &str) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let upstream = upstream.to_string();
        let list = connections.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let upstream = upstream.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                list.lock().unwrap().push(task.abort_handle());
            }
        });
        Relay {
            port,
            connections,
            accept,
        }
    }

    /// Drops every relayed connection (both ends see the connection close).
    pub fn cut(&self) -> usize {
        let mut list = self.connections.lock().unwrap();
        let live = list.iter().filter(|t| !t.is_finished()).count();
        for task in list.drain(..) {
            task.abort();
        }
        live
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}
