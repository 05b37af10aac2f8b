//! The fleet, hub side: the device registry and enrollment, the bundle-signing key, the
//! device-facing MQTT endpoint in front of the embedded broker, and ingestion of device
//! frames. See docs/fleet.md for the design and docs/sync-protocol.md for the wire format.
//!
//! - [`registry`]: devices, one-time enrollment tokens, credentials (hashes only).
//! - [`keys`]: the bundle-signing key, generated at first start, stored sealed.
//! - [`api`]: `POST /api/v1/enroll` (token only) and `GET /api/v1/devices`.
//! - [`cli`]: `reactor-hub device add|list`.

pub mod api;
pub mod cli;
pub mod keys;
pub mod registry;
