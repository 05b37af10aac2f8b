//! End to end: `reactor-agent enroll` against an enrollment endpoint, then `reactor-agent run`
//! syncing through the real Mosquitto (127.0.0.1:1883, behind a switchable TCP proxy) with a
//! hub stand-in that speaks the sync protocol (fleet_support).
//!
//! - store-and-forward: records produced while the broker is down — with the agent killed -9
//!   in the middle of the outage — all arrive once the broker is back: every seq stored
//!   exactly once, none missing, events in order;
//! - overflow: a tiny outbox under `drop_oldest` reports what it dropped as a gap, and the hub
//!   sees every seq either stored or covered by the gap;
//! - bundles and commands: a signed bundle installs its workflow, a forged one is refused,
//!   a renewal (same workflows, higher version) is reported without reinstalling anything,
//!   and neither bundle reconnects the agent (the status goes out on the open connection),
//!   ping/run commands are answered once per command id.

mod fleet_support;
mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use fleet_support::{Hub, Proxy, enrollment_server};
use reactor_core::sync::bundle::{BundleSigner, BundleSpec, WorkflowText};
use reactor_core::sync::messages::{BundleFrame, Command, JsonText};
use reactor_core::sync::{Channel, Envelope, Message, Seq};
use support::{Agent, BIN, free_port, write};

const WORKFLOW: &str = "\
reactor: 1
name: produce
version: 1
triggers:
  - http: { path: /produce, method: POST, response: async }
steps:
  - id: out
    emit:
      type: reading
      data: { n: \"${{ event.data.n }}\" }
";

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}-{}", std::process::id(), free_port())
}

async fn enroll(dir: &Path, device: &str, proxy: &Proxy) -> BundleSigner {
    let signer = BundleSigner::from_seed(&[7; 32]).unwrap();
    let addr = enrollment_server(device, "re_good", proxy.port, signer.public_key()).await;
    let hub = format!("http://{addr}");
    let data = dir.join("data");
    let run = |token: &str| {
        std::process::Command::new(BIN)
            .args(["enroll", "--hub", &hub, "--token", token, "--data"])
            .arg(&data)
            .output()
            .unwrap()
    };
    let refused = run("re_wrong");
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("401"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let enrolled = run("re_good");
    assert!(
        enrolled.status.success(),
        "{}",
        String::from_utf8_lossy(&enrolled.stderr)
    );
    let file = data.join("fleet/enrollment.json");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // Single use: the same token again is refused.
    assert_eq!(run("re_good").status.code(), Some(1));
    signer
}

async fn produce(agent: &Agent, from: u64, to: u64) {
    for n in from..=to {
        let (status, body) = agent.post("/produce", serde_json::json!({ "n": n })).await;
        assert!(status == 202 || status == 200, "{status} {body}");
    }
}

/// Waits until the agent recorded `records` records in total (events + summaries), checked
/// through the hub once reachable or through time.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(500)).await;
}

/// Stops the agent (its will is published), then clears the retained status it left.
async fn cleanup(agent: Agent, hub: &Hub) {
    drop(agent);
    tokio::time::sleep(Duration::from_millis(300)).await;
    hub.clear_retained().await;
}

