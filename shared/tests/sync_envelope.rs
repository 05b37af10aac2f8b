//! Envelope and message-set tests: round trips, bounds, forward compatibility, and decoding
//! random or damaged bytes never panics.

use proptest::prelude::*;
use reactor_core::engine::Timestamp;
use reactor_core::sync::envelope::{self, DecodeError, Limits};
use reactor_core::sync::messages::*;
use reactor_core::sync::{Envelope, Frame, PROTOCOL_VERSION, Unsupported, UnsupportedReason};

fn event(n: u64) -> DeviceEvent {
    DeviceEvent {
        id: format!("evt-{n}"),
        event_type: "sensor.reading".to_owned(),
        source: "mqtt://sensors/1".to_owned(),
        time: Timestamp(1_700_000_000_000 + n as i64),
        data: JsonText::try_from(format!("{{\"temp\":{n}}}")).unwrap(),
        meta: JsonText::try_from("{}".to_owned()).unwrap(),
    }
}

fn batch(first: u64, len: u64) -> Envelope {
    Envelope::new(
        Seq(first),
        Message::EventBatch(EventBatch {
            first: Seq(first),
            events: (0..len).map(event).collect(),
        }),
    )
}

/// A frame with an arbitrary header, written the way a newer encoder would.
fn raw_frame(version: u16, kind: u16, seq: u64, payload: &[u8]) -> Vec<u8> {
    let mut frame = postcard::to_allocvec(&(version, kind, seq)).unwrap();
    frame.extend(postcard::to_allocvec(&payload).unwrap());
    frame
}

#[test]
fn event_batch_round_trips() {
    let envelope = batch(41, 3);
    let bytes = envelope::encode(&envelope).unwrap();
    assert_eq!(envelope::decode(&bytes).unwrap(), Frame::Message(envelope));
}

#[test]
fn newer_protocol_version_is_skipped_and_reported_not_guessed() {
    // Version 2 of a kind that exists in version 1, with a payload v1 could not read.
    let frame = raw_frame(PROTOCOL_VERSION + 1, Kind::Command.code(), 77, &[0xff; 9]);
    assert_eq!(
        envelope::decode(&frame).unwrap(),
        Frame::Unsupported(Unsupported {
            version: 2,
            kind: Kind::Command.code(),
            seq: Seq(77),
            reason: UnsupportedReason::NewerVersion,
        })
    );
    // Even a v2 payload that happens to be a valid v1 payload is not interpreted.
    let ack = postcard::to_allocvec(&Ack { highest: Seq(5) }).unwrap();
    let frame = raw_frame(2, Kind::Ack.code(), 5, &ack);
    assert!(matches!(
        envelope::decode(&frame),
        Ok(Frame::Unsupported(Unsupported {
            reason: UnsupportedReason::NewerVersion,
            ..
        }))
    ));
}

#[test]
fn unknown_kind_is_skipped_and_reported() {
    let frame = raw_frame(1, 999, 3, b"whatever");
    assert_eq!(
        envelope::decode(&frame).unwrap(),
        Frame::Unsupported(Unsupported {
            version: 1,
            kind: 999,
            seq: Seq(3),
            reason: UnsupportedReason::UnknownKind,
        })
    );
}

#[test]
fn version_zero_trailing_bytes_and_truncation_are_refused() {
    let ack = postcard::to_allocvec(&Ack { highest: Seq(5) }).unwrap();
    assert_eq!(
        envelope::decode(&raw_frame(0, Kind::Ack.code(), 5, &ack)),
        Err(DecodeError::ZeroVersion)
    );
    let mut frame = envelope::encode(&batch(1, 2)).unwrap();
    frame.push(0);
    assert!(matches!(
        envelope::decode(&frame),
        Err(DecodeError::TrailingBytes { after: "frame", .. })
    ));
    // Trailing bytes inside the payload (a newer writer appending a field) are refused too.
    let mut payload = ack.clone();
    payload.push(1);
    assert!(matches!(
        envelope::decode(&raw_frame(1, Kind::Ack.code(), 5, &payload)),
        Err(DecodeError::TrailingBytes {
            after: "payload",
            ..
        })
    ));
    let frame = envelope::encode(&batch(1, 2)).unwrap();
    for cut in 0..frame.len() {
        assert!(envelope::decode(&frame[..cut]).is_err(), "cut at {cut}");
    }
    assert_eq!(envelope::decode(&[]), Err(DecodeError::Truncated));
}

#[test]
fn oversized_frames_are_refused_before_parsing() {
    let limits = Limits {
        max_frame_bytes: 64,
        ..Limits::default()
    };
    let frame = envelope::encode(&batch(1, 10)).unwrap();
    assert!(frame.len() > 64);
    assert_eq!(
        envelope::decode_with(&frame, limits),
        Err(DecodeError::TooLarge {
            len: frame.len(),
            max: 64
        })
    );
    assert!(matches!(
        envelope::encode_with(&batch(1, 10), limits),
        Err(envelope::EncodeError::TooLarge { .. })
    ));
}

