//! Round trips of every shape the journal stores, and hostile bytes.

use serde_json::json;

use super::*;

fn id(n: u8) -> ExecutionId {
    ExecutionId(ulid::Ulid::from_bytes([n; 16]))
}

fn full_error() -> ErrorInfo {
    ErrorInfo {
        message: "upstream said 503 — «retry»".into(),
        kind: "http".into(),
        step: Some("notify".into()),
        status: Some(503),
        retryable: true,
    }
}

fn tricky_value() -> Value {
    json!({
        "device": "sensor-1",
        "temp": 31.5,
        "whole_float": 22.0,
        "small": -1,
        "min": i64::MIN,
        "max": u64::MAX,
        "zero": 0,
        "tiny": 1e-300,
        "flags": [true, false, null],
        "nested": { "a": [[], {}, [1, [2, [3]]]], "ünïcode": "日本語 ✓", "": "" },
        "z_after_a": 1, "a_after_z": 2
    })
}

fn event() -> Event {
    Event {
        id: "01HX0000000000000000000000".into(),
        event_type: "http".into(),
        source: "reactor:http/rule".into(),
        time: "2026-11-30T16:00:00.123Z".into(),
        data: tricky_value(),
        meta: json!({ "headers": { "content-type": "application/json" }, "query": {} }),
    }
}

fn full_record() -> ExecutionRecord {
    ExecutionRecord {
        id: id(7),
        workflow: "rule-http".into(),
        version: 42,
        status: ExecutionStatus::Failed,
        created_at: Timestamp(1_764_000_000_000),
        finished_at: Some(Timestamp(1_764_000_000_123)),
        output: tricky_value(),
        error: Some(full_error()),
        steps: vec![
            (
                "rule".into(),
                StepRecord {
                    status: StepStatus::Succeeded,
                    output: json!({ "alert": true }),
                    error: None,
                    attempts: 1,
                    started_at: Some(Timestamp(1)),
                    finished_at: Some(Timestamp(2)),
                },
            ),
            (
                "notify".into(),
                StepRecord {
                    status: StepStatus::Failed,
                    output: Value::Null,
                    error: Some(full_error()),
                    attempts: 3,
                    started_at: Some(Timestamp(-5)),
                    finished_at: None,
                },
            ),
        ],
        parent: Some(ParentLink {
            execution: id(9),
            key: "call@1".into(),
        }),
        concurrency_key: Some("zone-A".into()),
    }
}

fn every_fact() -> Vec<Fact> {
    vec![
        Fact::Started {
            workflow: "rule-http".into(),
            version: 3,
            event: event(),
            inputs: json!({ "limit": 30 }),
            parent: Some(ParentLink {
                execution: id(1),
                key: "k".into(),
            }),
            at: Timestamp(1_764_000_000_000),
        },
        Fact::Started {
            workflow: "w".into(),
            version: 1,
            event: event(),
            inputs: Value::Null,
            parent: None,
            at: Timestamp(0),
        },
        Fact::EffectStarted {
            key: "out@1".into(),
            attempt: 1,
            at: Timestamp(5),
        },
        Fact::EffectFinished {
            key: "out@1".into(),
            attempt: u32::MAX,
            outcome: Outcome::Succeeded(tricky_value()),
            at: Timestamp(6),
        },
        Fact::EffectFinished {
            key: "out@2".into(),
            attempt: 2,
            outcome: Outcome::Failed(ErrorInfo::new("timeout", "took too long")),
            at: Timestamp(i64::MAX),
        },
        Fact::TimerFired {
            key: "nap@1#sleep".into(),
            at: Timestamp(i64::MIN),
        },
        Fact::EventReceived {
            key: "wait@1".into(),
            event: event(),
            at: Timestamp(8),
        },
        Fact::ChildStarted {
            key: "call@1".into(),
            child: id(3),
            at: Timestamp(9),
        },
        Fact::CancelRequested {
            reason: "asked".into(),
            at: Timestamp(10),
        },
    ]
}

fn encoded_record(record: &ExecutionRecord) -> Vec<u8> {
    let mut bytes = Vec::new();
    super::record(&mut bytes, record);
    bytes
}

fn encoded_fact(fact: &Fact) -> Vec<u8> {
    let mut bytes = Vec::new();
    super::fact(&mut bytes, fact);
    bytes
}

