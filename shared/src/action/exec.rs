//! The `exec` action: runs an allow-listed command without a shell

use super::{ActionSpec, Effect, SettingSpec};

pub const SPEC: ActionSpec = ActionSpec {
    kind: "exec",
    description: "runs an allow-listed command without a shell",
    effect: Effect::SideEffect,
    settings: &[
        SettingSpec {
            name: "command",
            required: true,
            json_type: "string",
            description: "the program",
        },
        SettingSpec {
            name: "args",
            required: false,
            json_type: "array",
            description: "its arguments",
        },
        SettingSpec {
            name: "stdin",
            required: false,
            json_type: "string",
            description: "text written to its standard input",
        },
        SettingSpec {
            name: "timeout",
            required: false,
            json_type: "string",
            description: "a duration (default 60s)",
        },
    ],
};
