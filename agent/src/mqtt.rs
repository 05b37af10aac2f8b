//! MQTT in the agent: the wiring of `reactor_core::mqtt` into the daemon.
//!
//! - One [`RumqttPublisher`] per agent, over the brokers of `[mqtt]` (see
//!   [`crate::config`]). It serves the `mqtt.publish` action and `emit` steps with a `topic`
//!   (through [`MqttForward`], the event router's forward hook). It connects lazily, on the
//!   first message to a broker.
//! - [`build_trigger`]: the agent's trigger factory — the light triggers of
//!   `reactor_core::trigger::build_light`, plus `mqtt` triggers ([`MqttTrigger`]) with the
//!   client id `{client_id prefix}-{workflow}.{index}` (the prefix defaults to the device id;
//!   stable across restarts, so the broker keeps the persistent session).
//!
//! Shutdown order (daemon): triggers stop (their subscriptions disconnect) → HTTP server →
//! executions checkpoint → **the publisher** → the journal closes. The publisher stops after
//! the runtime so that steps still publishing while executions checkpoint get their broker
//! acknowledgements; it needs nothing from the journal, and closing the journal last keeps
//! the durable part the final step.

use std::sync::Arc;

use async_trait::async_trait;
use reactor_core::action::mqtt_publish::{
    MqttMessage, MqttPublishAction, MqttPublisher, PublishError, Qos,
};
use reactor_core::engine::{Event, EventBus};
use reactor_core::flow::{TriggerKind, TriggerSpec};
use reactor_core::mqtt::{MqttBrokers, MqttTrigger, RumqttPublisher};
use reactor_core::trigger::{Trigger, TriggerError, build_light};
use serde_json::json;

/// The agent's one publisher, shared by the action, the event forward and shutdown.
#[derive(Debug, Clone)]
pub struct SharedPublisher(Arc<RumqttPublisher>);

impl SharedPublisher {
    pub fn new(brokers: MqttBrokers) -> SharedPublisher {
        SharedPublisher(Arc::new(RumqttPublisher::new(brokers)))
    }

    /// The `mqtt.publish` action over this publisher.
    pub fn action(&self) -> MqttPublishAction<SharedPublisher> {
        MqttPublishAction::new(self.clone())
    }

    /// Disconnects every broker connection, waiting up to `grace`.
    pub async fn shutdown(&self, grace: std::time::Duration) {
        self.0.shutdown(grace).await;
    }
}

#[async_trait]
impl MqttPublisher for SharedPublisher {
    async fn publish(&self, message: MqttMessage) -> Result<(), PublishError> {
        self.0.publish(message).await
    }
}

/// The event router's forward hook: an emitted event with a `topic` is published to the
/// default broker as JSON `{id, type, source, time, data}`, QoS 1, not retained. The `emit`
/// step finishes once the broker acknowledged it (a failure fails the step, which its
/// `retry` may repeat: at least once). Events without a topic are not forwarded.
#[derive(Debug, Clone)]
pub struct MqttForward {
    publisher: SharedPublisher,
}

impl MqttForward {
    pub fn new(publisher: SharedPublisher) -> MqttForward {
        MqttForward { publisher }
    }
}

/// The JSON an emitted event is published as.
pub fn event_payload(event: &Event) -> Vec<u8> {
    let body = json!({
        "id": event.id,
        "type": event.event_type,
        "source": event.source,
        "time": event.time,
        "data": event.data,
    });
    serde_json::to_vec(&body).unwrap_or_default()
}

#[async_trait]
impl EventBus for MqttForward {
    async fn publish(&self, event: &Event, topic: Option<&str>) -> Result<(), String> {
        let Some(topic) = topic else {
            return Ok(());
        };
        let message = MqttMessage {
            broker: None,
            topic: topic.to_string(),
            payload: event_payload(event),
            qos: Qos::AtLeastOnce,
            retain: false,
        };
        self.publisher.publish(message).await.map_err(|error| {
            format!(
                "publishing event {} to MQTT topic {topic:?}: {error}",
                event.id
            )
        })
    }
}

/// Builds the trigger of `workflow`'s `index`-th `triggers:` entry: `Ok(None)` for triggers
/// without a task of their own (`http`, `event`).
pub fn build_trigger(
    brokers: &MqttBrokers,
    workflow: &str,
    index: usize,
    spec: &TriggerSpec,
) -> Result<Option<Box<dyn Trigger>>, TriggerError> {
    match &spec.kind {
        TriggerKind::Mqtt(settings) => {
            let purpose = format!("{workflow}.{index}");
            Ok(Some(Box::new(MqttTrigger::new(
                settings, brokers, &purpose,
            )?)))
        }
        _ => build_light(spec),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reactor_core::mqtt::MqttConfig;

    fn brokers(url: Option<&str>) -> MqttBrokers {
        let config = MqttConfig {
            url: url.map(str::to_string),
            ..MqttConfig::default()
        };
        MqttBrokers::from_config(&config, "pi-1", &|_| None).unwrap()
    }

    fn spec(yaml: &str) -> TriggerSpec {
        let text = format!("reactor: 1\nname: w\ntriggers:\n  - {yaml}\nsteps:\n  - return: 1\n");
        let workflow =
            reactor_core::dsl::parse_workflow("w.yaml", &text).unwrap_or_else(|e| panic!("{e:?}"));
        workflow.triggers[0].clone()
    }

    #[test]
    fn mqtt_triggers_need_a_broker() {
        let mqtt = spec("mqtt: { topic: \"a/+/b\", qos: 1 }");
        let built = build_trigger(&brokers(Some("mqtt://127.0.0.1:1883")), "w", 0, &mqtt);
        assert_eq!(built.unwrap().unwrap().kind(), "mqtt");
        let error = build_trigger(&brokers(None), "w", 0, &mqtt)
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("no default MQTT broker"), "{error}");
        let inline = spec("mqtt: { topic: \"a/#\", broker: \"mqtt://127.0.0.1:1884\" }");
        assert!(build_trigger(&brokers(None), "w", 1, &inline).is_ok());
    }

    #[test]
    fn light_triggers_still_build() {
        let every = spec("interval: { every: 1s }");
        assert!(
            build_trigger(&brokers(None), "w", 0, &every)
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn event_payload_is_the_cloud_event_core() {
        let event = Event::new("temp.high", "reactor:workflow/w", json!({ "t": 31 }));
        let body: serde_json::Value = serde_json::from_slice(&event_payload(&event)).unwrap();
        assert_eq!(body["type"], "temp.high");
        assert_eq!(body["source"], "reactor:workflow/w");
        assert_eq!(body["data"], json!({ "t": 31 }));
        assert_eq!(body["id"], event.id.as_str());
        assert_eq!(body.as_object().unwrap().len(), 5);
    }
}
