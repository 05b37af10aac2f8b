//! A lightweight simulated agent for fleet tests and the rollout bench: one rumqttc
//! connection through the hub's device endpoint, speaking the protocol as the agent does
//! (status seq blocks with a last will, bundles verified and accepted with reactor-core's
//! real `BundleVerifier` on an in-memory store, commands answered) — without running
//! workflows: the health it reports is scripted. A `flaky` device reports failures while
//! its active bundle holds a workflow whose name starts with `faulty`.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use reactor_core::engine::Timestamp;
use reactor_core::store::MemoryStore;
use reactor_core::sync::bundle::{Acceptance, BundleError, BundleVerifier, PublicKey};
use reactor_core::sync::messages::{
    Command, CommandOutcome, CommandResult, Health, Presence, Status,
};
use reactor_core::sync::{Channel, DeviceId, Envelope, Frame, Message, Seq, decode, encode};
use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Packet, QoS};
use tokio::task::JoinHandle;

/// Status seqs a connection reserves (as the agent does).
pub const STATUS_BLOCK: u64 = 1 << 20;
/// Executions a simulated device reports per status.
pub const REPORTED: u32 = 20;

/// What a simulated device went through.
#[derive(Debug, Default, Clone)]
pub struct SimState {
    pub active: Option<u64>,
    /// Workflow names of the active bundle.
    pub workflows: Vec<String>,
    /// Every version accepted, in order.
    pub accepted: Vec<u64>,
    pub refused: u64,
    /// Refused because their expiry had passed when they arrived (counted in `refused` too).
    pub expired: u64,
    /// Bundle frames received (accepted, already active or refused).
    pub received: u64,
    /// When the last new version was accepted.
    pub accepted_at: Option<std::time::Instant>,
    pub connected: bool,
    pub commands: u64,
}

/// An enrolled simulated device.
pub struct Sim {
    pub id: DeviceId,
    pub password: String,
    pub labels: BTreeMap<String, String>,
    pub flaky: bool,
    pub port: u16,
    key: PublicKey,
    store: Arc<MemoryStore>,
    verifier: Arc<tokio::sync::Mutex<BundleVerifier>>,
    pub state: Arc<Mutex<SimState>>,
    status_seq: Arc<Mutex<u64>>,
    task: Option<JoinHandle<()>>,
}

