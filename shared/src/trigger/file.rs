//! `file` triggers: watch a file or folder (notify) and fire when files are created,
//! modified or removed.
//!
//! Event: type `file`, source `reactor:file`, data `{path, event, size?}`, meta `{path,
//! name, event, size, modified (RFC 3339)}` (`size`/`modified` are null for removed files).
//!
//! Decisions:
//! - `path` may name a file: its folder is watched and only that file reported (so editors
//!   that save by rename keep working). A path that does not exist fails the trigger; the
//!   supervisor retries with backoff until it appears.
//! - `pattern` is a glob (`*.csv`, `**/*.log`, `{a,b}.txt`). Without `/` it matches the file
//!   name, with `/` the path relative to the watched folder.
//! - Debounce (default [`DEFAULT_DEBOUNCE`]): events for one path coalesce until the path
//!   has been quiet for the debounce period, then ONE event fires with the net change:
//!   create+modify → create, modify+remove → remove, remove+create → modify, create+remove →
//!   nothing. The `events` filter applies to that net change. Folders are not reported.
//! - Block policy: the watcher thread hands raw events over a bounded channel
//!   ([`FILE_CHANNEL_CAPACITY`]) and blocks when it is full; at most [`MAX_PENDING`] paths
//!   wait in the debouncer, beyond that no raw event is read until some are submitted, and
//!   `submit` waits for the runtime. If the OS queue overflows meanwhile, notify reports it
//!   and the loss is logged.
//! - Not durable: changes made while the trigger is not running are not reported.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use globset::{GlobBuilder, GlobMatcher};
use notify::event::{EventKind, ModifyKind, RenameMode};
use notify::{RecursiveMode, Watcher};
use serde_json::json;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::engine::{Event, SubmitError, Timestamp};
use crate::flow::{FileEventKind, FileTrigger};

use super::{Trigger, TriggerContext, TriggerError, WarnLimiter};

/// Default quiet period per path.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(200);
/// Raw watcher events queued between the watcher thread and the trigger.
pub const FILE_CHANNEL_CAPACITY: usize = 1024;
/// Paths held by the debouncer at once.
pub const MAX_PENDING: usize = 10_000;

/// A running `file` trigger.
#[derive(Debug)]
pub struct FileWatch {
    settings: FileTrigger,
    pattern: Option<GlobMatcher>,
    /// The pattern applies to the relative path (it has a `/`), not the file name.
    pattern_on_path: bool,
    debounce: Duration,
}

#[derive(Debug)]
struct Pending {
    /// `None`: the changes cancelled out (created then removed).
    kind: Option<FileEventKind>,
    deadline: Instant,
}

impl FileWatch {
    pub fn new(settings: &FileTrigger) -> Result<FileWatch, TriggerError> {
        let pattern = match &settings.pattern {
            Some(p) => Some(
                GlobBuilder::new(p)
                    .literal_separator(true)
                    .build()
                    .map_err(|e| TriggerError::Settings(format!("file pattern {p:?}: {e}")))?
                    .compile_matcher(),
            ),
            None => None,
        };
        Ok(FileWatch {
            pattern_on_path: settings.pattern.as_deref().is_some_and(|p| p.contains('/')),
            pattern,
            debounce: settings.debounce.unwrap_or(DEFAULT_DEBOUNCE),
            settings: settings.clone(),
        })
    }

    fn wanted(&self, root: &Path, only: Option<&Path>, path: &Path) -> bool {
        if only.is_some_and(|only| only != path) {
            return false;
        }
        let Some(pattern) = &self.pattern else {
            return true;
        };
        if self.pattern_on_path {
            path.strip_prefix(root)
                .is_ok_and(|relative| pattern.is_match(relative))
        } else {
            path.file_name().is_some_and(|name| pattern.is_match(name))
        }
    }

