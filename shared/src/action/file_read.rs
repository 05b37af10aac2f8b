//! The `file.read` action: reads a text file

use super::{ActionSpec, Effect, SettingSpec};

pub const SPEC: ActionSpec = ActionSpec {
    kind: "file.read",
    description: "reads a text file",
    effect: Effect::SideEffect,
    settings: &[SettingSpec {
        name: "path",
        required: true,
        json_type: "string",
        description: "the file to read",
    }],
};
