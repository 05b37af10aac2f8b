//! Signed bundle verification: every refusal case, key rotation, durable version, and
//! random bit flips of a valid bundle (all refused, version never moves backwards).

use std::collections::BTreeMap;

use reactor_core::engine::Timestamp;
use reactor_core::store::{MemoryStore, RedbOptions, RedbStore, Store};
use reactor_core::sync::bundle::*;

const NOW: Timestamp = Timestamp(1_800_000_000_000);
const DAY: i64 = 86_400_000;

fn signer(n: u8) -> BundleSigner {
    BundleSigner::from_seed(&[n; 32]).unwrap()
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn workflows(tag: &str) -> Vec<WorkflowText> {
    vec![
        WorkflowText {
            name: "alerts".to_owned(),
            text: format!("name: alerts\n# {tag}\non: {{ interval: 1m }}\nsteps: []\n"),
        },
        WorkflowText {
            name: "report".to_owned(),
            // Not YAML at all: the verifier never parses it.
            text: "{{{ not yaml".to_owned(),
        },
    ]
}

fn spec(version: u64) -> BundleSpec {
    BundleSpec {
        version,
        target: labels(&[("site", "berlin")]),
        created: NOW,
        expires: Timestamp(NOW.0 + DAY),
        workflows: workflows("a"),
        endorsements: vec![],
    }
}

fn device() -> BTreeMap<String, String> {
    labels(&[("site", "berlin"), ("model", "pi4")])
}

fn verifier(key: &BundleSigner) -> BundleVerifier {
    BundleVerifier::new(vec![key.public_key()])
}

async fn version<S: Store + ?Sized>(store: &S) -> Option<u64> {
    BundleVerifier::state(store)
        .await
        .unwrap()
        .map(|s| s.version)
}

#[tokio::test]
async fn a_valid_bundle_is_accepted_durably_once() {
    let key = signer(1);
    let store = MemoryStore::new();
    let mut verifier = verifier(&key);
    let bytes = key.sign(spec(5));
    let Acceptance::Accepted(bundle) = verifier
        .accept(&bytes, NOW, &device(), &store)
        .await
        .unwrap()
    else {
        panic!("not accepted")
    };
    assert_eq!(bundle.manifest.version, 5);
    assert_eq!(bundle.workflows, workflows("a"));
    assert_eq!(version(&store).await, Some(5));
    assert_eq!(
        BundleVerifier::active(&store).await.unwrap(),
        Some(bytes.clone())
    );
    // The retained bundle delivered again on reconnect is not an error and changes nothing.
    assert_eq!(
        verifier
            .accept(&bytes, NOW, &device(), &store)
            .await
            .unwrap(),
        Acceptance::AlreadyActive { version: 5 }
    );
    // A newer one replaces it.
    let newer = key.sign(BundleSpec {
        workflows: workflows("b"),
        ..spec(6)
    });
    assert!(matches!(
        verifier
            .accept(&newer, NOW, &device(), &store)
            .await
            .unwrap(),
        Acceptance::Accepted(_)
    ));
    assert_eq!(version(&store).await, Some(6));
}

#[tokio::test]
async fn every_refusal_case_has_its_own_error() {
    let key = signer(1);
    let stranger = signer(2);
    let store = MemoryStore::new();
    let mut verifier = verifier(&key);
    let valid = key.sign(spec(5));
    verifier
        .accept(&valid, NOW, &device(), &store)
        .await
        .unwrap();

    let mut refusals = Vec::new();
    let mut refuse = async |name: &str, bytes: &[u8], now: Timestamp, labels| {
        let error = verifier
            .accept(bytes, now, &labels, &store)
            .await
            .unwrap_err();
        refusals.push(format!("{name}: {error}"));
        error
    };

    // unsigned
    let mut raw = key.sign_manifest(&manifest_of(&key, spec(9)), workflows("a"), vec![]);
    raw.signature = None;
    assert!(matches!(
        refuse("unsigned", &raw.encode(), NOW, device()).await,
        BundleError::Unsigned
    ));

    // bad signature: a manifest changed after signing
    let mut raw = key.sign_manifest(&manifest_of(&key, spec(9)), workflows("a"), vec![]);
    let mut tampered = manifest_of(&key, spec(9));
    tampered.version = 10;
    raw.manifest = postcard::to_allocvec(&tampered).unwrap();
    assert!(matches!(
        refuse("bad signature", &raw.encode(), NOW, device()).await,
        BundleError::BadSignature
    ));

    // unknown key
    let foreign = stranger.sign(spec(9));
    assert!(matches!(
        refuse("unknown key", &foreign, NOW, device()).await,
        BundleError::UnknownKey(id) if id == stranger.public_key().id()
    ));

    // expired (exactly at expiry counts as expired)
    let expired = key.sign(spec(9));
    assert!(matches!(
        refuse("expired", &expired, Timestamp(NOW.0 + DAY), device()).await,
        BundleError::Expired { .. }
    ));

    // older version
    let older = key.sign(spec(4));
    assert!(matches!(
        refuse("older", &older, NOW, device()).await,
        BundleError::Older {
            version: 4,
            current: 5
        }
    ));

    // same version, different content
    let conflicting = key.sign(BundleSpec {
        workflows: workflows("other"),
        ..spec(5)
    });
    assert!(matches!(
        refuse("same version", &conflicting, NOW, device()).await,
        BundleError::SameVersionDifferentContent { version: 5 }
    ));

    // wrong target: label with another value, and label missing
    let wrong = key.sign(spec(9));
    assert!(matches!(
        refuse("wrong target", &wrong, NOW, labels(&[("site", "paris")])).await,
        BundleError::WrongTarget {
            actual: Some(_),
            ..
        }
    ));
    assert!(matches!(
        refuse("missing label", &wrong, NOW, labels(&[])).await,
        BundleError::WrongTarget { actual: None, .. }
    ));

    // truncated, at every length
    let whole = key.sign(spec(9));
    for cut in 0..whole.len() {
        let error = verifier
            .accept(&whole[..cut], NOW, &device(), &store)
            .await
            .unwrap_err();
        assert!(
            matches!(error, BundleError::Truncated),
            "cut at {cut}: {error}"
        );
    }
    refusals.push("truncated: checked at every length".to_owned());

    // oversized: refused by size alone
    let mut small = BundleVerifier::new(vec![key.public_key()]).with_max_bytes(64);
    assert!(matches!(
        small
            .accept(&whole, NOW, &device(), &store)
            .await
            .unwrap_err(),
        BundleError::Oversized { max: 64, .. }
    ));
    let huge = vec![0u8; MAX_BUNDLE_BYTES + 1];
    assert!(matches!(
        verifier
            .accept(&huge, NOW, &device(), &store)
            .await
            .unwrap_err(),
        BundleError::Oversized { .. }
    ));

    // sha256 mismatch: workflow text changed in transit (the manifest is intact)
    let mut raw = key.sign_manifest(&manifest_of(&key, spec(9)), workflows("a"), vec![]);
    raw.workflows[0].text.push('\n');
    let mut refuse = async |name: &str, bytes: &[u8]| {
        let error = verifier
            .accept(bytes, NOW, &device(), &store)
            .await
            .unwrap_err();
        refusals.push(format!("{name}: {error}"));
        error
    };
    assert!(matches!(
        refuse("sha256", &raw.encode()).await,
        BundleError::Sha256Mismatch { workflow } if workflow == "alerts"
    ));
    // a workflow added, removed or renamed in transit
    let mut raw = key.sign_manifest(&manifest_of(&key, spec(9)), workflows("a"), vec![]);
    raw.workflows.pop();
    assert!(matches!(
        refuse("workflow set", &raw.encode()).await,
        BundleError::WorkflowSetMismatch
    ));
    // not a bundle at all
    assert!(matches!(
        refuse("garbage", b"GET / HTTP/1.1\r\n\r\n").await,
        BundleError::Malformed(_) | BundleError::Truncated
    ));

    // Nothing above moved the accepted version or replaced the stored bundle.
    assert_eq!(version(&store).await, Some(5));
    assert_eq!(BundleVerifier::active(&store).await.unwrap(), Some(valid));
    assert_eq!(
        verifier
            .reopen(&store)
            .await
            .unwrap()
            .unwrap()
            .manifest
            .version,
        5
    );
    assert!(refusals.len() >= 12, "{refusals:#?}");
}

fn manifest_of(key: &BundleSigner, spec: BundleSpec) -> Manifest {
    let raw = key.sign(spec);
    let raw: RawBundle = postcard::from_bytes(&raw).unwrap();
    postcard::from_bytes(&raw.manifest).unwrap()
}

#[tokio::test]
async fn non_canonical_or_unsorted_manifests_are_refused_even_when_signed() {
    let key = signer(1);
    let store = MemoryStore::new();
    let mut verifier = verifier(&key);
    let mut manifest = manifest_of(&key, spec(9));
    manifest.target = vec![
        Label {
            key: "site".into(),
            value: "berlin".into(),
        },
        Label {
            key: "model".into(),
            value: "pi4".into(),
        },
    ];
    let raw = key.sign_manifest(&manifest, workflows("a"), vec![]);
    assert!(matches!(
        verifier.accept(&raw.encode(), NOW, &device(), &store).await,
        Err(BundleError::Malformed(_))
    ));
    assert_eq!(version(&store).await, None);
}

#[tokio::test]
async fn key_rotation_through_an_endorsement_by_the_old_key() {
    let old = signer(1);
    let new = signer(3);
    let store = MemoryStore::new();
    let mut verifier = verifier(&old);
    verifier
        .accept(&old.sign(spec(1)), NOW, &device(), &store)
        .await
        .unwrap();

    // The new key alone is unknown to the device.
    assert!(matches!(
        verifier
            .accept(&new.sign(spec(2)), NOW, &device(), &store)
            .await,
        Err(BundleError::UnknownKey(_))
    ));
    // Endorsed by the old key (which retires itself), it is accepted and remembered.
    let record = old.endorse(new.public_key(), true, NOW);
    let rotated = new.sign(BundleSpec {
        endorsements: vec![record.clone()],
        ..spec(2)
    });
    assert!(matches!(
        verifier
            .accept(&rotated, NOW, &device(), &store)
            .await
            .unwrap(),
        Acceptance::Accepted(_)
    ));
    let state = BundleVerifier::state(&store).await.unwrap().unwrap();
    assert_eq!(state.added_keys, vec![new.public_key()]);
    assert_eq!(state.retired_keys, vec![old.public_key()]);
    // Later bundles by the new key need no endorsement; the record may still ride along.
    verifier
        .accept(&new.sign(spec(3)), NOW, &device(), &store)
        .await
        .unwrap();
    verifier
        .accept(
            &new.sign(BundleSpec {
                endorsements: vec![record],
                ..spec(4)
            }),
            NOW,
            &device(),
            &store,
        )
        .await
        .unwrap();
    // The retired key signs nothing any more, and cannot endorse another key.
    assert!(matches!(
        verifier
            .accept(&old.sign(spec(5)), NOW, &device(), &store)
            .await,
        Err(BundleError::UnknownKey(_))
    ));
    let intruder = signer(4);
    let sneaky = intruder.sign(BundleSpec {
        endorsements: vec![old.endorse(intruder.public_key(), false, NOW)],
        ..spec(5)
    });
    assert!(matches!(
        verifier.accept(&sneaky, NOW, &device(), &store).await,
        Err(BundleError::BadEndorsement(_))
    ));
    // A forged endorsement (signed by a key the device does not trust) is refused.
    let forged = intruder.sign(BundleSpec {
        endorsements: vec![intruder.endorse(intruder.public_key(), false, NOW)],
        ..spec(5)
    });
    assert!(matches!(
        verifier.accept(&forged, NOW, &device(), &store).await,
        Err(BundleError::BadEndorsement(_))
    ));
    // A key that retires itself in its own bundle's endorsement cannot sign that bundle.
    let fresh_store = MemoryStore::new();
    let self_retiring = old.sign(BundleSpec {
        endorsements: vec![old.endorse(new.public_key(), true, NOW)],
        ..spec(1)
    });
    assert!(matches!(
        verifier
            .accept(&self_retiring, NOW, &device(), &fresh_store)
            .await,
        Err(BundleError::UnknownKey(_))
    ));
    assert_eq!(version(&store).await, Some(4));
}

#[tokio::test]
async fn accepted_version_survives_a_restart_of_the_redb_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.redb");
    let key = signer(1);
    let bytes = key.sign(spec(7));
    {
        let store = RedbStore::open(&path, RedbOptions::default()).unwrap();
        let mut verifier = verifier(&key);
        verifier
            .accept(&bytes, NOW, &device(), &store)
            .await
            .unwrap();
    }
    let store = RedbStore::open(&path, RedbOptions::default()).unwrap();
    assert_eq!(version(&store).await, Some(7));
    assert_eq!(BundleVerifier::active(&store).await.unwrap(), Some(bytes));
    let mut verifier = verifier(&key);
    // After a restart the stored bundle is re-opened (signature and digests checked again).
    let reopened = verifier.reopen(&store).await.unwrap().unwrap();
    assert_eq!(reopened.manifest.version, 7);
    assert_eq!(reopened.workflows, workflows("a"));
    assert!(matches!(
        verifier
            .accept(&key.sign(spec(6)), NOW, &device(), &store)
            .await,
        Err(BundleError::Older {
            version: 6,
            current: 7
        })
    ));
}

