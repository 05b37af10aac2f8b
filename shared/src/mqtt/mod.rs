//! MQTT: the `mqtt` trigger and the `mqtt.publish` action's real publisher (feature `mqtt`).
//!
//! - [`settings`]: the `[mqtt]` config section → validated [`MqttSettings`], and the
//!   [`MqttBrokers`] registry that resolves a trigger's `connection:` / `broker:`.
//! - `connection`: rumqttc options (TLS with the ring provider), reconnect backoff with
//!   jitter, rate-limited warnings.
//! - [`trigger`]: [`MqttTrigger`] — persistent session, manual acks after the execution is
//!   durably recorded (at least once), bounded concurrent submissions. Its connection
//!   (`link`) is driven by hand over rumqttc's codec so acknowledgements are never starved by
//!   deliveries (see `link` for the message loss this fixed).
//! - [`publisher`]: [`BrokerPublisher`] — one lazily connected client per broker; QoS ≥ 1
//!   publishes return after the broker's PUBACK / PUBCOMP.
//! - `factory`: [`MqttTriggers`] — the light triggers plus `mqtt`, a
//!   [`crate::trigger::TriggerFactory`] for [`crate::deploy::ActiveWorkflows`].
//!
//! Each client runs rumqttc's event loop in a future of its own that is never cancelled
//! mid-poll (except when the connection is being abandoned), and talks to the rest over
//! bounded channels; nothing here blocks on rumqttc's request channel from the loop that must
//! drain it.

mod connection;
mod factory;
mod link;
pub mod publisher;
pub mod settings;
pub mod trigger;

#[cfg(test)]
mod tests;

pub use connection::{BACKOFF_INITIAL, BACKOFF_MAX, Backoff};
pub use factory::MqttTriggers;
pub use publisher::BrokerPublisher;
pub use settings::{
    BrokerLookupError, MqttBrokers, MqttConfig, MqttConnectionConfig, MqttSettings,
    MqttSettingsError, Secret,
};
pub use trigger::MqttTrigger;
