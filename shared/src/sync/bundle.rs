//! Signed workflow bundles (ed25519 through `ring`) and their verification on a device.
//!
//! A bundle is the postcard encoding of [`RawBundle`]: a magic number and format, the
//! manifest's canonical bytes, an optional signature over them, key endorsements (rotation
//! records) and the workflows' text. The signature covers
//! `"reactor-bundle-v1\0" ‖ manifest bytes`; the manifest binds every workflow by name and
//! SHA-256, so nothing in a bundle is unauthenticated except the signature header (whose key
//! id must equal the signed one) and the endorsements (each signed on its own).
//!
//! [`BundleVerifier`] checks everything in a fixed order (docs/sync-protocol.md,
//! "Verification order") **before any YAML is parsed**: the workflows come out as text.
//! [`BundleVerifier::accept`] records the accepted version, the manifest digest, key changes
//! and the bundle bytes in one store batch, so a power loss mid-apply can never move the
//! version backwards: the next start re-applies the stored bundle.

use std::collections::BTreeMap;
use std::fmt;

use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use serde::{Deserialize, Serialize};

use super::envelope::{DecodeError, take_exact};
use crate::engine::Timestamp;
use crate::store::{Store, StoreError, StoreWrite};

/// The largest bundle accepted by default.
pub const MAX_BUNDLE_BYTES: usize = 1024 * 1024;
/// Most workflows in one bundle.
pub const MAX_WORKFLOWS: usize = 256;
/// Most labels in a target selector.
pub const MAX_LABELS: usize = 32;
/// Most endorsements carried by one bundle.
pub const MAX_ENDORSEMENTS: usize = 8;
/// Meta key of the [`BundleState`] (highest accepted version, key changes).
pub const STATE_KEY: &str = "sync.bundle.state";
/// Meta key of the accepted bundle's bytes.
pub const ACTIVE_KEY: &str = "sync.bundle.active";

const MAGIC: [u8; 4] = *b"RXBN";
const FORMAT: u16 = 1;
const STATE_FORMAT: u16 = 1;
const BUNDLE_DOMAIN: &[u8] = b"reactor-bundle-v1\0";
const ENDORSEMENT_DOMAIN: &[u8] = b"reactor-key-endorsement-v1\0";
const MAX_NAME_BYTES: usize = 256;

/// The first 8 bytes of the SHA-256 of an ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct KeyId(pub [u8; 8]);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|byte| write!(f, "{byte:02x}"))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// An ed25519 public key of the fleet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    pub fn id(&self) -> KeyId {
        let digest = sha256(&self.0);
        let mut id = [0; 8];
        id.copy_from_slice(&digest[..8]);
        KeyId(id)
    }

    fn verify(&self, domain: &[u8], message: &[u8], signature: &[u8]) -> bool {
        let mut signed = Vec::with_capacity(domain.len() + message.len());
        signed.extend_from_slice(domain);
        signed.extend_from_slice(message);
        UnparsedPublicKey::new(&ED25519, &self.0)
            .verify(&signed, signature)
            .is_ok()
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// One `key = value` a device must carry for a bundle to target it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Label {
    pub key: String,
    pub value: String,
}

/// A workflow's name and the SHA-256 of its text.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkflowDigest {
    pub name: String,
    pub sha256: [u8; 32],
}

/// What the signature covers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Monotonic across the fleet; a device never goes back to a lower one.
    pub version: u64,
    pub key_id: KeyId,
    /// Every label must be on the device; empty targets every device. Sorted by key, unique.
    pub target: Vec<Label>,
    pub created: Timestamp,
    pub expires: Timestamp,
    /// In the same order as the bundle's workflows; names unique.
    pub workflows: Vec<WorkflowDigest>,
}

/// A workflow's name and YAML text (not parsed here).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkflowText {
    pub name: String,
    pub text: String,
}

/// A bundle signature; `key_id` must equal the manifest's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    pub key_id: KeyId,
    pub bytes: Vec<u8>,
}

/// A key rotation record: `signer` vouches for `new_key`, optionally retiring itself once a
/// bundle signed by the new key is accepted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endorsement {
    pub new_key: PublicKey,
    pub retire_signer: bool,
    pub created: Timestamp,
    pub signer: KeyId,
    pub signature: Vec<u8>,
}

