//! The workflow model. Field names follow DSL.md; comments note what the decoder guarantees.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::Value;
use crate::expr::{Expr, Template};

use super::names::{StepId, WorkflowName};

/// Where a node sits in its source file (1-based). Builder-made nodes have line 0.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Location {
    pub line: u32,
    pub column: u32,
}

/// A setting that is either fixed when the workflow is loaded or computed by an expression
/// at run time (`sleep: "${{ vars.backoff }}"`).
#[derive(Clone, Debug, PartialEq)]
pub enum Setting<T> {
    Fixed(T),
    Dynamic(Expr),
}

/// One validated workflow.
#[derive(Clone, Debug, PartialEq)]
pub struct Workflow {
    pub name: WorkflowName,
    pub description: Option<String>,
    /// Grows with every change; rollouts and version pinning use it. Defaults to 1.
    pub version: u32,
    pub labels: BTreeMap<String, String>,
    pub runs_on: RunsOn,
    pub inputs: Vec<InputSpec>,
    pub triggers: Vec<TriggerSpec>,
    /// Workflow-level `if`: an event it rejects is counted as skipped, not stored.
    pub when: Option<Expr>,
    pub unless: Option<Expr>,
    pub concurrency: Option<Concurrency>,
    pub timeout: Option<Duration>,
    /// Initial variables, evaluated once when an execution starts.
    pub vars: Vec<(String, Template)>,
    pub steps: Vec<Step>,
    pub output: Option<Template>,
    pub on_failure: Vec<Step>,
    /// Where the workflow came from (file path, or `<builder>`), for diagnostics and traces.
    pub source: String,
}

/// Where a workflow may be placed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RunsOn {
    Agent,
    Hub,
    #[default]
    Any,
}

/// The declared type of an input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputType {
    String,
    Number,
    Integer,
    Boolean,
    Object,
    Array,
}

impl InputType {
    pub fn name(self) -> &'static str {
        match self {
            InputType::String => "string",
            InputType::Number => "number",
            InputType::Integer => "integer",
            InputType::Boolean => "boolean",
            InputType::Object => "object",
            InputType::Array => "array",
        }
    }

    /// Whether `value` has this type (`number` accepts integers too).
    pub fn accepts(self, value: &Value) -> bool {
        match self {
            InputType::String => value.is_string(),
            InputType::Number => value.is_number(),
            InputType::Integer => value.is_i64() || value.is_u64(),
            InputType::Boolean => value.is_boolean(),
            InputType::Object => value.is_object(),
            InputType::Array => value.is_array(),
        }
    }
}

/// `inputs.<name>`: an input without a default is required.
#[derive(Clone, Debug, PartialEq)]
pub struct InputSpec {
    pub name: String,
    pub ty: InputType,
    pub default: Option<Value>,
    pub description: Option<String>,
}

/// `concurrency:` — at most `limit` running executions per `key`.
#[derive(Clone, Debug, PartialEq)]
pub struct Concurrency {
    pub limit: u32,
    pub key: Option<Template>,
    pub overflow: Overflow,
}

/// What happens to an event that finds its concurrency slots full.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Overflow {
    /// Recorded now, started when a slot frees (in arrival order).
    #[default]
    Queue,
    /// Refused and counted.
    Drop,
    /// The oldest running execution with the same key is cancelled; this one starts.
    Replace,
}

/// One entry of `triggers:`.
#[derive(Clone, Debug, PartialEq)]
pub struct TriggerSpec {
    pub kind: TriggerKind,
    pub location: Location,
}

impl TriggerSpec {
    /// The trigger type as written (`http`, `cron`, …).
    pub fn type_name(&self) -> &'static str {
        self.kind.type_name()
    }
}

/// Trigger settings, per type (DSL.md's trigger table). Connections are named (`connection`)
/// or inline (`url` / `brokers`); credentials only through `secrets`.
#[derive(Clone, Debug, PartialEq)]
pub enum TriggerKind {
    Http(HttpTrigger),
    Cron(CronTrigger),
    Interval {
        every: Duration,
    },
    File(FileTrigger),
    Mqtt(MqttTrigger),
    Event {
        event_type: String,
        source: Option<String>,
    },
    Startup,
    Kafka(KafkaTrigger),
    Nats(NatsTrigger),
    Redis(RedisTrigger),
    Postgres(SqlTrigger),
    Mysql(SqlTrigger),
    Plugin {
        name: String,
        settings: Value,
    },
}

