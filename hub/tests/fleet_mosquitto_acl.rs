//! The Mosquitto configuration shipped for external broker mode (deploy/mosquitto/reactor.conf
//! minus TLS, and reactor.acl) on a Mosquitto of this test's own: the real hub with
//! `--mqtt-broker mqtt://reactor-hub:…@127.0.0.1:HUB-PORT` on the hub's listener, two enrolled
//! devices whose credentials are put in the device listener's password file. A device's own batch is stored and
//! acked; what it publishes on the other device's topics never reaches the hub, and it
//! receives nothing of the other device's acks.

mod api_support;
mod fleet_device;
mod fleet_support;

use std::path::Path;
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

/// The shipped reactor.conf with this test's paths and ports, TLS left out: every line it
/// changes must be there, so a change to the shipped file that this test would miss fails it.
fn shipped_conf(dir: &Path, device_port: u16, hub_port: u16) -> String {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/mosquitto");
    let shipped = std::fs::read_to_string(deploy.join("reactor.conf")).unwrap();
    let replacements = [
        ("listener 8883", format!("listener {device_port} 127.0.0.1")),
        (
            "listener 1884 127.0.0.1",
            format!("listener {hub_port} 127.0.0.1"),
        ),
        (
            "password_file /etc/mosquitto/reactor.passwd",
            format!("password_file {}", dir.join("devices.passwd").display()),
        ),
        (
            "password_file /etc/mosquitto/reactor-hub.passwd",
            format!("password_file {}", dir.join("hub.passwd").display()),
        ),
        (
            "acl_file /etc/mosquitto/reactor.acl",
            format!("acl_file {}", deploy.join("reactor.acl").display()),
        ),
    ];
    let mut conf = String::new();
    let mut used = vec![false; replacements.len()];
    for line in shipped.lines() {
        if ["certfile ", "keyfile ", "tls_version "]
            .iter()
            .any(|tls| line.starts_with(tls))
        {
            continue;
        }
        match replacements.iter().position(|(from, _)| line == *from) {
            Some(at) => {
                used[at] = true;
                conf.push_str(&replacements[at].1);
            }
            None => conf.push_str(line),
        }
        conf.push('\n');
    }
    for ((from, _), used) in replacements.iter().zip(used) {
        assert!(used, "deploy/mosquitto/reactor.conf has no line `{from}`");
    }
    conf
}

/// Waits until Mosquitto accepts connections on `port`.
async fn listening(port: u16) {
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("Mosquitto does not listen on {port}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_acl_confines_devices_on_mosquitto() {
    let dir = tempfile::tempdir().unwrap();
    let device_passwords = dir.path().join("devices.passwd");
    let hub_passwords = dir.path().join("hub.passwd");
    std::fs::write(&device_passwords, "").unwrap();
    std::fs::write(&hub_passwords, "").unwrap();
    passwd(&hub_passwords, "reactor-hub", "hub-secret");
    let (device_port, hub_port) = (free_port(), free_port());
    let conf = dir.path().join("mosquitto.conf");
    std::fs::write(&conf, shipped_conf(dir.path(), device_port, hub_port)).unwrap();
    let broker = Broker(
        Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    listening(device_port).await;
    listening(hub_port).await;

    let place = Place::sqlite(&dir.path().join("data"));
    let url = format!("mqtt://reactor-hub:hub-secret@127.0.0.1:{hub_port}");
    let hub = Hub::start(place.clone(), &[("REACTOR_MQTT_BROKER", url.as_str())]).await;
    let mut devices = Vec::new();
    for name in ["acl-a", "acl-b"] {
        let token = add_device(&place, name, &["site=x"], None);
        let (id, password, _) = enrolled(&hub, &token).await;
        passwd(&device_passwords, &id, &password);
        devices.push((id, password));
    }
    // Mosquitto reads the password files again on SIGHUP.
    let reload = Command::new("kill")
        .args(["-HUP", &broker.0.id().to_string()])
        .status()
        .unwrap();
    assert!(reload.success());
    tokio::time::sleep(Duration::from_millis(500)).await;

    let (a, a_password) = &devices[0];
    let (b, _) = &devices[1];
    // The hub's listener takes only the hub's login.
    let refused = connect(
        "127.0.0.1",
        hub_port,
        a,
        a_password,
        None,
        Duration::from_secs(10),
    )
    .await;
    assert!(refused.is_err(), "a device logged in on the hub's listener");
    let mut device = connect(
        "127.0.0.1",
        device_port,
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

    // One login, several connections, none taking another over (as they did when the hub
    // shared the device listener, whose client id is the login).
    assert!(
        !hub.logs().contains("lost the broker"),
        "the hub's connections dropped: {}",
        hub.logs()
    );

    db.close().await;
    drop(hub);
    drop(broker);
}
