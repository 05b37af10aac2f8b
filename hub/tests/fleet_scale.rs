//! Connections at CI size: 2,000 real MQTT clients (rumqttc) held open at once through the
//! real `reactor-hub serve --mqtt-listen` endpoint (SQLite). Each authenticates with its own
//! credential, subscribes to its `ack` topic, reports `Online` and sends one event, which is
//! stored and acked. With all of them connected the hub's registry shows 2,000 devices online
//! with acked seq 1; when they all drop without DISCONNECT, their last wills mark every one
//! offline. Connect rate and the hub's RSS per connection are printed (the 10,000-device
//! figures come from `benches/load/run-fleet-connect.sh`).
//!
//! `REACTOR_SCALE_DEVICES` changes the count (default 2,000). The hub raises its own
//! open-files limit; this process raises its soft limit to the hard one.

mod api_support;
mod fleet_device;

use std::sync::Arc;
use std::time::{Duration, Instant};

use api_support::{Hub, Place, free_port};
use fleet_device::{Device, connect, events, status};
use reactor_core::sync::Channel;
use reactor_core::sync::messages::Presence;
use reactor_hub::db::Database;
use reactor_hub::fleet::registry;
use sqlx::Row;
use tokio::sync::Semaphore;

/// Connections opened at once while ramping up.
const RAMP: usize = 64;

fn raise_open_files() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let _ = setrlimit(
        Resource::Nofile,
        Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        },
    );
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

async fn count(db: &Database, sql: &str) -> i64 {
    let Database::Sqlite(pool) = db else {
        unreachable!()
    };
    sqlx::query(sqlx::AssertSqlSafe(sql.to_string()))
        .fetch_one(pool)
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_devices_connected_at_once() {
    raise_open_files();
    let devices: usize = std::env::var("REACTOR_SCALE_DEVICES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000);
    let dir = tempfile::tempdir().unwrap();
    let place = Place::sqlite(&dir.path().join("data"));
    let db = Database::open(None, &place.data).await.unwrap();
    db.migrate().await.unwrap();
    let mut credentials = Vec::with_capacity(devices);
    for i in 0..devices {
        let name = format!("scale-{i:05}");
        let token = registry::add_device(&db, &name, &Default::default(), Duration::from_secs(600))
            .await
            .unwrap();
        let enrolled = registry::enroll(&db, &token).await.unwrap();
        credentials.push((name, enrolled.credential));
    }
    let mqtt = free_port();
    let listen = format!("127.0.0.1:{mqtt}");
    let hub = Hub::start(place.clone(), &[("REACTOR_MQTT_LISTEN", listen.as_str())]).await;
    let rss_before = rss_kib(hub.pid());

    let started = Instant::now();
    let ramp = Arc::new(Semaphore::new(RAMP));
    let mut tasks = Vec::with_capacity(devices);
    for (name, password) in credentials {
        let ramp = ramp.clone();
        tasks.push(tokio::spawn(async move {
            let _slot = ramp.acquire_owned().await.unwrap();
            let mut device: Device = connect(
                "127.0.0.1",
                mqtt,
                &name,
                &password,
                None,
                Duration::from_secs(60),
            )
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
            device
                .send(Channel::Status, status(1, Presence::Online))
                .await;
            device.send(Channel::Events, events(1, 1)).await;
            let acked = device.acked(1, Duration::from_secs(60)).await;
            assert_eq!(acked, Some(1), "{name} not acked");
            device
        }));
    }
    let mut connected = Vec::with_capacity(devices);
    for task in tasks {
        connected.push(task.await.unwrap());
    }
    let elapsed = started.elapsed();
    let rss_after = rss_kib(hub.pid());
    eprintln!(
        "fleet scale: {devices} devices connected + acked in {:.1} s ({:.0}/s); hub RSS {} → {} KiB ({:.1} KiB per connection)",
        elapsed.as_secs_f64(),
        devices as f64 / elapsed.as_secs_f64(),
        rss_before,
        rss_after,
        (rss_after.saturating_sub(rss_before)) as f64 / devices as f64
    );

    // All of them at once, as the hub sees it.
    let devices = devices as i64;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let online = count(&db, "SELECT COUNT(*) FROM devices WHERE online = 1").await;
        if online == devices {
            break;
        }
        assert!(Instant::now() < deadline, "{online} of {devices} online");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM devices WHERE acked_seq = 1").await,
        devices
    );
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM device_events").await,
        devices
    );

    // Every connection drops without DISCONNECT: every last will arrives.
    for device in connected {
        device.abort();
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let online = count(&db, "SELECT COUNT(*) FROM devices WHERE online = 1").await;
        if online == 0 {
            break;
        }
        if Instant::now() >= deadline {
            let logs = hub.logs();
            let tail: Vec<&str> = logs
                .lines()
                .filter(|line| !line.contains("is already gone"))
                .filter(|line| {
                    line.contains("panicked") || line.contains("ERROR") || line.contains("WARN")
                })
                .take(30)
                .collect();
            panic!(
                "{online} still online after their connections dropped; hub log tail: {tail:#?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    db.close().await;
    drop(hub);
}
