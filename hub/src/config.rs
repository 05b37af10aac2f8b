//! The hub's service configuration (`hub.toml`), separate from workflow files.
//!
//! Layers, later wins: built-in defaults → the file (`--config`, else `./hub.toml` when it
//! exists) → `REACTOR_<SECTION>__<KEY>` environment variables → command-line flags (each of
//! which also reads its own `REACTOR_*` variable). The merged result is validated once; every
//! problem names the key and where its value came from. The approach is the agent's
//! (`agent/src/config.rs`); the keys are the hub's.
//!
//! Zero configuration works: SQLite in `./reactor-data/hub.db`, HTTP on 127.0.0.1:8090.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use reactor_core::config::{ConfigError, Layered, Origin, env_layers, pick, read_file};
use reactor_core::flow::parse_duration;
pub use reactor_core::process::LogFormat;
use reactor_hub_triggers::ConnectionConfig;
use serde::Deserialize;

/// Environment variables of the form `REACTOR_<SECTION>__<KEY>` set nested keys.
/// Data folder when nothing else says.
pub const DEFAULT_DATA: &str = "reactor-data";
/// Listen address when nothing else says.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8090";
/// The file read when `--config` is not given, if it exists in the working directory.
pub const DEFAULT_FILE: &str = "hub.toml";
/// Default and upper bound of `limits.max_body` (a request body is held in memory).
const DEFAULT_MAX_BODY: u64 = 1024 * 1024;
const MAX_BODY_LIMIT: u64 = 64 * 1024 * 1024;
/// Default and upper bound of `limits.max_running`.
const DEFAULT_MAX_RUNNING: u64 = 1024;
const MAX_RUNNING_LIMIT: u64 = 65_536;

/// `reactor-hub serve` flags. Each has a `REACTOR_*` environment equivalent; flags win over
/// the environment, which wins over the file.
#[derive(Debug, Clone, Default, Args)]
pub struct ServeFlags {
    /// Folder for the hub's state (the SQLite file hub.db when no --database is given).
    /// Created if missing. [default: ./reactor-data] [file: data]
    #[arg(long, env = "REACTOR_DATA", value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Address of the HTTP server: /healthz and /api/v1. [default: 127.0.0.1:8090]
    /// [file: listen]
    #[arg(long, env = "REACTOR_LISTEN", value_name = "ADDR")]
    pub listen: Option<String>,
    /// Database URL: postgres://USER@HOST/DB for PostgreSQL; without it, SQLite in the data
    /// folder. [file: database]
    #[arg(
        long,
        env = "REACTOR_DATABASE_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub database: Option<String>,
    /// The hub.toml file [default: ./hub.toml when it exists].
    #[arg(long, env = "REACTOR_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Log format: human (default) or json (one object per line). [file: log.format]
    #[arg(long, env = "REACTOR_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Device MQTT endpoint: the embedded broker behind the hub's own identity and topic
    /// checks (docs/fleet.md). Off unless set.
    #[arg(long, env = "REACTOR_MQTT_LISTEN", value_name = "ADDR")]
    pub mqtt_listen: Option<SocketAddr>,
    /// The broker address enrollment hands to devices [default: mqtt://MQTT_LISTEN, or
    /// --mqtt-broker].
    #[arg(long, env = "REACTOR_MQTT_ADVERTISE", value_name = "URL")]
    pub mqtt_advertise: Option<String>,
    /// An external broker instead of the embedded one: mqtt://[USER:PASS@]HOST:PORT (its
    /// ACLs must confine each device to reactor/v1/d/{device}/).
    #[arg(
        long,
        env = "REACTOR_MQTT_BROKER",
        value_name = "URL",
        hide_env_values = true
    )]
    pub mqtt_broker: Option<String>,
    /// TLS on the device endpoint: the certificate chain (PEM). [file: fleet.mqtt_tls_cert]
    #[arg(
        long,
        env = "REACTOR_MQTT_TLS_CERT",
        value_name = "FILE",
        requires = "mqtt_tls_key"
    )]
    pub mqtt_tls_cert: Option<PathBuf>,
    /// TLS on the device endpoint: the private key (PEM). [file: fleet.mqtt_tls_key]
    #[arg(
        long,
        env = "REACTOR_MQTT_TLS_KEY",
        value_name = "FILE",
        requires = "mqtt_tls_cert"
    )]
    pub mqtt_tls_key: Option<PathBuf>,
    /// The CA certificate (PEM) enrollment gives devices to trust [default: the last
    /// certificate of --mqtt-tls-cert]. [file: fleet.mqtt_tls_ca]
    #[arg(long, env = "REACTOR_MQTT_TLS_CA", value_name = "FILE")]
    pub mqtt_tls_ca: Option<PathBuf>,
}

