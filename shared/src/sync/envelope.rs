//! Versioned envelopes: `{protocol version, kind, seq, payload}`, postcard-encoded.
//!
//! The header layout is fixed for every protocol version under `reactor/v1/`: a varint
//! `u16` version, a varint `u16` kind code, a varint `u64` seq, then the payload as
//! length-prefixed bytes, and nothing after it. A decoder can therefore always read the
//! header of a newer frame and skip its payload: such frames come back as
//! [`Frame::Unsupported`] (never an error, never a guess at the payload), and the receiver
//! reports them (docs/sync-protocol.md, "Versioning").
//!
//! Decoding is bounded: frames over the size limit are refused before any parsing, trailing
//! bytes after the header or after the payload are refused, and every message passes
//! [`Message::validate`]. No input makes it panic.

use serde::{Deserialize, Serialize};

use super::messages::{InvalidMessage, Kind, Message, Seq};

/// The protocol version this code writes and fully understands.
pub const PROTOCOL_VERSION: u16 = 1;

/// The largest frame accepted by default (a bundle of [`super::bundle::MAX_BUNDLE_BYTES`]
/// plus headroom).
pub const MAX_FRAME_BYTES: usize = 2 * 1024 * 1024;

/// A decoded frame whose protocol version and kind this code understands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    pub version: u16,
    pub seq: Seq,
    pub message: Message,
}

impl Envelope {
    /// An envelope of the current [`PROTOCOL_VERSION`].
    pub fn new(seq: Seq, message: Message) -> Envelope {
        Envelope {
            version: PROTOCOL_VERSION,
            seq,
            message,
        }
    }

    pub fn kind(&self) -> Kind {
        self.message.kind()
    }
}

/// Why a frame could not be understood by this decoder although its header is valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnsupportedReason {
    /// Written by a newer protocol version: its payload layout is unknown here.
    NewerVersion,
    /// A kind code this version does not define.
    UnknownKind,
}

/// The header of a frame this decoder skips. The receiver reports it (an agent answers an
/// unsupported command with `CommandOutcome::Unsupported`, a hub counts and logs it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unsupported {
    pub version: u16,
    pub kind: u16,
    pub seq: Seq,
    pub reason: UnsupportedReason,
}

/// The result of decoding one frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    Message(Envelope),
    Unsupported(Unsupported),
}

/// A frame that is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    #[error("frame is {len} bytes; the limit is {max}")]
    TooLarge { len: usize, max: usize },
    #[error("frame is truncated")]
    Truncated,
    #[error("frame is malformed: {0}")]
    Malformed(String),
    #[error("{count} unexpected bytes after the {after}")]
    TrailingBytes { after: &'static str, count: usize },
    #[error("protocol version 0 does not exist")]
    ZeroVersion,
    #[error("invalid {kind:?} message: {source}")]
    Invalid {
        kind: Kind,
        #[source]
        source: InvalidMessage,
    },
}

/// A message that cannot be sent.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    #[error("invalid {kind:?} message: {source}")]
    Invalid {
        kind: Kind,
        #[source]
        source: InvalidMessage,
    },
    #[error("encoded frame is {len} bytes; the limit is {max}")]
    TooLarge { len: usize, max: usize },
    #[error("only protocol version {PROTOCOL_VERSION} can be written, not {0}")]
    Version(u16),
    #[error("encoding failed: {0}")]
    Postcard(String),
}

#[derive(Serialize, Deserialize)]
struct Header<'a> {
    version: u16,
    kind: u16,
    seq: u64,
    payload: &'a [u8],
}

/// Encoding and decoding limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest whole frame.
    pub max_frame_bytes: usize,
    /// Largest bundle inside a `Bundle` frame.
    pub max_bundle_bytes: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_frame_bytes: MAX_FRAME_BYTES,
            max_bundle_bytes: super::bundle::MAX_BUNDLE_BYTES,
        }
    }
}

/// Encodes with the default [`Limits`].
pub fn encode(envelope: &Envelope) -> Result<Vec<u8>, EncodeError> {
    encode_with(envelope, Limits::default())
}

