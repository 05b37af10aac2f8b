//! Device isolation on the embedded broker: the hub's device endpoint in front of rumqttd,
//! driven with real MQTT clients (rumqttc, and raw MQTT 3.1.1 packets for what rumqttc
//! refuses to send). An observer logged into the broker itself with the hub's internal login
//! sees every message; it must never see an attacker's publish, and an attacker must never
//! receive anything outside its own prefix. Every attempt must be refused (100 %).
//!
//! The endpoint terminates device sessions itself; further tests here cover that: keep-alive
//! expiry publishes the will (a DISCONNECT does not), each session gets only its own
//! device's messages, a stalled device is dropped while the others keep receiving, and QoS 2
//! is refused.

use std::time::Duration;

use bytes::BytesMut;
use reactor_hub::config::FleetConfig;
use reactor_hub::db::Database;
use reactor_hub::fleet::registry;
use rumqttc::mqttbytes::v4::{Connect, LastWill, Login, Packet, Publish, Subscribe};
use rumqttc::mqttbytes::{Protocol, QoS};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A CONNECT to refuse: client id, login, last-will topic.
type BadConnect = (String, Option<(String, String)>, Option<String>);

struct Fleet {
    addr: std::net::SocketAddr,
    devices: Vec<(String, String)>,
    /// Every (topic, payload) the broker carried, seen by the observer.
    seen: mpsc::UnboundedReceiver<(String, Vec<u8>)>,
    observer: AsyncClient,
    stop: CancellationToken,
    _dir: tempfile::TempDir,
}

async fn fleet() -> Fleet {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(None, dir.path()).await.unwrap();
    db.migrate().await.unwrap();
    let mut devices = Vec::new();
    for name in ["alpha", "beta"] {
        let token = registry::add_device(&db, name, &Default::default(), Duration::from_secs(60))
            .await
            .unwrap();
        let enrolled = registry::enroll(&db, &token).await.unwrap();
        devices.push((name.to_string(), enrolled.credential));
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let stop = CancellationToken::new();
    let config = FleetConfig {
        mqtt_listen: Some(addr),
        ..FleetConfig::default()
    };
    let broker = reactor_hub::fleet::start_endpoint(&config, &db, stop.clone())
        .await
        .unwrap()
        .unwrap();
    // The observer: the broker's own login, everything.
    let options = broker.options("observer").unwrap();
    let (observer, mut events) = AsyncClient::new(options, 100);
    observer.subscribe("#", QoS::AtLeastOnce).await.unwrap();
    let (tx, seen) = mpsc::unbounded_channel();
    let (subscribed_tx, mut subscribed) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(rumqttc::Packet::Publish(p))) => {
                    let _ = tx.send((p.topic.clone(), p.payload.to_vec()));
                }
                Ok(Event::Incoming(rumqttc::Packet::SubAck(_))) => {
                    let _ = subscribed_tx.send(());
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), subscribed.recv())
        .await
        .unwrap();
    Fleet {
        addr,
        devices,
        seen,
        observer,
        stop,
        _dir: dir,
    }
}

/// A raw MQTT 3.1.1 session: CONNECT, then the CONNACK's return code (0 = accepted).
async fn raw_connect(
    addr: std::net::SocketAddr,
    client_id: &str,
    login: Option<(&str, &str)>,
    will: Option<&str>,
) -> (TcpStream, Option<u8>) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut connect = Connect::new(client_id);
    connect.protocol = Protocol::V4;
    connect.login = login.map(|(u, p)| Login::new(u, p));
    connect.last_will = will.map(|topic| LastWill::new(topic, "gone", QoS::AtLeastOnce, true));
    send(&mut stream, Packet::Connect(connect)).await;
    let code = match read(&mut stream).await {
        Some(Packet::ConnAck(ack)) => Some(ack.code as u8),
        _ => None,
    };
    (stream, code)
}

async fn send(stream: &mut TcpStream, packet: Packet) {
    let mut out = BytesMut::new();
    packet.write(&mut out, 8 << 20).unwrap();
    let _ = stream.write_all(&out).await;
}

/// The next packet, or None when the connection is closed (or nothing comes in 5 s).
async fn read(stream: &mut TcpStream) -> Option<Packet> {
    let mut buffer = BytesMut::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        if let Ok(packet) = Packet::read(&mut buffer, 8 << 20) {
            return Some(packet);
        }
        match tokio::time::timeout_at(deadline, stream.read_buf(&mut buffer)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return None,
        }
    }
}