impl TriggerKind {
    pub fn type_name(&self) -> &'static str {
        match self {
            TriggerKind::Http(_) => "http",
            TriggerKind::Cron(_) => "cron",
            TriggerKind::Interval { .. } => "interval",
            TriggerKind::File(_) => "file",
            TriggerKind::Mqtt(_) => "mqtt",
            TriggerKind::Event { .. } => "event",
            TriggerKind::Startup => "startup",
            TriggerKind::Kafka(_) => "kafka",
            TriggerKind::Nats(_) => "nats",
            TriggerKind::Redis(_) => "redis",
            TriggerKind::Postgres(_) => "postgres",
            TriggerKind::Mysql(_) => "mysql",
            TriggerKind::Plugin { .. } => "plugin",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct HttpTrigger {
    pub path: String,
    /// Upper-case HTTP method; default `POST`.
    pub method: String,
    pub auth: HttpAuth,
    /// The token (`auth: token`) or HMAC key (`auth: hmac`), normally `${{ secrets.X }}`.
    pub secret: Option<Template>,
    pub verify: Option<WebhookVerify>,
    pub response: HttpResponseMode,
    /// Largest accepted request body in bytes (extension; default 1 MiB).
    pub max_body: Option<u64>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HttpAuth {
    #[default]
    None,
    Token,
    Hmac,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WebhookVerify {
    Github,
    Stripe,
    Slack,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HttpResponseMode {
    /// Wait for the execution and answer with its `output`.
    #[default]
    Sync,
    /// Answer 202 with the execution id once the execution is durably recorded.
    Async,
}

/// `cron:` — the schedule is checked when the workflow is validated.
#[derive(Clone, Debug, PartialEq)]
pub struct CronTrigger {
    /// As written (5 or 6 fields).
    pub schedule: String,
    /// Normalised to 6 fields (seconds first), the form the scheduler parses.
    pub normalized: String,
    /// IANA zone name; default `UTC`.
    pub timezone: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileEventKind {
    Create,
    Modify,
    Remove,
}

#[derive(Clone, Debug, PartialEq)]
pub struct FileTrigger {
    pub path: String,
    pub pattern: Option<String>,
    /// Default: all three.
    pub events: Vec<FileEventKind>,
    pub recursive: bool,
    pub debounce: Option<Duration>,
}

/// Most broker sessions one `mqtt` trigger may open (`sessions:`).
pub const MAX_MQTT_SESSIONS: u16 = 16;

#[derive(Clone, Debug, PartialEq)]
pub struct MqttTrigger {
    pub topic: String,
    pub qos: u8,
    pub broker: Option<String>,
    pub connection: Option<String>,
    /// Broker sessions sharing the subscription (`$share/…`) when above 1; default 1.
    pub sessions: u16,
}

/// Where a hub trigger connects: a name from the runtime's configuration, or inline.
#[derive(Clone, Debug, PartialEq)]
pub enum Connection {
    Named(String),
    Url(String),
    /// No connection given: the runtime's default one.
    Default,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KafkaStart {
    #[default]
    Latest,
    Earliest,
}

#[derive(Clone, Debug, PartialEq)]
pub struct KafkaTrigger {
    pub topics: Vec<String>,
    pub group: Option<String>,
    pub connection: Connection,
    pub from: KafkaStart,
    /// One execution per batch of messages instead of one per message.
    pub batch: Option<Batch>,
}

/// `batch:` of the `kafka`, `nats` (JetStream) and `redis` (stream) triggers: up to `size`
/// source messages per execution, gathered for at most `wait` after the first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Batch {
    pub size: usize,
    pub wait: Duration,
}

impl Batch {
    /// The largest accepted `size`.
    pub const MAX_SIZE: usize = 10_000;
    /// `wait` when not given.
    pub const DEFAULT_WAIT: Duration = Duration::from_secs(1);
    /// A batch also closes once its messages reach this many bytes (payloads, keys and
    /// field names; a single larger message still makes a batch of its own): `size` times a
    /// source's largest message must not decide the hub's memory.
    pub const MAX_BYTES: usize = 16 * 1024 * 1024;
}

#[derive(Clone, Debug, PartialEq)]
pub struct NatsTrigger {
    pub subject: String,
    pub queue: Option<String>,
    pub stream: Option<String>,
    pub durable: Option<String>,
    pub connection: Connection,
    /// JetStream only: one execution per batch of messages instead of one per message.
    pub batch: Option<Batch>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum RedisSource {
    /// Pub/sub: a channel name or pattern (`*`, `?`, `[…]` make it a pattern).
    Channel(String),
    Stream {
        stream: String,
        group: String,
        consumer: Option<String>,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct RedisTrigger {
    pub source: RedisSource,
    pub connection: Connection,
    /// Streams only: one execution per batch of entries instead of one per entry.
    pub batch: Option<Batch>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CaptureMode {
    #[default]
    Cdc,
    Poll,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RowOperation {
    Insert,
    Update,
    Delete,
}

#[derive(Clone, Debug, PartialEq)]
pub struct PollSettings {
    pub column: String,
    pub every: Duration,
}

/// `postgres:` and `mysql:` change capture or polling.
#[derive(Clone, Debug, PartialEq)]
pub struct SqlTrigger {
    pub table: String,
    pub mode: CaptureMode,
    /// Default: all three.
    pub operations: Vec<RowOperation>,
    /// Required when `mode: poll`.
    pub poll: Option<PollSettings>,
    pub connection: Connection,
}

/// One step: a kind plus the common keys.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    pub id: Option<StepId>,
    pub name: Option<String>,
    pub when: Option<Expr>,
    pub unless: Option<Expr>,
    pub retry: Option<Retry>,
    pub timeout: Option<Setting<Duration>>,
    /// Steps run when this step fails after its retries; the workflow then continues.
    /// `Some(vec![])` swallows the failure.
    pub catch: Option<Vec<Step>>,
    /// Replaces the step's output; `result` is what the step itself produced.
    pub output: Option<Template>,
    pub kind: StepKind,
    pub location: Location,
}

impl Step {
    /// A step of this kind with no common keys set.
    pub fn of(kind: StepKind) -> Step {
        Step {
            id: None,
            name: None,
            when: None,
            unless: None,
            retry: None,
            timeout: None,
            catch: None,
            output: None,
            kind,
            location: Location::default(),
        }
    }
}

/// The one kind key of a step.
#[derive(Clone, Debug, PartialEq)]
pub enum StepKind {
    Action(ActionStep),
    /// `set: { name: value }` — assigns workflow variables, in order.
    Set(Vec<(String, Template)>),
    Switch(SwitchStep),
    Parallel(ParallelStep),
    Foreach(ForeachStep),
    Loop(LoopStep),
    Call(CallStep),
    Sleep(SleepStep),
    Wait(WaitStep),
    Emit(EmitStep),
    Group(Vec<Step>),
    Fail {
        message: Template,
    },
    Return(Template),
}

impl StepKind {
    /// The kind key as written.
    pub fn key(&self) -> &'static str {
        match self {
            StepKind::Action(_) => "action",
            StepKind::Set(_) => "set",
            StepKind::Switch(_) => "switch",
            StepKind::Parallel(_) => "parallel",
            StepKind::Foreach(_) => "foreach",
            StepKind::Loop(_) => "loop",
            StepKind::Call(_) => "call",
            StepKind::Sleep(_) => "sleep",
            StepKind::Wait(_) => "wait",
            StepKind::Emit(_) => "emit",
            StepKind::Group(_) => "group",
            StepKind::Fail { .. } => "fail",
            StepKind::Return(_) => "return",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct ActionStep {
    /// The action type (`http`, `log`, `slack.post` …).
    pub action: String,
    pub with: Template,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SwitchCase {
    pub when: Expr,
    pub steps: Vec<Step>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SwitchStep {
    pub cases: Vec<SwitchCase>,
    pub default: Option<Vec<Step>>,
}

/// How a `parallel` decides.
#[derive(Clone, Debug, PartialEq)]
pub enum Join {
    /// Every branch succeeds (the default); the first failure fails the step.
    All,
    /// The first success wins; fails only if all fail.
    Any,
    /// The first branch to finish decides, success or failure.
    First,
    /// N successes.
    Count(u32),
    /// Checked after each branch finishes, over `branches`.
    When(Expr),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Branch {
    pub name: String,
    pub steps: Vec<Step>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ParallelStep {
    pub join: Join,
    pub branches: Vec<Branch>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ForeachStep {
    pub items: Template,
    /// The item's name inside the steps (`as:`; default `item`). The position is `index`.
    pub item_name: String,
    /// How many iterations run at once (default 1).
    pub concurrency: u32,
    pub steps: Vec<Step>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum LoopCondition {
    /// Checked before each iteration.
    While(Expr),
    /// Checked after each iteration.
    Until(Expr),
}

#[derive(Clone, Debug, PartialEq)]
pub struct LoopStep {
    pub condition: LoopCondition,
    /// Reaching it before the condition ends the loop fails the step.
    pub max: u32,
    pub steps: Vec<Step>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct CallStep {
    pub workflow: String,
    /// Pin a version of the child; default: the newest.
    pub version: Option<u32>,
    pub input: Template,
    /// `false`: start the child and go on (output is `{execution: id}`).
    pub wait: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub enum SleepStep {
    For(Setting<Duration>),
    /// An RFC 3339 timestamp (or milliseconds since the epoch) computed by an expression.
    Until(Template),
}

#[derive(Clone, Debug, PartialEq)]
pub struct WaitStep {
    /// Glob over the event type.
    pub event: String,
    /// Correlation: evaluated with the candidate as `event` and the execution's context.
    pub matches: Option<Expr>,
    /// Waiting longer fails the step. None: wait forever.
    pub timeout: Option<Setting<Duration>>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct EmitStep {
    pub event_type: Template,
    pub data: Template,
    /// With a topic the event is also published over MQTT.
    pub topic: Option<Template>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Backoff {
    #[default]
    Fixed,
    Linear,
    Exponential,
}

/// `retry:` — `attempts` counts every try, the first one included.
#[derive(Clone, Debug, PartialEq)]
pub struct Retry {
    pub attempts: u32,
    pub backoff: Backoff,
    pub delay: Duration,
    pub max_delay: Option<Duration>,
    pub factor: f64,
    pub jitter: bool,
    /// Retry only when this holds over `error`; default: only retryable errors.
    pub when: Option<Expr>,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            attempts: 1,
            backoff: Backoff::Fixed,
            delay: Duration::from_secs(1),
            max_delay: None,
            factor: 2.0,
            jitter: true,
            when: None,
        }
    }
}

impl Workflow {
    /// Visits every step of the workflow, depth first, `on_failure` included.
    pub fn walk_steps<'a>(&'a self, visit: &mut dyn FnMut(&'a Step)) {
        walk(&self.steps, visit);
        walk(&self.on_failure, visit);
    }

    /// The names of the workflows this one calls.
    pub fn called_workflows(&self) -> Vec<&str> {
        let mut out = Vec::new();
        self.walk_steps(&mut |step| {
            if let StepKind::Call(call) = &step.kind {
                out.push(call.workflow.as_str());
            }
        });
        out
    }
}

/// Visits `steps` and every nested block, depth first.
pub fn walk<'a>(steps: &'a [Step], visit: &mut dyn FnMut(&'a Step)) {
    for step in steps {
        visit(step);
        for block in step.blocks() {
            walk(block, visit);
        }
    }
}

impl Step {
    /// The nested blocks of this step (catch included), in order.
    pub fn blocks(&self) -> Vec<&[Step]> {
        let mut blocks: Vec<&[Step]> = Vec::new();
        match &self.kind {
            StepKind::Switch(s) => {
                blocks.extend(s.cases.iter().map(|c| c.steps.as_slice()));
                blocks.extend(s.default.as_deref());
            }
            StepKind::Parallel(p) => blocks.extend(p.branches.iter().map(|b| b.steps.as_slice())),
            StepKind::Foreach(f) => blocks.push(&f.steps),
            StepKind::Loop(l) => blocks.push(&l.steps),
            StepKind::Group(g) => blocks.push(g),
            _ => {}
        }
        blocks.extend(self.catch.as_deref());
        blocks
    }
}
