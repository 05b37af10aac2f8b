//! The `nats` trigger against the real NATS server (JetStream on) on 127.0.0.1:4222.

#![cfg(feature = "nats")]

mod common;

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use async_nats::jetstream;
use common::*;
use reactor_core::flow;
use reactor_core::trigger::TriggerError;
use reactor_hub_triggers::Connections;
use reactor_hub_triggers::nats::NatsTrigger;
use serde_json::json;

const URL: &str = "nats://127.0.0.1:4222";

async fn client() -> async_nats::Client {
    async_nats::connect(URL).await.unwrap()
}

/// A stream `name` over `subject.>`; deleted by `drop_stream`.
async fn make_stream(js: &jetstream::Context, name: &str, subject: &str) {
    js.create_stream(jetstream::stream::Config {
        name: name.to_string(),
        subjects: vec![format!("{subject}.>")],
        ..Default::default()
    })
    .await
    .unwrap();
}

async fn publish(js: &jetstream::Context, subject: String, n: usize) {
    js.publish(subject, format!("{{\"n\": {n}}}").into())
        .await
        .unwrap()
        .await
        .unwrap();
}

async fn unacked(js: &jetstream::Context, stream: &str, durable: &str) -> (u64, usize) {
    let stream = js.get_stream(stream).await.unwrap();
    let mut consumer: jetstream::consumer::PullConsumer =
        stream.get_consumer(durable).await.unwrap();
    let info = consumer.info().await.unwrap();
    (info.num_pending, info.num_ack_pending)
}

fn js_trigger(runtime: &reactor_core::engine::Runtime, name: &str) -> NatsTrigger {
    let flow::TriggerKind::Nats(settings) = spec(runtime, name).kind else {
        panic!("not nats");
    };
    NatsTrigger::new(&settings, &Connections::default()).unwrap()
}

#[tokio::test]
async fn jetstream_messages_are_recorded_then_acked() {
    let name = unique("RT_JS");
    let subject = unique("rt.js");
    let js = jetstream::new(client().await);
    make_stream(&js, &name, &subject).await;
    let yaml = workflow(
        "orders",
        &format!(
            "nats: {{ subject: \"{subject}.>\", stream: {name}, durable: hub, url: \"{URL}\" }}"
        ),
    );
    let runtime = runtime(&yaml);
    for n in 0..10 {
        publish(&js, format!("{subject}.eu"), n).await;
    }
    let running = Running::start(
        &runtime,
        "orders",
        build(&runtime, "orders", &Connections::default()),
    );
    let events = wait_events(&runtime, "orders", 10).await;
    assert_eq!(events.len(), 10);
    let mut ns: Vec<i64> = events
        .iter()
        .map(|e| e.data["n"].as_i64().unwrap())
        .collect();
    ns.sort();
    assert_eq!(ns, (0..10).collect::<Vec<_>>());
    let first = events.iter().find(|e| e.data["n"] == json!(0)).unwrap();
    assert_eq!(first.event_type, "nats");
    assert_eq!(first.meta["subject"], json!(format!("{subject}.eu")));
    assert_eq!(first.meta["stream"], json!(name));
    assert_eq!(first.meta["consumer"], json!("hub"));
    assert!(first.meta["stream_sequence"].as_u64().unwrap() >= 1);
    assert!(
        eventually(|| {
            let js = js.clone();
            let n = name.clone();
            async move { unacked(&js, &n, "hub").await == (0, 0) }
        })
        .await,
        "every recorded message is acknowledged"
    );
    running.stop().await.unwrap();
    js.delete_stream(&name).await.unwrap();
}

