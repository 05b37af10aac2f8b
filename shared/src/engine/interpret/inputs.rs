//! A workflow's declared `inputs`: defaults, type checks, unknown names refused.

use crate::flow::{InputType, Workflow};
use crate::{Map, Value};

use super::super::journal::ErrorInfo;

/// Applies input declarations: defaults for missing inputs, type checks, unknown names refused.
pub fn resolve_inputs(workflow: &Workflow, given: Value) -> Result<Value, ErrorInfo> {
    let mut given = match given {
        Value::Null => Map::new(),
        Value::Object(map) => map,
        other => {
            return Err(ErrorInfo::new(
                "input",
                format!("inputs must be an object, got {other}"),
            ));
        }
    };
    let mut out = Map::new();
    for spec in &workflow.inputs {
        match given.remove(&spec.name) {
            Some(value) if spec.ty.accepts(&value) => {
                out.insert(spec.name.clone(), value);
            }
            Some(value) => {
                let message = format!(
                    "input {:?} must be {}, got {value}",
                    spec.name,
                    article(spec.ty)
                );
                return Err(ErrorInfo::new("input", message));
            }
            None => match &spec.default {
                Some(default) => {
                    out.insert(spec.name.clone(), default.clone());
                }
                None => {
                    return Err(ErrorInfo::new(
                        "input",
                        format!("missing required input {:?}", spec.name),
                    ));
                }
            },
        }
    }
    if let Some(name) = given.keys().next() {
        return Err(ErrorInfo::new("input", format!("unknown input {name:?}")));
    }
    Ok(Value::Object(out))
}

fn article(ty: InputType) -> String {
    match ty {
        InputType::Integer | InputType::Object | InputType::Array => format!("an {}", ty.name()),
        _ => format!("a {}", ty.name()),
    }
}
