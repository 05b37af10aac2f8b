//! Agent + hub end to end, both real binaries: `reactor-hub device add` → `reactor-agent
//! enroll` → `reactor-agent run` connected through the hub's device endpoint
//! (`serve --mqtt-listen`, SQLite).
//!
//! Device `a` (default outbox): events flow; the hub is stopped (SIGTERM) while the agent
//! keeps producing; the agent is killed -9 and restarted during the outage and produces more;
//! the hub comes back. Every record (events and execution summaries) is stored exactly once
//! by (device, seq), seqs 1..=N without a hole, no gap reported, the hub's `acked_seq` is N,
//! and the events are in production order (an `emit` whose step the kill interrupted may be
//! repeated — at least once — never lost).
//!
//! Device `b` (outbox bounded to 4 KiB, `drop_oldest`) produces far more than fits during
//! the same outage: the hub receives gap notices, every seq is stored or covered by exactly
//! one gap, stored + dropped = produced, the newest record is stored, and the hub logs the
//! drop (counted, never silent).

mod fleet_support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use fleet_support::{Agent, Hub};
use sqlx::{Row, SqlitePool};

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

async fn produce(agent: &Agent, from: u64, to: u64) {
    for n in from..=to {
        let (status, body) = agent.post("/produce", serde_json::json!({ "n": n })).await;
        assert!(status == 202 || status == 200, "{status} {body}");
    }
}

async fn acked(db: &SqlitePool, device: &str) -> i64 {
    sqlx::query("SELECT acked_seq FROM devices WHERE id = ?")
        .bind(device)
        .fetch_one(db)
        .await
        .unwrap()
        .get(0)
}