#[tokio::test]
async fn killed_between_record_and_ack_no_second_execution() {
    let name = unique("RT_CRASH");
    let subject = unique("rt.crash");
    let js = jetstream::new(client().await);
    make_stream(&js, &name, &subject).await;
    let yaml = workflow(
        "orders",
        &format!(
            "nats: {{ subject: \"{subject}.>\", stream: {name}, durable: hub, url: \"{URL}\" }}"
        ),
    );
    let runtime = runtime(&yaml);
    for n in 0..4 {
        publish(&js, format!("{subject}.x"), n).await;
    }
    let dying = js_trigger(&runtime, "orders")
        .with_ack_wait(Duration::from_secs(1))
        .stop_before_ack(4);
    let first = Running::start(&runtime, "orders", Box::new(dying));
    let result = first.ended().await;
    assert!(matches!(result, Err(TriggerError::Source(_))), "{result:?}");
    assert_eq!(executions(&runtime, "orders").await.len(), 4);
    assert_eq!(
        unacked(&js, &name, "hub").await.1,
        4,
        "nothing was acknowledged"
    );

    // The next run gets the four again after ack_wait: de-duplicated by stream sequence.
    let again = Running::start(&runtime, "orders", Box::new(js_trigger(&runtime, "orders")));
    assert!(
        eventually(|| {
            let js = js.clone();
            let n = name.clone();
            async move { unacked(&js, &n, "hub").await == (0, 0) }
        })
        .await
    );
    assert_eq!(
        executions(&runtime, "orders").await.len(),
        4,
        "no second execution"
    );
    assert_eq!(
        runtime
            .stats()
            .deduplicated
            .load(std::sync::atomic::Ordering::Relaxed),
        4
    );
    publish(&js, format!("{subject}.x"), 4).await;
    assert_eq!(wait_events(&runtime, "orders", 5).await.len(), 5);
    again.stop().await.unwrap();
    js.delete_stream(&name).await.unwrap();
}

