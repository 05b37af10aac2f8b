//! The `transform` action: computes a value

use super::{ActionSpec, Effect, SettingSpec};

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