mod fleet;
pub use fleet::FleetConfig;

/// The text of `serve --help` after the flags: the file's keys and the environment layer.
pub const SERVE_HELP: &str = "\
Configuration (hub.toml; layers: defaults < file < REACTOR_* environment < flags):
  data = \"./reactor-data\"       state folder (hub.db when no database URL is given)
  listen = \"127.0.0.1:8090\"     HTTP address
  database = \"postgres://reactor@db/reactor\"   PostgreSQL instead of SQLite
  [log]      format = \"human\" | \"json\"
  [limits]   max_running = 1024 (executions at once), max_body = 1048576 (largest request
             body in bytes, for every route)
  [retention] keep = 100000, max_age = \"30d\"   finished executions kept
  [exec]     allow = [\"/usr/bin/echo\"]  commands the exec action may run (default: none,
             the exec action is off on the hub)
  [env]      allow = [\"HOME\"]            environment variables visible as env.NAME
  [http]     allow = [\"10.0.0.0/8\", \"api.internal\"]  non-public targets the http action
             may reach (CIDRs, addresses, host names, *.domain; default: none)
  [fleet]    mqtt_listen = \"0.0.0.0:8883\"  device MQTT endpoint (embedded broker);
             mqtt_tls_cert / mqtt_tls_key / mqtt_tls_ca = PEM files (TLS on that endpoint);
             mqtt_advertise = \"mqtts://hub.example:8883\" (what enrollment hands out);
             or mqtt_broker = \"mqtt://USER:PASS@HOST:1883\" (an external broker instead)
             provision = \"none\" | \"mosquitto_dynsec\" (with mqtt_broker: the hub creates
             each device's login and ACL on Mosquitto's dynamic-security plugin, as
             provision_username / provision_password, else the mqtt_broker login);
             bundle_renew_below = 0.333 (re-sign a desired bundle once less than this
             fraction of its validity is left; 0: never)

Environment: every key also as REACTOR_<SECTION>__<KEY>, e.g. REACTOR_LIMITS__MAX_BODY=65536,
REACTOR_EXEC__ALLOW='[\"echo\"]' (values are TOML values, or plain text).
RUST_LOG filters logs (default info).

Auth: every route but /healthz needs `Authorization: Bearer TOKEN`; create the first token
with `reactor-hub token create --role admin` (same --data / --database).

Signals: SIGTERM or SIGINT stop the HTTP server and triggers, checkpoint running executions
and close the database; they resume at the next start.";

/// The file as written; every section and key optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    data: Option<PathBuf>,
    listen: Option<String>,
    database: Option<String>,
    log: Option<RawLog>,
    limits: Option<RawLimits>,
    retention: Option<RawRetention>,
    exec: Option<RawAllow>,
    http: Option<RawAllow>,
    env: Option<RawAllow>,
    /// Named connections of the broker and database triggers (`[connections.NAME]`).
    connections: Option<BTreeMap<String, ConnectionConfig>>,
    /// The device MQTT endpoint or external broker (`[fleet]`).
    fleet: Option<fleet::RawFleet>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    format: Option<LogFormat>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_running: Option<u64>,
    max_body: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetention {
    keep: Option<u64>,
    max_age: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAllow {
    allow: Option<Vec<String>>,
}

/// A database URL; `Debug` and `Display` hide its password.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    /// The URL itself, to connect with. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // scheme://user:PASSWORD@host → scheme://user:***@host
        match (self.0.find("://"), self.0.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                let userinfo = &self.0[scheme + 3..at];
                match userinfo.split_once(':') {
                    Some((user, _)) => {
                        write!(f, "{}{user}:***{}", &self.0[..scheme + 3], &self.0[at..])
                    }
                    None => f.write_str(&self.0),
                }
            }
            _ => f.write_str(&self.0),
        }
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DatabaseUrl({self})")
    }
}

