//! Built-in functions. Every function can be called globally (`size(x)`) or on its first
//! argument (`x.size()`); the receiver counts as the first argument.

use chrono::{DateTime, FixedOffset, TimeDelta};
use regex::{Regex, RegexBuilder};

use super::eval::{Kind, Val, check_len, compare, fail, format_timestamp, kinds_eq};
use super::{EvalError, MAX_PATTERN_BYTES};
use crate::Value;

macro_rules! functions {
    ($($variant:ident = $name:literal ($min:expr, $max:expr)),* $(,)?) => {
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub(crate) enum Func { $($variant),* }

        impl Func {
            pub(crate) const NAMES: &'static [&'static str] = &[$($name),*];

            pub(crate) fn from_name(name: &str) -> Option<Func> {
                match name {
                    $($name => Some(Func::$variant),)*
                    _ => None,
                }
            }

            pub(crate) fn name(self) -> &'static str {
                match self { $(Func::$variant => $name),* }
            }

            /// Fewest and most arguments, the receiver included.
            pub(crate) fn arity(self) -> (usize, usize) {
                match self { $(Func::$variant => ($min, $max)),* }
            }
        }
    };
}

functions! {
    Size = "size" (1, 1),
    Contains = "contains" (2, 2),
    StartsWith = "startsWith" (2, 2),
    EndsWith = "endsWith" (2, 2),
    Matches = "matches" (2, 2),
    LowerAscii = "lowerAscii" (1, 1),
    UpperAscii = "upperAscii" (1, 1),
    Trim = "trim" (1, 1),
    Split = "split" (2, 3),
    Join = "join" (1, 2),
    Replace = "replace" (3, 4),
    IndexOf = "indexOf" (2, 3),
    LastIndexOf = "lastIndexOf" (2, 2),
    Substring = "substring" (2, 3),
    String = "string" (1, 1),
    Int = "int" (1, 1),
    Uint = "uint" (1, 1),
    Double = "double" (1, 1),
    Bool = "bool" (1, 1),
    Type = "type" (1, 1),
    Dyn = "dyn" (1, 1),
    Abs = "abs" (1, 1),
    Min = "min" (1, usize::MAX),
    Max = "max" (1, usize::MAX),
    Timestamp = "timestamp" (1, 1),
    Duration = "duration" (1, 1),
    Keys = "keys" (1, 1),
    Values = "values" (1, 1),
}

/// The string key a map literal uses for a constant key, if the key type is allowed.
pub(crate) fn map_key(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) if n.is_i64() || n.is_u64() => Some(n.to_string()),
        _ => None,
    }
}

pub(crate) fn compile_regex(pattern: &str) -> Result<Regex, String> {
    if pattern.len() > MAX_PATTERN_BYTES {
        return Err(format!(
            "regular expression is {} bytes long; the limit is {MAX_PATTERN_BYTES}",
            pattern.len()
        ));
    }
    RegexBuilder::new(pattern)
        .size_limit(1 << 20)
        .dfa_size_limit(1 << 20)
        .nest_limit(64)
        .build()
        .map_err(|e| format!("invalid regular expression: {e}"))
}

pub(crate) fn parse_timestamp(text: &str) -> Result<DateTime<FixedOffset>, EvalError> {
    DateTime::parse_from_rfc3339(text).map_err(|e| {
        fail(format!(
            "'{text}' is not an RFC 3339 timestamp like 2024-05-01T12:00:00Z ({e})"
        ))
    })
}

/// `1h30m`, `1.5s`, `250ms`, `-2d`: units ns, us (µs), ms, s, m, h, d.
pub(crate) fn parse_duration(text: &str) -> Result<TimeDelta, EvalError> {
    let bad = |why: &str| {
        fail(format!(
            "'{text}' is not a duration like 250ms, 10s, 1m30s or 2h ({why})"
        ))
    };
    let (negative, mut rest) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    if rest.is_empty() {
        return Err(bad("it is empty"));
    }
    let mut total: i128 = 0;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, tail) = rest.split_at(number_len);
        if number.is_empty() {
            return Err(bad("a unit needs a number before it"));
        }
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let nanos_per_unit: i128 = match unit {
            "ns" => 1,
            "us" | "µs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "d" => 86_400_000_000_000,
            "" => return Err(bad("a number needs a unit")),
            _ => return Err(bad(&format!("unknown unit '{unit}'"))),
        };
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        let whole: i128 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| bad("number too large"))?
        };
        let mut nanos = whole
            .checked_mul(nanos_per_unit)
            .ok_or_else(|| bad("too large"))?;
        let mut scale = nanos_per_unit;
        for digit in fraction.chars().take(18) {
            scale /= 10;
            nanos += i128::from(digit.to_digit(10).ok_or_else(|| bad("bad number"))?) * scale;
        }
        total = total.checked_add(nanos).ok_or_else(|| bad("too large"))?;
        if total > i128::from(i64::MAX) {
            return Err(bad("too large"));
        }
        rest = tail;
    }
    let nanos = i64::try_from(total).map_err(|_| bad("too large"))?;
    let delta = TimeDelta::nanoseconds(nanos);
    Ok(if negative { -delta } else { delta })
}

