//! Against the real Mosquitto on 127.0.0.1:1883 (TOOLING.md). Every test uses its own topic
//! prefix `reactor-test/{ulid}/…` and its own client ids, and clears what it retained.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use rumqttc::{AsyncClient, Event as MqttEvent, MqttOptions, Packet, QoS};
use serde_json::json;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::Value;
use crate::action::ActionRegistry;
use crate::action::mqtt_publish::{MqttMessage, MqttPublisher, Qos};
use crate::engine::{
    Environment, Event, ExecutionId, ExecutionRecord, Fact, Runtime, RuntimeConfig, Timestamp,
};
use crate::flow::builder::{StepBuilder, WorkflowBuilder};
use crate::store::MemoryStore;
use crate::store::{ExecutionQuery, Retention, Store, StoreError, StoreWrite};
use crate::trigger::{Trigger, TriggerContext, TriggerError};

#[path = "sessions_tests.rs"]
mod sessions;

const MOSQUITTO: &str = "mqtt://127.0.0.1:1883";
// Generous: CI machines are small and may be busy.
const WAIT: Duration = Duration::from_secs(30);

fn prefix() -> String {
    format!("reactor-test/{}", ulid::Ulid::new())
}

/// Fails the next `fail` writes, then behaves like a [`MemoryStore`].
#[derive(Debug, Default)]
struct FlakyStore {
    inner: MemoryStore,
    fail: AtomicUsize,
    failed: AtomicUsize,
}

#[async_trait]
impl Store for FlakyStore {
    async fn write(&self, batch: Vec<StoreWrite>) -> Result<(), StoreError> {
        let left = self.fail.load(Ordering::SeqCst);
        if left > 0 {
            self.fail.store(left - 1, Ordering::SeqCst);
            self.failed.fetch_add(1, Ordering::SeqCst);
            return Err(StoreError::Io("injected".into()));
        }
        self.inner.write(batch).await
    }
    async fn unfinished(&self) -> Result<Vec<(ExecutionRecord, Vec<Fact>)>, StoreError> {
        self.inner.unfinished().await
    }
    async fn execution(&self, id: ExecutionId) -> Result<Option<ExecutionRecord>, StoreError> {
        self.inner.execution(id).await
    }
    async fn journal(&self, id: ExecutionId) -> Result<Vec<Fact>, StoreError> {
        self.inner.journal(id).await
    }
    async fn executions(&self, query: &ExecutionQuery) -> Result<Vec<ExecutionRecord>, StoreError> {
        self.inner.executions(query).await
    }
    async fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.meta(key).await
    }
    async fn meta_prefix(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.inner.meta_prefix(prefix).await
    }
    async fn prune(&self, retention: Retention, now: Timestamp) -> Result<usize, StoreError> {
        self.inner.prune(retention, now).await
    }
}

/// A runtime with one workflow `w` that skips `probe` payloads and records everything else.
fn runtime(store: Arc<dyn Store>) -> Runtime {
    let runtime = Runtime::new(
        store,
        ActionRegistry::new(),
        Environment::empty(),
        RuntimeConfig::default(),
    );
    let workflow = WorkflowBuilder::new("w")
        .when("${{ event.data != \"probe\" }}")
        .step(StepBuilder::set(json!({ "seen": true })))
        .var("seen", json!(false))
        .build()
        .expect("valid workflow");
    runtime.load(workflow);
    runtime
}

/// Each call gets its own client-id prefix: tests run at once, and two clients with one id
/// make the broker drop the older connection (and what it had in flight).
fn brokers(url: &str) -> MqttBrokers {
    let prefix = format!("rt{}", &ulid::Ulid::new().to_string()[18..]);
    MqttBrokers::with_default(MqttSettings::from_url(url, &prefix).unwrap())
}

struct Running {
    cancel: CancellationToken,
    task: JoinHandle<Result<(), TriggerError>>,
}

impl Running {
    async fn stop(self) {
        self.cancel.cancel();
        let result = tokio::time::timeout(WAIT, self.task).await;
        result
            .expect("trigger stops")
            .expect("no panic")
            .expect("no error");
    }
}

