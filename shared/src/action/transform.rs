//! The `transform` action: computes a value
//!
//! The engine evaluates expressions in `with:` before the action runs, so the output is the
//! `value` setting exactly as it arrives (`null` included). Pure: no side effect, journaled
//! with the next write.

use async_trait::async_trait;

use super::settings::With;
use super::{Action, ActionContext, ActionError, ActionSpec, Effect, SettingSpec};
use crate::Value;

pub const SPEC: ActionSpec = ActionSpec {
    kind: "transform",
    description: "computes a value",
    effect: Effect::Pure,
    settings: &[SettingSpec {
        name: "value",
        required: true,
        json_type: "",
        description: "the value (expressions allowed at any depth)",
    }],
};

/// The output of a `transform` step: its `value` setting.
pub fn transform(input: Value) -> Result<Value, ActionError> {
    With::new(&SPEC, &input)?.required("value")?;
    let Value::Object(mut map) = input else {
        unreachable!("With::new accepted a non-map holding \"value\"")
    };
    Ok(map.remove("value").unwrap_or(Value::Null))
}

/// The `transform` action.
#[derive(Clone, Copy, Debug, Default)]
pub struct TransformAction;

#[async_trait]
impl Action for TransformAction {
    fn spec(&self) -> &'static ActionSpec {
        &SPEC
    }

    async fn execute(&self, input: Value, _context: &ActionContext) -> Result<Value, ActionError> {
        transform(input)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn outputs_the_value_as_given() {
        let value = json!({"a": [1, 2, {"b": null}], "c": "d"});
        assert_eq!(transform(json!({ "value": value.clone() })).unwrap(), value);
        assert_eq!(transform(json!({"value": null})).unwrap(), Value::Null);
        assert_eq!(transform(json!({"value": 3})).unwrap(), json!(3));
    }

    #[test]
    fn value_is_required() {
        let err = transform(json!({})).unwrap_err();
        assert_eq!(
            err,
            ActionError::permanent("transform: \"value\" is required")
        );
        let err = transform(Value::Null).unwrap_err();
        assert_eq!(
            err,
            ActionError::permanent("transform: \"value\" is required")
        );
    }

    #[test]
    fn is_pure() {
        assert_eq!(TransformAction.spec().effect, Effect::Pure);
    }
}
