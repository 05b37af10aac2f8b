//! The agent's service configuration (`agent.toml`), separate from workflow files.
//!
//! Layers, later wins: built-in defaults → the file (`--config`) → `REACTOR_<SECTION>__<KEY>`
//! environment variables → command-line flags (each of which also reads its own `REACTOR_*`
//! variable). The merged result is validated once; every problem names the key and where the
//! value came from (the file with line and column, or the variable).
//!
//! Parse, don't validate: [`RawConfig`] mirrors the file (`deny_unknown_fields`, every field
//! optional so each layer can be checked on its own); only [`AgentConfig::load`] builds the
//! validated [`AgentConfig`] the daemon runs with.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use reactor_core::config::{
    ConfigError, Layered, Origin, env_layers, pick, read_file, secret_from,
};
use reactor_core::flow::parse_duration;
use reactor_core::mqtt::{MqttBrokers, MqttConfig};
use reactor_core::outbox::OverflowPolicy;
pub use reactor_core::process::LogFormat;
use serde::Deserialize;

/// Environment variables of the form `REACTOR_<SECTION>__<KEY>` set nested keys.
/// Listen address when nothing else says.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Default `limits.max_running`. Memory under load follows the executions alive at once
/// (each holds its record, machine, task and in-flight action), so this bound is what keeps
/// the agent's RSS under sustained load within the footprint budget (≤ 32 MiB): with the
/// MQTT workload, the shipped build peaked at 29–40 MiB with 256 and at 24 MiB with 128, for
/// ~10 % less throughput (docs/performance.md, "Session 7").
pub const DEFAULT_MAX_RUNNING: usize = 128;
/// Upper bound of `limits.workers`.
const WORKERS_LIMIT: u64 = 256;
/// Upper bound of `limits.max_running` (each running execution is a task with an inbox).
const MAX_RUNNING_LIMIT: usize = 65_536;
/// Upper bound of `limits.max_body` (the whole request is held in memory).
const MAX_BODY_LIMIT: u64 = 64 * 1024 * 1024;

/// `reactor-agent run` flags. Each has a `REACTOR_*` environment equivalent; flags win over
/// the environment, which wins over the file.
#[derive(Debug, Clone, Default, Args)]
pub struct RunFlags {
    /// Folder of workflow files (.yaml/.yml), watched for changes. Optional when the binary
    /// has embedded workflows. [file: workflows]
    #[arg(long, env = "REACTOR_WORKFLOWS", value_name = "DIR")]
    pub workflows: Option<PathBuf>,
    /// Folder for the agent's state (journal.redb). Created if missing. Required. [file: data]
    #[arg(long, env = "REACTOR_DATA", value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Address of the HTTP server: http triggers, /healthz, /metrics, /api/v1.
    /// [default: 127.0.0.1:8080] [file: listen]
    #[arg(long, env = "REACTOR_LISTEN", value_name = "ADDR")]
    pub listen: Option<String>,
    /// The agent.toml file (see deploy/agent.toml for every key).
    #[arg(long, env = "REACTOR_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Log format: human (default) or json (one object per line). [file: log.format]
    #[arg(long, env = "REACTOR_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
}

