//! Steps: exactly one kind key plus common keys.

use crate::Value;
use crate::expr::Template;
use crate::flow::{
    ActionStep, Backoff, Branch, CallStep, EmitStep, ForeachStep, Join, LoopCondition, LoopStep,
    ParallelStep, Retry, SleepStep, Step, StepId, StepKind, SwitchCase, SwitchStep, WaitStep,
};

use super::decode::{Decoder, Fields, Scope, quote_list};
use super::fields::{
    CALL, EMIT, FAIL, JOIN, LOOP, PARALLEL, RETRY, SLEEP_UNTIL, STEP, STEP_KINDS, SWITCH_CASE,
    WAIT, suggest,
};
use super::yaml::{Node, NodeKind};

/// Keys that go with one kind only: (key, kinds it belongs to).
const COMPANIONS: &[(&str, &[&str])] = &[
    ("with", &["action"]),
    ("as", &["foreach"]),
    ("concurrency", &["foreach"]),
    ("steps", &["foreach", "loop"]),
];

/// Names expressions see everywhere; foreach `as` names may not take them.
pub(crate) const ROOTS: &[&str] = &[
    "event",
    "inputs",
    "vars",
    "steps",
    "item",
    "index",
    "error",
    "branches",
    "env",
    "secrets",
    "device",
    "execution",
    "result",
];

