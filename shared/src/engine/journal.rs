//! What the engine records: execution ids, events, facts (the journal) and execution records.
//!
//! The journal of an execution is the ordered list of [`Fact`]s the driver fed its state
//! machine. Replaying the facts into a fresh machine rebuilds the exact state, so nothing else
//! about a running execution needs to be stored.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{Map, Value};

/// Milliseconds since the Unix epoch.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Timestamp(pub i64);

impl Timestamp {
    pub fn now() -> Timestamp {
        Timestamp(chrono::Utc::now().timestamp_millis())
    }
    pub fn millis(self) -> i64 {
        self.0
    }
    pub fn plus(self, duration: std::time::Duration) -> Timestamp {
        Timestamp(
            self.0
                .saturating_add(i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)),
        )
    }
    /// RFC 3339 with milliseconds, UTC.
    pub fn to_rfc3339(self) -> String {
        chrono::DateTime::from_timestamp_millis(self.0)
            .unwrap_or_default()
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    }
}

/// A time-ordered unique execution id (a ULID).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ExecutionId(pub ulid::Ulid);

impl ExecutionId {
    pub fn new() -> ExecutionId {
        ExecutionId(ulid::Ulid::new())
    }
    /// A child's id derived from its parent and the calling step, so that re-issuing a `call`
    /// after a crash names the same child.
    pub fn derived(parent: ExecutionId, key: &str) -> ExecutionId {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in key.bytes() {
            hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
        let random = parent.0.random() ^ u128::from(hash) ^ (u128::from(hash) << 64);
        ExecutionId(ulid::Ulid::from_parts(parent.0.timestamp_ms(), random))
    }
}

impl Default for ExecutionId {
    fn default() -> Self {
        ExecutionId::new()
    }
}

impl fmt::Display for ExecutionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for ExecutionId {
    type Err = ulid::DecodeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ulid::Ulid::from_string(s).map(ExecutionId)
    }
}

/// A triggering event, with CloudEvents 1.0 attribute names.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub id: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub source: String,
    /// RFC 3339.
    pub time: String,
    pub data: Value,
    /// Trigger specifics: topic, headers, path, query, file path, offset …
    pub meta: Value,
}

impl Event {
    /// An event of `event_type` from `source` carrying `data`, stamped now.
    pub fn new(event_type: &str, source: &str, data: Value) -> Event {
        Event {
            id: ulid::Ulid::new().to_string(),
            event_type: event_type.to_string(),
            source: source.to_string(),
            time: Timestamp::now().to_rfc3339(),
            data,
            meta: Value::Object(Map::new()),
        }
    }

    /// The event as expressions see it (`event.type`, `event.data` …).
    ///
    /// Built from clones, not through `serde_json::json!`: that serialises `data` and `meta`
    /// entry by entry into fresh maps (hashing every key again), and this runs once per
    /// execution.
    pub fn to_value(&self) -> Value {
        self.clone().into_value()
    }

    /// The event as expressions see it, taking its fields.
    pub(crate) fn into_value(self) -> Value {
        let mut map = Map::with_capacity(6);
        map.insert("id".into(), Value::String(self.id));
        map.insert("type".into(), Value::String(self.event_type));
        map.insert("source".into(), Value::String(self.source));
        map.insert("time".into(), Value::String(self.time));
        map.insert("data".into(), self.data);
        map.insert("meta".into(), self.meta);
        Value::Object(map)
    }
}

/// A failure as expressions see it (`error.message`, `error.type`, `error.step`,
/// `error.status`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorInfo {
    pub message: String,
    /// `action`, `http`, `timeout`, `fail`, `expression`, `cancelled`, `input`, `loop_max` …
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Whether trying again may help (5xx, connection errors, timeouts).
    #[serde(default)]
    pub retryable: bool,
}

