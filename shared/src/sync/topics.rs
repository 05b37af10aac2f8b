//! The MQTT topic scheme of the fleet: `reactor/v1/d/{device}/{channel}`.
//!
//! Every device id that enters the system (enrollment, a topic, a frame, a CLI flag) goes
//! through [`DeviceId::parse`]: an id that could widen a subscription (`+`, `#`), escape its
//! prefix (`/`), hide a broker-internal topic (`$…`) or survive percent-decoding differently
//! (`%`) never becomes a [`DeviceId`].

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The root of every topic of this protocol generation.
pub const ROOT: &str = "reactor/v1";

/// The longest device id, in bytes (UTF-8).
pub const MAX_DEVICE_ID_BYTES: usize = 64;

/// A validated device id: 1 to 64 bytes of UTF-8, no `+ # / %`, no control characters, not
/// starting with `$`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DeviceId(String);

/// Why a device id was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DeviceIdError {
    #[error("device id is empty")]
    Empty,
    #[error("device id is {len} bytes long; the limit is {MAX_DEVICE_ID_BYTES}")]
    TooLong { len: usize },
    #[error("device id must not start with `$` (reserved for broker topics)")]
    DollarPrefix,
    #[error("device id contains `{character}` at byte {at}; `+ # / %` are not allowed")]
    ForbiddenCharacter { character: char, at: usize },
    #[error("device id contains a control character (U+{code:04X}) at byte {at}")]
    ControlCharacter { code: u32, at: usize },
}