/// How a duration reads as text: `90s`, `1.5s`.
fn format_duration(d: TimeDelta) -> String {
    match super::eval::duration_seconds(d) {
        Value::Number(n) => format!("{n}s"),
        other => other.to_string(),
    }
}

fn type_error(func: Func, position: usize, wanted: &str, got: &Kind<'_>) -> EvalError {
    let which = if position == 0 {
        "its receiver".to_string()
    } else {
        format!("argument {}", position + 1)
    };
    fail(format!(
        "{}() needs {wanted} as {which}, got {}",
        func.name(),
        got.type_name()
    ))
}

fn string_arg<'v>(func: Func, args: &'v [Val<'_>], position: usize) -> Result<&'v str, EvalError> {
    match args[position].kind() {
        Kind::Str(s) => Ok(s),
        other => Err(type_error(func, position, "a string", &other)),
    }
}

fn int_arg(func: Func, args: &[Val<'_>], position: usize) -> Result<i64, EvalError> {
    match args[position].kind() {
        Kind::Int(i) => Ok(i),
        Kind::Double(d) if d.fract() == 0.0 && d.abs() < 9.0e15 => Ok(d as i64),
        other => Err(type_error(func, position, "an integer", &other)),
    }
}

/// Character index of a byte index in `s`.
fn char_index(s: &str, byte: usize) -> i64 {
    s[..byte].chars().count() as i64
}

/// Byte index of the `chars`-th character, if within the string (the end counts).
fn byte_index(s: &str, chars: i64) -> Option<usize> {
    let chars = usize::try_from(chars).ok()?;
    s.char_indices()
        .map(|(i, _)| i)
        .chain(std::iter::once(s.len()))
        .nth(chars)
}

pub(crate) fn call<'a>(
    func: Func,
    args: Vec<Val<'a>>,
    regex: Option<&Regex>,
) -> Result<Val<'a>, EvalError> {
    use Func as F;
    let first = args[0].kind();
    match func {
        F::Size => match first {
            Kind::Str(s) => Ok(Val::int(s.chars().count() as i64)),
            Kind::List(items) => Ok(Val::int(items.len() as i64)),
            Kind::Map(map) => Ok(Val::int(map.len() as i64)),
            other => Err(type_error(func, 0, "a string, list or map", &other)),
        },
        F::Contains => match (first, args[1].kind()) {
            (Kind::Str(s), Kind::Str(sub)) => Ok(Val::bool(s.contains(sub))),
            (Kind::List(items), needle) => Ok(Val::bool(
                items
                    .iter()
                    .any(|item| kinds_eq(super::eval::kind_of(item), needle)),
            )),
            (Kind::Str(_), other) => Err(type_error(func, 1, "a string", &other)),
            (other, _) => Err(type_error(func, 0, "a string or a list", &other)),
        },
        F::StartsWith => Ok(Val::bool(
            string_arg(func, &args, 0)?.starts_with(string_arg(func, &args, 1)?),
        )),
        F::EndsWith => Ok(Val::bool(
            string_arg(func, &args, 0)?.ends_with(string_arg(func, &args, 1)?),
        )),
        F::Matches => {
            let text = string_arg(func, &args, 0)?;
            match regex {
                Some(re) => Ok(Val::bool(re.is_match(text))),
                None => {
                    let re = compile_regex(string_arg(func, &args, 1)?).map_err(fail)?;
                    Ok(Val::bool(re.is_match(text)))
                }
            }
        }
        F::LowerAscii => Val::string(string_arg(func, &args, 0)?.to_ascii_lowercase()),
        F::UpperAscii => Val::string(string_arg(func, &args, 0)?.to_ascii_uppercase()),
        F::Trim => Val::string(string_arg(func, &args, 0)?.trim().to_string()),
        F::Split => split(func, &args),
        F::Join => {
            let Kind::List(items) = first else {
                return Err(type_error(func, 0, "a list of strings", &first));
            };
            let separator = if args.len() > 1 {
                string_arg(func, &args, 1)?
            } else {
                ""
            };
            let mut parts = Vec::with_capacity(items.len());
            for item in items {
                match item {
                    Value::String(s) => parts.push(s.as_str()),
                    other => {
                        return Err(fail(format!(
                            "join() needs a list of strings, found {}",
                            super::eval::kind_of(other).type_name()
                        )));
                    }
                }
            }
            let len: usize = parts.iter().map(|p| p.len() + separator.len()).sum();
            if len > super::MAX_STRING_BYTES {
                return Val::string("x".repeat(len));
            }
            Val::string(parts.join(separator))
        }
        F::Replace => {
            let s = string_arg(func, &args, 0)?;
            let from = string_arg(func, &args, 1)?;
            let to = string_arg(func, &args, 2)?;
            let limit = if args.len() > 3 {
                int_arg(func, &args, 3)?
            } else {
                -1
            };
            let occurrences = if from.is_empty() {
                s.chars().count() + 1
            } else {
                s.matches(from).count()
            };
            let replaced = usize::try_from(limit).map_or(occurrences, |n| n.min(occurrences));
            let estimate = s.len() + replaced * to.len();
            if estimate > super::MAX_STRING_BYTES {
                return Val::string("x".repeat(super::MAX_STRING_BYTES + 1));
            }
            Val::string(s.replacen(from, to, replaced))
        }
        F::IndexOf => {
            let s = string_arg(func, &args, 0)?;
            let sub = string_arg(func, &args, 1)?;
            let start = if args.len() > 2 {
                int_arg(func, &args, 2)?
            } else {
                0
            };
            let from = byte_index(s, start)
                .ok_or_else(|| fail(format!("indexOf() start {start} is out of range")))?;
            Ok(Val::int(
                s[from..]
                    .find(sub)
                    .map_or(-1, |at| char_index(s, from + at)),
            ))
        }
        F::LastIndexOf => {
            let s = string_arg(func, &args, 0)?;
            let sub = string_arg(func, &args, 1)?;
            Ok(Val::int(s.rfind(sub).map_or(-1, |at| char_index(s, at))))
        }
        F::Substring => {
            let s = string_arg(func, &args, 0)?;
            let start = int_arg(func, &args, 1)?;
            let end = if args.len() > 2 {
                Some(int_arg(func, &args, 2)?)
            } else {
                None
            };
            let from = byte_index(s, start);
            let to = match end {
                Some(end) => byte_index(s, end),
                None => Some(s.len()),
            };
            match (from, to) {
                (Some(from), Some(to)) if from <= to => Val::string(s[from..to].to_string()),
                _ => Err(fail(format!(
                    "substring({start}{}) is out of range for a string of {} characters",
                    end.map(|e| format!(", {e}")).unwrap_or_default(),
                    s.chars().count()
                ))),
            }
        }
        F::String => Val::string(match first {
            Kind::Str(s) => s.to_string(),
            Kind::Null => "null".into(),
            Kind::Time(t) => format_timestamp(&t),
            Kind::Dur(d) => format_duration(d),
            _ => args
                .into_iter()
                .next()
                .map(Val::into_value)
                .unwrap_or_default()
                .to_string(),
        }),
        F::Int | F::Uint => {
            let i = to_int(func, first)?;
            if func == F::Uint && i < 0 {
                return Err(fail(format!("uint() of negative number {i}")));
            }
            Ok(Val::int(i))
        }
        F::Double => match first {
            Kind::Int(_) | Kind::Double(_) => Val::double(first.number().unwrap_or_default()),
            Kind::Str(s) => s
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|d| d.is_finite())
                .ok_or_else(|| fail(format!("double() cannot read '{s}' as a number")))
                .and_then(Val::double),
            other => Err(type_error(func, 0, "a number or a string", &other)),
        },
        F::Bool => match first {
            Kind::Bool(b) => Ok(Val::bool(b)),
            Kind::Str(s) => match s {
                "true" | "True" | "TRUE" | "t" | "1" => Ok(Val::bool(true)),
                "false" | "False" | "FALSE" | "f" | "0" => Ok(Val::bool(false)),
                _ => Err(fail(format!("bool() cannot read '{s}' as a boolean"))),
            },
            other => Err(type_error(func, 0, "a boolean or a string", &other)),
        },
        F::Type => Ok(Val::Str(first.type_name().to_string())),
        F::Dyn => Ok(args
            .into_iter()
            .next()
            .unwrap_or(Val::Ref(&super::eval::NULL))),
        F::Abs => match first {
            Kind::Int(i) => i
                .checked_abs()
                .map(Val::int)
                .ok_or_else(|| fail("integer overflow in abs()")),
            Kind::Double(d) => Val::double(d.abs()),
            Kind::Dur(d) => Ok(Val::Dur(d.abs())),
            other => Err(type_error(func, 0, "a number", &other)),
        },
        F::Min | F::Max => extreme(func, args),
        F::Timestamp => match first {
            Kind::Str(s) => parse_timestamp(s).map(Val::Time),
            Kind::Time(t) => Ok(Val::Time(t)),
            Kind::Int(seconds) => DateTime::from_timestamp(seconds, 0)
                .map(|t| Val::Time(t.fixed_offset()))
                .ok_or_else(|| fail("timestamp out of range")),
            other => Err(type_error(func, 0, "an RFC 3339 string", &other)),
        },
        F::Duration => match first {
            Kind::Str(s) => parse_duration(s).map(Val::Dur),
            Kind::Dur(d) => Ok(Val::Dur(d)),
            Kind::Int(seconds) => TimeDelta::try_seconds(seconds)
                .map(Val::Dur)
                .ok_or_else(|| fail("duration out of range")),
            Kind::Double(seconds) if seconds.abs() < 9.0e9 => Ok(Val::Dur(TimeDelta::nanoseconds(
                (seconds * 1e9).round() as i64,
            ))),
            other => Err(type_error(func, 0, "a duration string like 10s", &other)),
        },
        F::Keys => match first {
            Kind::Map(map) => Val::list(map.keys().map(|k| Value::String(k.clone())).collect()),
            other => Err(type_error(func, 0, "a map", &other)),
        },
        F::Values => match first {
            Kind::Map(map) => Val::list(map.values().cloned().collect()),
            other => Err(type_error(func, 0, "a map", &other)),
        },
    }
}

