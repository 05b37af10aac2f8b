//! `${{ }}` expressions: CEL syntax and semantics over JSON-like values.
//!
//! Files: `lexer` (text → tokens), `parser` (tokens → tree, with CEL precedence and
//! macros expanded), `ast` (the tree and [`Expr::references`]), `eval` (evaluation over
//! borrowed values), `functions` (built-ins), `template` (strings and value trees holding
//! `${{ }}`).
//!
//! An [`Expr`] is compiled once ([`Expr::parse`]) and evaluated many times against a
//! [`Scope`]. Evaluation borrows from the scope and only allocates for computed results; a
//! condition like `event.data.temp > 30 && event.data.zone == "A"` allocates nothing.
//!
//! # Language
//! CEL (<https://github.com/google/cel-spec>): literals (`1`, `0x1F`, `7u`, `1.5`, `1e3`, `.5`,
//! `"…"`, `'…'`, `r"…"`, `"""…"""`, `true`, `false`, `null`, `[a, b]`, `{"k": v}`), operators
//! with CEL precedence (`?:` < `||` < `&&` < `< <= > >= == != in` < `+ -` < `* / %` < `! -` <
//! `.f`, `[i]`, `f()`), `&&`/`||` absorbing an error on the side that does not decide
//! (`false && <error>` is `false`), macros `has`, `all`, `exists`, `exists_one`, `map` (2 and
//! 3 arguments), `filter`, and the functions `size contains startsWith endsWith matches
//! lowerAscii upperAscii trim split join replace indexOf lastIndexOf substring string int uint
//! double bool type dyn abs min max timestamp duration keys values`.
//!
//! # Decided differences from CEL
//! - **Numbers mix.** int op int stays int (`7 / 2` is `3`, truncating; `%` on ints); when
//!   either side is a double the result is a double (`1 + 0.5`, `7.0 / 2` is `3.5`, `31.5 >
//!   30`). `1 == 1.0`. Integer overflow, division and modulo by zero (also `x / 0.0`) are
//!   errors, and a double result that is not finite is an error (JSON has no NaN/∞). `%`
//!   works on doubles too. Unsigned literals (`7u`) and `uint()` give plain integers. JSON
//!   numbers without a fraction are integers.
//! - **Missing keys are null.** `map.key` and `map["key"]` on a missing key give `null`, and so
//!   does any member or index of `null`, like GitHub Actions: `event.data.maintenance == true`
//!   is `false` when the key is absent. `has(a.b)` tests presence (and is `false` when `a` is
//!   null). Indexing a list out of range is an error. An unknown root name is an error.
//! - **Equality never fails:** values of different types are unequal; lists and maps compare
//!   deeply. Ordering (`<` …) of incompatible types is an error ("cannot compare string with
//!   int"); strings order lexicographically, booleans `false < true`.
//! - `+` concatenates strings and lists; nothing else is merged.
//! - Map literal keys may be strings, integers or booleans; since values are string-keyed,
//!   `{1: "a", true: "b"}` has keys `"1"` and `"true"`, and `m[1]`, `1 in m` look up `"1"`.
//! - **Every function works both ways**, globally and as a method (`size(x)`, `x.size()`).
//!   `contains` also tests list membership. `keys(map)`, `values(map)` are extensions.
//!   `type(x)` returns a name string: `null bool int double string list map timestamp
//!   duration`. `string(x)` of a list or map is compact JSON. `bool("true")`, `int("12")`,
//!   `double("1.5")` read strings.
//! - **Time.** There is no `now`: an expression's value depends only on its inputs, so replay
//!   is deterministic (the engine puts times into `event.time` etc.). `timestamp("RFC 3339")`
//!   and `duration("1m30s")` (units `ns us ms s m h d`, like the DSL's durations) make typed
//!   values within an expression: timestamps compare, `timestamp - timestamp` is a duration,
//!   `timestamp ± duration` a timestamp; durations compare with each other and with numbers
//!   of seconds. When a result leaves the expression a timestamp becomes its RFC 3339 string
//!   and a duration its number of seconds (an integer when whole). Literal arguments of
//!   `timestamp`/`duration` are checked at parse time.
//! - `matches` uses the `regex` crate (RE2-like, linear time), unanchored like CEL; literal
//!   patterns compile once at parse time, and patterns are capped at
//!   [`MAX_PATTERN_BYTES`].
//! - Not provided: bytes literals, protobuf messages and enums, qualified function names,
//!   two-variable comprehensions, optional syntax (`?.`), timestamp accessors (`getHours` …).
//!
//! # Limits
//! Expressions have no side effects and always terminate. Parsing refuses sources over
//! [`MAX_SOURCE_BYTES`] and nesting deeper than [`MAX_DEPTH`] (brackets, unary operators and
//! each link of an operator chain count, so `a + b + … ` with more than 64 terms is refused
//! too). At run time strings over [`MAX_STRING_BYTES`], lists over [`MAX_COLLECTION_LEN`]
//! elements, and more than [`MAX_EVAL_STEPS`] macro iterations are errors.
//!
//! # Templates
//! A string that is exactly one `${{ expr }}` (nothing around it, not even spaces) is a
//! [`Template::Expr`] and keeps the value's type. Other strings holding `${{ }}` are
//! interpolated as text: strings raw, numbers as JSON writes them (`3`, `31.5`, `3.0` for a
//! whole double), booleans `true`/`false`, null as nothing, lists and maps as compact JSON.
//! `$${{` writes a literal `${{`, and the text up to its `}}` stays literal too. The closing
//! `}}` is found outside string literals and balanced braces, so `${{ "a}}b" }}` and
//! `${{ {"a": {"b": 1}} }}` work. [`Template::references`] offsets count characters from the
//! start of the string holding the expression; [`Expr::references`] offsets count from the
//! start of the expression's own source.

