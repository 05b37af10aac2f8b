//! The workflow language on disk: YAML → spanned document ([`yaml::Node`]) → validated
//! [`Workflow`], with every problem reported at once as `PATH:LINE:COL: error: MESSAGE`.
//!
//! Map:
//! - [`yaml`]: saphyr-parser events → `Node` tree (1-based line/column on every node), YAML 1.2
//!   core-schema scalars, hostile-input caps ([`Limits`]).
//! - `fields`: one table per object of the language (keys, required, type, description). It
//!   drives unknown-key detection ("did you mean") and the JSON Schema ([`schema`]).
//! - `decode`, `workflow`, `triggers`, `steps`: `Node` → model, collecting all problems.
//! - `validate`: step ids and expression names; [`check_set`] for a set of workflows.
//!
//! Decisions (where DSL.md is silent):
//! - Hostile input: files over [`Limits::max_bytes`] (1 MiB) are refused before parsing;
//!   nesting deeper than 64 stops reading at the first event that goes too deep; aliases are
//!   supported (GitHub Actions users write them) but expanded against a budget of 100 000
//!   nodes, checked *before* copying, so a billion-laughs document stops at once. One YAML
//!   document per file. Duplicate keys are errors.
//! - Scalars follow the YAML 1.2 core schema: `yes`/`on` are strings (a boolean key given
//!   `yes` gets a help line). `!!str` forces a string. `.inf`/`.nan` stay strings (JSON has no
//!   such numbers).
//! - `if`/`unless`/`when`/`while`/`until`/`match`/`retry.if`/`join.when` accept an expression
//!   with or without `${{ }}`, or `true`/`false`. Text around a `${{ }}` there is an error.
//! - Templates: subtrees without any `${{` collapse into one `Template::Literal`; the offsets
//!   of `Template::references()` are taken to count from the start of the one string parsed.
//! - Expression names: `item`/`index` (or the `as:` name) only inside a foreach's steps;
//!   `error` only inside `catch`, `on_failure`, `retry.if`; `branches` only inside
//!   `join: { when }`; `result` only inside a step's `output`. A foreach `as:` may not take a
//!   root name (`event`, `steps`, …). Input, var and step-id names are not reserved: they are
//!   always read through `inputs.`, `vars.`, `steps.`.
//! - `inputs.<name>: { type }`: `type` is optional; without it the type is the default's
//!   type, or `string`. `name:` with no settings declares a required string input.
//! - `triggers:` items: `- startup` (bare) is accepted; `cron: "…"` is the schedule; 5-field
//!   schedules get a leading `0` seconds field in `normalized`. Hub-only triggers (kafka,
//!   nats, redis, postgres, mysql) under `runs_on: agent` are errors.
//! - `plugin:` — `name` plus either one `settings:` map or the other keys, passed through.
//! - `call: name` (a bare string) calls with no input and waits; `fail: "message"` is the
//!   short form of `fail: { message }`.
//! - `http` trigger `auth: token|hmac` requires `secret`.
//! - Unknown action types are errors against the [`Parser`]'s catalog (default: the built-in
//!   actions); `with:` keys are checked when `with` is a literal map.
//! - [`check_set`] reports duplicate workflow names at line 1, column 1 of the later file (the
//!   model keeps no location for the name), calls to unknown workflows and call cycles at the
//!   `call` step.

mod decode;
mod fields;
pub mod schema;
mod steps;
mod triggers;
mod validate;
mod workflow;
pub mod yaml;

use std::path::PathBuf;

use crate::action::{ActionSpec, builtin_specs};
use crate::flow::Workflow;

pub use validate::check_set;
pub use yaml::{Limits, Node};

use decode::{Decoder, Problem};

/// One problem in a workflow file, reported as `PATH:LINE:COL: error: MESSAGE` and an
/// optional `  help: SUGGESTION` line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub path: String,
    pub line: u32,
    pub column: u32,
    pub message: String,
    pub help: Option<String>,
}

impl std::fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}:{}: error: {}",
            self.path, self.line, self.column, self.message
        )?;
        if let Some(help) = &self.help {
            write!(f, "\n  help: {help}")?;
        }
        Ok(())
    }
}

/// Parses workflows with configurable limits and a catalog of known action types.
#[derive(Clone, Debug)]
pub struct Parser {
    limits: Limits,
    actions: Vec<&'static ActionSpec>,
}

impl Default for Parser {
    fn default() -> Self {
        Parser {
            limits: Limits::default(),
            actions: builtin_specs(),
        }
    }
}

impl Parser {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// The action types steps may use (integrations add theirs to the built-in ones).
    pub fn with_actions(mut self, actions: Vec<&'static ActionSpec>) -> Self {
        self.actions = actions;
        self
    }