#[tokio::test]
async fn core_subject_queue_group_and_reconnect() {
    let subject = unique("rt.core");
    let relay = Relay::start("127.0.0.1:4222").await;
    let yaml = workflow(
        "alerts",
        &format!(
            "nats: {{ subject: \"{subject}\", queue: hubs, url: \"nats://127.0.0.1:{}\" }}",
            relay.port
        ),
    );
    let runtime = runtime(&yaml);
    let running = Running::start(
        &runtime,
        "alerts",
        build(&runtime, "alerts", &Connections::default()),
    );
    let client = client().await;
    // Core NATS keeps nothing for absent subscribers: publish until one arrives.
    let publish_until = |count: usize| {
        let client = client.clone();
        let subject = subject.clone();
        let runtime = runtime.clone();
        async move {
            eventually(|| {
                let client = client.clone();
                let subject = subject.clone();
                let runtime = runtime.clone();
                async move {
                    client.publish(subject, r#"{"t": 1}"#.into()).await.unwrap();
                    client.flush().await.unwrap();
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    executions(&runtime, "alerts").await.len() >= count
                }
            })
            .await
        }
    };
    assert!(publish_until(1).await);
    let events = events(&runtime, "alerts").await;
    assert_eq!(events[0].data, json!({"t": 1}));
    assert_eq!(events[0].meta["subject"], json!(subject));
    assert_eq!(events[0].meta["queue"], json!("hubs"));
    assert!(
        relay.cut() >= 1,
        "the trigger's connection went through the relay"
    );
    let before = executions(&runtime, "alerts").await.len();
    assert!(
        publish_until(before + 1).await,
        "messages arrive again after the reconnect"
    );
    assert!(
        running.context.stats.snapshot().errors >= 1,
        "the disconnect was counted"
    );
    assert!(running.context.stats.snapshot().healthy());
    running.stop().await.unwrap();
}

#[tokio::test]
async fn persistent_failure_is_unhealthy_with_its_error() {
    let yaml = workflow(
        "orders",
        "nats: { subject: a, url: \"nats://127.0.0.1:1\" }",
    );
    let error = unhealthy_error(&yaml).await;
    assert!(error.contains("nats"), "{error}");
}

/// A JetStream workflow `orders` over a new stream; the trigger gathers `batch` when given.
struct Batched {
    js: jetstream::Context,
    stream: String,
    subject: String,
    runtime: reactor_core::engine::Runtime,
}

impl Batched {
    async fn new(prefix: &str, batch: &str) -> Batched {
        let stream = unique(&format!("RT_{prefix}"));
        let subject = unique(&format!("rt.{}", prefix.to_lowercase()));
        let js = jetstream::new(client().await);
        make_stream(&js, &stream, &subject).await;
        let runtime = runtime(&workflow(
            "orders",
            &format!(
                "nats: {{ subject: \"{subject}.>\", stream: {stream}, durable: hub, {batch} url: \"{URL}\" }}"
            ),
        ));
        Batched {
            js,
            stream,
            subject,
            runtime,
        }
    }

    async fn publish(&self, ns: std::ops::Range<usize>) {
        for n in ns {
            publish(&self.js, format!("{}.x", self.subject), n).await;
        }
    }

    /// The workflow's trigger with `batch` (or none), redelivering after 1 s.
    fn trigger(&self, batch: Option<(usize, u64)>) -> NatsTrigger {
        let flow::TriggerKind::Nats(mut settings) = spec(&self.runtime, "orders").kind else {
            panic!("not nats");
        };
        settings.batch = batch.map(|(size, wait)| flow::Batch {
            size,
            wait: Duration::from_millis(wait),
        });
        NatsTrigger::new(&settings, &Connections::default())
            .unwrap()
            .with_ack_wait(Duration::from_secs(1))
    }

    /// The `n` of every message in the recorded executions (a batch's or one message's),
    /// sorted: each n once means each message ran exactly once.
    async fn ns(&self) -> Vec<i64> {
        let mut ns: Vec<i64> = events(&self.runtime, "orders")
            .await
            .iter()
            .flat_map(|e| match e.data.as_array() {
                Some(items) => items.iter().map(|item| item["data"]["n"].clone()).collect(),
                None => vec![e.data["n"].clone()],
            })
            .map(|n| n.as_i64().unwrap())
            .collect();
        ns.sort_unstable();
        ns
    }

    async fn wait_ns(&self, count: usize) -> Vec<i64> {
        eventually(|| async { self.ns().await.len() >= count }).await;
        self.ns().await
    }

    /// Every message acknowledged and every mark of the stream gone.
    async fn settled(&self) -> bool {
        let prefix = format!("nats/{}/", self.stream);
        eventually(|| async {
            unacked(&self.js, &self.stream, "hub").await == (0, 0)
                && self
                    .runtime
                    .marks("orders", &prefix)
                    .await
                    .unwrap()
                    .is_empty()
        })
        .await
    }

    /// A trigger with `batch` that records `count` messages and dies before acknowledging.
    async fn die_after(&self, batch: Option<(usize, u64)>, count: u64) {
        let dying = self.trigger(batch).stop_before_ack(count);
        let result = Running::start(&self.runtime, "orders", Box::new(dying))
            .ended()
            .await;
        assert!(matches!(result, Err(TriggerError::Source(_))), "{result:?}");
        assert_eq!(
            unacked(&self.js, &self.stream, "hub").await.1 as u64,
            count,
            "nothing was acknowledged"
        );
    }

    async fn cleanup(self) {
        self.js.delete_stream(&self.stream).await.unwrap();
    }
}

#[tokio::test]
async fn batched_messages_run_a_batch_per_execution() {
    const MESSAGES: usize = 1_234;
    let b = Batched::new("BATCH", "batch: { size: 500, wait: 300ms },").await;
    b.publish(0..MESSAGES).await;
    let running = Running::start(
        &b.runtime,
        "orders",
        build(&b.runtime, "orders", &Connections::default()),
    );
    assert_eq!(
        b.wait_ns(MESSAGES).await,
        (0..MESSAGES as i64).collect::<Vec<_>>()
    );
    assert!(b.settled().await, "acknowledged, marks gone");
    running.stop().await.unwrap();
    let events = events(&b.runtime, "orders").await;
    let sizes: Vec<usize> = events
        .iter()
        .map(|e| e.data.as_array().unwrap().len())
        .collect();
    assert!(sizes.iter().all(|&n| n <= 500), "{sizes:?}");
    assert!(
        sizes.iter().filter(|&&n| n == 500).count() >= 2,
        "waiting messages go as full batches: {sizes:?}"
    );
    for event in &events {
        let items = event.data.as_array().unwrap();
        assert_eq!(event.event_type, "nats");
        assert_eq!(event.source, format!("reactor:nats/{}.x", b.subject));
        assert_eq!(event.meta["stream"], json!(b.stream));
        assert_eq!(event.meta["consumer"], json!("hub"));
        assert_eq!(event.meta["count"], json!(items.len()));
        assert_eq!(
            event.meta["first_sequence"],
            items[0]["meta"]["stream_sequence"]
        );
        assert_eq!(
            event.meta["last_sequence"],
            items[items.len() - 1]["meta"]["stream_sequence"]
        );
        assert_eq!(
            items[0]["meta"]["subject"],
            json!(format!("{}.x", b.subject))
        );
        assert_eq!(items[0]["meta"]["delivered"], json!(1));
    }
    b.cleanup().await;
}

#[tokio::test]
async fn a_batch_closes_at_its_byte_cap() {
    let b = Batched::new("BYTES", "").await;
    b.publish(0..20).await;
    // A message weighs its payload (`{"n": 7}`: 8 or 9 bytes) and subject: at this cap a
    // batch holds two messages although `size` is 100.
    let cap = 2 * (9 + format!("{}.x", b.subject).len());
    let trigger = b.trigger(Some((100, 300))).with_batch_bytes(cap);
    let running = Running::start(&b.runtime, "orders", Box::new(trigger));
    assert_eq!(b.wait_ns(20).await, (0..20).collect::<Vec<_>>());
    running.stop().await.unwrap();
    for event in events(&b.runtime, "orders").await {
        let count = event.data.as_array().unwrap().len();
        assert!((1..=2).contains(&count), "a batch of {count}");
    }
    b.cleanup().await;
}

/// Batches recorded and not acknowledged come back after `ack_wait` mixed with new
/// messages, to a trigger gathering batches of another size: every message runs once.
#[tokio::test]
async fn batched_messages_killed_before_ack_run_once_in_other_splits() {
    let b = Batched::new("BCRASH", "").await;
    b.publish(0..10).await;
    b.die_after(Some((4, 100)), 10).await;
    assert_eq!(b.ns().await, (0..10).collect::<Vec<_>>());
    assert_eq!(executions(&b.runtime, "orders").await.len(), 3, "4 + 4 + 2");
    b.publish(10..16).await;
    let again = Running::start(&b.runtime, "orders", Box::new(b.trigger(Some((3, 100)))));
    let settled = b.settled().await;
    assert!(
        settled,
        "the redelivered batches are acknowledged: {:?} unacknowledged, marks {:?}, ns {:?}",
        unacked(&b.js, &b.stream, "hub").await,
        b.runtime.marks("orders", "").await.unwrap(),
        b.ns().await
    );
    assert_eq!(b.wait_ns(16).await, (0..16).collect::<Vec<_>>());
    assert_eq!(
        b.runtime.stats().deduplicated.load(Relaxed),
        10,
        "the ten redeliveries ran nothing"
    );
    again.stop().await.unwrap();
    b.cleanup().await;
}

/// Switching a workflow between `batch:` and one execution per message while messages are
/// recorded and not acknowledged: each side finds the other's marks.
#[tokio::test]
async fn switching_between_batches_and_single_messages_runs_nothing_twice() {
    let b = Batched::new("SWITCH", "").await;
    b.publish(0..6).await;
    b.die_after(Some((4, 100)), 6).await;
    // One message per execution now: the redelivered six are found in the batches' marks
    // (acknowledged, then), and three new messages are recorded and not acknowledged.
    let dying = b.trigger(None).stop_before_ack(3);
    let running = Running::start(&b.runtime, "orders", Box::new(dying));
    assert!(
        eventually(|| async {
            let deduplicated = b.runtime.stats().deduplicated.load(Relaxed);
            deduplicated == 6 && unacked(&b.js, &b.stream, "hub").await == (0, 0)
        })
        .await,
        "the six recorded in batches are acknowledged without running"
    );
    b.publish(6..9).await;
    let result = running.ended().await;
    assert!(matches!(result, Err(TriggerError::Source(_))), "{result:?}");
    // The three may come in one pull or several: the last is recorded and not acknowledged.
    let left = unacked(&b.js, &b.stream, "hub").await.1;
    assert!((1..=3).contains(&left), "{left} unacknowledged");
    assert_eq!(b.ns().await, (0..9).collect::<Vec<_>>());
    // And back: the three single messages' marks hold when they come again in a batch.
    let again = Running::start(&b.runtime, "orders", Box::new(b.trigger(Some((5, 100)))));
    assert!(b.settled().await);
    b.publish(9..12).await;
    assert_eq!(b.wait_ns(12).await, (0..12).collect::<Vec<_>>());
    again.stop().await.unwrap();
    b.cleanup().await;
}

/// A lone message on an idle consumer starts its execution at once, not when the waiting
/// pull expires: with pulls that wait 20 s, each of three messages published apart runs
/// within seconds.
#[tokio::test]
async fn an_idle_consumer_hands_each_message_over_as_it_comes() {
    let b = Batched::new("IDLE", "").await;
    let trigger = b.trigger(None).with_pull_wait(Duration::from_secs(20));
    let running = Running::start(&b.runtime, "orders", Box::new(trigger));
    // Let the consumer exist and its first pull wait.
    assert!(
        eventually(|| async {
            let stream = b.js.get_stream(&b.stream).await.unwrap();
            stream
                .get_consumer::<jetstream::consumer::pull::Config>("hub")
                .await
                .is_ok()
        })
        .await
    );
    for n in 0..3 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let published = std::time::Instant::now();
        b.publish(n..n + 1).await;
        assert_eq!(b.wait_ns(n + 1).await.len(), n + 1);
        let waited = published.elapsed();
        assert!(
            waited < Duration::from_secs(10),
            "message {n} waited {waited:?} for its execution"
        );
    }
    running.stop().await.unwrap();
    b.cleanup().await;
}
