//! What keeps several hubs on one database in step: the workflows each one runs follow the
//! database, and executions of a hub that died are adopted by the others.
//!
//! - **Workflow sync** (every [`SYNC_EVERY`]): a workflow deployed, changed or deleted through
//!   one hub's API is installed or removed on the others, so every hub serves the same
//!   `http` triggers behind a load balancer. Only differences are applied (an unchanged
//!   workflow keeps its running triggers).
//! - **Adoption** (every [`ADOPT_EVERY`], half the instance lease): `Runtime::recover` over
//!   the SQL journal claims the unfinished executions whose owner's lease expired and resumes
//!   them from their journals; this hub's own executions are skipped (they are running or
//!   queued here). Versions such executions need are loaded first.
//! - **Cancels** (every [`CANCELS_EVERY`]): cancel requests the API recorded for executions
//!   it could not reach ([`crate::db::cancels`]) are delivered by the hub that runs them.
//!
//! On SQLite (one hub per database) both find nothing new; the loop is cheap.

use std::time::Duration;

use anyhow::Context;
use reactor_core::deploy::Origin;

use super::HubState;

/// How often the workflows are compared with the database.
pub const SYNC_EVERY: Duration = Duration::from_millis(2_500);
/// How often executions of hubs whose lease expired are adopted.
pub const ADOPT_EVERY: Duration = Duration::from_millis(7_500);
/// How often recorded cancel requests are read.
pub const CANCELS_EVERY: Duration = Duration::from_millis(500);

/// Makes the runtime's active workflows those the database holds: installs the latest
/// version of each active one that is not running at that version, removes the others.
/// Returns how many changed. A stored text that no longer validates is logged and skipped.
pub async fn sync_workflows(state: &HubState) -> anyhow::Result<usize> {
    let _guard = state.deploy.lock().await;
    let stored = crate::db::workflows::active_sources(&state.db)
        .await
        .context("reading the stored workflows")?;
    let mut changed = 0;
    for version in &stored {
        if state.workflows.version(&version.name) == Some(version.version) {
            continue;
        }
        let source = format!("db:{}@v{}", version.name, version.version);
        match reactor_core::dsl::parse_workflow(&source, &version.source) {
            Ok(mut workflow) => {
                workflow.version = version.version;
                state
                    .workflows
                    .install(
                        workflow,
                        &version.source,
                        Origin::Database(format!("{}/{}", version.name, version.version)),
                    )
                    .await
                    .with_context(|| format!("loading workflow {}", version.name))?;
                changed += 1;
            }
            Err(problems) => {
                for problem in problems {
                    tracing::warn!(%problem, "stored workflow no longer validates; not loaded");
                }
            }
        }
    }
    for (name, _) in state.workflows.origins() {
        if !stored.iter().any(|v| v.name == name) {
            state.workflows.remove(&name).await;
            changed += 1;
        }
    }
    Ok(changed)
}

/// Loads the versions unfinished executions need, then resumes those this hub does not run
/// yet (its own after a restart, or those of hubs whose lease expired). Returns how many.
pub async fn adopt(state: &HubState) -> anyhow::Result<usize> {
    state
        .workflows
        .load_needed_versions()
        .await
        .context("loading the workflow versions of unfinished executions")?;
    state
        .runtime
        .recover()
        .await
        .context("recovering unfinished executions")
}

/// Delivers the recorded cancel requests this hub can: those of executions running or queued
/// here. Requests of finished (or pruned) executions are dropped; the others stay for the
/// hub that runs them. Returns how many were delivered here.
pub async fn deliver_cancels(state: &HubState) -> anyhow::Result<usize> {
    use crate::db::cancels;
    let requests = cancels::pending(&state.db)
        .await
        .context("reading cancel requests")?;
    let runtime = state.workflows.runtime();
    let mut delivered = 0;
    for request in requests {
        if runtime.cancel(request.execution, &request.reason).await {
            delivered += 1;
        } else {
            let record = runtime
                .store()
                .execution(request.execution)
                .await
                .context("reading an execution to cancel")?;
            if record.is_some_and(|record| !record.status.is_finished()) {
                continue;
            }
        }
        cancels::remove(&state.db, request.execution)
            .await
            .context("removing a cancel request")?;
    }
    Ok(delivered)
}

/// Runs workflow sync, adoption and cancel delivery until the hub stops.
pub fn spawn(state: HubState) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut sync = tokio::time::interval(SYNC_EVERY);
        let mut adoption = tokio::time::interval(ADOPT_EVERY);
        let mut cancels = tokio::time::interval(CANCELS_EVERY);
        for interval in [&mut sync, &mut adoption, &mut cancels] {
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        // Start-up did both just now.
        sync.tick().await;
        adoption.tick().await;
        loop {
            tokio::select! {
                () = state.stopping.cancelled() => return,
                _ = sync.tick() => match sync_workflows(&state).await {
                    Ok(0) => {}
                    Ok(changed) => tracing::info!(changed, "workflows follow the database"),
                    Err(error) => tracing::warn!(error = format!("{error:#}"), "workflow sync failed; retrying"),
                },
                _ = adoption.tick() => match adopt(&state).await {
                    Ok(0) => {}
                    Ok(adopted) => tracing::info!(executions = adopted, "adopted unfinished executions"),
                    Err(error) => tracing::warn!(error = format!("{error:#}"), "adoption failed; retrying"),
                },
                _ = cancels.tick() => match deliver_cancels(&state).await {
                    Ok(0) => {}
                    Ok(delivered) => tracing::info!(executions = delivered, "delivered cancels recorded by other hubs"),
                    Err(error) => tracing::warn!(error = format!("{error:#}"), "delivering cancels failed; retrying"),
                },
            }
        }
    })
}
