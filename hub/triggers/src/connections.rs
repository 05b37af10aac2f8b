//! Named connections (`connections.<name>` in hub.toml) and inline ones (`url:`, Kafka's
//! `brokers:`), with credentials only through secrets.
//!
//! ```toml
//! [connections.orders]
//! url = "postgres://reactor@db.internal:5432/shop"
//! password = "${{ secrets.SHOP_DB_PASSWORD }}"
//!
//! [connections.kafka]          # the default for `kafka` triggers without a connection
//! brokers = "k1:9092,k2:9092"
//! options = { "security.protocol" = "SASL_SSL", "sasl.mechanism" = "PLAIN" }
//! username = "reactor"
//! password = "secrets.KAFKA_PASSWORD"
//! ```
//!
//! A trigger without `connection`/`url` uses the connection named after its type (`kafka`,
//! `nats`, `redis`, `postgres`, `mysql`), then one named `default`. Passwords and tokens are
//! secret references (`secrets.NAME` or `${{ secrets.NAME }}`), resolved by the hub's
//! [`Secrets`] when the trigger is built; a plain password, in the config or inside a URL, is
//! refused.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use reactor_core::flow::Connection;
use reactor_core::trigger::TriggerError;
use serde::Deserialize;

use crate::retry::Leader;

/// One `connections.<name>` entry of hub.toml.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionConfig {
    /// `redis://…`, `rediss://…`, `nats://…`, `tls://…`, `postgres://…`, `mysql://…`.
    pub url: Option<String>,
    /// Kafka bootstrap servers, `host:port,…`.
    pub brokers: Option<String>,
    pub username: Option<String>,
    /// A secret reference, never the password itself.
    pub password: Option<String>,
    /// A secret reference (NATS token auth).
    pub token: Option<String>,
    /// Client properties passed through (Kafka: librdkafka properties such as
    /// `security.protocol`). Values may be secret references.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

/// Resolves `secrets.NAME` references.
pub trait Secrets: Send + Sync + 'static {
    fn secret(&self, name: &str) -> Option<String>;
}

impl<F> Secrets for F
where
    F: Fn(&str) -> Option<String> + Send + Sync + 'static,
{
    fn secret(&self, name: &str) -> Option<String> {
        self(name)
    }
}

/// The hub's connections, its secrets, its instance name and its leader signal: what
/// [`crate::build`] needs besides a trigger's own settings.
#[derive(Clone)]
pub struct Connections {
    named: BTreeMap<String, ConnectionConfig>,
    secrets: Arc<dyn Secrets>,
    instance: String,
    leader: Leader,
}

impl fmt::Debug for Connections {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connections")
            .field("names", &self.named.keys().collect::<Vec<_>>())
            .field("instance", &self.instance)
            .finish()
    }
}

impl Default for Connections {
    fn default() -> Self {
        Connections::new(BTreeMap::new(), Arc::new(|_: &str| None::<String>))
    }
}

/// A connection ready to use: the address with credentials in place, and a display form
/// without them (for logs and `event.meta`).
#[derive(Clone, PartialEq, Eq)]
pub struct Resolved {
    /// URL (or Kafka broker list) with credentials; never log it.
    pub address: String,
    /// The address without credentials.
    pub display: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub token: Option<String>,
    pub options: BTreeMap<String, String>,
}

impl fmt::Debug for Resolved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resolved")
            .field("display", &self.display)
            .finish_non_exhaustive()
    }
}

impl Connections {
    pub fn new(named: BTreeMap<String, ConnectionConfig>, secrets: Arc<dyn Secrets>) -> Self {
        Connections {
            named,
            secrets,
            instance: host_name(),
            leader: Leader::default(),
        }
    }

    /// This hub's name, used for consumer names (Redis streams); default: the host name.
    pub fn with_instance(mut self, instance: impl Into<String>) -> Self {
        self.instance = instance.into();
        self
    }

    /// The leader signal that gates change capture and pollers (default: always leading).
    pub fn with_leader(mut self, leader: Leader) -> Self {
        self.leader = leader;
        self
    }

    pub fn instance(&self) -> &str {
        &self.instance
    }

    pub fn leader(&self) -> Leader {
        self.leader.clone()
    }

    /// The connection a trigger of type `kind` asks for. `schemes` are the accepted URL
    /// schemes (empty for Kafka's broker lists).
    pub fn resolve(
        &self,
        connection: &Connection,
        kind: &str,
        schemes: &[&str],
    ) -> Result<Resolved, TriggerError> {
        let config = match connection {
            Connection::Url(url) => ConnectionConfig {
                url: (!schemes.is_empty()).then(|| url.clone()),
                brokers: schemes.is_empty().then(|| url.clone()),
                ..ConnectionConfig::default()
            },
            Connection::Named(name) => self.named.get(name).cloned().ok_or_else(|| {
                settings(format!(
                    "no connection named {name:?} in the hub configuration (known: {})",
                    self.known()
                ))
            })?,
            Connection::Default => self
                .named
                .get(kind)
                .or_else(|| self.named.get("default"))
                .cloned()
                .ok_or_else(|| {
                    settings(format!(
                        "the {kind} trigger has no connection: set `connection:` or `{}:`, or \
                         configure connections.{kind} in the hub",
                        if schemes.is_empty() { "brokers" } else { "url" }
                    ))
                })?,
        };
        self.finish(config, kind, schemes)
    }

