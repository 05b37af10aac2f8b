//! The `kafka` trigger against librdkafka's mock cluster (a real Kafka protocol server,
//! in-process, with consumer groups and commits).

#![cfg(feature = "kafka")]

mod common;

use std::time::Duration;

use common::*;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use reactor_core::engine::Runtime;
use reactor_core::flow;
use reactor_core::trigger::TriggerError;
use reactor_hub_triggers::kafka::KafkaTrigger;
use reactor_hub_triggers::{ConnectionConfig, Connections};
use serde_json::json;

fn producer(brokers: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap()
}

async fn produce(producer: &FutureProducer, topic: &str, partition: i32, n: usize) {
    let payload = format!("{{\"n\": {n}}}");
    let key = format!("device-{n}");
    producer
        .send(
            FutureRecord::to(topic)
                .partition(partition)
                .payload(&payload)
                .key(&key)
                .headers(OwnedHeaders::new().insert(Header {
                    key: "source",
                    value: Some("test"),
                })),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
}

/// The group's committed offsets of `topic`'s `partitions`.
async fn committed(brokers: &str, group: &str, topic: &str, partitions: i32) -> Vec<i64> {
    let brokers = brokers.to_string();
    let group = group.to_string();
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", &group)
            .create()
            .unwrap();
        let mut list = TopicPartitionList::new();
        for p in 0..partitions {
            list.add_partition(&topic, p);
        }
        let offsets = consumer
            .committed_offsets(list, Duration::from_secs(10))
            .unwrap();
        offsets
            .elements()
            .iter()
            .map(|e| match e.offset() {
                Offset::Offset(o) => o,
                _ => -1,
            })
            .collect()
    })
    .await
    .unwrap()
}

fn yaml(topic: &str, group: &str, brokers: &str) -> String {
    workflow(
        "orders",
        &format!(
            "kafka: {{ topic: {topic}, group: {group}, from: earliest, brokers: \"{brokers}\" }}"
        ),
    )
}

fn batched_yaml(topic: &str, group: &str, brokers: &str, size: usize) -> String {
    workflow(
        "orders",
        &format!(
            "kafka: {{ topic: {topic}, group: {group}, from: earliest, batch: {{ size: {size}, wait: 300ms }}, brokers: \"{brokers}\" }}"
        ),
    )
}

/// The `n` of every message in the batch events recorded so far, sorted.
async fn batched_ns(runtime: &Runtime) -> Vec<i64> {
    let mut ns: Vec<i64> = events(runtime, "orders")
        .await
        .iter()
        .filter_map(|e| e.data.as_array().cloned())
        .flatten()
        .map(|item| item["data"]["n"].as_i64().unwrap())
        .collect();
    ns.sort_unstable();
    ns
}

/// Whether `count` messages get into recorded batch events (within `eventually`'s wait).
async fn all_batched(runtime: &Runtime, count: usize) -> bool {
    eventually(|| {
        let runtime = runtime.clone();
        async move { batched_ns(&runtime).await.len() >= count }
    })
    .await
}

/// Brokers as a named connection with librdkafka options: a short session timeout, so
/// that a member that vanished without leaving frees its partitions quickly.
fn trigger(runtime: &Runtime, brokers: &str) -> KafkaTrigger {
    trigger_as(runtime, brokers, None)
}

