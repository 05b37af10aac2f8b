//! Tree-walking evaluation. Values read from the scope are borrowed ([`Val::Ref`]); only
//! computed results allocate.

use std::cmp::Ordering;

use chrono::{DateTime, FixedOffset, SecondsFormat, TimeDelta};

use super::ast::{BinOp, MacroKind, MacroNode, Node};
use super::functions;
use super::{EvalError, MAX_COLLECTION_LEN, MAX_EVAL_STEPS, MAX_STRING_BYTES, Scope};
use crate::{Map, Value};

pub(crate) static NULL: Value = Value::Null;

/// A value during evaluation: borrowed from the scope or the expression, computed, or one of
/// the two types JSON lacks (they become a string and a number when the result leaves).
#[derive(Clone, Debug)]
pub(crate) enum Val<'a> {
    Ref(&'a Value),
    // Computed values, split by type so a `Val` stays small (a `Value` with ordered maps is
    // several times larger, and `Val`s move on every node).
    Bool(bool),
    Int(i64),
    /// Always finite.
    Double(f64),
    Str(String),
    List(Vec<Value>),
    Map(Box<Map>),
    Time(DateTime<FixedOffset>),
    Dur(TimeDelta),
}

/// A borrowed view of a [`Val`] with numbers already split into int and double.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Kind<'v> {
    Null,
    Bool(bool),
    Int(i64),
    Double(f64),
    Str(&'v str),
    List(&'v [Value]),
    Map(&'v Map),
    Time(DateTime<FixedOffset>),
    Dur(TimeDelta),
}

#[cold]
pub(crate) fn fail(message: impl Into<String>) -> EvalError {
    EvalError {
        message: message.into(),
    }
}

#[inline]
pub(crate) fn kind_of(value: &Value) -> Kind<'_> {
    match value {
        Value::Null => Kind::Null,
        Value::Bool(b) => Kind::Bool(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Kind::Int(i),
            None => Kind::Double(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => Kind::Str(s),
        Value::Array(items) => Kind::List(items),
        Value::Object(map) => Kind::Map(map),
    }
}

impl<'a> Val<'a> {
    #[inline]
    pub(crate) fn kind(&self) -> Kind<'_> {
        match self {
            Val::Ref(v) => kind_of(v),
            Val::Bool(b) => Kind::Bool(*b),
            Val::Int(i) => Kind::Int(*i),
            Val::Double(d) => Kind::Double(*d),
            Val::Str(s) => Kind::Str(s),
            Val::List(items) => Kind::List(items),
            Val::Map(map) => Kind::Map(map),
            Val::Time(t) => Kind::Time(*t),
            Val::Dur(d) => Kind::Dur(*d),
        }
    }

    pub(crate) fn into_value(self) -> Value {
        match self {
            Val::Ref(v) => v.clone(),
            Val::Bool(b) => Value::Bool(b),
            Val::Int(i) => Value::from(i),
            Val::Double(d) => Value::from(d),
            Val::Str(s) => Value::String(s),
            Val::List(items) => Value::Array(items),
            Val::Map(map) => Value::Object(*map),
            Val::Time(t) => Value::String(format_timestamp(&t)),
            Val::Dur(d) => duration_seconds(d),
        }
    }

    pub(crate) fn type_name(&self) -> &'static str {
        self.kind().type_name()
    }

    pub(crate) fn bool(b: bool) -> Val<'a> {
        Val::Bool(b)
    }

    pub(crate) fn int(i: i64) -> Val<'a> {
        Val::Int(i)
    }

    pub(crate) fn double(d: f64) -> Result<Val<'a>, EvalError> {
        if !d.is_finite() {
            return Err(fail("result is not a finite number"));
        }
        Ok(Val::Double(d))
    }

    pub(crate) fn string(s: String) -> Result<Val<'a>, EvalError> {
        if s.len() > MAX_STRING_BYTES {
            return Err(fail(format!(
                "string result is {} bytes; the limit is {MAX_STRING_BYTES}",
                s.len()
            )));
        }
        Ok(Val::Str(s))
    }

    pub(crate) fn list(items: Vec<Value>) -> Result<Val<'a>, EvalError> {
        check_len(items.len())?;
        Ok(Val::List(items))
    }

    /// A computed value, split by type.
    pub(crate) fn owned(value: Value) -> Val<'a> {
        match value {
            Value::Null => Val::Ref(&NULL),
            Value::Bool(b) => Val::Bool(b),
            Value::Number(n) => match n.as_i64() {
                Some(i) => Val::Int(i),
                None => Val::Double(n.as_f64().unwrap_or_default()),
            },
            Value::String(s) => Val::Str(s),
            Value::Array(items) => Val::List(items),
            Value::Object(map) => Val::Map(Box::new(map)),
        }
    }
}