/// Validates and encodes `envelope`; refuses what a receiver with `limits` would refuse.
pub fn encode_with(envelope: &Envelope, limits: Limits) -> Result<Vec<u8>, EncodeError> {
    if envelope.version != PROTOCOL_VERSION {
        return Err(EncodeError::Version(envelope.version));
    }
    let kind = envelope.kind();
    envelope
        .message
        .validate(envelope.seq, limits.max_bundle_bytes)
        .map_err(|source| EncodeError::Invalid { kind, source })?;
    let payload = encode_payload(&envelope.message).map_err(postcard_encode)?;
    let frame = postcard::to_allocvec(&Header {
        version: envelope.version,
        kind: kind.code(),
        seq: envelope.seq.0,
        payload: &payload,
    })
    .map_err(postcard_encode)?;
    if frame.len() > limits.max_frame_bytes {
        return Err(EncodeError::TooLarge {
            len: frame.len(),
            max: limits.max_frame_bytes,
        });
    }
    Ok(frame)
}

/// Decodes with the default [`Limits`].
pub fn decode(bytes: &[u8]) -> Result<Frame, DecodeError> {
    decode_with(bytes, Limits::default())
}

/// Decodes one frame. Never panics; see the module documentation for what is refused.
pub fn decode_with(bytes: &[u8], limits: Limits) -> Result<Frame, DecodeError> {
    if bytes.len() > limits.max_frame_bytes {
        return Err(DecodeError::TooLarge {
            len: bytes.len(),
            max: limits.max_frame_bytes,
        });
    }
    let header: Header<'_> = take_exact(bytes, "frame")?;
    let seq = Seq(header.seq);
    if header.version == 0 {
        return Err(DecodeError::ZeroVersion);
    }
    let unsupported = |reason| {
        Ok(Frame::Unsupported(Unsupported {
            version: header.version,
            kind: header.kind,
            seq,
            reason,
        }))
    };
    if header.version > PROTOCOL_VERSION {
        return unsupported(UnsupportedReason::NewerVersion);
    }
    let Some(kind) = Kind::from_code(header.kind) else {
        return unsupported(UnsupportedReason::UnknownKind);
    };
    let message = decode_payload(kind, header.payload)?;
    message
        .validate(seq, limits.max_bundle_bytes)
        .map_err(|source| DecodeError::Invalid { kind, source })?;
    Ok(Frame::Message(Envelope {
        version: header.version,
        seq,
        message,
    }))
}

fn encode_payload(message: &Message) -> Result<Vec<u8>, postcard::Error> {
    match message {
        Message::Status(m) => postcard::to_allocvec(m),
        Message::EventBatch(m) => postcard::to_allocvec(m),
        Message::ExecutionBatch(m) => postcard::to_allocvec(m),
        Message::Ack(m) => postcard::to_allocvec(m),
        Message::Gap(m) => postcard::to_allocvec(m),
        Message::Bundle(m) => postcard::to_allocvec(m),
        Message::Command(m) => postcard::to_allocvec(m),
        Message::CommandResult(m) => postcard::to_allocvec(m),
    }
}

fn decode_payload(kind: Kind, payload: &[u8]) -> Result<Message, DecodeError> {
    Ok(match kind {
        Kind::Status => Message::Status(take_exact(payload, "payload")?),
        Kind::EventBatch => Message::EventBatch(take_exact(payload, "payload")?),
        Kind::ExecutionBatch => Message::ExecutionBatch(take_exact(payload, "payload")?),
        Kind::Ack => Message::Ack(take_exact(payload, "payload")?),
        Kind::Gap => Message::Gap(take_exact(payload, "payload")?),
        Kind::Bundle => Message::Bundle(take_exact(payload, "payload")?),
        Kind::Command => Message::Command(take_exact(payload, "payload")?),
        Kind::CommandResult => Message::CommandResult(take_exact(payload, "payload")?),
    })
}

/// Decodes a `T` that must use every byte of `bytes`.
pub(super) fn take_exact<'a, T: Deserialize<'a>>(
    bytes: &'a [u8],
    what: &'static str,
) -> Result<T, DecodeError> {
    let (value, rest) = postcard::take_from_bytes(bytes).map_err(postcard_decode)?;
    if !rest.is_empty() {
        return Err(DecodeError::TrailingBytes {
            after: what,
            count: rest.len(),
        });
    }
    Ok(value)
}

fn postcard_decode(error: postcard::Error) -> DecodeError {
    match error {
        postcard::Error::DeserializeUnexpectedEnd => DecodeError::Truncated,
        other => DecodeError::Malformed(other.to_string()),
    }
}

fn postcard_encode(error: postcard::Error) -> EncodeError {
    EncodeError::Postcard(error.to_string())
}
