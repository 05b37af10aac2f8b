//! Broker connection settings: the raw `[mqtt]` config section, its validated form
//! ([`MqttSettings`]) and the registry of named brokers ([`MqttBrokers`]).
//!
//! ```toml
//! [mqtt]                                   # the default broker
//! url = "mqtt://127.0.0.1:1883"
//! username = "agent-7"
//! password_secret = "MQTT_PASSWORD"        # the name of a secret, never the password
//! keep_alive = "30s"
//!
//! [mqtt.connections.plant]                 # `connection: plant` in a trigger
//! url = "mqtts://broker.plant.example:8883"
//! ca_file = "/etc/reactor/plant-ca.pem"
//! ```
//!
//! Parsing is pure except for resolving secrets (through the caller's resolver) and reading
//! `ca_file` when a TLS connection is built.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::flow::parse_duration;

/// Default MQTT port for `mqtt://` without a port.
pub const DEFAULT_PORT: u16 = 1883;
/// Default port for `mqtts://` without a port.
pub const DEFAULT_TLS_PORT: u16 = 8883;
/// Default keep-alive: the broker drops a client silent for 1.5 × this.
pub const DEFAULT_KEEP_ALIVE: Duration = Duration::from_secs(30);
/// Default in-flight limit: outgoing QoS ≥ 1 publishes awaiting an ack, and the trigger's
/// concurrent submissions per session. On slow storage this is what bounds an `mqtt`
/// trigger (each message waits for its journal flushes before its ack): with 5 ms flushes
/// (an SD card) one session carried 2.5k msg/s at 32 and 4.3k at 100; on fast storage the
/// two are equal, for ~3.5 MiB more RSS at 100 under load (docs/performance.md,
/// "Session 10").
pub const DEFAULT_INFLIGHT: u16 = 100;
/// Default largest packet, both ways.
pub const DEFAULT_MAX_PACKET_SIZE: usize = 256 * 1024;
/// MQTT's own ceiling for a client id the broker must accept (3.1.1 §3.1.3.1 allows brokers to
/// refuse longer ones).
const MAX_CLIENT_ID: usize = 23;

/// The `[mqtt]` section of `agent.toml` / `hub.toml` as written: the default broker's
/// settings at the top level (all optional; `url` makes the default exist) and named ones.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    pub url: Option<String>,
    pub client_id: Option<String>,
    pub username: Option<String>,
    pub password_secret: Option<String>,
    pub keep_alive: Option<String>,
    pub clean_session: Option<bool>,
    pub inflight: Option<u16>,
    pub max_packet_size: Option<usize>,
    pub ca_file: Option<String>,
    /// Named brokers, for `connection: NAME`.
    #[serde(default)]
    pub connections: BTreeMap<String, MqttConnectionConfig>,
}

impl MqttConfig {
    /// The default broker, when `url` is set.
    pub fn default_connection(&self) -> Option<MqttConnectionConfig> {
        Some(MqttConnectionConfig {
            url: self.url.clone()?,
            client_id: self.client_id.clone(),
            username: self.username.clone(),
            password_secret: self.password_secret.clone(),
            keep_alive: self.keep_alive.clone(),
            clean_session: self.clean_session,
            inflight: self.inflight,
            max_packet_size: self.max_packet_size,
            ca_file: self.ca_file.clone(),
        })
    }
}

/// One broker as written.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MqttConnectionConfig {
    /// `mqtt://host[:port]` or `mqtts://host[:port]`.
    pub url: String,
    /// Prefix of the client ids; default: the device id given to [`MqttBrokers::from_config`].
    pub client_id: Option<String>,
    pub username: Option<String>,
    /// Name of the secret holding the password.
    pub password_secret: Option<String>,
    /// Duration string (`30s`); `0s` disables pings.
    pub keep_alive: Option<String>,
    /// Default false: a persistent session, so QoS ≥ 1 messages wait at the broker.
    pub clean_session: Option<bool>,
    pub inflight: Option<u16>,
    /// Bytes.
    pub max_packet_size: Option<usize>,
    /// PEM file of the CA(s) to trust for `mqtts://` instead of the system roots.
    pub ca_file: Option<String>,
}

/// A secret value: `Debug` and `Display` print `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<str>);