fn start(runtime: &Runtime, url: &str, filter: &str, qos: u8, client_id: &str) -> Running {
    let spec = crate::flow::MqttTrigger {
        topic: filter.into(),
        qos,
        broker: None,
        connection: None,
        sessions: 1,
    };
    let trigger = MqttTrigger::new(&spec, &brokers(url), "t")
        .unwrap()
        .with_client_id(client_id);
    let cancel = CancellationToken::new();
    let context = TriggerContext::new("w", runtime.clone(), cancel.clone());
    let task = tokio::spawn(Box::new(trigger).run(context));
    Running { cancel, task }
}

async fn publish(publisher: &BrokerPublisher, topic: &str, payload: &[u8], qos: Qos, retain: bool) {
    publisher
        .publish(MqttMessage {
            broker: None,
            topic: topic.into(),
            payload: payload.to_vec(),
            qos,
            retain,
        })
        .await
        .expect("published");
}

/// Publishes QoS 0 probes on `topic` until the trigger has seen (and skipped) one.
async fn wait_subscribed(runtime: &Runtime, publisher: &BrokerPublisher, topic: &str) {
    let before = runtime.stats().skipped.load(Ordering::SeqCst);
    let deadline = tokio::time::Instant::now() + WAIT;
    while runtime.stats().skipped.load(Ordering::SeqCst) == before {
        assert!(tokio::time::Instant::now() < deadline, "never subscribed");
        publish(publisher, topic, b"probe", Qos::AtMostOnce, false).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The events of the recorded executions, oldest first, once there are `count`.
async fn events(store: &dyn Store, count: usize) -> Vec<Event> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut records = store.executions(&ExecutionQuery::default()).await.unwrap();
        if records.len() >= count {
            records.sort_by_key(|r| r.id);
            let mut events = Vec::new();
            for record in records {
                match store.journal(record.id).await.unwrap().remove(0) {
                    Fact::Started { event, .. } => events.push(event),
                    other => panic!("first fact is {other:?}"),
                }
            }
            return events;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {count} executions",
            records.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn fires_for_each_qos_and_wildcards() {
    let p = prefix();
    let publisher = BrokerPublisher::new(brokers(MOSQUITTO));
    for qos in [0u8, 1, 2] {
        let store = Arc::new(MemoryStore::new());
        let runtime = runtime(store.clone());
        let filter = format!("{p}/q{qos}/+/temp");
        let running = start(
            &runtime,
            MOSQUITTO,
            &filter,
            qos,
            &format!("rt-{}-{qos}", ulid::Ulid::new()),
        );
        wait_subscribed(&runtime, &publisher, &format!("{p}/q{qos}/probe/temp")).await;
        let q = [Qos::AtMostOnce, Qos::AtLeastOnce, Qos::ExactlyOnce][usize::from(qos)];
        let topic = format!("{p}/q{qos}/kitchen/temp");
        publish(&publisher, &topic, br#"{"temp": 31.5}"#, q, false).await;
        publish(&publisher, &topic, b"hot", q, false).await;
        publish(
            &publisher,
            &format!("{p}/q{qos}/kitchen/humidity"),
            b"x",
            q,
            false,
        )
        .await;
        let mut events = events(store.as_ref(), 2).await;
        assert_eq!(events.len(), 2, "only matching topics");
        // Submissions run concurrently: executions need not be in publish order.
        events.sort_by_key(|e| e.data.is_string());
        assert_eq!(events[0].event_type, "mqtt");
        assert_eq!(events[0].source, format!("reactor:mqtt/{topic}"));
        assert_eq!(events[0].data, json!({"temp": 31.5}));
        assert_eq!(events[0].meta["qos"], json!(qos));
        assert_eq!(events[0].meta["topic"], json!(topic));
        assert_eq!(events[0].meta["filter"], json!(filter));
        assert_eq!(events[0].meta["broker"], json!("mqtt://127.0.0.1:1883"));
        assert_eq!(events[1].data, json!("hot"));
        assert_eq!(events[1].meta["encoding"], json!("text"));
        running.stop().await;
    }
    // `#` and a binary payload.
    let store = Arc::new(MemoryStore::new());
    let runtime = runtime(store.clone());
    let running = start(
        &runtime,
        MOSQUITTO,
        &format!("{p}/all/#"),
        1,
        &format!("rt-{}", ulid::Ulid::new()),
    );
    wait_subscribed(&runtime, &publisher, &format!("{p}/all/probe")).await;
    publish(
        &publisher,
        &format!("{p}/all/a/b/c"),
        &[0xff, 0x00],
        Qos::AtLeastOnce,
        false,
    )
    .await;
    let events = events(store.as_ref(), 1).await;
    assert_eq!(events[0].data, json!("/wA="));
    assert_eq!(events[0].meta["encoding"], json!("base64"));
    running.stop().await;
    publisher.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test]
async fn persistent_session_delivers_what_was_published_while_away() {
    let p = prefix();
    let publisher = BrokerPublisher::new(brokers(MOSQUITTO));
    let client_id = format!("rt-{}", ulid::Ulid::new());
    let filter = format!("{p}/s/+");
    let store = Arc::new(MemoryStore::new());
    let runtime = runtime(store.clone());
    let running = start(&runtime, MOSQUITTO, &filter, 1, &client_id);
    wait_subscribed(&runtime, &publisher, &format!("{p}/s/probe")).await;
    running.stop().await;
    for n in 0..3 {
        publish(
            &publisher,
            &format!("{p}/s/x"),
            format!("{n}").as_bytes(),
            Qos::AtLeastOnce,
            false,
        )
        .await;
    }
    let running = start(&runtime, MOSQUITTO, &filter, 1, &client_id);
    let mut data: Vec<Value> = events(store.as_ref(), 3)
        .await
        .into_iter()
        .map(|e| e.data)
        .collect();
    data.sort_by_key(|v| v.as_i64());
    assert_eq!(data, [json!(0), json!(1), json!(2)]);
    running.stop().await;
    publisher.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test]
async fn a_message_is_acked_only_after_it_is_recorded() {
    let p = prefix();
    let publisher = BrokerPublisher::new(brokers(MOSQUITTO));
    let store = Arc::new(FlakyStore::default());
    let runtime = runtime(store.clone());
    let running = start(
        &runtime,
        MOSQUITTO,
        &format!("{p}/a/+"),
        1,
        &format!("rt-{}", ulid::Ulid::new()),
    );
    wait_subscribed(&runtime, &publisher, &format!("{p}/a/probe")).await;
    // The first two attempts to record it fail: it must not be acknowledged, so the broker
    // sends it again (on the connection the trigger re-opens) until it is recorded.
    store.fail.store(2, Ordering::SeqCst);
    publish(
        &publisher,
        &format!("{p}/a/x"),
        b"{\"n\": 1}",
        Qos::AtLeastOnce,
        false,
    )
    .await;
    let events = events(store.as_ref(), 1).await;
    assert_eq!(events[0].data, json!({"n": 1}));
    assert_eq!(store.failed.load(Ordering::SeqCst), 2);
    assert_eq!(events[0].meta["dup"], json!(true), "a redelivery");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let all = store.executions(&ExecutionQuery::default()).await.unwrap();
    assert_eq!(all.len(), 1, "recorded once, then acked");
    running.stop().await;
    publisher.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test]
async fn publisher_publishes_and_a_subscriber_receives_it() {
    let p = prefix();
    let topic = format!("{p}/pub/out");
    let mut options = MqttOptions::new(format!("rt-sub-{}", ulid::Ulid::new()), "127.0.0.1", 1883);
    options.set_clean_session(true);
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    client.subscribe(&topic, QoS::AtLeastOnce).await.unwrap();
    loop {
        if let MqttEvent::Incoming(Packet::SubAck(_)) = eventloop.poll().await.unwrap() {
            break;
        }
    }
    let publisher = Arc::new(BrokerPublisher::new(brokers(MOSQUITTO)));
    let action =
        crate::action::mqtt_publish::MqttPublishAction::new(ArcPublisher(publisher.clone()));
    let input =
        json!({"topic": topic, "payload": {"temp": 30, "ok": true}, "qos": 2, "retain": true});
    let output =
        crate::action::Action::execute(&action, input, &crate::action::test_context()).await;
    assert_eq!(output.unwrap(), Value::Null);
    let received = tokio::time::timeout(WAIT, async {
        loop {
            if let MqttEvent::Incoming(Packet::Publish(publish)) = eventloop.poll().await.unwrap() {
                return publish;
            }
        }
    })
    .await
    .expect("received");
    assert_eq!(&received.payload[..], br#"{"temp":30,"ok":true}"#);
    // Clear the retained message.
    publish(&publisher, &topic, b"", Qos::AtLeastOnce, true).await;
    // Rejections are permanent.
    let err = publisher
        .publish(MqttMessage {
            broker: Some("nowhere".into()),
            topic: "t".into(),
            payload: vec![],
            qos: Qos::AtLeastOnce,
            retain: false,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(err, crate::action::mqtt_publish::PublishError::Rejected(_)),
        "{err:?}"
    );
    publisher.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test]
async fn publisher_without_broker_is_unavailable() {
    let port = free_port();
    let publisher = BrokerPublisher::new(brokers(&format!("mqtt://127.0.0.1:{port}")))
        .with_timeout(Duration::from_millis(500));
    let err = publisher
        .publish(MqttMessage {
            broker: None,
            topic: "t".into(),
            payload: vec![],
            qos: Qos::AtLeastOnce,
            retain: false,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            crate::action::mqtt_publish::PublishError::Unavailable(_)
        ),
        "{err:?}"
    );
    publisher.shutdown(Duration::from_secs(2)).await;
}

#[derive(Debug)]
struct ArcPublisher(Arc<BrokerPublisher>);

#[async_trait]
impl MqttPublisher for ArcPublisher {
    async fn publish(
        &self,
        message: MqttMessage,
    ) -> Result<(), crate::action::mqtt_publish::PublishError> {
        self.0.publish(message).await
    }
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// An embedded rumqttd on `port`, on a thread of its own (it never stops; the test process
/// ends it).
fn start_rumqttd(port: u16) {
    let config: rumqttd::Config = serde_json::from_value(json!({
        "id": 0,
        "router": {
            "max_connections": 100,
            "max_outgoing_packet_count": 200,
            "max_segment_size": 1_048_576,
            "max_segment_count": 10
        },
        "v4": { "1": {
            "name": "v4-1",
            "listen": format!("127.0.0.1:{port}"),
            "next_connection_delay_ms": 1,
            "connections": {
                "connection_timeout_ms": 60000,
                "max_payload_size": 20480,
                "max_inflight_count": 100,
                "dynamic_filters": true
            }
        }}
    }))
    .expect("rumqttd config");
    std::thread::Builder::new()
        .name("rumqttd".into())
        .spawn(move || {
            let mut broker = rumqttd::Broker::new(config);
            let _ = broker.start();
        })
        .unwrap();
}

#[tokio::test]
async fn trigger_connects_once_the_broker_comes_up() {
    let port = free_port();
    let url = format!("mqtt://127.0.0.1:{port}");
    let store = Arc::new(MemoryStore::new());
    let runtime = runtime(store.clone());
    let running = start(
        &runtime,
        &url,
        "up/+",
        1,
        &format!("rt-{}", ulid::Ulid::new()),
    );
    // Nothing listens yet: the trigger keeps retrying with backoff (and keeps quiet about it).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!running.task.is_finished());
    start_rumqttd(port);
    let publisher = BrokerPublisher::new(brokers(&url));
    wait_subscribed(&runtime, &publisher, "up/probe").await;
    publish(
        &publisher,
        "up/x",
        b"{\"up\": true}",
        Qos::AtLeastOnce,
        false,
    )
    .await;
    let events = events(store.as_ref(), 1).await;
    assert_eq!(events[0].data, json!({"up": true}));
    running.stop().await;
    publisher.shutdown(Duration::from_secs(2)).await;
}

/// Issue 3's load loss, as a test: a sustained QoS 1 stream through the real Mosquitto must
/// arrive whole. `REACTOR_MQTT_STREAM` sets the count (default 5,000). The publisher keeps at
/// most `WINDOW` messages unrecorded: Mosquitto queues at most `max_queued_messages` (1,000 by
/// default) for a subscriber that falls behind and drops the rest by design.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fast_qos1_stream_arrives_whole() {
    const WINDOW: u64 = 500;
    let count: u64 = std::env::var("REACTOR_MQTT_STREAM")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5_000);
    let p = prefix();
    let store = Arc::new(MemoryStore::new());
    let runtime = Runtime::new(
        store.clone(),
        ActionRegistry::new(),
        Environment::empty(),
        RuntimeConfig {
            retention: Retention {
                keep: usize::MAX,
                max_age: None,
            },
            ..RuntimeConfig::default()
        },
    );
    runtime.load(
        WorkflowBuilder::new("w")
            .when("${{ event.data != \"probe\" }}")
            .step(StepBuilder::set(json!({ "seen": true })))
            .var("seen", json!(false))
            .build()
            .expect("valid workflow"),
    );
    let running = start(
        &runtime,
        MOSQUITTO,
        &format!("{p}/stream/+"),
        1,
        &format!("rt-{}", ulid::Ulid::new()),
    );
    let probe = BrokerPublisher::new(brokers(MOSQUITTO));
    wait_subscribed(&runtime, &probe, &format!("{p}/stream/probe")).await;
    probe.shutdown(Duration::from_secs(2)).await;

    let mut options = MqttOptions::new(format!("rt-load-{}", ulid::Ulid::new()), "127.0.0.1", 1883);
    options.set_clean_session(true).set_inflight(100);
    let (client, mut eventloop) = AsyncClient::new(options, 256);
    let acks = tokio::spawn(async move {
        let mut acked = 0;
        while acked < count {
            match eventloop.poll().await {
                Ok(MqttEvent::Incoming(Packet::PubAck(_))) => acked += 1,
                Ok(_) => {}
                Err(error) => panic!("load publisher: {error}"),
            }
        }
    });
    let started = || runtime.stats().started.load(Ordering::SeqCst);
    let deadline = tokio::time::Instant::now() + WAIT * 4;
    for seq in 0..count {
        while seq >= started() + WINDOW {
            assert!(
                tokio::time::Instant::now() < deadline,
                "stalled: {} of {seq} published messages recorded",
                started()
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let topic = format!("{p}/stream/d{}", seq % 8);
        let payload = serde_json::to_vec(&json!({ "seq": seq })).unwrap();
        client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .unwrap();
    }
    tokio::time::timeout(WAIT, acks)
        .await
        .expect("broker acked every publish")
        .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while started() < count && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Every sequence number recorded (duplicates are allowed by QoS 1, losses are not).
    let mut seen = vec![false; usize::try_from(count).unwrap()];
    for record in store.executions(&ExecutionQuery::default()).await.unwrap() {
        if let Some(Fact::Started { event, .. }) = store.journal(record.id).await.unwrap().first()
            && let Some(seq) = event.data["seq"].as_u64()
        {
            seen[usize::try_from(seq).unwrap()] = true;
        }
    }
    let missing: Vec<usize> = (0..seen.len()).filter(|i| !seen[*i]).collect();
    assert!(
        missing.is_empty(),
        "{} of {count} messages never recorded: {}",
        missing.len(),
        ranges(&missing)
    );
    let _ = client.disconnect().await;
    running.stop().await;
    runtime.shutdown().await;
}

/// `[1, 2, 3, 7]` → `"1-3 7"`.
fn ranges(numbers: &[usize]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < numbers.len() {
        let mut j = i;
        while j + 1 < numbers.len() && numbers[j + 1] == numbers[j] + 1 {
            j += 1;
        }
        out.push(if i == j {
            numbers[i].to_string()
        } else {
            format!("{}-{}", numbers[i], numbers[j])
        });
        i = j + 1;
    }
    out.join(" ")
}

/// A burst larger than the publish queue waits for room instead of failing (the load run's
/// failed `mqtt.publish` steps): every publish of 400 concurrent ones is confirmed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publisher_burst_beyond_the_queue_waits_for_room() {
    let p = prefix();
    let publisher = Arc::new(BrokerPublisher::new(brokers(MOSQUITTO)));
    let burst = 400;
    assert!(burst > super::publisher::PUBLISH_QUEUE * 4);
    let mut tasks = Vec::new();
    for n in 0..burst {
        let publisher = publisher.clone();
        let topic = format!("{p}/burst/{n}");
        tasks.push(tokio::spawn(async move {
            publisher
                .publish(MqttMessage {
                    broker: None,
                    topic,
                    payload: b"x".to_vec(),
                    qos: Qos::AtLeastOnce,
                    retain: false,
                })
                .await
        }));
    }
    let mut failed = Vec::new();
    for task in tasks {
        if let Err(error) = task.await.unwrap() {
            failed.push(error.to_string());
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {burst} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(3)]
    );
    publisher.shutdown(Duration::from_secs(2)).await;
}

/// A TCP proxy in front of Mosquitto that can stop passing the broker's bytes (`mute`) and
/// cut every connection through it (`cut`).
struct Proxy {
    port: u16,
    mute: Arc<std::sync::atomic::AtomicBool>,
    cut: tokio::sync::watch::Sender<u64>,
}

impl Proxy {
    async fn start() -> Proxy {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mute = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (cut, cuts) = tokio::sync::watch::channel(0u64);
        let muted = mute.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let broker = tokio::net::TcpStream::connect("127.0.0.1:1883")
                    .await
                    .unwrap();
                let (mut client_read, mut client_write) = client.into_split();
                let (mut broker_read, mut broker_write) = broker.into_split();
                let (mut up_cut, mut down_cut) = (cuts.clone(), cuts.clone());
                up_cut.mark_unchanged();
                down_cut.mark_unchanged();
                let muted = muted.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = tokio::io::copy(&mut client_read, &mut broker_write) => {}
                        _ = up_cut.changed() => {}
                    }
                });
                tokio::spawn(async move {
                    let mut buffer = vec![0u8; 16 * 1024];
                    loop {
                        let read = tokio::select! {
                            read = broker_read.read(&mut buffer) => read,
                            _ = down_cut.changed() => return,
                        };
                        let Ok(read @ 1..) = read else { return };
                        if !muted.load(Ordering::SeqCst)
                            && client_write.write_all(&buffer[..read]).await.is_err()
                        {
                            return;
                        }
                    }
                });
            }
        });
        Proxy { port, mute, cut }
    }
}

