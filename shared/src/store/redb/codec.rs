//! The binary format of journal values ([`FORMAT_V2`]): records and facts as compact,
//! self-describing bytes.
//!
//! Why not JSON (format 1) or postcard: JSON spends the store's time escaping and quoting and
//! stores every field name in every row; postcard cannot read a `serde_json::Value` back (it
//! is not self-describing). Here the structs are written field by field in a fixed order and
//! only the `Value`s carry type tags, so a pure execution's record and start fact take about
//! half the bytes of their JSON and encode several times faster.
//!
//! Layout (little endian; `uvar` = LEB128, `ivar` = zigzag LEB128; `str` = uvar length +
//! UTF-8; `opt<T>` = byte 0, or byte 1 then T):
//! - record: id (16 bytes), workflow str, version uvar, status byte, created_at ivar,
//!   finished_at opt<ivar> — the fields the indexes need come first, so [`read_indexed`]
//!   stops there — then output value, error opt<error>, steps (uvar count, then str +
//!   step), parent opt<(16 bytes, str)>, concurrency_key opt<str>;
//! - fact: a tag byte per variant, then its fields in declaration order;
//! - value: tag byte (null, false, true, unsigned, negative, float, string, array, object)
//!   then its payload; objects keep their key order.
//!
//! Decoding treats the bytes as untrusted: every length is checked against what is left,
//! nesting is bounded ([`MAX_DEPTH`]), and anything malformed is an error, never a panic.

use crate::engine::{
    ErrorInfo, Event, ExecutionId, ExecutionRecord, ExecutionStatus, Fact, Outcome, ParentLink,
    StepRecord, StepStatus, Timestamp,
};
use crate::{Map, Value};

/// The format byte of values written by this module.
pub(super) const FORMAT_V2: u8 = 2;

/// Deepest nesting of arrays and objects a stored value may have (serde_json's own limit).
const MAX_DEPTH: usize = 128;

const NULL: u8 = 0;
const FALSE: u8 = 1;
const TRUE: u8 = 2;
const UNSIGNED: u8 = 3;
const NEGATIVE: u8 = 4;
const FLOAT: u8 = 5;
const STRING: u8 = 6;
const ARRAY: u8 = 7;
const OBJECT: u8 = 8;