impl Secret {
    pub fn new(value: impl Into<Arc<str>>) -> Secret {
        Secret(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Transport security.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tls {
    None,
    /// TLS with the system roots, or the CAs of `ca_file`.
    Rustls {
        ca_file: Option<String>,
    },
}

/// A validated broker connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MqttSettings {
    /// The URL as configured (normalized: scheme://host:port), for logs and event `meta`.
    pub url: String,
    pub host: String,
    pub port: u16,
    pub tls: Tls,
    /// Prefix of client ids built from it ([`MqttSettings::client_id`]).
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub keep_alive: Duration,
    pub clean_session: bool,
    pub inflight: u16,
    pub max_packet_size: usize,
}

/// A setting that could not be used, with where it came from.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MqttSettingsError {
    #[error("{location}: invalid url {url:?}: {reason}")]
    Url {
        location: String,
        url: String,
        reason: String,
    },
    #[error("{location}: {field}: {reason}")]
    Field {
        location: String,
        field: &'static str,
        reason: String,
    },
    #[error("{location}: password_secret {name:?} is not a known secret")]
    MissingSecret { location: String, name: String },
}

/// Splits `mqtt://host:port` / `mqtts://host` into (tls, host, port).
pub fn parse_url(url: &str) -> Result<(bool, String, u16), String> {
    let (tls, rest) = if let Some(rest) = url.strip_prefix("mqtt://") {
        (false, rest)
    } else if let Some(rest) = url.strip_prefix("mqtts://") {
        (true, rest)
    } else if let Some(rest) = url.strip_prefix("tcp://") {
        (false, rest)
    } else {
        return Err("expected mqtt://host:port or mqtts://host:port".into());
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains(['/', '?', '#', '@']) {
        return Err(
            "only scheme://host:port is allowed (no path, query or credentials; \
             credentials go in username / password_secret)"
                .into(),
        );
    }
    let (host, port) = if let Some(bracketed) = rest.strip_prefix('[') {
        // IPv6 literal: [::1]:1883
        let (host, after) = bracketed
            .split_once(']')
            .ok_or("unclosed [ in an IPv6 address")?;
        (host, after.strip_prefix(':'))
    } else {
        match rest.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (rest, None),
        }
    };
    if host.is_empty() {
        return Err("the host is missing".into());
    }
    let port = match port {
        None => {
            if tls {
                DEFAULT_TLS_PORT
            } else {
                DEFAULT_PORT
            }
        }
        Some(port) => match port.parse::<u16>() {
            Ok(port) if port != 0 => port,
            _ => return Err(format!("port {port:?} is not a number from 1 to 65535")),
        },
    };
    Ok((tls, host.to_string(), port))
}

impl MqttSettings {
    /// Validates one connection. `location` names it in errors (`[mqtt]`,
    /// `[mqtt.connections.plant]`); `default_client_id` is used when none is configured;
    /// `secret` resolves `password_secret`.
    pub fn from_config(
        config: &MqttConnectionConfig,
        location: &str,
        default_client_id: &str,
        secret: &dyn Fn(&str) -> Option<String>,
    ) -> Result<MqttSettings, Vec<MqttSettingsError>> {
        let mut errors = Vec::new();
        let field = |field: &'static str, reason: String| MqttSettingsError::Field {
            location: location.to_string(),
            field,
            reason,
        };
        let parsed = parse_url(config.url.trim()).map_err(|reason| MqttSettingsError::Url {
            location: location.to_string(),
            url: config.url.clone(),
            reason,
        });
        let keep_alive = match config.keep_alive.as_deref().map(parse_duration) {
            None => DEFAULT_KEEP_ALIVE,
            Some(Ok(d)) if d.is_zero() || d >= Duration::from_secs(1) => d,
            Some(Ok(_)) => {
                errors.push(field("keep_alive", "must be 0s or at least 1s".into()));
                DEFAULT_KEEP_ALIVE
            }
            Some(Err(e)) => {
                errors.push(field("keep_alive", e.to_string()));
                DEFAULT_KEEP_ALIVE
            }
        };
        let inflight = config.inflight.unwrap_or(DEFAULT_INFLIGHT);
        if inflight == 0 {
            errors.push(field("inflight", "must be at least 1".into()));
        }
        let max_packet_size = config.max_packet_size.unwrap_or(DEFAULT_MAX_PACKET_SIZE);
        if !(1024..=268_435_455).contains(&max_packet_size) {
            errors.push(field(
                "max_packet_size",
                "must be between 1024 and 268435455 bytes".into(),
            ));
        }
        let client_id = config
            .client_id
            .clone()
            .unwrap_or_else(|| default_client_id.to_string());
        if client_id.is_empty() || client_id.contains(['+', '#', '/', '\0']) {
            errors.push(field(
                "client_id",
                format!("{client_id:?} must be non-empty, without + # / or NUL"),
            ));
        }
        let password = match &config.password_secret {
            None => None,
            Some(name) => match secret(name) {
                Some(value) => Some(Secret::new(value)),
                None => {
                    errors.push(MqttSettingsError::MissingSecret {
                        location: location.to_string(),
                        name: name.clone(),
                    });
                    None
                }
            },
        };
        if password.is_some() && config.username.is_none() {
            errors.push(field(
                "username",
                "is required when password_secret is set".into(),
            ));
        }
        let (tls, host, port) = match parsed {
            Ok(parts) => parts,
            Err(e) => {
                errors.insert(0, e);
                return Err(errors);
            }
        };
        if config.ca_file.is_some() && !tls {
            errors.push(field("ca_file", "needs an mqtts:// url".into()));
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let scheme = if tls { "mqtts" } else { "mqtt" };
        let url = if host.contains(':') {
            format!("{scheme}://[{host}]:{port}")
        } else {
            format!("{scheme}://{host}:{port}")
        };
        Ok(MqttSettings {
            url,
            host,
            port,
            tls: if tls {
                Tls::Rustls {
                    ca_file: config.ca_file.clone(),
                }
            } else {
                Tls::None
            },
            client_id,
            username: config.username.clone(),
            password,
            keep_alive,
            clean_session: config.clean_session.unwrap_or(false),
            inflight: inflight.max(1),
            max_packet_size,
        })
    }

