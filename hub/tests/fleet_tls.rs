//! TLS on the device endpoint: the real `reactor-hub serve --mqtt-listen ADDR` with
//! `--mqtt-tls-cert` / `--mqtt-tls-key` (a CA and a server certificate generated here with
//! rcgen; the chain file ends with the CA).
//!
//! - enrollment answers `mqtts://ADDR` and the CA's PEM;
//! - a device trusting that PEM (rumqttc over rustls) connects, sends a batch and is acked;
//! - a plain-TCP MQTT client on the TLS port gets no CONNACK, and a client trusting another
//!   CA fails its handshake: neither reaches the broker.

mod api_support;
mod fleet_device;
mod fleet_support;

use std::time::Duration;

use api_support::{Hub, Place, free_port};
use fleet_device::{connect, events, status, tls_trusting};
use fleet_support::{add_device, enrolled};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use reactor_core::sync::Channel;
use reactor_core::sync::messages::Presence;

/// A CA and a server certificate for 127.0.0.1 / localhost signed by it: (CA PEM, chain PEM
/// = server then CA, server key PEM).
fn certificates(ca_name: &str) -> (String, String, String) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, ca_name);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "reactor hub");
    let server = params.signed_by(&server_key, &ca).unwrap();
    (
        ca.pem(),
        format!("{}{}", server.pem(), ca.pem()),
        server_key.serialize_pem(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_connect_over_tls_with_the_enrolled_ca_and_plain_tcp_is_refused() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let (ca_pem, chain, key) = certificates("Reactor test CA");
    let (cert_file, key_file) = (dir.path().join("hub.crt"), dir.path().join("hub.key"));
    std::fs::write(&cert_file, chain).unwrap();
    std::fs::write(&key_file, key).unwrap();
    let place = Place::sqlite(&dir.path().join("data"));
    let mqtt = free_port();
    let listen = format!("127.0.0.1:{mqtt}");
    let hub = Hub::start(
        place.clone(),
        &[
            ("REACTOR_MQTT_LISTEN", listen.as_str()),
            ("REACTOR_MQTT_TLS_CERT", cert_file.to_str().unwrap()),
            ("REACTOR_MQTT_TLS_KEY", key_file.to_str().unwrap()),
        ],
    )
    .await;
    let token = add_device(&place, "tls-1", &["site=north"], None);
    let (id, password, answer) = enrolled(&hub, &token).await;
    assert_eq!(answer["broker"]["url"], format!("mqtts://{listen}"));
    assert_eq!(
        answer["broker"]["ca_pem"].as_str().unwrap().trim(),
        ca_pem.trim(),
        "the chain's last certificate (the CA) is what devices trust"
    );

    // Over TLS, trusting what enrollment gave: connected, acked.
    let transport = tls_trusting(answer["broker"]["ca_pem"].as_str().unwrap());
    let mut device = connect(
        "127.0.0.1",
        mqtt,
        &id,
        &password,
        Some(transport),
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    device
        .send(Channel::Status, status(1, Presence::Online))
        .await;
    device.send(Channel::Events, events(1, 20)).await;
    assert_eq!(
        device.acked(20, Duration::from_secs(20)).await,
        Some(20),
        "{}",
        hub.logs()
    );

    // Plain MQTT on the TLS port: no CONNACK, the connection is dropped.
    let plain = connect(
        "127.0.0.1",
        mqtt,
        &id,
        &password,
        None,
        Duration::from_secs(15),
    )
    .await;
    assert!(plain.is_err(), "a plain-TCP client was accepted");

    // TLS trusting another CA: the handshake fails on the client's side.
    let (other_ca, _, _) = certificates("Some other CA");
    let forged = connect(
        "127.0.0.1",
        mqtt,
        &id,
        &password,
        Some(tls_trusting(&other_ca)),
        Duration::from_secs(15),
    )
    .await;
    let error = forged.expect_err("a client trusting another CA connected");
    assert!(
        error.to_lowercase().contains("certificate") || error.to_lowercase().contains("tls"),
        "{error}"
    );

    // The genuine device was never disturbed.
    device.send(Channel::Events, events(21, 5)).await;
    assert_eq!(device.acked(25, Duration::from_secs(20)).await, Some(25));
    let refused = hub.logs().matches("TLS handshake failed").count();
    assert!(refused >= 1, "{}", hub.logs());
}
