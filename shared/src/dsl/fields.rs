//! The field tables: one description per object of the language (its keys, which are required,
//! their JSON types and what they mean). They drive unknown-key detection ("did you mean")
//! and missing-key checks in the decoder, and the JSON Schema ([`super::schema`]): one source
//! of truth, so the schema cannot drift from what the decoder accepts.

/// The value a key takes, as the schema describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ty {
    /// Text; may hold `${{ }}` interpolations.
    Str,
    /// An integer in `min..=max`, or an expression where the decoder allows one.
    Int {
        min: i64,
        max: i64,
    },
    Num,
    Bool,
    /// `250ms`, `1m30s`, …
    Duration,
    /// An expression, with or without `${{ }}`, or a boolean literal.
    Cond,
    /// Any value; maps and lists may hold expressions at any depth.
    Any,
    Enum(&'static [&'static str]),
    /// A map whose values have this type.
    Map(&'static Ty),
    List(&'static Ty),
    /// Another table, by name.
    Obj(&'static str),
    /// A list of steps.
    Steps,
    /// Any of these forms.
    OneOf(&'static [Ty]),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field {
    pub name: &'static str,
    pub required: bool,
    pub ty: Ty,
    pub description: &'static str,
}

/// One object of the language.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Table {
    /// The `$defs` name in the schema.
    pub name: &'static str,
    /// How messages name the object: `unknown key "x" in {what}`.
    pub what: &'static str,
    pub description: &'static str,
    pub fields: &'static [Field],
}

impl Table {
    pub fn field(&self, name: &str) -> Option<&'static Field> {
        self.fields.iter().find(|f| f.name == name)
    }
}

const fn f(name: &'static str, ty: Ty, description: &'static str) -> Field {
    Field {
        name,
        required: false,
        ty,
        description,
    }
}

const fn req(name: &'static str, ty: Ty, description: &'static str) -> Field {
    Field {
        name,
        required: true,
        ty,
        description,
    }
}

const POSITIVE: Ty = Ty::Int {
    min: 1,
    max: u32::MAX as i64,
};
const STRINGS: Ty = Ty::List(&Ty::Str);
const STR_OR_LIST: Ty = Ty::OneOf(&[Ty::Str, STRINGS]);
const DURATION_OR_EXPR: Ty = Ty::Duration;

pub const WORKFLOW: Table = Table {
    name: "workflow",
    what: "workflow",
    description: "One Reactor workflow: when X happens, do Y, then Z, unless A, and only if B.",
    fields: &[
        req("reactor", Ty::Int { min: 1, max: 1 }, "language version; 1"),
        req(
            "name",
            Ty::Str,
            "unique per fleet: [a-z0-9][a-z0-9._-]{0,63}",
        ),
        f("description", Ty::Str, "what the workflow is for"),
        f(
            "version",
            POSITIVE,
            "grows with every change; rollouts use it (default 1)",
        ),
        f("labels", Ty::Map(&Ty::Str), "free-form labels"),
        f(
            "runs_on",
            Ty::Enum(&["agent", "hub", "any"]),
            "where the workflow may be placed (default any)",
        ),
        f(
            "inputs",
            Ty::Map(&Ty::Obj("input")),
            "inputs for manual runs and call: from other workflows",
        ),
        f(
            "triggers",
            Ty::List(&Ty::Obj("trigger")),
            "when the workflow runs; each item has exactly one key, the trigger type",
        ),
        f("if", Ty::Cond, "run only when this holds for the event"),
        f("unless", Ty::Cond, "skip the event when this holds"),
        f(
            "concurrency",
            Ty::Obj("concurrency"),
            "at most limit running executions per key",
        ),
        f("timeout", Ty::Duration, "the longest an execution may run"),
        f(
            "vars",
            Ty::Map(&Ty::Any),
            "workflow variables and their initial values",
        ),
        req("steps", Ty::Steps, "what the workflow does, in order"),
        f(
            "output",
            Ty::Any,
            "the execution's output (default: the last step's output)",
        ),
        f(
            "on_failure",
            Ty::Steps,
            "steps run when the execution fails; error is visible",
        ),
    ],
};

pub const INPUT: Table = Table {
    name: "input",
    what: "input",
    description: "A workflow input; without default it is required.",
    fields: &[
        f(
            "type",
            Ty::Enum(&["string", "number", "integer", "boolean", "object", "array"]),
            "the input's type (default: the default's type, else string)",
        ),
        f("default", Ty::Any, "the value when the input is not given"),
        f("description", Ty::Str, "what the input means"),
    ],
};

pub const CONCURRENCY: Table = Table {
    name: "concurrency",
    what: "concurrency",
    description: "At most limit running executions per key.",
    fields: &[
        req("limit", POSITIVE, "running executions per key"),
        f("key", Ty::Str, "groups executions (default: one group)"),
        f(
            "overflow",
            Ty::Enum(&["queue", "drop", "replace"]),
            "what happens to an event that finds the slots full (default queue)",
        ),
    ],
};

pub const RETRY: Table = Table {
    name: "retry",
    what: "retry",
    description: "Try a failed step again.",
    fields: &[
        f(
            "attempts",
            POSITIVE,
            "total tries, the first included (default 1)",
        ),
        f(
            "backoff",
            Ty::Enum(&["fixed", "linear", "exponential"]),
            "how the delay grows (default fixed)",
        ),
        f("delay", Ty::Duration, "the first delay (default 1s)"),
        f("max_delay", Ty::Duration, "the longest delay"),
        f(
            "factor",
            Ty::Num,
            "growth factor for exponential backoff (default 2)",
        ),
        f("jitter", Ty::Bool, "randomize delays (default true)"),
        f(
            "if",
            Ty::Cond,
            "retry only when this holds over error (default: retryable errors)",
        ),
    ],
};

/// The kind keys of a step, in the order messages list them.
pub const STEP_KINDS: &[&str] = &[
    "action", "set", "switch", "parallel", "foreach", "loop", "call", "sleep", "wait", "emit",
    "group", "fail", "return",
];

pub const STEP: Table = Table {
    name: "step",
    what: "step",
    description: "One step: exactly one kind key plus common keys.",
    fields: &[
        f(
            "id",
            Ty::Str,
            "[a-z0-9_-]+, unique in the workflow; required when referenced",
        ),
        f("name", Ty::Str, "a label for people"),
        f("if", Ty::Cond, "run only when this holds"),
        f("unless", Ty::Cond, "skip when this holds"),
        f("retry", Ty::Obj("retry"), "try again on failure"),
        f("timeout", DURATION_OR_EXPR, "the longest the step may run"),
        f(
            "catch",
            Ty::Steps,
            "steps run when the step fails after its retries; the workflow then continues",
        ),
        f(
            "output",
            Ty::Any,
            "replaces the step's output; result is what the step produced",
        ),
        f("action", Ty::Str, "run an action of this type"),
        f("with", Ty::Any, "the action's settings"),
        f("set", Ty::Map(&Ty::Any), "assign workflow variables"),
        f(
            "switch",
            Ty::List(&Ty::Obj("switch_case")),
            "the first matching branch runs",
        ),
        f("parallel", Ty::Obj("parallel"), "branches run at once"),
        f(
            "foreach",
            Ty::OneOf(&[Ty::Str, Ty::List(&Ty::Any)]),
            "run steps once per item",
        ),
        f(
            "as",
            Ty::Str,
            "the item's name inside foreach (default item)",
        ),
        f(
            "concurrency",
            POSITIVE,
            "foreach iterations that run at once (default 1)",
        ),
        f("steps", Ty::Steps, "the block of a foreach or loop"),
        f(
            "loop",
            Ty::Obj("loop"),
            "repeat steps while or until a condition",
        ),
        f(
            "call",
            Ty::OneOf(&[Ty::Str, Ty::Obj("call")]),
            "run another workflow",
        ),
        f(
            "sleep",
            Ty::OneOf(&[Ty::Duration, Ty::Obj("sleep_until")]),
            "a durable timer",
        ),
        f(
            "wait",
            Ty::Obj("wait"),
            "a durable wait for a matching event",
        ),
        f("emit", Ty::Obj("emit"), "publish an event"),
        f(
            "group",
            Ty::Steps,
            "a block sharing retry, catch and timeout",
        ),
        f(
            "fail",
            Ty::OneOf(&[Ty::Str, Ty::Obj("fail")]),
            "fail with a message",
        ),
        f(
            "return",
            Ty::Any,
            "finish successfully now with this output",
        ),
    ],
};

pub const SWITCH_CASE: Table = Table {
    name: "switch_case",
    what: "switch branch",
    description: "{ when, steps } or, last, { default: steps }.",
    fields: &[
        f("when", Ty::Cond, "the branch runs when this holds"),
        f("steps", Ty::Steps, "the branch's steps"),
        f("default", Ty::Steps, "steps run when no branch matches"),
    ],
};

pub const PARALLEL: Table = Table {
    name: "parallel",
    what: "parallel",
    description: "Branches that run at once.",
    fields: &[
        f(
            "join",
            Ty::OneOf(&[Ty::Enum(&["all", "any", "first"]), Ty::Obj("join")]),
            "how the step decides (default all)",
        ),
        req("branches", Ty::Map(&Ty::Steps), "branch name to its steps"),
    ],
};

pub const JOIN: Table = Table {
    name: "join",
    what: "join",
    description: "{ count: N } or { when: expr over branches }.",
    fields: &[
        f("count", POSITIVE, "this many successes decide"),
        f(
            "when",
            Ty::Cond,
            "checked after each branch finishes, over branches",
        ),
    ],
};

pub const LOOP: Table = Table {
    name: "loop",
    what: "loop",
    description: "Repeat the steps; reaching max before the condition fails the step.",
    fields: &[
        f("while", Ty::Cond, "checked before each iteration"),
        f("until", Ty::Cond, "checked after each iteration"),
        req("max", POSITIVE, "the most iterations before the step fails"),
    ],
};

pub const CALL: Table = Table {
    name: "call",
    what: "call",
    description: "Run another workflow.",
    fields: &[
        req("workflow", Ty::Str, "the called workflow's name"),
        f("version", POSITIVE, "pin a version (default: the newest)"),
        f("input", Ty::Map(&Ty::Any), "the child's inputs"),
        f(
            "wait",
            Ty::Bool,
            "wait for the child (default true); false starts it and goes on",
        ),
    ],
};

pub const SLEEP_UNTIL: Table = Table {
    name: "sleep_until",
    what: "sleep",
    description: "Sleep until a timestamp.",
    fields: &[req(
        "until",
        Ty::Str,
        "an RFC 3339 timestamp or epoch milliseconds, usually an expression",
    )],
};

pub const WAIT: Table = Table {
    name: "wait",
    what: "wait",
    description: "A durable wait for a matching event; its output is the event.",
    fields: &[
        req("event", Ty::Str, "glob over the event type"),
        f("match", Ty::Cond, "correlation over the candidate event"),
        f("timeout", DURATION_OR_EXPR, "waiting longer fails the step"),
    ],
};

pub const EMIT: Table = Table {
    name: "emit",
    what: "emit",
    description: "Publish an event on the local bus (and MQTT with topic).",
    fields: &[
        req("type", Ty::Str, "the event type"),
        f("data", Ty::Any, "the payload"),
        f("topic", Ty::Str, "also publish over MQTT on this topic"),
    ],
};

pub const FAIL: Table = Table {
    name: "fail",
    what: "fail",
    description: "Fail with this message.",
    fields: &[req("message", Ty::Str, "the error message")],
};

// ---- triggers ----

pub const HTTP: Table = Table {
    name: "http_trigger",
    what: "http trigger",
    description: "An HTTP endpoint.",
    fields: &[
        req("path", Ty::Str, "the request path, like /hooks/temp"),
        f("method", Ty::Str, "the HTTP method (default POST)"),
        f(
            "auth",
            Ty::Enum(&["none", "token", "hmac"]),
            "how callers authenticate (default none)",
        ),
        f(
            "secret",
            Ty::Str,
            "the token or HMAC key, normally ${{ secrets.X }}",
        ),
        f(
            "verify",
            Ty::Enum(&["github", "stripe", "slack"]),
            "verify a provider's webhook signature",
        ),
        f(
            "response",
            Ty::Enum(&["sync", "async"]),
            "sync waits for output; async answers 202 with the execution id",
        ),
        f(
            "max_body",
            POSITIVE,
            "largest accepted body in bytes (default 1 MiB)",
        ),
    ],
};

pub const CRON: Table = Table {
    name: "cron_trigger",
    what: "cron trigger",
    description: "A schedule; a bare string is the schedule.",
    fields: &[
        req(
            "schedule",
            Ty::Str,
            "6 fields, seconds first (5 fields allowed)",
        ),
        f("timezone", Ty::Str, "IANA zone name (default UTC)"),
    ],
};

pub const INTERVAL: Table = Table {
    name: "interval_trigger",
    what: "interval trigger",
    description: "Every so often.",
    fields: &[req("every", Ty::Duration, "the period")],
};

pub const FILE: Table = Table {
    name: "file_trigger",
    what: "file trigger",
    description: "Changes to files.",
    fields: &[
        req("path", Ty::Str, "the folder or file watched"),
        f("pattern", Ty::Str, "glob over file names"),
        f(
            "events",
            Ty::List(&Ty::Enum(&["create", "modify", "remove"])),
            "which changes (default all)",
        ),
        f("recursive", Ty::Bool, "watch sub-folders (default false)"),
        f("debounce", Ty::Duration, "wait for changes to settle"),
    ],
};

pub const MQTT: Table = Table {
    name: "mqtt_trigger",
    what: "mqtt trigger",
    description: "Messages on an MQTT topic.",
    fields: &[
        req("topic", Ty::Str, "topic filter; + and # wildcards"),
        f("qos", Ty::Int { min: 0, max: 2 }, "0, 1 or 2 (default 0)"),
        f(
            "broker",
            Ty::Str,
            "mqtt://host:port or mqtts://… (default: configured)",
        ),
        f("connection", Ty::Str, "a configured connection's name"),
        f(
            "sessions",
            Ty::Int { min: 1, max: 16 },
            "broker sessions sharing the subscription ($share), for throughput (default 1)",
        ),
    ],
};

pub const EVENT: Table = Table {
    name: "event_trigger",
    what: "event trigger",
    description: "Events emitted by other workflows or streamed from devices.",
    fields: &[
        req("type", Ty::Str, "glob over the event type"),
        f("source", Ty::Str, "glob over the event source"),
    ],
};

pub const STARTUP: Table = Table {
    name: "startup_trigger",
    what: "startup trigger",
    description: "Once when the runtime starts.",
    fields: &[],
};

const CONNECTION: Field = f("connection", Ty::Str, "a configured connection's name");
const URL: Field = f("url", Ty::Str, "an inline connection address");

pub const KAFKA: Table = Table {
    name: "kafka_trigger",
    what: "kafka trigger",
    description: "Records from Kafka topics (hub).",
    fields: &[
        req("topic", STR_OR_LIST, "one topic or a list"),
        f("group", Ty::Str, "the consumer group"),
        f("brokers", Ty::Str, "host:port,… (inline connection)"),
        CONNECTION,
        f(
            "from",
            Ty::Enum(&["latest", "earliest"]),
            "where a new group starts (default latest)",
        ),
        BATCH_FIELD,
    ],
};

const BATCH_FIELD: Field = f(
    "batch",
    Ty::Obj("batch"),
    "one execution per batch of messages: { size, wait }",
);

pub const BATCH: Table = Table {
    name: "batch",
    what: "batch",
    description: "Source messages gathered into one execution.",
    fields: &[
        req(
            "size",
            Ty::Int {
                min: 1,
                max: crate::flow::Batch::MAX_SIZE as i64,
            },
            "messages per execution at most",
        ),
        f(
            "wait",
            Ty::Duration,
            "how long a batch gathers after its first message (default 1s)",
        ),
    ],
};

pub const NATS: Table = Table {
    name: "nats_trigger",
    what: "nats trigger",
    description: "NATS messages, or a JetStream consumer (hub).",
    fields: &[
        req("subject", Ty::Str, "the subject; * and > wildcards"),
        f("queue", Ty::Str, "queue group"),
        f("stream", Ty::Str, "JetStream stream"),
        f("durable", Ty::Str, "JetStream durable consumer name"),
        BATCH_FIELD,
        URL,
        CONNECTION,
    ],
};

pub const REDIS: Table = Table {
    name: "redis_trigger",
    what: "redis trigger",
    description: "Redis pub/sub (channel) or a stream consumer group (hub).",
    fields: &[
        f("channel", Ty::Str, "pub/sub channel or pattern"),
        f("stream", Ty::Str, "stream key"),
        f("group", Ty::Str, "consumer group (with stream)"),
        f("consumer", Ty::Str, "consumer name (with stream)"),
        BATCH_FIELD,
        URL,
        CONNECTION,
    ],
};

pub const POLL: Table = Table {
    name: "poll",
    what: "poll",
    description: "Polling settings.",
    fields: &[
        req("column", Ty::Str, "an increasing column (id or timestamp)"),
        req("every", Ty::Duration, "the polling period"),
    ],
};

const SQL_FIELDS: &[Field] = &[
    req("table", Ty::Str, "the table"),
    f(
        "mode",
        Ty::Enum(&["cdc", "poll"]),
        "change capture or polling (default cdc)",
    ),
    f(
        "operations",
        Ty::List(&Ty::Enum(&["insert", "update", "delete"])),
        "which row changes (default all)",
    ),
    f("poll", Ty::Obj("poll"), "required with mode: poll"),
    URL,
    CONNECTION,
];

pub const POSTGRES: Table = Table {
    name: "postgres_trigger",
    what: "postgres trigger",
    description: "PostgreSQL row changes (hub).",
    fields: SQL_FIELDS,
};

pub const MYSQL: Table = Table {
    name: "mysql_trigger",
    what: "mysql trigger",
    description: "MySQL row changes (hub).",
    fields: SQL_FIELDS,
};

pub const PLUGIN: Table = Table {
    name: "plugin_trigger",
    what: "plugin trigger",
    description: "A plugin trigger; keys other than name are passed to the plugin.",
    fields: &[
        req("name", Ty::Str, "the plugin"),
        f(
            "settings",
            Ty::Map(&Ty::Any),
            "settings passed to the plugin",
        ),
    ],
};

/// Trigger types: key, settings table, whether only the hub runs it.
pub const TRIGGERS: &[(&str, &Table, bool)] = &[
    ("http", &HTTP, false),
    ("cron", &CRON, false),
    ("interval", &INTERVAL, false),
    ("file", &FILE, false),
    ("mqtt", &MQTT, false),
    ("event", &EVENT, false),
    ("startup", &STARTUP, false),
    ("kafka", &KAFKA, true),
    ("nats", &NATS, true),
    ("redis", &REDIS, true),
    ("postgres", &POSTGRES, true),
    ("mysql", &MYSQL, true),
    ("plugin", &PLUGIN, false),
];

/// Every table, for the schema's `$defs`.
pub const TABLES: &[&Table] = &[
    &WORKFLOW,
    &INPUT,
    &CONCURRENCY,
    &RETRY,
    &STEP,
    &SWITCH_CASE,
    &PARALLEL,
    &JOIN,
    &LOOP,
    &CALL,
    &SLEEP_UNTIL,
    &WAIT,
    &EMIT,
    &FAIL,
    &HTTP,
    &CRON,
    &INTERVAL,
    &FILE,
    &MQTT,
    &EVENT,
    &STARTUP,
    &KAFKA,
    &NATS,
    &REDIS,
    &BATCH,
    &POLL,
    &POSTGRES,
    &MYSQL,
    &PLUGIN,
];

/// The closest of `candidates` to `word`, when close enough to be a likely typo.
pub fn suggest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let limit = (word.chars().count() / 3).max(1);
    candidates
        .into_iter()
        .map(|c| (strsim::damerau_levenshtein(word, c), c))
        .filter(|(d, c)| *d <= limit || (c.len() >= 4 && word.starts_with(c)))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions() {
        assert_eq!(
            suggest("retyr", STEP.fields.iter().map(|f| f.name)),
            Some("retry")
        );
        assert_eq!(
            suggest("actoin", STEP.fields.iter().map(|f| f.name)),
            Some("action")
        );
        assert_eq!(suggest("zzzzzz", STEP.fields.iter().map(|f| f.name)), None);
    }
}