pub(crate) fn check_len(len: usize) -> Result<(), EvalError> {
    if len > MAX_COLLECTION_LEN {
        return Err(fail(format!(
            "result has {len} elements; the limit is {MAX_COLLECTION_LEN}"
        )));
    }
    Ok(())
}

impl Kind<'_> {
    pub(crate) fn type_name(&self) -> &'static str {
        match self {
            Kind::Null => "null",
            Kind::Bool(_) => "bool",
            Kind::Int(_) => "int",
            Kind::Double(_) => "double",
            Kind::Str(_) => "string",
            Kind::List(_) => "list",
            Kind::Map(_) => "map",
            Kind::Time(_) => "timestamp",
            Kind::Dur(_) => "duration",
        }
    }

    pub(crate) fn number(&self) -> Option<f64> {
        match *self {
            Kind::Int(i) => Some(i as f64),
            Kind::Double(d) => Some(d),
            _ => None,
        }
    }
}

pub(crate) fn format_timestamp(t: &DateTime<FixedOffset>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// Durations leave an expression as seconds: an integer when whole.
pub(crate) fn duration_seconds(d: TimeDelta) -> Value {
    if d.subsec_nanos() == 0 {
        Value::from(d.num_seconds())
    } else {
        Value::from(
            d.num_nanoseconds()
                .map_or(d.num_seconds() as f64, |n| n as f64 / 1e9),
        )
    }
}

/// One evaluation: the scope, the stack of macro-bound variables and the step budget.
pub(crate) struct Evaluator<'a> {
    scope: &'a dyn Scope,
    locals: Vec<Val<'a>>,
    steps_left: usize,
}

impl<'a> Evaluator<'a> {
    pub(crate) fn new(scope: &'a dyn Scope) -> Self {
        Evaluator {
            scope,
            locals: Vec::new(),
            steps_left: MAX_EVAL_STEPS,
        }
    }