#[test]
fn records_round_trip_with_key_order_and_number_kinds() {
    let record = full_record();
    let back = read_record(&encoded_record(&record)).expect("decode");
    assert_eq!(back, record);
    // Same key order and the same JSON text: floats stay floats, integers stay integers.
    assert_eq!(
        serde_json::to_string(&back.output).expect("json"),
        serde_json::to_string(&record.output).expect("json")
    );
    let mut bare = full_record();
    bare.finished_at = None;
    bare.error = None;
    bare.steps.clear();
    bare.parent = None;
    bare.concurrency_key = None;
    bare.output = Value::Null;
    bare.status = ExecutionStatus::Running;
    assert_eq!(read_record(&encoded_record(&bare)).expect("decode"), bare);
}

#[test]
fn every_fact_round_trips() {
    for fact in every_fact() {
        assert_eq!(read_fact(&encoded_fact(&fact)).expect("decode"), fact);
    }
}

#[test]
fn the_head_is_read_without_the_rest() {
    let record = full_record();
    let bytes = encoded_record(&record);
    let head = read_head(&bytes).expect("head");
    assert_eq!(head.workflow, "rule-http");
    assert_eq!(head.status, ExecutionStatus::Failed);
    assert_eq!(head.created_at, record.created_at);
    assert_eq!(head.finished_at, record.finished_at);
    // The head is a prefix: cutting the rest off does not matter to it.
    let head_len = 16 + 1 + "rule-http".len() + 1 + 1 + 6 + 1 + 6;
    assert!(read_head(&bytes[..head_len]).is_ok());
}

#[test]
fn every_truncation_and_extension_is_refused() {
    let record = encoded_record(&full_record());
    for end in 0..record.len() {
        assert!(read_record(&record[..end]).is_err(), "record cut at {end}");
    }
    let mut longer = record.clone();
    longer.push(0);
    assert_eq!(read_record(&longer), Err(Malformed("trailing bytes")));
    for fact in every_fact() {
        let bytes = encoded_fact(&fact);
        for end in 0..bytes.len() {
            assert!(read_fact(&bytes[..end]).is_err(), "{fact:?} cut at {end}");
        }
    }
}

#[test]
fn flipped_bytes_never_panic() {
    // Every single-byte corruption of a record and a start fact, with a few values each:
    // decoding answers (right or wrong) without panicking or allocating wildly.
    let samples = [
        encoded_record(&full_record()),
        encoded_fact(&every_fact()[0]),
    ];
    for bytes in samples {
        for at in 0..bytes.len() {
            for replacement in [0x00, 0x01, 0x07, 0x08, 0x7f, 0x80, 0xff] {
                let mut broken = bytes.clone();
                broken[at] = replacement;
                let _ = read_record(&broken);
                let _ = read_fact(&broken);
                let _ = read_head(&broken);
            }
        }
    }
}

#[test]
fn lengths_beyond_the_value_are_refused() {
    // A string claiming 2^62 bytes, an array claiming a billion items.
    let mut huge_string = vec![STRING];
    uvar(&mut huge_string, 1 << 62);
    assert!(
        Reader {
            bytes: &huge_string
        }
        .value(0)
        .is_err()
    );
    let mut huge_array = vec![ARRAY];
    uvar(&mut huge_array, 1_000_000_000);
    assert_eq!(
        Reader { bytes: &huge_array }.value(0),
        Err(Malformed("count beyond the value"))
    );
    // An 11-byte varint.
    let endless = [0xffu8; 11];
    assert!(Reader { bytes: &endless }.uvar().is_err());
}

#[test]
fn nesting_is_bounded() {
    let nest = |depth: usize| {
        let mut value = Value::Null;
        for _ in 0..depth {
            value = Value::Array(vec![value]);
        }
        let mut bytes = Vec::new();
        super::value(&mut bytes, &value);
        (value, bytes)
    };
    let (value, bytes) = nest(MAX_DEPTH);
    assert_eq!(Reader { bytes: &bytes }.value(0), Ok(value));
    let (_, bytes) = nest(MAX_DEPTH + 1);
    assert_eq!(
        Reader { bytes: &bytes }.value(0),
        Err(Malformed("nested too deeply"))
    );
}

#[test]
fn smaller_than_json_for_an_http_execution() {
    let fact = &every_fact()[1];
    let record = full_record();
    let binary = encoded_fact(fact).len() + encoded_record(&record).len();
    let json = serde_json::to_vec(fact).expect("json").len()
        + serde_json::to_vec(&record).expect("json").len();
    assert!(binary * 10 < json * 7, "binary {binary} B, json {json} B");
}
