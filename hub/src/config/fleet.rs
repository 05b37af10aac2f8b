//! The fleet side of `serve`'s configuration: the device MQTT endpoint (embedded broker, TLS)
//! or an external broker, and the broker address enrollment hands to devices.
//!
//! Every key can come from hub.toml's `[fleet]` section, a `REACTOR_FLEET__KEY` variable or
//! its flag (`--mqtt-listen`, `--mqtt-advertise`, `--mqtt-broker`, `--mqtt-tls-cert`,
//! `--mqtt-tls-key`, `--mqtt-tls-ca`; flags win, as everywhere).

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use super::{Layered, Origin, ServeFlags, pick};
use crate::fleet::broker::InternalLogin;
use crate::fleet::provision::ProvisionMode;
use crate::fleet::tls::TlsFiles;

/// The validated fleet settings.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    /// Where the device-facing MQTT endpoint listens (embedded broker).
    pub mqtt_listen: Option<SocketAddr>,
    /// What enrollment tells devices to connect to.
    pub advertise: Option<String>,
    /// An external broker the hub connects to instead.
    pub external_broker: Option<String>,
    /// TLS on the device endpoint.
    pub tls: Option<TlsFiles>,
    /// Renew a desired bundle once less than this fraction of its validity is left (0: never).
    pub bundle_renew_below: f64,
    /// How device credentials reach an external broker (`none`: the operator's job).
    pub provision: ProvisionMode,
    /// The broker admin login provisioning uses (else the `mqtt_broker` login).
    pub provision_login: Option<InternalLogin>,
}

/// Default of `[fleet] bundle_renew_below`: a third of the validity left.
pub const DEFAULT_RENEW_BELOW: f64 = 1.0 / 3.0;

impl Default for FleetConfig {
    fn default() -> Self {
        FleetConfig {
            mqtt_listen: None,
            advertise: None,
            external_broker: None,
            tls: None,
            bundle_renew_below: DEFAULT_RENEW_BELOW,
            provision: ProvisionMode::None,
            provision_login: None,
        }
    }
}

impl FleetConfig {
    /// The broker address enrollment hands out (empty when no broker is configured).
    pub fn broker_url(&self) -> String {
        if let Some(url) = &self.advertise {
            return url.clone();
        }
        if let Some(addr) = self.mqtt_listen {
            let scheme = if self.tls.is_some() { "mqtts" } else { "mqtt" };
            return format!("{scheme}://{addr}");
        }
        match &self.external_broker {
            // Never hand out the hub's own broker credentials.
            Some(url) => match url.split_once("://") {
                Some((scheme, rest)) => {
                    let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
                    format!("{scheme}://{host}")
                }
                None => url.clone(),
            },
            None => String::new(),
        }
    }
}

/// `[fleet]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFleet {
    mqtt_listen: Option<String>,
    mqtt_advertise: Option<String>,
    mqtt_broker: Option<String>,
    mqtt_tls_cert: Option<PathBuf>,
    mqtt_tls_key: Option<PathBuf>,
    mqtt_tls_ca: Option<PathBuf>,
    bundle_renew_below: Option<f64>,
    provision: Option<String>,
    provision_username: Option<String>,
    provision_password: Option<String>,
}

/// The layers merged, before validation.
#[derive(Debug, Default)]
pub(super) struct MergedFleet {
    listen: Option<Layered<String>>,
    advertise: Option<Layered<String>>,
    broker: Option<Layered<String>>,
    cert: Option<Layered<PathBuf>>,
    key: Option<Layered<PathBuf>>,
    ca: Option<Layered<PathBuf>>,
    renew_below: Option<Layered<f64>>,
    provision: Option<Layered<String>>,
    provision_username: Option<Layered<String>>,
    provision_password: Option<Layered<String>>,
}

impl MergedFleet {
    pub(super) fn apply(&mut self, raw: Option<RawFleet>, origin: &Origin) {
        let raw = raw.unwrap_or_default();
        pick(&mut self.listen, raw.mqtt_listen, origin);
        pick(&mut self.advertise, raw.mqtt_advertise, origin);
        pick(&mut self.broker, raw.mqtt_broker, origin);
        pick(&mut self.cert, raw.mqtt_tls_cert, origin);
        pick(&mut self.key, raw.mqtt_tls_key, origin);
        pick(&mut self.ca, raw.mqtt_tls_ca, origin);
        pick(&mut self.renew_below, raw.bundle_renew_below, origin);
        pick(&mut self.provision, raw.provision, origin);
        pick(&mut self.provision_username, raw.provision_username, origin);
        pick(&mut self.provision_password, raw.provision_password, origin);
    }