    fn known(&self) -> String {
        if self.named.is_empty() {
            "none".into()
        } else {
            self.named.keys().cloned().collect::<Vec<_>>().join(", ")
        }
    }

    fn finish(
        &self,
        config: ConnectionConfig,
        kind: &str,
        schemes: &[&str],
    ) -> Result<Resolved, TriggerError> {
        let password = self.secret_field(config.password.as_deref(), "password")?;
        let token = self.secret_field(config.token.as_deref(), "token")?;
        let mut options = BTreeMap::new();
        for (key, value) in config.options {
            let value = match secret_name(&value) {
                Some(name) => self.lookup(name)?,
                None => value,
            };
            options.insert(key, value);
        }
        if schemes.is_empty() {
            let brokers = config
                .brokers
                .or(config.url)
                .ok_or_else(|| settings(format!("the {kind} connection needs brokers")))?;
            if brokers.trim().is_empty() || brokers.contains("://") || brokers.contains('@') {
                return Err(settings(format!(
                    "brokers must be \"host:port,…\" without scheme or credentials, not {brokers:?}"
                )));
            }
            return Ok(Resolved {
                display: brokers.clone(),
                address: brokers,
                username: config.username,
                password,
                token,
                options,
            });
        }
        let url = config
            .url
            .ok_or_else(|| settings(format!("the {kind} connection needs url")))?;
        let parts = UrlParts::parse(&url).map_err(settings)?;
        if !schemes.contains(&parts.scheme.as_str()) {
            return Err(settings(format!(
                "a {kind} url must start with {}, not {url:?}",
                schemes
                    .iter()
                    .map(|s| format!("{s}://"))
                    .collect::<Vec<_>>()
                    .join(" or ")
            )));
        }
        if parts.password.is_some() {
            return Err(settings(format!(
                "the {kind} url holds a password: put it in a secret and reference it from the \
                 connection's `password` (credentials only through secrets)"
            )));
        }
        let username = config.username.or(parts.username.clone());
        let display = parts.render(username.as_deref(), None);
        let address = parts.render(username.as_deref(), password.as_deref());
        Ok(Resolved {
            address,
            display,
            username,
            password,
            token,
            options,
        })
    }

    fn secret_field(
        &self,
        value: Option<&str>,
        field: &str,
    ) -> Result<Option<String>, TriggerError> {
        let Some(value) = value else {
            return Ok(None);
        };
        let name = secret_name(value).ok_or_else(|| {
            settings(format!(
                "connection {field} must be a secret reference (`secrets.NAME`), not a literal"
            ))
        })?;
        self.lookup(name).map(Some)
    }

    fn lookup(&self, name: &str) -> Result<String, TriggerError> {
        self.secrets
            .secret(name)
            .ok_or_else(|| settings(format!("secret {name:?} is not defined")))
    }
}

fn settings(message: impl Into<String>) -> TriggerError {
    TriggerError::Settings(message.into())
}

/// This machine's host name (`HOSTNAME`, else /etc/hostname, else `reactor-hub`): the
/// default consumer name.
pub fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_string())
                .filter(|h| !h.is_empty())
        })
        .unwrap_or_else(|| "reactor-hub".into())
}