/// Whether the peer closed the connection within 5 s without sending a PUBLISH.
async fn closed_without_delivery(stream: &mut TcpStream) -> bool {
    loop {
        match read(stream).await {
            None => {
                // Closed (EOF) rather than silent: a further read returns 0 at once.
                let mut byte = [0u8; 1];
                return matches!(
                    tokio::time::timeout(Duration::from_secs(1), stream.read(&mut byte)).await,
                    Ok(Ok(0)) | Ok(Err(_))
                );
            }
            Some(Packet::Publish(_)) => return false,
            Some(_) => {}
        }
    }
}

/// A rumqttc client for device `id`; returns it once CONNACK said yes.
async fn device_client(
    addr: std::net::SocketAddr,
    id: &str,
    password: &str,
) -> (AsyncClient, EventLoop) {
    let mut options = MqttOptions::new(id, "127.0.0.1", addr.port());
    options.set_credentials(id, password);
    let (client, mut events) = AsyncClient::new(options, 100);
    loop {
        match tokio::time::timeout(Duration::from_secs(5), events.poll()).await {
            Ok(Ok(Event::Incoming(rumqttc::Packet::ConnAck(_)))) => return (client, events),
            Ok(Ok(_)) => {}
            other => panic!("{id} could not connect: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_are_confined_to_their_prefix() {
    let mut fleet = fleet().await;
    let (alpha_pw, beta_pw) = (fleet.devices[0].1.clone(), fleet.devices[1].1.clone());
    let mut attempts = 0;
    let mut refused = 0;

    // Positive controls: the path works, so refusals below are the gateway's doing.
    let (alpha, mut alpha_events) = device_client(fleet.addr, "alpha", &alpha_pw).await;
    alpha
        .subscribe("reactor/v1/d/alpha/cmd", QoS::AtLeastOnce)
        .await
        .unwrap();
    alpha
        .publish(
            "reactor/v1/d/alpha/events",
            QoS::AtLeastOnce,
            false,
            b"legit".to_vec(),
        )
        .await
        .unwrap();
    let (alpha_got_tx, mut alpha_got) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(event) = alpha_events.poll().await {
            if let Event::Incoming(rumqttc::Packet::Publish(p)) = event {
                let _ = alpha_got_tx.send(p.topic.clone());
            }
        }
    });
    let (topic, payload) = tokio::time::timeout(Duration::from_secs(10), fleet.seen.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (topic.as_str(), payload.as_slice()),
        ("reactor/v1/d/alpha/events", &b"legit"[..])
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    fleet
        .observer
        .publish(
            "reactor/v1/d/alpha/cmd",
            QoS::AtLeastOnce,
            false,
            b"run".to_vec(),
        )
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), alpha_got.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, "reactor/v1/d/alpha/cmd");
    while fleet.seen.try_recv().is_ok() {}

    // Identities: wrong or borrowed credentials, ids that would widen or escape a topic.
    let bad_connects: Vec<BadConnect> = vec![
        (
            "alpha".into(),
            Some(("alpha".into(), "rd_wrong".into())),
            None,
        ),
        (
            "alpha".into(),
            Some(("alpha".into(), beta_pw.clone())),
            None,
        ),
        ("alpha".into(), Some(("beta".into(), beta_pw.clone())), None),
        ("alpha".into(), None, None),
        ("beta".into(), Some(("beta".into(), alpha_pw.clone())), None),
        (
            "alpha".into(),
            Some(("alpha".into(), alpha_pw.clone())),
            Some("reactor/v1/d/beta/status".into()),
        ),
        (
            "alpha".into(),
            Some(("alpha".into(), alpha_pw.clone())),
            Some("reactor/v1/d/alpha/cmd".into()),
        ),
        (
            "alpha".into(),
            Some(("alpha".into(), alpha_pw.clone())),
            Some("#".into()),
        ),
    ]
    .into_iter()
    .chain(
        [
            "+", "#", "alpha/x", "alpha%2F", "a+", "$SYS", "d/alpha", "", "al#pha",
        ]
        .into_iter()
        .map(|id| {
            (
                id.to_string(),
                Some((id.to_string(), alpha_pw.clone())),
                None,
            )
        }),
    )
    .collect();
    for (id, login, will) in &bad_connects {
        attempts += 1;
        let login = login.as_ref().map(|(u, p)| (u.as_str(), p.as_str()));
        let (mut stream, code) = raw_connect(fleet.addr, id, login, will.as_deref()).await;
        let refused_here = code != Some(0) && closed_without_delivery(&mut stream).await;
        assert!(
            refused_here,
            "connect {id:?} {will:?} was not refused: {code:?}"
        );
        refused += 1;
    }

    // Publishes outside the device's own uplink topics (raw: rumqttc refuses wildcards).
    let publishes = [
        "reactor/v1/d/beta/events",
        "reactor/v1/d/beta/status",
        "reactor/v1/d/beta/executions",
        "reactor/v1/d/beta/cmd",
        "reactor/v1/d/alpha/cmd",
        "reactor/v1/d/alpha/bundle",
        "reactor/v1/d/alpha/ack",
        "reactor/v1/d/alpha/events/more",
        "reactor/v1/d/+/events",
        "reactor/v1/d/#",
        "#",
        "+/v1/d/alpha/events",
        "$SYS/broker/clients",
        "reactor/v1/d/alpha%2Fbeta/events",
        "reactor/v1/d//events",
        "reactor/v2/d/alpha/events",
        "/reactor/v1/d/alpha/events",
        "anything",
    ];
    for (n, topic) in publishes.iter().enumerate() {
        attempts += 1;
        let (mut stream, code) =
            raw_connect(fleet.addr, "alpha", Some(("alpha", &alpha_pw)), None).await;
        assert_eq!(code, Some(0));
        let publish = Publish::new(*topic, QoS::AtLeastOnce, format!("attack-{n}"));
        let mut publish = publish;
        publish.pkid = 1;
        send(&mut stream, Packet::Publish(publish)).await;
        if closed_without_delivery(&mut stream).await {
            refused += 1;
        } else {
            panic!("publish to {topic:?} was not refused");
        }
    }

    // Subscriptions outside the device's own downlink topics, with rumqttc; the observer
    // publishes on every other topic meanwhile: nothing may arrive.
    let filters = [
        "#",
        "+",
        "+/+/+/+/+",
        "reactor/#",
        "reactor/v1/d/+/cmd",
        "reactor/v1/d/+/events",
        "reactor/v1/d/beta/cmd",
        "reactor/v1/d/beta/#",
        "reactor/v1/d/beta/bundle",
        "reactor/v1/d/alpha/#",
        "reactor/v1/d/alpha/+",
        "reactor/v1/d/alpha/events",
        "reactor/v1/d/alpha/status",
        "$SYS/#",
        "$share/g/reactor/v1/d/beta/cmd",
    ];
    for filter in filters {
        attempts += 1;
        let mut options = MqttOptions::new("alpha", "127.0.0.1", fleet.addr.port());
        options.set_credentials("alpha", alpha_pw.clone());
        let (client, mut events) = AsyncClient::new(options, 10);
        client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
        let observer = fleet.observer.clone();
        let noise = tokio::spawn(async move {
            for _ in 0..5 {
                for topic in [
                    "reactor/v1/d/beta/cmd",
                    "reactor/v1/d/beta/bundle",
                    "reactor/v1/d/alpha/events",
                ] {
                    let _ = observer
                        .publish(topic, QoS::AtLeastOnce, false, b"secret".to_vec())
                        .await;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        let mut leaked = false;
        let mut suback = false;
        let outcome = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(rumqttc::Packet::Publish(_))) => leaked = true,
                    Ok(Event::Incoming(rumqttc::Packet::SubAck(_))) => suback = true,
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        })
        .await;
        noise.await.unwrap();
        assert!(
            outcome.is_ok() && !leaked && !suback,
            "subscribe {filter:?}: closed {} leaked {leaked} suback {suback}",
            outcome.is_ok()
        );
        refused += 1;
    }
    // Nothing an attacker published reached the broker.
    while let Ok((topic, payload)) = fleet.seen.try_recv() {
        assert!(
            !payload.starts_with(b"attack-"),
            "{topic}: an attacker's publish got through"
        );
    }
    assert_eq!(refused, attempts, "every attempt refused");
    assert!(attempts >= 40, "{attempts}");
    fleet.stop.cancel();
}

/// A raw session for a device with a will on its own status and the given keep-alive.
async fn raw_device(
    addr: std::net::SocketAddr,
    id: &str,
    password: &str,
    keep_alive: u16,
) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut connect = Connect::new(id);
    connect.keep_alive = keep_alive;
    connect.login = Some(Login::new(id, password));
    connect.last_will = Some(LastWill::new(
        format!("reactor/v1/d/{id}/status"),
        format!("will-{id}"),
        QoS::AtLeastOnce,
        true,
    ));
    send(&mut stream, Packet::Connect(connect)).await;
    match read(&mut stream).await {
        Some(Packet::ConnAck(ack)) => assert_eq!(ack.code as u8, 0, "{id} refused"),
        other => panic!("{id}: no CONNACK: {other:?}"),
    }
    stream
}

