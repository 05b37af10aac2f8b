//! The `file.write` action: writes or appends to a file

use super::{ActionSpec, Effect, SettingSpec};

pub const SPEC: ActionSpec = ActionSpec {
    kind: "file.write",
    description: "writes or appends to a file",
    effect: Effect::SideEffect,
    settings: &[
        SettingSpec {
            name: "path",
            required: true,
            json_type: "string",
            description: "the file to write",
        },
        SettingSpec {
            name: "content",
            required: true,
            json_type: "",
            description: "text; other values are written as JSON",
        },
        SettingSpec {
            name: "append",
            required: false,
            json_type: "boolean",
            description: "append instead of replacing",
        },
    ],
};