    fn event(&self, path: &Path, kind: FileEventKind) -> Event {
        let name = kind_name(kind);
        let metadata = match kind {
            FileEventKind::Remove => None,
            _ => std::fs::metadata(path).ok(),
        };
        let size = metadata.as_ref().map(|m| m.len());
        let modified = metadata
            .as_ref()
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| Timestamp(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)).to_rfc3339());
        let display = path.to_string_lossy();
        let mut data = json!({ "path": display, "event": name });
        if let Some(size) = size {
            data["size"] = json!(size);
        }
        let mut event = Event::new("file", "reactor:file", data);
        event.meta = json!({
            "path": display,
            "name": path.file_name().map(|n| n.to_string_lossy()),
            "event": name,
            "size": size,
            "modified": modified,
        });
        event
    }
}

fn kind_name(kind: FileEventKind) -> &'static str {
    match kind {
        FileEventKind::Create => "create",
        FileEventKind::Modify => "modify",
        FileEventKind::Remove => "remove",
    }
}

/// The net change of `previous` followed by `next`.
fn merge(previous: Option<FileEventKind>, next: FileEventKind) -> Option<FileEventKind> {
    use FileEventKind::*;
    match (previous, next) {
        (Some(Create), Modify) => Some(Create),
        (Some(Create), Remove) => None,
        (Some(Remove), Create | Modify) => Some(Modify),
        (_, next) => Some(next),
    }
}

/// The changes one raw notify event stands for.
fn changes(event: &notify::Event) -> Vec<(PathBuf, FileEventKind)> {
    use FileEventKind::*;
    let all = |kind| event.paths.iter().map(|p| (p.clone(), kind)).collect();
    match &event.kind {
        EventKind::Create(_) => all(Create),
        EventKind::Remove(_) => all(Remove),
        EventKind::Modify(ModifyKind::Name(RenameMode::From)) => all(Remove),
        EventKind::Modify(ModifyKind::Name(RenameMode::To)) => all(Create),
        EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => {
            let mut out = Vec::new();
            if let Some(from) = event.paths.first() {
                out.push((from.clone(), Remove));
            }
            if let Some(to) = event.paths.get(1) {
                out.push((to.clone(), Create));
            }
            out
        }
        // A rename whose side is unknown: the path's existence tells.
        EventKind::Modify(ModifyKind::Name(_)) => event
            .paths
            .iter()
            .map(|p| (p.clone(), if p.exists() { Create } else { Remove }))
            .collect(),
        EventKind::Modify(ModifyKind::Metadata(_)) | EventKind::Access(_) => Vec::new(),
        EventKind::Modify(_) | EventKind::Any | EventKind::Other => all(Modify),
    }
}

