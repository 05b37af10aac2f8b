//! The message set of protocol version 1 and the bounds every decoded message must meet.
//!
//! These are wire types, kept apart from the engine's own types so the engine can change
//! without changing the wire format. Every field is fixed-width or length-prefixed (postcard);
//! nothing depends on the platform's `usize`. A message is only handed out after
//! [`Message::validate`] passed: sizes are bounded and ranges are consistent.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::engine::{ExecutionId, Timestamp};

/// Most records (events or executions) in one batch.
pub const MAX_BATCH_RECORDS: usize = 1_000;
/// Longest name-like string (event type, source, workflow, step, agent version, event id).
pub const MAX_NAME_BYTES: usize = 256;
/// Longest free text (error messages, refusal reasons).
pub const MAX_TEXT_BYTES: usize = 4_096;
/// Most steps in one execution trace.
pub const MAX_TRACE_STEPS: usize = 1_000;

/// A position in a device's outbox sequence. The first record is 1; 0 means "nothing".
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Seq(pub u64);

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A JSON document carried as text (postcard cannot carry self-describing values).
/// Deserializing checks that it is well-formed JSON.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct JsonText(String);

impl JsonText {
    pub fn from_value(value: &crate::Value) -> JsonText {
        JsonText(value.to_string())
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// Parses the document (it is known to be well-formed).
    pub fn to_value(&self) -> Result<crate::Value, serde_json::Error> {
        serde_json::from_str(&self.0)
    }
}

impl TryFrom<String> for JsonText {
    type Error = serde_json::Error;
    fn try_from(text: String) -> Result<JsonText, serde_json::Error> {
        serde_json::from_str::<serde::de::IgnoredAny>(&text)?;
        Ok(JsonText(text))
    }
}

impl From<JsonText> for String {
    fn from(text: JsonText) -> String {
        text.0
    }
}

/// An execution id on the wire: the ULID's 16 bytes, big-endian.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ExecutionRef(pub [u8; 16]);

impl From<ExecutionId> for ExecutionRef {
    fn from(id: ExecutionId) -> ExecutionRef {
        ExecutionRef(id.0.to_bytes())
    }
}

impl From<ExecutionRef> for ExecutionId {
    fn from(id: ExecutionRef) -> ExecutionId {
        ExecutionId(ulid::Ulid::from_bytes(id.0))
    }
}

/// Whether the agent is connected. The last will published by the broker says `Offline`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Presence {
    Online,
    Offline,
}

/// Execution health over a trailing window, what rollout health gates read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// Length of the window, in seconds.
    pub window_secs: u32,
    pub executions_total: u32,
    /// Never more than `executions_total`.
    pub executions_failed: u32,
}

/// `status` channel: presence, versions and health (retained).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub presence: Presence,
    pub agent_version: String,
    /// The version of the active bundle; `None` before the first one.
    pub bundle_version: Option<u64>,
    pub health: Health,
    pub at: Timestamp,
}

/// One event forwarded from a device (CloudEvents attribute names, as in the DSL).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceEvent {
    pub id: String,
    pub event_type: String,
    pub source: String,
    pub time: Timestamp,
    pub data: JsonText,
    pub meta: JsonText,
}

/// `events` channel: consecutive outbox records `first ..= first + events.len() - 1`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventBatch {
    pub first: Seq,
    pub events: Vec<DeviceEvent>,
}

/// How an execution (or a step) ended, or that it is still running.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Running,
    Succeeded,
    Failed,
    Cancelled,
    Skipped,
}

/// One step of an execution trace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepTrace {
    pub step: String,
    pub outcome: Outcome,
    pub started_at: Timestamp,
    pub finished_at: Option<Timestamp>,
    pub attempts: u32,
    pub error: Option<String>,
}

/// An execution summary with its trace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecutionReport {
    pub execution: ExecutionRef,
    pub workflow: String,
    pub workflow_version: u32,
    pub outcome: Outcome,
    pub started_at: Timestamp,
    pub finished_at: Option<Timestamp>,
    pub error: Option<String>,
    pub trace: Vec<StepTrace>,
}

/// `executions` channel: consecutive outbox records, like [`EventBatch`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecutionBatch {
    pub first: Seq,
    pub executions: Vec<ExecutionReport>,
}

/// `ack` channel: every outbox record up to and including `highest` is stored (or was
/// declared dropped by a gap notice). Cumulative: a later ack covers every earlier one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    pub highest: Seq,
}

