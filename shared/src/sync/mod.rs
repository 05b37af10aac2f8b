//! The fleet sync protocol shared by the agent and the hub (feature `sync`).
//!
//! Pure library code, no I/O except the store write that records an accepted bundle:
//! - [`topics`]: `reactor/v1/d/{device}/{channel}` and [`DeviceId`], the one validator for
//!   device ids.
//! - [`messages`]: the message set of protocol version 1 and its bounds.
//! - [`envelope`]: postcard-encoded, versioned envelopes; bounded decoding that never panics
//!   and skips (and reports) frames of a newer version or an unknown kind.
//! - [`bundle`]: ed25519-signed workflow bundles, verified before any YAML is parsed, with
//!   the highest accepted version kept durably in the store's meta table.
//!
//! The protocol itself (ordering, acks, de-duplication, versioning, bundle format, key
//! rotation) is described in docs/sync-protocol.md.

pub mod bundle;
pub mod envelope;
pub mod messages;
pub mod topics;

pub use self::envelope::{
    DecodeError, EncodeError, Envelope, Frame, PROTOCOL_VERSION, Unsupported, UnsupportedReason,
    decode, encode,
};
pub use self::messages::{Kind, Message, Seq};
pub use self::topics::{Channel, DeviceId, DeviceIdError, parse_topic};
