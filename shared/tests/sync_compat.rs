//! Wire compatibility: the saved version-1 frames in `tests/sync_frames/` must always decode
//! to the values below, and encoding those values must give the same bytes. A change that
//! breaks the wire format fails here; changing the format means a new protocol version
//! (docs/sync-protocol.md, "Versioning"), not rewriting these files.
//!
//! `REACTOR_WRITE_SYNC_FRAMES=1 cargo test -p reactor-core --test sync_compat` rewrites the
//! files (only for a new kind, or a new protocol version's set).

use std::collections::BTreeMap;
use std::path::PathBuf;

use reactor_core::engine::Timestamp;
use reactor_core::sync::bundle::{
    Acceptance, BundleSigner, BundleSpec, BundleVerifier, PublicKey, WorkflowText,
};
use reactor_core::sync::messages::*;
use reactor_core::sync::{Envelope, Frame, decode, encode};

const AT: Timestamp = Timestamp(1_767_225_600_000); // 2026-01-01T00:00:00Z

fn json(text: &str) -> JsonText {
    JsonText::try_from(text.to_owned()).unwrap()
}

fn execution() -> ExecutionRef {
    ExecutionRef(*b"0123456789abcdef")
}

/// The example bundle is signed by a key derived from a fixed seed (ed25519 is
/// deterministic), so its bytes are reproducible.
fn example_signer() -> BundleSigner {
    BundleSigner::from_seed(&[7; 32]).unwrap()
}

fn example_bundle() -> Vec<u8> {
    example_signer().sign(BundleSpec {
        version: 3,
        target: [("site".to_owned(), "berlin".to_owned())].into(),
        created: AT,
        expires: Timestamp(AT.0 + 30 * 86_400_000),
        workflows: vec![WorkflowText {
            name: "heartbeat".to_owned(),
            text: "name: heartbeat\non: { interval: 1m }\nsteps:\n  - log: { message: alive }\n"
                .to_owned(),
        }],
        endorsements: vec![],
    })
}