/// The validated configuration `serve` runs with.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// The data folder (created at start).
    pub data: PathBuf,
    pub listen: SocketAddr,
    /// PostgreSQL when set; else SQLite in `data`.
    pub database: Option<DatabaseUrl>,
    pub log_format: LogFormat,
    pub max_running: usize,
    /// Largest request body, bytes, on every route.
    pub max_body: usize,
    pub retention_keep: usize,
    pub retention_max_age: Duration,
    pub exec_allow: Vec<String>,
    pub env_allow: Vec<String>,
    /// Non-public targets the `http` action may reach (`[http] allow`).
    pub http_allow: Vec<String>,
    /// The file the configuration came from, if any (for logs).
    pub file: Option<PathBuf>,
    /// Broker and enrollment settings.
    pub fleet: FleetConfig,
    /// Named connections for `kafka`, `nats`, `redis`, `postgres` and `mysql` triggers
    /// (`[connections.NAME]` in hub.toml; credentials only as secret references).
    pub connections: BTreeMap<String, ConnectionConfig>,
}

/// The merge of the layers before validation.
#[derive(Debug, Default)]
struct Merged {
    data: Option<Layered<PathBuf>>,
    listen: Option<Layered<String>>,
    database: Option<Layered<String>>,
    log_format: Option<Layered<LogFormat>>,
    max_running: Option<Layered<u64>>,
    max_body: Option<Layered<u64>>,
    keep: Option<Layered<u64>>,
    max_age: Option<Layered<String>>,
    exec_allow: Option<Layered<Vec<String>>>,
    http_allow: Option<Layered<Vec<String>>>,
    env_allow: Option<Layered<Vec<String>>>,
    connections: Option<Layered<BTreeMap<String, ConnectionConfig>>>,
    fleet: fleet::MergedFleet,
}

impl Merged {
    fn apply(&mut self, raw: RawConfig, origin: &Origin) {
        pick(&mut self.data, raw.data, origin);
        pick(&mut self.listen, raw.listen, origin);
        pick(&mut self.database, raw.database, origin);
        pick(&mut self.log_format, raw.log.and_then(|l| l.format), origin);
        let limits = raw.limits.unwrap_or_default();
        pick(&mut self.max_running, limits.max_running, origin);
        pick(&mut self.max_body, limits.max_body, origin);
        let retention = raw.retention.unwrap_or_default();
        pick(&mut self.keep, retention.keep, origin);
        pick(&mut self.max_age, retention.max_age, origin);
        pick(&mut self.exec_allow, raw.exec.and_then(|e| e.allow), origin);
        pick(&mut self.http_allow, raw.http.and_then(|e| e.allow), origin);
        pick(&mut self.env_allow, raw.env.and_then(|e| e.allow), origin);
        pick(&mut self.connections, raw.connections, origin);
        self.fleet.apply(raw.fleet, origin);
    }
}

