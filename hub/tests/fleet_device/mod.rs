//! A simulated device for the fleet transport tests: a real rumqttc client (plain or TLS)
//! speaking the sync protocol, frames encoded with `reactor_core::sync`.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use reactor_core::engine::Timestamp;
use reactor_core::sync::messages::{DeviceEvent, EventBatch, Health, JsonText, Presence, Status};
use reactor_core::sync::{Channel, DeviceId, Envelope, Frame, Message, Seq, decode, encode};
use rumqttc::{
    AsyncClient, Event, LastWill, MqttOptions, Packet, QoS, TlsConfiguration, Transport,
};
use tokio::sync::mpsc;

pub fn frame(seq: u64, message: Message) -> Vec<u8> {
    encode(&Envelope::new(Seq(seq), message)).unwrap()
}

pub fn status(seq: u64, presence: Presence) -> Vec<u8> {
    frame(
        seq,
        Message::Status(Status {
            presence,
            agent_version: "0.9.1".into(),
            bundle_version: None,
            health: Health {
                window_secs: 300,
                executions_total: 0,
                executions_failed: 0,
            },
            at: Timestamp::now(),
        }),
    )
}

/// An `EventBatch` of `count` readings starting at seq `first`.
pub fn events(first: u64, count: u64) -> Vec<u8> {
    let events = (first..first + count)
        .map(|n| DeviceEvent {
            id: ulid::Ulid::new().to_string(),
            event_type: "reading.temperature".into(),
            source: "sensor:1".into(),
            time: Timestamp::now(),
            data: JsonText::from_value(&serde_json::json!({ "n": n, "temp": 21.5 })),
            meta: JsonText::from_value(&serde_json::json!({})),
        })
        .collect();
    frame(
        first,
        Message::EventBatch(EventBatch {
            first: Seq(first),
            events,
        }),
    )
}

/// rustls (ring) trusting exactly the certificates of `ca_pem`.
pub fn tls_trusting(ca_pem: &str) -> Transport {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    Transport::tls_with_config(TlsConfiguration::Rustls(Arc::new(config)))
}

/// A connected device: subscribed to its `ack` topic; acks come out of `acks`.
#[derive(Debug)]
pub struct Device {
    pub client: AsyncClient,
    pub acks: mpsc::UnboundedReceiver<u64>,
    pub task: tokio::task::JoinHandle<()>,
    pub id: DeviceId,
}

/// Why a connection attempt failed (the first event-loop error).
pub type ConnectError = String;

/// Connects device `id` to `host:port` (TLS when `transport` is given), with a last will on
/// its status, and waits for the SUBACK of its `ack` subscription (`within`).
pub async fn connect(
    host: &str,
    port: u16,
    id: &str,
    password: &str,
    transport: Option<Transport>,
    within: Duration,
) -> Result<Device, ConnectError> {
    let id = DeviceId::parse(id).unwrap();
    let mut options = MqttOptions::new(id.as_str(), host, port);
    options.set_credentials(id.as_str(), password);
    options.set_keep_alive(Duration::from_secs(60));
    options.set_last_will(LastWill::new(
        id.topic(Channel::Status),
        status(2, Presence::Offline),
        QoS::AtLeastOnce,
        true,
    ));
    if let Some(transport) = transport {
        options.set_transport(transport);
    }
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    let (tx, acks) = mpsc::unbounded_channel();
    let (ready_tx, mut ready) = mpsc::unbounded_channel::<Result<(), String>>();
    let task = tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    let _ = ready_tx.send(Ok(()));
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    if let Ok(Frame::Message(envelope)) = decode(&publish.payload)
                        && let Message::Ack(ack) = envelope.message
                    {
                        let _ = tx.send(ack.highest.0);
                    }
                }
                Ok(_) => {}
                Err(error) => {
                    let _ = ready_tx.send(Err(error.to_string()));
                    return;
                }
            }
        }
    });
    client
        .subscribe(id.topic(Channel::Ack), QoS::AtLeastOnce)
        .await
        .map_err(|e| e.to_string())?;
    match tokio::time::timeout(within, ready.recv()).await {
        Ok(Some(Ok(()))) => Ok(Device {
            client,
            acks,
            task,
            id,
        }),
        Ok(Some(Err(error))) => Err(error),
        Ok(None) => Err("the event loop ended".into()),
        Err(_) => {
            task.abort();
            Err("no SUBACK in time".into())
        }
    }
}

impl Device {
    pub async fn send(&self, channel: Channel, payload: Vec<u8>) {
        self.client
            .publish(
                self.id.topic(channel),
                QoS::AtLeastOnce,
                channel.retained(),
                payload,
            )
            .await
            .unwrap();
    }

    /// Waits (up to `within`) for an ack of at least `seq`; returns the highest seen.
    pub async fn acked(&mut self, seq: u64, within: Duration) -> Option<u64> {
        let deadline = tokio::time::Instant::now() + within;
        let mut highest = 0;
        while highest < seq {
            match tokio::time::timeout_at(deadline, self.acks.recv()).await {
                Ok(Some(ack)) => highest = highest.max(ack),
                _ => return None,
            }
        }
        Some(highest)
    }

    /// Drops the connection without DISCONNECT.
    pub fn abort(self) {
        self.task.abort();
    }
}