impl DeviceId {
    /// Validates `id`. The single entry point for device ids.
    pub fn parse(id: &str) -> Result<DeviceId, DeviceIdError> {
        if id.is_empty() {
            return Err(DeviceIdError::Empty);
        }
        if id.len() > MAX_DEVICE_ID_BYTES {
            return Err(DeviceIdError::TooLong { len: id.len() });
        }
        if id.starts_with('$') {
            return Err(DeviceIdError::DollarPrefix);
        }
        for (at, character) in id.char_indices() {
            if matches!(character, '+' | '#' | '/' | '%') {
                return Err(DeviceIdError::ForbiddenCharacter { character, at });
            }
            if character.is_control() {
                return Err(DeviceIdError::ControlCharacter {
                    code: u32::from(character),
                    at,
                });
            }
        }
        Ok(DeviceId(id.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `reactor/v1/d/{device}/`: everything this device may publish or subscribe to is
    /// under it.
    pub fn prefix(&self) -> String {
        format!("{ROOT}/d/{}/", self.0)
    }

    /// The topic of one of this device's channels.
    pub fn topic(&self, channel: Channel) -> String {
        format!("{ROOT}/d/{}/{}", self.0, channel.as_str())
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for DeviceId {
    type Err = DeviceIdError;
    fn from_str(id: &str) -> Result<DeviceId, DeviceIdError> {
        DeviceId::parse(id)
    }
}

impl TryFrom<String> for DeviceId {
    type Error = DeviceIdError;
    fn try_from(id: String) -> Result<DeviceId, DeviceIdError> {
        DeviceId::parse(&id)?;
        Ok(DeviceId(id))
    }
}

impl From<DeviceId> for String {
    fn from(id: DeviceId) -> String {
        id.0
    }
}

/// Who publishes on a channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    AgentToHub,
    HubToAgent,
}

/// One of a device's six channels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Channel {
    /// Agent → hub, retained, last will "offline": presence, versions, health.
    Status,
    /// Agent → hub, QoS 1: event batches and gap notices from the durable outbox.
    Events,
    /// Agent → hub, QoS 1: execution summaries with traces, and command results.
    Executions,
    /// Hub → agent: the highest outbox sequence stored.
    Ack,
    /// Hub → agent, retained: the signed bundle the device should run.
    Bundle,
    /// Hub → agent: run a workflow now, cancel an execution, ping.
    Cmd,
}

impl Channel {
    /// Every channel, in a fixed order.
    pub const ALL: [Channel; 6] = [
        Channel::Status,
        Channel::Events,
        Channel::Executions,
        Channel::Ack,
        Channel::Bundle,
        Channel::Cmd,
    ];

    /// The last topic level.
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Status => "status",
            Channel::Events => "events",
            Channel::Executions => "executions",
            Channel::Ack => "ack",
            Channel::Bundle => "bundle",
            Channel::Cmd => "cmd",
        }
    }

    pub fn parse(level: &str) -> Option<Channel> {
        Channel::ALL.into_iter().find(|c| c.as_str() == level)
    }

    pub fn direction(self) -> Direction {
        match self {
            Channel::Status | Channel::Events | Channel::Executions => Direction::AgentToHub,
            Channel::Ack | Channel::Bundle | Channel::Cmd => Direction::HubToAgent,
        }
    }

    /// Whether messages on this channel are published with the MQTT retain flag.
    pub fn retained(self) -> bool {
        matches!(self, Channel::Status | Channel::Bundle)
    }

    /// The MQTT QoS level messages on this channel are published with: 1 everywhere
    /// (at least once; the receivers de-duplicate).
    pub fn qos(self) -> u8 {
        1
    }

    /// The filter the hub subscribes to for this channel of every device
    /// (`reactor/v1/d/+/{channel}`). Only meaningful for agent → hub channels.
    pub fn hub_filter(self) -> String {
        format!("{ROOT}/d/+/{}", self.as_str())
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a topic is not one of this protocol's.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TopicError {
    #[error("topic `{0}` is not under `{ROOT}/d/`")]
    OutsideRoot(String),
    #[error("topic `{0}` does not have the shape `{ROOT}/d/{{device}}/{{channel}}`")]
    Shape(String),
    #[error("topic has an invalid device id: {0}")]
    Device(#[from] DeviceIdError),
    #[error("topic `{topic}`: unknown channel `{channel}`")]
    UnknownChannel { topic: String, channel: String },
}

/// Splits `reactor/v1/d/{device}/{channel}` into its validated parts.
pub fn parse_topic(topic: &str) -> Result<(DeviceId, Channel), TopicError> {
    let rest = topic
        .strip_prefix(ROOT)
        .and_then(|rest| rest.strip_prefix("/d/"))
        .ok_or_else(|| TopicError::OutsideRoot(topic.to_owned()))?;
    let (device, channel) = rest
        .split_once('/')
        .ok_or_else(|| TopicError::Shape(topic.to_owned()))?;
    if channel.contains('/') {
        return Err(TopicError::Shape(topic.to_owned()));
    }
    let device = DeviceId::parse(device)?;
    let channel = Channel::parse(channel).ok_or_else(|| TopicError::UnknownChannel {
        topic: topic.to_owned(),
        channel: channel.to_owned(),
    })?;
    Ok((device, channel))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_ids_build_topics_that_parse_back() {
        for id in ["pi-01", "Küche.sensor_3", "a", &"x".repeat(64), "dev$ice"] {
            let device = DeviceId::parse(id).unwrap();
            for channel in Channel::ALL {
                let topic = device.topic(channel);
                assert!(topic.starts_with(&device.prefix()));
                assert_eq!(parse_topic(&topic).unwrap(), (device.clone(), channel));
            }
        }
    }

    #[test]
    fn hostile_ids_are_refused_with_their_reason() {
        assert_eq!(DeviceId::parse(""), Err(DeviceIdError::Empty));
        assert_eq!(
            DeviceId::parse(&"x".repeat(65)),
            Err(DeviceIdError::TooLong { len: 65 })
        );
        // 22 three-byte characters = 66 bytes, although only 22 characters.
        assert!(matches!(
            DeviceId::parse(&"€".repeat(22)),
            Err(DeviceIdError::TooLong { len: 66 })
        ));
        assert_eq!(DeviceId::parse("$SYS"), Err(DeviceIdError::DollarPrefix));
        for (id, character, at) in [
            ("a+b", '+', 1),
            ("#", '#', 0),
            ("a/b", '/', 1),
            ("x%2F", '%', 1),
        ] {
            assert_eq!(
                DeviceId::parse(id),
                Err(DeviceIdError::ForbiddenCharacter { character, at })
            );
        }
        for id in ["a\0b", "a\nb", "tab\t", "del\u{7f}", "c1\u{85}"] {
            assert!(
                matches!(
                    DeviceId::parse(id),
                    Err(DeviceIdError::ControlCharacter { .. })
                ),
                "{id:?}"
            );
        }
    }

    #[test]
    fn deserializing_an_id_validates_it() {
        let bad: Result<DeviceId, _> = serde_json::from_str("\"a/b\"");
        assert!(bad.is_err());
        let good: DeviceId = serde_json::from_str("\"pi\"").unwrap();
        assert_eq!(good.as_str(), "pi");
    }

    #[test]
    fn foreign_and_malformed_topics_are_refused() {
        assert!(matches!(
            parse_topic("reactor/v2/d/pi/status"),
            Err(TopicError::OutsideRoot(_))
        ));
        assert!(matches!(
            parse_topic("$SYS/broker/load"),
            Err(TopicError::OutsideRoot(_))
        ));
        assert!(matches!(
            parse_topic("reactor/v1/d/pi"),
            Err(TopicError::Shape(_))
        ));
        assert!(matches!(
            parse_topic("reactor/v1/d/pi/events/extra"),
            Err(TopicError::Shape(_))
        ));
        assert!(matches!(
            parse_topic("reactor/v1/d/+/events"),
            Err(TopicError::Device(_))
        ));
        assert!(matches!(
            parse_topic("reactor/v1/d/pi/logs"),
            Err(TopicError::UnknownChannel { .. })
        ));
    }

    #[test]
    fn channel_properties_match_the_architecture() {
        let retained: Vec<_> = Channel::ALL.into_iter().filter(|c| c.retained()).collect();
        assert_eq!(retained, [Channel::Status, Channel::Bundle]);
        assert_eq!(Channel::Events.direction(), Direction::AgentToHub);
        assert_eq!(Channel::Cmd.direction(), Direction::HubToAgent);
        assert_eq!(Channel::Events.hub_filter(), "reactor/v1/d/+/events");
    }
}