    /// Settings for an inline `broker: mqtt://…` URL: defaults, no credentials.
    pub fn from_url(url: &str, client_id: &str) -> Result<MqttSettings, Vec<MqttSettingsError>> {
        let config = MqttConnectionConfig {
            url: url.to_string(),
            ..MqttConnectionConfig::default()
        };
        MqttSettings::from_config(&config, "broker", client_id, &|_| None)
    }

    /// A client id stable for one use of this broker: `{prefix}-{purpose}` when it fits MQTT's
    /// 23-character guarantee, else the prefix's first characters and a hash of the whole.
    /// Stable across restarts (no randomness), so a persistent session is found again.
    pub fn client_id(&self, purpose: &str) -> String {
        let full = format!("{}-{purpose}", self.client_id);
        if full.len() <= MAX_CLIENT_ID || !full.is_ascii() {
            // Non-ASCII ids are the user's choice: brokers that accept them accept them whole.
            return full;
        }
        // FNV-1a: stable across builds and platforms (unlike `DefaultHasher`).
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in full.bytes() {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        let digest = format!("{hash:016x}");
        let keep = MAX_CLIENT_ID - 1 - 12;
        format!("{}-{}", &full[..keep], &digest[..12])
    }
}

/// The brokers a runtime knows: a default one and named ones.
#[derive(Clone, Debug, Default)]
pub struct MqttBrokers {
    default: Option<Arc<MqttSettings>>,
    named: BTreeMap<String, Arc<MqttSettings>>,
    /// Client-id prefix for inline `broker:` URLs.
    device: String,
}

/// Why a trigger's or step's broker could not be found.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerLookupError {
    #[error("no MQTT connection named {name:?} is configured (known: {known})")]
    UnknownConnection { name: String, known: String },
    #[error("no default MQTT broker is configured: add [mqtt] url = \"mqtt://host:port\"")]
    NoDefault,
    #[error("{0}")]
    InvalidUrl(String),
}

impl MqttBrokers {
    /// Validates a whole `[mqtt]` section; reports every problem at once. `device` is the
    /// client-id prefix when a connection sets none.
    pub fn from_config(
        config: &MqttConfig,
        device: &str,
        secret: &dyn Fn(&str) -> Option<String>,
    ) -> Result<MqttBrokers, Vec<MqttSettingsError>> {
        let mut errors = Vec::new();
        let mut brokers = MqttBrokers {
            device: device.to_string(),
            ..MqttBrokers::default()
        };
        if let Some(default) = config.default_connection() {
            match MqttSettings::from_config(&default, "[mqtt]", device, secret) {
                Ok(settings) => brokers.default = Some(Arc::new(settings)),
                Err(e) => errors.extend(e),
            }
        }
        for (name, connection) in &config.connections {
            let location = format!("[mqtt.connections.{name}]");
            match MqttSettings::from_config(connection, &location, device, secret) {
                Ok(settings) => {
                    brokers.named.insert(name.clone(), Arc::new(settings));
                }
                Err(e) => errors.extend(e),
            }
        }
        if errors.is_empty() {
            Ok(brokers)
        } else {
            Err(errors)
        }
    }