#[derive(Serialize)]
struct EndorsementBody<'a> {
    new_key: &'a PublicKey,
    retire_signer: bool,
    created: Timestamp,
    signer: KeyId,
}

impl Endorsement {
    fn signed_bytes(&self) -> Vec<u8> {
        // Cannot fail: plain fields into a growable buffer (same for every
        // `to_allocvec(..).unwrap_or_default()` in this module).
        postcard::to_allocvec(&EndorsementBody {
            new_key: &self.new_key,
            retire_signer: self.retire_signer,
            created: self.created,
            signer: self.signer,
        })
        .unwrap_or_default()
    }
}

/// The wire layout of a bundle. Build one with [`BundleSigner`]; tests build odd ones.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RawBundle {
    pub magic: [u8; 4],
    pub format: u16,
    /// The postcard encoding of a [`Manifest`], exactly as signed.
    pub manifest: Vec<u8>,
    pub signature: Option<Signature>,
    pub endorsements: Vec<Endorsement>,
    pub workflows: Vec<WorkflowText>,
}

impl RawBundle {
    /// Encodes the bundle.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).unwrap_or_default()
    }
}

/// Why a bundle was refused. Each refusal case of the protocol has its own variant.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BundleError {
    #[error("bundle is {len} bytes; the limit is {max}")]
    Oversized { len: usize, max: usize },
    #[error("bundle is truncated")]
    Truncated,
    #[error("bundle is malformed: {0}")]
    Malformed(String),
    #[error("bundle format {0} is not supported")]
    UnsupportedFormat(u16),
    #[error("bundle is not signed")]
    Unsigned,
    #[error("bundle is signed by unknown key {0}")]
    UnknownKey(KeyId),
    #[error("bundle signature does not verify")]
    BadSignature,
    #[error("bundle carries an invalid key endorsement: {0}")]
    BadEndorsement(String),
    #[error("workflow `{workflow}` does not match its SHA-256 in the manifest")]
    Sha256Mismatch { workflow: String },
    #[error("the bundle's workflows are not the ones its manifest lists")]
    WorkflowSetMismatch,
    #[error("bundle expired at {} (now {})", expires.to_rfc3339(), now.to_rfc3339())]
    Expired { expires: Timestamp, now: Timestamp },
    #[error("bundle targets `{key}={expected}`; this device has {}", actual.as_deref().map_or("no such label".to_owned(), |a| format!("`{key}={a}`")))]
    WrongTarget {
        key: String,
        expected: String,
        actual: Option<String>,
    },
    #[error("bundle version {version} is older than the accepted version {current}")]
    Older { version: u64, current: u64 },
    #[error("bundle version {version} is already accepted with different content")]
    SameVersionDifferentContent { version: u64 },
    #[error("bundle state in the store: {0}")]
    Store(#[from] StoreError),
    #[error("signing failed: {0}")]
    Crypto(String),
}

impl From<DecodeError> for BundleError {
    fn from(error: DecodeError) -> BundleError {
        match error {
            DecodeError::Truncated => BundleError::Truncated,
            other => BundleError::Malformed(other.to_string()),
        }
    }
}

/// What a device keeps durably about bundles (meta key [`STATE_KEY`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleState {
    format: u16,
    /// The highest accepted version.
    pub version: u64,
    /// SHA-256 of the accepted manifest bytes: the content identity of that version.
    pub manifest_sha256: [u8; 32],
    /// Keys trusted through endorsements, beyond the pinned ones.
    pub added_keys: Vec<PublicKey>,
    /// Keys that no longer sign bundles (kept to check historical endorsements).
    pub retired_keys: Vec<PublicKey>,
}

impl BundleState {
    fn decode(bytes: &[u8]) -> Result<BundleState, BundleError> {
        let state: BundleState = take_exact(bytes, "bundle state")
            .map_err(|e| BundleError::Store(StoreError::Corrupt(e.to_string())))?;
        if state.format != STATE_FORMAT {
            return Err(BundleError::Store(StoreError::Corrupt(format!(
                "bundle state format {} is unknown",
                state.format
            ))));
        }
        Ok(state)
    }

    fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).unwrap_or_default()
    }
}

/// A bundle that passed every check; its workflows are still unparsed text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedBundle {
    pub manifest: Manifest,
    pub manifest_sha256: [u8; 32],
    pub workflows: Vec<WorkflowText>,
    /// The state to store once this bundle is accepted.
    pub next_state: BundleState,
}

/// The result of [`BundleVerifier::accept`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Acceptance {
    /// A new version: recorded durably, now to be applied.
    Accepted(Box<VerifiedBundle>),
    /// The version already accepted, same content (a retained bundle delivered again).
    AlreadyActive { version: u64 },
}

/// Verifies bundles against the fleet key(s) pinned at enrollment plus the key changes
/// recorded in the store.
#[derive(Clone, Debug)]
pub struct BundleVerifier {
    pinned: Vec<PublicKey>,
    max_bytes: usize,
}

/// The keys a bundle may be checked against.
struct Trust<'a> {
    /// Pinned + added − retired: may sign bundles and endorse new keys.
    active: Vec<PublicKey>,
    /// May only re-vouch for keys that are already active (historical records).
    retired: &'a [PublicKey],
}

impl Trust<'_> {
    fn active(&self, id: KeyId) -> Option<PublicKey> {
        self.active.iter().copied().find(|key| key.id() == id)
    }
    fn retired(&self, id: KeyId) -> Option<PublicKey> {
        self.retired.iter().copied().find(|key| key.id() == id)
    }
}

impl BundleVerifier {
    /// A verifier trusting `pinned` (at least one key, from enrollment).
    pub fn new(pinned: Vec<PublicKey>) -> BundleVerifier {
        BundleVerifier {
            pinned,
            max_bytes: MAX_BUNDLE_BYTES,
        }
    }

    /// Refuses bundles over `max_bytes` before decoding them.
    pub fn with_max_bytes(mut self, max_bytes: usize) -> BundleVerifier {
        self.max_bytes = max_bytes;
        self
    }

    /// The stored state, if a bundle was ever accepted.
    pub async fn state<S: Store + ?Sized>(store: &S) -> Result<Option<BundleState>, BundleError> {
        store
            .meta(STATE_KEY)
            .await?
            .map(|bytes| BundleState::decode(&bytes))
            .transpose()
    }

    /// The accepted bundle's bytes: what a restart re-applies.
    pub async fn active<S: Store + ?Sized>(store: &S) -> Result<Option<Vec<u8>>, BundleError> {
        Ok(store.meta(ACTIVE_KEY).await?)
    }

    /// Verifies, then records acceptance durably (state and bundle in one batch).
    ///
    /// Takes `&mut self` so one task owns acceptance: two interleaved accepts could
    /// otherwise both read the same state.
    pub async fn accept<S: Store + ?Sized>(
        &mut self,
        bytes: &[u8],
        now: Timestamp,
        labels: &BTreeMap<String, String>,
        store: &S,
    ) -> Result<Acceptance, BundleError> {
        let state = Self::state(store).await?;
        let verified = self.verify(bytes, now, labels, state.as_ref())?;
        if let Some(state) = &state
            && state.version == verified.manifest.version
        {
            return Ok(Acceptance::AlreadyActive {
                version: state.version,
            });
        }
        store
            .write(vec![
                StoreWrite::PutMeta {
                    key: STATE_KEY.to_owned(),
                    value: Some(verified.next_state.encode()),
                },
                StoreWrite::PutMeta {
                    key: ACTIVE_KEY.to_owned(),
                    value: Some(bytes.to_vec()),
                },
            ])
            .await?;
        Ok(Acceptance::Accepted(Box::new(verified)))
    }

    /// Every check, in the documented order, without touching the store. A bundle equal in
    /// version and content to the accepted one verifies (it is the same bundle).
    pub fn verify(
        &self,
        bytes: &[u8],
        now: Timestamp,
        labels: &BTreeMap<String, String>,
        state: Option<&BundleState>,
    ) -> Result<VerifiedBundle, BundleError> {
        self.check(bytes, Some((now, labels)), state)
    }

