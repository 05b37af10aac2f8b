//! External broker mode with provisioning: a real Mosquitto 2 of this test's own (free port,
//! generated config, the dynamic-security plugin with only an admin login) and the real hub
//! with `--mqtt-broker mqtt://reactor-hub:…@127.0.0.1:PORT` and `[fleet] provision =
//! "mosquitto_dynsec"` (admin login in `provision_username` / `provision_password`).
//!
//! Checked: the hub creates its own broker login and role at start; enrollment provisions
//! each device (a client with the device's credential, bound to its client id, and a role
//! for its own topics); the device connects with what enrollment handed it, its batch is
//! stored and acked; a command from the hub reaches it on its own `cmd` topic; on another
//! device's topics (publish, subscribe), on wildcards and on
//! `$SYS` it is refused (SUBACK failure; an admin observer never sees its foreign publishes);
//! the same credential under another client id, a wrong password and an unprovisioned name
//! are refused at CONNECT; a device named like the hub's login, or whose broker client
//! someone else created, is refused (502); a leftover of the hub's own (an enrollment
//! interrupted after provisioning) is replaced; an enrollment while the broker is down
//! fails (502) and its token still works once the broker is back; `remove_device` deletes
//! the hub's client (the device cannot log in) and refuses to touch a foreign one. The
//! broker is restarted in between: what was provisioned survives (the plugin's file).
//!
//! Skipped, saying so, when the `mosquitto` binary or the plugin is not installed.

mod api_support;
mod fleet_device;
mod fleet_support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use api_support::{Hub, Place, free_port};
use fleet_device::{connect, events};
use fleet_support::{add_device, enroll, enrolled};
use reactor_core::sync::messages::{Command as DeviceCommand, Presence};
use reactor_core::sync::{Channel, DeviceId, Frame, Message, decode};
use reactor_hub::db::Database;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, SubscribeReasonCode};
use tokio::sync::mpsc;

const PLUGINS: [&str; 3] = [
    "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so",
    "/usr/lib/mosquitto_dynamic_security.so",
    "/usr/local/lib/mosquitto_dynamic_security.so",
];
const ADMIN: &str = "broker-admin";
const ADMIN_PASSWORD: &str = "admin-secret";

fn which(binary: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(binary))
        .chain([Path::new("/usr/sbin").join(binary)])
        .find(|path| path.is_file())
}

/// The dynamic-security file with only the admin: `mosquitto_ctrl dynsec init` when it is
/// installed, else the same JSON written here (PBKDF2-SHA512 password hash).
fn dynsec_file(path: &Path) {
    if let Some(ctrl) = which("mosquitto_ctrl") {
        let status = Command::new(ctrl)
            .args(["dynsec", "init"])
            .arg(path)
            .args([ADMIN, ADMIN_PASSWORD])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "mosquitto_ctrl dynsec init failed");
        return;
    }
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let salt: [u8; 12] = rand_bytes();
    let mut hash = [0u8; 64];
    let iterations = 101u32;
    ring::pbkdf2::derive(
        ring::pbkdf2::PBKDF2_HMAC_SHA512,
        std::num::NonZeroU32::new(iterations).unwrap(),
        &salt,
        ADMIN_PASSWORD.as_bytes(),
        &mut hash,
    );
    let all = |acltype: &str, topic: &str| serde_json::json!({"acltype": acltype, "topic": topic, "allow": true});
    let config = serde_json::json!({
        "clients": [{"username": ADMIN, "password": b64.encode(hash), "salt": b64.encode(salt),
                     "iterations": iterations, "roles": [{"rolename": "admin"}]}],
        "roles": [{"rolename": "admin", "acls": [
            all("publishClientSend", "$CONTROL/dynamic-security/#"),
            all("publishClientReceive", "$CONTROL/dynamic-security/#"),
            all("subscribePattern", "$CONTROL/dynamic-security/#"),
            all("publishClientReceive", "#"),
            all("subscribePattern", "#"),
            all("unsubscribePattern", "#"),
        ]}],
        "defaultACLAccess": {"publishClientSend": false, "publishClientReceive": true,
                             "subscribe": false, "unsubscribe": true}
    });
    std::fs::write(path, config.to_string()).unwrap();
}

