//! `${{ }}` expressions: CEL syntax and semantics over JSON-like values.
//!
//! STUB: the public surface below is the contract other modules use; the implementation is
//! being written (lexer, parser, evaluator, templates).

use std::sync::Arc;

use crate::{Map, Value};

/// Names an expression can see. Implemented by the engine's evaluation contexts.
pub trait Scope {
    /// The value bound to a root name (`event`, `vars`, `steps`, `item`, …), if any.
    fn lookup(&self, name: &str) -> Option<&Value>;
}

impl Scope for Map {
    fn lookup(&self, name: &str) -> Option<&Value> {
        self.get(name)
    }
}

/// A compiled expression.
#[derive(Clone, Debug)]
pub struct Expr {
    source: Arc<str>,
}

impl PartialEq for Expr {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

/// Why an expression did not compile. `offset` counts characters from the start of the
/// expression's source text.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct ParseError {
    pub offset: usize,
    pub message: String,
    pub help: Option<String>,
}

/// Why an evaluation failed at run time (missing key, type mismatch, division by zero …).
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct EvalError {
    pub message: String,
}

/// A name an expression reads: its root (`steps`), the constant member path after it
/// (`["fetch", "output"]`) and where it starts in the source (characters).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    pub root: String,
    pub path: Vec<String>,
    pub offset: usize,
}

impl Expr {
    pub fn parse(source: &str) -> Result<Expr, ParseError> {
        Ok(Expr {
            source: source.into(),
        })
    }
    pub fn constant(value: Value) -> Expr {
        Expr {
            source: value.to_string().into(),
        }
    }
    pub fn source(&self) -> &str {
        &self.source
    }
    pub fn eval(&self, _scope: &dyn Scope) -> Result<Value, EvalError> {
        Err(EvalError {
            message: "expressions are not implemented yet".into(),
        })
    }
    /// Evaluates and requires a boolean result.
    pub fn eval_bool(&self, scope: &dyn Scope) -> Result<bool, EvalError> {
        match self.eval(scope)? {
            Value::Bool(b) => Ok(b),
            other => Err(EvalError {
                message: format!("expected a boolean, got {other}"),
            }),
        }
    }
    /// Free names the expression reads (macro-bound variables excluded).
    pub fn references(&self) -> Vec<Reference> {
        Vec::new()
    }
}

/// One piece of an interpolated string.
#[derive(Clone, Debug, PartialEq)]
pub enum TextPart {
    Text(String),
    Expr(Expr),
}

/// A value that may hold expressions at any depth.
#[derive(Clone, Debug, PartialEq)]
pub enum Template {
    /// No expression anywhere: the value as written.
    Literal(Value),
    /// A string that is exactly one `${{ }}`: takes the expression's value and type.
    Expr(Expr),
    /// A string with expressions inside text: interpolated as text.
    Text(Vec<TextPart>),
    List(Vec<Template>),
    Map(Vec<(String, Template)>),
}

/// Why a string template did not compile; `offset` counts characters from the start of the
/// string.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct TemplateError {
    pub offset: usize,
    pub message: String,
    pub help: Option<String>,
}

impl Template {
    /// Compiles one string scalar (`"temp is ${{ event.data.temp }}"`, `$${{` escapes).
    pub fn parse_str(text: &str) -> Result<Template, TemplateError> {
        Ok(Template::Literal(Value::String(text.to_string())))
    }
    /// Compiles a whole value tree; string leaves go through [`Template::parse_str`].
    pub fn from_value(value: &Value) -> Result<Template, TemplateError> {
        Ok(Template::Literal(value.clone()))
    }
    pub fn eval(&self, _scope: &dyn Scope) -> Result<Value, EvalError> {
        match self {
            Template::Literal(v) => Ok(v.clone()),
            _ => Err(EvalError {
                message: "expressions are not implemented yet".into(),
            }),
        }
    }
    pub fn is_constant(&self) -> bool {
        matches!(self, Template::Literal(_))
    }
    pub fn references(&self) -> Vec<Reference> {
        Vec::new()
    }
}