mod ast;
mod eval;
mod functions;
mod lexer;
mod parser;
mod template;
#[cfg(test)]
mod tests;

use std::fmt;
use std::sync::Arc;

use ast::Node;
use eval::{Evaluator, Kind, Val};

use crate::{Map, Value};

/// Longest expression source accepted, in bytes.
pub const MAX_SOURCE_BYTES: usize = 16 * 1024;
/// Deepest nesting accepted by the parser.
pub const MAX_DEPTH: usize = 64;
/// Longest string an evaluation may produce, in bytes.
pub const MAX_STRING_BYTES: usize = 1024 * 1024;
/// Most elements of a list an evaluation may produce.
pub const MAX_COLLECTION_LEN: usize = 1 << 20;
/// Most macro iterations (plus elements copied by `map`) in one evaluation.
pub const MAX_EVAL_STEPS: usize = 1 << 20;
/// Longest regular expression accepted by `matches`, in bytes.
pub const MAX_PATTERN_BYTES: usize = 1024;

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
#[derive(Clone)]
pub struct Expr {
    source: Arc<str>,
    root: Arc<Node>,
    /// Where the source starts inside the template string it came from (0 otherwise).
    base: usize,
}

impl fmt::Debug for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Expr").field(&&*self.source).finish()
    }
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
///
/// The path follows `.name` and constant string indexes (`["name"]`) and stops at the first
/// other index (`[0]`, `[x]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    pub root: String,
    pub path: Vec<String>,
    pub offset: usize,
}

impl Expr {
    pub fn parse(source: &str) -> Result<Expr, ParseError> {
        let root = parser::parse(source)?;
        Ok(Expr {
            source: source.into(),
            root: Arc::new(root),
            base: 0,
        })
    }

    /// An expression that always gives `value`; its source is the value as JSON.
    pub fn constant(value: Value) -> Expr {
        Expr {
            source: value.to_string().into(),
            root: Arc::new(Node::Const(value)),
            base: 0,
        }
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn eval(&self, scope: &dyn Scope) -> Result<Value, EvalError> {
        Ok(Evaluator::new(scope).eval(&self.root)?.into_value())
    }

    /// Evaluates and requires a boolean result.
    pub fn eval_bool(&self, scope: &dyn Scope) -> Result<bool, EvalError> {
        let value = Evaluator::new(scope).eval(&self.root)?;
        match value.kind() {
            Kind::Bool(b) => Ok(b),
            other => Err(EvalError {
                message: format!(
                    "expected a boolean, got {} {}",
                    other.type_name(),
                    value.into_value()
                ),
            }),
        }
    }

    /// Whether the expression is a literal (reads no names).
    pub fn is_constant(&self) -> bool {
        self.root.is_const()
    }

    /// Free names the expression reads (macro-bound variables excluded), in source order.
    pub fn references(&self) -> Vec<Reference> {
        let mut out = Vec::new();
        self.root.references(&mut out);
        out
    }

    /// Evaluates and appends the result as text (see [`Template`]), without copying values
    /// borrowed from the scope.
    fn render_into(&self, scope: &dyn Scope, out: &mut String) -> Result<(), EvalError> {
        match Evaluator::new(scope).eval(&self.root)? {
            Val::Ref(value) => template::render(value, out),
            Val::Str(text) => out.push_str(&text),
            other => template::render(&other.into_value(), out),
        }
        if out.len() > MAX_STRING_BYTES {
            return Err(EvalError {
                message: format!("text is over {MAX_STRING_BYTES} bytes"),
            });
        }
        Ok(())
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
        template::parse_str(text)
    }

    /// Compiles a whole value tree; string leaves go through [`Template::parse_str`], map keys
    /// are literal. Constant subtrees become one [`Template::Literal`].
    pub fn from_value(value: &Value) -> Result<Template, TemplateError> {
        template::from_value(value)
    }

    pub fn eval(&self, scope: &dyn Scope) -> Result<Value, EvalError> {
        template::eval(self, scope)
    }

    pub fn is_constant(&self) -> bool {
        matches!(self, Template::Literal(_))
    }

    /// Free names read anywhere in the tree; offsets count from the start of the string
    /// leaf holding each expression.
    pub fn references(&self) -> Vec<Reference> {
        let mut out = Vec::new();
        template::references(self, &mut out);
        out
    }
}
