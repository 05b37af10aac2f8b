//! The `mqtt.publish` action: publishes a message over MQTT
//!
//! The broker connection belongs to the runtime (the agent's rumqttc client), so the action is
//! generic over [`MqttPublisher`]; it is not part of `builtin_registry` — the runtime registers
//! `MqttPublishAction::new(publisher)`. This file does everything but the network:
//! - `payload`: a string is sent as its UTF-8 bytes; maps, lists, numbers and booleans as
//!   compact JSON; absent or `null` sends an empty payload.
//! - `topic`: required, not empty, at most 65535 bytes, no `+`/`#` wildcards, no NUL.
//! - `qos`: 0, 1 (default) or 2. QoS 1 is at-least-once: together with the engine re-running a
//!   step that started but did not end, subscribers may see a message twice.
//! - `retain`: default false. `broker`: passed to the publisher (`None` = its default).
//! - Errors from the publisher: [`PublishError::Unavailable`] (not connected, queue full,
//!   timeout) is retryable; [`PublishError::Rejected`] (unknown broker, refused by the broker)
//!   is permanent. Cancellation returns [`ActionError::Cancelled`] at once; the message may
//!   still have been handed to the client.
//! - Output: `null`.

use async_trait::async_trait;

use super::settings::{With, as_u64, text_or_json};
use super::{Action, ActionContext, ActionError, ActionSpec, Effect, SettingSpec};
use crate::Value;

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
            description: "0, 1 (default) or 2",
        },
        SettingSpec {
            name: "retain",
            required: false,
            json_type: "boolean",
            description: "retain the message (default false)",
        },
        SettingSpec {
            name: "broker",
            required: false,
            json_type: "string",
            description: "mqtt://host:port; default: the configured broker",
        },
    ],
};

/// MQTT delivery guarantee.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Qos {
    AtMostOnce = 0,
    AtLeastOnce = 1,
    ExactlyOnce = 2,
}

/// One message to publish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MqttMessage {
    /// `mqtt://host:port` when the step names a broker; `None` for the configured one.
    pub broker: Option<String>,
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: Qos,
    pub retain: bool,
}

/// Why a publisher could not publish.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// May work later: not connected, queue full, timed out.
    #[error("{0}")]
    Unavailable(String),
    /// Will not work: unknown broker, refused by the broker.
    #[error("{0}")]
    Rejected(String),
}

/// A connection that can publish (the runtime's MQTT client).
#[async_trait]
pub trait MqttPublisher: Send + Sync + 'static {
    /// Hands the message to the client; for QoS ≥ 1 returns once the broker acknowledged it
    /// (or the client queued it durably — the implementation documents which).
    async fn publish(&self, message: MqttMessage) -> Result<(), PublishError>;
}

/// Parses a step's `with:` into the message to send.
pub fn parse_message(input: &Value) -> Result<MqttMessage, ActionError> {
    let with = With::new(&SPEC, input)?;
    let topic = with.required_string("topic")?;
    if topic.is_empty() {
        return Err(with.error("\"topic\" must not be empty"));
    }
    if topic.len() > 65535 {
        return Err(with.error("\"topic\" is longer than 65535 bytes"));
    }
    if topic.contains(['+', '#']) {
        return Err(with.error(format!(
            "topic {topic:?} contains a wildcard (+ or #); those are only for subscribing"
        )));
    }
    if topic.contains('\0') {
        return Err(with.error("\"topic\" must not contain NUL"));
    }
    let qos = match with.get("qos") {
        None => Qos::AtLeastOnce,
        Some(value) => match as_u64(value) {
            Some(0) => Qos::AtMostOnce,
            Some(1) => Qos::AtLeastOnce,
            Some(2) => Qos::ExactlyOnce,
            _ => return Err(with.error(format!("\"qos\" must be 0, 1 or 2, not {value}"))),
        },
    };
    Ok(MqttMessage {
        broker: with.string("broker")?.map(str::to_string),
        topic: topic.to_string(),
        payload: with.get("payload").map(text_or_json).unwrap_or_default(),
        qos,
        retain: with.bool("retain")?.unwrap_or(false),
    })
}

/// The `mqtt.publish` action over a runtime's publisher.
#[derive(Debug)]
pub struct MqttPublishAction<P> {
    publisher: P,
}

impl<P: MqttPublisher> MqttPublishAction<P> {
    pub fn new(publisher: P) -> Self {
        MqttPublishAction { publisher }
    }

    /// Publishes one parsed message, mapping errors and honouring `cancel`.
    pub async fn publish(
        &self,
        message: MqttMessage,
        cancel: &tokio_util::sync::CancellationToken,
    ) -> Result<(), ActionError> {
        let topic = message.topic.clone();
        // Cancel safety: dropping the publish future abandons the wait; the client may already
        // have queued the message, which is why re-runs can duplicate it (see the module docs).
        let result = tokio::select! {
            biased;
            _ = cancel.cancelled() => return Err(ActionError::Cancelled),
            result = self.publisher.publish(message) => result,
        };
        result.map_err(|e| match e {
            PublishError::Unavailable(why) => {
                ActionError::retryable(format!("mqtt.publish: {topic:?}: {why}"))
            }
            PublishError::Rejected(why) => {
                ActionError::permanent(format!("mqtt.publish: {topic:?}: {why}"))
            }
        })
    }
}