/// Subscribes a raw session to `topic` and waits for the SUBACK.
async fn raw_subscribe(stream: &mut TcpStream, topic: &str) {
    let mut subscribe = Subscribe::new(topic, QoS::AtLeastOnce);
    subscribe.pkid = 7;
    send(stream, Packet::Subscribe(subscribe)).await;
    match read(stream).await {
        Some(Packet::SubAck(ack)) => assert_eq!(ack.pkid, 7),
        other => panic!("no SUBACK for {topic}: {other:?}"),
    }
}

/// Waits until the observer sees `payload` on `topic`; returns everything seen before it.
async fn observe(fleet: &mut Fleet, topic: &str, payload: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut before = Vec::new();
    loop {
        let seen = tokio::time::timeout(Duration::from_secs(60), fleet.seen.recv())
            .await
            .unwrap_or_else(|_| panic!("{topic} {payload:?} never seen"))
            .unwrap();
        if seen.0 == topic && seen.1 == payload {
            return before;
        }
        before.push(seen);
    }
}

/// A rumqttc device subscribed to its own `cmd`; what it receives comes out of the channel.
async fn cmd_listener(
    addr: std::net::SocketAddr,
    id: &str,
    password: &str,
) -> (AsyncClient, mpsc::UnboundedReceiver<(String, Vec<u8>)>) {
    let (client, mut events) = device_client(addr, id, password).await;
    client
        .subscribe(format!("reactor/v1/d/{id}/cmd"), QoS::AtLeastOnce)
        .await
        .unwrap();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), events.poll()).await {
            Ok(Ok(Event::Incoming(rumqttc::Packet::SubAck(_)))) => break,
            Ok(Ok(_)) => {}
            other => panic!("{id}: no SUBACK: {other:?}"),
        }
    }
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(event) = events.poll().await {
            if let Event::Incoming(rumqttc::Packet::Publish(p)) = event {
                let _ = tx.send((p.topic.clone(), p.payload.to_vec()));
            }
        }
    });
    (client, rx)
}

