//! Reading an action's evaluated `with:` map into typed settings, with errors that name the
//! action and the setting (`http: "url" is required`).
//!
//! Rules shared by every built-in action:
//! - `with:` must be a map (a missing `with:` arrives as `null` and counts as an empty map).
//! - A key the action's [`ActionSpec`] does not list is refused (the validator reports it too;
//!   this catches expressions that build the map at run time).
//! - For an optional setting, `null` means "not given" (an expression that yields `null`
//!   falls back to the default).

use std::time::Duration;

use super::{ActionError, ActionSpec};
use crate::{Map, Value};

/// The `with:` map of one action, with typed getters.
#[derive(Debug)]
pub(crate) struct With<'a> {
    kind: &'static str,
    map: Option<&'a Map>,
}

impl<'a> With<'a> {
    /// Checks that `input` is a map holding only settings the spec lists.
    pub(crate) fn new(spec: &'static ActionSpec, input: &'a Value) -> Result<Self, ActionError> {
        let kind = spec.kind;
        let map = match input {
            Value::Null => None,
            Value::Object(map) => Some(map),
            other => {
                return Err(ActionError::permanent(format!(
                    "{kind}: settings must be a map, not {}",
                    type_name(other)
                )));
            }
        };
        if let Some(map) = map {
            for key in map.keys() {
                if !spec.settings.iter().any(|s| s.name == key) {
                    let known: Vec<_> = spec.settings.iter().map(|s| s.name).collect();
                    return Err(ActionError::permanent(format!(
                        "{kind}: unknown setting {key:?} (known: {})",
                        known.join(", ")
                    )));
                }
            }
        }
        Ok(With { kind, map })
    }

    /// The raw value of an optional setting; `null` counts as absent.
    pub(crate) fn get(&self, name: &str) -> Option<&'a Value> {
        self.map.and_then(|m| m.get(name)).filter(|v| !v.is_null())
    }

    /// The raw value of a required setting; `null` is a value here.
    pub(crate) fn required(&self, name: &str) -> Result<&'a Value, ActionError> {
        self.map
            .and_then(|m| m.get(name))
            .ok_or_else(|| self.error(format!("{name:?} is required")))
    }

    pub(crate) fn error(&self, message: impl std::fmt::Display) -> ActionError {
        ActionError::permanent(format!("{}: {message}", self.kind))
    }

    pub(crate) fn wrong_type(&self, name: &str, expected: &str, got: &Value) -> ActionError {
        self.error(format!(
            "{name:?} must be {expected}, not {}",
            type_name(got)
        ))
    }

    pub(crate) fn string(&self, name: &str) -> Result<Option<&'a str>, ActionError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(self.wrong_type(name, "a string", other)),
        }
    }

    pub(crate) fn required_string(&self, name: &str) -> Result<&'a str, ActionError> {
        match self.required(name)? {
            Value::String(s) => Ok(s),
            other => Err(self.wrong_type(name, "a string", other)),
        }
    }

    pub(crate) fn bool(&self, name: &str) -> Result<Option<bool>, ActionError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(self.wrong_type(name, "true or false", other)),
        }
    }

    pub(crate) fn object(&self, name: &str) -> Result<Option<&'a Map>, ActionError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Object(map)) => Ok(Some(map)),
            Some(other) => Err(self.wrong_type(name, "a map", other)),
        }
    }

    pub(crate) fn array(&self, name: &str) -> Result<Option<&'a Vec<Value>>, ActionError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Array(items)) => Ok(Some(items)),
            Some(other) => Err(self.wrong_type(name, "a list", other)),
        }
    }

    /// A duration string (`30s`, `1m30s`); a bare number is refused because its unit would be
    /// a guess.
    pub(crate) fn duration(&self, name: &str) -> Result<Option<Duration>, ActionError> {
        let Some(text) = self.string(name).map_err(|_| {
            self.error(format!(
                "{name:?} must be a duration string like \"30s\" or \"1m30s\""
            ))
        })?
        else {
            return Ok(None);
        };
        let duration =
            crate::flow::parse_duration(text).map_err(|e| self.error(format!("{name:?}: {e}")))?;
        if duration.is_zero() {
            return Err(self.error(format!("{name:?} must be longer than zero")));
        }
        Ok(Some(duration))
    }
}

/// A scalar as text: strings as they are, numbers and booleans as written; `None` for
/// `null`, lists and maps.
pub(crate) fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Null | Value::Array(_) | Value::Object(_) => None,
    }
}

/// `2` and `2.0` as 2; negative or fractional numbers are `None`.
pub(crate) fn as_u64(value: &Value) -> Option<u64> {
    let number = value.as_number()?;
    if let Some(n) = number.as_u64() {
        return Some(n);
    }
    let f = number.as_f64()?;
    (f >= 0.0 && f.fract() == 0.0 && f <= u64::MAX as f64).then_some(f as u64)
}

/// A value's type as users know it from the DSL.
pub(crate) fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a map",
    }
}

/// Text for a payload or file: strings as they are, anything else as compact JSON.
pub(crate) fn text_or_json(value: &Value) -> Vec<u8> {
    match value {
        Value::String(s) => s.as_bytes().to_vec(),
        other => other.to_string().into_bytes(),
    }
}

/// Cuts `text` to at most `max` bytes on a character boundary, from the end when `tail`.
pub(crate) fn clip(text: &str, max: usize, tail: bool) -> &str {
    if text.len() <= max {
        return text;
    }
    if tail {
        let mut start = text.len() - max;
        while !text.is_char_boundary(start) {
            start += 1;
        }
        &text[start..]
    } else {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        &text[..end]
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::action::transform::SPEC;

    #[test]
    fn refuses_non_maps_and_unknown_keys() {
        let err = With::new(&SPEC, &json!([1])).unwrap_err();
        assert_eq!(
            err,
            ActionError::permanent("transform: settings must be a map, not a list")
        );
        let err = With::new(&SPEC, &json!({"valeu": 1})).unwrap_err();
        assert!(
            err.to_string().contains("unknown setting \"valeu\""),
            "{err}"
        );
    }

    #[test]
    fn null_is_absent_for_optional_settings_only() {
        let input = json!({"value": null});
        let with = With::new(&SPEC, &input).unwrap();
        assert_eq!(with.get("value"), None);
        assert_eq!(with.required("value").unwrap(), &Value::Null);
        let empty = json!({});
        let err = With::new(&SPEC, &empty)
            .unwrap()
            .required("value")
            .unwrap_err();
        assert_eq!(err.to_string(), "transform: \"value\" is required");
    }

    #[test]
    fn integers_accept_whole_floats() {
        assert_eq!(as_u64(&json!(2)), Some(2));
        assert_eq!(as_u64(&json!(2.0)), Some(2));
        assert_eq!(as_u64(&json!(2.5)), None);
        assert_eq!(as_u64(&json!(-1)), None);
    }

    #[test]
    fn clip_respects_char_boundaries() {
        assert_eq!(clip("héllo", 2, false), "h");
        assert_eq!(clip("héllo", 4, true), "llo");
        assert_eq!(clip("abc", 10, true), "abc");
    }
}