#[async_trait]
impl<P: MqttPublisher> Action for MqttPublishAction<P> {
    fn spec(&self) -> &'static ActionSpec {
        &SPEC
    }

    async fn execute(&self, input: Value, context: &ActionContext) -> Result<Value, ActionError> {
        let message = parse_message(&input)?;
        self.publish(message, &context.cancel).await?;
        Ok(Value::Null)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use serde_json::json;

    use super::*;
    use crate::action::test_context;

    /// Records messages, or answers with a fixed error; `hang` never answers.
    #[derive(Debug, Default)]
    struct Recorder {
        sent: Mutex<Vec<MqttMessage>>,
        fail: Option<PublishError>,
        hang: bool,
    }

    #[async_trait]
    impl MqttPublisher for Recorder {
        async fn publish(&self, message: MqttMessage) -> Result<(), PublishError> {
            if self.hang {
                std::future::pending::<()>().await;
            }
            if let Some(e) = &self.fail {
                return Err(e.clone());
            }
            self.sent.lock().unwrap().push(message);
            Ok(())
        }
    }

    async fn publish(
        recorder: Recorder,
        input: Value,
    ) -> (Result<Value, ActionError>, Vec<MqttMessage>) {
        let action = MqttPublishAction::new(recorder);
        let result = action.execute(input, &test_context()).await;
        let sent = action.publisher.sent.lock().unwrap().clone();
        (result, sent)
    }

    #[tokio::test]
    async fn sends_strings_raw_and_values_as_json() {
        let (out, sent) = publish(
            Recorder::default(),
            json!({"topic": "a/b", "payload": "on", "qos": 2, "retain": true}),
        )
        .await;
        assert_eq!(out.unwrap(), Value::Null);
        assert_eq!(
            sent,
            [MqttMessage {
                broker: None,
                topic: "a/b".into(),
                payload: b"on".to_vec(),
                qos: Qos::ExactlyOnce,
                retain: true,
            }]
        );
        let (_, sent) = publish(
            Recorder::default(),
            json!({"topic": "t", "payload": {"v": [1, 2]}, "broker": "mqtt://b:1883"}),
        )
        .await;
        assert_eq!(sent[0].payload, br#"{"v":[1,2]}"#.to_vec());
        assert_eq!(sent[0].qos, Qos::AtLeastOnce);
        assert!(!sent[0].retain);
        assert_eq!(sent[0].broker.as_deref(), Some("mqtt://b:1883"));
        let (_, sent) = publish(Recorder::default(), json!({"topic": "t"})).await;
        assert!(sent[0].payload.is_empty());
    }

    #[test]
    fn validates_topic_and_qos() {
        let err = parse_message(&json!({"topic": "a/+/b"})).unwrap_err();
        assert!(err.to_string().contains("wildcard"), "{err}");
        let err = parse_message(&json!({"topic": ""})).unwrap_err();
        assert_eq!(
            err,
            ActionError::permanent("mqtt.publish: \"topic\" must not be empty")
        );
        let err = parse_message(&json!({"topic": "t", "qos": 3})).unwrap_err();
        assert_eq!(
            err,
            ActionError::permanent("mqtt.publish: \"qos\" must be 0, 1 or 2, not 3")
        );
        let err = parse_message(&json!({"payload": 1})).unwrap_err();
        assert_eq!(
            err,
            ActionError::permanent("mqtt.publish: \"topic\" is required")
        );
        let err = parse_message(&json!({"topic": "t", "retain": 1})).unwrap_err();
        assert!(matches!(err, ActionError::Permanent { .. }));
    }

    #[tokio::test]
    async fn maps_publisher_errors() {
        let recorder = Recorder {
            fail: Some(PublishError::Unavailable("not connected".into())),
            ..Recorder::default()
        };
        let (out, _) = publish(recorder, json!({"topic": "t"})).await;
        assert_eq!(
            out.unwrap_err(),
            ActionError::retryable("mqtt.publish: \"t\": not connected")
        );
        let recorder = Recorder {
            fail: Some(PublishError::Rejected("not authorized".into())),
            ..Recorder::default()
        };
        let (out, _) = publish(recorder, json!({"topic": "t"})).await;
        assert_eq!(
            out.unwrap_err(),
            ActionError::permanent("mqtt.publish: \"t\": not authorized")
        );
    }

    #[tokio::test]
    async fn cancellation_stops_waiting() {
        let action = MqttPublishAction::new(Recorder {
            hang: true,
            ..Recorder::default()
        });
        let context = test_context();
        context.cancel.cancel();
        let err = action
            .execute(json!({"topic": "t"}), &context)
            .await
            .unwrap_err();
        assert_eq!(err, ActionError::Cancelled);
    }
}
