//! The MQTT connection to the hub's broker: status with a last will, the outbox drained in
//! order, acks, reconnects; inbound bundles and commands are handed to [`super::inbound`].
//!
//! One task owns the rumqttc event loop and never blocks on it: publishes go through
//! `try_publish` (a full request queue ends the drain round; the next poll makes room).
//!
//! Drain: a cursor (the highest seq handed to the broker) starts at the outbox's acked seq on
//! every connection; each round reads what is above it ([`Outbox::pending`]), groups
//! consecutive records of one kind into `EventBatch` / `ExecutionBatch` frames (≤ 1,000
//! records, ≤ [`BATCH_BYTES`]), sends gaps as `Gap` frames, QoS 1. An ack deletes what it
//! covers. When no ack advanced for [`ClientConfig::ack_timeout`] while records are
//! unacked, the cursor goes back to the acked seq (a resend; the hub de-duplicates).
//!
//! Status: on every connection the agent reserves a block of [`STATUS_BLOCK`] status seqs
//! (durable counter): it publishes a retained `Online` status with the block's first seq
//! `S`, registers a retained `Offline` last will with the block's last seq
//! `S + STATUS_BLOCK - 1`, and publishes a fresh `Online` status (health) every
//! [`ClientConfig::status_every`] with `S + 1`, `S + 2`, … — so the will always carries a
//! higher seq than every status sent on its connection, and the next connection's `Online`
//! a higher one than the will (the hub keeps the highest seq). A changed bundle (a rollout
//! stage, a renewal) is published as the next `Online` status of the block on the same
//! connection — no reconnect, so a fleet-wide renewal causes no reconnect storm. The will
//! keeps the bundle version of connection time (MQTT 3.1.1 cannot change a will without
//! reconnecting); docs/sync-protocol.md ("Status seqs") says what the hub does with it.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use reactor_core::engine::Timestamp;
use reactor_core::mqtt::Backoff;
use reactor_core::outbox::{DropReason, Outbox, Pending, RecordKind};
use reactor_core::store::{Store, StoreWrite};
use reactor_core::sync::messages::{
    Ack, DeviceEvent, EventBatch, ExecutionBatch, ExecutionReport, GapNotice, GapReason,
    MAX_BATCH_RECORDS, Presence, Status,
};
use reactor_core::sync::{Channel, DeviceId, Envelope, Frame, Message, Seq, decode, encode};
use rumqttc::{
    AsyncClient, Event, Incoming, LastWill, MqttOptions, QoS, TlsConfiguration, Transport,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::enroll::Enrollment;
use super::feed;

/// Most payload bytes per batch frame (frames are ≤ 2 MiB; stay well under).
pub const BATCH_BYTES: usize = 512 * 1024;
/// Meta key of the status seq counter.
const STATUS_SEQ_KEY: &str = "fleet.status.seq";
/// Status seqs reserved per connection: the online status, periodic updates, the will.
pub const STATUS_BLOCK: u64 = 1 << 20;

/// Tunables of the connection.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Resend from the acked seq when no ack advanced for this long.
    pub ack_timeout: Duration,
    /// How often the outbox is checked for new records while connected.
    pub poll: Duration,
    /// Batch frames in flight at once (MQTT inflight window).
    pub inflight: u16,
    pub keep_alive: Duration,
    /// A status with fresh health is published this often while connected (the first one
    /// after at most 5 s, so a newly applied bundle is reported with health soon).
    pub status_every: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            ack_timeout: Duration::from_secs(10),
            poll: Duration::from_millis(20),
            inflight: 64,
            keep_alive: Duration::from_secs(30),
            status_every: Duration::from_secs(30),
        }
    }
}

/// What the inbound task asks the connection to do.
#[derive(Debug)]
pub enum Outgoing {
    /// Publish this frame on this channel (QoS 1, not retained).
    Frame(Channel, Envelope),
    /// The status changed (a new bundle is active): publish it on this connection.
    StatusChanged,
}

