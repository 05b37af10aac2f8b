//! The Mosquitto configuration shipped for external broker mode (deploy/mosquitto/reactor.acl
//! and the settings of reactor.conf, minus TLS) on a Mosquitto of this test's own: the real
//! hub with `--mqtt-broker mqtt://reactor-hub:…@127.0.0.1:PORT`, two enrolled devices whose
//! credentials are put in the broker's password file. A device's own batch is stored and
//! acked; what it publishes on the other device's topics never reaches the hub, and it
//! receives nothing of the other device's acks.

mod api_support;
mod fleet_device;
mod fleet_support;

use std::process::{Command, Stdio};
use std::time::Duration;

use api_support::{Hub, Place, free_port};
use fleet_device::{connect, events};
use fleet_support::{add_device, enrolled};
use reactor_core::sync::{Channel, DeviceId};
use reactor_hub::db::Database;

fn passwd(file: &std::path::Path, user: &str, password: &str) {
    let status = Command::new("mosquitto_passwd")
        .arg("-b")
        .arg(file)
        .args([user, password])
        .status()
        .unwrap();
    assert!(status.success());
}

/// This test's Mosquitto: stopped when dropped, so a failing assertion (a panic unwinds
/// through the test) does not leave it running.
struct Broker(std::process::Child);

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_acl_confines_devices_on_mosquitto() {
    let dir = tempfile::tempdir().unwrap();
    let acl =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/mosquitto/reactor.acl");
    let passwords = dir.path().join("passwd");
    std::fs::write(&passwords, "").unwrap();
    passwd(&passwords, "reactor-hub", "hub-secret");
    let port = free_port();
    let conf = dir.path().join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "per_listener_settings false\nallow_anonymous false\npassword_file {}\nacl_file {}\n\
             listener {port} 127.0.0.1\nuse_username_as_clientid true\n",
            passwords.display(),
            acl.display()
        ),
    )
    .unwrap();
    let broker = Broker(
        Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;

    let place = Place::sqlite(&dir.path().join("data"));
    let url = format!("mqtt://reactor-hub:hub-secret@127.0.0.1:{port}");
    let hub = Hub::start(place.clone(), &[("REACTOR_MQTT_BROKER", url.as_str())]).await;
    let mut devices = Vec::new();
    for name in ["acl-a", "acl-b"] {
        let token = add_device(&place, name, &["site=x"], None);
        let (id, password, _) = enrolled(&hub, &token).await;
        passwd(&passwords, &id, &password);
        devices.push((id, password));
    }
    // Mosquitto reads the password file again on SIGHUP.
    let reload = Command::new("kill")
        .args(["-HUP", &broker.0.id().to_string()])
        .status()
        .unwrap();
    assert!(reload.success());
    tokio::time::sleep(Duration::from_millis(500)).await;

    let (a, a_password) = &devices[0];
    let (b, _) = &devices[1];
    let mut device = connect(
        "127.0.0.1",
        port,
        a,
        a_password,
        None,
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    let mut acked = None;
    for _ in 0..10 {
        device.send(Channel::Events, events(1, 5)).await;
        acked = device.acked(5, Duration::from_secs(2)).await;
        if acked.is_some() {
            break;
        }
    }
    assert_eq!(acked, Some(5), "{}", hub.logs());

    // Acks of resends still on their way, then none.
    tokio::time::sleep(Duration::from_secs(1)).await;
    while device.acks.try_recv().is_ok() {}

    // a on b's topics: a batch as b, and b's acks. Nothing arrives either way.
    let b_id = DeviceId::parse(b).unwrap();
    device
        .client
        .subscribe(b_id.topic(Channel::Ack), rumqttc::QoS::AtLeastOnce)
        .await
        .unwrap();
    device
        .client
        .publish(
            b_id.topic(Channel::Events),
            rumqttc::QoS::AtLeastOnce,
            false,
            events(1, 3),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let db = Database::open(None, &place.data).await.unwrap();
    let b_counts = reactor_hub::fleet::ingest::counts(&db, b).await.unwrap();
    assert_eq!(b_counts["events"], 0, "a's publish as b reached the hub");
    let a_counts = reactor_hub::fleet::ingest::counts(&db, a).await.unwrap();
    assert_eq!(a_counts["events"], 5);
    assert!(
        device.acks.try_recv().is_err(),
        "a received an ack (b's ack topic or a stray one)"
    );

    db.close().await;
    drop(hub);
    drop(broker);
}
