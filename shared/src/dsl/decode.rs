//! Node → model: the shared decoding context and the scalar, expression and template
//! conversions every area (workflow, triggers, steps) uses. Decoding never stops at the first
//! problem: each function reports what it finds and returns `None` for what it cannot build.

use std::time::Duration;

use crate::Value;
use crate::action::ActionSpec;
use crate::expr::{Expr, Reference, Template};
use crate::flow::{Location, Setting, parse_duration};

use super::fields::{Table, suggest};
use super::yaml::{Node, NodeKind};

/// A problem before the path is attached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Problem {
    pub location: Location,
    pub message: String,
    pub help: Option<String>,
}

/// What an expression may see where it is written.
#[derive(Clone, Debug, Default)]
pub(crate) struct Scope {
    /// Names bound by enclosing `foreach` (`item` or the `as:` name); `index` comes with them.
    pub items: Vec<String>,
    /// Inside `catch`, `on_failure` or `retry.if`.
    pub error: bool,
    /// Inside a `parallel` `join: { when }`.
    pub branches: bool,
    /// Inside a step's `output`.
    pub result: bool,
}

impl Scope {
    pub fn with_error(&self) -> Scope {
        Scope {
            error: true,
            ..self.clone()
        }
    }
}

/// A name an expression reads, where it is, and what was visible there.
#[derive(Clone, Debug)]
pub(crate) struct RefSite {
    pub reference: Reference,
    pub location: Location,
    pub scope: Scope,
}

/// The decoding context: collects problems, expression references and step ids.
#[derive(Debug)]
pub(crate) struct Decoder<'a> {
    pub problems: Vec<Problem>,
    pub refs: Vec<RefSite>,
    /// Every step id as written, in document order.
    pub ids: Vec<(String, Location)>,
    /// Declared input names, for `inputs.X` checks.
    pub input_names: Vec<String>,
    pub actions: &'a [&'static ActionSpec],
}

/// The entries of a mapping that passed the key checks.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Fields<'n> {
    pub node: &'n Node,
    pub entries: &'n [(super::yaml::Key, Node)],
}

impl<'n> Fields<'n> {
    pub fn get(&self, name: &str) -> Option<&'n Node> {
        self.entries
            .iter()
            .find(|(k, _)| k.name == name)
            .map(|(_, v)| v)
    }

    pub fn key_location(&self, name: &str) -> Location {
        self.entries
            .iter()
            .find(|(k, _)| k.name == name)
            .map_or(self.node.location, |(k, _)| k.location)
    }

    pub fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }
}