/// What the connection hands to the inbound task.
#[derive(Debug)]
pub enum Inbound {
    Bundle(Vec<u8>),
    Command(Frame),
}

/// Shared state the status is built from.
#[derive(Debug)]
pub struct StatusSource {
    pub bundle_version: std::sync::Mutex<Option<u64>>,
    pub health: Arc<feed::Health>,
}

fn options(
    enrollment: &Enrollment,
    config: &ClientConfig,
    will: LastWill,
) -> anyhow::Result<MqttOptions> {
    let (tls, host, port) = reactor_core::mqtt::settings::parse_url(&enrollment.broker.url)
        .map_err(|e| anyhow::anyhow!("broker url: {e}"))?;
    let mut options = MqttOptions::new(&enrollment.broker.client_id, host, port);
    options
        .set_keep_alive(config.keep_alive)
        .set_clean_session(true)
        .set_inflight(config.inflight.max(1))
        .set_max_packet_size(4 * 1024 * 1024, 4 * 1024 * 1024)
        .set_credentials(&enrollment.broker.username, &enrollment.broker.password)
        .set_last_will(will);
    if tls {
        options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            Arc::new(tls_config(enrollment.broker.ca_pem.as_deref())?),
        )));
    }
    Ok(options)
}

/// rustls with the ring provider, trusting the enrollment's CA or the system roots.
fn tls_config(ca_pem: Option<&str>) -> anyhow::Result<rustls::ClientConfig> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    match ca_pem {
        Some(pem) => {
            for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                roots.add(cert.context("broker CA")?).context("broker CA")?;
            }
        }
        None => {
            roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        }
    }
    anyhow::ensure!(
        !roots.is_empty(),
        "no CA certificate to trust for the broker"
    );
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth())
}

fn gap_reason(reason: DropReason) -> GapReason {
    match reason {
        DropReason::Full => GapReason::OutboxFull,
        DropReason::Expired => GapReason::Expired,
        DropReason::Corrupt => GapReason::Corrupt,
    }
}

/// Groups pending items into frames, in seq order.
pub fn frames(items: Vec<Pending>) -> Vec<(Channel, Envelope)> {
    let mut out = Vec::new();
    let mut events: Vec<DeviceEvent> = Vec::new();
    let mut executions: Vec<ExecutionReport> = Vec::new();
    let mut first = 0u64;
    let mut next = 0u64;
    let mut bytes = 0usize;
    let flush = |events: &mut Vec<DeviceEvent>,
                 executions: &mut Vec<ExecutionReport>,
                 first: u64,
                 out: &mut Vec<(Channel, Envelope)>| {
        if !events.is_empty() {
            let batch = EventBatch {
                first: Seq(first),
                events: std::mem::take(events),
            };
            out.push((
                Channel::Events,
                Envelope::new(Seq(first), Message::EventBatch(batch)),
            ));
        }
        if !executions.is_empty() {
            let batch = ExecutionBatch {
                first: Seq(first),
                executions: std::mem::take(executions),
            };
            out.push((
                Channel::Executions,
                Envelope::new(Seq(first), Message::ExecutionBatch(batch)),
            ));
        }
    };
    for item in items {
        match item {
            Pending::Gap(gap) => {
                flush(&mut events, &mut executions, first, &mut out);
                let notice = GapNotice {
                    from: Seq(gap.from),
                    to: Seq(gap.to),
                    reason: gap_reason(gap.reason),
                    count: gap.count,
                };
                out.push((
                    Channel::Events,
                    Envelope::new(Seq(gap.from), Message::Gap(notice)),
                ));
            }
            Pending::Record(record) => {
                enum Decoded {
                    Event(DeviceEvent),
                    Execution(ExecutionReport),
                }
                let decoded = match record.kind {
                    RecordKind::Event => postcard::from_bytes(&record.payload).map(Decoded::Event),
                    RecordKind::Execution => {
                        postcard::from_bytes(&record.payload).map(Decoded::Execution)
                    }
                };
                let decoded = match decoded {
                    Ok(decoded) => decoded,
                    Err(error) => {
                        // Payloads are this agent's own encoding; one that does not decode
                        // can never be sent: it goes out as a one-record corrupt gap (the
                        // hub fills the hole, the ack removes the record).
                        tracing::error!(seq = record.seq, %error, "outbox record does not decode: reported as a gap");
                        flush(&mut events, &mut executions, first, &mut out);
                        next = 0;
                        let notice = GapNotice {
                            from: Seq(record.seq),
                            to: Seq(record.seq),
                            reason: GapReason::Corrupt,
                            count: 1,
                        };
                        out.push((
                            Channel::Events,
                            Envelope::new(Seq(record.seq), Message::Gap(notice)),
                        ));
                        continue;
                    }
                };
                let same_run = match record.kind {
                    RecordKind::Event => !events.is_empty(),
                    RecordKind::Execution => !executions.is_empty(),
                };
                let len = events.len() + executions.len();
                if !same_run
                    || record.seq != next
                    || len >= MAX_BATCH_RECORDS
                    || bytes + record.payload.len() > BATCH_BYTES
                {
                    flush(&mut events, &mut executions, first, &mut out);
                    first = record.seq;
                    bytes = 0;
                }
                next = record.seq + 1;
                bytes += record.payload.len();
                match decoded {
                    Decoded::Event(event) => events.push(event),
                    Decoded::Execution(report) => executions.push(report),
                }
            }
        }
    }
    flush(&mut events, &mut executions, first, &mut out);
    out
}