/// `secrets.NAME` or `${{ secrets.NAME }}` → `NAME`.
fn secret_name(value: &str) -> Option<&str> {
    let trimmed = value.trim();
    let inner = trimmed
        .strip_prefix("${{")
        .and_then(|rest| rest.strip_suffix("}}"))
        .map(str::trim)
        .unwrap_or(trimmed);
    let name = inner.strip_prefix("secrets.")?;
    (!name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        .then_some(name)
}

/// `scheme://[user[:password]@]rest`.
#[derive(Debug)]
struct UrlParts {
    scheme: String,
    username: Option<String>,
    password: Option<String>,
    rest: String,
}

impl UrlParts {
    fn parse(url: &str) -> Result<UrlParts, String> {
        let (scheme, after) = url
            .split_once("://")
            .ok_or_else(|| format!("{url:?} is not a URL (scheme://host…)"))?;
        let authority_end = after.find(['/', '?']).unwrap_or(after.len());
        let (userinfo, rest) = match after[..authority_end].rfind('@') {
            Some(at) => (Some(&after[..at]), &after[at + 1..]),
            None => (None, after),
        };
        if rest.is_empty() || rest.starts_with(['/', '?', ':']) {
            return Err(format!("{url:?} has no host"));
        }
        let (username, password) = match userinfo {
            None => (None, None),
            Some(info) => match info.split_once(':') {
                Some((user, pass)) => (Some(user.to_string()), Some(pass.to_string())),
                None => (Some(info.to_string()), None),
            },
        };
        Ok(UrlParts {
            scheme: scheme.to_ascii_lowercase(),
            username: username.filter(|u| !u.is_empty()),
            password,
            rest: rest.to_string(),
        })
    }

    fn render(&self, username: Option<&str>, password: Option<&str>) -> String {
        let userinfo = match (username, password) {
            (None, None) => String::new(),
            (user, Some(pass)) => format!(
                "{}:{}@",
                encode_userinfo(user.unwrap_or_default()),
                encode_userinfo(pass)
            ),
            (Some(user), None) => format!("{}@", encode_userinfo(user)),
        };
        format!("{}://{userinfo}{}", self.scheme, self.rest)
    }
}

/// Percent-encodes what may not appear raw in a URL's user info.
fn encode_userinfo(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connections() -> Connections {
        let mut named = BTreeMap::new();
        named.insert(
            "orders".into(),
            ConnectionConfig {
                url: Some("postgres://reactor@db:5432/shop".into()),
                password: Some("${{ secrets.DB_PW }}".into()),
                ..ConnectionConfig::default()
            },
        );
        named.insert(
            "kafka".into(),
            ConnectionConfig {
                brokers: Some("k1:9092,k2:9092".into()),
                password: Some("secrets.KAFKA_PW".into()),
                ..ConnectionConfig::default()
            },
        );
        let secrets = |name: &str| match name {
            "DB_PW" => Some("p@ss word".to_string()),
            "KAFKA_PW" => Some("k".to_string()),
            _ => None,
        };
        Connections::new(named, Arc::new(secrets))
    }

    #[test]
    fn named_connection_gets_its_secret_password() {
        let resolved = connections()
            .resolve(
                &Connection::Named("orders".into()),
                "postgres",
                &["postgres", "postgresql"],
            )
            .unwrap();
        assert_eq!(
            resolved.address,
            "postgres://reactor:p%40ss%20word@db:5432/shop"
        );
        assert_eq!(resolved.display, "postgres://reactor@db:5432/shop");
        assert!(!format!("{resolved:?}").contains("ss"));
    }

    #[test]
    fn default_connection_is_named_after_the_type() {
        let resolved = connections()
            .resolve(&Connection::Default, "kafka", &[])
            .unwrap();
        assert_eq!(resolved.address, "k1:9092,k2:9092");
        assert_eq!(resolved.password.as_deref(), Some("k"));
        let error = connections()
            .resolve(&Connection::Default, "redis", &["redis"])
            .unwrap_err();
        assert!(error.to_string().contains("connections.redis"), "{error}");
    }

    #[test]
    fn clear_errors() {
        let c = connections();
        let err = |conn: Connection, kind: &str, schemes: &[&str]| {
            c.resolve(&conn, kind, schemes).unwrap_err().to_string()
        };
        assert!(
            err(Connection::Named("nope".into()), "redis", &["redis"])
                .contains("known: kafka, orders")
        );
        assert!(
            err(
                Connection::Url("redis://u:pw@h".into()),
                "redis",
                &["redis"]
            )
            .contains("holds a password")
        );
        assert!(
            err(
                Connection::Url("http://h".into()),
                "redis",
                &["redis", "rediss"]
            )
            .contains("redis:// or rediss://")
        );
        assert!(err(Connection::Url("redis://".into()), "redis", &["redis"]).contains("no host"));
        assert!(
            err(Connection::Url("kafka://h:9092".into()), "kafka", &[]).contains("without scheme")
        );
        let literal = Connections::new(
            BTreeMap::from([(
                "x".to_string(),
                ConnectionConfig {
                    url: Some("redis://h".into()),
                    password: Some("hunter2".into()),
                    ..ConnectionConfig::default()
                },
            )]),
            Arc::new(|_: &str| None::<String>),
        );
        let error = literal
            .resolve(&Connection::Named("x".into()), "redis", &["redis"])
            .unwrap_err()
            .to_string();
        assert!(error.contains("secret reference"), "{error}");
    }

    #[test]
    fn hub_toml_shape_deserializes() {
        #[derive(Deserialize)]
        struct Hub {
            connections: BTreeMap<String, ConnectionConfig>,
        }
        let hub: Hub = serde_json::from_value(serde_json::json!({
            "connections": {"main": {"url": "nats://h:4222", "token": "secrets.T"}}
        }))
        .unwrap();
        assert_eq!(hub.connections["main"].token.as_deref(), Some("secrets.T"));
    }
}