/// [`trigger`] as a static group member (`group.instance.id`): assignors order static
/// members by it.
fn trigger_as(runtime: &Runtime, brokers: &str, instance: Option<&str>) -> KafkaTrigger {
    let flow::TriggerKind::Kafka(mut settings) = spec(runtime, "orders").kind else {
        panic!("not kafka");
    };
    settings.connection = flow::Connection::Named("mock".into());
    let connections = Connections::new(
        std::collections::BTreeMap::from([(
            "mock".to_string(),
            ConnectionConfig {
                brokers: Some(brokers.to_string()),
                options: [
                    ("session.timeout.ms", Some("6000")),
                    ("heartbeat.interval.ms", Some("500")),
                    ("group.instance.id", instance),
                ]
                .into_iter()
                .filter_map(|(key, value)| Some((key.to_string(), value?.to_string())))
                .collect(),
                ..ConnectionConfig::default()
            },
        )]),
        std::sync::Arc::new(|_: &str| None::<String>),
    );
    KafkaTrigger::new(&settings, &connections).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_arrive_with_meta_and_offsets_are_committed_after_record() {
    let cluster = MockCluster::new(1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let topic = unique("orders");
    cluster.create_topic(&topic, 2, 1).unwrap();
    let group = unique("hub");
    let producer = producer(&brokers);
    for n in 0..10 {
        produce(&producer, &topic, (n % 2) as i32, n).await;
    }
    let runtime = runtime(&yaml(&topic, &group, &brokers));
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
    let third = events.iter().find(|e| e.data["n"] == json!(3)).unwrap();
    assert_eq!(third.event_type, "kafka");
    assert_eq!(third.source, format!("reactor:kafka/{topic}"));
    assert_eq!(third.meta["topic"], json!(topic));
    assert_eq!(third.meta["partition"], json!(1));
    assert_eq!(third.meta["offset"], json!(1));
    assert_eq!(third.meta["key"], json!("device-3"));
    assert_eq!(third.meta["headers"], json!({"source": "test"}));
    assert!(
        eventually(|| {
            let (b, g, t) = (brokers.clone(), group.clone(), topic.clone());
            async move { committed(&b, &g, &t, 2).await == vec![5, 5] }
        })
        .await,
        "the offsets after every recorded message are committed"
    );
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_between_record_and_commit_no_second_execution() {
    let cluster = MockCluster::new(1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let topic = unique("crash");
    cluster.create_topic(&topic, 1, 1).unwrap();
    let group = unique("hub");
    let producer = producer(&brokers);
    for n in 0..6 {
        produce(&producer, &topic, 0, n).await;
    }
    let runtime = runtime(&yaml(&topic, &group, &brokers));
    let first = Running::start(
        &runtime,
        "orders",
        Box::new(trigger(&runtime, &brokers).stop_before_ack(6)),
    );
    let result = first.ended().await;
    assert!(matches!(result, Err(TriggerError::Source(_))), "{result:?}");
    assert_eq!(executions(&runtime, "orders").await.len(), 6);
    assert_eq!(
        committed(&brokers, &group, &topic, 1).await,
        vec![-1],
        "nothing was committed"
    );

    // The group consumes the six again from the start: none runs twice.
    let again = Running::start(&runtime, "orders", Box::new(trigger(&runtime, &brokers)));
    let done = eventually(|| {
        let (b, g, t) = (brokers.clone(), group.clone(), topic.clone());
        async move { committed(&b, &g, &t, 1).await == vec![6] }
    })
    .await;
    assert!(
        done,
        "committed {:?}, stats {:?}, dedup {}",
        committed(&brokers, &group, &topic, 1).await,
        again.context.stats.snapshot(),
        runtime
            .stats()
            .deduplicated
            .load(std::sync::atomic::Ordering::Relaxed)
    );
    // The restarted consumer looks the partition's first message up before submitting: the
    // six recorded marks are found there, one after the other, and skipped.
    assert_eq!(
        executions(&runtime, "orders").await.len(),
        6,
        "no second execution"
    );
    produce(&producer, &topic, 0, 6).await;
    assert_eq!(wait_events(&runtime, "orders", 7).await.len(), 7);
    again.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_holds_one_partitions_messages_in_order() {
    let cluster = MockCluster::new(1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let topic = unique("batched");
    cluster.create_topic(&topic, 2, 1).unwrap();
    let group = unique("hub");
    let producer = producer(&brokers);
    for n in 0..10 {
        produce(&producer, &topic, (n % 2) as i32, n).await;
    }
    let runtime = runtime(&batched_yaml(&topic, &group, &brokers, 100));
    let running = Running::start(
        &runtime,
        "orders",
        build(&runtime, "orders", &Connections::default()),
    );
    assert!(all_batched(&runtime, 10).await);
    assert_eq!(batched_ns(&runtime).await, (0..10).collect::<Vec<_>>());
    for event in events(&runtime, "orders").await {
        assert_eq!(event.event_type, "kafka");
        assert_eq!(event.source, format!("reactor:kafka/{topic}"));
        let items = event.data.as_array().unwrap();
        let partition = event.meta["partition"].as_i64().unwrap();
        assert_eq!(event.meta["topic"], json!(topic));
        assert_eq!(event.meta["count"], json!(items.len()));
        assert_eq!(event.meta["first_offset"], items[0]["meta"]["offset"]);
        assert_eq!(
            event.meta["last_offset"],
            items[items.len() - 1]["meta"]["offset"]
        );
        let offsets: Vec<i64> = items
            .iter()
            .map(|item| {
                assert_eq!(item["meta"]["partition"], json!(partition), "one partition");
                assert_eq!(item["data"]["n"].as_i64().unwrap() % 2, partition);
                item["meta"]["offset"].as_i64().unwrap()
            })
            .collect();
        assert!(offsets.windows(2).all(|w| w[0] < w[1]), "{offsets:?}");
    }
    assert!(
        eventually(|| {
            let (b, g, t) = (brokers.clone(), group.clone(), topic.clone());
            async move { committed(&b, &g, &t, 2).await == vec![5, 5] }
        })
        .await
    );
    running.stop().await.unwrap();
}

/// Messages already waiting are taken several batches at once and recorded side by side:
/// still never more than `size` in one execution, in offset order, committed to the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_messages_go_as_several_batches_of_at_most_size() {
    let cluster = MockCluster::new(1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let topic = unique("ahead");
    cluster.create_topic(&topic, 1, 1).unwrap();
    let group = unique("hub");
    let producer = producer(&brokers);
    for n in 0..30 {
        produce(&producer, &topic, 0, n).await;
    }
    let runtime = runtime(&batched_yaml(&topic, &group, &brokers, 10));
    let running = Running::start(
        &runtime,
        "orders",
        build(&runtime, "orders", &Connections::default()),
    );
    assert!(all_batched(&runtime, 30).await);
    assert_eq!(batched_ns(&runtime).await, (0..30).collect::<Vec<_>>());
    for event in events(&runtime, "orders").await {
        let count = event.data.as_array().unwrap().len();
        assert!((1..=10).contains(&count), "a batch of {count}");
        assert_eq!(event.meta["count"], json!(count));
    }
    assert!(
        eventually(|| {
            let (b, g, t) = (brokers.clone(), group.clone(), topic.clone());
            async move { committed(&b, &g, &t, 1).await == vec![30] }
        })
        .await
    );
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_closes_at_its_byte_cap() {
    let cluster = MockCluster::new(1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let topic = unique("batch_bytes");
    cluster.create_topic(&topic, 1, 1).unwrap();
    let group = unique("hub");
    let producer = producer(&brokers);
    for n in 0..10 {
        produce(&producer, &topic, 0, n).await;
    }
    // Each message weighs 16 bytes (payload `{"n": N}`, key `device-N`): at a 30-byte cap a
    // batch closes after its second message although `size` is 100.
    let runtime = runtime(&batched_yaml(&topic, &group, &brokers, 100));
    let trigger = trigger(&runtime, &brokers).with_batch_bytes(30);
    let running = Running::start(&runtime, "orders", Box::new(trigger));
    assert!(all_batched(&runtime, 10).await);
    running.stop().await.unwrap();
    assert_eq!(batched_ns(&runtime).await, (0..10).collect::<Vec<_>>());
    for event in events(&runtime, "orders").await {
        let count = event.data.as_array().unwrap().len();
        assert!((1..=2).contains(&count), "a batch of {count}");
    }
}

/// Ten messages on one partition, of which a consumer batching 4 at a time recorded at
/// least one batch and died before committing it.
struct LeftUncommitted {
    _cluster: MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    brokers: String,
    topic: String,
    group: String,
    runtime: Runtime,
}

impl LeftUncommitted {
    async fn new(prefix: &str) -> LeftUncommitted {
        let cluster = MockCluster::new(1).unwrap();
        let brokers = cluster.bootstrap_servers();
        let topic = unique(prefix);
        cluster.create_topic(&topic, 1, 1).unwrap();
        let group = unique("hub");
        let producer = producer(&brokers);
        for n in 0..10 {
            produce(&producer, &topic, 0, n).await;
        }
        let runtime = runtime(&batched_yaml(&topic, &group, &brokers, 4));
        let first = Running::start(
            &runtime,
            "orders",
            Box::new(trigger(&runtime, &brokers).stop_before_ack(4)),
        );
        let result = first.ended().await;
        assert!(matches!(result, Err(TriggerError::Source(_))), "{result:?}");
        let recorded = batched_ns(&runtime).await.len() as i64;
        let committed_then = committed(&brokers, &group, &topic, 1).await[0].max(0);
        assert!(
            committed_then < recorded,
            "a recorded batch was left uncommitted ({committed_then} < {recorded})"
        );
        LeftUncommitted {
            _cluster: cluster,
            brokers,
            topic,
            group,
            runtime,
        }
    }

    /// Consumes the partition again with the workflow `yaml` until all ten are committed.
    async fn resume(&self, yaml: &str) {
        let workflow = reactor_core::dsl::parse_workflow("orders.yaml", yaml).unwrap();
        self.runtime.load(workflow);
        let trigger = trigger(&self.runtime, &self.brokers);
        let again = Running::start(&self.runtime, "orders", Box::new(trigger));
        assert!(
            eventually(|| {
                let (b, g, t) = (self.brokers.clone(), self.group.clone(), self.topic.clone());
                async move { committed(&b, &g, &t, 1).await == vec![10] }
            })
            .await
        );
        again.stop().await.unwrap();
    }
}

/// A batch recorded but not committed is found by its first message's mark when the
/// partition is consumed again — in a different split — and nothing in it runs twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_killed_before_commit_is_not_batched_again() {
    let left = LeftUncommitted::new("batch_crash").await;
    // Consumed again in batches of 3: the recorded batch's range is skipped and committed.
    left.resume(&batched_yaml(&left.topic, &left.group, &left.brokers, 3))
        .await;
    assert_eq!(
        batched_ns(&left.runtime).await,
        (0..10).collect::<Vec<_>>(),
        "every message in exactly one execution"
    );
}

/// A workflow switched from `batch:` back to one execution per message while a batch was
/// recorded and not committed resumes after the batch, not inside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_back_from_batches_runs_nothing_twice() {
    let left = LeftUncommitted::new("batch_switch").await;
    left.resume(&yaml(&left.topic, &left.group, &left.brokers))
        .await;
    assert_eq!(
        all_ns(&left.runtime).await,
        (0..10).collect::<Vec<_>>(),
        "every message exactly once"
    );
}

/// The `n` of every message recorded so far, in batches or alone, sorted.
async fn all_ns(runtime: &Runtime) -> Vec<i64> {
    // Batch events carry a list, the others one message.
    let mut ns: Vec<i64> = events(runtime, "orders")
        .await
        .iter()
        .flat_map(|e| match e.data.as_array() {
            Some(items) => items
                .iter()
                .map(|i| i["data"]["n"].as_i64().unwrap())
                .collect(),
            None => vec![e.data["n"].as_i64().unwrap()],
        })
        .collect();
    ns.sort_unstable();
    ns
}

/// Member A runs one execution per message; member B (batches) takes the partition over,
/// records a batch and leaves before committing it; the partition goes back to A within
/// A's session, and A resumes after B's batch instead of running its messages again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_handed_back_within_a_session_is_looked_up_again() {
    let cluster = MockCluster::new(1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let topic = unique("handed_back");
    cluster.create_topic(&topic, 1, 1).unwrap();
    let group = unique("hub");
    let producer = producer(&brokers);
    let runtime = runtime(&yaml(&topic, &group, &brokers));
    let committed_to = |offset: i64| {
        let (b, g, t) = (brokers.clone(), group.clone(), topic.clone());
        eventually(move || {
            let (b, g, t) = (b.clone(), g.clone(), t.clone());
            async move { committed(&b, &g, &t, 1).await == vec![offset] }
        })
    };
    let a = trigger_as(&runtime, &brokers, Some("z-hub-a"));
    let a = Running::start(&runtime, "orders", Box::new(a));
    for n in 0..3 {
        produce(&producer, &topic, 0, n).await;
    }
    assert!(committed_to(3).await, "A consumed the partition first");

    // B joins with batches. The range assignor gives the only partition to the static
    // member that sorts first, B ("a-…"); probes go out one at a time until one lands in a
    // batch, i.e. B owns the partition.
    let batched = reactor_core::dsl::parse_workflow(
        "orders.yaml",
        &batched_yaml(&topic, &group, &brokers, 4),
    )
    .unwrap();
    runtime.load(batched);
    let b = trigger_as(&runtime, &brokers, Some("a-hub-b"));
    let b = Running::start(&runtime, "orders", Box::new(b));
    let mut probe = 10;
    loop {
        produce(&producer, &topic, 0, probe).await;
        assert!(
            committed_to(probe as i64 - 6).await,
            "probe {probe} consumed"
        );
        if batched_ns(&runtime).await.contains(&(probe as i64)) {
            break;
        }
        assert!(probe < 40, "B never got the partition");
        probe += 1;
    }

    // B comes back at once under the same instance id (a static member keeps its
    // assignment, no rebalance), records the next messages and dies before committing
    // them; its partition moves back to A when its session times out.
    b.stop().await.unwrap();
    let b = trigger_as(&runtime, &brokers, Some("a-hub-b")).stop_before_ack(4);
    let b = Running::start(&runtime, "orders", Box::new(b));
    for n in 100..104 {
        produce(&producer, &topic, 0, n).await;
    }
    let left = b.ended().await;
    assert!(matches!(left, Err(TriggerError::Source(_))), "{left:?}");
    assert!(batched_ns(&runtime).await.contains(&103));

    // Back at A, which had looked the partition up already in this session.
    let total = 3 + (probe - 10 + 1) + 4;
    assert!(committed_to(total as i64).await, "A consumed the rest");
    a.stop().await.unwrap();
    let mut expected: Vec<i64> = (0..3).chain(10..=probe as i64).chain(100..104).collect();
    expected.sort_unstable();
    assert_eq!(
        all_ns(&runtime).await,
        expected,
        "every message exactly once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumes_after_the_broker_comes_back() {
    let cluster = MockCluster::new(1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let topic = unique("outage");
    cluster.create_topic(&topic, 1, 1).unwrap();
    let group = unique("hub");
    let producer = producer(&brokers);
    produce(&producer, &topic, 0, 0).await;
    let runtime = runtime(&yaml(&topic, &group, &brokers));
    let running = Running::start(
        &runtime,
        "orders",
        build(&runtime, "orders", &Connections::default()),
    );
    assert_eq!(wait_events(&runtime, "orders", 1).await.len(), 1);
    cluster.broker_down(1).unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.broker_up(1).unwrap();
    produce(&producer, &topic, 0, 1).await;
    assert_eq!(wait_events(&runtime, "orders", 2).await.len(), 2);
    assert!(running.context.stats.snapshot().healthy());
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_brokers_make_it_unhealthy() {
    let error = unhealthy_error(&yaml("t", "g", "127.0.0.1:1")).await;
    assert!(error.contains("kafka"), "{error}");
}

#[test]
fn settings_errors_are_clear() {
    let runtime = runtime(&yaml("bad topic!", "g", "127.0.0.1:9092"));
    let error = reactor_hub_triggers::build(&spec(&runtime, "orders"), &Connections::default())
        .err()
        .unwrap();
    assert!(error.to_string().contains("kafka topic"), "{error}");
}
