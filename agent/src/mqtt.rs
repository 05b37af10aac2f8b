//! MQTT in the agent: the wiring of `reactor_core::mqtt` into the daemon.
//!
//! - One [`BrokerPublisher`] per agent, over the brokers of `[mqtt]` (see
//!   [`crate::config`]). It serves the `mqtt.publish` action and `emit` steps with a `topic`
//!   (through [`MqttForward`], the event router's forward hook). It connects lazily, on the
//!   first message to a broker.
//! - `mqtt` triggers: built by core's [`reactor_core::mqtt::MqttTriggers`] factory (see
//!   [`crate::workflows`]) with the client id `{client_id prefix}-{workflow}.{index}` (the
//!   prefix defaults to the device id; stable across restarts, so the broker keeps the
//!   persistent session).
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
use reactor_core::mqtt::{BrokerPublisher, MqttBrokers};
use serde_json::json;

/// The agent's one publisher, shared by the action, the event forward and shutdown.
#[derive(Debug, Clone)]
pub struct SharedPublisher(Arc<BrokerPublisher>);

impl SharedPublisher {
    pub fn new(brokers: MqttBrokers) -> SharedPublisher {
        SharedPublisher(Arc::new(BrokerPublisher::new(brokers)))
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

#[cfg(test)]
mod tests {
    use super::*;

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
