//! Bundles and commands from the hub, handled by one task (so one owner calls
//! `BundleVerifier::accept`).
//!
//! Bundles: verified with the pinned key(s) **before any YAML is parsed**
//! (`BundleVerifier::accept`, which also records the accepted version durably); then each
//! workflow is parsed and installed through `ActiveWorkflows` with `Origin::Bundle(version)`,
//! and workflows of an earlier bundle that the new one no longer has are removed. A refused
//! bundle changes nothing; the status keeps reporting the active version (a rollout sees "did
//! not converge"). At start-up the accepted bundle is re-applied (`reopen`), which completes an
//! apply that a crash interrupted. A renewal — a newer bundle whose workflows (names and
//! digests) are those applied — only changes the reported version.
//!
//! Commands: run a workflow now, cancel an execution, ping. Answers go on `executions` as
//! `CommandResult` under the command's seq. The last [`REMEMBERED`] answers are kept in the
//! store's meta table: a repeated command id gets the same answer and is not run twice.

use std::collections::BTreeMap;
use std::sync::Arc;

use reactor_core::deploy::{ActiveWorkflows, Origin};
use reactor_core::engine::{Event, ExecutionId, Submission, SubmitError, Timestamp};
use reactor_core::store::{Store, StoreWrite};
use reactor_core::sync::bundle::{Acceptance, BundleVerifier, VerifiedBundle, WorkflowDigest};
use reactor_core::sync::messages::{Command, CommandOutcome, CommandResult, ExecutionRef};
use reactor_core::sync::{Channel, Envelope, Frame, Message, Seq};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::client::{Inbound, Outgoing, StatusSource};

/// Command answers remembered for repeats.
pub const REMEMBERED: u64 = 256;

/// The inbound task's state.
pub struct Handler {
    pub verifier: BundleVerifier,
    pub labels: BTreeMap<String, String>,
    pub store: Arc<dyn Store>,
    pub workflows: Arc<ActiveWorkflows>,
    pub status: Arc<StatusSource>,
    /// The workflows (names and SHA-256, in order) of the bundle applied last. A newer
    /// bundle with exactly these is a renewal (the hub re-signs bundles before they expire):
    /// nothing is reinstalled and the health window keeps counting.
    pub applied: Option<Vec<WorkflowDigest>>,
}

impl Handler {
    /// Re-applies the accepted bundle after a restart (before triggers start).
    pub async fn reopen(&mut self) -> anyhow::Result<()> {
        match self.verifier.reopen(self.store.as_ref()).await {
            Ok(Some(bundle)) => {
                self.apply(&bundle).await;
            }
            Ok(None) => {}
            Err(error) => tracing::error!(%error, "the stored bundle does not verify: not applied"),
        }
        Ok(())
    }

    pub async fn run(
        mut self,
        mut inbound: mpsc::Receiver<Inbound>,
        outgoing: mpsc::Sender<Outgoing>,
        cancel: CancellationToken,
    ) {
        loop {
            let message = tokio::select! {
                () = cancel.cancelled() => break,
                message = inbound.recv() => match message { Some(m) => m, None => break },
            };
            match message {
                Inbound::Bundle(bytes) => {
                    if self.bundle(&bytes).await {
                        let _ = outgoing.send(Outgoing::StatusChanged).await;
                    }
                }
                Inbound::Command(frame) => {
                    if let Some((seq, outcome)) = self.command(frame).await {
                        let envelope =
                            Envelope::new(seq, Message::CommandResult(CommandResult { outcome }));
                        let _ = outgoing
                            .send(Outgoing::Frame(Channel::Executions, envelope))
                            .await;
                    }
                }
            }
        }
    }

    /// Returns whether a new bundle became active.
    pub async fn bundle(&mut self, bytes: &[u8]) -> bool {
        let accepted = self
            .verifier
            .accept(bytes, Timestamp::now(), &self.labels, self.store.as_ref())
            .await;
        match accepted {
            Ok(Acceptance::Accepted(bundle)) => {
                if self.applied.as_ref() == Some(&bundle.manifest.workflows) {
                    self.set_version(bundle.manifest.version);
                    tracing::info!(
                        version = bundle.manifest.version,
                        "bundle renewed (same workflows): nothing reinstalled"
                    );
                } else {
                    self.apply(&bundle).await;
                    // The reported health judges the new workflows only.
                    self.status.health.restart();
                }
                true
            }
            Ok(Acceptance::AlreadyActive { version }) => {
                tracing::debug!(version, "bundle already active");
                false
            }
            Err(error) => {
                tracing::warn!(%error, "bundle refused");
                false
            }
        }
    }

