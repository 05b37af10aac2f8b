//! The workflows the agent serves: the folder's and those compiled into the binary, made
//! active through [`reactor_core::deploy::ActiveWorkflows`] (versions, origins, triggers).
//!
//! The agent's policies on top of it: a file in the workflows folder beats an embedded
//! workflow of the same name; versions are stored under the meta prefix [`META_PREFIX`]
//! (kept from before the set moved into core, so existing journals keep their versions);
//! triggers are core's light ones plus `mqtt` ([`reactor_core::mqtt::MqttTriggers`]).

use std::collections::HashMap;
use std::sync::Arc;

use reactor_core::deploy::{ActiveWorkflows, Origin};
use reactor_core::engine::Runtime;
use reactor_core::mqtt::{MqttBrokers, MqttTriggers};
use reactor_core::trigger::{EventRouter, HttpRoutes, Supervisor};

/// Meta-key prefix of the agent's stored workflow versions.
pub const META_PREFIX: &str = "agent.workflow";

/// The agent's set of active workflows over `runtime`.
pub fn active_set(
    runtime: Runtime,
    routes: Arc<HttpRoutes>,
    events: Arc<EventRouter>,
    supervisor: Arc<Supervisor>,
    brokers: MqttBrokers,
) -> ActiveWorkflows {
    ActiveWorkflows::new(
        runtime,
        routes,
        events,
        supervisor,
        Arc::new(MqttTriggers::new(brokers)),
    )
    .with_meta_prefix(META_PREFIX)
}

/// Loads the workflows compiled into the binary and those of `dir`; the folder's win over
/// embedded ones of the same name. Problems are logged as validator lines and skipped.
pub async fn load_all(
    workflows: &ActiveWorkflows,
    dir: Option<&std::path::Path>,
    files: &mut HashMap<std::path::PathBuf, u64>,
) -> anyhow::Result<()> {
    let from_dir = match dir {
        Some(dir) => crate::reload::scan(dir),
        None => Vec::new(),
    };
    let dir_names: Vec<String> = from_dir
        .iter()
        .filter_map(|f| f.workflow.as_ref().map(|w| w.name.to_string()))
        .collect();
    for (file, text) in crate::embedded::WORKFLOWS {
        let source = format!("embedded:{file}");
        match reactor_core::dsl::parse_workflow(&source, text) {
            Ok(workflow) if dir_names.contains(&workflow.name.to_string()) => {
                tracing::info!(workflow = %workflow.name, "the workflows folder overrides the embedded workflow");
            }
            Ok(workflow) => {
                workflows
                    .install(workflow, text, Origin::Embedded(file.to_string()))
                    .await?;
            }
            Err(problems) => {
                for problem in problems {
                    tracing::error!(%problem, "invalid embedded workflow skipped");
                }
            }
        }
    }
    crate::reload::apply(workflows, from_dir, files).await
}
