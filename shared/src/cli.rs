//! The command-line contract shared by `reactor-agent` and `reactor-hub` (DSL.md):
//! `validate PATH…` and `exec FILE [--event JSON|@FILE] [--input JSON] [--allow-exec]`.
//!
//! Both binaries call these functions so they accept the same arguments and print the same
//! bytes. Exit codes: 0 success (or skipped), 1 invalid (`validate`) / failed (`exec`),
//! 2 invalid file or usage (`exec`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::json;

use crate::action::{BuiltinConfig, builtin_registry};
use crate::dsl::{self, Diagnostic};
use crate::engine::{Environment, Event, ExecutionRecord, Runtime, RuntimeConfig, Submission};
use crate::flow::Workflow;
use crate::store::MemoryStore;
use crate::{Map, Value};

/// `validate PATH…`: every problem of every file, then exit 0 (all valid) or 1.
pub fn validate(paths: &[PathBuf], out: &mut dyn Write) -> i32 {
    let diagnostics = validate_with_siblings(paths);
    for diagnostic in &diagnostics {
        let _ = writeln!(out, "{diagnostic}");
    }
    if diagnostics.is_empty() { 0 } else { 1 }
}

/// Every problem of `paths`. A file named on its own may `call:` workflows beside it — `exec`
/// finds them there — so the valid workflows in the folders of such files count as call
/// targets; only the paths given are reported on.
fn validate_with_siblings(paths: &[PathBuf]) -> Vec<Diagnostic> {
    let mut loaded = dsl::load_paths(paths);
    let mut set = loaded.workflows.clone();
    for file in paths.iter().filter(|p| !p.is_dir()) {
        let folder = file
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        for sibling in folder_workflows(folder) {
            let known = set.iter().any(|(w, path)| {
                w.name == sibling.name || same_file(Path::new(path), Path::new(&sibling.source))
            });
            if !known {
                let source = sibling.source.clone();
                set.push((sibling, source));
            }
        }
    }
    if set.len() == loaded.workflows.len() {
        return loaded.diagnostics;
    }
    // Replace the set-level problems of the given files with those of the larger set.
    let alone = dsl::check_set(&loaded.workflows);
    loaded.diagnostics.retain(|d| !alone.contains(d));
    let given: Vec<&str> = loaded
        .workflows
        .iter()
        .map(|(_, path)| path.as_str())
        .collect();
    loaded.diagnostics.extend(
        dsl::check_set(&set)
            .into_iter()
            .filter(|d| given.contains(&d.path.as_str())),
    );
    loaded
        .diagnostics
        .sort_by(|a, b| (&a.path, a.line, a.column).cmp(&(&b.path, b.line, b.column)));
    loaded.diagnostics
}

/// The valid workflows of the `.yaml`/`.yml` files directly in `folder`, sorted by path.
fn folder_workflows(folder: &Path) -> Vec<Workflow> {
    let Ok(entries) = std::fs::read_dir(folder) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    paths
        .into_iter()
        .filter(|path| {
            path.is_file()
                && matches!(
                    path.extension().and_then(|e| e.to_str()),
                    Some("yaml" | "yml")
                )
        })
        .filter_map(|path| {
            let text = std::fs::read_to_string(&path).ok()?;
            dsl::parse_workflow(&path.display().to_string(), &text).ok()
        })
        .collect()
}

/// Options of `exec`.
#[derive(Clone, Debug, Default)]
pub struct ExecOptions {
    pub file: PathBuf,
    /// The event's `data`: JSON text, or `@path` to a JSON file.
    pub event: Option<String>,
    /// The inputs: a JSON object.
    pub input: Option<String>,
    /// Let the `exec` action run any command.
    pub allow_exec: bool,
    /// Environment variables visible to expressions as `env.NAME`.
    pub env: Vec<String>,
}

