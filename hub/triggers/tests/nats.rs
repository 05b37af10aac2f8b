//! The `nats` trigger against the real NATS server (JetStream on) on 127.0.0.1:4222.

#![cfg(feature = "nats")]

mod common;

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