    pub(crate) fn eval(&mut self, node: &'a Node) -> Result<Val<'a>, EvalError> {
        match node {
            Node::Const(v) => Ok(Val::Ref(v)),
            Node::Root { name, .. } => match self.scope.lookup(name) {
                Some(v) => Ok(Val::Ref(v)),
                None => Err(fail(format!("unknown name '{name}'"))),
            },
            Node::Local(slot) => Ok(self.locals[*slot].clone()),
            Node::Member(target, name) => member(self.eval(target)?, name),
            Node::Index(target, index) => {
                let target = self.eval(target)?;
                let index = self.eval(index)?;
                self.index(target, index)
            }
            Node::Has(target, field) => match self.eval(target)?.kind() {
                Kind::Map(map) => Ok(Val::bool(map.contains_key(field.as_str()))),
                Kind::Null => Ok(Val::bool(false)),
                other => Err(fail(format!(
                    "has() needs a map to look for '{field}' in, got {}",
                    other.type_name()
                ))),
            },
            Node::Not(operand) => match self.eval(operand)?.kind() {
                Kind::Bool(b) => Ok(Val::bool(!b)),
                other => Err(fail(format!(
                    "'!' needs a boolean, got {}",
                    other.type_name()
                ))),
            },
            Node::Neg(operand) => match self.eval(operand)?.kind() {
                Kind::Int(i) => i
                    .checked_neg()
                    .map(Val::int)
                    .ok_or_else(|| fail("integer overflow in negation")),
                Kind::Double(d) => Val::double(-d),
                Kind::Dur(d) => Ok(Val::Dur(-d)),
                other => Err(fail(format!(
                    "'-' needs a number, got {}",
                    other.type_name()
                ))),
            },
            Node::And(a, b) => self.logic(a, b, false),
            Node::Or(a, b) => self.logic(a, b, true),
            Node::Cond(condition, then, otherwise) => match self.eval(condition)?.kind() {
                Kind::Bool(true) => self.eval(then),
                Kind::Bool(false) => self.eval(otherwise),
                other => Err(fail(format!(
                    "the condition before '?' must be a boolean, got {}",
                    other.type_name()
                ))),
            },
            Node::Binary(op, a, b) => {
                let left = self.eval(a)?;
                let right = self.eval(b)?;
                binary(*op, left, right)
            }
            Node::List(items) => self.list(items),
            Node::Map(entries) => self.map(entries),
            Node::Call { func, args, regex } => self.call(*func, args, regex.as_deref()),
            Node::Macro(m) => self.comprehension(m),
        }
    }

    // Rare or heavy node kinds live out of line so `eval`'s own stack frame stays small:
    // it is entered once per node.
    #[inline(never)]
    fn list(&mut self, items: &'a [Node]) -> Result<Val<'a>, EvalError> {
        let mut values = Vec::with_capacity(items.len());
        for item in items {
            values.push(self.eval(item)?.into_value());
        }
        Val::list(values)
    }

    #[inline(never)]
    fn map(&mut self, entries: &'a [(Node, Node)]) -> Result<Val<'a>, EvalError> {
        let mut map = Map::with_capacity(entries.len());
        for (k, v) in entries {
            let key = self.eval(k)?;
            let key = key.kind();
            let Some(key) = map_key_kind(key) else {
                return Err(fail(format!(
                    "map keys must be strings, integers or booleans, got {}",
                    key.type_name()
                )));
            };
            let value = self.eval(v)?.into_value();
            map.insert(key, value);
        }
        Ok(Val::Map(Box::new(map)))
    }

    #[inline(never)]
    fn call(
        &mut self,
        func: functions::Func,
        args: &'a [Node],
        regex: Option<&regex::Regex>,
    ) -> Result<Val<'a>, EvalError> {
        let mut values = Vec::with_capacity(args.len());
        for arg in args {
            values.push(self.eval(arg)?);
        }
        functions::call(func, values, regex)
    }

    /// `&&` (`stop_on` false) and `||` (`stop_on` true). As in CEL, an error on one side is
    /// absorbed when the other side decides the result alone.
    fn logic(&mut self, a: &'a Node, b: &'a Node, stop_on: bool) -> Result<Val<'a>, EvalError> {
        let op = if stop_on { "||" } else { "&&" };
        let as_bool = |v: Result<Val<'_>, EvalError>| match v?.kind() {
            Kind::Bool(b) => Ok(b),
            other => Err(fail(format!(
                "'{op}' needs booleans, got {}",
                other.type_name()
            ))),
        };
        let left = as_bool(self.eval(a));
        if left == Ok(stop_on) {
            return Ok(Val::bool(stop_on));
        }
        let right = as_bool(self.eval(b));
        match (left, right) {
            (_, Ok(r)) if r == stop_on => Ok(Val::bool(stop_on)),
            (Ok(_), Ok(r)) => Ok(Val::bool(r)),
            (Err(e), _) | (_, Err(e)) => Err(e),
        }
    }