/// `exec FILE`: runs the workflow once, in-process, with real actions and a temporary store,
/// and prints one JSON object.
pub async fn exec(options: &ExecOptions, out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    let (workflow, siblings) = match load_for_exec(&options.file) {
        Ok(loaded) => loaded,
        Err(diagnostics) => {
            for diagnostic in diagnostics {
                let _ = writeln!(err, "{diagnostic}");
            }
            return 2;
        }
    };
    let data = match options.event.as_deref().map(read_json_argument).transpose() {
        Ok(data) => data.unwrap_or(Value::Object(Map::new())),
        Err(message) => {
            let _ = writeln!(err, "error: --event: {message}");
            return 2;
        }
    };
    let inputs = match options.input.as_deref().map(read_json_argument).transpose() {
        Ok(inputs) => inputs.unwrap_or(Value::Object(Map::new())),
        Err(message) => {
            let _ = writeln!(err, "error: --input: {message}");
            return 2;
        }
    };
    let mut config = BuiltinConfig::default();
    if options.allow_exec {
        config.exec.allow = crate::action::exec::Allowlist::All;
    }
    let runtime = Runtime::new(
        Arc::new(MemoryStore::new()),
        builtin_registry(config),
        environment_from_process(&options.env),
        RuntimeConfig::default(),
    );
    let name = workflow.name.to_string();
    runtime.load(workflow);
    for sibling in siblings {
        runtime.load(sibling);
    }
    let event = Event::new("manual", "reactor:cli", data);
    let (code, result) = match runtime.submit(&name, event, inputs).await {
        Ok(Submission::Accepted(id)) => match runtime.wait(id).await {
            Ok(record) => (
                if record.status == crate::engine::ExecutionStatus::Succeeded {
                    0
                } else {
                    1
                },
                exec_json(&record),
            ),
            Err(error) => (1, failure_json(&error.to_string())),
        },
        Ok(Submission::Skipped | Submission::Dropped) => (
            0,
            json!({ "status": "skipped", "output": null, "error": null, "steps": {} }),
        ),
        Err(error) => (1, failure_json(&error.to_string())),
    };
    runtime.shutdown().await;
    let _ = writeln!(out, "{result}");
    code
}

/// The JSON shape `exec` prints (and the APIs reuse): status, output, error, and the steps
/// that have an id.
pub fn exec_json(record: &ExecutionRecord) -> Value {
    let steps: Map = record
        .steps
        .iter()
        .map(|(id, step)| {
            let value =
                json!({ "status": step.status, "output": step.output, "attempts": step.attempts });
            (id.clone(), value)
        })
        .collect();
    let error = match &record.error {
        Some(error) => json!({ "message": error.message, "step": error.step }),
        None => Value::Null,
    };
    json!({ "status": record.status.as_str(), "output": record.output, "error": error, "steps": steps })
}

fn failure_json(message: &str) -> Value {
    json!({ "status": "failed", "output": null, "error": { "message": message, "step": null }, "steps": {} })
}

/// Parses FILE, and the workflows beside it that `call:` may name. Siblings that do not
/// validate are left out; a call to one of them is reported against FILE.
fn load_for_exec(file: &Path) -> Result<(Workflow, Vec<Workflow>), Vec<Diagnostic>> {
    let display = file.display().to_string();
    let text = std::fs::read_to_string(file).map_err(|e| {
        vec![Diagnostic {
            path: display.clone(),
            line: 1,
            column: 1,
            message: format!("cannot read the file: {e}"),
            help: None,
        }]
    })?;
    let workflow = dsl::parse_workflow(&display, &text)?;
    let folder = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let siblings: Vec<Workflow> = folder_workflows(folder)
        .into_iter()
        .filter(|sibling| {
            sibling.name != workflow.name && !same_file(Path::new(&sibling.source), file)
        })
        .collect();
    let mut set: Vec<(Workflow, String)> = vec![(workflow.clone(), display.clone())];
    set.extend(siblings.iter().map(|w| (w.clone(), w.source.clone())));
    let problems: Vec<Diagnostic> = dsl::check_set(&set)
        .into_iter()
        .filter(|d| d.path == display)
        .collect();
    if problems.is_empty() {
        Ok((workflow, siblings))
    } else {
        Err(problems)
    }
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// JSON text, or `@path` naming a file of JSON.
fn read_json_argument(argument: &str) -> Result<Value, String> {
    let text = match argument.strip_prefix('@') {
        Some(path) => {
            std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?
        }
        None => argument.to_string(),
    };
    serde_json::from_str(&text).map_err(|e| format!("not valid JSON: {e}"))
}

/// `env.NAME` for the allow-listed names; `secrets.NAME` from `REACTOR_SECRET_NAME`.
pub fn environment_from_process(allowed_env: &[String]) -> Environment {
    let mut env = Map::new();
    for name in allowed_env {
        if let Ok(value) = std::env::var(name) {
            env.insert(name.clone(), Value::String(value));
        }
    }
    let mut secrets = Map::new();
    for (name, value) in std::env::vars() {
        if let Some(secret) = name.strip_prefix("REACTOR_SECRET_")
            && !secret.is_empty()
        {
            secrets.insert(secret.to_string(), Value::String(value));
        }
    }
    Environment {
        env: Value::Object(env),
        secrets: Value::Object(secrets),
        device: Value::Null,
    }
}