    /// A registry with just a default broker (tests, `exec`).
    pub fn with_default(settings: MqttSettings) -> MqttBrokers {
        MqttBrokers {
            device: settings.client_id.clone(),
            default: Some(Arc::new(settings)),
            named: BTreeMap::new(),
        }
    }

    /// Adds (or replaces) a named broker.
    pub fn insert(&mut self, name: &str, settings: MqttSettings) {
        self.named.insert(name.to_string(), Arc::new(settings));
    }

    pub fn default_broker(&self) -> Option<&Arc<MqttSettings>> {
        self.default.as_ref()
    }

    /// Resolves a trigger's or step's choice: a `connection` name, an inline `broker` URL
    /// (or name: `broker: plant` is accepted too), or neither for the default.
    /// An inline URL equal to a configured broker's uses that broker's settings (credentials
    /// included); another URL gets defaults and no credentials.
    pub fn resolve(
        &self,
        broker: Option<&str>,
        connection: Option<&str>,
    ) -> Result<Arc<MqttSettings>, BrokerLookupError> {
        if let Some(name) = connection {
            return self
                .named
                .get(name)
                .cloned()
                .ok_or_else(|| self.unknown(name));
        }
        let Some(broker) = broker else {
            return self.default.clone().ok_or(BrokerLookupError::NoDefault);
        };
        if let Some(settings) = self.named.get(broker) {
            return Ok(settings.clone());
        }
        if !broker.contains("://") {
            return Err(self.unknown(broker));
        }
        let inline = MqttSettings::from_url(broker, &self.device).map_err(|errors| {
            BrokerLookupError::InvalidUrl(
                errors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; "),
            )
        })?;
        let configured = self
            .default
            .iter()
            .chain(self.named.values())
            .find(|known| known.url == inline.url);
        Ok(configured.cloned().unwrap_or_else(|| Arc::new(inline)))
    }