fn rand_bytes<const N: usize>() -> [u8; N] {
    use ring::rand::SecureRandom as _;
    let mut out = [0u8; N];
    ring::rand::SystemRandom::new().fill(&mut out).unwrap();
    out
}

/// A Mosquitto on `port` with the plugin and `dynsec`; waits until it accepts connections.
async fn mosquitto(binary: &Path, plugin: &str, dir: &Path, port: u16) -> Child {
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "per_listener_settings false\nallow_anonymous false\nlistener {port} 127.0.0.1\n\
             plugin {plugin}\nplugin_opt_config_file {}\n",
            dir.join("dynsec.json").display()
        ),
    )
    .unwrap();
    let child = Command::new(binary)
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "mosquitto did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child
}

fn stop(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

/// A raw client: every publish it receives comes out of the channel, with SUBACKs.
struct Raw {
    client: AsyncClient,
    incoming: mpsc::UnboundedReceiver<Incoming>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Debug)]
enum Incoming {
    Connected,
    SubAck(Vec<SubscribeReasonCode>),
    Publish(String, Vec<u8>),
    Failed(String),
}

impl Raw {
    async fn connect(port: u16, client_id: &str, username: &str, password: &str) -> Raw {
        let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
        options.set_credentials(username, password);
        options.set_keep_alive(Duration::from_secs(30));
        let (client, mut events) = AsyncClient::new(options, 64);
        let (tx, incoming) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                let event = match events.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => Incoming::Connected,
                    Ok(Event::Incoming(Packet::SubAck(ack))) => Incoming::SubAck(ack.return_codes),
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        Incoming::Publish(p.topic, p.payload.to_vec())
                    }
                    Ok(_) => continue,
                    Err(error) => {
                        let _ = tx.send(Incoming::Failed(error.to_string()));
                        return;
                    }
                };
                let _ = tx.send(event);
            }
        });
        Raw {
            client,
            incoming,
            task,
        }
    }

    async fn next(&mut self) -> Incoming {
        tokio::time::timeout(Duration::from_secs(10), self.incoming.recv())
            .await
            .expect("nothing from the broker within 10 s")
            .expect("the client task ended")
    }

    /// Whether the broker accepted the login.
    async fn connected(&mut self) -> Result<(), String> {
        match self.next().await {
            Incoming::Connected => Ok(()),
            Incoming::Failed(error) => Err(error),
            other => Err(format!("{other:?}")),
        }
    }

    /// Subscribes to `filter` and returns whether the broker granted it.
    async fn subscribe(&mut self, filter: &str) -> bool {
        self.client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .unwrap();
        loop {
            match self.next().await {
                Incoming::SubAck(codes) => {
                    return matches!(codes.as_slice(), [SubscribeReasonCode::Success(_)]);
                }
                Incoming::Publish(..) => {}
                other => panic!("subscribing to {filter}: {other:?}"),
            }
        }
    }

    /// Publishes with QoS 1 (Mosquitto acks denied publishes too and drops them).
    async fn publish(&self, topic: &str, payload: Vec<u8>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .unwrap();
    }
}

impl Drop for Raw {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrollment_provisions_devices_on_mosquitto_dynsec() {
    let Some(binary) = which("mosquitto") else {
        eprintln!(
            "SKIPPED: no `mosquitto` binary on this machine (external broker provisioning not tested)"
        );
        return;
    };
    let Some(plugin) = PLUGINS.iter().find(|p| Path::new(p).is_file()) else {
        eprintln!("SKIPPED: Mosquitto's dynamic-security plugin is not installed ({PLUGINS:?})");
        return;
    };
    let temp = tempfile::tempdir().unwrap();
    // Mosquitto started as root drops to its own user, and the plugin saves every change
    // to its file: that user must reach the folder and write the file.
    let dir = temp.path().join("broker");
    std::fs::create_dir(&dir).unwrap();
    dynsec_file(&dir.join("dynsec.json"));
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |path: &Path, mode| {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        mode(temp.path(), 0o755);
        mode(&dir, 0o777);
        mode(&dir.join("dynsec.json"), 0o666);
    }
    let dir = dir.as_path();
    let port = free_port();
    let mut broker = mosquitto(&binary, plugin, dir, port).await;