    async fn apply(&mut self, bundle: &VerifiedBundle) {
        let version = bundle.manifest.version;
        let mut names = Vec::new();
        for workflow in &bundle.workflows {
            let source = format!("bundle:v{version}/{}", workflow.name);
            match reactor_core::dsl::parse_workflow(&source, &workflow.text) {
                Ok(parsed) => {
                    names.push(parsed.name.to_string());
                    if let Err(error) = self
                        .workflows
                        .install(parsed, &workflow.text, Origin::Bundle(version))
                        .await
                    {
                        tracing::error!(%error, workflow = %workflow.name, "bundle workflow not installed");
                    }
                }
                Err(problems) => {
                    for problem in problems {
                        tracing::error!(%problem, "invalid bundle workflow skipped");
                    }
                }
            }
        }
        for (name, origin) in self.workflows.origins() {
            if matches!(origin, Origin::Bundle(_)) && !names.contains(&name) {
                self.workflows.remove(&name).await;
            }
        }
        self.set_version(version);
        self.applied = Some(bundle.manifest.workflows.clone());
        tracing::info!(version, workflows = names.len(), "bundle applied");
    }

    /// The version the status reports.
    fn set_version(&self, version: u64) {
        *self
            .status
            .bundle_version
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(version);
    }

    fn remembered_key(seq: Seq) -> String {
        format!("fleet.cmd.{}", seq.0 % REMEMBERED)
    }

    async fn remembered(&self, seq: Seq) -> Option<CommandOutcome> {
        let bytes = self.store.meta(&Self::remembered_key(seq)).await.ok()??;
        let (stored, outcome): (u64, CommandOutcome) = postcard::from_bytes(&bytes).ok()?;
        (stored == seq.0).then_some(outcome)
    }

    async fn remember(&self, seq: Seq, outcome: &CommandOutcome) {
        let Ok(bytes) = postcard::to_allocvec(&(seq.0, outcome)) else {
            return;
        };
        let write = StoreWrite::PutMeta {
            key: Self::remembered_key(seq),
            value: Some(bytes),
        };
        if let Err(error) = self.store.write(vec![write]).await {
            tracing::warn!(%error, "cannot remember a command's answer");
        }
    }

    /// The answer to a command frame (`None` for frames that are not commands).
    pub async fn command(&self, frame: Frame) -> Option<(Seq, CommandOutcome)> {
        let (seq, command) = match frame {
            Frame::Unsupported(unsupported) => {
                return Some((
                    unsupported.seq,
                    CommandOutcome::Unsupported {
                        version: unsupported.version,
                        kind: unsupported.kind,
                    },
                ));
            }
            Frame::Message(Envelope {
                seq,
                message: Message::Command(command),
                ..
            }) => (seq, command),
            Frame::Message(_) => return None,
        };
        if let Some(outcome) = self.remembered(seq).await {
            return Some((seq, outcome));
        }
        let runtime = self.workflows.runtime();
        let outcome = match command {
            Command::Ping { nonce } => CommandOutcome::Pong { nonce },
            Command::RunWorkflow { workflow, input } => {
                let inputs = input.to_value().unwrap_or_default();
                let event = Event::new("hub.command", "hub", inputs.clone());
                match runtime.submit(&workflow, event, inputs).await {
                    Ok(Submission::Accepted(id)) => CommandOutcome::Started {
                        execution: ExecutionRef::from(id),
                    },
                    Ok(Submission::Skipped) => CommandOutcome::Refused {
                        reason: "the workflow's condition skipped it".into(),
                    },
                    Ok(Submission::Dropped) => CommandOutcome::Refused {
                        reason: "no concurrency slot (overflow: drop)".into(),
                    },
                    Err(SubmitError::UnknownWorkflow(_)) => CommandOutcome::NotFound,
                    Err(error) => CommandOutcome::Refused {
                        reason: error.to_string(),
                    },
                }
            }
            Command::CancelExecution { execution } => {
                let id = ExecutionId::from(execution);
                if runtime.cancel(id, "cancelled by the hub").await {
                    CommandOutcome::Cancelled
                } else {
                    CommandOutcome::NotFound
                }
            }
        };
        self.remember(seq, &outcome).await;
        Some((seq, outcome))
    }
}

impl std::fmt::Debug for Handler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handler")
            .field("labels", &self.labels)
            .finish_non_exhaustive()
    }
}