async fn wait_acked(db: &SqlitePool, hub: &Hub, device: &str, at_least: i64, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let now = acked(db, device).await;
        if now >= at_least {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{device}: acked {now}, expected {at_least}\n{}",
            hub.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Stored seqs of `device`, events and executions together (sorted; a seq twice would show).
async fn stored_seqs(db: &SqlitePool, device: &str) -> Vec<i64> {
    sqlx::query(
        "SELECT seq FROM device_events WHERE device_id = ?1 \
         UNION ALL SELECT seq FROM device_executions WHERE device_id = ?1 ORDER BY seq",
    )
    .bind(device)
    .fetch_all(db)
    .await
    .unwrap()
    .iter()
    .map(|row| row.get(0))
    .collect()
}

/// The `n` of every stored event of `device`, in seq order.
async fn event_numbers(db: &SqlitePool, device: &str) -> Vec<u64> {
    sqlx::query("SELECT data FROM device_events WHERE device_id = ? ORDER BY seq")
        .bind(device)
        .fetch_all(db)
        .await
        .unwrap()
        .iter()
        .map(|row| {
            let data: serde_json::Value = serde_json::from_str(row.get::<&str, _>(0)).unwrap();
            match &data["n"] {
                serde_json::Value::Number(n) => n.as_u64().unwrap(),
                other => other.as_str().unwrap().parse().unwrap(),
            }
        })
        .collect()
}

/// Gap notices of `device`: (from, to, dropped).
async fn gaps(db: &SqlitePool, device: &str) -> Vec<(i64, i64, i64)> {
    sqlx::query(
        "SELECT seq_from, seq_to, dropped FROM device_gaps WHERE device_id = ? ORDER BY seq_from",
    )
    .bind(device)
    .fetch_all(db)
    .await
    .unwrap()
    .iter()
    .map(|row| (row.get(0), row.get(1), row.get(2)))
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_and_kill_lose_nothing_and_overflow_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let mut hub = Hub::new(&dir.path().join("hub"), &[]);
    let suffix = std::process::id();
    let (a, b) = (format!("e2e-a-{suffix}"), format!("e2e-b-{suffix}"));
    let token_a = hub.add_device(&a, "site=north");
    let token_b = hub.add_device(&b, "site=south");
    hub.start().await;

    let workflows = dir.path().join("wf");
    std::fs::create_dir_all(&workflows).unwrap();
    std::fs::write(workflows.join("produce.yaml"), WORKFLOW).unwrap();
    let (data_a, data_b) = (dir.path().join("agent-a"), dir.path().join("agent-b"));
    Agent::enroll(&hub.base(), &token_a, &data_a);
    Agent::enroll(&hub.base(), &token_b, &data_b);
    let small_outbox = [
        ("REACTOR_OUTBOX__MAX_BYTES", "4096"),
        ("REACTOR_OUTBOX__POLICY", "drop_oldest"),
    ];
    let agent_a = Agent::start(&workflows, &data_a, &[]).await;
    let agent_b = Agent::start(&workflows, &data_b, &small_outbox).await;
    let db = hub.database().await;

    // Online: every request is one event + one execution summary.
    produce(&agent_a, 1, 20).await;
    produce(&agent_b, 1, 5).await;
    wait_acked(&db, &hub, &a, 40, Duration::from_secs(30)).await;
    wait_acked(&db, &hub, &b, 10, Duration::from_secs(30)).await;

    // The hub goes away; the agents keep producing; agent a is killed -9 and restarted.
    hub.stop();
    produce(&agent_a, 21, 60).await;
    produce(&agent_b, 6, 85).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut agent_a = agent_a;
    agent_a.process.kill();
    let agent_a = Agent::start(&workflows, &data_a, &[]).await;
    produce(&agent_a, 61, 100).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        acked(&db, &a).await,
        40,
        "nothing is stored while the hub is down"
    );

    // The hub comes back on the same addresses: everything within the bound arrives.
    hub.start().await;
    wait_acked(&db, &hub, &a, 200, Duration::from_secs(120)).await;
    wait_acked(&db, &hub, &b, 170, Duration::from_secs(120)).await;

    // a: every seq exactly once, no hole, no gap; events in production order.
    let last = acked(&db, &a).await;
    let seqs = stored_seqs(&db, &a).await;
    assert_eq!(
        seqs,
        (1..=last).collect::<Vec<_>>(),
        "each seq once, no hole"
    );
    assert!(gaps(&db, &a).await.is_empty(), "nothing was dropped");
    let numbers = event_numbers(&db, &a).await;
    let mut distinct = numbers.clone();
    distinct.dedup();
    assert_eq!(distinct, (1..=100).collect::<Vec<_>>(), "{numbers:?}");
    // The kill may repeat the one `emit` it interrupted, nothing more.
    assert!(numbers.len() <= 101, "{numbers:?}");
    // 100 execution summaries (one more if the kill caught an execution between its summary
    // and its journal write: it finishes and reports again, at least once).
    let summaries = last - numbers.len() as i64;
    assert!((100..=101).contains(&summaries), "{summaries} summaries");

    // b: what did not fit is reported as gaps; every seq stored or in exactly one gap.
    let produced = 170;
    assert_eq!(acked(&db, &b).await, produced);
    let gaps_b = gaps(&db, &b).await;
    assert!(!gaps_b.is_empty(), "the overflow is reported");
    let stored: BTreeSet<i64> = stored_seqs(&db, &b).await.into_iter().collect();
    let mut covered = stored.clone();
    let mut dropped = 0;
    for &(from, to, count) in &gaps_b {
        assert_eq!(count, to - from + 1, "{gaps_b:?}");
        for seq in from..=to {
            assert!(
                covered.insert(seq),
                "seq {seq} stored and dropped: {gaps_b:?}"
            );
        }
        dropped += count;
    }
    assert_eq!(covered, (1..=produced).collect(), "every seq accounted for");
    assert_eq!(stored.len() as i64 + dropped, produced);
    assert!(stored.contains(&produced), "the newest record is kept");
    assert!(
        hub.logs().contains("device reported dropped records"),
        "the hub logs the drop"
    );

    drop(agent_a);
    drop(agent_b);
    db.close().await;
    hub.stop();
}

/// The real agent over TLS: the hub's endpoint with a certificate from a CA generated here;
/// enrollment hands the agent `mqtts://` and the CA, and the agent's events arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_syncs_over_the_tls_endpoint_with_the_enrolled_ca() {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    let dir = tempfile::tempdir().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Reactor e2e CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let (cert_file, key_file) = (dir.path().join("hub.crt"), dir.path().join("hub.key"));
    std::fs::write(&cert_file, format!("{}{}", server.pem(), ca.pem())).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    let mut hub = Hub::new(
        &dir.path().join("hub"),
        &[
            "--mqtt-tls-cert",
            cert_file.to_str().unwrap(),
            "--mqtt-tls-key",
            key_file.to_str().unwrap(),
        ],
    );
    let device = format!("e2e-tls-{}", std::process::id());
    let token = hub.add_device(&device, "site=west");
    hub.start().await;
    let data = dir.path().join("agent");
    Agent::enroll(&hub.base(), &token, &data);
    let enrollment = std::fs::read_to_string(data.join("fleet/enrollment.json")).unwrap();
    let enrollment: serde_json::Value = serde_json::from_str(&enrollment).unwrap();
    assert_eq!(
        enrollment["broker"]["url"],
        format!("mqtts://127.0.0.1:{}", hub.mqtt)
    );
    assert_eq!(
        enrollment["broker"]["ca_pem"].as_str().unwrap().trim(),
        ca.pem().trim()
    );
    let workflows = dir.path().join("wf");
    std::fs::create_dir_all(&workflows).unwrap();
    std::fs::write(workflows.join("produce.yaml"), WORKFLOW).unwrap();
    let agent = Agent::start(&workflows, &data, &[]).await;
    produce(&agent, 1, 10).await;
    let db = hub.database().await;
    wait_acked(&db, &hub, &device, 20, Duration::from_secs(60)).await;
    assert_eq!(
        event_numbers(&db, &device).await,
        (1..=10).collect::<Vec<_>>()
    );
    drop(agent);
    db.close().await;
    hub.stop();
}