/// A link that breaks while messages wait for the broker's ack fails them as `Unavailable`
/// (they may have been delivered), and the next message goes out on a new connection.
#[tokio::test]
async fn publisher_fails_what_a_broken_link_left_unconfirmed_and_reconnects() {
    let p = prefix();
    let proxy = Proxy::start().await;
    let publisher = Arc::new(
        BrokerPublisher::new(brokers(&format!("mqtt://127.0.0.1:{}", proxy.port)))
            .with_timeout(WAIT),
    );
    let message = |n: usize| MqttMessage {
        broker: None,
        topic: format!("{p}/broken/{n}"),
        payload: b"x".to_vec(),
        qos: Qos::AtLeastOnce,
        retain: false,
    };
    publisher
        .publish(message(0))
        .await
        .expect("through the proxy");
    proxy.mute.store(true, Ordering::SeqCst);
    let waiting: Vec<_> = (1..=3)
        .map(|n| {
            let publisher = publisher.clone();
            let message = message(n);
            tokio::spawn(async move { publisher.publish(message).await })
        })
        .collect();
    // Written, and no ack can come back; then the connection breaks.
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.mute.store(false, Ordering::SeqCst);
    proxy.cut.send_modify(|generation| *generation += 1);
    for task in waiting {
        let error = task
            .await
            .unwrap()
            .expect_err("unconfirmed when the link broke");
        assert!(
            matches!(
                &error,
                crate::action::mqtt_publish::PublishError::Unavailable(why) if why.contains("lost")
            ),
            "{error:?}"
        );
    }
    publisher
        .publish(message(4))
        .await
        .expect("published on a new connection");
    publisher.shutdown(Duration::from_secs(2)).await;
}