/// Why outbox records were dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum GapReason {
    /// The outbox reached its byte bound and the `drop_oldest` policy made room.
    OutboxFull,
    /// Records outlived the outbox's age bound.
    Expired,
    /// Records were unreadable on disk.
    Corrupt,
}

/// `events` channel: outbox records `from ..= to` will never arrive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GapNotice {
    pub from: Seq,
    pub to: Seq,
    pub reason: GapReason,
    /// Records dropped in the range (at least 1, at most the range's length).
    pub count: u64,
}

/// `bundle` channel: a signed bundle, verified by [`super::bundle::BundleVerifier`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleFrame {
    pub bytes: Vec<u8>,
}

/// `cmd` channel: what the hub asks a device to do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    RunWorkflow { workflow: String, input: JsonText },
    CancelExecution { execution: ExecutionRef },
    Ping { nonce: u64 },
}

/// What became of a command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandOutcome {
    Started {
        execution: ExecutionRef,
    },
    Cancelled,
    NotFound,
    Pong {
        nonce: u64,
    },
    Refused {
        reason: String,
    },
    /// The command frame had a newer protocol version or an unknown kind.
    Unsupported {
        version: u16,
        kind: u16,
    },
}

/// `executions` channel: the answer to the command whose envelope seq equals this envelope's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandResult {
    pub outcome: CommandOutcome,
}

/// The kind code in an envelope header. Codes are never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Kind {
    Status,
    EventBatch,
    ExecutionBatch,
    Ack,
    Gap,
    Bundle,
    Command,
    CommandResult,
}

impl Kind {
    /// Every kind of protocol version 1.
    pub const ALL: [Kind; 8] = [
        Kind::Status,
        Kind::EventBatch,
        Kind::ExecutionBatch,
        Kind::Ack,
        Kind::Gap,
        Kind::Bundle,
        Kind::Command,
        Kind::CommandResult,
    ];

    pub fn code(self) -> u16 {
        match self {
            Kind::Status => 1,
            Kind::EventBatch => 2,
            Kind::ExecutionBatch => 3,
            Kind::Ack => 4,
            Kind::Gap => 5,
            Kind::Bundle => 6,
            Kind::Command => 7,
            Kind::CommandResult => 8,
        }
    }

    pub fn from_code(code: u16) -> Option<Kind> {
        Kind::ALL.into_iter().find(|kind| kind.code() == code)
    }

    /// The channel this kind travels on.
    pub fn channel(self) -> super::Channel {
        use super::Channel;
        match self {
            Kind::Status => Channel::Status,
            Kind::EventBatch | Kind::Gap => Channel::Events,
            Kind::ExecutionBatch | Kind::CommandResult => Channel::Executions,
            Kind::Ack => Channel::Ack,
            Kind::Bundle => Channel::Bundle,
            Kind::Command => Channel::Cmd,
        }
    }
}

/// Any message of protocol version 1.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    Status(Status),
    EventBatch(EventBatch),
    ExecutionBatch(ExecutionBatch),
    Ack(Ack),
    Gap(GapNotice),
    Bundle(BundleFrame),
    Command(Command),
    CommandResult(CommandResult),
}