#[tokio::test]
async fn thousands_of_bit_flips_are_all_refused_and_the_version_never_moves_back() {
    let old = signer(1);
    let new = signer(3);
    // A bundle that exercises every part of the layout: an endorsement, two workflows,
    // a target label.
    let valid = new.sign(BundleSpec {
        endorsements: vec![old.endorse(new.public_key(), false, NOW)],
        ..spec(9)
    });
    let bits = valid.len() * 8;
    let mut flipped_total = 0;
    // On a device that has accepted version 8, and on a fresh device.
    for previous in [Some(8u64), None] {
        let store = MemoryStore::new();
        let mut verifier = verifier(&old);
        if let Some(v) = previous {
            verifier
                .accept(&old.sign(spec(v)), NOW, &device(), &store)
                .await
                .unwrap();
        }
        let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
        // Every single bit, then random multi-bit damage.
        let mut cases: Vec<Vec<usize>> = (0..bits).map(|bit| vec![bit]).collect();
        for _ in 0..1_000 {
            let n = 2 + (xorshift(&mut rng) % 6) as usize;
            cases.push(
                (0..n)
                    .map(|_| (xorshift(&mut rng) % bits as u64) as usize)
                    .collect(),
            );
        }
        for flips in cases {
            let mut damaged = valid.clone();
            for bit in &flips {
                damaged[bit / 8] ^= 1 << (bit % 8);
            }
            if damaged == valid {
                continue; // the same bit flipped twice
            }
            let result = verifier.accept(&damaged, NOW, &device(), &store).await;
            assert!(result.is_err(), "flips {flips:?} accepted");
            assert_eq!(version(&store).await, previous, "flips {flips:?}");
            flipped_total += 1;
        }
        // The undamaged bundle is still accepted afterwards.
        verifier
            .accept(&valid, NOW, &device(), &store)
            .await
            .unwrap();
        assert_eq!(version(&store).await, Some(9));
    }
    assert!(flipped_total >= 2_000, "{flipped_total}");
}

fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}
