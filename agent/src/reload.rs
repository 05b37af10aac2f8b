//! Hot reload of the workflows folder.
//!
//! A watcher (notify) wakes a task; after [`DEBOUNCE`] without further changes the task
//! rescans the whole folder and applies the difference: a changed file that validates
//! replaces its workflow (new version, triggers restarted); one that does not is reported with
//! the validator's lines and the previous version keeps running; a removed file stops its
//! workflow's triggers. Rescanning rather than interpreting individual events makes editors'
//! write-to-temp-then-rename dance, and missed events, harmless.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use reactor_core::flow::Workflow;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use reactor_core::deploy::{ActiveWorkflows, Origin, content_hash};

/// Quiet time after the last change before the folder is rescanned.
pub const DEBOUNCE: Duration = Duration::from_millis(300);
/// Change notifications waiting for the reload task; more are dropped (one rescan covers
/// them all).
const WAKE_CAPACITY: usize = 16;

/// One workflow file as read from the folder.
#[derive(Debug)]
pub struct ScannedFile {
    pub path: PathBuf,
    pub hash: u64,
    pub text: String,
    pub workflow: Option<Workflow>,
}

/// Reads and parses every `.yaml`/`.yml` file directly in `dir`, sorted; problems are logged.
pub fn scan(dir: &Path) -> Vec<ScannedFile> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) => {
            tracing::error!(folder = %dir.display(), %error, "cannot read the workflows folder");
            return Vec::new();
        }
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    paths.sort();
    let mut scanned = Vec::new();
    for path in paths {
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(error) => {
                tracing::error!(file = %path.display(), %error, "cannot read the workflow file");
                continue;
            }
        };
        let hash = content_hash(&text);
        let workflow = reactor_core::dsl::parse_workflow(&path.display().to_string(), &text)
            .map_err(|problems| {
                for problem in problems {
                    tracing::error!("{problem}");
                }
            })
            .ok();
        scanned.push(ScannedFile {
            path,
            hash,
            text,
            workflow,
        });
    }
    scanned
}

/// Applies a scan: `files` holds the hash of each file as last applied.
pub async fn apply(
    workflows: &ActiveWorkflows,
    scanned: Vec<ScannedFile>,
    files: &mut HashMap<PathBuf, u64>,
) -> anyhow::Result<()> {
    let present: Vec<PathBuf> = scanned.iter().map(|f| f.path.clone()).collect();
    for (name, origin) in workflows.origins() {
        if let Origin::File(path) = &origin
            && !present.contains(path)
        {
            workflows.remove(&name).await;
        }
    }
    files.retain(|path, _| present.contains(path));
    for file in scanned {
        if files.get(&file.path) == Some(&file.hash) {
            continue;
        }
        files.insert(file.path.clone(), file.hash);
        let Some(workflow) = file.workflow else {
            if workflows
                .origins()
                .iter()
                .any(|(_, o)| o == &Origin::File(file.path.clone()))
            {
                tracing::warn!(file = %file.path.display(), "the file no longer validates: the previous version keeps running");
            } else {
                tracing::warn!(file = %file.path.display(), "invalid workflow file skipped");
            }
            continue;
        };
        let name = workflow.name.to_string();
        if let Some(Origin::File(other)) = workflows.origin(&name)
            && other != file.path
            && present.contains(&other)
        {
            tracing::error!(file = %file.path.display(), workflow = %name, other = %other.display(), "another file already defines this workflow name; skipped");
            continue;
        }
        // The file may have renamed its workflow: the old name goes.
        for (old, origin) in workflows.origins() {
            if origin == Origin::File(file.path.clone()) && old != name {
                workflows.remove(&old).await;
            }
        }
        let origin = Origin::File(file.path.clone());
        workflows.install(workflow, &file.text, origin).await?;
    }
    Ok(())
}

/// Watches `dir` until `cancel` fires, applying changes.
pub async fn watch(
    workflows: std::sync::Arc<ActiveWorkflows>,
    dir: PathBuf,
    mut files: HashMap<PathBuf, u64>,
    cancel: CancellationToken,
) {
    let (wake, mut woken) = mpsc::channel::<()>(WAKE_CAPACITY);
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok() {
            // Full means a rescan is already due.
            let _ = wake.try_send(());
        }
    });
    let mut watcher = match watcher {
        Ok(watcher) => watcher,
        Err(error) => {
            tracing::error!(%error, "cannot watch the workflows folder: hot reload is off");
            return;
        }
    };
    if let Err(error) = watcher.watch(&dir, RecursiveMode::NonRecursive) {
        tracing::error!(folder = %dir.display(), %error, "cannot watch the workflows folder: hot reload is off");
        return;
    }
    loop {
        // Cancel-safety: a lost wake-up only delays nothing; the rescan reads the folder.
        tokio::select! {
            biased;
            () = cancel.cancelled() => return,
            woke = woken.recv() => if woke.is_none() { return },
        }
        loop {
            tokio::select! {
                biased;
                () = cancel.cancelled() => return,
                woke = tokio::time::timeout(DEBOUNCE, woken.recv()) => match woke {
                    Ok(Some(())) => continue,
                    Ok(None) => return,
                    Err(_quiet) => break,
                },
            }
        }
        let scan_dir = dir.clone();
        let scanned = match tokio::task::spawn_blocking(move || scan(&scan_dir)).await {
            Ok(scanned) => scanned,
            Err(error) => {
                tracing::error!(%error, "rescanning the workflows folder failed");
                continue;
            }
        };
        if let Err(error) = apply(&workflows, scanned, &mut files).await {
            tracing::error!(error = %format!("{error:#}"), "applying workflow changes failed");
        }
    }
}