    fn unknown(&self, name: &str) -> BrokerLookupError {
        let known: Vec<&str> = self.named.keys().map(String::as_str).collect();
        BrokerLookupError::UnknownConnection {
            name: name.to_string(),
            known: if known.is_empty() {
                "none".into()
            } else {
                known.join(", ")
            },
        }
    }
}

/// Checks a subscription filter: levels split by `/`; `+` fills a whole level; `#` is a whole
/// level and the last one; not empty, no NUL, at most 65535 bytes.
pub fn validate_filter(filter: &str) -> Result<(), String> {
    if filter.is_empty() {
        return Err("the topic filter is empty".into());
    }
    if filter.len() > 65535 {
        return Err("the topic filter is longer than 65535 bytes".into());
    }
    if filter.contains('\0') {
        return Err("the topic filter contains NUL".into());
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i + 1 != levels.len()) {
            return Err(format!(
                "{filter:?}: # must be a whole level and the last one (like sensors/#)"
            ));
        }
        if level.contains('+') && *level != "+" {
            return Err(format!(
                "{filter:?}: + must be a whole level (like sensors/+/temp)"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn no_secrets(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn parses_urls() {
        assert_eq!(
            parse_url("mqtt://localhost").unwrap(),
            (false, "localhost".into(), 1883)
        );
        assert_eq!(
            parse_url("mqtts://b.example:8884/").unwrap(),
            (true, "b.example".into(), 8884)
        );
        assert_eq!(
            parse_url("mqtt://[::1]:1884").unwrap(),
            (false, "::1".into(), 1884)
        );
        assert!(parse_url("http://x").unwrap_err().contains("mqtt://"));
        assert!(
            parse_url("mqtt://u:p@x")
                .unwrap_err()
                .contains("credentials")
        );
        assert!(parse_url("mqtt://x:99999").unwrap_err().contains("port"));
        assert!(parse_url("mqtt://:1883").unwrap_err().contains("host"));
    }

    #[test]
    fn builds_registry_with_every_error_at_once() {
        let config: MqttConfig = serde_json::from_value(json!({
            "url": "mqtt://127.0.0.1:1883",
            "username": "agent",
            "password_secret": "MQTT_PASSWORD",
            "connections": {
                "plant": { "url": "mqtts://plant.example", "keep_alive": "0s" }
            }
        }))
        .unwrap();
        let secrets = |name: &str| (name == "MQTT_PASSWORD").then(|| "hunter2".to_string());
        let brokers = MqttBrokers::from_config(&config, "dev1", &secrets).unwrap();
        let default = brokers.resolve(None, None).unwrap();
        assert_eq!(default.url, "mqtt://127.0.0.1:1883");
        assert_eq!(default.password.as_ref().unwrap().expose(), "hunter2");
        assert_eq!(format!("{:?}", default.password), "Some(***)");
        assert!(!default.clean_session);
        let plant = brokers.resolve(None, Some("plant")).unwrap();
        assert_eq!(plant.port, 8883);
        assert_eq!(plant.keep_alive, Duration::ZERO);
        assert_eq!(brokers.resolve(Some("plant"), None).unwrap().url, plant.url);
        // An inline URL of a configured broker reuses its credentials.
        let inline = brokers
            .resolve(Some("mqtt://127.0.0.1:1883"), None)
            .unwrap();
        assert_eq!(inline.username.as_deref(), Some("agent"));
        let other = brokers.resolve(Some("mqtt://10.0.0.1"), None).unwrap();
        assert_eq!(other.username, None);
        assert!(matches!(
            brokers.resolve(None, Some("nope")),
            Err(BrokerLookupError::UnknownConnection { .. })
        ));

        let bad: MqttConfig = serde_json::from_value(json!({
            "url": "mqtt://h",
            "password_secret": "MISSING",
            "keep_alive": "soon",
            "inflight": 0,
            "connections": { "x": { "url": "ftp://h" } }
        }))
        .unwrap();
        let errors = MqttBrokers::from_config(&bad, "dev1", &no_secrets).unwrap_err();
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(text.len(), 4, "{text:#?}");
        assert!(text[0].starts_with("[mqtt]: keep_alive: invalid duration"));
        assert_eq!(text[1], "[mqtt]: inflight: must be at least 1");
        assert_eq!(
            text[2],
            "[mqtt]: password_secret \"MISSING\" is not a known secret"
        );
        assert!(text[3].starts_with("[mqtt.connections.x]: invalid url \"ftp://h\""));
        assert!(
            serde_json::from_value::<MqttConfig>(json!({"url": "mqtt://h", "port": 1})).is_err()
        );
    }

    #[test]
    fn client_ids_are_stable_and_short() {
        let settings = MqttSettings::from_url("mqtt://h", "pi-kitchen").unwrap();
        assert_eq!(settings.client_id("w.0"), "pi-kitchen-w.0");
        let long = settings.client_id("overheat-alert.0");
        assert_eq!(long.len(), 23);
        assert_eq!(long, settings.client_id("overheat-alert.0"));
        assert_ne!(long, settings.client_id("overheat-alert.1"));
    }

    #[test]
    fn validates_filters() {
        for ok in ["a", "a/+/c", "#", "a/#", "+", "/a", "a//b"] {
            validate_filter(ok).unwrap();
        }
        for bad in ["", "a/#/b", "a#", "a/b+", "a\0"] {
            assert!(validate_filter(bad).is_err(), "{bad:?}");
        }
    }
}