fn split<'a>(func: Func, args: &[Val<'a>]) -> Result<Val<'a>, EvalError> {
    let s = string_arg(func, args, 0)?;
    let separator = string_arg(func, args, 1)?;
    let limit = if args.len() > 2 {
        int_arg(func, args, 2)?
    } else {
        -1
    };
    if limit == 0 {
        return Val::list(Vec::new());
    }
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let parts: Vec<Value> = if separator.is_empty() {
        let mut parts: Vec<Value> = Vec::new();
        for (count, (at, c)) in s.char_indices().enumerate() {
            if count + 1 == limit {
                parts.push(Value::String(s[at..].to_string()));
                break;
            }
            parts.push(Value::String(c.to_string()));
        }
        parts
    } else {
        s.splitn(limit, separator)
            .map(|part| Value::String(part.to_string()))
            .collect()
    };
    check_len(parts.len())?;
    Val::list(parts)
}

fn to_int(func: Func, value: Kind<'_>) -> Result<i64, EvalError> {
    match value {
        Kind::Int(i) => Ok(i),
        Kind::Double(d) => {
            if d.is_finite() && d >= i64::MIN as f64 && d < -(i64::MIN as f64) {
                Ok(d.trunc() as i64)
            } else {
                Err(fail(format!("{}() of {d} is out of range", func.name())))
            }
        }
        Kind::Str(s) => s
            .trim()
            .parse::<i64>()
            .map_err(|_| fail(format!("{}() cannot read '{s}' as an integer", func.name()))),
        Kind::Bool(b) => Ok(i64::from(b)),
        Kind::Time(t) => Ok(t.timestamp()),
        Kind::Dur(d) => Ok(d.num_seconds()),
        other => Err(type_error(func, 0, "a number or a string", &other)),
    }
}

fn extreme<'a>(func: Func, mut args: Vec<Val<'a>>) -> Result<Val<'a>, EvalError> {
    if args.len() == 1 {
        match args.pop() {
            Some(Val::Ref(Value::Array(items))) => return pick(func, items.iter().map(Val::Ref)),
            Some(Val::List(items)) => {
                return pick(func, items.into_iter().map(Val::owned));
            }
            Some(other) => args.push(other),
            None => {}
        }
    }
    pick(func, args.into_iter())
}

fn pick<'a>(func: Func, items: impl Iterator<Item = Val<'a>>) -> Result<Val<'a>, EvalError> {
    let want = if func == Func::Min {
        std::cmp::Ordering::Less
    } else {
        std::cmp::Ordering::Greater
    };
    let mut best: Option<Val<'a>> = None;
    for item in items {
        best = Some(match best {
            Some(current) => {
                if compare(item.kind(), current.kind())? == want {
                    item
                } else {
                    current
                }
            }
            None => {
                // Rejects values that have no order (lists, maps, null) up front.
                compare(item.kind(), item.kind())?;
                item
            }
        });
    }
    best.ok_or_else(|| fail(format!("{}() of an empty list", func.name())))
}