/// One frame per message kind, with every optional field set somewhere.
fn examples() -> Vec<(&'static str, Envelope)> {
    vec![
        (
            "status",
            Envelope::new(
                Seq(12),
                Message::Status(Status {
                    presence: Presence::Online,
                    agent_version: "0.1.0".to_owned(),
                    bundle_version: Some(3),
                    health: Health {
                        window_secs: 300,
                        executions_total: 40,
                        executions_failed: 2,
                    },
                    at: AT,
                }),
            ),
        ),
        (
            "event_batch",
            Envelope::new(
                Seq(101),
                Message::EventBatch(EventBatch {
                    first: Seq(101),
                    events: vec![
                        DeviceEvent {
                            id: "01JGPQ0000AAAAAAAAAAAAAAAA".to_owned(),
                            event_type: "sensor.reading".to_owned(),
                            source: "mqtt://sensors/kitchen".to_owned(),
                            time: AT,
                            data: json(r#"{"temp":21.5,"unit":"C"}"#),
                            meta: json(r#"{"topic":"sensors/kitchen"}"#),
                        },
                        DeviceEvent {
                            id: "01JGPQ0000BBBBBBBBBBBBBBBB".to_owned(),
                            event_type: "door.opened".to_owned(),
                            source: "gpio://17".to_owned(),
                            time: Timestamp(AT.0 + 1),
                            data: json("null"),
                            meta: json("{}"),
                        },
                    ],
                }),
            ),
        ),
        (
            "execution_batch",
            Envelope::new(
                Seq(103),
                Message::ExecutionBatch(ExecutionBatch {
                    first: Seq(103),
                    executions: vec![ExecutionReport {
                        execution: execution(),
                        workflow: "alerts".to_owned(),
                        workflow_version: 4,
                        outcome: Outcome::Failed,
                        started_at: AT,
                        finished_at: Some(Timestamp(AT.0 + 250)),
                        error: Some("step `notify`: HTTP 503".to_owned()),
                        trace: vec![
                            StepTrace {
                                step: "read".to_owned(),
                                outcome: Outcome::Succeeded,
                                started_at: AT,
                                finished_at: Some(Timestamp(AT.0 + 5)),
                                attempts: 1,
                                error: None,
                            },
                            StepTrace {
                                step: "notify".to_owned(),
                                outcome: Outcome::Failed,
                                started_at: Timestamp(AT.0 + 5),
                                finished_at: Some(Timestamp(AT.0 + 250)),
                                attempts: 3,
                                error: Some("HTTP 503".to_owned()),
                            },
                        ],
                    }],
                }),
            ),
        ),
        (
            "ack",
            Envelope::new(Seq(103), Message::Ack(Ack { highest: Seq(103) })),
        ),
        (
            "gap",
            Envelope::new(
                Seq(104),
                Message::Gap(GapNotice {
                    from: Seq(104),
                    to: Seq(180),
                    reason: GapReason::OutboxFull,
                    count: 77,
                }),
            ),
        ),
        (
            "bundle",
            Envelope::new(
                Seq(3),
                Message::Bundle(BundleFrame {
                    bytes: example_bundle(),
                }),
            ),
        ),
        (
            "command",
            Envelope::new(
                Seq(9),
                Message::Command(Command::RunWorkflow {
                    workflow: "alerts".to_owned(),
                    input: json(r#"{"threshold":30}"#),
                }),
            ),
        ),
        (
            "command_cancel",
            Envelope::new(
                Seq(10),
                Message::Command(Command::CancelExecution {
                    execution: execution(),
                }),
            ),
        ),
        (
            "command_ping",
            Envelope::new(Seq(11), Message::Command(Command::Ping { nonce: 0xfeed })),
        ),
        (
            "command_result",
            Envelope::new(
                Seq(9),
                Message::CommandResult(CommandResult {
                    outcome: CommandOutcome::Started {
                        execution: execution(),
                    },
                }),
            ),
        ),
        (
            "command_result_unsupported",
            Envelope::new(
                Seq(12),
                Message::CommandResult(CommandResult {
                    outcome: CommandOutcome::Unsupported {
                        version: 2,
                        kind: 7,
                    },
                }),
            ),
        ),
    ]
}

fn path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/sync_frames")
        .join(format!("{name}.bin"))
}

#[test]
fn saved_frames_decode_to_the_expected_values_and_reencode_identically() {
    let mut kinds = std::collections::HashSet::new();
    for (name, expected) in examples() {
        let bytes =
            std::fs::read(path(name)).unwrap_or_else(|e| panic!("{}: {e}", path(name).display()));
        assert_eq!(
            decode(&bytes).unwrap(),
            Frame::Message(expected.clone()),
            "{name}.bin"
        );
        assert_eq!(
            encode(&expected).unwrap(),
            bytes,
            "{name}: encoding changed"
        );
        kinds.insert(expected.kind());
    }
    assert_eq!(kinds.len(), Kind::ALL.len(), "a kind has no saved frame");
}

#[tokio::test]
async fn the_saved_bundle_still_verifies() {
    let bytes = std::fs::read(path("bundle")).unwrap();
    let Ok(Frame::Message(Envelope {
        message: Message::Bundle(frame),
        ..
    })) = decode(&bytes)
    else {
        panic!("not a bundle frame");
    };
    let key = PublicKey(example_signer().public_key().0);
    let store = reactor_core::store::MemoryStore::new();
    let labels: BTreeMap<String, String> = [("site".to_owned(), "berlin".to_owned())].into();
    let outcome = BundleVerifier::new(vec![key])
        .accept(&frame.bytes, Timestamp(AT.0 + 1), &labels, &store)
        .await
        .unwrap();
    let Acceptance::Accepted(bundle) = outcome else {
        panic!("not accepted");
    };
    assert_eq!(bundle.manifest.version, 3);
    assert_eq!(bundle.workflows[0].name, "heartbeat");
}

/// Rewrites the saved frames when `REACTOR_WRITE_SYNC_FRAMES=1`; otherwise does nothing
/// (the test above checks them).
#[test]
fn write_saved_frames_on_request() {
    if std::env::var("REACTOR_WRITE_SYNC_FRAMES").as_deref() != Ok("1") {
        return;
    }
    std::fs::create_dir_all(path("x").parent().unwrap()).unwrap();
    for (name, envelope) in examples() {
        std::fs::write(path(name), encode(&envelope).unwrap()).unwrap();
    }
}