impl Sim {
    /// A device from the enrollment answer (`POST /api/v1/enroll`).
    pub fn new(enrolled: &serde_json::Value, port: u16, flaky: bool) -> Sim {
        let id = DeviceId::parse(enrolled["device_id"].as_str().unwrap()).unwrap();
        let key: [u8; 32] = base64::engine::general_purpose::STANDARD
            .decode(
                enrolled["bundle_signing_key"]["public_key"]
                    .as_str()
                    .unwrap(),
            )
            .unwrap()
            .try_into()
            .unwrap();
        let labels = enrolled["labels"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
            .collect();
        Sim {
            id,
            password: enrolled["broker"]["password"].as_str().unwrap().to_string(),
            labels,
            flaky,
            port,
            key: PublicKey(key),
            store: Arc::new(MemoryStore::new()),
            verifier: Arc::new(tokio::sync::Mutex::new(BundleVerifier::new(vec![
                PublicKey(key),
            ]))),
            state: Arc::default(),
            status_seq: Arc::new(Mutex::new(0)),
            task: None,
        }
    }

    pub fn snapshot(&self) -> SimState {
        self.state.lock().unwrap().clone()
    }

    /// Connects (and keeps reconnecting in a task) and publishes its online status. Each
    /// connection reserves a new block of status seqs with its own last will, as the agent
    /// does (a reconnect with the old will would report seqs below that will).
    pub fn connect(&mut self) {
        let sim = SimConnection {
            id: self.id.clone(),
            password: self.password.clone(),
            port: self.port,
            labels: self.labels.clone(),
            flaky: self.flaky,
            store: self.store.clone(),
            verifier: self.verifier.clone(),
            state: self.state.clone(),
            status_seq: self.status_seq.clone(),
        };
        self.task = Some(tokio::spawn(async move {
            loop {
                sim.once().await;
                sim.state.lock().unwrap().connected = false;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }));
    }

    /// Drops the connection without DISCONNECT: the broker publishes the last will.
    pub fn kill(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        self.state.lock().unwrap().connected = false;
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What a connection task needs to (re)connect.
struct SimConnection {
    id: DeviceId,
    password: String,
    port: u16,
    labels: BTreeMap<String, String>,
    flaky: bool,
    store: Arc<MemoryStore>,
    verifier: Arc<tokio::sync::Mutex<BundleVerifier>>,
    state: Arc<Mutex<SimState>>,
    status_seq: Arc<Mutex<u64>>,
}

impl SimConnection {
    /// One connection, until it fails.
    async fn once(&self) {
        let base = {
            let mut seq = self.status_seq.lock().unwrap();
            *seq += STATUS_BLOCK;
            *seq
        };
        let (active, workflows) = {
            let state = self.state.lock().unwrap();
            (state.active, state.workflows.clone())
        };
        let mut options = MqttOptions::new(self.id.as_str(), "127.0.0.1", self.port);
        options.set_credentials(self.id.as_str(), &self.password);
        options.set_keep_alive(Duration::from_secs(30));
        options.set_clean_session(true);
        options.set_max_packet_size(4 << 20, 4 << 20);
        options.set_last_will(LastWill::new(
            self.id.topic(Channel::Status),
            status_frame(
                base + STATUS_BLOCK - 1,
                Presence::Offline,
                active,
                health(self.flaky, &workflows),
            ),
            QoS::AtLeastOnce,
            true,
        ));
        let (client, mut events) = AsyncClient::new(options, 64);
        let mut device = Device {
            id: self.id.clone(),
            labels: self.labels.clone(),
            flaky: self.flaky,
            client,
            store: self.store.clone(),
            verifier: self.verifier.clone(),
            state: self.state.clone(),
            next_seq: base,
        };
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => device.connected().await,
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    device.incoming(&publish.topic, &publish.payload).await;
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    }
}

/// The connection task's side.
struct Device {
    id: DeviceId,
    labels: BTreeMap<String, String>,
    flaky: bool,
    client: AsyncClient,
    store: Arc<MemoryStore>,
    verifier: Arc<tokio::sync::Mutex<BundleVerifier>>,
    state: Arc<Mutex<SimState>>,
    next_seq: u64,
}

/// The health a device reports with `workflows` active.
fn health(flaky: bool, workflows: &[String]) -> Health {
    let faulty = flaky && workflows.iter().any(|w| w.starts_with("faulty"));
    Health {
        window_secs: 60,
        executions_total: REPORTED,
        executions_failed: if faulty { REPORTED / 2 } else { 0 },
    }
}

fn status_frame(seq: u64, presence: Presence, bundle: Option<u64>, health: Health) -> Vec<u8> {
    encode(&Envelope::new(
        Seq(seq),
        Message::Status(Status {
            presence,
            agent_version: "sim-1".into(),
            bundle_version: bundle,
            health,
            at: Timestamp::now(),
        }),
    ))
    .unwrap()
}

impl Device {
    async fn connected(&mut self) {
        for channel in [Channel::Ack, Channel::Bundle, Channel::Cmd] {
            let _ = self
                .client
                .subscribe(self.id.topic(channel), QoS::AtLeastOnce)
                .await;
        }
        self.state.lock().unwrap().connected = true;
        self.publish_status().await;
    }

    async fn publish_status(&mut self) {
        let (active, workflows) = {
            let state = self.state.lock().unwrap();
            (state.active, state.workflows.clone())
        };
        let frame = status_frame(
            self.next_seq,
            Presence::Online,
            active,
            health(self.flaky, &workflows),
        );
        self.next_seq += 1;
        let _ = self
            .client
            .publish(
                self.id.topic(Channel::Status),
                QoS::AtLeastOnce,
                true,
                frame,
            )
            .await;
    }

    async fn incoming(&mut self, topic: &str, payload: &[u8]) {
        let Ok((_, channel)) = reactor_core::sync::parse_topic(topic) else {
            return;
        };
        match (channel, decode(payload)) {
            (
                Channel::Bundle,
                Ok(Frame::Message(Envelope {
                    message: Message::Bundle(bundle),
                    ..
                })),
            ) => {
                self.state.lock().unwrap().received += 1;
                let accepted = self
                    .verifier
                    .lock()
                    .await
                    .accept(
                        &bundle.bytes,
                        Timestamp::now(),
                        &self.labels,
                        self.store.as_ref(),
                    )
                    .await;
                match accepted {
                    Ok(Acceptance::Accepted(verified)) => {
                        {
                            let mut state = self.state.lock().unwrap();
                            state.active = Some(verified.manifest.version);
                            state.accepted.push(verified.manifest.version);
                            state.accepted_at = Some(std::time::Instant::now());
                            state.workflows =
                                verified.workflows.iter().map(|w| w.name.clone()).collect();
                        }
                        self.publish_status().await;
                    }
                    Ok(Acceptance::AlreadyActive { .. }) => {}
                    Err(error) => {
                        let mut state = self.state.lock().unwrap();
                        state.refused += 1;
                        if matches!(error, BundleError::Expired { .. }) {
                            state.expired += 1;
                        }
                    }
                }
            }
            (
                Channel::Cmd,
                Ok(Frame::Message(Envelope {
                    seq,
                    message: Message::Command(command),
                    ..
                })),
            ) => {
                self.state.lock().unwrap().commands += 1;
                let outcome = match command {
                    Command::Ping { nonce } => CommandOutcome::Pong { nonce },
                    _ => CommandOutcome::Refused {
                        reason: "simulated device".into(),
                    },
                };
                let frame = encode(&Envelope::new(
                    seq,
                    Message::CommandResult(CommandResult { outcome }),
                ))
                .unwrap();
                let _ = self
                    .client
                    .publish(
                        self.id.topic(Channel::Executions),
                        QoS::AtLeastOnce,
                        false,
                        frame,
                    )
                    .await;
            }
            _ => {}
        }
    }
}