impl Decoder<'_> {
    pub fn steps(&mut self, node: &Node, scope: &Scope) -> Vec<Step> {
        let Some(items) = node.as_seq() else {
            self.error(
                node.location,
                format!("expected a list of steps, found {}", node.describe()),
            );
            return Vec::new();
        };
        items.iter().filter_map(|n| self.step(n, scope)).collect()
    }

    fn step(&mut self, node: &Node, scope: &Scope) -> Option<Step> {
        let f = self.fields_open(node, &STEP)?;
        let mut typo_of_kind = false;
        for (key, _) in f.entries {
            if STEP.field(&key.name).is_none() {
                let s = suggest(&key.name, STEP.fields.iter().map(|f| f.name));
                typo_of_kind |= s.is_some_and(|s| STEP_KINDS.contains(&s));
                self.unknown_key(key.location, &key.name, &STEP);
            }
        }
        let kinds: Vec<&(super::yaml::Key, Node)> = f
            .entries
            .iter()
            .filter(|(k, _)| STEP_KINDS.contains(&k.name.as_str()))
            .collect();
        let kind_name = match kinds.as_slice() {
            [] => {
                if !typo_of_kind {
                    self.error(
                        node.location,
                        format!("a step needs exactly one of {}", quote_list(STEP_KINDS)),
                    );
                }
                None
            }
            [one] => Some(one.0.name.as_str()),
            [first, second, ..] => {
                self.error(
                    second.0.location,
                    format!(
                        "a step has exactly one kind, but this one has both {:?} and {:?}",
                        first.0.name, second.0.name
                    ),
                );
                None
            }
        };
        if let Some(kind) = kind_name {
            for (key, owners) in COMPANIONS {
                if f.has(key) && !owners.contains(&kind) {
                    self.error(
                        f.key_location(key),
                        format!(
                            "{key:?} only applies to {} steps, not {kind}",
                            owners.join(" and ")
                        ),
                    );
                }
            }
        }

        let id = f.get("id").and_then(|n| {
            let text = self.text(n, "id")?;
            match StepId::new(&text) {
                Ok(id) => {
                    self.ids.push((text, n.location));
                    Some(id)
                }
                Err(e) => {
                    self.error(n.location, e.0);
                    None
                }
            }
        });
        let name = f.get("name").and_then(|n| self.text(n, "name"));
        let when = f.get("if").and_then(|n| self.condition(n, "if", scope));
        let unless = f
            .get("unless")
            .and_then(|n| self.condition(n, "unless", scope));
        let retry = f.get("retry").and_then(|n| self.retry(n, scope));
        let timeout = f
            .get("timeout")
            .and_then(|n| self.setting_duration(n, "timeout", scope));
        let catch = f.get("catch").map(|n| {
            if n.is_null() {
                Vec::new()
            } else {
                self.steps(n, &scope.with_error())
            }
        });
        let output = f.get("output").and_then(|n| {
            let inner = Scope {
                result: true,
                ..scope.clone()
            };
            self.template(n, &inner)
        });
        let kind = self.step_kind(kind_name?, f, scope)?;
        Some(Step {
            id,
            name,
            when,
            unless,
            retry,
            timeout,
            catch,
            output,
            kind,
            location: node.location,
        })
    }

    fn block(&mut self, f: Fields<'_>, kind: &str, scope: &Scope) -> Option<Vec<Step>> {
        match f.get("steps") {
            Some(n) => Some(self.steps(n, scope)),
            None => {
                self.error(f.node.location, format!("{kind} needs \"steps\""));
                None
            }
        }
    }

    fn step_kind(&mut self, kind: &str, f: Fields<'_>, scope: &Scope) -> Option<StepKind> {
        let node = f.get(kind)?;
        Some(match kind {
            "action" => StepKind::Action(self.action(node, f.get("with"), scope)?),
            "set" => {
                let pairs = self.named_templates(node, "set", scope)?;
                if pairs.is_empty() {
                    self.error(node.location, "set needs at least one variable");
                }
                StepKind::Set(pairs)
            }
            "switch" => StepKind::Switch(self.switch(node, scope)?),
            "parallel" => StepKind::Parallel(self.parallel(node, scope)?),
            "foreach" => {
                let items = self.template(node, scope);
                let item_name = match f.get("as") {
                    Some(n) => {
                        let name = self.string(n, "as")?;
                        let ident = name
                            .chars()
                            .next()
                            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                        if !ident {
                            self.error(
                                n.location,
                                format!("as {name:?} must be a name of letters, digits and _"),
                            );
                            return None;
                        }
                        if ROOTS.contains(&name.as_str()) && name != "item" {
                            self.error_help(
                                n.location,
                                format!("as {name:?} would hide the expression name {name:?}"),
                                Some("choose another name".into()),
                            );
                            return None;
                        }
                        name
                    }
                    None => "item".into(),
                };
                let concurrency = match f.get("concurrency") {
                    Some(n) => self.u32(n, "foreach concurrency", 1)?,
                    None => 1,
                };
                let mut inner = scope.clone();
                inner.items.push(item_name.clone());
                let steps = self.block(f, "foreach", &inner)?;
                StepKind::Foreach(ForeachStep {
                    items: items?,
                    item_name,
                    concurrency,
                    steps,
                })
            }
            "loop" => {
                let l = self.fields(node, &LOOP);
                let steps = self.block(f, "loop", scope);
                let l = l?;
                let condition = match (l.get("while"), l.get("until")) {
                    (Some(w), None) => LoopCondition::While(self.condition(w, "while", scope)?),
                    (None, Some(u)) => LoopCondition::Until(self.condition(u, "until", scope)?),
                    (Some(_), Some(_)) => {
                        self.error(
                            l.key_location("until"),
                            "a loop has while or until, not both",
                        );
                        return None;
                    }
                    (None, None) => {
                        self.error(node.location, "loop needs \"while\" or \"until\"");
                        return None;
                    }
                };
                let max = match l.get("max") {
                    Some(n) => self.u32(n, "loop max", 1)?,
                    None => return None, // reported by the table as a missing key
                };
                StepKind::Loop(LoopStep {
                    condition,
                    max,
                    steps: steps?,
                })
            }
            "call" => StepKind::Call(self.call(node, scope)?),
            "sleep" => StepKind::Sleep(self.sleep(node, scope)?),
            "wait" => {
                let w = self.fields(node, &WAIT)?;
                let event = self.string(w.get("event")?, "event");
                let matches = w
                    .get("match")
                    .and_then(|n| self.condition(n, "match", scope));
                let timeout = match w.get("timeout") {
                    Some(n) => Some(self.setting_duration(n, "timeout", scope)?),
                    None => None,
                };
                StepKind::Wait(WaitStep {
                    event: event?,
                    matches,
                    timeout,
                })
            }
            "emit" => {
                let e = self.fields(node, &EMIT)?;
                let event_type = self.template(e.get("type")?, scope);
                let data = match e.get("data") {
                    Some(n) => self.template(n, scope)?,
                    None => Template::Literal(Value::Null),
                };
                let topic = match e.get("topic") {
                    Some(n) => Some(self.template(n, scope)?),
                    None => None,
                };
                StepKind::Emit(EmitStep {
                    event_type: event_type?,
                    data,
                    topic,
                })
            }
            "group" => StepKind::Group(self.steps(node, scope)),
            "fail" => {
                let message = match &node.kind {
                    NodeKind::Map(_) => {
                        let m = self.fields(node, &FAIL)?;
                        m.get("message")?
                    }
                    _ => node,
                };
                StepKind::Fail {
                    message: self.template(message, scope)?,
                }
            }
            "return" => StepKind::Return(self.template(node, scope)?),
            _ => return None,
        })
    }

    fn action(&mut self, node: &Node, with: Option<&Node>, scope: &Scope) -> Option<ActionStep> {
        let action = self.string(node, "action")?;
        let spec = self.actions.iter().find(|s| s.kind == action).copied();
        if spec.is_none() {
            let help = suggest(&action, self.actions.iter().map(|s| s.kind))
                .map(|s| format!("did you mean {s:?}?"))
                .unwrap_or_else(|| {
                    let kinds: Vec<&str> = self.actions.iter().map(|s| s.kind).collect();
                    format!("known actions: {}", kinds.join(", "))
                });
            self.error_help(
                node.location,
                format!("unknown action type {action:?}"),
                Some(help),
            );
        }
        if let (Some(spec), Some(with)) = (spec, with)
            && let Some(entries) = with.as_map()
        {
            for (key, _) in entries {
                if !spec.settings.iter().any(|s| s.name == key.name) {
                    let help = suggest(&key.name, spec.settings.iter().map(|s| s.name))
                        .map(|s| format!("did you mean {s:?}?"))
                        .unwrap_or_else(|| {
                            let names: Vec<&str> = spec.settings.iter().map(|s| s.name).collect();
                            format!("{action} takes {}", names.join(", "))
                        });
                    self.error_help(
                        key.location,
                        format!("unknown setting {:?} for action {action:?}", key.name),
                        Some(help),
                    );
                }
            }
        }
        if let Some(spec) = spec
            && with.is_none_or(|w| w.as_map().is_some() || w.is_null())
        {
            let entries = with.and_then(Node::as_map).unwrap_or_default();
            for setting in spec.settings.iter().filter(|s| s.required) {
                if !entries.iter().any(|(k, _)| k.name == setting.name) {
                    self.error(
                        with.map_or(node.location, |w| w.location),
                        format!(
                            "action {action:?} needs {:?} in with ({})",
                            setting.name, setting.description
                        ),
                    );
                }
            }
        }
        let with = match with {
            Some(n) if n.is_null() => Template::Literal(Value::Object(Default::default())),
            Some(n) => {
                if !matches!(n.kind, NodeKind::Map(_))
                    && !n
                        .as_str()
                        .is_some_and(|s| s.trim_start().starts_with("${{"))
                {
                    self.error(
                        n.location,
                        format!("with must be a map of settings, found {}", n.describe()),
                    );
                    return None;
                }
                self.template(n, scope)?
            }
            None => Template::Literal(Value::Object(Default::default())),
        };
        spec?;
        Some(ActionStep { action, with })
    }

    fn retry(&mut self, node: &Node, scope: &Scope) -> Option<Retry> {
        let f = self.fields(node, &RETRY)?;
        let mut retry = Retry::default();
        let mut ok = true;
        if let Some(n) = f.get("attempts") {
            ok &= self
                .u32(n, "retry attempts", 1)
                .map(|v| retry.attempts = v)
                .is_some();
        }
        if let Some(n) = f.get("backoff") {
            match self.choice(n, "backoff", &["fixed", "linear", "exponential"]) {
                Some("linear") => retry.backoff = Backoff::Linear,
                Some("exponential") => retry.backoff = Backoff::Exponential,
                Some(_) => retry.backoff = Backoff::Fixed,
                None => ok = false,
            }
        }
        if let Some(n) = f.get("delay") {
            ok &= self.duration(n, "delay").map(|d| retry.delay = d).is_some();
        }
        if let Some(n) = f.get("max_delay") {
            ok &= self
                .duration(n, "max_delay")
                .map(|d| retry.max_delay = Some(d))
                .is_some();
            if let Some(max) = retry.max_delay
                && max < retry.delay
            {
                self.error(n.location, "max_delay is shorter than delay");
                ok = false;
            }
        }
        if let Some(n) = f.get("factor") {
            match self.number(n, "factor") {
                Some(v) if v >= 1.0 => retry.factor = v,
                Some(_) => {
                    self.error(n.location, "factor must be at least 1");
                    ok = false;
                }
                None => ok = false,
            }
        }
        if let Some(n) = f.get("jitter") {
            ok &= self.bool(n, "jitter").map(|b| retry.jitter = b).is_some();
        }
        if let Some(n) = f.get("if") {
            retry.when = self.condition(n, "retry if", &scope.with_error());
            ok &= retry.when.is_some();
        }
        ok.then_some(retry)
    }

    fn switch(&mut self, node: &Node, scope: &Scope) -> Option<SwitchStep> {
        let Some(items) = node.as_seq() else {
            self.error(
                node.location,
                format!(
                    "switch must be a list of {{ when, steps }} branches, found {}",
                    node.describe()
                ),
            );
            return None;
        };
        let mut cases = Vec::new();
        let mut default: Option<Vec<Step>> = None;
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            let Some(c) = self.fields(item, &SWITCH_CASE) else {
                ok = false;
                continue;
            };
            if let Some(d) = c.get("default") {
                if c.has("when") || c.has("steps") {
                    self.error(
                        item.location,
                        "a default branch has only \"default\": [steps]",
                    );
                    ok = false;
                } else if i + 1 != items.len() {
                    self.error(item.location, "the default branch must be the last one");
                    ok = false;
                }
                default = Some(self.steps(d, scope));
                continue;
            }
            let when = match c.get("when") {
                Some(n) => self.condition(n, "when", scope),
                None => {
                    self.error(
                        item.location,
                        "a switch branch needs \"when\" and \"steps\"",
                    );
                    None
                }
            };
            let steps = match c.get("steps") {
                Some(n) => Some(self.steps(n, scope)),
                None => {
                    if when.is_some() {
                        self.error(item.location, "a switch branch needs \"steps\"");
                    }
                    None
                }
            };
            match (when, steps) {
                (Some(when), Some(steps)) => cases.push(SwitchCase { when, steps }),
                _ => ok = false,
            }
        }
        ok.then_some(SwitchStep { cases, default })
    }

    fn parallel(&mut self, node: &Node, scope: &Scope) -> Option<ParallelStep> {
        let f = self.fields(node, &PARALLEL)?;
        let join = match f.get("join") {
            None => Some(Join::All),
            Some(n) if n.as_map().is_some() => {
                let j = self.fields(n, &JOIN)?;
                match (j.get("count"), j.get("when")) {
                    (Some(c), None) => self.u32(c, "join count", 1).map(Join::Count),
                    (None, Some(w)) => {
                        let inner = Scope {
                            branches: true,
                            ..scope.clone()
                        };
                        self.condition(w, "join when", &inner).map(Join::When)
                    }
                    _ => {
                        self.error(
                            n.location,
                            "join takes either { count: N } or { when: expr }",
                        );
                        None
                    }
                }
            }
            Some(n) => match self.choice(n, "join", &["all", "any", "first"]) {
                Some("any") => Some(Join::Any),
                Some("first") => Some(Join::First),
                Some(_) => Some(Join::All),
                None => None,
            },
        };
        let branches_node = f.get("branches")?;
        let Some(entries) = branches_node.as_map() else {
            self.error(
                branches_node.location,
                format!(
                    "branches must be a map of branch names to steps, found {}",
                    branches_node.describe()
                ),
            );
            return None;
        };
        if entries.is_empty() {
            self.error(branches_node.location, "parallel needs at least one branch");
        }
        let branches: Vec<Branch> = entries
            .iter()
            .map(|(k, v)| Branch {
                name: k.name.clone(),
                steps: self.steps(v, scope),
            })
            .collect();
        if let Some(Join::Count(n)) = join
            && n as usize > branches.len()
        {
            self.error(
                f.key_location("join"),
                format!(
                    "join count {n} is more than the {} branches",
                    branches.len()
                ),
            );
        }
        Some(ParallelStep {
            join: join?,
            branches,
        })
    }

    fn call(&mut self, node: &Node, scope: &Scope) -> Option<CallStep> {
        if let Some(name) = node.as_str() {
            return Some(CallStep {
                workflow: name.to_string(),
                version: None,
                input: Template::Literal(Value::Object(Default::default())),
                wait: true,
            });
        }
        let c = self.fields(node, &CALL)?;
        let workflow = self.string(c.get("workflow")?, "workflow");
        let version = match c.get("version") {
            Some(n) => Some(self.u32(n, "version", 1)?),
            None => None,
        };
        let input = match c.get("input") {
            Some(n) => self.template(n, scope)?,
            None => Template::Literal(Value::Object(Default::default())),
        };
        let wait = match c.get("wait") {
            Some(n) => self.bool(n, "wait")?,
            None => true,
        };
        Some(CallStep {
            workflow: workflow?,
            version,
            input,
            wait,
        })
    }

    fn sleep(&mut self, node: &Node, scope: &Scope) -> Option<SleepStep> {
        if node.as_map().is_some() {
            let s = self.fields(node, &SLEEP_UNTIL)?;
            return Some(SleepStep::Until(self.template(s.get("until")?, scope)?));
        }
        self.setting_duration(node, "sleep", scope)
            .map(SleepStep::For)
    }
}