    /// Parses and validates one workflow file's text. `path` is used in diagnostics.
    pub fn parse(&self, path: &str, text: &str) -> Result<Workflow, Vec<Diagnostic>> {
        let root = yaml::parse(text, self.limits).map_err(|errors| {
            let problems = errors
                .into_iter()
                .map(|e| Problem {
                    location: e.location,
                    message: e.message,
                    help: e.help,
                })
                .collect();
            diagnostics(path, problems)
        })?;
        self.decode(path, &root)
    }

    /// Decodes and validates a document tree (YAML-made or [`Node::from_value`]).
    pub fn decode(&self, path: &str, root: &Node) -> Result<Workflow, Vec<Diagnostic>> {
        let mut decoder = Decoder::new(&self.actions);
        let workflow = decoder.workflow(root, path);
        decoder.validate();
        match workflow {
            Some(workflow) if decoder.problems.is_empty() => Ok(workflow),
            _ => Err(diagnostics(path, decoder.problems)),
        }
    }

    /// Reads files and folders (`.yaml`/`.yml` directly inside, sorted), parses each and
    /// checks the set together.
    pub fn load_paths(&self, paths: &[PathBuf]) -> Loaded {
        let mut loaded = Loaded::default();
        let mut files = Vec::new();
        for path in paths {
            if path.is_dir() {
                match std::fs::read_dir(path) {
                    Ok(entries) => {
                        let mut found: Vec<PathBuf> = entries
                            .filter_map(|e| e.ok().map(|e| e.path()))
                            .filter(|p| {
                                p.is_file()
                                    && p.extension().is_some_and(|e| e == "yaml" || e == "yml")
                            })
                            .collect();
                        found.sort();
                        files.extend(found);
                    }
                    Err(e) => loaded.diagnostics.push(io_problem(path, &e)),
                }
            } else {
                files.push(path.clone());
            }
        }
        for file in files {
            let shown = file.display().to_string();
            match std::fs::read(&file) {
                Ok(bytes) => {
                    if bytes.len() > self.limits.max_bytes {
                        loaded.diagnostics.extend(diagnostics(
                            &shown,
                            vec![Problem {
                                location: crate::flow::Location { line: 1, column: 1 },
                                message: format!(
                                    "the file is {} bytes; the limit is {} bytes",
                                    bytes.len(),
                                    self.limits.max_bytes
                                ),
                                help: None,
                            }],
                        ));
                        continue;
                    }
                    let Ok(text) = String::from_utf8(bytes) else {
                        loaded.diagnostics.push(Diagnostic {
                            path: shown,
                            line: 1,
                            column: 1,
                            message: "the file is not UTF-8 text".into(),
                            help: None,
                        });
                        continue;
                    };
                    match self.parse(&shown, &text) {
                        Ok(workflow) => loaded.workflows.push((workflow, shown)),
                        Err(d) => loaded.diagnostics.extend(d),
                    }
                }
                Err(e) => loaded.diagnostics.push(io_problem(&file, &e)),
            }
        }
        loaded.diagnostics.extend(check_set(&loaded.workflows));
        sort(&mut loaded.diagnostics);
        loaded
    }
}

/// What [`load_paths`] found: the valid workflows (with their paths) and every problem.
#[derive(Clone, Debug, Default)]
pub struct Loaded {
    pub workflows: Vec<(Workflow, String)>,
    pub diagnostics: Vec<Diagnostic>,
}

/// Parses and validates one workflow file's text. `path` is used in diagnostics.
pub fn parse_workflow(path: &str, text: &str) -> Result<Workflow, Vec<Diagnostic>> {
    Parser::default().parse(path, text)
}

/// Reads workflow files and folders with the default [`Parser`]; see [`Parser::load_paths`].
pub fn load_paths(paths: &[PathBuf]) -> Loaded {
    Parser::default().load_paths(paths)
}

fn io_problem(path: &std::path::Path, error: &std::io::Error) -> Diagnostic {
    Diagnostic {
        path: path.display().to_string(),
        line: 1,
        column: 1,
        message: format!("cannot read: {error}"),
        help: None,
    }
}

fn diagnostics(path: &str, problems: Vec<Problem>) -> Vec<Diagnostic> {
    let mut out: Vec<Diagnostic> = problems
        .into_iter()
        .map(|p| Diagnostic {
            path: path.to_string(),
            line: p.location.line,
            column: p.location.column,
            message: p.message,
            help: p.help,
        })
        .collect();
    sort(&mut out);
    out.dedup();
    out
}

fn sort(diagnostics: &mut [Diagnostic]) {
    diagnostics.sort_by(|a, b| (&a.path, a.line, a.column).cmp(&(&b.path, b.line, b.column)));
}

#[cfg(test)]
mod tests;