/// Why bytes did not decode (the caller adds which value it was).
#[derive(Debug, PartialEq)]
pub(super) struct Malformed(pub &'static str);

// ---- writing -------------------------------------------------------------------------------

pub(super) fn record(out: &mut Vec<u8>, record: &ExecutionRecord) {
    out.extend_from_slice(&record.id.0.to_bytes());
    str(out, &record.workflow);
    uvar(out, u64::from(record.version));
    out.push(status_byte(record.status));
    ivar(out, record.created_at.0);
    opt(out, record.finished_at.as_ref(), |out, t| ivar(out, t.0));
    value(out, &record.output);
    opt(out, record.error.as_ref(), error);
    uvar(out, record.steps.len() as u64);
    for (id, step) in &record.steps {
        str(out, id);
        out.push(step_status_byte(step.status));
        value(out, &step.output);
        opt(out, step.error.as_ref(), error);
        uvar(out, u64::from(step.attempts));
        opt(out, step.started_at.as_ref(), |out, t| ivar(out, t.0));
        opt(out, step.finished_at.as_ref(), |out, t| ivar(out, t.0));
    }
    opt(out, record.parent.as_ref(), parent);
    opt(out, record.concurrency_key.as_ref(), |out, key| {
        str(out, key)
    });
}

pub(super) fn fact(out: &mut Vec<u8>, fact: &Fact) {
    match fact {
        Fact::Started {
            workflow,
            version,
            event: started_by,
            inputs,
            parent: link,
            at,
        } => {
            out.push(0);
            str(out, workflow);
            uvar(out, u64::from(*version));
            event(out, started_by);
            value(out, inputs);
            opt(out, link.as_ref(), parent);
            ivar(out, at.0);
        }
        Fact::EffectStarted { key, attempt, at } => {
            out.push(1);
            str(out, key);
            uvar(out, u64::from(*attempt));
            ivar(out, at.0);
        }
        Fact::EffectFinished {
            key,
            attempt,
            outcome,
            at,
        } => {
            out.push(2);
            str(out, key);
            uvar(out, u64::from(*attempt));
            match outcome {
                Outcome::Succeeded(output) => {
                    out.push(0);
                    value(out, output);
                }
                Outcome::Failed(failure) => {
                    out.push(1);
                    error(out, failure);
                }
            }
            ivar(out, at.0);
        }
        Fact::TimerFired { key, at } => {
            out.push(3);
            str(out, key);
            ivar(out, at.0);
        }
        Fact::EventReceived {
            key,
            event: received,
            at,
        } => {
            out.push(4);
            str(out, key);
            event(out, received);
            ivar(out, at.0);
        }
        Fact::ChildStarted { key, child, at } => {
            out.push(5);
            str(out, key);
            out.extend_from_slice(&child.0.to_bytes());
            ivar(out, at.0);
        }
        Fact::CancelRequested { reason, at } => {
            out.push(6);
            str(out, reason);
            ivar(out, at.0);
        }
    }
}

fn event(out: &mut Vec<u8>, event: &Event) {
    str(out, &event.id);
    str(out, &event.event_type);
    str(out, &event.source);
    str(out, &event.time);
    value(out, &event.data);
    value(out, &event.meta);
}

fn error(out: &mut Vec<u8>, error: &ErrorInfo) {
    str(out, &error.message);
    str(out, &error.kind);
    opt(out, error.step.as_ref(), |out, step| str(out, step));
    opt(out, error.status.as_ref(), |out, status| {
        uvar(out, u64::from(*status))
    });
    out.push(u8::from(error.retryable));
}

fn parent(out: &mut Vec<u8>, parent: &ParentLink) {
    out.extend_from_slice(&parent.execution.0.to_bytes());
    str(out, &parent.key);
}

fn value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Null => out.push(NULL),
        Value::Bool(false) => out.push(FALSE),
        Value::Bool(true) => out.push(TRUE),
        Value::Number(number) => {
            if let Some(n) = number.as_u64() {
                out.push(UNSIGNED);
                uvar(out, n);
            } else if let Some(n) = number.as_i64() {
                // Negative: stored as its magnitude minus one, so i64::MIN fits.
                out.push(NEGATIVE);
                uvar(out, !(n as u64));
            } else {
                out.push(FLOAT);
                out.extend_from_slice(&number.as_f64().unwrap_or(0.0).to_le_bytes());
            }
        }
        Value::String(text) => {
            out.push(STRING);
            str(out, text);
        }
        Value::Array(items) => {
            out.push(ARRAY);
            uvar(out, items.len() as u64);
            for item in items {
                self::value(out, item);
            }
        }
        Value::Object(map) => {
            out.push(OBJECT);
            uvar(out, map.len() as u64);
            for (key, item) in map {
                str(out, key);
                self::value(out, item);
            }
        }
    }
}

fn opt<T>(out: &mut Vec<u8>, value: Option<&T>, write: impl FnOnce(&mut Vec<u8>, &T)) {
    match value {
        None => out.push(0),
        Some(value) => {
            out.push(1);
            write(out, value);
        }
    }
}

fn str(out: &mut Vec<u8>, text: &str) {
    uvar(out, text.len() as u64);
    out.extend_from_slice(text.as_bytes());
}

