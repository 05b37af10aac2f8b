//! API authentication: bearer tokens and roles.
//!
//! A token is `rh_` followed by 32 random bytes (ring's system RNG) in URL-safe base64. Only
//! its SHA-256 is stored (table `api_tokens`, see `db/tokens.rs`); the token itself is shown
//! once, when it is created.
//!
//! Why a plain SHA-256 and not a slow password hash (argon2, bcrypt): slow hashes exist to
//! make guessing *low-entropy* secrets expensive. A token carries 256 bits from a CSPRNG, so
//! an attacker holding the table would need ~2^255 SHA-256 evaluations to find one — slowing
//! each evaluation down buys nothing, while the API would pay the slow hash on every request.
//! Lookup is by the hash (a unique index), so there is no byte-by-byte comparison of secrets
//! to time either.
//!
//! Roles are ordered: `viewer` < `editor` < `admin`; a route that needs a role accepts every
//! role above it (see [`crate::server`] for how routes declare theirs).

use std::fmt;
use std::str::FromStr;

use base64::Engine;
use ring::digest;
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

/// Prefix of every token, so leaked tokens are recognisable (secret scanners, logs).
pub const TOKEN_PREFIX: &str = "rh_";
/// Random bytes in a token.
const TOKEN_BYTES: usize = 32;

/// What a token may do. Ordered: a higher role includes the lower ones.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads workflows, versions and executions.
    Viewer,
    /// Also writes workflows, runs, cancels and retries executions, emits events.
    Editor,
    /// Everything, including tokens and secrets.
    Admin,
}

impl Role {
    /// Every role, lowest first.
    pub const ALL: [Role; 3] = [Role::Viewer, Role::Editor, Role::Admin];

    /// The role's name as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Editor => "editor",
            Role::Admin => "admin",
        }
    }

    /// Whether this role may use a route that requires `needed`.
    pub fn allows(self, needed: Role) -> bool {
        self >= needed
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A role name that is not one of admin, editor, viewer.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0:?} is not a role: expected admin, editor or viewer")]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;
    fn from_str(text: &str) -> Result<Role, UnknownRole> {
        match text {
            "viewer" => Ok(Role::Viewer),
            "editor" => Ok(Role::Editor),
            "admin" => Ok(Role::Admin),
            other => Err(UnknownRole(other.to_string())),
        }
    }
}

/// The authenticated caller of a request, put into the request's extensions by the auth
/// layer. Handlers that record who did something (a workflow version's author) read it with
/// `Extension<Principal>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// The token's id (not the token): safe to store and show.
    pub token_id: String,
    pub role: Role,
}

/// A new token: the secret to hand out once, and the hash to store.
#[derive(Clone, PartialEq, Eq)]
pub struct NewToken {
    /// The bearer token. Shown once; never stored or logged.
    pub secret: String,
    /// `hash_token(secret)`.
    pub hash: String,
}

impl fmt::Debug for NewToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewToken")
            .field("secret", &"***")
            .field("hash", &self.hash)
            .finish()
    }
}

/// The system's random source failed (no entropy available): no token can be made.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the system random number generator failed")]
pub struct RandomError;

/// Makes a new random token.
pub fn generate_token() -> Result<NewToken, RandomError> {
    let mut bytes = [0u8; TOKEN_BYTES];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| RandomError)?;
    let secret = format!(
        "{TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    let hash = hash_token(&secret);
    Ok(NewToken { secret, hash })
}

/// The stored form of a token: lowercase hex SHA-256 of its text.
pub fn hash_token(secret: &str) -> String {
    let digest = digest::digest(&digest::SHA256, secret.as_bytes());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The token of an `Authorization: Bearer TOKEN` header value, if it has that shape.
pub fn bearer(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() && token.len() <= 256)
        .then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_prefixed_and_hash_matches() {
        let a = generate_token().unwrap();
        let b = generate_token().unwrap();
        assert_ne!(a.secret, b.secret);
        assert!(a.secret.starts_with(TOKEN_PREFIX));
        assert_eq!(a.secret.len(), TOKEN_PREFIX.len() + 43);
        assert_eq!(a.hash, hash_token(&a.secret));
        assert_eq!(a.hash.len(), 64);
        assert!(!format!("{a:?}").contains(&a.secret));
    }

    #[test]
    fn known_sha256() {
        assert_eq!(
            hash_token("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn roles_are_ordered() {
        assert!(Role::Admin.allows(Role::Editor));
        assert!(Role::Editor.allows(Role::Viewer));
        assert!(!Role::Viewer.allows(Role::Editor));
        assert!(!Role::Editor.allows(Role::Admin));
        assert_eq!("editor".parse::<Role>().unwrap(), Role::Editor);
        assert!("root".parse::<Role>().is_err());
    }

    #[test]
    fn bearer_header() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer"), None);
        assert_eq!(bearer("Bearer "), None);
    }
}