    /// The flags (and their variables), over the file and `REACTOR_FLEET__*`.
    pub(super) fn apply_flags(&mut self, flags: &ServeFlags) {
        let flag = |name| Origin::Flag(name);
        pick(
            &mut self.listen,
            flags.mqtt_listen.map(|a| a.to_string()),
            &flag("mqtt-listen"),
        );
        pick(
            &mut self.advertise,
            flags.mqtt_advertise.clone(),
            &flag("mqtt-advertise"),
        );
        pick(
            &mut self.broker,
            flags.mqtt_broker.clone(),
            &flag("mqtt-broker"),
        );
        pick(
            &mut self.cert,
            flags.mqtt_tls_cert.clone(),
            &flag("mqtt-tls-cert"),
        );
        pick(
            &mut self.key,
            flags.mqtt_tls_key.clone(),
            &flag("mqtt-tls-key"),
        );
        pick(
            &mut self.ca,
            flags.mqtt_tls_ca.clone(),
            &flag("mqtt-tls-ca"),
        );
    }

    pub(super) fn validate(self, problems: &mut Vec<String>) -> FleetConfig {
        let mut bad = |key: &str, origin: &Origin, message: String| {
            problems.push(format!("fleet.{key} (from {origin}): {message}"));
        };
        let mqtt_listen = self.listen.as_ref().and_then(|listen| {
            let parsed = listen.value.parse::<SocketAddr>().ok();
            if parsed.is_none() {
                bad(
                    "mqtt_listen",
                    &listen.origin,
                    format!("{:?} is not an address with a port", listen.value),
                );
            }
            parsed
        });
        if let (Some(listen), Some(_)) = (&self.listen, &self.broker) {
            bad(
                "mqtt_listen",
                &listen.origin,
                "mqtt-listen and mqtt-broker: choose the embedded broker or an external one".into(),
            );
        }
        if let Some(broker) = &self.broker
            && let Err(error) = crate::fleet::broker::BrokerTarget::external(&broker.value)
        {
            bad("mqtt_broker", &broker.origin, error.to_string());
        }
        let tls = match (self.cert, self.key) {
            (None, None) => {
                if let Some(ca) = &self.ca {
                    bad(
                        "mqtt_tls_ca",
                        &ca.origin,
                        "needs mqtt_tls_cert and mqtt_tls_key".into(),
                    );
                }
                None
            }
            (Some(cert), Some(key)) => {
                if self.listen.is_none() {
                    bad(
                        "mqtt_tls_cert",
                        &cert.origin,
                        "TLS is for the device endpoint: set mqtt_listen too".into(),
                    );
                }
                Some(TlsFiles {
                    cert: cert.value,
                    key: key.value,
                    ca: self.ca.map(|ca| ca.value),
                })
            }
            (Some(only), None) | (None, Some(only)) => {
                bad(
                    "mqtt_tls_cert",
                    &only.origin,
                    "mqtt_tls_cert and mqtt_tls_key go together".into(),
                );
                None
            }
        };
        let bundle_renew_below = match self.renew_below {
            None => DEFAULT_RENEW_BELOW,
            Some(fraction) if (0.0..1.0).contains(&fraction.value) => fraction.value,
            Some(fraction) => {
                bad(
                    "bundle_renew_below",
                    &fraction.origin,
                    format!(
                        "{} is not a fraction in [0, 1) (of a bundle's validity left when it is renewed; 0 turns renewal off)",
                        fraction.value
                    ),
                );
                DEFAULT_RENEW_BELOW
            }
        };
        let provision = match &self.provision {
            None => ProvisionMode::None,
            Some(mode) => match mode.value.parse::<ProvisionMode>() {
                Ok(parsed) => {
                    if parsed != ProvisionMode::None && self.broker.is_none() {
                        bad(
                            "provision",
                            &mode.origin,
                            "provisioning is for an external broker: set mqtt_broker too".into(),
                        );
                    }
                    parsed
                }
                Err(error) => {
                    bad("provision", &mode.origin, error);
                    ProvisionMode::None
                }
            },
        };
        let provision_login = match (self.provision_username, self.provision_password) {
            (None, None) => None,
            (Some(username), password) if !username.value.is_empty() => Some(InternalLogin {
                username: username.value,
                password: password.map(|p| p.value).unwrap_or_default(),
            }),
            (Some(username), _) => {
                bad("provision_username", &username.origin, "is empty".into());
                None
            }
            (None, Some(password)) => {
                bad(
                    "provision_password",
                    &password.origin,
                    "needs provision_username".into(),
                );
                None
            }
        };
        FleetConfig {
            mqtt_listen,
            advertise: self.advertise.map(|a| a.value),
            external_broker: self.broker.map(|b| b.value),
            tls,
            bundle_renew_below,
            provision,
            provision_login,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use crate::config::{HubConfig, ServeFlags};
    use crate::fleet::provision::ProvisionMode;

    fn load(text: &str, flags: ServeFlags, vars: &[(&str, &str)]) -> Result<HubConfig, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.toml");
        std::fs::write(&path, text).unwrap();
        let flags = ServeFlags {
            config: Some(path),
            ..flags
        };
        let vars = vars.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        HubConfig::load(&flags, vars).map_err(|e| e.to_string())
    }

    #[test]
    fn fleet_section_env_and_flags() {
        let config = load(
            "[fleet]\nmqtt_listen = \"127.0.0.1:8883\"\nmqtt_tls_cert = \"/file/cert.pem\"\n\
             mqtt_tls_key = \"/file/key.pem\"\n",
            ServeFlags {
                mqtt_tls_key: Some(PathBuf::from("/flag/key.pem")),
                ..ServeFlags::default()
            },
            &[("REACTOR_FLEET__MQTT_TLS_CA", "/env/ca.pem")],
        )
        .unwrap();
        let tls = config.fleet.tls.clone().unwrap();
        assert_eq!(tls.cert, PathBuf::from("/file/cert.pem"));
        assert_eq!(tls.key, PathBuf::from("/flag/key.pem"), "flags win");
        assert_eq!(tls.ca, Some(PathBuf::from("/env/ca.pem")));
        assert_eq!(config.fleet.broker_url(), "mqtts://127.0.0.1:8883");

        let external = load(
            "[fleet]\nmqtt_broker = \"mqtt://hub:secret@broker:1883\"\n",
            ServeFlags::default(),
            &[],
        )
        .unwrap();
        assert_eq!(
            external.fleet.broker_url(),
            "mqtt://broker:1883",
            "the hub's credentials are never handed out"
        );
        assert!((external.fleet.bundle_renew_below - 1.0 / 3.0).abs() < 1e-9);
        let renew = load(
            "[fleet]\nbundle_renew_below = 0.25\n",
            ServeFlags::default(),
            &[("REACTOR_FLEET__BUNDLE_RENEW_BELOW", "0.5")],
        )
        .unwrap();
        assert_eq!(
            renew.fleet.bundle_renew_below, 0.5,
            "the environment wins over the file"
        );
        assert_eq!(renew.fleet.provision, ProvisionMode::None);
        let dynsec = load(
            "[fleet]\nmqtt_broker = \"mqtt://hub:pw@broker:1883\"\nprovision = \"mosquitto_dynsec\"\n\
             provision_username = \"admin\"\n",
            ServeFlags::default(),
            &[("REACTOR_FLEET__PROVISION_PASSWORD", "s3cret")],
        )
        .unwrap();
        assert_eq!(dynsec.fleet.provision, ProvisionMode::MosquittoDynsec);
        let login = dynsec.fleet.provision_login.unwrap();
        assert_eq!(
            (login.username.as_str(), login.password.as_str()),
            ("admin", "s3cret")
        );
    }

    #[test]
    fn fleet_mistakes_are_reported() {
        for (text, expected) in [
            ("[fleet]\nmqtt_listen = \"nowhere\"\n", "fleet.mqtt_listen"),
            (
                "[fleet]\nmqtt_listen = \"127.0.0.1:1\"\nmqtt_broker = \"mqtt://b:1\"\n",
                "choose the embedded broker or an external one",
            ),
            (
                "[fleet]\nmqtt_listen = \"127.0.0.1:1\"\nmqtt_tls_cert = \"/c.pem\"\n",
                "go together",
            ),
            (
                "[fleet]\nmqtt_tls_cert = \"/c.pem\"\nmqtt_tls_key = \"/k.pem\"\n",
                "set mqtt_listen too",
            ),
            (
                "[fleet]\nmqtt_broker = \"broker:1883\"\n",
                "fleet.mqtt_broker",
            ),
            ("[fleet]\nmqtt_port = 1\n", "mqtt_port"),
            (
                "[fleet]\nbundle_renew_below = 1.0\n",
                "fleet.bundle_renew_below",
            ),
            ("[fleet]\nbundle_renew_below = -0.5\n", "not a fraction"),
            (
                "[fleet]\nprovision = \"mosquitto_dynsec\"\n",
                "set mqtt_broker too",
            ),
            (
                "[fleet]\nmqtt_broker = \"mqtt://b:1\"\nprovision = \"acl\"\n",
                "expected \"none\" or \"mosquitto_dynsec\"",
            ),
            (
                "[fleet]\nprovision_password = \"x\"\n",
                "needs provision_username",
            ),
        ] {
            let error = load(text, ServeFlags::default(), &[]).unwrap_err();
            assert!(error.contains(expected), "{text:?}: {error}");
        }
    }
}