    /// Re-opens the accepted bundle after a restart (to apply it again): reads the stored
    /// bytes and state, checks the signature and workflow digests again and that it is the
    /// very bundle the state records. Expiry and target were checked at acceptance and are
    /// not checked again: a bundle that expires keeps running until a newer one arrives.
    pub async fn reopen<S: Store + ?Sized>(
        &self,
        store: &S,
    ) -> Result<Option<VerifiedBundle>, BundleError> {
        let (Some(state), Some(bytes)) = (Self::state(store).await?, Self::active(store).await?)
        else {
            return Ok(None);
        };
        let bundle = self.check(&bytes, None, Some(&state))?;
        if bundle.manifest.version != state.version
            || bundle.manifest_sha256 != state.manifest_sha256
        {
            return Err(BundleError::Store(StoreError::Corrupt(
                "the stored bundle is not the one the bundle state records".to_owned(),
            )));
        }
        Ok(Some(bundle))
    }

    fn check(
        &self,
        bytes: &[u8],
        device: Option<(Timestamp, &BTreeMap<String, String>)>,
        state: Option<&BundleState>,
    ) -> Result<VerifiedBundle, BundleError> {
        if bytes.len() > self.max_bytes {
            return Err(BundleError::Oversized {
                len: bytes.len(),
                max: self.max_bytes,
            });
        }
        let raw: RawBundle = take_exact(bytes, "bundle")?;
        if raw.magic != MAGIC {
            return Err(BundleError::Malformed("not a Reactor bundle".to_owned()));
        }
        if raw.format != FORMAT {
            return Err(BundleError::UnsupportedFormat(raw.format));
        }
        let Some(signature) = &raw.signature else {
            return Err(BundleError::Unsigned);
        };
        let empty = BundleState::default();
        let state_or_empty = state.unwrap_or(&empty);
        let mut trust = Trust {
            active: self
                .pinned
                .iter()
                .chain(&state_or_empty.added_keys)
                .copied()
                .filter(|key| !state_or_empty.retired_keys.contains(key))
                .collect(),
            retired: &state_or_empty.retired_keys,
        };
        let mut next_state = state_or_empty.clone();
        next_state.format = STATE_FORMAT;
        let signing_key = self.endorse(&raw, signature.key_id, &mut trust, &mut next_state)?;
        if !signing_key.verify(BUNDLE_DOMAIN, &raw.manifest, &signature.bytes) {
            return Err(BundleError::BadSignature);
        }
        let manifest = decode_manifest(&raw.manifest)?;
        if manifest.key_id != signature.key_id {
            return Err(BundleError::BadSignature);
        }
        check_workflows(&manifest, &raw.workflows)?;
        if let Some((now, labels)) = device {
            if now >= manifest.expires {
                return Err(BundleError::Expired {
                    expires: manifest.expires,
                    now,
                });
            }
            check_target(&manifest, labels)?;
        }
        let manifest_sha256 = sha256(&raw.manifest);
        if let Some(state) = state {
            if manifest.version < state.version {
                return Err(BundleError::Older {
                    version: manifest.version,
                    current: state.version,
                });
            }
            if manifest.version == state.version && manifest_sha256 != state.manifest_sha256 {
                return Err(BundleError::SameVersionDifferentContent {
                    version: manifest.version,
                });
            }
        }
        next_state.version = manifest.version;
        next_state.manifest_sha256 = manifest_sha256;
        Ok(VerifiedBundle {
            manifest,
            manifest_sha256,
            workflows: raw.workflows,
            next_state,
        })
    }