/// Sends DISCONNECT and polls until it left (at most 2 s), so the broker drops the will.
async fn disconnect(client: &AsyncClient, events: &mut rumqttc::EventLoop) {
    let _ = client.try_disconnect();
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Ok(event) = events.poll().await {
            if matches!(event, Event::Outgoing(rumqttc::Outgoing::Disconnect)) {
                break;
            }
        }
    })
    .await;
}

/// The fleet connection.
pub struct Client {
    pub enrollment: Enrollment,
    pub device: DeviceId,
    pub outbox: Outbox,
    pub store: Arc<dyn Store>,
    pub config: ClientConfig,
    pub status: Arc<StatusSource>,
}

impl Client {
    fn topic(&self, channel: Channel) -> String {
        self.device.topic(channel)
    }

    async fn next_status_seq(&self) -> anyhow::Result<u64> {
        let previous = match self.store.meta(STATUS_SEQ_KEY).await? {
            Some(bytes) if bytes.len() == 8 => {
                u64::from_le_bytes(bytes.try_into().unwrap_or([0; 8]))
            }
            _ => 0,
        };
        // Above the previous connection's whole block (and its will), also when the previous
        // value came from an agent that reserved only 2 per connection.
        let seq = previous + STATUS_BLOCK;
        self.store
            .write(vec![StoreWrite::PutMeta {
                key: STATUS_SEQ_KEY.into(),
                value: Some(seq.to_le_bytes().to_vec()),
            }])
            .await?;
        Ok(seq)
    }

    /// Publishes this connection's next `Online` status (retained, the next seq of its
    /// block); whether the client's request queue took it.
    fn publish_online(&self, client: &AsyncClient, update_seq: &mut u64) -> anyhow::Result<bool> {
        *update_seq += 1;
        let update = encode(&Envelope::new(
            Seq(*update_seq),
            Message::Status(self.status(Presence::Online)),
        ))?;
        Ok(client
            .try_publish(self.topic(Channel::Status), QoS::AtLeastOnce, true, update)
            .is_ok())
    }

    fn status(&self, presence: Presence) -> Status {
        Status {
            presence,
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            bundle_version: *self
                .status
                .bundle_version
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
            health: self.status.health.snapshot(),
            at: Timestamp::now(),
        }
    }

