//! Test-side pieces for the fleet tests: a TCP proxy in front of the real Mosquitto (so a
//! test can take "the broker" down and up), a hub stand-in that speaks the sync protocol
//! (stores records by (device, seq) once, acks the highest contiguous seq, records gaps),
//! and an enrollment endpoint.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use reactor_core::sync::messages::{Ack, Presence};
use reactor_core::sync::{Channel, DeviceId, Envelope, Frame, Message, Seq, decode, encode};
use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// A proxy to 127.0.0.1:1883 that can be switched off (all connections cut, new ones
/// refused) and on again.
#[derive(Debug, Clone)]
pub struct Proxy {
    pub port: u16,
    up: Arc<Mutex<CancellationToken>>,
    listener_on: Arc<tokio::sync::watch::Sender<bool>>,
}

impl Proxy {
    pub async fn start() -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (on, watch) = tokio::sync::watch::channel(true);
        let proxy = Proxy {
            port,
            up: Arc::new(Mutex::new(CancellationToken::new())),
            listener_on: Arc::new(on),
        };
        let up = proxy.up.clone();
        tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    return;
                };
                if !*watch.borrow() {
                    drop(inbound);
                    continue;
                }
                let cut = up.lock().unwrap().clone();
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect("127.0.0.1:1883").await else {
                        return;
                    };
                    let (mut a, mut b) = (inbound, outbound);
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut a, &mut b) => {}
                        () = cut.cancelled() => {}
                    }
                });
            }
        });
        proxy
    }

    pub fn down(&self) {
        self.listener_on.send_replace(false);
        let mut up = self.up.lock().unwrap();
        up.cancel();
        *up = CancellationToken::new();
    }

    pub fn up(&self) {
        self.listener_on.send_replace(true);
    }
}

/// What the hub stand-in has seen of one device.
#[derive(Debug, Default)]
pub struct HubState {
    /// seq → ("event" | "execution", the record's JSON-ish description)
    pub stored: BTreeMap<u64, (String, String)>,
    /// Records received again after being stored (de-duplicated).
    pub duplicates: u64,
    /// (from, to, count) of gap notices, first arrival.
    pub gaps: BTreeMap<u64, (u64, u64)>,
    /// Highest contiguous seq (records + gaps).
    pub acked: u64,
    /// Seqs of event records in arrival order (first arrivals only).
    pub arrival: Vec<u64>,
    pub online: Option<(u64, Presence, Option<u64>)>,
    pub command_results: Vec<(u64, String)>,
    /// When the first record batch arrived (drain measurements).
    pub first_batch_at: Option<std::time::Instant>,
}

impl HubState {
    fn advance(&mut self) {
        loop {
            let next = self.acked + 1;
            if self.stored.contains_key(&next) {
                self.acked = next;
            } else if let Some((to, _)) = self.gaps.get(&next) {
                self.acked = *to;
            } else {
                return;
            }
        }
    }

    /// Every seq 1..=acked is stored once or covered by a gap.
    pub fn covered(&self) -> BTreeSet<u64> {
        let mut all: BTreeSet<u64> = self.stored.keys().copied().collect();
        for (from, (to, _)) in &self.gaps {
            all.extend(*from..=*to);
        }
        all
    }
}

/// A hub stand-in on the real broker for `device`.
#[derive(Debug, Clone)]
pub struct Hub {
    pub state: Arc<Mutex<HubState>>,
    pub client: AsyncClient,
    pub device: DeviceId,
}