#[test]
fn bounds_and_seq_rules_are_enforced_both_ways() {
    let too_many = batch(1, MAX_BATCH_RECORDS as u64 + 1);
    assert!(matches!(
        envelope::encode(&too_many),
        Err(envelope::EncodeError::Invalid {
            source: InvalidMessage::TooMany { .. },
            ..
        })
    ));
    let mut wrong_seq = batch(10, 1);
    wrong_seq.seq = Seq(11);
    assert!(envelope::encode(&wrong_seq).is_err());
    // A receiver refuses what a broken sender might still put on the wire.
    let bad = EventBatch {
        first: Seq(10),
        events: vec![event(1)],
    };
    let frame = raw_frame(
        1,
        Kind::EventBatch.code(),
        11,
        &postcard::to_allocvec(&bad).unwrap(),
    );
    assert!(matches!(
        envelope::decode(&frame),
        Err(DecodeError::Invalid {
            kind: Kind::EventBatch,
            source: InvalidMessage::SeqMismatch { .. }
        })
    ));
    let empty = EventBatch {
        first: Seq(1),
        events: vec![],
    };
    let frame = raw_frame(
        1,
        Kind::EventBatch.code(),
        1,
        &postcard::to_allocvec(&empty).unwrap(),
    );
    assert!(matches!(
        envelope::decode(&frame),
        Err(DecodeError::Invalid { .. })
    ));
    let overflow = batch(u64::MAX, 2);
    assert!(envelope::encode(&overflow).is_err());
    let long_name = Envelope::new(
        Seq(1),
        Message::Command(Command::RunWorkflow {
            workflow: "w".repeat(MAX_NAME_BYTES + 1),
            input: JsonText::try_from("null".to_owned()).unwrap(),
        }),
    );
    assert!(envelope::encode(&long_name).is_err());
    let sick = Envelope::new(
        Seq(1),
        Message::Status(Status {
            presence: Presence::Online,
            agent_version: "0.1.0".to_owned(),
            bundle_version: None,
            health: Health {
                window_secs: 60,
                executions_total: 1,
                executions_failed: 2,
            },
            at: Timestamp(0),
        }),
    );
    assert!(envelope::encode(&sick).is_err());
    for (from, to, count) in [(0, 3, 1), (5, 4, 1), (5, 6, 0), (5, 6, 3)] {
        let gap = Envelope::new(
            Seq(from),
            Message::Gap(GapNotice {
                from: Seq(from),
                to: Seq(to),
                reason: GapReason::OutboxFull,
                count,
            }),
        );
        assert!(
            envelope::encode(&gap).is_err(),
            "{from}..{to} count {count}"
        );
    }
}

#[test]
fn json_text_must_be_well_formed() {
    assert!(JsonText::try_from("{\"a\":".to_owned()).is_err());
    let value = serde_json::json!({"a": [1, 2, {"b": null}]});
    assert_eq!(JsonText::from_value(&value).to_value().unwrap(), value);
    // Malformed JSON inside an otherwise valid frame is refused at decode.
    let mut bad = postcard::to_allocvec(&EventBatch {
        first: Seq(1),
        events: vec![event(1)],
    })
    .unwrap();
    let at = bad.windows(4).position(|w| w == b"temp").unwrap();
    bad[at - 2] = b'['; // `{"temp":1}` becomes `["temp":1}`
    assert!(matches!(
        envelope::decode(&raw_frame(1, Kind::EventBatch.code(), 1, &bad)),
        Err(DecodeError::Malformed(_))
    ));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4_000))]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = envelope::decode(&bytes);
    }

    #[test]
    fn random_payloads_under_valid_headers_never_panic(
        kind in 0u16..12,
        seq in any::<u64>(),
        payload in proptest::collection::vec(any::<u8>(), 0..256),
    ) {
        let frame = raw_frame(1, kind, seq, &payload);
        if let Ok(Frame::Message(envelope)) = envelope::decode(&frame) {
            // Whatever decodes re-encodes to a frame that decodes to the same thing.
            let again = envelope::encode(&envelope).unwrap();
            prop_assert_eq!(envelope::decode(&again).unwrap(), Frame::Message(envelope));
        }
    }

    #[test]
    fn damaged_valid_frames_never_panic(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), 0u8..8), 1..4),
    ) {
        let mut frame = envelope::encode(&batch(7, 3)).unwrap();
        for (index, bit) in flips {
            let at = index.index(frame.len());
            frame[at] ^= 1 << bit;
        }
        let _ = envelope::decode(&frame);
    }
}