    #[inline(never)]
    fn index(&self, target: Val<'a>, index: Val<'a>) -> Result<Val<'a>, EvalError> {
        let key = index.kind();
        match target {
            Val::Ref(Value::Object(map)) => {
                let key = map_index_key(key)?;
                Ok(Val::Ref(map.get(&key).unwrap_or(&NULL)))
            }
            Val::Map(mut map) => {
                let key = map_index_key(key)?;
                Ok(Val::owned(map.swap_remove(&key).unwrap_or(Value::Null)))
            }
            Val::Ref(Value::Array(items)) => {
                let at = list_index(key, items.len())?;
                Ok(Val::Ref(&items[at]))
            }
            Val::List(mut items) => {
                let at = list_index(key, items.len())?;
                Ok(Val::owned(items.swap_remove(at)))
            }
            Val::Ref(Value::Null) => Ok(Val::Ref(&NULL)),
            other => Err(fail(format!("cannot index into {}", other.type_name()))),
        }
    }

    #[inline(never)]
    fn comprehension(&mut self, m: &'a MacroNode) -> Result<Val<'a>, EvalError> {
        let name = m.kind.name();
        let elements: Vec<Val<'a>> = match self.eval(&m.target)? {
            Val::Ref(Value::Array(items)) => items.iter().map(Val::Ref).collect(),
            Val::List(items) => items.into_iter().map(Val::owned).collect(),
            Val::Ref(Value::Object(map)) => map.keys().map(|k| Val::Str(k.clone())).collect(),
            Val::Map(map) => map.into_iter().map(|(k, _)| Val::Str(k)).collect(),
            other => {
                return Err(fail(format!(
                    "{name}() needs a list or a map, got {}",
                    other.type_name()
                )));
            }
        };
        self.charge(elements.len())?;
        debug_assert_eq!(self.locals.len(), m.slot);
        let mut first_error = None;
        let mut count = 0usize;
        let mut out = Vec::new();
        for element in elements {
            self.locals.push(element);
            let step = self.comprehension_step(m);
            let element = self.locals.pop();
            match step {
                Err(e) if matches!(m.kind, MacroKind::All | MacroKind::Exists) => {
                    first_error.get_or_insert(e);
                }
                Err(e) => return Err(e),
                Ok(Step::Pred(b)) => match m.kind {
                    MacroKind::All if !b => return Ok(Val::bool(false)),
                    MacroKind::Exists if b => return Ok(Val::bool(true)),
                    MacroKind::ExistsOne if b => count += 1,
                    MacroKind::Filter if b => {
                        out.push(element.map(Val::into_value).unwrap_or_default());
                    }
                    _ => {}
                },
                Ok(Step::Mapped(value)) => {
                    // Copying big values into the result costs budget too.
                    let cost = match &value {
                        Value::Array(items) => items.len(),
                        Value::Object(map) => map.len(),
                        _ => 0,
                    };
                    self.charge(cost)?;
                    out.push(value);
                }
                Ok(Step::Skip) => {}
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        match m.kind {
            MacroKind::All => Ok(Val::bool(true)),
            MacroKind::Exists => Ok(Val::bool(false)),
            MacroKind::ExistsOne => Ok(Val::bool(count == 1)),
            MacroKind::Map | MacroKind::Filter => Val::list(out),
        }
    }

    fn charge(&mut self, cost: usize) -> Result<(), EvalError> {
        if cost > self.steps_left {
            return Err(fail(format!(
                "evaluation is too costly (more than {MAX_EVAL_STEPS} steps of macros)"
            )));
        }
        self.steps_left -= cost;
        Ok(())
    }

    fn comprehension_step(&mut self, m: &'a MacroNode) -> Result<Step, EvalError> {
        let name = m.kind.name();
        if m.kind == MacroKind::Map {
            if let Some(filter) = &m.filter
                && !self.predicate(filter, name)?
            {
                return Ok(Step::Skip);
            }
            return Ok(Step::Mapped(self.eval(&m.body)?.into_value()));
        }
        Ok(Step::Pred(self.predicate(&m.body, name)?))
    }

    fn predicate(&mut self, node: &'a Node, name: &str) -> Result<bool, EvalError> {
        match self.eval(node)?.kind() {
            Kind::Bool(b) => Ok(b),
            other => Err(fail(format!(
                "the condition of {name}() must be a boolean, got {}",
                other.type_name()
            ))),
        }
    }
}

enum Step {
    Pred(bool),
    Mapped(Value),
    Skip,
}

#[inline]
fn member<'a>(target: Val<'a>, name: &str) -> Result<Val<'a>, EvalError> {
    match target {
        Val::Ref(Value::Object(map)) => Ok(Val::Ref(map.get(name).unwrap_or(&NULL))),
        Val::Map(mut map) => Ok(Val::owned(map.swap_remove(name).unwrap_or(Value::Null))),
        Val::Ref(Value::Null) => Ok(Val::Ref(&NULL)),
        other => Err(fail(format!(
            "cannot read field '{name}' of {}",
            other.type_name()
        ))),
    }
}