fn event_numbers(hub: &Hub) -> Vec<u64> {
    let state = hub.state.lock().unwrap();
    state
        .stored
        .values()
        .filter(|(kind, _)| kind == "event")
        .map(|(_, text)| {
            let json = text.trim_start_matches("reading ");
            let value: serde_json::Value = serde_json::from_str(json).unwrap();
            value["n"].as_u64().unwrap()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_produced_during_an_outage_and_a_kill_arrive_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let device = unique("fa");
    let proxy = Proxy::start().await;
    let hub = Hub::start(&device).await;
    enroll(dir.path(), &device, &proxy).await;
    let workflows = dir.path().join("wf");
    std::fs::create_dir_all(&workflows).unwrap();
    write(&workflows, "produce.yaml", WORKFLOW);
    let data = dir.path().join("data");
    let port = free_port();
    let agent = Agent::spawn(&workflows, &data, port, &[]);
    agent.healthy(Duration::from_secs(20)).await;

    // Online: 20 requests → 20 events + 20 execution summaries.
    produce(&agent, 1, 20).await;
    hub.wait_acked(40, Duration::from_secs(20)).await;

    // Outage, with a kill -9 in the middle.
    proxy.down();
    produce(&agent, 21, 60).await;
    settle().await;
    let mut agent = agent;
    agent.kill();
    let agent = Agent::spawn(&workflows, &data, port, &[]);
    agent.healthy(Duration::from_secs(20)).await;
    produce(&agent, 61, 100).await;
    settle().await;
    assert!(hub.acked() <= 40 + 2, "nothing crossed during the outage");

    proxy.up();
    hub.wait_acked(200, Duration::from_secs(60)).await;
    settle().await;
    {
        let state = hub.state.lock().unwrap();
        let last = *state.stored.keys().last().unwrap();
        // Every seq stored exactly once (the map holds one entry per seq), no holes, no gaps.
        assert!(state.gaps.is_empty(), "{:?}", state.gaps);
        assert_eq!(
            state.stored.keys().copied().collect::<Vec<_>>(),
            (1..=last).collect::<Vec<_>>()
        );
        assert_eq!(state.acked, last);
    }
    // Every event arrived; in seq order they are in production order. A kill -9 may repeat
    // an `emit` whose step had not finished (at least once), never lose one.
    let numbers = event_numbers(&hub);
    let mut unique_numbers = numbers.clone();
    unique_numbers.dedup();
    assert_eq!(unique_numbers, (1..=100).collect::<Vec<_>>(), "{numbers:?}");
    assert!(numbers.len() <= 100 + 2, "{numbers:?}");
    {
        let state = hub.state.lock().unwrap();
        assert!(
            state.arrival.windows(2).all(|w| w[0] < w[1]) || state.duplicates > 0,
            "events arrive in seq order"
        );
        let online = state.online.unwrap();
        assert_eq!(online.1, reactor_core::sync::messages::Presence::Online);
    }
    cleanup(agent, &hub).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overflow_is_dropped_oldest_first_and_reported_as_a_gap() {
    let dir = tempfile::tempdir().unwrap();
    let device = unique("fo");
    let proxy = Proxy::start().await;
    let hub = Hub::start(&device).await;
    enroll(dir.path(), &device, &proxy).await;
    let workflows = dir.path().join("wf");
    std::fs::create_dir_all(&workflows).unwrap();
    write(&workflows, "produce.yaml", WORKFLOW);
    let data = dir.path().join("data");
    proxy.down();
    let agent = Agent::spawn(
        &workflows,
        &data,
        free_port(),
        &[
            ("REACTOR_OUTBOX__MAX_BYTES", "4096"),
            ("REACTOR_OUTBOX__POLICY", "drop_oldest"),
        ],
    );
    agent.healthy(Duration::from_secs(20)).await;
    produce(&agent, 1, 80).await;
    settle().await;
    proxy.up();
    // 160 records were produced; the outbox kept only the newest that fit.
    hub.wait_acked(160, Duration::from_secs(60)).await;
    {
        let state = hub.state.lock().unwrap();
        assert!(!state.gaps.is_empty(), "a gap was reported");
        let dropped: u64 = state.gaps.values().map(|(_, count)| count).sum();
        assert!(dropped > 0);
        assert_eq!(
            state.covered().into_iter().collect::<Vec<_>>(),
            (1..=160).collect::<Vec<_>>(),
            "every seq is stored or covered by a gap"
        );
        assert_eq!(state.stored.len() as u64 + dropped, 160);
        // The newest records survived.
        assert!(state.stored.contains_key(&160));
    }
    cleanup(agent, &hub).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_bundles_install_and_commands_are_answered_once() {
    let dir = tempfile::tempdir().unwrap();
    let device = unique("fb");
    let proxy = Proxy::start().await;
    let hub = Hub::start(&device).await;
    let signer = enroll(dir.path(), &device, &proxy).await;
    let workflows = dir.path().join("wf");
    std::fs::create_dir_all(&workflows).unwrap();
    let data = dir.path().join("data");
    let agent = Agent::spawn(&workflows, &data, free_port(), &[]);
    agent.healthy(Duration::from_secs(20)).await;
    hub.wait_online(Duration::from_secs(20)).await;

    // A forged bundle (another key) changes nothing.
    let forger = BundleSigner::from_seed(&[9; 32]).unwrap();
    let spec = |version| BundleSpec {
        version,
        target: BTreeMap::from([("site".to_string(), "north".to_string())]),
        created: reactor_core::engine::Timestamp::now(),
        expires: reactor_core::engine::Timestamp(
            reactor_core::engine::Timestamp::now().0 + 3_600_000,
        ),
        workflows: vec![WorkflowText {
            name: "produce".into(),
            text: WORKFLOW.into(),
        }],
        endorsements: Vec::new(),
    };
    let forged = forger.sign(spec(1));
    hub.send(
        Channel::Bundle,
        Envelope::new(Seq(1), Message::Bundle(BundleFrame { bytes: forged })),
        false,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (status, _) = agent.post("/produce", serde_json::json!({"n": 1})).await;
    assert_eq!(status, 404, "the forged bundle installed nothing");
    assert!(agent.logs().contains("bundle refused"), "{}", agent.logs());

    // Connections so far (the agent logs each CONNACK); accepting bundles adds none.
    let connects = |logs: &str| logs.matches("connected to the fleet hub").count();
    let connected_before = connects(&agent.logs());
    assert!(connected_before > 0, "{}", agent.logs());

    let good = signer.sign(spec(2));
    hub.send(
        Channel::Bundle,
        Envelope::new(Seq(2), Message::Bundle(BundleFrame { bytes: good })),
        false,
    )
    .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (status, _) = agent.post("/produce", serde_json::json!({"n": 1})).await;
        if status == 202 || status == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "bundle not installed: {}",
            agent.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The status reports the bundle version (published on the same connection).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let online = hub.state.lock().unwrap().online;
        if matches!(online, Some((_, _, Some(2)))) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{online:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The broker's retained status is that newest online status.
    let retained = hub.retained_status().await.unwrap();
    assert_eq!(
        (retained.1, retained.2),
        (reactor_core::sync::messages::Presence::Online, Some(2)),
        "{retained:?}"
    );

    // Commands: ping, run (twice with the same id: one execution), unknown workflow.
    let command = |seq: u64, command: Command| Envelope::new(Seq(seq), Message::Command(command));
    hub.send(
        Channel::Cmd,
        command(10, Command::Ping { nonce: 42 }),
        false,
    )
    .await;
    let run = Command::RunWorkflow {
        workflow: "produce".into(),
        input: JsonText::from_value(&serde_json::json!({})),
    };
    hub.send(Channel::Cmd, command(11, run.clone()), false)
        .await;
    hub.send(Channel::Cmd, command(11, run), false).await;
    hub.send(
        Channel::Cmd,
        command(
            12,
            Command::RunWorkflow {
                workflow: "nope".into(),
                input: JsonText::from_value(&serde_json::json!({})),
            },
        ),
        false,
    )
    .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let results = hub.state.lock().unwrap().command_results.clone();
        if results.len() >= 4 {
            assert_eq!(results[0], (10, "Pong { nonce: 42 }".to_string()));
            assert_eq!(results[1].0, 11);
            assert!(results[1].1.starts_with("Started"), "{results:?}");
            assert_eq!(
                results[2], results[1],
                "a repeated command gets the same answer"
            );
            assert_eq!(results[3], (12, "NotFound".to_string()));
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{results:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A renewal (the hub re-signs before expiry): same workflows, a higher version. The
    // status reports it; nothing is installed again.
    let installs = |logs: &str| logs.matches("workflow active").count();
    let before = installs(&agent.logs());
    assert!(
        before > 0,
        "the bundle's install is not logged: {}",
        agent.logs()
    );
    hub.send(
        Channel::Bundle,
        Envelope::new(
            Seq(3),
            Message::Bundle(BundleFrame {
                bytes: signer.sign(spec(3)),
            }),
        ),
        false,
    )
    .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let online = hub.state.lock().unwrap().online;
        if matches!(online, Some((_, _, Some(3)))) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{online:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let logs = agent.logs();
    assert!(logs.contains("nothing reinstalled"), "{logs}");
    assert_eq!(installs(&logs), before, "a renewal reinstalled workflows");
    // Neither the new bundle nor its renewal reconnected the agent.
    assert_eq!(connects(&logs), connected_before, "{logs}");
    assert_eq!(
        logs.matches("new bundle reported on the open connection")
            .count(),
        2,
        "{logs}"
    );
    let (status, body) = agent.post("/produce", serde_json::json!({"n": 3})).await;
    assert!(status == 202 || status == 200, "{status} {body}");

    // After a kill -9 the accepted bundle is applied again from the store (it was not
    // retained on the broker, so only the device's own record can bring it back).
    let mut agent = agent;
    agent.kill();
    let agent = Agent::spawn(&workflows, &data, free_port(), &[]);
    agent.healthy(Duration::from_secs(20)).await;
    let (status, body) = agent.post("/produce", serde_json::json!({"n": 2})).await;
    assert!(status == 202 || status == 200, "{status} {body}");
    cleanup(agent, &hub).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_triggers_holds_producers_back_and_drops_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let device = unique("fk");
    let proxy = Proxy::start().await;
    let hub = Hub::start(&device).await;
    enroll(dir.path(), &device, &proxy).await;
    let workflows = dir.path().join("wf");
    std::fs::create_dir_all(&workflows).unwrap();
    write(&workflows, "produce.yaml", WORKFLOW);
    let data = dir.path().join("data");
    proxy.down();
    let agent = Agent::spawn(
        &workflows,
        &data,
        free_port(),
        &[
            ("REACTOR_OUTBOX__MAX_BYTES", "4096"),
            ("REACTOR_OUTBOX__POLICY", "block_triggers"),
        ],
    );
    agent.healthy(Duration::from_secs(20)).await;
    // Far more than 4 KiB of records: the executions wait for room instead of dropping.
    produce(&agent, 1, 60).await;
    settle().await;
    let (_, running) = agent.get("/api/v1/executions?status=running").await;
    assert!(
        running.to_string().contains("produce"),
        "executions wait for room: {running}"
    );
    proxy.up();
    hub.wait_acked(120, Duration::from_secs(60)).await;
    {
        let state = hub.state.lock().unwrap();
        assert!(state.gaps.is_empty(), "nothing dropped: {:?}", state.gaps);
        assert_eq!(
            state.stored.keys().copied().collect::<Vec<_>>(),
            (1..=120).collect::<Vec<_>>()
        );
    }
    let mut numbers = event_numbers(&hub);
    numbers.sort_unstable();
    assert_eq!(numbers, (1..=60).collect::<Vec<_>>());
    cleanup(agent, &hub).await;
}