pub(crate) fn quote_list(names: &[&str]) -> String {
    match names {
        [] => String::new(),
        [one] => one.to_string(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

impl<'a> Decoder<'a> {
    pub fn new(actions: &'a [&'static ActionSpec]) -> Self {
        Decoder {
            problems: Vec::new(),
            refs: Vec::new(),
            ids: Vec::new(),
            input_names: Vec::new(),
            actions,
        }
    }

    pub fn error(&mut self, location: Location, message: impl Into<String>) {
        self.problems.push(Problem {
            location,
            message: message.into(),
            help: None,
        });
    }

    pub fn error_help(
        &mut self,
        location: Location,
        message: impl Into<String>,
        help: Option<String>,
    ) {
        self.problems.push(Problem {
            location,
            message: message.into(),
            help,
        });
    }

    /// Requires a map, reports unknown keys (with a suggestion) and missing required keys.
    pub fn fields<'n>(&mut self, node: &'n Node, table: &Table) -> Option<Fields<'n>> {
        let fields = self.fields_open(node, table)?;
        for (key, _) in fields.entries {
            if table.field(&key.name).is_none() {
                self.unknown_key(key.location, &key.name, table);
            }
        }
        Some(fields)
    }

    /// Like [`Decoder::fields`] without the unknown-key check (the caller does its own).
    pub fn fields_open<'n>(&mut self, node: &'n Node, table: &Table) -> Option<Fields<'n>> {
        let Some(entries) = node.as_map() else {
            self.error(
                node.location,
                format!(
                    "expected a map for {}, found {}",
                    table.what,
                    node.describe()
                ),
            );
            return None;
        };
        let fields = Fields { node, entries };
        for field in table.fields.iter().filter(|f| f.required) {
            if !fields.has(field.name) {
                self.error(
                    node.location,
                    format!(
                        "missing required key {:?} in {} ({})",
                        field.name, table.what, field.description
                    ),
                );
            }
        }
        Some(fields)
    }

    pub fn unknown_key(&mut self, location: Location, name: &str, table: &Table) {
        let help = suggest(name, table.fields.iter().map(|f| f.name))
            .map(|s| format!("did you mean {s:?}?"))
            .or_else(|| {
                let names: Vec<&str> = table.fields.iter().map(|f| f.name).collect();
                (!names.is_empty()).then(|| format!("known keys: {}", names.join(", ")))
            });
        self.error_help(
            location,
            format!("unknown key {name:?} in {}", table.what),
            help,
        );
    }

    pub fn string(&mut self, node: &Node, what: &str) -> Option<String> {
        match node.as_str() {
            Some(s) => Some(s.to_string()),
            None => {
                self.error(
                    node.location,
                    format!("{what} must be a string, found {}", node.describe()),
                );
                None
            }
        }
    }

    /// A string, or a number/bool scalar taken as written (labels, topics).
    pub fn text(&mut self, node: &Node, what: &str) -> Option<String> {
        match &node.kind {
            NodeKind::Scalar {
                value: Value::String(s),
                ..
            } => Some(s.clone()),
            NodeKind::Scalar {
                value: Value::Number(_) | Value::Bool(_),
                text,
                ..
            } => Some(text.clone()),
            _ => self.string(node, what),
        }
    }

    pub fn int(&mut self, node: &Node, what: &str, min: i64, max: i64) -> Option<i64> {
        let value = match &node.kind {
            NodeKind::Scalar {
                value: Value::Number(n),
                ..
            } => n.as_i64(),
            _ => None,
        };
        match value {
            Some(n) if (min..=max).contains(&n) => Some(n),
            Some(n) => {
                let range = if max >= u32::MAX as i64 {
                    format!("at least {min}")
                } else {
                    format!("from {min} to {max}")
                };
                self.error(
                    node.location,
                    format!("{what} must be an integer {range}, found {n}"),
                );
                None
            }
            None => {
                self.error(
                    node.location,
                    format!("{what} must be an integer, found {}", node.describe()),
                );
                None
            }
        }
    }

    pub fn u32(&mut self, node: &Node, what: &str, min: u32) -> Option<u32> {
        self.int(node, what, min as i64, u32::MAX as i64)
            .map(|n| n as u32)
    }

    pub fn number(&mut self, node: &Node, what: &str) -> Option<f64> {
        match &node.kind {
            NodeKind::Scalar {
                value: Value::Number(n),
                ..
            } => n.as_f64(),
            _ => {
                self.error(
                    node.location,
                    format!("{what} must be a number, found {}", node.describe()),
                );
                None
            }
        }
    }

    pub fn bool(&mut self, node: &Node, what: &str) -> Option<bool> {
        match &node.kind {
            NodeKind::Scalar {
                value: Value::Bool(b),
                ..
            } => Some(*b),
            _ => {
                let help = node
                    .as_str()
                    .filter(|s| matches!(*s, "yes" | "no" | "on" | "off" | "y" | "n"))
                    .map(|_| "YAML 1.2 reads yes/no/on/off as strings; write true or false".into());
                self.error_help(
                    node.location,
                    format!("{what} must be true or false, found {}", node.describe()),
                    help,
                );
                None
            }
        }
    }

    /// One of `choices`, with a suggestion when close.
    pub fn choice<'c>(
        &mut self,
        node: &Node,
        what: &str,
        choices: &'c [&'c str],
    ) -> Option<&'c str> {
        let text = self.text(node, what)?;
        if let Some(choice) = choices.iter().find(|c| **c == text) {
            return Some(choice);
        }
        let lower = text.to_ascii_lowercase();
        let help = choices
            .iter()
            .find(|c| **c == lower)
            .copied()
            .or_else(|| suggest(&text, choices.iter().copied()))
            .map(|s| format!("did you mean {s:?}?"));
        self.error_help(
            node.location,
            format!("invalid {what} {text:?}: expected {}", quote_list(choices)),
            help,
        );
        None
    }

    pub fn duration(&mut self, node: &Node, what: &str) -> Option<Duration> {
        match &node.kind {
            NodeKind::Scalar {
                value: Value::String(s),
                ..
            } => match parse_duration(s) {
                Ok(d) => Some(d),
                Err(e) => {
                    self.error(node.location, format!("{what}: {e}"));
                    None
                }
            },
            NodeKind::Scalar {
                value: Value::Number(_),
                text,
                ..
            } => {
                self.error_help(
                    node.location,
                    format!("{what}: invalid duration {text}: missing unit"),
                    Some(format!("write a number and a unit, like {text}s")),
                );
                None
            }
            _ => {
                self.error(
                    node.location,
                    format!(
                        "{what} must be a duration like 10s, found {}",
                        node.describe()
                    ),
                );
                None
            }
        }
    }

    /// A duration, or an expression computing one at run time.
    pub fn setting_duration(
        &mut self,
        node: &Node,
        what: &str,
        scope: &Scope,
    ) -> Option<Setting<Duration>> {
        if node.as_str().is_some_and(|s| s.contains("${{")) {
            return self.condition(node, what, scope).map(Setting::Dynamic);
        }
        self.duration(node, what).map(Setting::Fixed)
    }

    /// An expression written with or without `${{ }}`, or a boolean literal.
    pub fn condition(&mut self, node: &Node, what: &str, scope: &Scope) -> Option<Expr> {
        let text = match &node.kind {
            NodeKind::Scalar {
                value: Value::Bool(b),
                ..
            } => return Some(Expr::constant(Value::Bool(*b))),
            NodeKind::Scalar {
                value: Value::String(s),
                ..
            } => s.as_str(),
            _ => {
                self.error(
                    node.location,
                    format!(
                        "{what} must be an expression or true/false, found {}",
                        node.describe()
                    ),
                );
                return None;
            }
        };
        let trimmed = text.trim();
        let (source, base) = match trimmed
            .strip_prefix("${{")
            .and_then(|t| t.strip_suffix("}}"))
        {
            Some(inner) if !inner.contains("${{") => {
                let start = text.find("${{").unwrap_or(0) + 3;
                (inner, text[..start].chars().count())
            }
            _ if text.contains("${{") => {
                self.error_help(
                    node.location,
                    format!("{what} must be one expression, not text around ${{{{ }}}}"),
                    Some("write the whole condition inside one ${{ }}, or without it".into()),
                );
                return None;
            }
            _ => (text, 0),
        };
        match Expr::parse(source) {
            Ok(expr) => {
                for reference in expr.references() {
                    let location = node.location_at(base + reference.offset);
                    self.refs.push(RefSite {
                        reference,
                        location,
                        scope: scope.clone(),
                    });
                }
                Some(expr)
            }
            Err(e) => {
                self.error_help(
                    node.location_at(base + e.offset),
                    format!("invalid expression in {what}: {}", e.message),
                    e.help,
                );
                None
            }
        }
    }

    /// A value that may hold expressions at any depth. Subtrees without expressions collapse
    /// into one `Template::Literal`.
    pub fn template(&mut self, node: &Node, scope: &Scope) -> Option<Template> {
        match &node.kind {
            NodeKind::Scalar {
                value: Value::String(s),
                ..
            } => {
                if !s.contains("${{") {
                    return Some(Template::Literal(Value::String(s.clone())));
                }
                match Template::parse_str(s) {
                    Ok(template) => {
                        // Offsets of a one-string template count from the string's start.
                        for reference in template.references() {
                            let location = node.location_at(reference.offset);
                            self.refs.push(RefSite {
                                reference,
                                location,
                                scope: scope.clone(),
                            });
                        }
                        Some(template)
                    }
                    Err(e) => {
                        self.error_help(
                            node.location_at(e.offset),
                            format!("invalid expression: {}", e.message),
                            e.help,
                        );
                        None
                    }
                }
            }
            NodeKind::Scalar { value, .. } => Some(Template::Literal(value.clone())),
            NodeKind::Seq(items) => {
                let mut out = Vec::with_capacity(items.len());
                let mut ok = true;
                for item in items.iter() {
                    match self.template(item, scope) {
                        Some(t) => out.push(t),
                        None => ok = false,
                    }
                }
                if !ok {
                    return None;
                }
                if out.iter().all(Template::is_constant) {
                    return Some(Template::Literal(Value::Array(
                        out.into_iter().map(literal).collect(),
                    )));
                }
                Some(Template::List(out))
            }
            NodeKind::Map(entries) => {
                let mut out = Vec::with_capacity(entries.len());
                let mut ok = true;
                for (key, value) in entries.iter() {
                    match self.template(value, scope) {
                        Some(t) => out.push((key.name.clone(), t)),
                        None => ok = false,
                    }
                }
                if !ok {
                    return None;
                }
                if out.iter().all(|(_, t)| t.is_constant()) {
                    return Some(Template::Literal(Value::Object(
                        out.into_iter().map(|(k, t)| (k, literal(t))).collect(),
                    )));
                }
                Some(Template::Map(out))
            }
        }
    }

    /// `name: value` pairs of a map whose values are templates (`vars`, `set`).
    pub fn named_templates(
        &mut self,
        node: &Node,
        what: &str,
        scope: &Scope,
    ) -> Option<Vec<(String, Template)>> {
        let Some(entries) = node.as_map() else {
            self.error(
                node.location,
                format!(
                    "{what} must be a map of names to values, found {}",
                    node.describe()
                ),
            );
            return None;
        };
        let mut out = Vec::with_capacity(entries.len());
        let mut ok = true;
        for (key, value) in entries {
            if key.name.is_empty() {
                self.error(key.location, format!("empty name in {what}"));
                ok = false;
                continue;
            }
            match self.template(value, scope) {
                Some(t) => out.push((key.name.clone(), t)),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }
}

fn literal(template: Template) -> Value {
    match template {
        Template::Literal(v) => v,
        _ => Value::Null,
    }
}