    let place = Place::sqlite(&temp.path().join("data"));
    let url = format!("mqtt://reactor-hub:hub-secret@127.0.0.1:{port}");
    let hub = Hub::start(
        place.clone(),
        &[
            ("REACTOR_MQTT_BROKER", url.as_str()),
            ("REACTOR_FLEET__PROVISION", "mosquitto_dynsec"),
            ("REACTOR_FLEET__PROVISION_USERNAME", ADMIN),
            ("REACTOR_FLEET__PROVISION_PASSWORD", ADMIN_PASSWORD),
        ],
    )
    .await;
    assert!(
        hub.logs().contains("created the hub's broker login"),
        "{}",
        hub.logs()
    );

    // An observer that sees everything the broker delivers (the admin may subscribe to #).
    let mut observer = Raw::connect(port, "observer", ADMIN, ADMIN_PASSWORD).await;
    observer.connected().await.unwrap();
    assert!(observer.subscribe("reactor/#").await);

    let mut devices = Vec::new();
    for name in ["dyn-a", "dyn-b"] {
        let token = add_device(&place, name, &["site=x"], None);
        let (id, password, body) = enrolled(&hub, &token).await;
        assert_eq!(body["broker"]["url"], format!("mqtt://127.0.0.1:{port}"));
        assert!(
            !body.to_string().contains("hub-secret"),
            "the hub's password was handed out"
        );
        devices.push((id, password));
    }
    let (a, a_password) = devices[0].clone();
    let (b, b_password) = devices[1].clone();
    let a_id = DeviceId::parse(&a).unwrap();
    let b_id = DeviceId::parse(&b).unwrap();