impl HubConfig {
    /// Builds the configuration from the layers; `vars` is the process environment.
    pub fn load(
        flags: &ServeFlags,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<HubConfig, ConfigError> {
        let mut problems = Vec::new();
        let mut merged = Merged::default();
        let file = match &flags.config {
            Some(path) => Some(path.clone()),
            None => Some(PathBuf::from(DEFAULT_FILE)).filter(|p| p.is_file()),
        };
        if let Some(path) = &file {
            match read_file(path) {
                Ok(raw) => merged.apply(raw, &Origin::File(path.clone())),
                Err(problem) => problems.push(problem),
            }
        }
        for (name, raw) in env_layers(vars, &mut problems) {
            merged.apply(raw, &Origin::Env(name));
        }
        pick(&mut merged.data, flags.data.clone(), &Origin::Flag("data"));
        pick(
            &mut merged.listen,
            flags.listen.clone(),
            &Origin::Flag("listen"),
        );
        pick(
            &mut merged.database,
            flags.database.clone(),
            &Origin::Flag("database"),
        );
        pick(
            &mut merged.log_format,
            flags.log_format,
            &Origin::Flag("log-format"),
        );
        merged.fleet.apply_flags(flags);
        let fleet = std::mem::take(&mut merged.fleet).validate(&mut problems);
        let config = validate(merged, file, &mut problems).map(|mut config| {
            config.fleet = fleet;
            config
        });
        match config {
            Some(config) if problems.is_empty() => Ok(config),
            _ => Err(ConfigError { problems }),
        }
    }
}

fn validate(
    merged: Merged,
    file: Option<PathBuf>,
    problems: &mut Vec<String>,
) -> Option<HubConfig> {
    let mut bad = |key: &str, origin: &Origin, message: String| {
        problems.push(format!("{key} (from {origin}): {message}"));
    };
    let data = merged.data.unwrap_or(Layered {
        value: PathBuf::from(DEFAULT_DATA),
        origin: Origin::Default,
    });
    if data.value.as_os_str().is_empty() {
        bad("data", &data.origin, "must not be empty".into());
    }
    let listen_raw = merged.listen.unwrap_or(Layered {
        value: DEFAULT_LISTEN.to_string(),
        origin: Origin::Default,
    });
    let listen = listen_raw.value.parse::<SocketAddr>().ok();
    if listen.is_none() {
        bad(
            "listen",
            &listen_raw.origin,
            format!(
                "{:?} is not an address with a port (e.g. 127.0.0.1:8090 or [::]:8090)",
                listen_raw.value
            ),
        );
    }
    let database = match merged.database {
        None => None,
        Some(url) if url.value.trim().is_empty() => None,
        Some(url) => {
            let text = url.value.trim();
            let scheme_ok = text.starts_with("postgres://")
                || text.starts_with("postgresql://")
                || text.starts_with("sqlite:");
            if !scheme_ok {
                let shown = DatabaseUrl(text.to_string()).to_string();
                bad(
                    "database",
                    &url.origin,
                    format!(
                        "{shown:?} is not a database URL: expected postgres://… (or sqlite:PATH)"
                    ),
                );
            }
            Some(DatabaseUrl(text.to_string()))
        }
    };
    let mut bounded = |key: &str, value: Option<Layered<u64>>, default: u64, max: u64| {
        value.map_or(default, |v| {
            if v.value == 0 || v.value > max {
                bad(
                    key,
                    &v.origin,
                    format!("must be between 1 and {max}, got {}", v.value),
                );
                default
            } else {
                v.value
            }
        })
    };
    let max_running = bounded(
        "limits.max_running",
        merged.max_running,
        DEFAULT_MAX_RUNNING,
        MAX_RUNNING_LIMIT,
    );
    let max_body = bounded(
        "limits.max_body",
        merged.max_body,
        DEFAULT_MAX_BODY,
        MAX_BODY_LIMIT,
    );
    let keep = bounded("retention.keep", merged.keep, 100_000, u64::MAX);
    for list in [&merged.exec_allow, &merged.env_allow, &merged.http_allow]
        .into_iter()
        .flatten()
    {
        if list.value.iter().any(|name| name.trim().is_empty()) {
            bad("allow", &list.origin, "an empty name is not allowed".into());
        }
    }
    if let Some(list) = &merged.http_allow
        && let Err(error) = reactor_core::action::http_guard::NetGuard::new(&list.value)
    {
        bad("http.allow", &list.origin, error.to_string());
    }
    let max_age = match merged.max_age {
        None => Duration::from_secs(30 * 86_400),
        Some(v) => match parse_duration(&v.value) {
            Ok(d) if !d.is_zero() => d,
            Ok(_) => {
                bad("retention.max_age", &v.origin, "must be more than 0".into());
                Duration::from_secs(30 * 86_400)
            }
            Err(e) => {
                bad(
                    "retention.max_age",
                    &v.origin,
                    format!(
                        "{:?} is not a duration ({e}); write e.g. \"30d\", \"12h\"",
                        v.value
                    ),
                );
                Duration::from_secs(30 * 86_400)
            }
        },
    };
    Some(HubConfig {
        data: data.value,
        listen: listen?,
        database,
        log_format: merged.log_format.map(|l| l.value).unwrap_or_default(),
        max_running: usize::try_from(max_running).unwrap_or(usize::MAX),
        max_body: usize::try_from(max_body).unwrap_or(usize::MAX),
        retention_keep: usize::try_from(keep).unwrap_or(usize::MAX),
        retention_max_age: max_age,
        exec_allow: merged.exec_allow.map(|l| l.value).unwrap_or_default(),
        http_allow: merged.http_allow.map(|l| l.value).unwrap_or_default(),
        env_allow: merged.env_allow.map(|l| l.value).unwrap_or_default(),
        file,
        fleet: FleetConfig::default(),
        connections: merged.connections.map(|l| l.value).unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.toml");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn zero_config_defaults() {
        let config = HubConfig::load(&ServeFlags::default(), Vec::new()).unwrap();
        assert_eq!(config.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(config.data, PathBuf::from(DEFAULT_DATA));
        assert!(config.database.is_none());
        assert!(config.exec_allow.is_empty());
        assert_eq!(config.max_body, 1024 * 1024);
    }

    #[test]
    fn layers_file_then_env_then_flags() {
        let (_dir, path) = file(
            "data = \"/from/file\"\nlisten = \"0.0.0.0:9000\"\n[limits]\nmax_body = 4096\n\
             max_running = 8\n",
        );
        let flags = ServeFlags {
            config: Some(path),
            listen: Some("127.0.0.1:7000".into()),
            ..ServeFlags::default()
        };
        let vars = vec![
            ("REACTOR_LIMITS__MAX_BODY".to_string(), "8192".to_string()),
            ("REACTOR_EXEC__ALLOW".to_string(), "[\"echo\"]".to_string()),
        ];
        let config = HubConfig::load(&flags, vars).unwrap();
        assert_eq!(config.data, PathBuf::from("/from/file"));
        assert_eq!(config.listen.to_string(), "127.0.0.1:7000");
        assert_eq!(config.max_body, 8192);
        assert_eq!(config.max_running, 8);
        assert_eq!(config.exec_allow, vec!["echo".to_string()]);
    }

    #[test]
    fn every_problem_is_reported_with_its_origin() {
        let (_dir, path) = file(
            "listen = \"nowhere\"\ndatabase = \"mysql://x\"\n[limits]\nmax_body = 0\n\
             [retention]\nmax_age = \"soon\"\n",
        );
        let flags = ServeFlags {
            config: Some(path.clone()),
            ..ServeFlags::default()
        };
        let error = HubConfig::load(&flags, Vec::new()).unwrap_err();
        assert_eq!(error.problems.len(), 4, "{error}");
        let text = error.to_string();
        for key in ["listen", "database", "limits.max_body", "retention.max_age"] {
            assert!(text.contains(key), "{key} missing from {text}");
        }
        assert!(text.contains(&path.display().to_string()), "{text}");
    }

    #[test]
    fn unknown_key_names_file_line() {
        let (_dir, path) = file("data = \"/d\"\n[limits]\nmax_bdy = 3\n");
        let flags = ServeFlags {
            config: Some(path.clone()),
            ..ServeFlags::default()
        };
        let text = HubConfig::load(&flags, Vec::new()).unwrap_err().to_string();
        assert!(text.contains(&format!("{}:3:1", path.display())), "{text}");
        assert!(text.contains("max_bdy"), "{text}");
    }

    #[test]
    fn bad_env_names_the_variable() {
        let vars = vec![("REACTOR_LIMITS__MAX_BODDY".to_string(), "3".to_string())];
        let text = HubConfig::load(&ServeFlags::default(), vars)
            .unwrap_err()
            .to_string();
        assert!(text.contains("REACTOR_LIMITS__MAX_BODDY"), "{text}");
    }

    #[test]
    fn database_password_is_hidden() {
        let url = DatabaseUrl("postgres://reactor:hunter2@db:5432/hub".into());
        assert_eq!(url.to_string(), "postgres://reactor:***@db:5432/hub");
        assert!(!format!("{url:?}").contains("hunter2"));
        assert_eq!(url.expose(), "postgres://reactor:hunter2@db:5432/hub");
    }
}