impl ErrorInfo {
    pub fn new(kind: &str, message: impl Into<String>) -> ErrorInfo {
        ErrorInfo {
            message: message.into(),
            kind: kind.to_string(),
            step: None,
            status: None,
            retryable: false,
        }
    }
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

/// The outcome of a performed effect.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Outcome {
    Succeeded(Value),
    Failed(ErrorInfo),
}

/// Links a child execution (from `call:`) to the step that started it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ParentLink {
    pub execution: ExecutionId,
    pub key: String,
}

/// One journal entry. Facts are applied to the state machine in journal order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Fact {
    /// Always the first fact.
    Started {
        workflow: String,
        version: u32,
        event: Event,
        inputs: Value,
        parent: Option<ParentLink>,
        at: Timestamp,
    },
    /// A side effect is about to be performed (journaled durably before it is).
    EffectStarted {
        key: String,
        attempt: u32,
        at: Timestamp,
    },
    /// An effect (action, emit, child workflow) ended.
    EffectFinished {
        key: String,
        attempt: u32,
        outcome: Outcome,
        at: Timestamp,
    },
    TimerFired {
        key: String,
        at: Timestamp,
    },
    /// A `wait` step's event arrived.
    EventReceived {
        key: String,
        event: Event,
        at: Timestamp,
    },
    /// `call` with `wait: false`: the child was started.
    ChildStarted {
        key: String,
        child: ExecutionId,
        at: Timestamp,
    },
    CancelRequested {
        reason: String,
        at: Timestamp,
    },
}

impl Fact {
    pub fn at(&self) -> Timestamp {
        match self {
            Fact::Started { at, .. }
            | Fact::EffectStarted { at, .. }
            | Fact::EffectFinished { at, .. }
            | Fact::TimerFired { at, .. }
            | Fact::EventReceived { at, .. }
            | Fact::ChildStarted { at, .. }
            | Fact::CancelRequested { at, .. } => *at,
        }
    }
}

/// Execution status. `Queued` (an extension of DSL.md's list) is an execution recorded but
/// waiting for a `concurrency` slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExecutionStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl ExecutionStatus {
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            ExecutionStatus::Succeeded | ExecutionStatus::Failed | ExecutionStatus::Cancelled
        )
    }
    pub fn as_str(self) -> &'static str {
        match self {
            ExecutionStatus::Queued => "queued",
            ExecutionStatus::Running => "running",
            ExecutionStatus::Succeeded => "succeeded",
            ExecutionStatus::Failed => "failed",
            ExecutionStatus::Cancelled => "cancelled",
        }
    }
}

/// Step status as reported in `steps.<id>.status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StepStatus {
    Running,
    Succeeded,
    Failed,
    Skipped,
    Cancelled,
}

impl StepStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            StepStatus::Running => "running",
            StepStatus::Succeeded => "succeeded",
            StepStatus::Failed => "failed",
            StepStatus::Skipped => "skipped",
            StepStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(text: &str) -> Option<StepStatus> {
        Some(match text {
            "running" => StepStatus::Running,
            "succeeded" => StepStatus::Succeeded,
            "failed" => StepStatus::Failed,
            "skipped" => StepStatus::Skipped,
            "cancelled" => StepStatus::Cancelled,
            _ => return None,
        })
    }
}

/// What one step (with an id) did, as `exec` prints it, plus timing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub status: StepStatus,
    pub output: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorInfo>,
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Timestamp>,
}

/// The summary of one execution, kept beside its journal for listing and querying.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExecutionRecord {
    pub id: ExecutionId,
    pub workflow: String,
    pub version: u32,
    pub status: ExecutionStatus,
    pub created_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Timestamp>,
    #[serde(default)]
    pub output: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorInfo>,
    /// Steps with an id, in the order they first ran.
    #[serde(default)]
    pub steps: Vec<(String, StepRecord)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<ParentLink>,
    /// The evaluated `concurrency.key`, when the workflow has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency_key: Option<String>,
}