    /// Checks every endorsement in order (each may rely on keys endorsed before it) and
    /// returns the key that must have signed the bundle. A key retired by an endorsement of
    /// this very bundle cannot sign it ([`BundleError::UnknownKey`]).
    fn endorse(
        &self,
        raw: &RawBundle,
        signer: KeyId,
        trust: &mut Trust<'_>,
        next_state: &mut BundleState,
    ) -> Result<PublicKey, BundleError> {
        if raw.endorsements.len() > MAX_ENDORSEMENTS {
            return Err(BundleError::BadEndorsement(format!(
                "more than {MAX_ENDORSEMENTS} endorsements"
            )));
        }
        for endorsement in &raw.endorsements {
            let already_trusted = trust.active(endorsement.new_key.id()).is_some();
            let endorser = match trust.active(endorsement.signer) {
                Some(key) => key,
                // A retired key may only repeat history: vouch for a key already trusted.
                None => match trust.retired(endorsement.signer) {
                    Some(key) if already_trusted => key,
                    _ => {
                        return Err(BundleError::BadEndorsement(format!(
                            "endorsement signed by untrusted key {}",
                            endorsement.signer
                        )));
                    }
                },
            };
            if !endorser.verify(
                ENDORSEMENT_DOMAIN,
                &endorsement.signed_bytes(),
                &endorsement.signature,
            ) {
                return Err(BundleError::BadEndorsement(format!(
                    "signature by {} does not verify",
                    endorsement.signer
                )));
            }
            if !already_trusted {
                trust.active.push(endorsement.new_key);
                next_state.added_keys.push(endorsement.new_key);
            }
            if endorsement.retire_signer && !next_state.retired_keys.contains(&endorser) {
                trust.active.retain(|key| *key != endorser);
                next_state.retired_keys.push(endorser);
            }
        }
        trust.active(signer).ok_or(BundleError::UnknownKey(signer))
    }
}

fn decode_manifest(bytes: &[u8]) -> Result<Manifest, BundleError> {
    let manifest: Manifest = take_exact(bytes, "manifest")?;
    // One content, one byte string: the digest compared across deliveries is well-defined.
    if postcard::to_allocvec(&manifest).ok().as_deref() != Some(bytes) {
        return Err(BundleError::Malformed(
            "manifest is not canonically encoded".to_owned(),
        ));
    }
    if manifest.workflows.len() > MAX_WORKFLOWS {
        return Err(BundleError::Malformed(format!(
            "more than {MAX_WORKFLOWS} workflows"
        )));
    }
    if manifest.target.len() > MAX_LABELS {
        return Err(BundleError::Malformed(format!(
            "more than {MAX_LABELS} target labels"
        )));
    }
    if manifest.target.windows(2).any(|w| w[0].key >= w[1].key) {
        return Err(BundleError::Malformed(
            "target labels are not sorted by key and unique".to_owned(),
        ));
    }
    let mut names: Vec<&str> = manifest.workflows.iter().map(|w| w.name.as_str()).collect();
    names.sort_unstable();
    if names.windows(2).any(|w| w[0] == w[1]) {
        return Err(BundleError::Malformed("duplicate workflow name".to_owned()));
    }
    if names
        .iter()
        .any(|name| name.is_empty() || name.len() > MAX_NAME_BYTES)
    {
        return Err(BundleError::Malformed(
            "workflow name empty or too long".to_owned(),
        ));
    }
    Ok(manifest)
}

fn check_target(manifest: &Manifest, labels: &BTreeMap<String, String>) -> Result<(), BundleError> {
    for label in &manifest.target {
        let actual = labels.get(&label.key);
        if actual != Some(&label.value) {
            return Err(BundleError::WrongTarget {
                key: label.key.clone(),
                expected: label.value.clone(),
                actual: actual.cloned(),
            });
        }
    }
    Ok(())
}

fn check_workflows(manifest: &Manifest, workflows: &[WorkflowText]) -> Result<(), BundleError> {
    if manifest.workflows.len() != workflows.len()
        || manifest
            .workflows
            .iter()
            .zip(workflows)
            .any(|(digest, workflow)| digest.name != workflow.name)
    {
        return Err(BundleError::WorkflowSetMismatch);
    }
    for (digest, workflow) in manifest.workflows.iter().zip(workflows) {
        if sha256(workflow.text.as_bytes()) != digest.sha256 {
            return Err(BundleError::Sha256Mismatch {
                workflow: workflow.name.clone(),
            });
        }
    }
    Ok(())
}