/// A decoded message that breaks a bound or is inconsistent.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidMessage {
    #[error("{field} is {len} bytes; the limit is {max}")]
    TooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{field} has {len} entries; the limit is {max}")]
    TooMany {
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{0} is empty")]
    Empty(&'static str),
    #[error("{0}")]
    Inconsistent(&'static str),
    #[error("envelope seq {envelope} does not match the message's {field} {message}")]
    SeqMismatch {
        field: &'static str,
        envelope: Seq,
        message: Seq,
    },
}

fn bounded(field: &'static str, text: &str, max: usize) -> Result<(), InvalidMessage> {
    if text.len() > max {
        return Err(InvalidMessage::TooLong {
            field,
            len: text.len(),
            max,
        });
    }
    Ok(())
}

fn name(field: &'static str, text: &str) -> Result<(), InvalidMessage> {
    bounded(field, text, MAX_NAME_BYTES)
}

fn free_text(field: &'static str, text: Option<&str>) -> Result<(), InvalidMessage> {
    text.map_or(Ok(()), |text| bounded(field, text, MAX_TEXT_BYTES))
}

fn count(field: &'static str, len: usize, max: usize) -> Result<(), InvalidMessage> {
    if len == 0 {
        return Err(InvalidMessage::Empty(field));
    }
    if len > max {
        return Err(InvalidMessage::TooMany { field, len, max });
    }
    Ok(())
}

fn same_seq(field: &'static str, envelope: Seq, message: Seq) -> Result<(), InvalidMessage> {
    if envelope != message {
        return Err(InvalidMessage::SeqMismatch {
            field,
            envelope,
            message,
        });
    }
    Ok(())
}

/// A batch of `len` records starting at `first` must fit in 1..=u64::MAX.
fn range(first: Seq, len: usize) -> Result<(), InvalidMessage> {
    let ok = first.0 >= 1 && first.0.checked_add(len as u64 - 1).is_some();
    if !ok {
        return Err(InvalidMessage::Inconsistent(
            "batch range starts at 0 or overflows",
        ));
    }
    Ok(())
}

impl EventBatch {
    /// The last record's seq.
    pub fn last(&self) -> Seq {
        Seq(self.first.0 + self.events.len().saturating_sub(1) as u64)
    }
}

impl ExecutionBatch {
    /// The last record's seq.
    pub fn last(&self) -> Seq {
        Seq(self.first.0 + self.executions.len().saturating_sub(1) as u64)
    }
}

impl Message {
    pub fn kind(&self) -> Kind {
        match self {
            Message::Status(_) => Kind::Status,
            Message::EventBatch(_) => Kind::EventBatch,
            Message::ExecutionBatch(_) => Kind::ExecutionBatch,
            Message::Ack(_) => Kind::Ack,
            Message::Gap(_) => Kind::Gap,
            Message::Bundle(_) => Kind::Bundle,
            Message::Command(_) => Kind::Command,
            Message::CommandResult(_) => Kind::CommandResult,
        }
    }

    /// Checks bounds and consistency, including the rules tying a message to its envelope's
    /// `seq` (docs/sync-protocol.md, "Sequence numbers").
    pub fn validate(&self, seq: Seq, max_bundle_bytes: usize) -> Result<(), InvalidMessage> {
        match self {
            Message::Status(status) => {
                name("agent_version", &status.agent_version)?;
                if status.health.executions_failed > status.health.executions_total {
                    return Err(InvalidMessage::Inconsistent(
                        "health: more failed executions than executions",
                    ));
                }
            }
            Message::EventBatch(batch) => {
                count("events", batch.events.len(), MAX_BATCH_RECORDS)?;
                range(batch.first, batch.events.len())?;
                same_seq("first", seq, batch.first)?;
                for event in &batch.events {
                    name("event id", &event.id)?;
                    name("event type", &event.event_type)?;
                    name("event source", &event.source)?;
                }
            }
            Message::ExecutionBatch(batch) => {
                count("executions", batch.executions.len(), MAX_BATCH_RECORDS)?;
                range(batch.first, batch.executions.len())?;
                same_seq("first", seq, batch.first)?;
                for report in &batch.executions {
                    name("workflow", &report.workflow)?;
                    free_text("execution error", report.error.as_deref())?;
                    if report.trace.len() > MAX_TRACE_STEPS {
                        return Err(InvalidMessage::TooMany {
                            field: "trace",
                            len: report.trace.len(),
                            max: MAX_TRACE_STEPS,
                        });
                    }
                    for step in &report.trace {
                        name("step", &step.step)?;
                        free_text("step error", step.error.as_deref())?;
                    }
                }
            }
            Message::Ack(ack) => same_seq("highest", seq, ack.highest)?,
            Message::Gap(gap) => {
                same_seq("from", seq, gap.from)?;
                if gap.from.0 == 0 || gap.to < gap.from {
                    return Err(InvalidMessage::Inconsistent(
                        "gap range is empty or starts at 0",
                    ));
                }
                if gap.count == 0 || gap.count > gap.to.0 - gap.from.0 + 1 {
                    return Err(InvalidMessage::Inconsistent(
                        "gap count is 0 or larger than its range",
                    ));
                }
            }
            Message::Bundle(bundle) => {
                if bundle.bytes.is_empty() {
                    return Err(InvalidMessage::Empty("bundle"));
                }
                if bundle.bytes.len() > max_bundle_bytes {
                    return Err(InvalidMessage::TooLong {
                        field: "bundle",
                        len: bundle.bytes.len(),
                        max: max_bundle_bytes,
                    });
                }
            }
            Message::Command(command) => match command {
                Command::RunWorkflow { workflow, .. } => name("workflow", workflow)?,
                Command::CancelExecution { .. } | Command::Ping { .. } => {}
            },
            Message::CommandResult(result) => {
                if let CommandOutcome::Refused { reason } = &result.outcome {
                    free_text("refusal reason", Some(reason))?;
                }
            }
        }
        Ok(())
    }
}
