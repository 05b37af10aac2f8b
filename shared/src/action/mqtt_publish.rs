//! The `mqtt.publish` action: publishes a message over MQTT

use super::{ActionSpec, Effect, SettingSpec};

pub const SPEC: ActionSpec = ActionSpec {
    kind: "mqtt.publish",
    description: "publishes a message over MQTT",
    effect: Effect::SideEffect,
    settings: &[
        SettingSpec {
            name: "topic",
            required: true,
            json_type: "string",
            description: "the topic",
        },
        SettingSpec {
            name: "payload",
            required: false,
            json_type: "",
            description: "maps and lists are sent as JSON",
        },
        SettingSpec {
            name: "qos",
            required: false,
            json_type: "integer",
            description: "0, 1 or 2",
        },
        SettingSpec {
            name: "retain",
            required: false,
            json_type: "boolean",
            description: "retain the message",
        },
        SettingSpec {
            name: "broker",
            required: false,
            json_type: "string",
            description: "mqtt://host:port; default: the configured broker",
        },
    ],
};