impl Hub {
    pub async fn start(device: &str) -> Hub {
        let device = DeviceId::parse(device).unwrap();
        let mut options = MqttOptions::new(format!("hub-{device}"), "127.0.0.1", 1883);
        options
            .set_keep_alive(Duration::from_secs(10))
            .set_max_packet_size(4 << 20, 4 << 20);
        let (client, mut events) = AsyncClient::new(options, 1024);
        let state = Arc::new(Mutex::new(HubState::default()));
        let hub = Hub {
            state: state.clone(),
            client: client.clone(),
            device: device.clone(),
        };
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let mut ready = Some(ready_tx);
        let prefix = device.prefix();
        tokio::spawn(async move {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                        client
                            .subscribe(format!("{prefix}+"), QoS::AtLeastOnce)
                            .await
                            .unwrap();
                    }
                    Ok(Event::Incoming(Incoming::SubAck(_))) => {
                        if let Some(ready) = ready.take() {
                            let _ = ready.send(());
                        }
                    }
                    Ok(Event::Incoming(Incoming::Publish(publish))) => {
                        let Ok((device, channel)) = reactor_core::sync::parse_topic(&publish.topic)
                        else {
                            continue;
                        };
                        let Ok(Frame::Message(envelope)) = decode(&publish.payload) else {
                            continue;
                        };
                        let ack = {
                            let mut state = state.lock().unwrap();
                            ingest(&mut state, channel, envelope)
                        };
                        if let Some(highest) = ack {
                            let frame = encode(&Envelope::new(
                                Seq(highest),
                                Message::Ack(Ack {
                                    highest: Seq(highest),
                                }),
                            ))
                            .unwrap();
                            let _ = client.try_publish(
                                device.topic(Channel::Ack),
                                QoS::AtLeastOnce,
                                false,
                                frame,
                            );
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), ready_rx)
            .await
            .unwrap()
            .unwrap();
        hub
    }

    pub fn acked(&self) -> u64 {
        self.state.lock().unwrap().acked
    }

    /// Waits until the hub acked `seq` (or fails after `within`).
    pub async fn wait_acked(&self, seq: u64, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        while self.acked() < seq {
            assert!(
                tokio::time::Instant::now() < deadline,
                "hub acked {} of {seq}",
                self.acked()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the device reported itself online (it subscribed before that publish).
    pub async fn wait_online(&self, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let online = self.state.lock().unwrap().online;
            if matches!(online, Some((_, Presence::Online, _))) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "device never online"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The retained status on the broker, as a fresh subscriber sees it.
    pub async fn retained_status(&self) -> Option<(u64, Presence, Option<u64>)> {
        let mut options =
            MqttOptions::new(format!("peek-{}", std::process::id()), "127.0.0.1", 1883);
        options.set_keep_alive(Duration::from_secs(5));
        let (client, mut events) = AsyncClient::new(options, 16);
        client
            .subscribe(self.device.topic(Channel::Status), QoS::AtLeastOnce)
            .await
            .unwrap();
        let found = tokio::time::timeout(Duration::from_secs(3), async {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Incoming::Publish(publish))) => {
                        if let Ok(Frame::Message(Envelope {
                            seq,
                            message: Message::Status(status),
                            ..
                        })) = decode(&publish.payload)
                        {
                            return Some((seq.0, status.presence, status.bundle_version));
                        }
                    }
                    Ok(_) => {}
                    Err(_) => return None,
                }
            }
        })
        .await
        .ok()
        .flatten();
        let _ = client.disconnect().await;
        found
    }

    /// Clears the device's retained status (test cleanup).
    pub async fn clear_retained(&self) {
        let _ = self
            .client
            .publish(
                self.device.topic(Channel::Status),
                QoS::AtLeastOnce,
                true,
                Vec::new(),
            )
            .await;
    }

    /// Publishes a frame to the device (bundle retained).
    pub async fn send(&self, channel: Channel, envelope: Envelope, retain: bool) {
        self.client
            .publish(
                self.device.topic(channel),
                QoS::AtLeastOnce,
                retain,
                encode(&envelope).unwrap(),
            )
            .await
            .unwrap();
    }
}

/// Stores a frame; returns the seq to ack when the contiguous prefix moved (or a resend came).
fn ingest(state: &mut HubState, channel: Channel, envelope: Envelope) -> Option<u64> {
    let before = state.acked;
    if matches!(
        envelope.message,
        Message::EventBatch(_) | Message::ExecutionBatch(_)
    ) && state.first_batch_at.is_none()
    {
        state.first_batch_at = Some(std::time::Instant::now());
    }
    match envelope.message {
        Message::EventBatch(batch) => {
            for (i, event) in batch.events.iter().enumerate() {
                let seq = batch.first.0 + i as u64;
                let text = format!("{} {}", event.event_type, event.data.as_str());
                if let std::collections::btree_map::Entry::Vacant(slot) = state.stored.entry(seq) {
                    slot.insert(("event".into(), text));
                    state.arrival.push(seq);
                } else {
                    state.duplicates += 1;
                }
            }
        }
        Message::ExecutionBatch(batch) => {
            for (i, report) in batch.executions.iter().enumerate() {
                let seq = batch.first.0 + i as u64;
                let text = format!("{} {:?}", report.workflow, report.outcome);
                if let std::collections::btree_map::Entry::Vacant(slot) = state.stored.entry(seq) {
                    slot.insert(("execution".into(), text));
                } else {
                    state.duplicates += 1;
                }
            }
        }
        Message::Gap(gap) => {
            state
                .gaps
                .entry(gap.from.0)
                .or_insert((gap.to.0, gap.count));
        }
        Message::Status(status) => {
            let newer = state
                .online
                .as_ref()
                .is_none_or(|(seq, _, _)| envelope.seq.0 > *seq);
            if newer {
                state.online = Some((envelope.seq.0, status.presence, status.bundle_version));
            }
            return None;
        }
        Message::CommandResult(result) => {
            state
                .command_results
                .push((envelope.seq.0, format!("{:?}", result.outcome)));
            return None;
        }
        _ => return None,
    }
    let _ = channel;
    state.advance();
    // Ack after every batch, moved or not (a lost ack is repaired by the next one).
    let _ = before;
    (state.acked > 0).then_some(state.acked)
}

/// An enrollment endpoint answering one token with an enrollment for `device` on the proxy.
pub async fn enrollment_server(
    device: &str,
    token: &str,
    broker_port: u16,
    key: reactor_core::sync::bundle::PublicKey,
) -> SocketAddr {
    use axum::Json;
    use axum::http::StatusCode;
    use axum::routing::post;
    let answer = serde_json::json!({
        "protocol_version": 1,
        "device_id": device,
        "labels": {"site": "north"},
        "broker": {
            "url": format!("mqtt://127.0.0.1:{broker_port}"),
            "client_id": device,
            "username": device,
            "password": "rd_test",
            "topic_prefix": format!("reactor/v1/d/{device}/"),
        },
        "bundle_signing_key": {
            "algorithm": "ed25519",
            "key_id": key.id().0.iter().map(|b| format!("{b:02x}")).collect::<String>(),
            "public_key": base64::engine::general_purpose::STANDARD.encode(key.0),
        }
    });
    let token = token.to_string();
    let spent = Arc::new(Mutex::new(false));
    let app = axum::Router::new().route(
        "/api/v1/enroll",
        post(move |Json(body): Json<serde_json::Value>| {
            let answer = answer.clone();
            let token = token.clone();
            let spent = spent.clone();
            async move {
                let mut spent = spent.lock().unwrap();
                if body["token"] != token.as_str() || *spent {
                    return (
                        StatusCode::UNAUTHORIZED,
                        Json(serde_json::json!({"title": "Unauthorized", "detail": "unknown, expired or used token"})),
                    );
                }
                *spent = true;
                (StatusCode::OK, Json(answer))
            }
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}