/// Receives `count` messages (each within 30 s).
async fn receive(
    rx: &mut mpsc::UnboundedReceiver<(String, Vec<u8>)>,
    count: usize,
) -> Vec<(String, Vec<u8>)> {
    let mut got = Vec::with_capacity(count);
    while got.len() < count {
        let message = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} of {count} messages arrived", got.len()))
            .unwrap();
        got.push(message);
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_device_expires_after_its_keep_alive_and_its_will_is_published() {
    let mut fleet = fleet().await;
    let (alpha_pw, beta_pw) = (fleet.devices[0].1.clone(), fleet.devices[1].1.clone());
    // beta leaves with DISCONNECT first: no will. alpha (keep-alive 1 s) goes silent.
    let mut beta = raw_device(fleet.addr, "beta", &beta_pw, 1).await;
    send(&mut beta, Packet::Disconnect).await;
    assert!(closed_without_delivery(&mut beta).await);
    let mut alpha = raw_device(fleet.addr, "alpha", &alpha_pw, 1).await;
    let before = observe(&mut fleet, "reactor/v1/d/alpha/status", b"will-alpha").await;
    assert!(
        before.iter().all(|(_, payload)| payload != b"will-beta"),
        "a clean DISCONNECT published the will"
    );
    // The gateway closed alpha's connection.
    assert!(closed_without_delivery(&mut alpha).await);
    let mut pinger = raw_device(fleet.addr, "beta", &beta_pw, 1).await;
    // A device that pings in time stays connected past its keep-alive.
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        send(&mut pinger, Packet::PingReq).await;
        assert!(matches!(read(&mut pinger).await, Some(Packet::PingResp)));
    }
    send(&mut pinger, Packet::Disconnect).await;
    fleet.stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_device_receives_only_its_own_messages() {
    let fleet = fleet().await;
    let (alpha_pw, beta_pw) = (fleet.devices[0].1.clone(), fleet.devices[1].1.clone());
    let (_alpha, mut alpha_rx) = cmd_listener(fleet.addr, "alpha", &alpha_pw).await;
    let (_beta, mut beta_rx) = cmd_listener(fleet.addr, "beta", &beta_pw).await;
    const EACH: usize = 50;
    for n in 0..EACH {
        for id in ["alpha", "beta"] {
            fleet
                .observer
                .publish(
                    format!("reactor/v1/d/{id}/cmd"),
                    QoS::AtLeastOnce,
                    false,
                    format!("{id}-{n}").into_bytes(),
                )
                .await
                .unwrap();
        }
        // Also traffic for a device that is not connected: dropped, nobody gets it.
        fleet
            .observer
            .publish(
                "reactor/v1/d/gamma/cmd",
                QoS::AtLeastOnce,
                false,
                b"gamma".to_vec(),
            )
            .await
            .unwrap();
    }
    for (id, rx) in [("alpha", &mut alpha_rx), ("beta", &mut beta_rx)] {
        let got = receive(rx, EACH).await;
        let expected: Vec<(String, Vec<u8>)> = (0..EACH)
            .map(|n| {
                (
                    format!("reactor/v1/d/{id}/cmd"),
                    format!("{id}-{n}").into_bytes(),
                )
            })
            .collect();
        assert_eq!(got, expected, "{id}: only its own messages, in order");
    }
    // Nothing more arrives (a message for the other device would have been interleaved).
    assert!(alpha_rx.try_recv().is_err() && beta_rx.try_recv().is_err());
    fleet.stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_device_is_dropped_without_holding_up_the_others() {
    let mut fleet = fleet().await;
    let (alpha_pw, beta_pw) = (fleet.devices[0].1.clone(), fleet.devices[1].1.clone());
    let (_alpha, mut alpha_rx) = cmd_listener(fleet.addr, "alpha", &alpha_pw).await;
    // beta subscribes, then never reads nor acknowledges again: more deliveries than a
    // session may have unacknowledged go its way.
    let mut beta = raw_device(fleet.addr, "beta", &beta_pw, 0).await;
    raw_subscribe(&mut beta, "reactor/v1/d/beta/cmd").await;
    let big = vec![0x5a_u8; 1024];
    const BIG: usize = 400;
    const SMALL: usize = 40;
    for n in 0..BIG {
        fleet
            .observer
            .publish(
                "reactor/v1/d/beta/cmd",
                QoS::AtLeastOnce,
                false,
                big.clone(),
            )
            .await
            .unwrap();
        if n % (BIG / SMALL) == 0 {
            fleet
                .observer
                .publish(
                    "reactor/v1/d/alpha/cmd",
                    QoS::AtLeastOnce,
                    false,
                    format!("alpha-{}", n / (BIG / SMALL)).into_bytes(),
                )
                .await
                .unwrap();
        }
    }
    // alpha got every one of its messages, in order, while beta stalled.
    let got = receive(&mut alpha_rx, SMALL).await;
    let expected: Vec<Vec<u8>> = (0..SMALL)
        .map(|n| format!("alpha-{n}").into_bytes())
        .collect();
    assert_eq!(
        got.into_iter()
            .map(|(_, payload)| payload)
            .collect::<Vec<_>>(),
        expected
    );
    // beta was dropped: its will is published and its connection ends (after the bytes
    // already buffered towards it).
    observe(&mut fleet, "reactor/v1/d/beta/status", b"will-beta").await;
    let mut sink = vec![0u8; 1 << 20];
    let closed = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            match beta.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the stalled connection was not closed");
    fleet.stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos_2_publishes_are_refused_and_qos_1_is_forwarded_and_acknowledged() {
    let mut fleet = fleet().await;
    let alpha_pw = fleet.devices[0].1.clone();
    let mut alpha = raw_device(fleet.addr, "alpha", &alpha_pw, 0).await;
    // QoS 1: forwarded, the observer sees it, and the device gets its PUBACK.
    let mut publish = Publish::new("reactor/v1/d/alpha/events", QoS::AtLeastOnce, "one");
    publish.pkid = 42;
    send(&mut alpha, Packet::Publish(publish)).await;
    match read(&mut alpha).await {
        Some(Packet::PubAck(ack)) => assert_eq!(ack.pkid, 42),
        other => panic!("no PUBACK: {other:?}"),
    }
    observe(&mut fleet, "reactor/v1/d/alpha/events", b"one").await;
    // QoS 2 on its own topic: not supported, the connection closes, nothing is forwarded
    // (the will is: the session did not end with DISCONNECT).
    let mut publish = Publish::new("reactor/v1/d/alpha/events", QoS::ExactlyOnce, "two");
    publish.pkid = 43;
    send(&mut alpha, Packet::Publish(publish)).await;
    assert!(closed_without_delivery(&mut alpha).await);
    let before = observe(&mut fleet, "reactor/v1/d/alpha/status", b"will-alpha").await;
    assert!(before.iter().all(|(_, payload)| payload != b"two"));
    fleet.stop.cancel();
}
