//! Load measurement (ignored by default; run by benches/load/run-fleet-drain.sh): how fast
//! the agent drains a full outbox to the hub after the broker comes back.
//!
//! The outbox in the agent's journal file is pre-filled with `REACTOR_DRAIN_EVENTS` (default
//! 20,000) event records through `reactor_core::outbox` (in batches: the production path is
//! not what is measured), the agent starts while the broker (a proxy in front of the real
//! Mosquitto) is down, then the broker comes up and the time from the first batch reaching
//! the hub stand-in to the hub acking the last record is measured. Prints one line of figures.

mod fleet_support;
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet_support::{Hub, Proxy, enrollment_server};
use reactor_core::engine::Timestamp;
use reactor_core::outbox::{NewRecord, Outbox, OutboxLimits, RecordKind};
use reactor_core::store::{RedbOptions, RedbStore};
use reactor_core::sync::bundle::BundleSigner;
use reactor_core::sync::messages::{DeviceEvent, JsonText};
use support::{Agent, BIN, free_port};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "load measurement: benches/load/run-fleet-drain.sh"]
async fn drain_after_reconnect() {
    let events: u64 = std::env::var("REACTOR_DRAIN_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let dir = tempfile::tempdir().unwrap();
    let device = format!("drain-{}-{}", std::process::id(), free_port());
    let proxy = Proxy::start().await;
    let hub = Hub::start(&device).await;
    let signer = BundleSigner::from_seed(&[7; 32]).unwrap();
    let addr = enrollment_server(&device, "re_t", proxy.port, signer.public_key()).await;
    let data = dir.path().join("data");
    let enrolled = std::process::Command::new(BIN)
        .args([
            "enroll",
            "--hub",
            &format!("http://{addr}"),
            "--token",
            "re_t",
            "--data",
        ])
        .arg(&data)
        .output()
        .unwrap();
    assert!(enrolled.status.success());

    // Pre-fill the outbox in the journal file the agent will open.
    {
        let store =
            Arc::new(RedbStore::open(data.join("journal.redb"), RedbOptions::default()).unwrap());
        let outbox = Outbox::open(store.clone(), OutboxLimits::default())
            .await
            .unwrap();
        let mut n = 0;
        while n < events {
            let batch: Vec<NewRecord> = (n..(n + 1000).min(events))
                .map(|i| NewRecord {
                    kind: RecordKind::Event,
                    created: Timestamp::now(),
                    payload: postcard::to_allocvec(&DeviceEvent {
                        id: format!("ev-{i}"),
                        event_type: "reading".into(),
                        source: "bench".into(),
                        time: Timestamp::now(),
                        data: JsonText::from_value(&serde_json::json!({"n": i, "temp": 21.5})),
                        meta: JsonText::from_value(&serde_json::json!({})),
                    })
                    .unwrap(),
                })
                .collect();
            n += batch.len() as u64;
            outbox.append(batch, Timestamp::now()).await.unwrap();
        }
        store.close().await.unwrap();
    }

    proxy.down();
    let workflows = dir.path().join("wf");
    std::fs::create_dir_all(&workflows).unwrap();
    let agent = Agent::spawn(&workflows, &data, free_port(), &[]);
    agent.healthy(Duration::from_secs(20)).await;
    let up = Instant::now();
    proxy.up();
    hub.wait_acked(events, Duration::from_secs(300)).await;
    let done = Instant::now();
    let first = hub.state.lock().unwrap().first_batch_at.unwrap();
    let elapsed = done - first;
    let (stored, duplicates) = {
        let state = hub.state.lock().unwrap();
        (state.stored.len() as u64, state.duplicates)
    };
    assert_eq!(stored, events);
    println!(
        "fleet drain: {events} events in {:.3} s = {:.0} events/s (first batch -> last ack); \
         {:.3} s from broker up (includes the reconnect backoff); duplicates received: {}",
        elapsed.as_secs_f64(),
        events as f64 / elapsed.as_secs_f64(),
        (done - up).as_secs_f64(),
        duplicates
    );
    drop(agent);
    tokio::time::sleep(Duration::from_millis(300)).await;
    hub.clear_retained().await;
}
