//! External broker mode: the real `reactor-hub serve --mqtt-broker mqtt://127.0.0.1:1883`
//! (the machine's Mosquitto) with no device endpoint of its own. Enrollment hands devices the
//! broker's address (never the hub's broker credentials); a device connected straight to
//! Mosquitto has its status and event batches stored and acked by the hub's ingest.
//!
//! Mosquitto is shared with other tests, so the device ids are unique per run (the topic
//! scheme is fixed).

mod api_support;
mod fleet_device;
mod fleet_support;

use std::time::Duration;

use api_support::{Hub, Place};
use fleet_device::{connect, events, status};
use fleet_support::{add_device, enrolled};
use reactor_core::sync::Channel;
use reactor_core::sync::messages::Presence;
use reactor_hub::db::Database;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_through_an_external_mosquitto() {
    let dir = tempfile::tempdir().unwrap();
    let place = Place::sqlite(&dir.path().join("data"));
    let hub = Hub::start(
        place.clone(),
        &[("REACTOR_MQTT_BROKER", "mqtt://127.0.0.1:1883")],
    )
    .await;
    let name = format!("ext-{}", ulid::Ulid::new().to_string().to_lowercase());
    let token = add_device(&place, &name, &["site=east"], None);
    let (id, password, answer) = enrolled(&hub, &token).await;
    assert_eq!(answer["broker"]["url"], "mqtt://127.0.0.1:1883");
    assert!(answer["broker"].get("ca_pem").is_none(), "{answer}");

    let mut device = connect(
        "127.0.0.1",
        1883,
        &id,
        &password,
        None,
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    device
        .send(Channel::Status, status(1, Presence::Online))
        .await;
    // The hub's subscription may still be on its way: resend until acked, as agents do.
    let mut acked = None;
    for _ in 0..10 {
        device.send(Channel::Events, events(1, 50)).await;
        acked = device.acked(50, Duration::from_secs(2)).await;
        if acked.is_some() {
            break;
        }
    }
    assert_eq!(acked, Some(50), "{}", hub.logs());
    // A resend is acked again and stores nothing twice.
    device.send(Channel::Events, events(1, 50)).await;
    device.send(Channel::Events, events(51, 10)).await;
    assert_eq!(device.acked(60, Duration::from_secs(20)).await, Some(60));

    let db = Database::open(None, &place.data).await.unwrap();
    let counts = reactor_hub::fleet::ingest::counts(&db, &id).await.unwrap();
    assert_eq!(counts["events"], 60);
    let list = hub.get("/api/v1/devices").await.expect(200);
    let me = list.body["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == id.as_str())
        .cloned()
        .unwrap();
    assert_eq!(me["online"], true, "{me}");
    assert_eq!(me["acked_seq"], 60, "{me}");

    // Leave no retained status behind on the shared broker.
    device
        .client
        .publish(
            reactor_core::sync::DeviceId::parse(&id)
                .unwrap()
                .topic(Channel::Status),
            rumqttc::QoS::AtLeastOnce,
            true,
            Vec::new(),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    device.client.disconnect().await.unwrap();
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unusable_external_broker_url_is_a_configuration_error() {
    let dir = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(api_support::BIN)
        .args([
            "serve",
            "--mqtt-broker",
            "mqtt://127.0.0.1:1883/path",
            "--data",
        ])
        .arg(dir.path())
        .env_remove("REACTOR_DATABASE_URL")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("fleet.mqtt_broker"), "{stderr}");
}
