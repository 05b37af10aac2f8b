//! The embedded broker: rumqttd on a loopback port nobody but the hub can log into (a random
//! internal user and password). Devices never reach it directly: they connect to the
//! [`super::gateway`], which checks identity and topics, terminates their sessions and
//! forwards over a few connections of its own to this broker.

use std::collections::HashMap;
use std::net::SocketAddr;

use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};

use super::registry::random_secret;

/// Largest MQTT packet the broker and the gateway accept: a frame (2 MiB) plus the topic and
/// the packet's header.
pub const MAX_PACKET: usize = reactor_core::sync::envelope::MAX_FRAME_BYTES + 4096;

/// The broker's internal login.
#[derive(Clone)]
pub struct InternalLogin {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for InternalLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InternalLogin")
            .field("username", &self.username)
            .field("password", &"***")
            .finish()
    }
}

/// A running embedded broker (its threads live as long as the process).
#[derive(Debug, Clone)]
pub struct EmbeddedBroker {
    /// Where the broker listens (loopback).
    pub addr: SocketAddr,
    /// The only login it accepts.
    pub login: InternalLogin,
}

/// The broker could not start.
#[derive(Debug, thiserror::Error)]
#[error("the embedded MQTT broker could not start: {0}")]
pub struct BrokerError(pub String);

impl EmbeddedBroker {
    /// Starts rumqttd on 127.0.0.1 with a free port, for at most `max_connections` clients.
    pub fn start(max_connections: usize) -> Result<EmbeddedBroker, BrokerError> {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| BrokerError(e.to_string()))?;
        let login = InternalLogin {
            username: random_secret("hub-").map_err(|e| BrokerError(e.to_string()))?,
            password: random_secret("").map_err(|e| BrokerError(e.to_string()))?,
        };
        let server = ServerSettings {
            name: "reactor-internal".into(),
            listen: addr,
            tls: None,
            next_connection_delay_ms: 0,
            connections: ConnectionSettings {
                connection_timeout_ms: 10_000,
                max_payload_size: MAX_PACKET,
                max_inflight_count: 500,
                auth: Some(HashMap::from([(
                    login.username.clone(),
                    login.password.clone(),
                )])),
                external_auth: None,
                dynamic_filters: true,
            },
        };
        let config = Config {
            id: 0,
            router: RouterConfig {
                max_connections: max_connections + 16,
                max_outgoing_packet_count: 200,
                max_segment_size: 100 * 1024 * 1024,
                max_segment_count: 10,
                ..RouterConfig::default()
            },
            v4: Some(HashMap::from([("internal".to_string(), server)])),
            ..Config::default()
        };
        let mut broker = Broker::new(config);
        std::thread::Builder::new()
            .name("reactor-broker".into())
            .spawn(move || {
                if let Err(error) = broker.start() {
                    tracing::error!(%error, "the embedded MQTT broker stopped");
                }
            })
            .map_err(|e| BrokerError(e.to_string()))?;
        Ok(EmbeddedBroker { addr, login })
    }

    /// Waits until the broker accepts TCP connections (up to `within`).
    pub async fn ready(&self, within: std::time::Duration) -> Result<(), BrokerError> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if tokio::net::TcpStream::connect(self.addr).await.is_ok() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(BrokerError(format!("nothing listens on {}", self.addr)));
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

/// Where the hub's own MQTT clients (ingest, publishing to devices) connect: the embedded
/// broker with its internal login, or an external broker (`--mqtt-broker URL`).
#[derive(Debug, Clone)]
pub struct BrokerTarget {
    pub host: String,
    pub port: u16,
    pub login: Option<InternalLogin>,
    /// TLS (`mqtts://`), trusting the system's roots.
    pub tls: bool,
}

impl BrokerTarget {
    /// The embedded broker.
    pub fn embedded(broker: &EmbeddedBroker) -> BrokerTarget {
        BrokerTarget {
            host: broker.addr.ip().to_string(),
            port: broker.addr.port(),
            login: Some(broker.login.clone()),
            tls: false,
        }
    }

    /// An external broker: `mqtt://[USER:PASSWORD@]HOST:PORT` or `mqtts://…`.
    pub fn external(url: &str) -> Result<BrokerTarget, BrokerError> {
        let bad = |why: &str| BrokerError(format!("--mqtt-broker: {why}"));
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| bad("expected mqtt://[USER:PASSWORD@]HOST:PORT"))?;
        let (login, address) = match rest.rsplit_once('@') {
            Some((userinfo, address)) => {
                let (username, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
                if username.is_empty() {
                    return Err(bad("empty user name"));
                }
                let login = InternalLogin {
                    username: username.to_string(),
                    password: password.to_string(),
                };
                (Some(login), address)
            }
            None => (None, rest),
        };
        let (tls, host, port) =
            reactor_core::mqtt::settings::parse_url(&format!("{scheme}://{address}"))
                .map_err(|e| bad(&e))?;
        Ok(BrokerTarget {
            host,
            port,
            login,
            tls,
        })
    }

    /// Client options for `client_id` on this broker (credentials, packet size, TLS).
    pub fn options(&self, client_id: &str) -> Result<rumqttc::MqttOptions, BrokerError> {
        let mut options = rumqttc::MqttOptions::new(client_id, &self.host, self.port);
        if let Some(login) = &self.login {
            options.set_credentials(login.username.clone(), login.password.clone());
        }
        options.set_max_packet_size(MAX_PACKET, MAX_PACKET);
        if self.tls {
            let mut roots = rustls::RootCertStore::empty();
            roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
            let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map_err(|e| BrokerError(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
            options.set_transport(rumqttc::Transport::tls_with_config(
                rumqttc::TlsConfiguration::Rustls(std::sync::Arc::new(config)),
            ));
        }
        Ok(options)
    }
}

#[cfg(test)]
mod tests {
    use super::BrokerTarget;

    #[test]
    fn external_urls() {
        let plain = BrokerTarget::external("mqtt://broker.local:1883").unwrap();
        assert_eq!(
            (plain.host.as_str(), plain.port, plain.tls),
            ("broker.local", 1883, false)
        );
        assert!(plain.login.is_none());
        let secure = BrokerTarget::external("mqtts://hub:s3cr:et@10.0.0.2:8883").unwrap();
        assert_eq!(
            (secure.host.as_str(), secure.port, secure.tls),
            ("10.0.0.2", 8883, true)
        );
        let login = secure.login.unwrap();
        assert_eq!(
            (login.username.as_str(), login.password.as_str()),
            ("hub", "s3cr:et")
        );
        for bad in [
            "broker:1883",
            "http://x:1",
            "mqtt://:pw@host:1883",
            "mqtt://host:1883/path",
        ] {
            assert!(BrokerTarget::external(bad).is_err(), "{bad}");
        }
    }
}