    // a, with what enrollment handed it: its batch is stored and acked by the hub.
    let mut device = connect(
        "127.0.0.1",
        port,
        &a,
        &a_password,
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

    // a's own topics are allowed, everything else refused.
    let mut raw = Raw::connect(port, &a, &a, &a_password).await;
    raw.connected().await.unwrap();
    for channel in [Channel::Ack, Channel::Bundle, Channel::Cmd] {
        assert!(raw.subscribe(&a_id.topic(channel)).await, "{channel:?}");
    }
    // Hub → device: a command reaches a on its own `cmd` topic (the hub's role publishes
    // there, a's role receives it) once a reports itself online.
    raw.publish(
        &a_id.topic(Channel::Status),
        fleet_device::status(10, Presence::Online),
    )
    .await;
    hub.post_json(
        &format!("/api/v1/devices/{a}/commands"),
        serde_json::json!({"type": "ping", "nonce": 5}),
    )
    .await
    .expect(202);
    loop {
        if let Incoming::Publish(topic, payload) = raw.next().await
            && topic == a_id.topic(Channel::Cmd)
        {
            let Ok(Frame::Message(envelope)) = decode(&payload) else {
                panic!("an undecodable command");
            };
            assert_eq!(
                envelope.message,
                Message::Command(DeviceCommand::Ping { nonce: 5 })
            );
            break;
        }
    }
    let foreign_filters = [
        b_id.topic(Channel::Ack),
        b_id.topic(Channel::Bundle),
        b_id.topic(Channel::Cmd),
        b_id.topic(Channel::Events),
        b_id.topic(Channel::Status),
        a_id.topic(Channel::Events),
        "#".to_string(),
        "reactor/#".to_string(),
        "reactor/v1/d/+/ack".to_string(),
        "reactor/v1/d/+/status".to_string(),
        format!("reactor/v1/d/{a}/#"),
        format!("reactor/v1/d/{a}/+"),
        "$SYS/#".to_string(),
        "$CONTROL/dynamic-security/v1/response".to_string(),
    ];
    for filter in &foreign_filters {
        assert!(!raw.subscribe(filter).await, "a may subscribe to {filter}");
    }
    // Publishes: the observer sees a's own one and none of the foreign ones.
    let foreign_topics = [
        b_id.topic(Channel::Events),
        b_id.topic(Channel::Status),
        b_id.topic(Channel::Executions),
        b_id.topic(Channel::Ack),
        a_id.topic(Channel::Ack),
        a_id.topic(Channel::Bundle),
        a_id.topic(Channel::Cmd),
        "reactor/v1/other".to_string(),
        "$CONTROL/dynamic-security/v1".to_string(),
    ];
    for topic in &foreign_topics {
        raw.publish(topic, b"attack".to_vec()).await;
    }
    raw.publish(&a_id.topic(Channel::Executions), b"own".to_vec())
        .await;
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut seen_own = false;
    while Instant::now() < deadline && !seen_own {
        match tokio::time::timeout(Duration::from_millis(200), observer.incoming.recv()).await {
            Ok(Some(Incoming::Publish(topic, payload))) => {
                assert_ne!(payload, b"attack", "a's publish on {topic} got through");
                seen_own |= payload == b"own";
            }
            Ok(Some(_)) | Err(_) => {}
            Ok(None) => panic!("the observer stopped"),
        }
    }
    assert!(seen_own, "a's publish on its own topic never arrived");
    // Anything still in flight is drained and checked too.
    tokio::time::sleep(Duration::from_millis(500)).await;
    while let Ok(event) = observer.incoming.try_recv() {
        if let Incoming::Publish(topic, payload) = event {
            assert_ne!(payload, b"attack", "a's publish on {topic} got through");
        }
    }
    let db = Database::open(None, &place.data).await.unwrap();
    let b_counts = reactor_hub::fleet::ingest::counts(&db, &b).await.unwrap();
    assert_eq!(b_counts["events"], 0);

    // Logins: a's credential under b's client id, a wrong password, an unknown name.
    for (client_id, username, password) in [
        (b.as_str(), a.as_str(), a_password.as_str()),
        (a.as_str(), a.as_str(), b_password.as_str()),
        ("dyn-c", "dyn-c", a_password.as_str()),
        (a.as_str(), a.as_str(), ""),
    ] {
        let mut login = Raw::connect(port, client_id, username, password).await;
        assert!(
            login.connected().await.is_err(),
            "{client_id}/{username} logged in"
        );
    }
    // b logs in with its own credential.
    let mut b_login = Raw::connect(port, &b, &b, &b_password).await;
    b_login.connected().await.unwrap();

    // A device named like the hub's own login is refused, not provisioned over it.
    let token = add_device(&place, "reactor-hub", &[], None);
    let refused = enroll(&hub, &token).await.problem(502);
    assert!(
        refused.text.contains("hub's own broker login"),
        "{}",
        refused.text
    );
    // So is a device whose broker client someone else created.
    let mut admin = Raw::connect(port, "admin-2", ADMIN, ADMIN_PASSWORD).await;
    admin.connected().await.unwrap();
    assert!(
        admin
            .subscribe("$CONTROL/dynamic-security/v1/response")
            .await
    );
    admin
        .publish(
            "$CONTROL/dynamic-security/v1",
            br#"{"commands":[{"command":"createClient","username":"dyn-taken","password":"x","correlationData":"t"}]}"#
                .to_vec(),
        )
        .await;
    loop {
        if let Incoming::Publish(_, payload) = admin.next().await
            && String::from_utf8_lossy(&payload).contains(r#""correlationData":"t""#)
        {
            assert!(!String::from_utf8_lossy(&payload).contains("error"));
            break;
        }
    }
    let token = add_device(&place, "dyn-taken", &[], None);
    let taken = enroll(&hub, &token).await.problem(502);
    assert!(taken.text.contains("did not create"), "{}", taken.text);

    // A leftover of an enrollment interrupted after provisioning (the hub's mark, another
    // password, no role) is replaced: the new credential works, the old one does not.
    admin
        .publish(
            "$CONTROL/dynamic-security/v1",
            br#"{"commands":[{"command":"createClient","username":"dyn-again","password":"old-password","textname":"reactor device","correlationData":"u"}]}"#
                .to_vec(),
        )
        .await;
    loop {
        if let Incoming::Publish(_, payload) = admin.next().await
            && String::from_utf8_lossy(&payload).contains(r#""correlationData":"u""#)
        {
            assert!(!String::from_utf8_lossy(&payload).contains("error"));
            break;
        }
    }
    let token = add_device(&place, "dyn-again", &[], None);
    let (again, again_password, _) = enrolled(&hub, &token).await;
    let mut old = Raw::connect(port, &again, &again, "old-password").await;
    assert!(
        old.connected().await.is_err(),
        "the leftover password still works"
    );
    let mut again_device = connect(
        "127.0.0.1",
        port,
        &again,
        &again_password,
        None,
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    let mut acked = None;
    for _ in 0..10 {
        again_device.send(Channel::Events, events(1, 2)).await;
        acked = again_device.acked(2, Duration::from_secs(2)).await;
        if acked.is_some() {
            break;
        }
    }
    assert_eq!(
        acked,
        Some(2),
        "the re-provisioned device cannot use its topics"
    );

    // Broker down: enrollment fails clearly and the token stays usable.
    let token = add_device(&place, "dyn-late", &[], None);
    stop(&mut broker);
    let down = enroll(&hub, &token).await.problem(502);
    assert!(
        down.body["detail"]
            .as_str()
            .unwrap()
            .contains("token was not spent"),
        "{}",
        down.text
    );
    let mut broker = mosquitto(&binary, plugin, dir, port).await;
    let (late, late_password, _) = enrolled(&hub, &token).await;
    let mut late_device = connect(
        "127.0.0.1",
        port,
        &late,
        &late_password,
        None,
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    // What was provisioned before the restart is still there (the plugin saved it): a
    // logs in again, and the hub (its login and role too) stores and acks a new batch.
    let mut a_again = Raw::connect(port, &a, &a, &a_password).await;
    a_again.connected().await.unwrap();
    let mut acked = None;
    for _ in 0..20 {
        late_device.send(Channel::Events, events(1, 3)).await;
        acked = late_device.acked(3, Duration::from_secs(2)).await;
        if acked.is_some() {
            break;
        }
    }
    assert_eq!(
        acked,
        Some(3),
        "the hub lost its broker login with the restart"
    );
    assert!(hub.logs().contains("could not be provisioned"));

    // Removal (for a future `device remove`): the hub's client and role go, b cannot log in
    // any more; the admin's own client of a device name is refused and left alone.
    let provisioner = reactor_hub::fleet::provision::Provisioner::start(
        reactor_hub::fleet::provision::ProvisionMode::MosquittoDynsec,
        Some(&reactor_hub::fleet::broker::BrokerTarget::external(&url).unwrap()),
        Some(reactor_hub::fleet::broker::InternalLogin {
            username: ADMIN.into(),
            password: ADMIN_PASSWORD.into(),
        }),
    )
    .await
    .unwrap();
    let reactor_hub::fleet::provision::Provisioner::Dynsec(dynsec) = provisioner else {
        panic!("not the dynamic-security provisioner");
    };
    dynsec.remove_device(&b_id).await.unwrap();
    let mut removed = Raw::connect(port, &b, &b, &b_password).await;
    assert!(removed.connected().await.is_err(), "b still logs in");
    let foreign = dynsec
        .remove_device(&DeviceId::parse("dyn-taken").unwrap())
        .await
        .unwrap_err();
    assert!(foreign.to_string().contains("did not create"), "{foreign}");
    let mut taken_login = Raw::connect(port, "dyn-taken", "dyn-taken", "x").await;
    taken_login
        .connected()
        .await
        .expect("the admin's own client was removed");

    db.close().await;
    drop(hub);
    stop(&mut broker);
}