/// What a bundle should contain; [`BundleSigner::sign`] computes the manifest from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BundleSpec {
    pub version: u64,
    /// Labels a device must carry (sorted by the signer).
    pub target: BTreeMap<String, String>,
    pub created: Timestamp,
    pub expires: Timestamp,
    pub workflows: Vec<WorkflowText>,
    /// Rotation records to carry (see docs/sync-protocol.md, "Key rotation").
    pub endorsements: Vec<Endorsement>,
}

/// The hub's side: an ed25519 key that signs bundles and endorses its successor.
#[derive(Debug)]
pub struct BundleSigner {
    key: Ed25519KeyPair,
    public: PublicKey,
}

impl BundleSigner {
    /// A new random key; also returns its PKCS#8 document, to be stored encrypted.
    pub fn generate() -> Result<(BundleSigner, Vec<u8>), BundleError> {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng)
            .map_err(|_| BundleError::Crypto("key generation failed".to_owned()))?;
        let signer = BundleSigner::from_pkcs8(pkcs8.as_ref())?;
        Ok((signer, pkcs8.as_ref().to_vec()))
    }

    /// Loads a key from its PKCS#8 document.
    pub fn from_pkcs8(pkcs8: &[u8]) -> Result<BundleSigner, BundleError> {
        let key = Ed25519KeyPair::from_pkcs8(pkcs8)
            .map_err(|e| BundleError::Crypto(format!("invalid PKCS#8 key: {e}")))?;
        Ok(BundleSigner::from_pair(key))
    }

    /// A key from a 32-byte seed (deterministic: tests and saved example frames).
    pub fn from_seed(seed: &[u8; 32]) -> Result<BundleSigner, BundleError> {
        let key = Ed25519KeyPair::from_seed_unchecked(seed)
            .map_err(|e| BundleError::Crypto(format!("invalid seed: {e}")))?;
        Ok(BundleSigner::from_pair(key))
    }

    fn from_pair(key: Ed25519KeyPair) -> BundleSigner {
        let mut public = [0; 32];
        public.copy_from_slice(key.public_key().as_ref());
        BundleSigner {
            key,
            public: PublicKey(public),
        }
    }

    pub fn public_key(&self) -> PublicKey {
        self.public
    }

    /// Builds the manifest for `spec` and returns the signed bundle's bytes.
    pub fn sign(&self, spec: BundleSpec) -> Vec<u8> {
        let manifest = Manifest {
            version: spec.version,
            key_id: self.public.id(),
            target: spec
                .target
                .into_iter()
                .map(|(key, value)| Label { key, value })
                .collect(),
            created: spec.created,
            expires: spec.expires,
            workflows: spec
                .workflows
                .iter()
                .map(|w| WorkflowDigest {
                    name: w.name.clone(),
                    sha256: sha256(w.text.as_bytes()),
                })
                .collect(),
        };
        self.sign_manifest(&manifest, spec.workflows, spec.endorsements)
            .encode()
    }

    /// Signs `manifest` as given (it is not checked against `workflows`).
    pub fn sign_manifest(
        &self,
        manifest: &Manifest,
        workflows: Vec<WorkflowText>,
        endorsements: Vec<Endorsement>,
    ) -> RawBundle {
        let manifest = postcard::to_allocvec(manifest).unwrap_or_default();
        let mut signed = BUNDLE_DOMAIN.to_vec();
        signed.extend_from_slice(&manifest);
        RawBundle {
            magic: MAGIC,
            format: FORMAT,
            signature: Some(Signature {
                key_id: self.public.id(),
                bytes: self.key.sign(&signed).as_ref().to_vec(),
            }),
            manifest,
            endorsements,
            workflows,
        }
    }

    /// A rotation record: this key vouches for `new_key`.
    pub fn endorse(
        &self,
        new_key: PublicKey,
        retire_signer: bool,
        created: Timestamp,
    ) -> Endorsement {
        let mut endorsement = Endorsement {
            new_key,
            retire_signer,
            created,
            signer: self.public.id(),
            signature: Vec::new(),
        };
        let mut signed = ENDORSEMENT_DOMAIN.to_vec();
        signed.extend_from_slice(&endorsement.signed_bytes());
        endorsement.signature = self.key.sign(&signed).as_ref().to_vec();
        endorsement
    }
}