    /// Runs until `cancel`: connects, reconnects with backoff, drains, hands inbound frames
    /// to `inbound`, publishes what `outgoing` asks for.
    pub async fn run(
        self,
        inbound: mpsc::Sender<Inbound>,
        mut outgoing: mpsc::Receiver<Outgoing>,
        cancel: CancellationToken,
    ) {
        let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(30));
        while !cancel.is_cancelled() {
            match self.connection(&inbound, &mut outgoing, &cancel).await {
                Ok(true) => backoff.reset(),
                Ok(false) => {}
                Err(error) => {
                    tracing::warn!(error = %format!("{error:#}"), "fleet connection failed")
                }
            }
            if cancel.is_cancelled() {
                break;
            }
            tokio::select! {
                () = cancel.cancelled() => break,
                () = tokio::time::sleep(backoff.next_delay()) => {}
            }
        }
    }

    /// One connection; `Ok(true)` when it was established (resets the backoff).
    async fn connection(
        &self,
        inbound: &mpsc::Sender<Inbound>,
        outgoing: &mut mpsc::Receiver<Outgoing>,
        cancel: &CancellationToken,
    ) -> anyhow::Result<bool> {
        let status_seq = self.next_status_seq().await?;
        let will_seq = status_seq + STATUS_BLOCK - 1;
        let mut update_seq = status_seq;
        let will = encode(&Envelope::new(
            Seq(will_seq),
            Message::Status(self.status(Presence::Offline)),
        ))?;
        let options = options(
            &self.enrollment,
            &self.config,
            LastWill::new(self.topic(Channel::Status), will, QoS::AtLeastOnce, true),
        )?;
        let (client, mut events) = AsyncClient::new(options, 1024);
        let mut connected = false;
        // A changed status whose publish found the request queue full.
        let mut status_due = false;
        let mut cursor = 0u64;
        let mut acked = 0u64;
        let mut last_progress = tokio::time::Instant::now();
        let mut tick = tokio::time::interval(self.config.poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let status_every = self.config.status_every.max(Duration::from_millis(100));
        let mut report = tokio::time::interval_at(
            tokio::time::Instant::now() + status_every.min(Duration::from_secs(5)),
            status_every,
        );
        report.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = cancel.cancelled() => {
                    if connected {
                        // A clean stop: say offline ourselves (a clean DISCONNECT sends no will).
                        let offline = encode(&Envelope::new(
                            Seq(will_seq),
                            Message::Status(self.status(Presence::Offline)),
                        ))?;
                        let _ = client.try_publish(self.topic(Channel::Status), QoS::AtLeastOnce, true, offline);
                        disconnect(&client, &mut events).await;
                    }
                    return Ok(connected);
                }
                polled = events.poll() => {
                    match polled.context("broker connection")? {
                        Event::Incoming(Incoming::ConnAck(ack)) => {
                            anyhow::ensure!(ack.code == rumqttc::ConnectReturnCode::Success, "broker refused: {:?}", ack.code);
                            connected = true;
                            let stats = self.outbox.stats().await?;
                            acked = stats.acked;
                            cursor = acked;
                            last_progress = tokio::time::Instant::now();
                            for channel in [Channel::Ack, Channel::Bundle, Channel::Cmd] {
                                client.try_subscribe(self.topic(channel), QoS::AtLeastOnce)?;
                            }
                            let online = encode(&Envelope::new(
                                Seq(status_seq),
                                Message::Status(self.status(Presence::Online)),
                            ))?;
                            client.try_publish(self.topic(Channel::Status), QoS::AtLeastOnce, true, online)?;
                            tracing::info!(broker = %self.enrollment.broker.url, unacked_from = acked + 1, "connected to the fleet hub");
                        }
                        Event::Incoming(Incoming::Publish(publish)) => {
                            let topic = reactor_core::sync::parse_topic(&publish.topic);
                            let Ok((device, channel)) = topic else { continue };
                            if device != self.device { continue }
                            match channel {
                                Channel::Ack => {
                                    if let Ok(Frame::Message(Envelope { message: Message::Ack(Ack { highest }), .. })) = decode(&publish.payload)
                                        && highest.0 > acked
                                        && self.outbox.ack(highest.0).await?
                                    {
                                        acked = highest.0;
                                        cursor = cursor.max(acked);
                                        last_progress = tokio::time::Instant::now();
                                    }
                                }
                                // An empty retained payload clears the topic: nothing to do.
                                Channel::Bundle if !publish.payload.is_empty() => match decode(&publish.payload) {
                                    Ok(Frame::Message(Envelope { message: Message::Bundle(bundle), .. })) => {
                                        let _ = inbound.try_send(Inbound::Bundle(bundle.bytes));
                                    }
                                    Ok(Frame::Unsupported(unsupported)) => tracing::warn!(
                                        version = unsupported.version,
                                        kind = unsupported.kind,
                                        "bundle frame of a newer protocol: keeping the current bundle"
                                    ),
                                    Ok(_) => tracing::warn!("not a bundle frame on the bundle topic"),
                                    Err(error) => tracing::warn!(%error, "undecodable bundle frame skipped"),
                                },
                                Channel::Cmd => match decode(&publish.payload) {
                                    Ok(frame) => { let _ = inbound.try_send(Inbound::Command(frame)); }
                                    Err(error) => tracing::warn!(%error, "undecodable command frame skipped"),
                                },
                                _ => {}
                            }
                        }
                        _ => {}
                    }
                }
                Some(request) = outgoing.recv(), if connected => match request {
                    Outgoing::Frame(channel, envelope) => {
                        let bytes = encode(&envelope)?;
                        client.try_publish(self.topic(channel), QoS::AtLeastOnce, false, bytes)?;
                    }
                    Outgoing::StatusChanged => {
                        if update_seq + 2 >= will_seq {
                            // The block is used up: a new connection reserves the next one
                            // (and publishes the new status as its `Online`).
                            disconnect(&client, &mut events).await;
                            return Ok(true);
                        }
                        // A full request queue: retried on the next poll tick.
                        status_due = !self.publish_online(&client, &mut update_seq)?;
                        tracing::info!(seq = update_seq, "new bundle reported on the open connection");
                    }
                },
                _ = report.tick(), if connected => {
                    if update_seq + 2 >= will_seq {
                        // The block is used up (years at the default period): a new
                        // connection reserves the next one.
                        disconnect(&client, &mut events).await;
                        return Ok(true);
                    }
                    // A full request queue skips this report; the next one follows.
                    self.publish_online(&client, &mut update_seq)?;
                }
                _ = tick.tick(), if connected => {
                    if status_due && update_seq + 2 < will_seq {
                        status_due = !self.publish_online(&client, &mut update_seq)?;
                    }
                    if cursor > acked && last_progress.elapsed() >= self.config.ack_timeout {
                        tracing::info!(from = acked + 1, "no ack for a while: resending unacked records");
                        cursor = acked;
                        last_progress = tokio::time::Instant::now();
                    }
                    cursor = self.drain(&client, cursor).await?;
                }
            }
        }
    }

    /// Sends what is above `cursor` while the request queue has room; returns the new cursor.
    async fn drain(&self, client: &AsyncClient, mut cursor: u64) -> anyhow::Result<u64> {
        // Bounded per round so the event loop keeps being polled (acks, pings).
        for _ in 0..8 {
            let items = self
                .outbox
                .pending(cursor, MAX_BATCH_RECORDS * 4, BATCH_BYTES * 4)
                .await?;
            if items.is_empty() {
                break;
            }
            for (channel, envelope) in frames(items) {
                let last = match &envelope.message {
                    Message::EventBatch(batch) => batch.last().0,
                    Message::ExecutionBatch(batch) => batch.last().0,
                    Message::Gap(gap) => gap.to.0,
                    _ => cursor,
                };
                let bytes = encode(&envelope)?;
                match client.try_publish(self.topic(channel), QoS::AtLeastOnce, false, bytes) {
                    Ok(()) => cursor = cursor.max(last),
                    // The request queue is full: the rest goes next round.
                    Err(_) => return Ok(cursor),
                }
            }
        }
        Ok(cursor)
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("device", &self.device)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use reactor_core::outbox::{Gap, Record};
    use reactor_core::sync::messages::{DeviceEvent, JsonText};

    use super::*;

    fn event(seq: u64) -> Pending {
        let payload = postcard::to_allocvec(&DeviceEvent {
            id: format!("e{seq}"),
            event_type: "t".into(),
            source: "s".into(),
            time: Timestamp(0),
            data: JsonText::from_value(&serde_json::json!({ "seq": seq })),
            meta: JsonText::from_value(&serde_json::json!({})),
        })
        .unwrap();
        Pending::Record(Record {
            seq,
            kind: RecordKind::Event,
            created: Timestamp(0),
            payload,
        })
    }

    fn execution(seq: u64) -> Pending {
        let report = ExecutionReport {
            execution: reactor_core::sync::messages::ExecutionRef([1; 16]),
            workflow: "w".into(),
            workflow_version: 1,
            outcome: reactor_core::sync::messages::Outcome::Succeeded,
            started_at: Timestamp(0),
            finished_at: Some(Timestamp(1)),
            error: None,
            trace: Vec::new(),
        };
        Pending::Record(Record {
            seq,
            kind: RecordKind::Execution,
            created: Timestamp(0),
            payload: postcard::to_allocvec(&report).unwrap(),
        })
    }

    /// (channel, kind, first seq, last seq) of each frame.
    fn shape(items: Vec<Pending>) -> Vec<(Channel, &'static str, u64, u64)> {
        frames(items)
            .into_iter()
            .map(|(channel, envelope)| {
                let (kind, last) = match &envelope.message {
                    Message::EventBatch(b) => ("events", b.last().0),
                    Message::ExecutionBatch(b) => ("executions", b.last().0),
                    Message::Gap(g) => ("gap", g.to.0),
                    _ => ("other", 0),
                };
                // Every frame encodes (the receiver's bounds hold).
                encode(&envelope).unwrap();
                (channel, kind, envelope.seq.0, last)
            })
            .collect()
    }

    #[test]
    fn consecutive_records_of_one_kind_share_a_frame_in_seq_order() {
        let items = vec![
            Pending::Gap(Gap {
                from: 1,
                to: 3,
                count: 3,
                reason: DropReason::Full,
            }),
            event(4),
            event(5),
            execution(6),
            execution(7),
            event(8),
            // A hole in the seqs starts a new batch (a batch covers consecutive seqs only).
            event(10),
        ];
        assert_eq!(
            shape(items),
            vec![
                (Channel::Events, "gap", 1, 3),
                (Channel::Events, "events", 4, 5),
                (Channel::Executions, "executions", 6, 7),
                (Channel::Events, "events", 8, 8),
                (Channel::Events, "events", 10, 10),
            ]
        );
    }

    #[test]
    fn a_record_that_does_not_decode_goes_out_as_a_corrupt_gap() {
        let broken = Pending::Record(Record {
            seq: 3,
            kind: RecordKind::Event,
            created: Timestamp(0),
            payload: vec![0xFF; 3],
        });
        assert_eq!(
            shape(vec![event(1), event(2), broken, event(4)]),
            vec![
                (Channel::Events, "events", 1, 2),
                (Channel::Events, "gap", 3, 3),
                (Channel::Events, "events", 4, 4),
            ]
        );
    }

    #[test]
    fn batches_stop_at_the_record_limit() {
        let items: Vec<Pending> = (1..=2_500).map(event).collect();
        assert_eq!(
            shape(items),
            vec![
                (Channel::Events, "events", 1, 1_000),
                (Channel::Events, "events", 1_001, 2_000),
                (Channel::Events, "events", 2_001, 2_500),
            ]
        );
    }
}
