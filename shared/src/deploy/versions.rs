//! Workflow versions kept in the store's meta table.
//!
//! Per workflow name, `{prefix}.{name}` holds `"{version} {hash:016x}"` (the active version
//! and the FNV-1a hash of its text) and `{prefix}.{name}.v{version}` holds the text of each
//! version ever activated. A restart therefore gives unchanged text the same version, and an
//! execution started under a version that was edited since still recovers with its own
//! version's text.
//!
//! The version rule: a workflow's version is its text's `version`, unless the text changed
//! while `version` did not grow — then it becomes the previous version + 1.

/// FNV-1a over the text: stable across builds and platforms (the hash is stored).
pub fn content_hash(text: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// The meta keys of one store's workflow versions.
#[derive(Debug, Clone)]
pub(crate) struct VersionKeys {
    prefix: String,
}

impl VersionKeys {
    pub(crate) fn new(prefix: &str) -> VersionKeys {
        VersionKeys {
            prefix: prefix.to_string(),
        }
    }

    /// The key of `name`'s active (version, hash).
    pub(crate) fn active(&self, name: &str) -> String {
        format!("{}.{name}", self.prefix)
    }

    /// The key of the text of `name` at `version`.
    pub(crate) fn text(&self, name: &str, version: u32) -> String {
        format!("{}.{name}.v{version}", self.prefix)
    }
}

/// Encodes the value stored under [`VersionKeys::active`].
pub(crate) fn encode_active(version: u32, hash: u64) -> Vec<u8> {
    format!("{version} {hash:016x}").into_bytes()
}

/// Decodes the value stored under [`VersionKeys::active`]; `None` when it is malformed.
pub(crate) fn decode_active(bytes: &[u8]) -> Option<(u32, u64)> {
    let text = std::str::from_utf8(bytes).ok()?;
    let (version, hash) = text.split_once(' ')?;
    Some((version.parse().ok()?, u64::from_str_radix(hash, 16).ok()?))
}

/// The version text with `hash` and declared `declared` version runs as, given the
/// (version, hash) active or stored before (see the module docs).
pub(crate) fn decide(previous: Option<(u32, u64)>, hash: u64, declared: u32) -> u32 {
    match previous {
        Some((version, old_hash)) if old_hash == hash => version,
        Some((version, _)) if declared <= version => version + 1,
        _ => declared,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_fnv1a() {
        assert_eq!(content_hash(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(content_hash("a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn active_value_round_trips() {
        let bytes = encode_active(7, 0xdead_beef);
        assert_eq!(bytes, b"7 00000000deadbeef");
        assert_eq!(decode_active(&bytes), Some((7, 0xdead_beef)));
        assert_eq!(decode_active(b"7"), None);
        assert_eq!(decode_active(b"x 00"), None);
    }

    #[test]
    fn version_rule() {
        assert_eq!(decide(None, 1, 3), 3);
        assert_eq!(decide(Some((5, 1)), 1, 3), 5, "same text keeps its version");
        assert_eq!(
            decide(Some((5, 1)), 2, 3),
            6,
            "changed text, version not grown"
        );
        assert_eq!(decide(Some((5, 1)), 2, 5), 6);
        assert_eq!(decide(Some((5, 1)), 2, 9), 9, "a grown version is taken");
    }

    #[test]
    fn keys_carry_the_prefix() {
        let keys = VersionKeys::new("agent.workflow");
        assert_eq!(keys.active("w"), "agent.workflow.w");
        assert_eq!(keys.text("w", 2), "agent.workflow.w.v2");
    }
}