#[async_trait]
impl Trigger for FileWatch {
    fn kind(&self) -> &'static str {
        "file"
    }

    async fn run(self: Box<Self>, context: TriggerContext) -> Result<(), TriggerError> {
        let given = Path::new(&self.settings.path);
        let target = std::fs::canonicalize(given).map_err(|e| {
            TriggerError::Source(format!("cannot watch {:?}: {e}", self.settings.path))
        })?;
        let (root, only) = if target.is_dir() {
            (target, None)
        } else {
            let parent = target
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from("/"));
            (parent, Some(target))
        };
        let mode = if self.settings.recursive && only.is_none() {
            RecursiveMode::Recursive
        } else {
            RecursiveMode::NonRecursive
        };
        let (sender, mut receiver) = mpsc::channel(FILE_CHANNEL_CAPACITY);
        // Runs on notify's thread: blocking here is the block policy. After the trigger
        // stops, the send fails and the event is dropped with the watcher.
        let mut watcher = notify::recommended_watcher(move |event| {
            let _ = sender.blocking_send(event);
        })
        .map_err(|e| TriggerError::Source(format!("starting the file watcher: {e}")))?;
        watcher
            .watch(&root, mode)
            .map_err(|e| TriggerError::Source(format!("watching {}: {e}", root.display())))?;
        tracing::debug!(workflow = %context.workflow, trigger = "file", path = %root.display(), "watching");
        let warn = WarnLimiter::new(Duration::from_secs(60));
        let mut pending: HashMap<PathBuf, Pending> = HashMap::new();
        loop {
            let next_due = pending.values().map(|p| p.deadline).min();
            tokio::select! {
                biased;
                // Cancel-safe: `recv` loses nothing when dropped; debounced changes not yet
                // due are dropped with the trigger (not durable, see the module docs).
                () = context.cancel.cancelled() => return Ok(()),
                raw = receiver.recv(), if pending.len() < MAX_PENDING => {
                    let Some(raw) = raw else {
                        return Err(TriggerError::Source("the file watcher stopped".into()));
                    };
                    match raw {
                        Ok(event) => {
                            if event.need_rescan() && warn.allow() {
                                tracing::warn!(workflow = %context.workflow, trigger = "file", "the watcher lost events (queue overflow)");
                            }
                            let deadline = Instant::now() + self.debounce;
                            for (path, kind) in changes(&event) {
                                if !self.wanted(&root, only.as_deref(), &path) {
                                    continue;
                                }
                                let previous = pending.get(&path).map(|p| p.kind);
                                let kind = match previous {
                                    Some(previous) => merge(previous, kind),
                                    None => Some(kind),
                                };
                                pending.insert(path, Pending { kind, deadline });
                            }
                        }
                        Err(error) => {
                            context.stats.record_error(&error.to_string());
                            if warn.allow() {
                                tracing::warn!(workflow = %context.workflow, trigger = "file", %error, "file watcher error");
                            }
                        }
                    }
                }
                () = sleep_until(next_due) => {}
            }
            let now = Instant::now();
            let mut due: Vec<(PathBuf, Option<FileEventKind>, Instant)> = pending
                .iter()
                .filter(|(_, p)| p.deadline <= now)
                .map(|(path, p)| (path.clone(), p.kind, p.deadline))
                .collect();
            due.sort_by(|a, b| (a.2, &a.0).cmp(&(b.2, &b.0)));
            for (path, kind, _) in due {
                pending.remove(&path);
                let Some(kind) = kind else { continue };
                if !self.settings.events.contains(&kind) {
                    continue;
                }
                if kind != FileEventKind::Remove && path.is_dir() {
                    continue;
                }
                let event = self.event(&path, kind);
                // Not raced against cancel: a submitted event must finish being recorded.
                match context.submit(event).await {
                    Ok(_) => {}
                    Err(SubmitError::ShuttingDown) => return Ok(()),
                    Err(error) => {
                        return Err(TriggerError::Source(format!(
                            "submitting the file event: {error}"
                        )));
                    }
                }
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::engine::Runtime;
    use crate::trigger::testing::{memory, runtime, started_events};

    const FILES: &str =
        "reactor: 1\nname: files\nsteps:\n  - action: transform\n    with: { value: 1 }\n";

    struct Running {
        runtime: Runtime,
        cancel: CancellationToken,
        task: tokio::task::JoinHandle<Result<(), TriggerError>>,
    }

    impl Running {
        async fn events(&self) -> Vec<(String, String)> {
            started_events(&self.runtime, "files")
                .await
                .into_iter()
                .map(|e| {
                    let name = e.meta["name"].as_str().unwrap_or_default().to_string();
                    (
                        e.data["event"].as_str().unwrap_or_default().to_string(),
                        name,
                    )
                })
                .collect()
        }

        /// Waits until `count` events arrived (and a little more, to catch extras).
        async fn settle(&self, count: usize) -> Vec<(String, String)> {
            for _ in 0..300 {
                if self.events().await.len() >= count {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            self.events().await
        }

        async fn stop(self) {
            self.cancel.cancel();
            self.task.await.unwrap().unwrap();
            self.runtime.shutdown().await;
        }
    }

    async fn start(settings: FileTrigger) -> Running {
        let runtime = runtime(memory(), &[FILES]);
        let context = TriggerContext::new("files", runtime.clone(), CancellationToken::new());
        let cancel = context.cancel.clone();
        let task = tokio::spawn(Box::new(FileWatch::new(&settings).unwrap()).run(context));
        // Let the watcher start before files change.
        tokio::time::sleep(Duration::from_millis(100)).await;
        Running {
            runtime,
            cancel,
            task,
        }
    }

    fn settings(path: &Path, pattern: Option<&str>) -> FileTrigger {
        FileTrigger {
            path: path.to_string_lossy().into_owned(),
            pattern: pattern.map(str::to_string),
            events: vec![
                FileEventKind::Create,
                FileEventKind::Modify,
                FileEventKind::Remove,
            ],
            recursive: false,
            debounce: Some(Duration::from_millis(100)),
        }
    }

    fn pair(event: &str, name: &str) -> (String, String) {
        (event.to_string(), name.to_string())
    }

    #[tokio::test]
    async fn create_modify_remove_with_a_pattern() {
        let dir = tempfile::tempdir().unwrap();
        let running = start(settings(dir.path(), Some("*.csv"))).await;
        let file = dir.path().join("a.csv");
        std::fs::write(&file, "x,y\n").unwrap();
        std::fs::write(dir.path().join("b.txt"), "ignored").unwrap();
        assert_eq!(running.settle(1).await, [pair("create", "a.csv")]);
        std::fs::write(&file, "x,y\n1,2\n").unwrap();
        running.settle(2).await;
        std::fs::remove_file(&file).unwrap();
        let events = running.settle(3).await;
        assert_eq!(
            events,
            [
                pair("create", "a.csv"),
                pair("modify", "a.csv"),
                pair("remove", "a.csv")
            ]
        );
        let all = started_events(&running.runtime, "files").await;
        assert_eq!(all[1].event_type, "file");
        assert_eq!(all[1].data["size"], 8);
        assert_eq!(all[1].meta["size"], 8);
        assert!(all[1].meta["modified"].is_string());
        assert!(all[2].meta["size"].is_null());
        running.stop().await;
    }

    #[tokio::test]
    async fn rapid_writes_coalesce_into_one_event() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = settings(dir.path(), None);
        s.debounce = Some(Duration::from_millis(250));
        let running = start(s).await;
        let file = dir.path().join("burst.log");
        std::fs::write(&file, "").unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        for i in 0..20 {
            std::fs::write(&file, format!("line {i}\n")).unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let events = running.settle(2).await;
        assert_eq!(
            events,
            [pair("create", "burst.log"), pair("modify", "burst.log")]
        );
        running.stop().await;
    }

    #[tokio::test]
    async fn events_filter_and_recursive_relative_pattern() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let mut s = settings(dir.path(), Some("sub/*.log"));
        s.recursive = true;
        s.events = vec![FileEventKind::Remove];
        let running = start(s).await;
        let deep = dir.path().join("sub").join("x.log");
        std::fs::write(&deep, "1").unwrap();
        std::fs::write(dir.path().join("x.log"), "not in sub").unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        std::fs::remove_file(&deep).unwrap();
        std::fs::remove_file(dir.path().join("x.log")).unwrap();
        assert_eq!(running.settle(1).await, [pair("remove", "x.log")]);
        let all = started_events(&running.runtime, "files").await;
        assert!(all[0].data["path"].as_str().unwrap().ends_with("sub/x.log"));
        running.stop().await;
    }

    #[tokio::test]
    async fn a_single_file_and_a_missing_path() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("one.txt");
        std::fs::write(&file, "1").unwrap();
        let running = start(settings(&file, None)).await;
        std::fs::write(dir.path().join("other.txt"), "1").unwrap();
        std::fs::write(&file, "22").unwrap();
        assert_eq!(running.settle(1).await, [pair("modify", "one.txt")]);
        running.stop().await;

        let runtime = runtime(memory(), &[FILES]);
        let context = TriggerContext::new("files", runtime, CancellationToken::new());
        let missing = settings(&dir.path().join("nope"), None);
        let result = Box::new(FileWatch::new(&missing).unwrap())
            .run(context)
            .await;
        assert!(matches!(result, Err(TriggerError::Source(_))));
        assert!(FileWatch::new(&settings(dir.path(), Some("[oops"))).is_err());
    }

    #[test]
    fn net_changes() {
        use FileEventKind::*;
        assert_eq!(merge(Some(Create), Modify), Some(Create));
        assert_eq!(merge(Some(Create), Remove), None);
        assert_eq!(merge(Some(Modify), Remove), Some(Remove));
        assert_eq!(merge(Some(Remove), Create), Some(Modify));
        assert_eq!(merge(None, Create), Some(Create));
        assert_eq!(merge(Some(Modify), Modify), Some(Modify));
    }
}
