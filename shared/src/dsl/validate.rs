//! Static checks over a decoded workflow (step ids, the names expressions read) and over a
//! set of workflows (duplicate names, `call:` targets and cycles).

use std::collections::{HashMap, HashSet, VecDeque};

use crate::flow::{Location, Step, StepKind, Workflow, walk};

use super::Diagnostic;
use super::decode::{Decoder, Problem};
use super::fields::suggest;

/// Roots every expression may read.
const ALWAYS: &[&str] = &[
    "event",
    "inputs",
    "vars",
    "steps",
    "env",
    "secrets",
    "device",
    "execution",
];

impl Decoder<'_> {
    /// Step-id uniqueness and every expression reference; appends to `problems`.
    pub fn validate(&mut self) {
        let mut first: HashMap<&str, Location> = HashMap::with_capacity(self.ids.len());
        let mut found = Vec::new();
        for (id, location) in &self.ids {
            match first.get(id.as_str()) {
                Some(at) => found.push(Problem {
                    location: *location,
                    message: format!(
                        "duplicate step id {id:?} (first defined at {}:{})",
                        at.line, at.column
                    ),
                    help: None,
                }),
                None => {
                    first.insert(id, *location);
                }
            }
        }
        for site in &self.refs {
            let root = site.reference.root.as_str();
            let scope = &site.scope;
            let in_foreach = !scope.items.is_empty();
            let fail = |message: String, help: Option<String>| Problem {
                location: site.location,
                message,
                help,
            };
            if scope.items.iter().any(|n| n == root) || (root == "index" && in_foreach) {
                continue;
            }
            match root {
                "steps" => {
                    if let Some(id) = site.reference.path.first()
                        && !first.contains_key(id.as_str())
                    {
                        let help = suggest(id, first.keys().copied())
                            .map(|s| format!("did you mean {s:?}?"))
                            .or_else(|| Some(format!("give the step you mean id: {id}")));
                        found.push(fail(format!("unknown step id {id:?} in steps.{id}"), help));
                    }
                }
                "inputs" => {
                    if let Some(name) = site.reference.path.first()
                        && !self.input_names.iter().any(|n| n == name)
                    {
                        let help = suggest(name, self.input_names.iter().map(String::as_str))
                            .map(|s| format!("did you mean {s:?}?"))
                            .or_else(|| {
                                Some(format!(
                                    "declare it under inputs: ({name}: {{ type: string }})"
                                ))
                            });
                        found.push(fail(
                            format!("unknown input {name:?} in inputs.{name}"),
                            help,
                        ));
                    }
                }
                _ if ALWAYS.contains(&root) => {}
                "item" | "index" => found.push(fail(
                    format!("{root:?} is only available inside foreach"),
                    None,
                )),
                "error" if !scope.error => found.push(fail(
                    "\"error\" is only available inside catch, on_failure and retry.if".into(),
                    None,
                )),
                "branches" if !scope.branches => found.push(fail(
                    "\"branches\" is only available inside a parallel join: { when }".into(),
                    None,
                )),
                "result" if !scope.result => found.push(fail(
                    "\"result\" is only available inside a step's output".into(),
                    None,
                )),
                "error" | "branches" | "result" => {}
                _ => {
                    let mut visible: Vec<&str> = ALWAYS.to_vec();
                    visible.extend(scope.items.iter().map(String::as_str));
                    if in_foreach {
                        visible.push("index");
                    }
                    for (name, on) in [
                        ("error", scope.error),
                        ("branches", scope.branches),
                        ("result", scope.result),
                    ] {
                        if on {
                            visible.push(name);
                        }
                    }
                    let help = suggest(root, visible.iter().copied())
                        .map(|s| format!("did you mean {s:?}?"))
                        .or_else(|| Some(format!("names here: {}", visible.join(", "))));
                    found.push(fail(format!("unknown name {root:?} in expression"), help));
                }
            }
        }
        self.problems.extend(found);
    }
}

/// Checks a set of workflows together: duplicate names, calls to workflows not in the set,
/// and call cycles (reported at each `call` step on the cycle).
pub fn check_set(workflows: &[(Workflow, String)]) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    let mut by_name: HashMap<&str, &str> = HashMap::new();
    for (workflow, path) in workflows {
        let name = workflow.name.as_str();
        if let Some(other) = by_name.get(name) {
            out.push(Diagnostic {
                path: path.clone(),
                line: 1,
                column: 1,
                message: format!("duplicate workflow name {name:?} (also in {other})"),
                help: Some("workflow names are unique; rename one of them".into()),
            });
        } else {
            by_name.insert(name, path);
        }
    }
    let mut graph: HashMap<&str, Vec<&str>> = HashMap::with_capacity(workflows.len());
    for (w, _) in workflows {
        // With duplicate names, the first one counts (the others are already reported).
        graph
            .entry(w.name.as_str())
            .or_insert_with(|| w.called_workflows());
    }
    for (workflow, path) in workflows {
        let from = workflow.name.as_str();
        let mut calls: Vec<&Step> = Vec::new();
        walk(&workflow.steps, &mut |s| calls.push(s));
        walk(&workflow.on_failure, &mut |s| calls.push(s));
        for step in calls {
            let StepKind::Call(call) = &step.kind else {
                continue;
            };
            let to = call.workflow.as_str();
            let at = |message: String, help: Option<String>| Diagnostic {
                path: path.clone(),
                line: step.location.line,
                column: step.location.column,
                message,
                help,
            };
            if !graph.contains_key(to) {
                let help =
                    suggest(to, graph.keys().copied()).map(|s| format!("did you mean {s:?}?"));
                out.push(at(format!("call to unknown workflow {to:?}"), help));
                continue;
            }
            if let Some(cycle) = path_between(&graph, to, from) {
                let mut names = vec![from];
                names.extend(cycle);
                out.push(at(
                    format!("call cycle: {}", names.join(" → ")),
                    Some("a workflow may not call itself, directly or through others".into()),
                ));
            }
        }
    }
    out
}

/// The shortest chain of calls from `start` to `goal` (both included), if any.
fn path_between<'a>(
    graph: &HashMap<&'a str, Vec<&'a str>>,
    start: &'a str,
    goal: &'a str,
) -> Option<Vec<&'a str>> {
    let mut parent: HashMap<&str, &str> = HashMap::new();
    let mut seen: HashSet<&str> = HashSet::from([start]);
    let mut queue = VecDeque::from([start]);
    while let Some(node) = queue.pop_front() {
        if node == goal {
            let mut chain = vec![node];
            let mut at = node;
            while let Some(p) = parent.get(at) {
                chain.push(p);
                at = p;
            }
            chain.reverse();
            return Some(chain);
        }
        for next in graph.get(node).into_iter().flatten() {
            if seen.insert(next) {
                parent.insert(next, node);
                queue.push_back(next);
            }
        }
    }
    None
}