pub(super) fn uvar(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn ivar(out: &mut Vec<u8>, n: i64) {
    uvar(out, ((n << 1) ^ (n >> 63)) as u64);
}

fn status_byte(status: ExecutionStatus) -> u8 {
    match status {
        ExecutionStatus::Queued => 0,
        ExecutionStatus::Running => 1,
        ExecutionStatus::Succeeded => 2,
        ExecutionStatus::Failed => 3,
        ExecutionStatus::Cancelled => 4,
    }
}

fn step_status_byte(status: StepStatus) -> u8 {
    match status {
        StepStatus::Running => 0,
        StepStatus::Succeeded => 1,
        StepStatus::Failed => 2,
        StepStatus::Skipped => 3,
        StepStatus::Cancelled => 4,
    }
}

// ---- reading -------------------------------------------------------------------------------

/// What the indexes need of a record: its leading fields.
pub(super) struct Head {
    pub workflow: String,
    pub status: ExecutionStatus,
    pub created_at: Timestamp,
    pub finished_at: Option<Timestamp>,
}

/// Reads only the leading fields of a record written by [`record`].
pub(super) fn read_head(bytes: &[u8]) -> Result<Head, Malformed> {
    let mut reader = Reader { bytes };
    reader.take(16)?;
    Ok(Head {
        workflow: reader.string()?,
        status: {
            reader.uvar()?;
            reader.status()?
        },
        created_at: Timestamp(reader.ivar()?),
        finished_at: reader.opt(|r| r.ivar().map(Timestamp))?,
    })
}

pub(super) fn read_record(bytes: &[u8]) -> Result<ExecutionRecord, Malformed> {
    let mut r = Reader { bytes };
    let record = ExecutionRecord {
        id: r.id()?,
        workflow: r.string()?,
        version: r.u32()?,
        status: r.status()?,
        created_at: Timestamp(r.ivar()?),
        finished_at: r.opt(|r| r.ivar().map(Timestamp))?,
        output: r.value(0)?,
        error: r.opt(Reader::error)?,
        steps: {
            let count = r.count()?;
            let mut steps = Vec::with_capacity(count.min(r.bytes.len()));
            for _ in 0..count {
                let id = r.string()?;
                let step = StepRecord {
                    status: r.step_status()?,
                    output: r.value(0)?,
                    error: r.opt(Reader::error)?,
                    attempts: r.u32()?,
                    started_at: r.opt(|r| r.ivar().map(Timestamp))?,
                    finished_at: r.opt(|r| r.ivar().map(Timestamp))?,
                };
                steps.push((id, step));
            }
            steps
        },
        parent: r.opt(Reader::parent)?,
        concurrency_key: r.opt(Reader::string)?,
    };
    r.end()?;
    Ok(record)
}

pub(super) fn read_fact(bytes: &[u8]) -> Result<Fact, Malformed> {
    let mut r = Reader { bytes };
    let fact = match r.byte()? {
        0 => Fact::Started {
            workflow: r.string()?,
            version: r.u32()?,
            event: r.event()?,
            inputs: r.value(0)?,
            parent: r.opt(Reader::parent)?,
            at: Timestamp(r.ivar()?),
        },
        1 => Fact::EffectStarted {
            key: r.string()?,
            attempt: r.u32()?,
            at: Timestamp(r.ivar()?),
        },
        2 => Fact::EffectFinished {
            key: r.string()?,
            attempt: r.u32()?,
            outcome: match r.byte()? {
                0 => Outcome::Succeeded(r.value(0)?),
                1 => Outcome::Failed(r.error()?),
                _ => return Err(Malformed("unknown outcome")),
            },
            at: Timestamp(r.ivar()?),
        },
        3 => Fact::TimerFired {
            key: r.string()?,
            at: Timestamp(r.ivar()?),
        },
        4 => Fact::EventReceived {
            key: r.string()?,
            event: r.event()?,
            at: Timestamp(r.ivar()?),
        },
        5 => Fact::ChildStarted {
            key: r.string()?,
            child: r.id()?,
            at: Timestamp(r.ivar()?),
        },
        6 => Fact::CancelRequested {
            reason: r.string()?,
            at: Timestamp(r.ivar()?),
        },
        _ => return Err(Malformed("unknown fact")),
    };
    r.end()?;
    Ok(fact)
}

/// Reads a `uvar` at the start of `bytes`; returns it and how many bytes it took.
pub(super) fn read_uvar(bytes: &[u8]) -> Result<(u64, usize), Malformed> {
    let mut reader = Reader { bytes };
    let n = reader.uvar()?;
    Ok((n, bytes.len() - reader.bytes.len()))
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        if n > self.bytes.len() {
            return Err(Malformed("truncated"));
        }
        let (taken, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(taken)
    }

    fn byte(&mut self) -> Result<u8, Malformed> {
        Ok(self.take(1)?[0])
    }

    fn end(&self) -> Result<(), Malformed> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(Malformed("trailing bytes"))
        }
    }

    fn uvar(&mut self) -> Result<u64, Malformed> {
        let mut n: u64 = 0;
        for shift in (0..64).step_by(7) {
            let byte = self.byte()?;
            let bits = u64::from(byte & 0x7f);
            if shift == 63 && bits > 1 {
                return Err(Malformed("integer too large"));
            }
            n |= bits << shift;
            if byte & 0x80 == 0 {
                return Ok(n);
            }
        }
        Err(Malformed("integer too long"))
    }

    fn ivar(&mut self) -> Result<i64, Malformed> {
        let n = self.uvar()?;
        Ok(((n >> 1) as i64) ^ -((n & 1) as i64))
    }

    fn u32(&mut self) -> Result<u32, Malformed> {
        u32::try_from(self.uvar()?).map_err(|_| Malformed("number out of range"))
    }

    /// A count of items that each take at least one byte: never more than what is left.
    fn count(&mut self) -> Result<usize, Malformed> {
        let n = usize::try_from(self.uvar()?).map_err(|_| Malformed("count out of range"))?;
        if n > self.bytes.len() {
            return Err(Malformed("count beyond the value"));
        }
        Ok(n)
    }

    fn string(&mut self) -> Result<String, Malformed> {
        let len = self.count()?;
        let bytes = self.take(len)?;
        std::str::from_utf8(bytes)
            .map(str::to_string)
            .map_err(|_| Malformed("text is not UTF-8"))
    }

    fn opt<T>(
        &mut self,
        read: impl FnOnce(&mut Self) -> Result<T, Malformed>,
    ) -> Result<Option<T>, Malformed> {
        match self.byte()? {
            0 => Ok(None),
            1 => read(self).map(Some),
            _ => Err(Malformed("bad option")),
        }
    }

    fn id(&mut self) -> Result<ExecutionId, Malformed> {
        let bytes: [u8; 16] = self
            .take(16)?
            .try_into()
            .map_err(|_| Malformed("truncated"))?;
        Ok(ExecutionId(ulid::Ulid::from_bytes(bytes)))
    }

    fn status(&mut self) -> Result<ExecutionStatus, Malformed> {
        Ok(match self.byte()? {
            0 => ExecutionStatus::Queued,
            1 => ExecutionStatus::Running,
            2 => ExecutionStatus::Succeeded,
            3 => ExecutionStatus::Failed,
            4 => ExecutionStatus::Cancelled,
            _ => return Err(Malformed("unknown status")),
        })
    }

    fn step_status(&mut self) -> Result<StepStatus, Malformed> {
        Ok(match self.byte()? {
            0 => StepStatus::Running,
            1 => StepStatus::Succeeded,
            2 => StepStatus::Failed,
            3 => StepStatus::Skipped,
            4 => StepStatus::Cancelled,
            _ => return Err(Malformed("unknown step status")),
        })
    }

    fn error(&mut self) -> Result<ErrorInfo, Malformed> {
        Ok(ErrorInfo {
            message: self.string()?,
            kind: self.string()?,
            step: self.opt(Reader::string)?,
            status: self
                .opt(|r| u16::try_from(r.uvar()?).map_err(|_| Malformed("status out of range")))?,
            retryable: match self.byte()? {
                0 => false,
                1 => true,
                _ => return Err(Malformed("bad flag")),
            },
        })
    }

    fn parent(&mut self) -> Result<ParentLink, Malformed> {
        Ok(ParentLink {
            execution: self.id()?,
            key: self.string()?,
        })
    }

    fn event(&mut self) -> Result<Event, Malformed> {
        Ok(Event {
            id: self.string()?,
            event_type: self.string()?,
            source: self.string()?,
            time: self.string()?,
            data: self.value(0)?,
            meta: self.value(0)?,
        })
    }

    fn value(&mut self, depth: usize) -> Result<Value, Malformed> {
        Ok(match self.byte()? {
            NULL => Value::Null,
            FALSE => Value::Bool(false),
            TRUE => Value::Bool(true),
            UNSIGNED => Value::from(self.uvar()?),
            NEGATIVE => {
                let n = !self.uvar()? as i64;
                if n >= 0 {
                    return Err(Malformed("bad negative number"));
                }
                Value::from(n)
            }
            FLOAT => {
                let bytes: [u8; 8] = self
                    .take(8)?
                    .try_into()
                    .map_err(|_| Malformed("truncated"))?;
                let float = f64::from_le_bytes(bytes);
                serde_json::Number::from_f64(float)
                    .map(Value::Number)
                    .ok_or(Malformed("not a finite number"))?
            }
            STRING => Value::String(self.string()?),
            ARRAY | OBJECT if depth >= MAX_DEPTH => return Err(Malformed("nested too deeply")),
            ARRAY => {
                let count = self.count()?;
                let mut items = Vec::with_capacity(count);
                for _ in 0..count {
                    items.push(self.value(depth + 1)?);
                }
                Value::Array(items)
            }
            OBJECT => {
                let count = self.count()?;
                let mut map = Map::with_capacity(count);
                for _ in 0..count {
                    let key = self.string()?;
                    map.insert(key, self.value(depth + 1)?);
                }
                Value::Object(map)
            }
            _ => return Err(Malformed("unknown value type")),
        })
    }
}

#[cfg(test)]
#[path = "codec_tests.rs"]
mod tests;
