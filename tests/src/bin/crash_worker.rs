//! A real process for the crash test: runs many multi-step executions against a redb journal
//! and is SIGKILLed at random moments by `tests/crash.rs`.
//!
//! Usage: `crash-worker STORE LEDGER TOTAL INCARNATION`, STORE being a redb file path,
//! `sqlite:PATH` (the hub's SQL store on a SQLite file) or `postgres://…` (the hub's SQL store
//! on PostgreSQL; each incarnation is a new hub instance with a short lease, and adopts what
//! killed ones left once their lease lapses). It recovers what the journal holds,
//! submits executions until TOTAL exist, waits for all to finish, prints `done` and exits 0.
//! The `ledger` action appends `INCARNATION KEY ATTEMPT` to LEDGER and fsyncs: a real side
//! effect whose duplicates the test can count.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use async_trait::async_trait;
use reactor_core::action::{
    Action, ActionContext, ActionError, ActionSpec, Effect, builtin_registry, builtin_specs,
};
use reactor_core::dsl::Parser;
use reactor_core::engine::{Environment, Event, Runtime, RuntimeConfig};
use reactor_core::store::{ExecutionQuery, RedbOptions, RedbStore, Retention, Store};
use reactor_hub::db::{Database, HubInstance, SqlStore};
use serde_json::{Value, json};

static LEDGER_SPEC: ActionSpec = ActionSpec {
    kind: "ledger",
    description: "appends the idempotency key to a file and fsyncs",
    effect: Effect::SideEffect,
    settings: &[],
};

struct Ledger {
    file: std::sync::Mutex<std::fs::File>,
    incarnation: u32,
}

#[async_trait]
impl Action for Ledger {
    fn spec(&self) -> &'static ActionSpec {
        &LEDGER_SPEC
    }
    async fn execute(&self, _input: Value, context: &ActionContext) -> Result<Value, ActionError> {
        let line = format!(
            "{} {} {}\n",
            self.incarnation, context.idempotency_key, context.attempt
        );
        let mut file = self
            .file
            .lock()
            .map_err(|_| ActionError::permanent("ledger lock poisoned"))?;
        file.write_all(line.as_bytes())
            .map_err(|e| ActionError::retryable(e.to_string()))?;
        file.sync_data()
            .map_err(|e| ActionError::retryable(e.to_string()))?;
        Ok(json!({ "key": context.idempotency_key }))
    }
}

/// Five steps: three side effects, a pure step, a durable timer and a parallel fan-out.
pub const WORKFLOW: &str = r#"
reactor: 1
name: crash
steps:
  - id: one
    action: ledger
  - id: compute
    action: transform
    with: { value: { n: 1 } }
  - id: nap
    sleep: 5ms
  - id: fan
    parallel:
      branches:
        left:
          - id: two
            action: ledger
        right:
          - id: three
            action: ledger
"#;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, db, ledger, total, incarnation] = args.as_slice() else {
        anyhow::bail!("usage: crash-worker STORE LEDGER TOTAL INCARNATION");
    };
    let total: usize = total.parse().context("TOTAL")?;
    let incarnation: u32 = incarnation.parse().context("INCARNATION")?;
    let (store, journal) = open_store(db).await?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(ledger)
        .context("open ledger")?;
    let mut actions = builtin_registry(Default::default());
    actions.register(Arc::new(Ledger {
        file: std::sync::Mutex::new(file),
        incarnation,
    }));
    let mut specs = builtin_specs();
    specs.push(&LEDGER_SPEC);
    let workflow = Parser::new()
        .with_actions(specs)
        .parse("crash.yaml", WORKFLOW)
        .map_err(|d| anyhow::anyhow!("{d:?}"))?;
    let config = RuntimeConfig {
        retention: Retention {
            keep: usize::MAX,
            max_age: None,
        },
        prune_every: 0,
        ..RuntimeConfig::default()
    };
    let runtime = Runtime::new(store.clone(), actions, Environment::empty(), config);
    runtime.load(workflow);
    runtime.recover().await.context("recover")?;
    let mut last_recover = std::time::Instant::now();

    let existing = store
        .executions(&ExecutionQuery {
            limit: total + 1,
            ..ExecutionQuery::default()
        })
        .await?
        .len();
    let mut submitting = tokio::task::JoinSet::new();
    for n in existing..total {
        let runtime = runtime.clone();
        submitting.spawn(async move {
            runtime
                .submit(
                    "crash",
                    Event::new("manual", "crash-worker", json!({ "n": n })),
                    json!({}),
                )
                .await
        });
        if submitting.len() >= 32 {
            submitting
                .join_next()
                .await
                .context("join")?
                .context("submit task")?
                .context("submit")?;
        }
    }
    while let Some(result) = submitting.join_next().await {
        result.context("submit task")?.context("submit")?;
    }
    loop {
        let all = store
            .executions(&ExecutionQuery {
                limit: total + 1,
                ..ExecutionQuery::default()
            })
            .await?;
        if all.len() >= total && all.iter().all(|r| r.status.is_finished()) {
            break;
        }
        // On PostgreSQL, executions of killed incarnations are adopted once their lease
        // lapses: recover periodically, as the hub does.
        if matches!(journal, Journal::Sql { .. })
            && last_recover.elapsed() > Duration::from_millis(200)
        {
            runtime.recover().await.context("recover")?;
            last_recover = std::time::Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    runtime.shutdown().await;
    match journal {
        Journal::Redb(redb) => redb.close().await?,
        Journal::Sql { instance, .. } => instance.release().await?,
    }
    println!("done");
    Ok(())
}

/// The store behind STORE, and what closing it needs.
enum Journal {
    Redb(Arc<RedbStore>),
    Sql {
        instance: Arc<HubInstance>,
        _heartbeat: tokio::task::JoinHandle<()>,
    },
}

/// A lease this short lets the next incarnations adopt a killed one's executions quickly.
const LEASE: Duration = Duration::from_millis(1_000);

async fn open_store(spec: &str) -> Result<(Arc<dyn Store>, Journal)> {
    let db = if let Some(path) = spec.strip_prefix("sqlite:") {
        Database::open_sqlite(std::path::Path::new(path)).await?
    } else if spec.starts_with("postgres://") {
        Database::open_postgres(spec).await?
    } else {
        let redb = Arc::new(RedbStore::open(spec, RedbOptions::default()).context("open journal")?);
        return Ok((redb.clone(), Journal::Redb(redb)));
    };
    db.migrate().await.context("migrate")?;
    let instance = Arc::new(
        HubInstance::register(&db, LEASE)
            .await
            .context("register")?,
    );
    let heartbeat = instance.spawn_heartbeat(LEASE / 4);
    let store = Arc::new(SqlStore::new(db, instance.id()));
    Ok((
        store,
        Journal::Sql {
            instance,
            _heartbeat: heartbeat,
        },
    ))
}
