//! The `log` action: writes a line to the runtime's log

use super::{ActionSpec, Effect, SettingSpec};

pub const SPEC: ActionSpec = ActionSpec {
    kind: "log",
    description: "writes a line to the runtime's log",
    effect: Effect::Pure,
    settings: &[
        SettingSpec {
            name: "level",
            required: false,
            json_type: "string",
            description: "trace, debug, info (default), warn or error",
        },
        SettingSpec {
            name: "message",
            required: true,
            json_type: "string",
            description: "the text to log",
        },
        SettingSpec {
            name: "fields",
            required: false,
            json_type: "object",
            description: "extra key/value fields",
        },
    ],
};