fn map_key_kind(key: Kind<'_>) -> Option<String> {
    match key {
        Kind::Str(s) => Some(s.to_string()),
        Kind::Int(i) => Some(i.to_string()),
        Kind::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn map_index_key(key: Kind<'_>) -> Result<String, EvalError> {
    map_key_kind(key).ok_or_else(|| {
        fail(format!(
            "a map is indexed by a string, got {}",
            key.type_name()
        ))
    })
}

fn list_index(key: Kind<'_>, len: usize) -> Result<usize, EvalError> {
    let index = match key {
        Kind::Int(i) => i,
        Kind::Double(d) if d.fract() == 0.0 && d.abs() < 9.0e15 => d as i64,
        other => {
            return Err(fail(format!(
                "a list is indexed by an integer, got {}",
                other.type_name()
            )));
        }
    };
    usize::try_from(index)
        .ok()
        .filter(|&i| i < len)
        .ok_or_else(|| fail(format!("index {index} is out of range for a list of {len}")))
}

/// Deep equality; numbers compare by value (`1 == 1.0`), different types are unequal.
pub(crate) fn kinds_eq(a: Kind<'_>, b: Kind<'_>) -> bool {
    match (a, b) {
        (Kind::Null, Kind::Null) => true,
        (Kind::Bool(x), Kind::Bool(y)) => x == y,
        (Kind::Int(x), Kind::Int(y)) => x == y,
        (Kind::Int(_) | Kind::Double(_), Kind::Int(_) | Kind::Double(_)) => {
            a.number() == b.number()
        }
        (Kind::Str(x), Kind::Str(y)) => x == y,
        (Kind::List(x), Kind::List(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| values_eq(p, q))
        }
        (Kind::Map(x), Kind::Map(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| values_eq(v, w)))
        }
        (Kind::Time(x), Kind::Time(y)) => x == y,
        (Kind::Dur(x), Kind::Dur(y)) => x == y,
        _ => false,
    }
}

pub(crate) fn values_eq(a: &Value, b: &Value) -> bool {
    kinds_eq(kind_of(a), kind_of(b))
}

pub(crate) fn compare(a: Kind<'_>, b: Kind<'_>) -> Result<Ordering, EvalError> {
    let ordering = match (a, b) {
        (Kind::Int(x), Kind::Int(y)) => Some(x.cmp(&y)),
        (Kind::Int(_) | Kind::Double(_), Kind::Int(_) | Kind::Double(_)) => a
            .number()
            .zip(b.number())
            .and_then(|(x, y)| x.partial_cmp(&y)),
        (Kind::Str(x), Kind::Str(y)) => Some(x.cmp(y)),
        (Kind::Bool(x), Kind::Bool(y)) => Some(x.cmp(&y)),
        (Kind::Time(x), Kind::Time(y)) => Some(x.cmp(&y)),
        (Kind::Dur(x), Kind::Dur(y)) => Some(x.cmp(&y)),
        // A duration compares with a number of seconds.
        (Kind::Dur(d), n @ (Kind::Int(_) | Kind::Double(_))) => {
            seconds_f64(d).partial_cmp(&n.number().unwrap_or(f64::NAN))
        }
        (n @ (Kind::Int(_) | Kind::Double(_)), Kind::Dur(d)) => {
            n.number().unwrap_or(f64::NAN).partial_cmp(&seconds_f64(d))
        }
        _ => None,
    };
    ordering.ok_or_else(|| {
        fail(format!(
            "cannot compare {} with {}",
            a.type_name(),
            b.type_name()
        ))
    })
}

fn seconds_f64(d: TimeDelta) -> f64 {
    d.num_nanoseconds()
        .map_or(d.num_seconds() as f64, |n| n as f64 / 1e9)
}

fn binary<'a>(op: BinOp, left: Val<'a>, right: Val<'a>) -> Result<Val<'a>, EvalError> {
    let (a, b) = (left.kind(), right.kind());
    match op {
        BinOp::Eq => Ok(Val::bool(kinds_eq(a, b))),
        BinOp::Ne => Ok(Val::bool(!kinds_eq(a, b))),
        BinOp::Lt => Ok(Val::bool(compare(a, b)?.is_lt())),
        BinOp::Le => Ok(Val::bool(compare(a, b)?.is_le())),
        BinOp::Gt => Ok(Val::bool(compare(a, b)?.is_gt())),
        BinOp::Ge => Ok(Val::bool(compare(a, b)?.is_ge())),
        BinOp::In => contains(a, b).map(Val::bool),
        BinOp::Add => add(left, right),
        BinOp::Sub | BinOp::Mul | BinOp::Div | BinOp::Rem => arithmetic(op, a, b),
    }
}

fn contains(needle: Kind<'_>, haystack: Kind<'_>) -> Result<bool, EvalError> {
    match haystack {
        Kind::List(items) => Ok(items.iter().any(|item| kinds_eq(needle, kind_of(item)))),
        Kind::Map(map) => match needle {
            Kind::Str(key) => Ok(map.contains_key(key)),
            other => Ok(map_key_kind(other).is_some_and(|key| map.contains_key(&key))),
        },
        other => Err(fail(format!(
            "'in' needs a list or a map on its right, got {}",
            other.type_name()
        ))),
    }
}

#[inline(never)]
fn add<'a>(left: Val<'a>, right: Val<'a>) -> Result<Val<'a>, EvalError> {
    match (left, right) {
        (Val::Str(mut s), r) if matches!(r.kind(), Kind::Str(_)) => {
            if let Kind::Str(tail) = r.kind() {
                s.push_str(tail);
            }
            Val::string(s)
        }
        (Val::List(mut items), r) if matches!(r.kind(), Kind::List(_)) => {
            if let Kind::List(tail) = r.kind() {
                check_len(items.len() + tail.len())?;
                items.extend_from_slice(tail);
            }
            Val::list(items)
        }
        (left, right) => match (left.kind(), right.kind()) {
            (Kind::Str(x), Kind::Str(y)) => {
                if x.len() + y.len() > MAX_STRING_BYTES {
                    return Val::string(String::new() + x + y);
                }
                Val::string([x, y].concat())
            }
            (Kind::List(x), Kind::List(y)) => {
                check_len(x.len() + y.len())?;
                Val::list([x, y].concat())
            }
            (Kind::Time(t), Kind::Dur(d)) | (Kind::Dur(d), Kind::Time(t)) => t
                .checked_add_signed(d)
                .map(Val::Time)
                .ok_or_else(|| fail("timestamp out of range")),
            (Kind::Dur(x), Kind::Dur(y)) => x
                .checked_add(&y)
                .map(Val::Dur)
                .ok_or_else(|| fail("duration out of range")),
            (a, b) => arithmetic(BinOp::Add, a, b),
        },
    }
}

#[inline(never)]
fn arithmetic<'a>(op: BinOp, a: Kind<'_>, b: Kind<'_>) -> Result<Val<'a>, EvalError> {
    let symbol = match op {
        BinOp::Add => "+",
        BinOp::Sub => "-",
        BinOp::Mul => "*",
        BinOp::Div => "/",
        _ => "%",
    };
    let overflow = || fail(format!("integer overflow in '{symbol}'"));
    match (op, a, b) {
        (BinOp::Div, _, Kind::Int(0)) => Err(fail("division by zero")),
        (BinOp::Rem, _, Kind::Int(0)) => Err(fail("modulo by zero")),
        (_, Kind::Int(x), Kind::Int(y)) => {
            let result = match op {
                BinOp::Add => x.checked_add(y),
                BinOp::Sub => x.checked_sub(y),
                BinOp::Mul => x.checked_mul(y),
                BinOp::Div => x.checked_div(y),
                _ => x.checked_rem(y),
            };
            result.map(Val::int).ok_or_else(overflow)
        }
        (BinOp::Sub, Kind::Time(x), Kind::Time(y)) => Ok(Val::Dur(x.signed_duration_since(y))),
        (BinOp::Sub, Kind::Time(t), Kind::Dur(d)) => t
            .checked_sub_signed(d)
            .map(Val::Time)
            .ok_or_else(|| fail("timestamp out of range")),
        (BinOp::Sub, Kind::Dur(x), Kind::Dur(y)) => x
            .checked_sub(&y)
            .map(Val::Dur)
            .ok_or_else(|| fail("duration out of range")),
        (_, Kind::Int(_) | Kind::Double(_), Kind::Int(_) | Kind::Double(_)) => {
            let (x, y) = (
                a.number().unwrap_or_default(),
                b.number().unwrap_or_default(),
            );
            if y == 0.0 && matches!(op, BinOp::Div | BinOp::Rem) {
                return Err(fail(if op == BinOp::Div {
                    "division by zero"
                } else {
                    "modulo by zero"
                }));
            }
            Val::double(match op {
                BinOp::Add => x + y,
                BinOp::Sub => x - y,
                BinOp::Mul => x * y,
                BinOp::Div => x / y,
                _ => x % y,
            })
        }
        _ => {
            let hint =
                if op == BinOp::Add && (matches!(a, Kind::Str(_)) || matches!(b, Kind::Str(_))) {
                    " (use string(x) to turn a value into text)"
                } else {
                    ""
                };
            Err(fail(format!(
                "cannot apply '{symbol}' to {} and {}{hint}",
                a.type_name(),
                b.type_name()
            )))
        }
    }
}
