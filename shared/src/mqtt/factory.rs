//! [`MqttTriggers`]: the light triggers plus `mqtt` — the agent's [`TriggerFactory`].

use std::sync::Arc;

use super::settings::MqttBrokers;
use super::trigger::MqttTrigger;
use crate::flow::{TriggerKind, TriggerSpec};
use crate::trigger::{Trigger, TriggerError, TriggerFactory, build_light};

/// Builds `mqtt` triggers over a set of brokers, and every other kind with
/// [`build_light`]. An `mqtt` trigger's client id is `{client-id prefix}-{workflow}.{index}`
/// (the prefix defaults to the device id), stable across restarts so the broker keeps the
/// persistent session.
#[derive(Debug, Clone)]
pub struct MqttTriggers {
    brokers: Arc<MqttBrokers>,
}

impl MqttTriggers {
    pub fn new(brokers: MqttBrokers) -> MqttTriggers {
        MqttTriggers {
            brokers: Arc::new(brokers),
        }
    }
}

impl TriggerFactory for MqttTriggers {
    fn build(
        &self,
        workflow: &str,
        index: usize,
        spec: &TriggerSpec,
    ) -> Result<Option<Box<dyn Trigger>>, TriggerError> {
        match &spec.kind {
            TriggerKind::Mqtt(settings) => {
                let purpose = format!("{workflow}.{index}");
                Ok(Some(Box::new(MqttTrigger::new(
                    settings,
                    &self.brokers,
                    &purpose,
                )?)))
            }
            _ => build_light(spec),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mqtt::MqttConfig;

    fn factory(url: Option<&str>) -> MqttTriggers {
        let config = MqttConfig {
            url: url.map(str::to_string),
            ..MqttConfig::default()
        };
        MqttTriggers::new(MqttBrokers::from_config(&config, "pi-1", &|_| None).unwrap())
    }

    fn spec(yaml: &str) -> TriggerSpec {
        let text = format!("reactor: 1\nname: w\ntriggers:\n  - {yaml}\nsteps:\n  - return: 1\n");
        let workflow =
            crate::dsl::parse_workflow("w.yaml", &text).unwrap_or_else(|e| panic!("{e:?}"));
        workflow.triggers[0].clone()
    }

    #[test]
    fn mqtt_triggers_need_a_broker() {
        let mqtt = spec("mqtt: { topic: \"a/+/b\", qos: 1 }");
        let built = factory(Some("mqtt://127.0.0.1:1883")).build("w", 0, &mqtt);
        assert_eq!(built.unwrap().unwrap().kind(), "mqtt");
        let error = factory(None)
            .build("w", 0, &mqtt)
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("no default MQTT broker"), "{error}");
        let inline = spec("mqtt: { topic: \"a/#\", broker: \"mqtt://127.0.0.1:1884\" }");
        assert!(factory(None).build("w", 1, &inline).is_ok());
    }

    #[test]
    fn light_triggers_still_build() {
        let every = spec("interval: { every: 1s }");
        assert!(factory(None).build("w", 0, &every).unwrap().is_some());
        let http = spec("http: { path: /x }");
        assert!(factory(None).build("w", 0, &http).unwrap().is_none());
    }
}
