//! The compiled form of an expression, and the free names it reads.

use std::sync::Arc;

use regex::Regex;

use super::Reference;
use super::functions::Func;
use crate::Value;

#[derive(Debug)]
pub(crate) enum Node {
    Const(Value),
    /// A root name looked up in the [`super::Scope`]; `offset` is where it starts.
    Root {
        name: String,
        offset: usize,
    },
    /// A variable bound by a macro: its slot on the evaluation stack.
    Local(usize),
    Member(Box<Node>, String),
    Index(Box<Node>, Box<Node>),
    Not(Box<Node>),
    Neg(Box<Node>),
    Binary(BinOp, Box<Node>, Box<Node>),
    And(Box<Node>, Box<Node>),
    Or(Box<Node>, Box<Node>),
    Cond(Box<Node>, Box<Node>, Box<Node>),
    List(Vec<Node>),
    Map(Vec<(Node, Node)>),
    /// `f(a, b)` and `a.f(b)` alike: a receiver is the first argument.
    Call {
        func: Func,
        args: Vec<Node>,
        /// A `matches` pattern known at parse time, compiled once.
        regex: Option<Arc<Regex>>,
    },
    /// `has(target.field)`.
    Has(Box<Node>, String),
    Macro(Box<MacroNode>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    Rem,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    In,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MacroKind {
    All,
    Exists,
    ExistsOne,
    Map,
    Filter,
}

impl MacroKind {
    pub(crate) fn from_name(name: &str) -> Option<MacroKind> {
        Some(match name {
            "all" => MacroKind::All,
            "exists" => MacroKind::Exists,
            "exists_one" | "existsOne" => MacroKind::ExistsOne,
            "map" => MacroKind::Map,
            "filter" => MacroKind::Filter,
            _ => return None,
        })
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            MacroKind::All => "all",
            MacroKind::Exists => "exists",
            MacroKind::ExistsOne => "exists_one",
            MacroKind::Map => "map",
            MacroKind::Filter => "filter",
        }
    }
}

/// `target.kind(var, body)` or `target.map(var, filter, body)`. While `body` (and `filter`)
/// run, the element is bound in stack slot `slot`.
#[derive(Debug)]
pub(crate) struct MacroNode {
    pub kind: MacroKind,
    pub target: Node,
    pub slot: usize,
    pub filter: Option<Node>,
    pub body: Node,
}

impl Node {
    pub(crate) fn is_const(&self) -> bool {
        matches!(self, Node::Const(_))
    }

    /// Free names in source order.
    pub(crate) fn references(&self, out: &mut Vec<Reference>) {
        match self {
            Node::Const(_) | Node::Local(_) => {}
            Node::Root { name, offset } => out.push(Reference {
                root: name.clone(),
                path: Vec::new(),
                offset: *offset,
            }),
            Node::Member(..) | Node::Index(..) => self.chain_references(None, out),
            Node::Has(target, field) => target.chain_references(Some(field), out),
            Node::Not(a) | Node::Neg(a) => a.references(out),
            Node::Binary(_, a, b) | Node::And(a, b) | Node::Or(a, b) => {
                a.references(out);
                b.references(out);
            }
            Node::Cond(a, b, c) => {
                a.references(out);
                b.references(out);
                c.references(out);
            }
            Node::List(items) | Node::Call { args: items, .. } => {
                items.iter().for_each(|item| item.references(out));
            }
            Node::Map(entries) => entries.iter().for_each(|(k, v)| {
                k.references(out);
                v.references(out);
            }),
            Node::Macro(m) => {
                m.target.references(out);
                if let Some(filter) = &m.filter {
                    filter.references(out);
                }
                m.body.references(out);
            }
        }
    }

    /// A chain of member selections and indexes: one reference for its root (with the
    /// constant part of the path), plus whatever the non-constant indexes read.
    fn chain_references(&self, last: Option<&String>, out: &mut Vec<Reference>) {
        // Steps from the outside in; `None` is a step that is not a constant name.
        let mut steps: Vec<Option<&str>> = Vec::new();
        if let Some(field) = last {
            steps.push(Some(field));
        }
        let mut indexes = Vec::new();
        let mut node = self;
        loop {
            match node {
                Node::Member(target, name) => {
                    steps.push(Some(name));
                    node = target;
                }
                Node::Index(target, index) => {
                    match &**index {
                        Node::Const(Value::String(key)) => steps.push(Some(key)),
                        other => {
                            steps.push(None);
                            indexes.push(other);
                        }
                    }
                    node = target;
                }
                _ => break,
            }
        }
        match node {
            Node::Root { name, offset } => {
                let path = steps
                    .iter()
                    .rev()
                    .map_while(|step| step.map(str::to_string))
                    .collect();
                out.push(Reference {
                    root: name.clone(),
                    path,
                    offset: *offset,
                });
            }
            other => other.references(out),
        }
        for index in indexes.into_iter().rev() {
            index.references(out);
        }
    }
}