/// The text of `run --help` after the flags: the file's keys and the environment layer.
pub const RUN_HELP: &str = "\
Configuration (agent.toml; layers: defaults < file < REACTOR_* environment < flags):
  workflows = \"/etc/reactor/workflows\"   folder of workflow files, watched for changes
  data = \"/var/lib/reactor\"              state folder (journal.redb)
  listen = \"127.0.0.1:8080\"              HTTP address
  [device]   id = \"pi-kitchen\" (default: the host name), labels = { room = \"kitchen\" }
             -> `device.id`, `device.labels` in expressions
  [exec]     allow = [\"/usr/bin/vcgencmd\"]  commands the exec action may run (default none)
  [env]      allow = [\"HOME\"]               environment variables visible as env.NAME
  [retention] keep = 10000, max_age = \"7d\"   finished executions kept in the journal
  [outbox]   max_bytes = 67108864, max_age = \"7d\", policy = \"drop_oldest\" | \"block_triggers\"
             records buffered for the hub (fleet; see docs/fleet.md)
  [fleet]    status_every = \"30s\" (status with health sent to the hub this often),
             health_window = \"5m\" (executions counted in the reported health)
  [log]      format = \"human\" | \"json\"
  [limits]   max_running = 128 (executions at once; beyond it, submits wait and http
             triggers answer 503), max_body = 1048576 (largest API request body, bytes),
             workers (async worker threads; default: one per core but one, at least 1 —
             the journal's writer thread has the remaining core)
  [mqtt]     url = \"mqtt://127.0.0.1:1883\" (or mqtts://), the default broker of mqtt
             triggers, mqtt.publish and emit with `topic`; username, password_secret =
             \"MQTT_PASSWORD\" (read from REACTOR_SECRET_MQTT_PASSWORD), client_id (prefix of
             client ids; default: device.id), keep_alive = \"30s\", clean_session = false
             (persistent sessions), inflight = 100, max_packet_size = 262144, ca_file (PEM)
  [mqtt.connections.NAME]  the same keys, for `connection: NAME` in a trigger

Environment: every key also as REACTOR_<SECTION>__<KEY>, e.g. REACTOR_DEVICE__ID=pi-1,
REACTOR_LIMITS__MAX_RUNNING=64, REACTOR_EXEC__ALLOW='[\"echo\"]', REACTOR_MQTT__URL=mqtt://h:1883,
REACTOR_MQTT__CONNECTIONS__PLANT__URL=mqtts://plant:8883 (values are TOML values, or plain
text). Secrets: REACTOR_SECRET_<NAME> is visible as secrets.NAME and never logged.
RUST_LOG filters logs (default info).

Signals: SIGTERM or SIGINT stop triggers, checkpoint running executions and close the
journal; they resume at the next start.";

/// The file as written; every section and key optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub workflows: Option<PathBuf>,
    pub data: Option<PathBuf>,
    pub listen: Option<String>,
    pub device: Option<RawDevice>,
    pub exec: Option<RawAllow>,
    pub env: Option<RawAllow>,
    pub retention: Option<RawRetention>,
    pub outbox: Option<RawOutbox>,
    pub fleet: Option<RawFleet>,
    pub log: Option<RawLog>,
    pub limits: Option<RawLimits>,
    /// Brokers for `mqtt` triggers, `mqtt.publish` and `emit` with `topic`.
    pub mqtt: Option<MqttConfig>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDevice {
    pub id: Option<String>,
    pub labels: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAllow {
    pub allow: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetention {
    pub keep: Option<u64>,
    pub max_age: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOutbox {
    pub max_bytes: Option<u64>,
    pub max_age: Option<String>,
    pub policy: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFleet {
    pub status_every: Option<String>,
    pub health_window: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    pub format: Option<LogFormat>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub max_running: Option<u64>,
    pub max_body: Option<u64>,
    pub workers: Option<u64>,
}

/// The validated configuration the daemon runs with.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub workflows: Option<PathBuf>,
    pub data: PathBuf,
    pub listen: SocketAddr,
    pub device: Device,
    pub exec_allow: Vec<String>,
    pub env_allow: Vec<String>,
    pub retention: RetentionConfig,
    pub outbox: OutboxConfig,
    pub fleet: FleetTuning,
    pub log_format: LogFormat,
    pub max_running: usize,
    pub max_body: usize,
    /// Async worker threads (`limits.workers`; see [`default_workers`]).
    pub workers: usize,
    /// The validated `[mqtt]` brokers (empty when the section is absent: inline `broker:`
    /// URLs still work). Client ids are prefixed with the device id unless set.
    pub mqtt: MqttBrokers,
    /// Whether a default broker is configured (for logs).
    pub mqtt_default: Option<String>,
    /// The file the configuration came from, if any (for logs).
    pub file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub id: String,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionConfig {
    pub keep: usize,
    pub max_age: Duration,
}

/// Limits of the outbox of records for the hub (see `reactor_core::outbox`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxConfig {
    pub max_bytes: u64,
    pub max_age: Duration,
    pub policy: OverflowPolicy,
}

/// How the agent reports to its fleet hub (docs/fleet.md, "Health in the status").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FleetTuning {
    /// A status (with health) is published this often while connected.
    pub status_every: Duration,
    /// Executions finished within this trailing window make the reported health.
    pub health_window: Duration,
}

impl Default for FleetTuning {
    fn default() -> Self {
        FleetTuning {
            status_every: Duration::from_secs(30),
            health_window: Duration::from_secs(300),
        }
    }
}

/// The merge of the layers before validation, each value tagged with its origin.
#[derive(Debug, Default)]
struct Merged {
    workflows: Option<Layered<PathBuf>>,
    data: Option<Layered<PathBuf>>,
    listen: Option<Layered<String>>,
    device_id: Option<Layered<String>>,
    labels: Option<Layered<BTreeMap<String, String>>>,
    exec_allow: Option<Layered<Vec<String>>>,
    env_allow: Option<Layered<Vec<String>>>,
    keep: Option<Layered<u64>>,
    max_age: Option<Layered<String>>,
    outbox_bytes: Option<Layered<u64>>,
    outbox_age: Option<Layered<String>>,
    outbox_policy: Option<Layered<String>>,
    status_every: Option<Layered<String>>,
    health_window: Option<Layered<String>>,
    log_format: Option<Layered<LogFormat>>,
    max_running: Option<Layered<u64>>,
    max_body: Option<Layered<u64>>,
    workers: Option<Layered<u64>>,
    /// The `[mqtt]` section merged key by key over the layers, and the layers that set any.
    mqtt: MqttConfig,
    mqtt_origins: Vec<Origin>,
}

impl Merged {
    fn apply(&mut self, raw: RawConfig, origin: &Origin) {
        pick(&mut self.workflows, raw.workflows, origin);
        pick(&mut self.data, raw.data, origin);
        pick(&mut self.listen, raw.listen, origin);
        let device = raw.device.unwrap_or_default();
        pick(&mut self.device_id, device.id, origin);
        pick(&mut self.labels, device.labels, origin);
        pick(&mut self.exec_allow, raw.exec.and_then(|e| e.allow), origin);
        pick(&mut self.env_allow, raw.env.and_then(|e| e.allow), origin);
        let retention = raw.retention.unwrap_or_default();
        pick(&mut self.keep, retention.keep, origin);
        pick(&mut self.max_age, retention.max_age, origin);
        let outbox = raw.outbox.unwrap_or_default();
        pick(&mut self.outbox_bytes, outbox.max_bytes, origin);
        pick(&mut self.outbox_age, outbox.max_age, origin);
        pick(&mut self.outbox_policy, outbox.policy, origin);
        let fleet = raw.fleet.unwrap_or_default();
        pick(&mut self.status_every, fleet.status_every, origin);
        pick(&mut self.health_window, fleet.health_window, origin);
        pick(&mut self.log_format, raw.log.and_then(|l| l.format), origin);
        let limits = raw.limits.unwrap_or_default();
        pick(&mut self.max_running, limits.max_running, origin);
        pick(&mut self.max_body, limits.max_body, origin);
        pick(&mut self.workers, limits.workers, origin);
        if let Some(mqtt) = raw.mqtt {
            merge_mqtt(&mut self.mqtt, mqtt);
            if !self.mqtt_origins.contains(origin) {
                self.mqtt_origins.push(origin.clone());
            }
        }
    }
}

/// Lays `layer` over `base`: every key the layer sets wins; connections merge by name, and
/// within a connection key by key (a layer that adds a connection must give its `url`).
fn merge_mqtt(base: &mut MqttConfig, layer: MqttConfig) {
    fn over<T>(slot: &mut Option<T>, value: Option<T>) {
        if value.is_some() {
            *slot = value;
        }
    }
    over(&mut base.url, layer.url);
    over(&mut base.client_id, layer.client_id);
    over(&mut base.username, layer.username);
    over(&mut base.password_secret, layer.password_secret);
    over(&mut base.keep_alive, layer.keep_alive);
    over(&mut base.clean_session, layer.clean_session);
    over(&mut base.inflight, layer.inflight);
    over(&mut base.max_packet_size, layer.max_packet_size);
    over(&mut base.ca_file, layer.ca_file);
    for (name, connection) in layer.connections {
        match base.connections.get_mut(&name) {
            None => {
                base.connections.insert(name, connection);
            }
            Some(existing) => {
                if !connection.url.is_empty() {
                    existing.url = connection.url;
                }
                over(&mut existing.client_id, connection.client_id);
                over(&mut existing.username, connection.username);
                over(&mut existing.password_secret, connection.password_secret);
                over(&mut existing.keep_alive, connection.keep_alive);
                over(&mut existing.clean_session, connection.clean_session);
                over(&mut existing.inflight, connection.inflight);
                over(&mut existing.max_packet_size, connection.max_packet_size);
                over(&mut existing.ca_file, connection.ca_file);
            }
        }
    }
}

impl AgentConfig {
    /// Builds the configuration from the layers; `vars` is the process environment.
    pub fn load(
        flags: &RunFlags,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<AgentConfig, ConfigError> {
        let vars: Vec<(String, String)> = vars.into_iter().collect();
        let mut problems = Vec::new();
        let mut merged = Merged::default();
        if let Some(path) = &flags.config {
            match read_file(path) {
                Ok(raw) => merged.apply(raw, &Origin::File(path.clone())),
                Err(problem) => problems.push(problem),
            }
        }
        for (name, raw) in env_layers(vars.iter().cloned(), &mut problems) {
            merged.apply(raw, &Origin::Env(name));
        }
        pick(
            &mut merged.workflows,
            flags.workflows.clone(),
            &Origin::Flag("workflows"),
        );
        pick(&mut merged.data, flags.data.clone(), &Origin::Flag("data"));
        pick(
            &mut merged.listen,
            flags.listen.clone(),
            &Origin::Flag("listen"),
        );
        pick(
            &mut merged.log_format,
            flags.log_format,
            &Origin::Flag("log-format"),
        );
        let secret = |name: &str| secret_from(&vars, name);
        let config = validate(merged, flags.config.clone(), &secret, &mut problems);
        match config {
            Some(config) if problems.is_empty() => Ok(config),
            _ => Err(ConfigError { problems }),
        }
    }
}

fn validate(
    merged: Merged,
    file: Option<PathBuf>,
    secret: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<String>,
) -> Option<AgentConfig> {
    let mut bad = |key: &str, origin: &Origin, message: String| {
        problems.push(format!("{key} (from {origin}): {message}"));
    };
    let data = match merged.data {
        Some(data) if data.value.as_os_str().is_empty() => {
            bad("data", &data.origin, "must not be empty".into());
            None
        }
        Some(data) => Some(data.value),
        None => {
            bad(
                "data",
                &Origin::Default,
                "no data folder: pass --data DIR, set REACTOR_DATA or `data` in agent.toml".into(),
            );
            None
        }
    };
    let listen_raw = merged.listen.unwrap_or(Layered {
        value: DEFAULT_LISTEN.to_string(),
        origin: Origin::Default,
    });
    let listen = match listen_raw.value.parse::<SocketAddr>() {
        Ok(addr) => Some(addr),
        Err(_) => {
            bad(
                "listen",
                &listen_raw.origin,
                format!(
                    "{:?} is not an address with a port (e.g. 127.0.0.1:8080 or [::]:8080)",
                    listen_raw.value
                ),
            );
            None
        }
    };
    let device_id = match merged.device_id {
        Some(id) => {
            if !valid_device_id(&id.value) {
                bad(
                    "device.id",
                    &id.origin,
                    format!(
                        "{:?} must be 1 to 64 characters of a-z A-Z 0-9 . _ -",
                        id.value
                    ),
                );
            }
            id.value
        }
        None => default_device_id(),
    };
    let labels = merged.labels.map(|l| l.value).unwrap_or_default();
    for name in [&merged.exec_allow, &merged.env_allow]
        .into_iter()
        .flatten()
        .flat_map(|list| list.value.iter().map(move |n| (n, &list.origin)))
    {
        if name.0.trim().is_empty() {
            bad("allow", name.1, "an empty name is not allowed".into());
        }
    }
    let keep = merged.keep.map_or(10_000, |k| {
        if k.value == 0 {
            bad(
                "retention.keep",
                &k.origin,
                "must be at least 1 (finished executions kept)".into(),
            );
        }
        usize::try_from(k.value).unwrap_or(usize::MAX)
    });
    let mut duration = |key: &str, value: Option<Layered<String>>, default: Duration| match value {
        None => default,
        Some(v) => match parse_duration(&v.value) {
            Ok(d) if !d.is_zero() => d,
            Ok(_) => {
                problems.push(format!("{key} (from {}): must be more than 0", v.origin));
                default
            }
            Err(e) => {
                problems.push(format!(
                    "{key} (from {}): {:?} is not a duration ({e}); write e.g. \"7d\", \"12h\", \"30m\"",
                    v.origin, v.value
                ));
                default
            }
        },
    };
    let week = Duration::from_secs(7 * 86_400);
    let max_age = duration("retention.max_age", merged.max_age, week);
    let outbox_age = duration("outbox.max_age", merged.outbox_age, week);
    let tuning = FleetTuning::default();
    let status_every = duration(
        "fleet.status_every",
        merged.status_every,
        tuning.status_every,
    );
    let health_window = duration(
        "fleet.health_window",
        merged.health_window,
        tuning.health_window,
    );
    let mut bad = |key: &str, origin: &Origin, message: String| {
        problems.push(format!("{key} (from {origin}): {message}"));
    };
    let outbox_bytes = merged.outbox_bytes.map_or(64 * 1024 * 1024, |b| {
        if b.value < 4096 {
            bad(
                "outbox.max_bytes",
                &b.origin,
                format!("{} is too small: at least 4096 bytes", b.value),
            );
        }
        b.value
    });
    let outbox_policy = merged.outbox_policy.map_or(OverflowPolicy::default(), |p| {
        p.value.parse().unwrap_or_else(|message: String| {
            bad("outbox.policy", &p.origin, message);
            OverflowPolicy::default()
        })
    });
    let max_running = merged.max_running.map_or(DEFAULT_MAX_RUNNING, |m| {
        if m.value == 0 || m.value > MAX_RUNNING_LIMIT as u64 {
            bad(
                "limits.max_running",
                &m.origin,
                format!("must be between 1 and {MAX_RUNNING_LIMIT}, got {}", m.value),
            );
        }
        usize::try_from(m.value).unwrap_or(1)
    });
    let workers = merged.workers.map_or_else(default_workers, |w| {
        if w.value == 0 || w.value > WORKERS_LIMIT {
            bad(
                "limits.workers",
                &w.origin,
                format!("must be between 1 and {WORKERS_LIMIT}, got {}", w.value),
            );
        }
        usize::try_from(w.value).unwrap_or(1)
    });
    let max_body = merged.max_body.map_or(1024 * 1024, |m| {
        if m.value == 0 || m.value > MAX_BODY_LIMIT {
            bad(
                "limits.max_body",
                &m.origin,
                format!(
                    "must be between 1 and {MAX_BODY_LIMIT} bytes, got {}",
                    m.value
                ),
            );
        }
        usize::try_from(m.value).unwrap_or(1)
    });
    let mqtt_default = merged.mqtt.url.clone();
    let mqtt = match MqttBrokers::from_config(&merged.mqtt, &device_id, secret) {
        Ok(brokers) => Some(brokers),
        Err(errors) => {
            let origins = merged
                .mqtt_origins
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ");
            for error in errors {
                problems.push(format!("mqtt (from {origins}): {error}"));
            }
            None
        }
    };
    Some(AgentConfig {
        workflows: merged.workflows.map(|w| w.value),
        data: data?,
        listen: listen?,
        device: Device {
            id: device_id,
            labels,
        },
        exec_allow: merged.exec_allow.map(|l| l.value).unwrap_or_default(),
        env_allow: merged.env_allow.map(|l| l.value).unwrap_or_default(),
        retention: RetentionConfig { keep, max_age },
        outbox: OutboxConfig {
            max_bytes: outbox_bytes,
            max_age: outbox_age,
            policy: outbox_policy,
        },
        fleet: FleetTuning {
            status_every,
            health_window,
        },
        log_format: merged.log_format.map(|l| l.value).unwrap_or_default(),
        max_running,
        max_body,
        workers,
        mqtt: mqtt?,
        mqtt_default,
        file,
    })
}

fn valid_device_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// The host name when it makes a valid id, else `reactor-agent`.
/// The default of `limits.workers`: one async worker per core but one, and at least one.
/// The journal's writer is a thread of its own and busy under load; on the 2-core test
/// machine one worker beside it ran the MQTT workload 10–20 % and the HTTP workload 3–5 %
/// faster than two, at less CPU per event (docs/performance.md, "Session 8").
pub fn default_workers() -> usize {
    std::thread::available_parallelism()
        .map_or(1, std::num::NonZero::get)
        .saturating_sub(1)
        .max(1)
}

fn default_device_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|name| name.trim().to_string())
        .ok()
        .filter(|name| valid_device_id(name))
        .unwrap_or_else(|| "reactor-agent".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(data: Option<&str>) -> RunFlags {
        RunFlags {
            data: data.map(PathBuf::from),
            ..RunFlags::default()
        }
    }

    fn file(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn defaults_need_only_data() {
        let config = AgentConfig::load(&flags(Some("/tmp/d")), Vec::new()).unwrap();
        assert_eq!(config.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(config.max_running, DEFAULT_MAX_RUNNING);
        assert_eq!(config.workers, default_workers());
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        assert_eq!(config.workers, cores.saturating_sub(1).max(1));
        assert_eq!(config.log_format, LogFormat::Human);
        assert!(config.exec_allow.is_empty());
    }

    #[test]
    fn missing_data_is_refused() {
        let error = AgentConfig::load(&flags(None), Vec::new()).unwrap_err();
        assert!(error.to_string().contains("no data folder"), "{error}");
    }

    #[test]
    fn layers_file_then_env_then_flags() {
        let (_dir, path) = file(
            "data = \"/from/file\"\nlisten = \"0.0.0.0:9000\"\n[device]\nid = \"file-id\"\n\
             labels = { room = \"kitchen\" }\n[limits]\nmax_running = 8\nworkers = 3\n",
        );
        let mut f = flags(None);
        f.config = Some(path);
        f.listen = Some("127.0.0.1:7000".into());
        let vars = vec![
            ("REACTOR_DEVICE__ID".to_string(), "env-id".to_string()),
            ("REACTOR_EXEC__ALLOW".to_string(), "[\"echo\"]".to_string()),
            ("REACTOR_SECRET_X__Y".to_string(), "ignored".to_string()),
            ("REACTOR_LIMITS__WORKERS".to_string(), "2".to_string()),
        ];
        let config = AgentConfig::load(&f, vars).unwrap();
        assert_eq!(config.data, PathBuf::from("/from/file"));
        assert_eq!(config.listen.to_string(), "127.0.0.1:7000");
        assert_eq!(config.device.id, "env-id");
        assert_eq!(config.device.labels["room"], "kitchen");
        assert_eq!(config.exec_allow, vec!["echo".to_string()]);
        assert_eq!(config.max_running, 8);
        assert_eq!(config.workers, 2);
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let (_dir, path) = file("data = \"/d\"\n[device]\nnmae = \"x\"\n");
        let mut f = flags(None);
        f.config = Some(path.clone());
        let error = AgentConfig::load(&f, Vec::new()).unwrap_err().to_string();
        assert!(
            error.contains(&format!("{}:3:1", path.display())),
            "{error}"
        );
        assert!(error.contains("nmae"), "{error}");
    }

    #[test]
    fn outbox_policy_is_read_and_checked() {
        let (_dir, path) = file("data = \"/d\"\n[outbox]\npolicy = \"block_triggers\"\n");
        let mut f = flags(None);
        f.config = Some(path.clone());
        let config = AgentConfig::load(&f, Vec::new()).unwrap();
        assert_eq!(config.outbox.policy, OverflowPolicy::BlockTriggers);
        let vars = vec![(
            "REACTOR_OUTBOX__POLICY".to_string(),
            "drop_newest".to_string(),
        )];
        let error = AgentConfig::load(&f, vars).unwrap_err().to_string();
        assert!(error.contains("outbox.policy"), "{error}");
        assert!(error.contains("drop_oldest"), "{error}");
    }

    #[test]
    fn fleet_tuning_is_read_and_checked() {
        let (_dir, path) = file("data = \"/d\"\n[fleet]\nstatus_every = \"5s\"\n");
        let mut f = flags(None);
        f.config = Some(path.clone());
        let config = AgentConfig::load(&f, Vec::new()).unwrap();
        assert_eq!(config.fleet.status_every, Duration::from_secs(5));
        assert_eq!(config.fleet.health_window, Duration::from_secs(300));
        let vars = vec![(
            "REACTOR_FLEET__HEALTH_WINDOW".to_string(),
            "often".to_string(),
        )];
        let error = AgentConfig::load(&f, vars).unwrap_err().to_string();
        assert!(error.contains("fleet.health_window"), "{error}");
    }

    #[test]
    fn bad_values_are_all_reported() {
        let (_dir, path) = file(
            "data = \"/d\"\nlisten = \"nowhere\"\n[limits]\nmax_running = 0\nworkers = 0\n\
             [retention]\nmax_age = \"soon\"\n",
        );
        let mut f = flags(None);
        f.config = Some(path.clone());
        let error = AgentConfig::load(&f, Vec::new()).unwrap_err();
        assert_eq!(error.problems.len(), 4, "{error}");
        let text = error.to_string();
        assert!(text.contains("limits.max_running"), "{text}");
        assert!(text.contains("limits.workers"), "{text}");
        assert!(text.contains("listen"), "{text}");
        assert!(text.contains("retention.max_age"), "{text}");
        assert!(text.contains(&path.display().to_string()), "{text}");
    }

    #[test]
    fn bad_env_names_the_variable() {
        let vars = vec![("REACTOR_LIMITS__MAX_RUNING".to_string(), "3".to_string())];
        let error = AgentConfig::load(&flags(Some("/d")), vars)
            .unwrap_err()
            .to_string();
        assert!(error.contains("REACTOR_LIMITS__MAX_RUNING"), "{error}");
    }

    #[test]
    fn mqtt_section_layers_and_resolves_secrets() {
        let (_dir, path) = file(
            "data = \"/d\"\n[device]\nid = \"pi-7\"\n[mqtt]\nurl = \"mqtt://file:1883\"\n\
             username = \"agent\"\npassword_secret = \"mqtt_password\"\n\
             [mqtt.connections.plant]\nurl = \"mqtts://plant.example\"\n",
        );
        let mut f = flags(None);
        f.config = Some(path);
        let vars = vec![
            (
                "REACTOR_MQTT__URL".to_string(),
                "mqtt://env:1884".to_string(),
            ),
            ("REACTOR_MQTT__KEEP_ALIVE".to_string(), "10s".to_string()),
            (
                "REACTOR_SECRET_MQTT_PASSWORD".to_string(),
                "hunter2".to_string(),
            ),
        ];
        let config = AgentConfig::load(&f, vars).unwrap();
        let default = config.mqtt.default_broker().unwrap();
        assert_eq!(default.url, "mqtt://env:1884");
        assert_eq!(default.keep_alive, Duration::from_secs(10));
        assert_eq!(default.username.as_deref(), Some("agent"));
        assert_eq!(default.password.as_ref().unwrap().expose(), "hunter2");
        assert_eq!(default.client_id, "pi-7");
        assert!(!default.clean_session);
        let plant = config.mqtt.resolve(None, Some("plant")).unwrap();
        assert_eq!(plant.url, "mqtts://plant.example:8883");
    }

    #[test]
    fn bad_mqtt_settings_are_refused_with_their_origin() {
        let (_dir, path) = file(
            "data = \"/d\"\n[mqtt]\nurl = \"http://broker\"\npassword_secret = \"NOPE\"\n\
             username = \"u\"\n",
        );
        let mut f = flags(None);
        f.config = Some(path.clone());
        let error = AgentConfig::load(&f, Vec::new()).unwrap_err();
        let text = error.to_string();
        assert!(text.contains("invalid url"), "{text}");
        assert!(text.contains("NOPE"), "{text}");
        assert!(text.contains(&path.display().to_string()), "{text}");
        let (_dir, path) = file("data = \"/d\"\n[mqtt]\nurll = \"mqtt://x\"\n");
        f.config = Some(path);
        let text = AgentConfig::load(&f, Vec::new()).unwrap_err().to_string();
        assert!(text.contains("urll"), "{text}");
    }

    #[test]
    fn without_mqtt_section_inline_brokers_still_resolve() {
        let config = AgentConfig::load(&flags(Some("/d")), Vec::new()).unwrap();
        assert!(config.mqtt.default_broker().is_none());
        assert!(
            config
                .mqtt
                .resolve(Some("mqtt://127.0.0.1:1883"), None)
                .is_ok()
        );
    }
}
