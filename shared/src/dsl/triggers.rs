//! `triggers:` — each list item has exactly one key, the trigger type.

use std::str::FromStr;

use crate::Value;
use crate::flow::{
    Batch, CaptureMode, Connection, CronTrigger, FileEventKind, FileTrigger, HttpAuth,
    HttpResponseMode, HttpTrigger, KafkaStart, KafkaTrigger, MAX_MQTT_SESSIONS, MqttTrigger,
    NatsTrigger, PollSettings, RedisSource, RedisTrigger, RowOperation, SqlTrigger, TriggerKind,
    TriggerSpec, WebhookVerify,
};

use super::decode::{Decoder, Fields, Scope};
use super::fields::{BATCH, POLL, TRIGGERS, Table, suggest};
use super::yaml::{Node, NodeKind};

impl Decoder<'_> {
    pub fn triggers(&mut self, node: &Node) -> Vec<TriggerSpec> {
        let Some(items) = node.as_seq() else {
            self.error(
                node.location,
                format!("triggers must be a list, found {}", node.describe()),
            );
            return Vec::new();
        };
        items.iter().filter_map(|item| self.trigger(item)).collect()
    }

    fn trigger(&mut self, node: &Node) -> Option<TriggerSpec> {
        let types: Vec<&str> = TRIGGERS.iter().map(|(t, _, _)| *t).collect();
        let entries = match &node.kind {
            NodeKind::Map(entries) if entries.len() == 1 => entries,
            NodeKind::Map(entries) if entries.len() > 1 => {
                let names: Vec<String> = entries
                    .iter()
                    .map(|(k, _)| format!("{:?}", k.name))
                    .collect();
                self.error_help(
                    entries[1].0.location,
                    format!(
                        "a trigger has exactly one key, its type; found {}",
                        names.join(" and ")
                    ),
                    Some(format!(
                        "indent the settings under the type: - {}: {{ … }}",
                        entries[0].0.name
                    )),
                );
                return None;
            }
            NodeKind::Scalar {
                value: Value::String(s),
                ..
            } if s == "startup" => {
                return Some(TriggerSpec {
                    kind: TriggerKind::Startup,
                    location: node.location,
                });
            }
            _ => {
                self.error(
                    node.location,
                    format!(
                        "a trigger is a map with one key, its type ({}), found {}",
                        types.join(", "),
                        node.describe()
                    ),
                );
                return None;
            }
        };
        let (key, settings) = &entries[0];
        let Some((_, table, _)) = TRIGGERS.iter().find(|(t, _, _)| *t == key.name) else {
            self.error_help(
                key.location,
                format!("unknown trigger type {:?}", key.name),
                Some(match suggest(&key.name, types.iter().copied()) {
                    Some(s) => format!("did you mean {s:?}?"),
                    None => format!("trigger types: {}", types.join(", ")),
                }),
            );
            return None;
        };
        let kind = self.trigger_kind(&key.name, table, settings)?;
        Some(TriggerSpec {
            kind,
            location: key.location,
        })
    }

    fn trigger_kind(&mut self, kind: &str, table: &Table, node: &Node) -> Option<TriggerKind> {
        if kind == "startup" {
            if !node.is_null() && node.as_map().is_none_or(|m| !m.is_empty()) {
                self.error(node.location, "the startup trigger takes no settings");
                return None;
            }
            return Some(TriggerKind::Startup);
        }
        if kind == "cron" && node.as_str().is_some() {
            return self.cron(node, None).map(TriggerKind::Cron);
        }
        if kind == "plugin" {
            return self.plugin(node, table);
        }
        let f = self.fields(node, table)?;
        let kind = match kind {
            "http" => TriggerKind::Http(self.http(f)?),
            "cron" => {
                let schedule = f.get("schedule")?;
                TriggerKind::Cron(self.cron(schedule, f.get("timezone"))?)
            }
            "interval" => TriggerKind::Interval {
                every: self.duration(f.get("every")?, "every")?,
            },
            "file" => TriggerKind::File(self.file(f)?),
            "mqtt" => {
                let topic = self.string(f.get("topic")?, "topic");
                let qos = match f.get("qos") {
                    Some(n) => self.int(n, "qos", 0, 2).map(|q| q as u8),
                    None => Some(0),
                };
                let broker = self.opt_string(f, "broker");
                let connection = self.opt_string(f, "connection");
                let sessions = match f.get("sessions") {
                    Some(n) => self
                        .int(n, "sessions", 1, i64::from(MAX_MQTT_SESSIONS))
                        .map(|s| s as u16),
                    None => Some(1),
                };
                if broker.is_some() && connection.is_some() {
                    self.error(
                        f.key_location("connection"),
                        "use either broker or connection, not both",
                    );
                }
                TriggerKind::Mqtt(MqttTrigger {
                    topic: topic?,
                    qos: qos?,
                    broker,
                    connection,
                    sessions: sessions?,
                })
            }
            "event" => TriggerKind::Event {
                event_type: self.string(f.get("type")?, "type")?,
                source: self.opt_string(f, "source"),
            },
            "kafka" => {
                let topic = f.get("topic")?;
                let topics = match topic.as_seq() {
                    Some(items) => items
                        .iter()
                        .filter_map(|t| self.string(t, "topic"))
                        .collect(),
                    None => vec![self.string(topic, "topic")?],
                };
                let from = match f.get("from") {
                    Some(n) => match self.choice(n, "from", &["latest", "earliest"])? {
                        "earliest" => KafkaStart::Earliest,
                        _ => KafkaStart::Latest,
                    },
                    None => KafkaStart::Latest,
                };
                let batch = self.batch(f);
                TriggerKind::Kafka(KafkaTrigger {
                    topics,
                    group: self.opt_string(f, "group"),
                    connection: self.connection(f, "brokers")?,
                    from,
                    batch: batch?,
                })
            }
            "nats" => {
                let stream = self.opt_string(f, "stream");
                let durable = self.opt_string(f, "durable");
                if durable.is_some() && stream.is_none() {
                    self.error(
                        f.key_location("durable"),
                        "durable needs stream (JetStream)",
                    );
                }
                if stream.is_none() && f.has("batch") {
                    self.error(
                        f.key_location("batch"),
                        "batch applies to JetStream (stream + durable), not core subjects",
                    );
                }
                let batch = self.batch(f);
                TriggerKind::Nats(NatsTrigger {
                    subject: self.string(f.get("subject")?, "subject")?,
                    queue: self.opt_string(f, "queue"),
                    stream,
                    durable,
                    connection: self.connection(f, "url")?,
                    batch: batch?,
                })
            }
            "redis" => TriggerKind::Redis(self.redis(f)?),
            "postgres" => TriggerKind::Postgres(self.sql(f)?),
            "mysql" => TriggerKind::Mysql(self.sql(f)?),
            _ => return None,
        };
        Some(kind)
    }

    fn opt_string(&mut self, f: Fields<'_>, name: &str) -> Option<String> {
        f.get(name).and_then(|n| self.string(n, name))
    }

    fn connection(&mut self, f: Fields<'_>, inline: &str) -> Option<Connection> {
        let named = self.opt_string(f, "connection");
        let url = self.opt_string(f, inline);
        match (named, url) {
            (Some(_), Some(_)) => {
                self.error(
                    f.key_location(inline),
                    format!("use either connection or {inline}, not both"),
                );
                None
            }
            (Some(name), None) => Some(Connection::Named(name)),
            (None, Some(url)) => Some(Connection::Url(url)),
            (None, None) => Some(Connection::Default),
        }
    }

    fn http(&mut self, f: Fields<'_>) -> Option<HttpTrigger> {
        let path = self.string(f.get("path")?, "path")?;
        if !path.starts_with('/') {
            self.error(
                f.get("path")?.location,
                format!("path {path:?} must start with /"),
            );
        }
        let method = match f.get("method") {
            Some(n) => {
                let m = self.string(n, "method")?.to_ascii_uppercase();
                if !m.chars().all(|c| c.is_ascii_alphabetic()) || m.is_empty() {
                    self.error(n.location, format!("invalid HTTP method {m:?}"));
                }
                m
            }
            None => "POST".into(),
        };
        let auth = match f.get("auth") {
            Some(n) => match self.choice(n, "auth", &["none", "token", "hmac"])? {
                "token" => HttpAuth::Token,
                "hmac" => HttpAuth::Hmac,
                _ => HttpAuth::None,
            },
            None => HttpAuth::None,
        };
        let scope = Scope::default();
        let secret = f.get("secret").and_then(|n| self.template(n, &scope));
        let verify = match f.get("verify") {
            Some(n) => Some(
                match self.choice(n, "verify", &["github", "stripe", "slack"])? {
                    "github" => WebhookVerify::Github,
                    "stripe" => WebhookVerify::Stripe,
                    _ => WebhookVerify::Slack,
                },
            ),
            None => None,
        };
        if auth != HttpAuth::None && secret.is_none() {
            self.error_help(
                f.key_location("auth"),
                "auth token or hmac needs \"secret\"",
                Some("secret: \"${{ secrets.WEBHOOK_TOKEN }}\"".into()),
            );
        }
        let response = match f.get("response") {
            Some(n) => match self.choice(n, "response", &["sync", "async"])? {
                "async" => HttpResponseMode::Async,
                _ => HttpResponseMode::Sync,
            },
            None => HttpResponseMode::Sync,
        };
        let max_body = match f.get("max_body") {
            Some(n) => Some(self.int(n, "max_body", 1, i64::MAX)? as u64),
            None => None,
        };
        Some(HttpTrigger {
            path,
            method,
            auth,
            secret,
            verify,
            response,
            max_body,
        })
    }

    /// Checks the schedule with the cron crate (6 or 7 fields; 5 get a leading `0`).
    fn cron(&mut self, node: &Node, timezone: Option<&Node>) -> Option<CronTrigger> {
        let schedule = self.string(node, "schedule")?;
        let count = schedule.split_whitespace().count();
        let normalized = match count {
            5 => format!("0 {}", schedule.trim()),
            6 | 7 => schedule.trim().to_string(),
            _ => {
                self.error_help(
                    node.location,
                    format!("invalid cron schedule {schedule:?}: expected 5 or 6 fields, found {count}"),
                    Some("6 fields are seconds minutes hours day-of-month month day-of-week, like \"0 */5 * * * *\"".into()),
                );
                return None;
            }
        };
        let parsed = cron::Schedule::from_str(&normalized);
        let timezone = match timezone {
            Some(n) => {
                let name = self.string(n, "timezone")?;
                // Zones come from the system's zoneinfo (trigger::cron_tz): a name this
                // machine does not have is refused here, not at the first tick.
                if let Err(error) = crate::trigger::cron_tz::Zone::named(&name) {
                    use crate::trigger::cron_tz::{ZoneError, zone_names, zoneinfo_dir};
                    let names = match error {
                        ZoneError::NotFound { .. } | ZoneError::BadName(_) => {
                            zone_names(&zoneinfo_dir())
                        }
                        _ => Vec::new(),
                    };
                    let help = suggest(&name, names.iter().map(String::as_str))
                        .map(|s| format!("did you mean {s:?}?"))
                        .or_else(|| Some(error.to_string()));
                    self.error_help(n.location, format!("unknown timezone {name:?}"), help);
                    return None;
                }
                name
            }
            None => "UTC".into(),
        };
        if let Err(e) = parsed {
            // The cron crate's message may draw a caret under the field; keep its last line.
            let text = e.to_string();
            let reason = text
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("");
            self.error(
                node.location,
                format!("invalid cron schedule {schedule:?}: {}", reason.trim()),
            );
            return None;
        }
        Some(CronTrigger {
            schedule,
            normalized,
            timezone,
        })
    }

    fn file(&mut self, f: Fields<'_>) -> Option<FileTrigger> {
        let path = self.string(f.get("path")?, "path");
        let pattern = self.opt_string(f, "pattern");
        let events = match f.get("events") {
            Some(n) => {
                let items = list_or_one(n);
                let mut out = Vec::new();
                for item in items {
                    match self.choice(item, "file event", &["create", "modify", "remove"])? {
                        "create" => out.push(FileEventKind::Create),
                        "modify" => out.push(FileEventKind::Modify),
                        _ => out.push(FileEventKind::Remove),
                    }
                }
                out
            }
            None => vec![
                FileEventKind::Create,
                FileEventKind::Modify,
                FileEventKind::Remove,
            ],
        };
        let recursive = match f.get("recursive") {
            Some(n) => self.bool(n, "recursive")?,
            None => false,
        };
        let debounce = match f.get("debounce") {
            Some(n) => Some(self.duration(n, "debounce")?),
            None => None,
        };
        Some(FileTrigger {
            path: path?,
            pattern,
            events,
            recursive,
            debounce,
        })
    }

    fn redis(&mut self, f: Fields<'_>) -> Option<RedisTrigger> {
        let channel = self.opt_string(f, "channel");
        let stream = self.opt_string(f, "stream");
        let group = self.opt_string(f, "group");
        let consumer = self.opt_string(f, "consumer");
        let source = match (channel, stream) {
            (Some(_), Some(_)) => {
                self.error(
                    f.key_location("stream"),
                    "use either channel (pub/sub) or stream (consumer group), not both",
                );
                return None;
            }
            (Some(channel), None) => {
                for extra in ["group", "consumer", "batch"] {
                    if f.has(extra) {
                        self.error(
                            f.key_location(extra),
                            format!("{extra} applies to stream, not channel"),
                        );
                    }
                }
                RedisSource::Channel(channel)
            }
            (None, Some(stream)) => {
                let Some(group) = group else {
                    self.error(
                        f.node.location,
                        "a redis stream needs \"group\" (the consumer group)",
                    );
                    return None;
                };
                RedisSource::Stream {
                    stream,
                    group,
                    consumer,
                }
            }
            (None, None) => {
                self.error(
                    f.node.location,
                    "the redis trigger needs \"channel\" (pub/sub) or \"stream\" + \"group\"",
                );
                return None;
            }
        };
        let batch = self.batch(f);
        Some(RedisTrigger {
            source,
            connection: self.connection(f, "url")?,
            batch: batch?,
        })
    }

    /// `batch: { size, wait }`: `Some(None)` when absent, `None` when it does not decode.
    fn batch(&mut self, f: Fields<'_>) -> Option<Option<Batch>> {
        let Some(node) = f.get("batch") else {
            return Some(None);
        };
        let b = self.fields(node, &BATCH)?;
        let size = self.int(b.get("size")?, "size", 1, Batch::MAX_SIZE as i64);
        let wait = match b.get("wait") {
            Some(n) => self.duration(n, "wait")?,
            None => Batch::DEFAULT_WAIT,
        };
        Some(Some(Batch {
            size: usize::try_from(size?).ok()?,
            wait,
        }))
    }

    fn sql(&mut self, f: Fields<'_>) -> Option<SqlTrigger> {
        let table = self.string(f.get("table")?, "table");
        let mode = match f.get("mode") {
            Some(n) => match self.choice(n, "mode", &["cdc", "poll"])? {
                "poll" => CaptureMode::Poll,
                _ => CaptureMode::Cdc,
            },
            None => CaptureMode::Cdc,
        };
        let operations = match f.get("operations") {
            Some(n) => {
                let mut out = Vec::new();
                for item in list_or_one(n) {
                    match self.choice(item, "operation", &["insert", "update", "delete"])? {
                        "insert" => out.push(RowOperation::Insert),
                        "update" => out.push(RowOperation::Update),
                        _ => out.push(RowOperation::Delete),
                    }
                }
                out
            }
            None => vec![
                RowOperation::Insert,
                RowOperation::Update,
                RowOperation::Delete,
            ],
        };
        let poll = match f.get("poll") {
            Some(n) => {
                let p = self.fields(n, &POLL)?;
                let column = self.string(p.get("column")?, "column");
                let every = self.duration(p.get("every")?, "every");
                Some(PollSettings {
                    column: column?,
                    every: every?,
                })
            }
            None => None,
        };
        if mode == CaptureMode::Poll && poll.is_none() {
            self.error_help(
                f.key_location("mode"),
                "mode poll needs \"poll\" with column and every",
                Some("poll: { column: updated_at, every: 30s }".into()),
            );
            return None;
        }
        Some(SqlTrigger {
            table: table?,
            mode,
            operations,
            poll,
            connection: self.connection(f, "url")?,
        })
    }

    /// `plugin:` — `name` plus either a `settings` map or the other keys, passed through.
    fn plugin(&mut self, node: &Node, table: &Table) -> Option<TriggerKind> {
        let f = self.fields_open(node, table)?;
        let name = self.string(f.get("name")?, "name")?;
        let others: Vec<_> = f.entries.iter().filter(|(k, _)| k.name != "name").collect();
        let settings = match (f.get("settings"), others.len()) {
            (Some(s), 1) if s.as_map().is_some() => s.to_value(),
            _ => Value::Object(
                others
                    .iter()
                    .map(|(k, v)| (k.name.clone(), v.to_value()))
                    .collect(),
            ),
        };
        Some(TriggerKind::Plugin { name, settings })
    }
}

fn list_or_one(node: &Node) -> Vec<&Node> {
    match node.as_seq() {
        Some(items) => items.iter().collect(),
        None => vec![node],
    }
}
